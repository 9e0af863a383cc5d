"""Influence balancing (UORO paper's headline; docs/uoro.md), SGD at a fixed rate:
UORO (several seeds) and RTRL converge to θ* = −1/6; TBPTT with truncation 1, 10, 100 diverges;
TBPTT-200 converges. Every run goes through ``sofo_lab.train.trainer.train`` (= ``sofo-run``).

    python scripts/bench_influence.py [--quick] [--out outputs/bench/influence.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine, write_json  # noqa: E402


def run(overrides, run_dir):
    from hydra import compose, initialize_config_dir

    from sofo_lab.conf import CONF_DIR
    from sofo_lab.core.errors import RunFailed
    from sofo_lab.train.trainer import train

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    try:
        summary = train(cfg, run_dir)
    except RunFailed:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = [(r["train/steps"], r["train/theta"], r["train/loss_per_step"]) for r in rows if "train/theta" in r]
    return summary, curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few thousand steps (seconds), for the test suite")
    ap.add_argument("--out", default="outputs/bench/influence.json")
    ap.add_argument("--steps", type=int, default=300_000, help="time steps per run")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seeds", type=int, default=3, help="UORO seeds")
    args = ap.parse_args(argv)
    n_steps = 200
    steps = 2_000 if args.quick else args.steps
    iterations = max(1, steps // n_steps)
    methods = [(f"uoro seed {s}", ["optim=uoro", f"seed={s}"]) for s in range(1 if args.quick else args.seeds)]
    methods += [("rtrl", ["optim=rtrl"])]
    methods += [(f"tbptt-{k}", ["optim=tbptt", f"optim.truncation={k}"]) for k in ((10,) if args.quick else (1, 10, 100, 200))]
    common = ["task=influence", f"task.n_steps={n_steps}", "batch_size=1", f"iterations={iterations}",
              "optim.update=sgd", f"optim.lr={args.lr}", "optim.schedule=null", "logger=none", "progress=false",
              "plots=false", f"log_every={max(1, iterations // 150)}", f"checkpoint_every={iterations}"]
    theta_star = -1 / 6
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, overrides) in enumerate(methods):
            summary, curve = run(common + overrides, Path(tmp) / str(i))
            final = summary["final"]
            theta = final.get("train/theta", curve[-1][1] if curve else float("nan"))
            status = summary["status"]
            converged = status == "completed" and abs(theta - theta_star) < 1e-3
            results[label] = {"status": status, "final_theta": theta, "final_loss_per_step":
                              final.get("train/loss_per_step"), "steps_done": summary["iterations"] * n_steps,
                              "converged": converged, "curve": curve}
            print(f"{label:14s} {status:10s} θ = {theta:+.6g}   loss/step = {final.get('train/loss_per_step', float('nan')):.3g}"
                  f"   steps = {summary['iterations'] * n_steps}   {'converged' if converged else 'NOT converged'}",
                  flush=True)
    out = Path(args.out)
    result = {"benchmark": "influence_balancing", "machine": machine(), "quick": args.quick, "lr": args.lr,
              "optimizer": "sgd", "steps": iterations * n_steps, "theta_star": theta_star, "runs": results}
    write_json(out, result)
    plot(results, out.with_suffix(".png"), theta_star)
    return result


def plot(results, path, theta_star):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, r in results.items():
        if not r["curve"]:
            continue
        steps, theta, loss = zip(*r["curve"])
        style = "-" if label.startswith(("uoro", "rtrl")) else "--"
        ax1.plot(steps, theta, style, label=label, lw=1.2)
        ax2.semilogy(steps, [max(v, 1e-30) for v in loss], style, label=label, lw=1.2)
    ax1.axhline(theta_star, color="k", lw=0.8, ls=":")
    ax1.set_ylim(-1, 3)
    ax1.set_xlabel("time step")
    ax1.set_ylabel("θ  (θ* = −1/6 dotted)")
    ax2.set_xlabel("time step")
    ax2.set_ylabel("loss per step")
    ax1.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("Influence balancing, SGD: UORO/RTRL converge, TBPTT-1/10/100 diverge, TBPTT-200 converges")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
