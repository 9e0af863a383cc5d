#!/usr/bin/env python
"""Held-out loss against wall-clock time for every optimizer on one task, in one figure.

    python scripts/bench_loss_vs_wallclock.py [--quick] [--out DIR_OR_JSON] [--optims adam,sofo,...]
                                              [--iterations N] [--seed S]

Each optimizer trains task=kalman (rnn N=32, B=32, T=100) with its default hyperparameters from
conf/optim/ through the runner itself (``sofo_lab.runner.train``, logger=none), evaluating on
the fixed held-out batch every few iterations. Time is the runner's ``time_s`` (host loop wall
clock from the first iteration, compilation excluded; evaluation included, the same for all).
Writes the run directories next to the JSON, the curves in the JSON, and a PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

OPTIMS = ("adam", "tbptt", "uoro", "sofo", "fgd", "rtrl")
# exact RTRL carries the full Jacobian ([B·N] × P floats, O(P) tangent lanes per step): ~2.7 s an
# iteration at this size on 2 CPU cores, so it gets fewer iterations (its curve ends earlier)
MAX_ITERATIONS = {"rtrl": 40}


def run(optim: str, base: list[str], run_dir: Path, iterations: int) -> dict:
    from sofo_lab.errors import RunFailed
    from sofo_lab.runner import train

    cfg = bc.compose([*base, f"optim={optim}", f"iterations={iterations}", f"checkpoint_every={iterations}"])
    try:
        summary = train(cfg, run_dir, {"task": "kalman", "optim": optim})
    except RunFailed as err:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["error"] = str(err)
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = [(r["time_s"], r["iteration"], r["eval/loss"]) for r in history if "eval/loss" in r]
    return {"optim": optim, "iterations": iterations, "status": summary["status"], "error": summary.get("error"),
            "curve": [{"time_s": t, "iteration": i, "eval_loss": v} for t, i, v in curve],
            "final": summary["final"], "compile_s": summary["profile"]["compile_s"],
            "step_time_median_s": summary["profile"].get("step_time_median_s"),
            "oracle_mse": summary["final"].get("eval/oracle_mse")}


def plot(result: dict, path: Path) -> None:
    plt = bc.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for r in result["runs"]:
        pts = [(p["time_s"], p["eval_loss"]) for p in r["curve"] if math.isfinite(p["eval_loss"])]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=2.5, lw=1.2, label=f"{r['optim']}" + ("" if r["status"] == "completed"
                                                                             else f" ({r['status']})"))
    oracle = next((r["oracle_mse"] for r in result["runs"] if r["oracle_mse"]), None)
    if oracle:
        ax.axhline(oracle, color="k", ls=":", lw=1, label=f"oracle Kalman filter ({oracle:.3g})")
    ax.set(xscale="log", yscale="log", xlabel="wall-clock seconds (compilation excluded)",
           ylabel="held-out loss (MSE)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    pr = result["problem"]
    ax.set_title(f"Loss vs wall-clock: kalman, rnn N={pr['n_hidden']}, B={pr['batch_size']}, T={pr['n_steps']}, "
                 f"{pr['iterations']} it.\n{bc.machine_line(result['machine'])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
            f"eval_every={every}", f"log_every={every}", "logger=none", "progress=false", "plots=false",
            "resume=false", f"seed={args.seed}"]
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
    plot(result, path.with_suffix(".png"))
    bc.save(path, result)
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
