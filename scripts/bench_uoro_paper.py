"""The UORO paper's character tasks at the paper's length: aⁿbⁿ and distant brackets, GRU-64 and
LSTM-64, one stream, 10⁷ characters per run; UORO vs TBPTT-1 vs TBPTT-16 (Tallec & Ollivier,
ICLR 2018, §6; docs/uoro.md).

Every run is ``sofo-run experiment=<task>_uoro model=<model> [optim=tbptt optim.truncation=k]``
(Adam, lr_t = 1e-3/(1+0.015√t), t = characters; windows of 320 characters, 10 per call; metrics at
×1.01 steps). Runs are ordered seed-major (seed 0 of every model/task first, GRU before LSTM), each
in its own run directory under ``--run-root`` so a killed benchmark resumes every run from its last
checkpoint; each finished run writes ``<out-dir>/<task>-<model>-<method>-s<seed>.json`` (final
scores, the whole online curve, wall time, the machine) and redraws ``<out-dir>.png``: cumulative
and recent online bits/char against characters (log axis) with the optimum and the "no memory"
levels, as the paper's figure.

    nice -n 10 nohup python scripts/bench_uoro_paper.py [--chars 10000000] [--seeds 0 1 2] &
    python scripts/bench_uoro_paper.py --plot-only          # redraw the figure from the records
    python scripts/bench_uoro_paper.py --quick --out-dir /tmp/x   # seconds (the test suite)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine, write_json  # noqa: E402

METHODS = {"uoro": [], "tbptt-1": ["optim=tbptt", "optim.truncation=1"],
           "tbptt-16": ["optim=tbptt", "optim.truncation=16"]}
COLORS = {"uoro": "tab:red", "tbptt-1": "tab:blue", "tbptt-16": "tab:green"}
WINDOW = 320   # characters per window (conf/experiment/<task>_uoro.yaml)
DISPATCH = 10  # windows per call (steps_per_dispatch in the same presets)
MARKS = (10**5, 10**6, 3 * 10**6, 10**7)   # the table's columns (characters)
# The level below which a method has learned the long dependency (research/uoro_spec.md §4.4-4.5):
# aⁿbⁿ below "forgets n" counts; brackets below "no memory" carries the bracket.
MEMORY_LEVEL = {"anbn": "forget_n", "brackets": "no_memory"}


def run_one(task, model, method, seed, chars, run_dir, quick):
    from hydra import compose, initialize_config_dir

    from sofo_lab.conf import CONF_DIR
    from sofo_lab.core.errors import RunFailed
    from sofo_lab.train.trainer import train

    window = 16 if quick else WINDOW
    overrides = [f"experiment={task}_uoro", f"model={model}", *METHODS[method], f"seed={seed}",
                 f"task.n_steps={window}", f"iterations={max(1, chars // window)}",
                 "logger=none", "progress=false", "plots=false"]
    if quick:
        overrides += ["model.n_hidden=8", "checkpoint_every=2"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    t0 = time.perf_counter()
    try:
        summary = train(cfg, run_dir)
    except RunFailed:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = [(r["train/characters"], r["train/bits_per_char"], r["train/bits_per_char_recent"])
             for r in rows if "train/bits_per_char" in r]
    final = summary["final"]
    refs = {k[len("train/bits_per_char_"):]: v for k, v in final.items()
            if k.startswith("train/bits_per_char_") and k != "train/bits_per_char_recent"}
    return {"task": task, "model": model, "method": method, "seed": seed, "status": summary["status"],
            "characters": final.get("train/characters"), "bits_per_char": final.get("train/bits_per_char"),
            "bits_per_char_recent": final.get("train/bits_per_char_recent"), "references": refs,
            "iterations": summary["iterations"], "window": window, "wall_s": wall,
            "resumed_from": summary.get("resumed_from"), "profile": summary.get("profile"),
            "overrides": overrides, "curve": curve}


def compose_run(overrides):
    from hydra import compose, initialize_config_dir

    from sofo_lab.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def host_overhead(task="anbn", model="gru", method="uoro", windows=(32, WINDOW), dispatches=(1, DISPATCH),
                  chars=64_000, repeats=5):
    """Per-iteration host overhead of the runner on a stream, for each window length and number of
    windows per call (``steps_per_dispatch``): ``train``'s loop time (metrics read every iteration,
    geometric log, progress bookkeeping) against the same calls of the jitted function alone,
    dispatched back to back (``call_ms``), and against single windows back to back (``step_ms``).
    Returns one row per (window, steps per call)."""
    import tempfile

    import jax

    from sofo_lab.train.assemble import build
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step, make_train_steps
    from sofo_lab.train.trainer import train

    rows = []
    for window in windows:
        for n in dispatches:
            iterations = chars // window // n * n
            overrides = [f"experiment={task}_uoro", f"model={model}", *METHODS[method], f"task.n_steps={window}",
                         f"iterations={iterations}", f"steps_per_dispatch={n}", "logger=none", "progress=false",
                         "plots=false", f"checkpoint_every={iterations}"]
            cfg = compose_run(overrides)
            setup = build(cfg)
            fns = {1: jax.jit(make_train_step(setup, cfg.seed, cfg.batch_size))}
            fns[n] = jax.jit(make_train_steps(setup, cfg.seed, cfg.batch_size, n)) if n > 1 else fns[1]
            best = {"step": float("inf"), "call": float("inf"), "loop": float("inf")}
            for _ in range(repeats):   # interleaved, minimum kept: the machine is shared
                for name, k in (("step", 1), ("call", n)):
                    ts = init_train_state(setup, cfg.seed, cfg.batch_size)
                    jax.block_until_ready(fns[k](ts))
                    t0 = time.perf_counter()
                    for _ in range(iterations // k):
                        ts, _ = fns[k](ts)
                    jax.block_until_ready(ts)
                    best[name] = min(best[name], time.perf_counter() - t0)
                with tempfile.TemporaryDirectory() as tmp:
                    prof = train(cfg, Path(tmp))["profile"]   # the loop's wall: training clock + its pauses
                    best["loop"] = min(best["loop"], prof["train_time_s"] + sum(
                        prof.get(f"{k}_time_s") or 0.0 for k in ("log", "checkpoint", "eval")))
            row = {"task": task, "model": model, "method": method, "window": window, "steps_per_dispatch": n,
                   "iterations": iterations, **{f"{k}_ms": 1e3 * v / iterations for k, v in best.items()}}
            row["runner_ms"] = row.pop("loop_ms")
            row["host_overhead_fraction"] = (best["loop"] - best["call"]) / best["loop"]
            row["over_single_steps_fraction"] = (best["loop"] - best["step"]) / best["loop"]
            rows.append(row)
            print(f"window {window:4d} x {n:2d} per call: step {row['step_ms']:.3f} ms, call {row['call_ms']:.3f} ms, "
                  f"runner {row['runner_ms']:.3f} ms per iteration: host overhead "
                  f"{100 * row['host_overhead_fraction']:.1f} % of the calls, "
                  f"{100 * row['over_single_steps_fraction']:.1f} % over single windows back to back", flush=True)
    return rows


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_records(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]


def running_records(out_dir: Path, run_root: Path) -> list[dict]:
    """Records of the runs still in progress (no record yet), from their metrics.jsonl so far."""
    rows = []
    for run in sorted(run_root.glob("*-s[0-9]*")):
        if (out_dir / f"{run.name}.json").exists() or not (run / "metrics.jsonl").exists():
            continue
        task, model, *method, seed = run.name.split("-")
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        metrics = [r for r in metrics if "train/bits_per_char" in r]
        if not metrics:
            continue
        last = metrics[-1]
        rows.append({"task": task, "model": model, "method": "-".join(method), "seed": int(seed[1:]),
                     "status": "running", "characters": last["train/characters"],
                     "bits_per_char": last["train/bits_per_char"],
                     "bits_per_char_recent": last["train/bits_per_char_recent"],
                     "references": {k[len("train/bits_per_char_"):]: v for k, v in last.items()
                                    if k.startswith("train/bits_per_char_") and k != "train/bits_per_char_recent"},
                     "wall_s": last.get("time_s"),
                     "curve": [(r["train/characters"], r["train/bits_per_char"], r["train/bits_per_char_recent"])
                               for r in metrics]})
    return rows


def value_at(record: dict, characters: int):
    """(cumulative, recent) online bits/char at the last logged point at or before ``characters``
    (points are ×1.01 apart), or None when the run has not got that far."""
    points = [(cum, rec) for c, cum, rec in record["curve"] if c <= characters]
    return points[-1] if points and record["characters"] >= characters else None


def first_below(record: dict, level: float):
    """Characters at which the recent rate first goes below ``level`` and stays below it for
    the rest of the run (None if it never settles there)."""
    first = None
    for c, _, rec in record["curve"]:
        if rec < level:
            first = c if first is None else first
        else:
            first = None
    return first


def sci(characters) -> str:
    return f"{characters:.1e}".replace("e+0", "e")


def table(records: list[dict]) -> str:
    """Markdown: per task, model and method, cumulative / recent bits/char at ``MARKS`` (mean ±
    s.d. over the seeds that got there) and where each seed's recent rate settled below the
    memory level."""
    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.3f}"
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return f"{mean:.3f} ± {sd:.3f}"

    longest = max((r["characters"] or 0 for r in records), default=0)
    marks = [m for m in MARKS if m <= longest] or [longest]
    head = ["task", "model", "method", "seeds"] + [sci(m) for m in marks]
    lines = ["| " + " | ".join(head + ["settled below the memory level (characters, per seed)"]) + " |",
             "|" + "---|" * (len(head) + 1)]
    groups: dict = {}
    for r in records:
        groups.setdefault((r["task"], r["model"], r["method"]), []).append(r)
    for (task, model, method), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], list(METHODS).index(kv[0][2]))):
        rows = sorted(rows, key=lambda r: r["seed"])
        cells = []
        for m in marks:
            at = [value_at(r, m) for r in rows]
            cells.append(f"{cell([a[0] if a else None for a in at])} / {cell([a[1] if a else None for a in at])}")
        name = MEMORY_LEVEL.get(task)
        settled = ", ".join(
            f"s{r['seed']}: " + (sci(c) if (c := first_below(r, r["references"][name])) is not None else "never")
            for r in rows) if name in rows[0]["references"] else "–"
        seeds = ",".join(f"{r['seed']}" + ("" if r["status"] == "completed" else f" ({r['status']})") for r in rows)
        lines.append("| " + " | ".join([task, model, method, seeds, *cells, settled]) + " |")
    return "\n".join(lines) + "\n"


def report(records: list[dict], figure: Path) -> None:
    """The figure and the table (``<out-dir>.png``, ``<out-dir>.md``) of these records."""
    plot(records, figure)
    if records:
        figure.with_suffix(".md").write_text(
            "Online bits/char, cumulative / recent (mean ± s.d. over seeds), from "
            "`scripts/bench_uoro_paper.py`\n\n" + table(records))


SMOOTH = 9   # the figure's recent rate: running median over this many logged (×1.01-spaced) points


def running_median(values, width: int) -> list[float]:
    """Centred running median (shorter at the ends): the recent rate's per-window noise out of the
    figure, its trend kept; the records and the table hold the raw values."""
    import numpy as np

    half = width // 2
    v = np.asarray(values, float)
    return [float(np.median(v[max(0, i - half): i + half + 1])) for i in range(len(v))]


def plot(records: list[dict], path: Path) -> None:
    """One panel per (task, model): cumulative (solid) and recent (thin) bits/char per method and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["task"], r["model"]) for r in records})
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (task, model) in zip(axes[0], panels):
        rows = [r for r in records if (r["task"], r["model"]) == (task, model)]
        seen = set()
        for r in sorted(rows, key=lambda r: (list(METHODS).index(r["method"]), r["seed"])):
            if not r["curve"]:
                continue
            x, cum, rec = zip(*r["curve"])
            first = r["method"] not in seen
            seen.add(r["method"])
            ax.plot(x, cum, color=COLORS[r["method"]], lw=1.4, label=f"{r['method']} cumulative" if first else None)
            ax.plot(x, running_median(rec, SMOOTH), color=COLORS[r["method"]], lw=0.7, alpha=0.6,
                    label=f"{r['method']} recent (median of {SMOOTH} points)" if first else None)
        for (name, value), style in zip(rows[0]["references"].items(), ("--", ":", "-.")):
            ax.axhline(value, color="k", ls=style, lw=0.8, label=f"{name.replace('_', ' ')} {value:.3f}")
        low, high = min(rows[0]["references"].values()), max(rows[0]["references"].values())
        ax.set_ylim(low - 0.1 * (high - low), high + (high - low))   # the levels, not the first 10³ characters
        ax.set_xscale("log")
        ax.set_xlabel("characters")
        ax.set_ylabel("online bits/char")
        seeds = sorted({r["seed"] for r in rows})
        ax.set_title(f"{task}, {model.upper()}-64, seeds {','.join(map(str, seeds))}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for the test suite")
    ap.add_argument("--chars", type=int, default=10_000_000, help="characters per stream")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", default="anbn,brackets")
    ap.add_argument("--models", default="gru,lstm")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out-dir", default="docs/results/uoro_paper", help="one JSON record per finished run")
    ap.add_argument("--run-root", default="outputs/bench/uoro_paper", help="run directories (checkpoints)")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--include-running", action="store_true", help="--plot-only: add the runs still in progress")
    ap.add_argument("--overhead", action="store_true",
                    help="measure the runner's per-iteration host overhead (windows of 32 and 320 characters, "
                         "1 and 10 per call)")
    args = ap.parse_args(argv)
    out_dir, run_root = Path(args.out_dir), Path(args.run_root)
    figure = out_dir.with_suffix(".png")
    if args.overhead:
        rows = host_overhead()
        write_json(out_dir.parent / "uoro_host_overhead.json", {"benchmark": "uoro_host_overhead",
                                                                "machine": machine(), "rows": rows})
        return rows
    if args.plot_only:   # finished records and, with --include-running, the runs still going
        records = load_records(out_dir) + (running_records(out_dir, run_root) if args.include_running else [])
        report(records, figure)
        for r in records:
            print(f"{r['task']}-{r['model']}-{r['method']}-s{r['seed']}: {r['status']} at {r['characters']} characters: "
                  f"cumulative {r['bits_per_char']:.3f}, recent {r['bits_per_char_recent']:.3f}")
        return records
    chars = 64 if args.quick else args.chars
    tasks, models = (["anbn"], ["gru"]) if args.quick else (args.tasks.split(","), args.models.split(","))
    methods = ["uoro", "tbptt-16"] if args.quick else args.methods.split(",")
    info = {"machine": machine(), "commit": commit()}
    done = []
    for seed in args.seeds:
        for model in models:
            for task in tasks:
                for method in methods:
                    name = f"{task}-{model}-{method}-s{seed}"
                    out = out_dir / f"{name}.json"
                    if out.exists():
                        print(f"{name}: record exists, skipped", flush=True)
                        continue
                    row = run_one(task, model, method, seed, chars, run_root / name, args.quick)
                    write_json(out, {"benchmark": "uoro_paper", **info, **row})
                    done.append(row)
                    print(f"{name}: {row['status']} after {row['characters']} characters: cumulative "
                          f"{row['bits_per_char']:.3f}, recent {row['bits_per_char_recent']:.3f} bits/char "
                          f"({row['wall_s']:.0f} s)", flush=True)
                    report(load_records(out_dir), figure)
    return done


if __name__ == "__main__":
    main()
