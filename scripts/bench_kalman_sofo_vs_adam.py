"""Adaptive Kalman task at CPU scale: SOFO against Adam/BPTT at equal iterations and equal wall-clock.

    python scripts/bench_kalman_sofo_vs_adam.py [--quick] [--seeds 0,1,2] [--out outputs/bench/kalman_sofo_vs_adam.json]

Both optimizers train the same rate RNN on the same batches (the runner's jitted train step:
batch sampled inside from (seed, iteration)), several seeds each. SOFO runs ``--iterations``
updates; Adam runs the same number, then continues until its training wall-clock equals SOFO's.
Every ``--eval-every`` updates both are scored on the same held-out batch: MSE next to the oracle
Kalman filter and to copying the observation. Evaluation time is not counted as training time.
Writes the JSON (curves, finals, machine) and a PNG with the loss curves (``--out`` with .png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sofo_speed import machine  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402

from sofo_lab.assemble import build  # noqa: E402
from sofo_lab.cli import CONF_DIR  # noqa: E402
from sofo_lab.runner import init_train_state, make_eval, make_train_step  # noqa: E402


def config(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


_EVALS = {}


def train_curve(overrides, seed, batch_size, iterations, eval_every, time_budget=None, eval_batch=256,
                eval_key=None):
    """Train; return evaluation points (iteration, train seconds, eval metrics) and the train losses.

    Runs with the same ``eval_key`` (same task, model and seed) share one compiled evaluation.
    """
    cfg = config([*overrides, f"seed={seed}", f"batch_size={batch_size}", "logger=none",
                  f"iterations={iterations}"])
    setup = build(cfg)
    ts = init_train_state(setup, seed, batch_size)
    step = jax.jit(make_train_step(setup, seed, batch_size))
    if eval_key is None or eval_key not in _EVALS:
        _EVALS[eval_key] = make_eval(setup, seed, eval_batch)[0]
    evaluate = _EVALS[eval_key]
    ts_next, _ = step(ts)                      # compile (not counted)
    jax.block_until_ready(ts_next)
    jax.block_until_ready(evaluate(ts.params))
    points, losses, clock, i = [], [], 0.0, 0

    def record():
        m = jax.device_get(evaluate(ts.params)[0])
        points.append({"iteration": i, "train_s": clock, **{k: float(v) for k, v in m.items()}})

    record()
    while i < iterations or (time_budget is not None and clock < time_budget):
        t0 = time.perf_counter()
        ts, metrics = step(ts)
        loss = float(metrics["loss"])           # blocks: the step is done
        clock += time.perf_counter() - t0
        i += 1
        losses.append(loss)
        if i % eval_every == 0:
            record()
    if points[-1]["iteration"] != i:
        record()
    return {"points": points, "train_loss": losses, "iterations": i, "train_s": clock}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"sofo": "tab:red", "adam": "tab:blue"}
    for name, runs in result["runs"].items():
        for j, run in enumerate(runs):
            it = [p["iteration"] for p in run["points"]]
            sec = [p["train_s"] for p in run["points"]]
            mse = [p["mse"] for p in run["points"]]
            label = name if j == 0 else None
            axes[0].plot(it, mse, color=colors[name], lw=1, alpha=0.8, label=label)
            axes[1].plot(sec, mse, color=colors[name], lw=1, alpha=0.8, label=label)
    oracle = np.mean([r["points"][-1]["oracle_mse"] for r in result["runs"]["sofo"]])
    copy = np.mean([r["points"][-1]["copy_mse"] for r in result["runs"]["sofo"]])
    for ax in axes:
        ax.axhline(oracle, color="tab:green", ls="--", lw=1, label="oracle Kalman filter")
        ax.axhline(copy, color="0.5", ls=":", lw=1, label="copy observation")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("training wall-clock (s)")
    axes[0].set_ylabel("held-out MSE")
    axes[0].legend(fontsize=8)
    p = result["problem"]
    fig.suptitle(f"Kalman task, T={p['T']}, N={p['N']}, B={p['B']}, SOFO K={p['K']}; "
                 f"{len(result['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    result = {"machine": machine(), "seeds": seeds, "quick": args.quick,
              "problem": {"task": "kalman", "T": args.n_steps, "N": args.n_hidden, "B": args.batch,
                          "K": args.tangents, "iterations": args.iterations},
              "overrides": {"sofo": sofo, "adam": adam}, "runs": {"sofo": [], "adam": []}}
    t_start = time.perf_counter()
    for seed in seeds:
        eval_batch = args.batch if args.quick else 256
        key = (tuple(common), seed, args.batch, eval_batch)
        s = train_curve(sofo, seed, args.batch, args.iterations, args.eval_every, eval_batch=eval_batch, eval_key=key)
        a = train_curve(adam, seed, args.batch, args.iterations, args.eval_every, time_budget=s["train_s"],
                        eval_batch=eval_batch, eval_key=key)
        result["runs"]["sofo"].append(s)
        result["runs"]["adam"].append(a)
        print(f"seed {seed}: SOFO {s['iterations']} it in {s['train_s']:.1f} s -> MSE {s['points'][-1]['mse']:.3f}; "
              f"Adam {a['iterations']} it in {a['train_s']:.1f} s -> MSE {a['points'][-1]['mse']:.3f}", flush=True)

    def at_iteration(run, it):
        return next(p["mse"] for p in run["points"] if p["iteration"] >= it)

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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
