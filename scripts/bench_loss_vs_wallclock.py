#!/usr/bin/env python
"""Held-out loss against wall-clock time for every optimizer on one task, in one figure.

    python scripts/bench_loss_vs_wallclock.py [--quick] [--out DIR_OR_JSON] [--optims adam,sofo,...]
                                              [--iterations N] [--seed S]

Each optimizer trains task=kalman (rnn N=32, B=32, T=100) with its default hyperparameters from
conf/optim/ through the command line (``python -m sofo_lab.cli.run``, logger=none), evaluating on
the fixed held-out batch every few iterations (and at iteration 0); each record is read back from
its run directory. Time is the runner's ``time_s``: training seconds, with compilation, evaluation
and checkpoints excluded. The figure and the table are drawn by ``sofo_lab.analysis.compare`` (the code
behind ``sofo-compare``) from the run directories, which are kept next to the JSON:
``<out>.png``, ``<out>.md``, ``<out>.csv``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

OPTIMS = ("adam", "tbptt", "uoro", "sofo", "fgd", "rtrl")
# exact RTRL carries the full Jacobian ([B·N] × P floats, O(P) tangent lanes per step): ~2.7 s an
# iteration at this size on 2 CPU cores, so it gets fewer iterations (its curve ends earlier)
MAX_ITERATIONS = {"rtrl": 40}


def run(optim: str, base: list[str], run_dir: Path, iterations: int) -> dict:
    """One optimizer's run through the command line, its record read back from its directory."""
    from sofo_lab.analysis.runs import load_run
    from sofo_lab.analysis.compare_table import profile_of

    done = load_run(bc.run_cli([*base, f"optim={optim}", f"iterations={iterations}",
                                f"checkpoint_every={iterations}"], run_dir), build=False)
    summary, profile = done.summary, profile_of(done)
    return {"optim": optim, "iterations": iterations, "status": summary["status"], "error": summary.get("error"),
            "curve": [{"time_s": r["time_s"], "iteration": r["iteration"], "eval_loss": r["eval/loss"]}
                      for r in done.history if "eval/loss" in r],
            "final": summary["final"], "compile_s": profile["compile_s"],
            "step_time_median_s": profile.get("step_time_median_s"),
            "oracle_mse": summary["final"].get("eval/oracle_mse")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="adam and sofo, N=8, T=20, 10 iterations: a smoke test")
    ap.add_argument("--out", default=None, help="JSON path or directory (default outputs/bench/)")
    ap.add_argument("--optims", default=None, help=f"comma-separated (default {','.join(OPTIMS)})")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_hidden, batch, T, iterations = (8, 8, 20, 10) if args.quick else (32, 32, 100, 300)
    iterations = args.iterations or iterations
    optims = args.optims.split(",") if args.optims else (["adam", "sofo"] if args.quick else list(OPTIMS))
    every = max(1, iterations // 30)
    base = ["task=kalman", "model=rnn", f"model.n_hidden={n_hidden}", f"batch_size={batch}", f"task.n_steps={T}",
            f"eval_every={every}", f"log_every={every}", f"seed={args.seed}"]
    path = bc.out_path(args.out, "loss_vs_wallclock.json")
    runs = []
    for optim in optims:
        n = iterations if args.quick or args.iterations else min(iterations, MAX_ITERATIONS.get(optim, iterations))
        r = run(optim, base, path.parent / "runs" / optim, n)
        last = r["curve"][-1] if r["curve"] else {}
        print(f"{optim:<6} {r['status']:<10} final held-out loss {last.get('eval_loss', float('nan')):.4g} "
              f"after {last.get('time_s', float('nan')):.2f} s ({r['step_time_median_s'] or float('nan'):.4f} s/it)",
              flush=True)
        runs.append(r)
    result = {"benchmark": "loss_vs_wallclock", "quick": args.quick,
              "problem": {"task": "kalman", "model": "rnn", "n_hidden": n_hidden, "batch_size": batch,
                          "n_steps": T, "iterations": iterations, "seed": args.seed,
                          "iterations_per_optim": {r["optim"]: r["iterations"] for r in runs},
                          "hyperparameters": "conf/optim/<name>.yaml defaults"},
              "runs": runs, "machine": bc.machine()}
    from sofo_lab.analysis.compare import compare

    pr = result["problem"]
    compare([path.parent / "runs" / r["optim"] for r in runs], out=path.parent, stem=path.stem,
            title=f"Loss vs training seconds: kalman, rnn N={pr['n_hidden']}, B={pr['batch_size']}, "
                  f"T={pr['n_steps']}, {pr['iterations']} it.; {bc.machine_line(result['machine'])}")
    bc.save(path, result)
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
