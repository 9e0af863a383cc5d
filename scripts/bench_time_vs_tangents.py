#!/usr/bin/env python
"""Seconds per iteration of SOFO against the number of tangents K, next to Adam/BPTT and a plain
forward pass on the same problem.

    python scripts/bench_time_vs_tangents.py [--quick] [--out DIR_OR_JSON] [--ks 8,16,...]

Problem: kalman, rnn N=64, B=32, T=300 (the CPU default task size). Every point is the runner's own
jitted train step (batch sampled inside), AOT-compiled once, then timed over --reps calls each
followed by block_until_ready (median and p90 reported). "forward" is the same step without
learning: sample the batch, run the network, sum the loss. Ratios are to that forward pass.

On a GPU the K tangent lanes run in parallel and this is the SOFO paper's "on par with first-order"
claim; on a CPU the lanes share the cores and the cost grows about linearly with K: this shows the
cost structure, not the GPU claim. Prints a table, writes JSON + PNG.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

KS = (8, 16, 32, 64, 128, 256, 512)


def timed(compiled, ts, reps: int) -> tuple[float, float, list[float]]:
    import jax

    out = compiled(ts)                       # warm-up (first call allocates)
    jax.block_until_ready(out)
    durations = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = compiled(ts)
        jax.block_until_ready(out)
        durations.append(time.perf_counter() - t0)
    return float(np.median(durations)), float(np.percentile(durations, 90)), durations


def setup_for(base: list[str], optim: list[str], batch: int):
    from sofo_lab.train.assemble import build
    from sofo_lab.train.state import init_train_state

    cfg = bc.compose([*base, *optim])
    setup = build(cfg)
    return cfg, setup, init_train_state(setup, cfg.seed, batch)


def forward_step(setup, seed: int, batch: int):
    import jax

    from sofo_lab.core.system import rollout

    task, system = setup.task, setup.system
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)

    def fwd(ts):
        k_data, k_noise = jax.random.split(jax.random.fold_in(key, ts.iteration))
        _, b = task.next_batch(ts.data_state, k_data, batch)
        b = b._replace(noise=system.sample_noise(k_noise, b.inputs.shape[0], batch))
        _, _, losses = rollout(system, ts.params, system.init_state(ts.params, batch), b)
        return losses.sum()

    return fwd


def point(name: str, K, fn, ts, reps: int) -> dict:
    from sofo_lab.train import profiling

    compiled, lower_s, compile_s = profiling.compile_timed(fn, ts)
    median, p90, durations = timed(compiled, ts, reps)
    return {"method": name, "K": K, "median_s": median, "p90_s": p90, "min_s": min(durations),
            "compile_s": compile_s,
            "flops": profiling.compiled_flops(compiled), "step_memory_bytes": profiling.compiled_memory_bytes(compiled)}


def plot(result: dict, path: Path) -> None:
    plt = bc.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    sofo = [p for p in result["points"] if p["method"] == "sofo"]
    ax.plot([p["K"] for p in sofo], [p["median_s"] for p in sofo], "o-", label="SOFO (K tangents)")
    for name, style in (("adam", "--"), ("forward", ":")):
        p = next(p for p in result["points"] if p["method"] == name)
        ax.axhline(p["median_s"], ls=style, color="k" if name == "adam" else "gray",
                   label=f"{'Adam/BPTT' if name == 'adam' else 'forward pass'} ({p['median_s'] * 1e3:.2f} ms)")
    ax.set(xscale="log", yscale="log", xlabel="tangents K", ylabel="seconds per iteration (median)")
    ax.set_xticks([p["K"] for p in sofo], [str(p["K"]) for p in sofo])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    pr = result["problem"]
    ax.set_title(f"Time vs tangents: kalman, rnn N={pr['n_hidden']}, B={pr['batch_size']}, T={pr['n_steps']}\n"
                 f"{bc.machine_line(result['machine'])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="K=8, N=16, B=8, T=50, 2 reps: a smoke test")
    ap.add_argument("--out", default=None, help="JSON path or directory (default outputs/bench/)")
    ap.add_argument("--ks", default=None, help="comma-separated K values (default 8..512)")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    n_hidden, batch, T, reps = (16, 8, 50, 2) if args.quick else (64, 32, 300, 10)
    reps = args.reps or reps
    ks = [int(k) for k in args.ks.split(",")] if args.ks else ([8] if args.quick else list(KS))
    base = ["task=kalman", "model=rnn", f"model.n_hidden={n_hidden}", f"batch_size={batch}",
            f"task.n_steps={T}", "logger=none"]
    from sofo_lab.train.steps import make_train_step

    points = []
    cfg, setup, ts = setup_for(base, ["optim=adam"], batch)
    n_params = sum(int(np.size(x)) for x in __import__("jax").tree.leaves(ts.params))
    points.append(point("forward", None, forward_step(setup, cfg.seed, batch), ts, reps))
    points.append(point("adam", None, make_train_step(setup, cfg.seed, batch), ts, reps))
    for K in ks:
        cfg, setup, ts = setup_for(base, ["optim=sofo", f"optim.n_tangents={K}"], batch)
        points.append(point("sofo", K, make_train_step(setup, cfg.seed, batch), ts, reps))
    fwd = points[0]["median_s"]
    print(f"{'method':<8}{'K':>5}{'ms/it (median)':>16}{'p90':>10}{'x forward':>11}{'x adam':>9}")
    for p in points:
        p["ratio_to_forward"] = p["median_s"] / fwd
        p["ratio_to_adam"] = p["median_s"] / points[1]["median_s"]
        print(f"{p['method']:<8}{p['K'] or '-':>5}{p['median_s'] * 1e3:>16.3f}{p['p90_s'] * 1e3:>10.3f}"
              f"{p['ratio_to_forward']:>11.2f}{p['ratio_to_adam']:>9.2f}", flush=True)
    sofo = [p for p in points if p["method"] == "sofo"]
    per_tangent = bc.slope([p["K"] for p in sofo], [p["median_s"] for p in sofo])
    if per_tangent is not None:
        print(f"SOFO marginal cost: {per_tangent * 1e3:.4f} ms per tangent ({per_tangent / fwd:.3f} forward passes)")
    result = {"benchmark": "time_vs_tangents", "quick": args.quick, "reps": reps,
              "problem": {"task": "kalman", "model": "rnn", "n_hidden": n_hidden, "batch_size": batch,
                          "n_steps": T, "n_params": n_params},
              "points": points, "sofo_seconds_per_tangent": per_tangent, "machine": bc.machine()}
    path = bc.out_path(args.out, "time_vs_tangents.json")
    plot(result, path.with_suffix(".png"))
    bc.save(path, result)
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
