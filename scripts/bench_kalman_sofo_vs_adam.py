"""Adaptive Kalman task at CPU scale: SOFO against Adam/BPTT at equal iterations and equal wall-clock.

    python scripts/bench_kalman_sofo_vs_adam.py [--quick] [--seeds 0,1,2] [--out outputs/bench/kalman_sofo_vs_adam.json]

Both optimizers train the same rate RNN on the same batches (the runner's train step: batch sampled
inside from (seed, iteration)), several seeds each, every run through the command line
(``python -m sofo_lab.cli.run``, run directories in ``<out>_runs/`` next to the JSON). SOFO runs
``--iterations`` updates on every seed; its mean training seconds are Adam's budget: Adam runs
that budget over its step time (from a short probe run), at least ``--iterations`` updates, and is
scored at SOFO's iteration count (equal iterations) and at its end (equal wall-clock). Every
``--eval-every`` updates both are scored on the same held-out batch: MSE next to the oracle Kalman
filter and to copying the observation. Training seconds are the runner's ``time_s`` (evaluation and
compilation not counted). Writes the JSON (curves, finals, machine); the figure and the table are
``sofo_lab.analysis.compare``'s, drawn from the run directories: ``<out>.png``, ``<out>.md``, ``<out>.csv``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, run_cli  # noqa: E402


def read_run(run_dir: Path) -> dict:
    """A run's record from its directory: evaluation points (iteration, training seconds, held-out
    metrics), the training loss at every update, the updates done, training seconds, median step."""
    from sofo_lab.analysis.runs import load_run
    from sofo_lab.analysis.compare_table import profile_of

    run = load_run(run_dir, build=False)
    profile = profile_of(run)
    points = [{"iteration": r["iteration"], "train_s": r["time_s"],
               **{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("eval/")}}
              for r in run.history if "eval/loss" in r]
    return {"points": points, "train_loss": [r["train/loss"] for r in run.history if "train/loss" in r],
            "iterations": run.summary["iterations"], "train_s": profile["train_time_s"],
            "step_time_s": profile["step_time_median_s"]}


def run(overrides, seed, iterations, args, run_dir: Path) -> dict:
    run_cli([*overrides, f"seed={seed}", f"batch_size={args.batch}", f"iterations={iterations}",
             f"eval_every={args.eval_every}", "log_every=1", f"checkpoint_every={iterations}",
             f"eval_batch_size={args.batch if args.quick else 256}"], run_dir)
    return read_run(run_dir)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/bench/kalman_sofo_vs_adam.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--n-steps", type=int, default=300)
    ap.add_argument("--n-hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tangents", type=int, default=32)
    ap.add_argument("--sofo", default="optim.damping=1e-5", help="comma-separated optim overrides (lr 0.3 from conf/optim/sofo.yaml)")
    ap.add_argument("--adam", default="optim.lr=3e-3", help="comma-separated optim overrides")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.iterations, args.eval_every, args.n_steps = "0", 2, 1, 10
        args.n_hidden, args.batch, args.tangents = 8, 8, 4
    seeds = [int(s) for s in args.seeds.split(",")]
    common = ["task=kalman", f"task.n_steps={args.n_steps}", f"model.n_hidden={args.n_hidden}"]
    sofo = [*common, "optim=sofo", f"optim.n_tangents={args.tangents}", *filter(None, args.sofo.split(","))]
    adam = [*common, "optim=adam", *filter(None, args.adam.split(","))]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f"{out.stem}_runs"
    result = {"machine": machine(), "seeds": seeds, "quick": args.quick,
              "problem": {"task": "kalman", "T": args.n_steps, "N": args.n_hidden, "B": args.batch,
                          "K": args.tangents, "iterations": args.iterations},
              "overrides": {"sofo": sofo, "adam": adam}, "runs": {"sofo": [], "adam": []}}
    t_start = time.perf_counter()
    sofo_dirs, adam_dirs = [work / f"sofo-s{s}" for s in seeds], [work / f"adam-s{s}" for s in seeds]
    result["runs"]["sofo"] = [run(sofo, s, args.iterations, args, d) for s, d in zip(seeds, sofo_dirs)]
    budget = float(np.mean([r["train_s"] for r in result["runs"]["sofo"]]))
    # Adam's updates in SOFO's training seconds: the budget over Adam's median step in a probe run
    probe = run(adam, seeds[0], min(args.iterations, 100), args, work / "adam-probe")
    adam_n = max(args.iterations, int(budget / probe["step_time_s"]))
    print(f"SOFO: {args.iterations} iterations in {budget:.1f} s of training (mean over seeds); "
          f"Adam gets {adam_n} iterations", flush=True)
    result["runs"]["adam"] = [run(adam, s, adam_n, args, d) for s, d in zip(seeds, adam_dirs)]
    for seed, s, a in zip(seeds, result["runs"]["sofo"], result["runs"]["adam"]):
        print(f"seed {seed}: SOFO {s['iterations']} it in {s['train_s']:.1f} s -> MSE {s['points'][-1]['mse']:.3f}; "
              f"Adam {a['iterations']} it in {a['train_s']:.1f} s -> MSE {a['points'][-1]['mse']:.3f}", flush=True)

    def at_iteration(rec, it):
        return next(p["mse"] for p in rec["points"] if p["iteration"] >= it)

    summary = {
        "oracle_mse": float(np.mean([r["points"][-1]["oracle_mse"] for r in result["runs"]["sofo"]])),
        "copy_mse": float(np.mean([r["points"][-1]["copy_mse"] for r in result["runs"]["sofo"]])),
        "sofo_final_mse": [r["points"][-1]["mse"] for r in result["runs"]["sofo"]],
        "adam_mse_at_equal_iterations": [at_iteration(r, args.iterations) for r in result["runs"]["adam"]],
        "adam_mse_at_equal_wall_clock": [r["points"][-1]["mse"] for r in result["runs"]["adam"]],
        "adam_iterations_at_equal_wall_clock": [r["iterations"] for r in result["runs"]["adam"]],
        "sofo_seconds_per_iteration": float(np.mean([r["train_s"] / r["iterations"] for r in result["runs"]["sofo"]])),
        "adam_seconds_per_iteration": float(np.mean([r["train_s"] / r["iterations"] for r in result["runs"]["adam"]])),
        "total_benchmark_s": time.perf_counter() - t_start,
    }
    result["summary"] = summary
    print(f"oracle Kalman filter {summary['oracle_mse']:.3f}, copy observation {summary['copy_mse']:.3f}")
    print(f"SOFO after {args.iterations} iterations: " + ", ".join(f"{x:.3f}" for x in summary["sofo_final_mse"]))
    print(f"Adam after {args.iterations} iterations: "
          + ", ".join(f"{x:.3f}" for x in summary["adam_mse_at_equal_iterations"]))
    print("Adam at equal wall-clock: " + ", ".join(
        f"{x:.3f} ({n} it)" for x, n in zip(summary["adam_mse_at_equal_wall_clock"],
                                            summary["adam_iterations_at_equal_wall_clock"])))
    print(f"s/iteration: SOFO {summary['sofo_seconds_per_iteration'] * 1e3:.1f} ms, "
          f"Adam {summary['adam_seconds_per_iteration'] * 1e3:.1f} ms; total {summary['total_benchmark_s']:.0f} s")
    out.write_text(json.dumps(result, indent=1) + "\n")
    from sofo_lab.analysis.compare import compare

    written = compare(sofo_dirs + adam_dirs, out=out.parent, stem=out.stem,
                      title=f"Kalman task, T={args.n_steps}, N={args.n_hidden}, B={args.batch}, SOFO K={args.tangents}; "
                            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    print(f"wrote {out} and {', '.join(written['figures'])}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
