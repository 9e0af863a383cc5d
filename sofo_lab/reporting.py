"""What a run leaves behind besides metrics.jsonl: summary.json, the loss curve, the final line."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def plot_loss_curve(run_dir: Path, history: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["iteration"], r["train/loss"]) for r in history if _finite(r.get("train/loss"))]
    evals = [(r["iteration"], r["eval/loss"]) for r in history if _finite(r.get("eval/loss"))]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss", ms=3)
    values = [v for _, v in train + evals]
    if min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / "loss_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def format_metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{key}={value}")
    return "  ".join(parts)
