"""What a run leaves behind besides metrics.jsonl: summary.json, the loss curve, the final line."""
from __future__ import annotations

import json
import math
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    """Strict JSON (``strict_json``), written via a fsynced temporary file and ``os.replace``."""
    from sofo_lab.train.rundir import write_atomic

    write_atomic(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def strict_json(value):
    """``value`` made valid strict JSON (RFC 8259): NaN and ±inf become null, numpy scalars and
    arrays become numbers and lists, anything else unknown its ``str``."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):   # numpy / jax scalars and arrays
        return strict_json(value.tolist())
    try:
        return strict_json(float(value))
    except (TypeError, ValueError):
        return str(value)


def reference_levels(history: list[dict], metric: str) -> dict[str, float]:
    """Reference levels of ``metric`` that a run logged next to it, ``{label: value}``.

    A reference of ``group/name`` is another key of the same group named ``<label>_<name>`` or
    ``<name>_<label>`` whose value never changes during the run: kalman's ``eval/oracle_mse`` and
    ``eval/copy_mse`` for ``eval/mse``, the streams' ``train/bits_per_char_optimal`` for
    ``train/bits_per_char``, influence's ``train/theta_star`` for ``train/theta``. A metric equal to
    ``metric`` at every record shares its references (kalman's loss is its MSE). So a user's own
    task gets reference lines by logging such keys; nothing needs registering.
    """
    group, _, name = metric.rpartition("/")
    prefix = f"{group}/" if group else ""
    keys = dict.fromkeys(k for r in history for k in r if k.startswith(prefix) and "/" not in k[len(prefix):])
    values = {k: [r[k] for r in history if _finite(r.get(k))] for k in keys}
    target = [(r[metric], i) for i, r in enumerate(history) if _finite(r.get(metric))]

    def constant(v):
        return len(v) >= 2 and max(v) - min(v) <= 1e-6 * max(1.0, abs(v[0]))

    def twin(key):   # equal to metric wherever both were logged
        pairs = [(r[metric], r[key]) for r in history if _finite(r.get(metric)) and _finite(r.get(key))]
        return bool(pairs) and all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in pairs)

    names = [name] + [k[len(prefix):] for k in values if k != metric and target and twin(k)
                      and not constant(values[k])]
    levels = {}
    for base in names:
        for key, v in values.items():
            rest = key[len(prefix):]
            label = (rest[: -len(base) - 1] if rest.endswith(f"_{base}") else
                     rest[len(base) + 1:] if rest.startswith(f"{base}_") else None)
            label = f"{base}*" if label == "star" else label   # theta_star: θ*, the optimum
            if label and constant(v) and label not in levels:
                levels[label] = v[-1]
    return levels


def plot_loss_curve(run_dir: Path, history: list[dict], references: dict[str, float] | None = None) -> str | None:
    """Train and held-out loss against iteration, with the task's reference levels (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    train = [(r["iteration"], r["train/loss"]) for r in history if _finite(r.get("train/loss"))]
    evals = [(r["iteration"], r["eval/loss"]) for r in history if _finite(r.get("eval/loss"))]
    if not train and not evals:
        return None
    levels = dict(references or {})
    for key in ("eval/loss", "train/loss"):
        for label, value in reference_levels(history, key).items():
            levels.setdefault(label, value)
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss", ms=3)
    for (label, value), style in zip(levels.items(), (":", "--", "-.", (0, (1, 3)))):
        ax.axhline(value, color="k", ls=style, lw=0.9, label=f"{label.replace('_', ' ')} {value:.3g}")
    values = [v for _, v in train + evals] + list(levels.values())
    if min(values) > 0:
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
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
