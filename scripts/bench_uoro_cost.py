"""Cost of a UORO step relative to a forward step (rnn / gru / lstm), on the current backend.

A UORO step is one forward with residuals, two pullbacks of that linearisation (the loss and
the signs ν), one jvp and O(P) vector work, so its time should be a small constant times a
forward step (target: at most 4 on CPU). Both are timed as one jitted ``lax.scan`` over T steps
(the forward computes the per-step loss as well); UORO includes its per-step optax Adam update.
At B = 1 a forward step is one matrix-vector product per weight (it reads the P parameters
once) while UORO does O(P) vector work several times (two weight cotangents, θ̃, g̃, Adam), so
the ratio is larger there; with B streams the matrix work grows and the ratio falls.

Next to the times it records the arithmetic: XLA's own flop count (``Compiled.cost_analysis``) of
the forward and of the UORO update. Both are one ``lax.scan``, whose body the count covers once,
so the numbers are flops per time step and their ratio is what a UORO step must compute per
forward step, before any overhead: a time ratio near it is flop-bound, one far above it is not.

    python scripts/bench_uoro_cost.py [--quick] [--out outputs/bench/uoro_cost.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from bench_common import machine, write_json  # noqa: E402
from sofo_lab.core.losses import SoftmaxCrossEntropy  # noqa: E402
from sofo_lab.core.system import Batch, ModelSystem, rollout  # noqa: E402
from sofo_lab.core.tree import count_params  # noqa: E402
from sofo_lab.models import GRU, LSTM, RateRNN  # noqa: E402
from sofo_lab.optim.bptt import bptt  # noqa: E402
from sofo_lab.optim.tbptt import tbptt  # noqa: E402
from sofo_lab.optim.uoro import uoro  # noqa: E402
from sofo_lab.train.profiling import compiled_flops  # noqa: E402

MODELS = {"rnn": lambda V, N: RateRNN(V, V, n_hidden=N, nonlinearity="tanh"),
          "gru": lambda V, N: GRU(V, V, n_hidden=N), "lstm": lambda V, N: LSTM(V, V, n_hidden=N)}


def char_batch(key, T, B, V):
    symbols = jax.random.randint(key, (T + 1, B), 0, V)
    return Batch(jax.nn.one_hot(symbols[:-1], V), jax.nn.one_hot(symbols[1:], V), jnp.full((T, B), 1.0 / T))


def interleaved_min(fns: dict, repeats: int) -> dict:
    """Minimum wall time of each compiled ``fn(*args)``, the repeats interleaved so that load on a
    shared machine hits every candidate alike (ratios are then robust to it)."""
    best = {}
    for label, (fn, args) in fns.items():
        jax.block_until_ready(fn(*args))
    for _ in range(repeats):
        for label, (fn, args) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
    return best


def adam_only(params, T):
    """T Adam updates of a flat P-vector (what UORO's per-step update costs on its own)."""
    flat = jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(params)])
    tx = optax.adam(1e-3)

    def body(c, _):
        p, s = c
        u, s = tx.update(p, s, p)
        return (p + u, s), None

    return jax.jit(lambda c: jax.lax.scan(body, c, None, length=T)[0]), ((flat, tx.init(flat)),)


def measure(name, T, B, N, V, repeats):
    system = ModelSystem(MODELS[name](V, N), SoftmaxCrossEntropy())
    params = system.init_params(jax.random.PRNGKey(0))
    batch = char_batch(jax.random.PRNGKey(1), T, B, V)
    carry = system.init_state(params, B)
    key = jax.random.PRNGKey(2)
    fns = {"forward": (jax.jit(lambda p, c, b: rollout(system, p, c, b)[2].sum()), (params, carry, batch))}
    for label, opt in (("uoro", uoro(system, optax.adam(1e-3), batch_size=B)),
                       ("uoro_sgd", uoro(system, optax.sgd(1e-3), batch_size=B)),
                       ("tbptt1", tbptt(system, optax.adam(1e-3), truncation=1)),
                       ("bptt", bptt(system, optax.adam(1e-3)))):
        fns[label] = (jax.jit(opt.update), (params, opt.init(params), batch, key, carry))
    fns["adam_only"] = adam_only(params, T)
    best = interleaved_min(fns, repeats)
    us = {k: 1e6 * v / T for k, v in best.items()}
    fwd = us["forward"]
    flops = {k: compiled_flops(jax.jit(fns[k][0]).lower(*fns[k][1]).compile()) for k in ("forward", "uoro")}
    return {"model": name, "T": T, "B": B, "n_hidden": N, "vocab": V, "n_params": count_params(params),
            "forward_step_us": fwd, "uoro_step_us": us["uoro"], "ratio": us["uoro"] / fwd,
            "uoro_sgd_step_us": us["uoro_sgd"], "ratio_sgd": us["uoro_sgd"] / fwd,
            "adam_only_step_us": us["adam_only"], "adam_ratio": us["adam_only"] / fwd,
            "tbptt1_step_us": us["tbptt1"], "bptt_step_us": us["bptt"],
            "forward_flops_per_step": flops["forward"], "uoro_flops_per_step": flops["uoro"],
            "flops_ratio": flops["uoro"] / flops["forward"] if flops["uoro"] and flops["forward"] else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for the test suite")
    ap.add_argument("--out", default="outputs/bench/uoro_cost.json")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved repeats (minimum kept)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="streams B")
    args = ap.parse_args(argv)
    T, N, V, repeats = (20, 8, 3, 1) if args.quick else (1000, 64, 13, args.repeats)
    batches = (1,) if args.quick else tuple(args.batch_sizes)
    models = ("rnn",) if args.quick else tuple(args.models)
    rows = [measure(name, T, B, N, V, repeats) for B in batches for name in models]
    print(f"{'model':6s} {'B':>4s} {'forward':>8s} {'UORO':>8s} {'ratio':>6s} {'UORO+SGD':>9s} {'ratio':>6s} "
          f"{'Adam alone':>10s} {'ratio':>6s} {'TBPTT-1':>8s} {'BPTT':>7s} {'flops ratio':>11s}"
          f"   (µs per time step; ratio = / forward; flops ratio: UORO / forward, XLA's count)")
    for r in rows:
        print(f"{r['model']:6s} {r['B']:4d} {r['forward_step_us']:8.1f} {r['uoro_step_us']:8.1f} {r['ratio']:6.2f} "
              f"{r['uoro_sgd_step_us']:9.1f} {r['ratio_sgd']:6.2f} {r['adam_only_step_us']:10.1f} {r['adam_ratio']:6.2f} "
              f"{r['tbptt1_step_us']:8.1f} {r['bptt_step_us']:7.1f} "
              f"{'-' if r['flops_ratio'] is None else format(r['flops_ratio'], '11.2f')}")
    result = {"benchmark": "uoro_cost", "machine": machine(), "quick": args.quick, "rows": rows,
              "target_ratio": 4.0}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
