"""SOFO vs Adam on the motor tasks at CPU scale, at equal iterations and at equal wall-clock.

    python scripts/bench_reach_sofo_vs_adam.py [--quick] [--out outputs/bench/reach_sofo_vs_adam.json]

Protocol, per task (default: reach and double_reach, the CPU-scale configs):

1. Adam learning-rate sweep on seed 0 for N iterations, best by held-out loss. The same runs as
   ``sofo-run -m task=reach optim=adam optim.lr=3e-4,1e-3,3e-3,1e-2 iterations=N``.
2. SOFO (K = 64, lr = 0.3, λ = 1e-3, pinned by ``--sofo``) for N iterations, every seed.
3. Adam at the best lr, every seed, for as many iterations as fit in SOFO's training time
   (median step time × iterations, measured in these runs): scored at iteration N (equal
   iterations) and at its end (equal wall-clock).

Every run goes through the runner (``sofo_lab.runner.train``), held-out metrics every
``N/10`` iterations. Writes the JSON (machine, runs, curves, table) to ``--out`` and a PNG
figure (held-out loss, endpoint error and hold error against wall-clock) next to it, and
copies seed 0's trajectory plots there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

METRICS = ("loss", "endpoint_error_cm", "hold_error_cm", "within_1cm", "moved_early", "peak_speed", "final_error_cm")
QUICK = ["task.n_steps=40", "task.dt=0.04", "task.tau=0.08", "model.n_hidden=16", "batch_size=8"]


def machine() -> dict:
    import jax

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "python": platform.python_version(),
            "load_average": os.getloadavg()}


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    from sofo_lab.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run(task, optim, seed, iterations, eval_every, run_dir, extra, plots=False) -> dict:
    from sofo_lab.errors import RunFailed
    from sofo_lab.runner import train

    overrides = [f"task={task}", f"optim={optim}", f"seed={seed}", f"iterations={iterations}",
                 f"eval_every={eval_every}", f"log_every={eval_every}", f"checkpoint_every={iterations}",
                 "logger=none", "progress=false", f"plots={str(plots).lower()}", "resume=false", *extra]
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = compose(overrides)
    start = time.perf_counter()
    with warnings.catch_warnings(), open(os.devnull, "w") as null:
        warnings.simplefilter("ignore")
        stdout, sys.stdout = sys.stdout, null
        try:
            summary = train(cfg, run_dir)
        except RunFailed:          # diverged: the runner wrote summary.json; keep the record
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
        finally:
            sys.stdout = stdout
    history = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    step = summary["profile"].get("step_time_median_s") or (time.perf_counter() - start) / iterations
    curve = [{"iteration": r["iteration"], "train_time_s": r["iteration"] * step,
              **{k: r[f"eval/{k}"] for k in METRICS if f"eval/{k}" in r}}
             for r in history if "eval/loss" in r]
    lr = f"{cfg.optim.lr:g}"
    record = {"task": task, "optim": optim, "seed": seed, "lr": lr, "iterations": iterations,
              "status": summary["status"], "step_time_s": step, "compile_s": summary["profile"]["compile_s"],
              "wall_s": time.perf_counter() - start, "curve": curve, "plots": summary["plots"], "run_dir": str(run_dir)}
    if not curve or summary["status"] != "completed":
        nan = {k: float("nan") for k in METRICS}
        curve.append({"iteration": summary["iterations"], "train_time_s": summary["iterations"] * step, **nan})
    print(f"  {task:13s} {optim:5s} lr={lr:8s} seed={seed} it={iterations:5d} {summary['status']:9s} "
          f"step={1e3 * step:7.1f} ms  loss={curve[-1]['loss']:.4f}  endpoint={curve[-1]['endpoint_error_cm']:.2f} cm"
          f"  hold={curve[-1]['hold_error_cm']:.2f} cm", flush=True)
    return record


def at_iteration(record, iteration) -> dict:
    return min(record["curve"], key=lambda p: abs(p["iteration"] - iteration))


def summarize(rows, label, task, optim, lr, iterations, points) -> None:
    diverged = [p for p in points if not math.isfinite(p["loss"])]
    points = [p for p in points if math.isfinite(p["loss"])] or points
    entry = {"task": task, "comparison": label, "optim": optim, "lr": lr, "iterations": iterations,
             "train_time_s": float(np.mean([p["train_time_s"] for p in points])), "seeds": len(points),
             "diverged": len(diverged)}
    for key in METRICS:
        values = [p[key] for p in points if key in p]
        if values:
            entry[key] = float(np.mean(values))
            entry[key + "_sd"] = float(np.std(values))
    entry["endpoint_error_cm_per_seed"] = [round(p["endpoint_error_cm"], 3) for p in points]
    entry["hold_error_cm_per_seed"] = [round(p["hold_error_cm"], 3) for p in points]
    rows.append(entry)


def markdown(rows) -> str:
    lines = ["| task | comparison | optim (lr) | iterations | train time (s) | held-out loss | endpoint error (cm) "
             "| hold error (cm) | within 1 cm | moved early (>1 cm) | diverged |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['task']} | {r['comparison']} | {r['optim']} ({r['lr']}) | {r['iterations']} | "
                     f"{r['train_time_s']:.0f} | {r['loss']:.4f} | {r['endpoint_error_cm']:.2f} ± "
                     f"{r['endpoint_error_cm_sd']:.2f} | {r['hold_error_cm']:.2f} ± {r['hold_error_cm_sd']:.2f} | "
                     f"{100 * r['within_1cm']:.0f}% | {100 * r['moved_early']:.0f}% | {r['diverged']} |")
    return "\n".join(lines)


def figure(runs, tasks, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("loss", "held-out loss", True), ("endpoint_error_cm", "endpoint error (cm)", True),
            ("hold_error_cm", "hold error (cm)", True))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(13, 3.6 * len(tasks)), squeeze=False)
    colors = {"sofo": "tab:red", "adam": "tab:blue"}
    for row, task in enumerate(tasks):
        for col, (key, label, log) in enumerate(keys):
            ax = axes[row, col]
            for r in runs:
                if r["task"] != task or r.get("role") not in ("sofo", "adam_long"):
                    continue
                x = [p["train_time_s"] for p in r["curve"]]
                y = [p[key] for p in r["curve"]]
                ax.plot(x, y, color=colors[r["optim"]], lw=1.2, alpha=0.8,
                        label=f"{r['optim']} (lr {r['lr']})" if r["seed"] == 0 else None)
            ax.set_xlabel("training time (s, median step × iterations)")
            ax.set_ylabel(label)
            ax.set_title(task, fontsize=9)
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def supplement(args) -> int:
    task, lr, iterations = args.supplement.split(":")
    iterations, seeds = int(iterations), [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    eval_every = max(1, args.iterations // 10)
    extra = (QUICK if args.quick else []) + [o for o in args.extra.split(",") if o] + [f"optim.lr={lr}"]
    runs = [run(task, "adam", s, iterations, eval_every, out.parent / (out.stem + "_runs") / f"{task}-adam-lr{lr}-s{s}",
                extra) for s in seeds]
    rows = []
    summarize(rows, "equal iterations", task, "adam", lr, args.iterations, [at_iteration(r, args.iterations) for r in runs])
    summarize(rows, "equal wall-clock", task, "adam", lr, iterations, [r["curve"][-1] for r in runs])
    table = markdown(rows)
    out.write_text(json.dumps({"benchmark": "motor tasks: Adam supplement", "machine": machine(), "table": rows,
                               "table_markdown": table, "runs": runs}, indent=1) + "\n")
    print(table)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/reach_sofo_vs_adam.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed, reach only (for the tests)")
    parser.add_argument("--tasks", default="reach,double_reach")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=300, help="N: SOFO iterations (= Adam's at equal iterations)")
    parser.add_argument("--adam-lrs", default="3e-4,1e-3,3e-3,1e-2")
    parser.add_argument("--max-adam-iterations", type=int, default=4000)
    parser.add_argument("--extra", default="", help="more overrides for every run, comma-separated")
    parser.add_argument("--sofo", default="optim.n_tangents=64,optim.lr=0.3,optim.damping=1e-3",
                        help="SOFO's settings, pinned (comma-separated overrides)")
    parser.add_argument("--supplement", default="",
                        help="TASK:LR:ITERATIONS — only run Adam at this lr for this many iterations, every seed "
                             "(e.g. when the best lr at N iterations diverges in the long runs)")
    args = parser.parse_args(argv)
    if args.supplement:
        return supplement(args)
    if args.quick:
        args.tasks, args.seeds, args.iterations, args.adam_lrs = "reach", "0", 20, "1e-2"
    extra = (QUICK if args.quick else []) + [o for o in args.extra.split(",") if o]
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / (out.stem + "_runs")
    N, eval_every = args.iterations, max(1, args.iterations // 10)
    info = machine()
    print(f"machine: {info['cpu']} ({info['cores']} cores), jax {info['jax']} {info['backend']}, "
          f"load {info['load_average'][0]:.1f}", flush=True)
    runs, rows, started = [], [], time.perf_counter()
    for task in tasks:
        print(f"{task}: Adam learning-rate sweep (seed {seeds[0]}, {N} iterations)", flush=True)
        sweep = [run(task, "adam", seeds[0], N, eval_every, work / f"{task}-adam-lr{lr}", extra + [f"optim.lr={lr}"])
                 for lr in args.adam_lrs.split(",")]
        for r in sweep:
            r["role"] = "adam_sweep"
        runs += sweep
        ok = [r for r in sweep if r["status"] == "completed" and math.isfinite(r["curve"][-1]["loss"])]
        best = min(ok, key=lambda r: r["curve"][-1]["loss"])
        print(f"{task}: SOFO, {N} iterations, seeds {seeds}", flush=True)
        sofo_extra = extra + args.sofo.split(",") + (["optim.n_tangents=8"] if args.quick else [])
        sofo = [run(task, "sofo", s, N, eval_every, work / f"{task}-sofo-s{s}", sofo_extra, plots=s == seeds[0])
                for s in seeds]
        for r in sofo:
            r["role"] = "sofo"
        runs += sofo
        sofo_time = float(np.mean([r["step_time_s"] for r in sofo])) * N
        long_n = int(min(args.max_adam_iterations, max(N, round(sofo_time / best["step_time_s"]))))
        long_n = int(math.ceil(long_n / eval_every) * eval_every)
        print(f"{task}: Adam lr={best['lr']}, {long_n} iterations (≈ SOFO's {sofo_time:.0f} s), seeds {seeds}",
              flush=True)
        # (when the long run would repeat the sweep's run at the best lr, reuse it)
        adam = [dict(best) if long_n == N and s == best["seed"] else
                run(task, "adam", s, long_n, eval_every, work / f"{task}-adam-long-s{s}",
                    extra + [f"optim.lr={best['lr']}"], plots=s == seeds[0]) for s in seeds]
        for r in adam:
            r["role"] = "adam_long"
        runs += adam
        summarize(rows, "equal iterations", task, "sofo", sofo[0]["lr"], N, [at_iteration(r, N) for r in sofo])
        summarize(rows, "equal iterations", task, "adam", best["lr"], N, [at_iteration(r, N) for r in adam])
        summarize(rows, "equal wall-clock", task, "adam", best["lr"], long_n, [r["curve"][-1] for r in adam])
        for r in (sofo[0], adam[0]):
            for name in r["plots"]:
                if name.endswith("_trajectories.png") or name.endswith("_torques.png"):
                    shutil.copy(Path(r["run_dir"]) / name, out.parent / f"{out.stem}_{r['optim']}_{name}")
    figure(runs, tasks, out.with_suffix(".png"))
    table = markdown(rows)
    result = {"benchmark": "motor tasks: SOFO vs Adam", "quick": args.quick, "machine": info,
              "load_average_end": os.getloadavg(), "total_wall_s": time.perf_counter() - started,
              "iterations": N, "seeds": seeds, "adam_lrs": args.adam_lrs.split(","), "extra_overrides": extra,
              "sofo_overrides": args.sofo.split(","),
              "table": rows, "table_markdown": table,
              "runs": [{**{k: v for k, v in r.items() if k != "run_dir"},
                        **{k: r["curve"][-1][k] for k in METRICS if k in r["curve"][-1]}} for r in runs]}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.png')} ({result['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
