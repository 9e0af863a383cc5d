"""SOFO's time per iteration against a straightforward vmap-of-jvp implementation.

    python scripts/bench_sofo_speed.py [--quick] [--out outputs/bench/sofo_speed.json]

Problem (issue 3): vanilla rate RNN, N=128, B=64, T=200, K=64, MSE readout (I=O=1).

The reference ("vmap-of-jvp") follows the design of the SOFO authors' public ``jax/api.py``
(``value_and_sofo_grad_temporal``), written anew here: inside one ``lax.scan``, ``vmap`` over the K
lanes of ``jax.jvp`` of the whole step in (params, state) with the primal outputs batched along
and lane 0 taken as the next primal state; the loss tangent by ``vmap`` of ``jvp`` of the loss;
G̃ as the batch mean of per-trial outer products; SVD for the solve. Everything else (tangent
sampling, the parameter step) is the same as ours. Both are jitted; timings interleave the two,
after compilation, with ``block_until_ready``.

Also measured: our generic stepper (``optim.fast=false``), SOFO's time against K (sublinear for
small K: the lanes are batched matrix products), the forward pass alone, and Adam/BPTT.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--threads=1" in sys.argv:    # must precede the jax import
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench_common import machine  # noqa: E402
from sofo_lab.core.losses import MeanSquaredError  # noqa: E402
from sofo_lab.core.system import Batch, ModelSystem, rollout  # noqa: E402
from sofo_lab.models import RateRNN  # noqa: E402
from sofo_lab.optim import _forward  # noqa: E402
from sofo_lab.optim.bptt import bptt  # noqa: E402
from sofo_lab.optim.sofo import sofo  # noqa: E402


def vmap_of_jvp_update(system, n_tangents: int, damping: float, lr: float):
    """The straightforward SOFO update (see the module docstring)."""
    loss_fn = system.loss

    def update(params, batch, key):
        tangents = _forward.sample_tangents(key, params, n_tangents)
        B = batch.inputs.shape[1]

        def body(carry, xs):
            state, dstate, loss, c, ggn = carry
            x, target, w = xs

            def lane(v, ds):
                return jax.jvp(lambda p, s: system.step(p, s, x), (params, state), (v, ds))

            (states, ys), (dstate, dy) = jax.vmap(lane)(tangents, dstate)     # primal batched along
            y = ys[0]
            values, dl = jax.vmap(lambda t: jax.jvp(lambda out: loss_fn.value(out, target, w), (y,), (t,)))(dy)
            ggn_t = jnp.mean(jax.vmap(lambda t: t @ t.T, in_axes=1)(dy), axis=0)
            return (states[0], dstate, loss + values[0], c + dl, ggn + ggn_t), None

        state0 = system.init_state(params, B)
        dstate0 = jnp.zeros((n_tangents,) + state0.shape, state0.dtype)
        init = (state0, dstate0, 0.0, jnp.zeros(n_tangents), jnp.zeros((n_tangents, n_tangents)))
        (_, _, loss, c, ggn), _ = jax.lax.scan(body, init, (batch.xs, batch.targets, batch.weights))
        u, s, _ = jnp.linalg.svd(ggn)
        z = (u / (s + damping * s.max())) @ (u.T @ c)
        direction = _forward.combine(tangents, z)
        return jax.tree.map(lambda p, d: p - lr * d, params, direction), loss

    return update


def timed(fns: dict, args: dict, repeats: int) -> dict:
    """Interleaved timings of already-compiled functions: wall-clock and this process's CPU time.

    On a shared machine the CPU time (``time.process_time``) is the steadier measure of work;
    with ``--threads=1`` it equals the single-core time the computation needs.
    """
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args[name]))
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {name: {"wall_median_s": float(np.median(wall[name])), "wall_min_s": float(np.min(wall[name])),
                   "cpu_median_s": float(np.median(cpu[name])), "cpu_min_s": float(np.min(cpu[name]))}
            for name in fns}


def memory_profile(horizons=(100, 10_000), n_hidden=32, batch_size=16, n_tangents=16) -> dict:
    """Compiled memory (``memory_analysis()``, nothing executed) of one update, batch as an argument.

    ``temp`` is the update's working memory; ``argument`` holds the batch ([T, B] arrays) and
    so grows with T for every optimizer.
    """
    system = ModelSystem(RateRNN(1, 1, n_hidden=n_hidden), MeanSquaredError())
    params = jax.eval_shape(system.init_params, jax.random.PRNGKey(0))
    out = {"problem": {"N": n_hidden, "B": batch_size, "K": n_tangents}}
    for name, opt in (("sofo", sofo(system, optax.sgd(0.1), n_tangents=n_tangents)),
                      ("adam_bptt", bptt(system, optax.adam(1e-3)))):
        for T in horizons:
            batch = Batch(*(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in
                            ((T, batch_size, 1), (T, batch_size, 1), (T, batch_size))))
            compiled = jax.jit(lambda p, s, b, k, opt=opt: opt.update(p, s, b, k, None)).lower(
                params, opt.init(params), batch, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
            m = compiled.memory_analysis()
            out[f"{name}_T{T}"] = {"temp": m.temp_size_in_bytes, "argument": m.argument_size_in_bytes,
                                   "output": m.output_size_in_bytes}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/bench/sofo_speed.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--n-hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--tangents", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--k-sweep", default="1,2,4,8,16,32,64")
    ap.add_argument("--threads", default="all", help="--threads=1: single-threaded XLA (set before jax starts)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_hidden, args.batch, args.steps, args.tangents, args.repeats, args.k_sweep = 16, 8, 10, 4, 2, "4"
    N, B, T, K = args.n_hidden, args.batch, args.steps, args.tangents
    system = ModelSystem(RateRNN(1, 1, n_hidden=N, dt=1.0, tau=4.0), MeanSquaredError())
    params = system.init_params(jax.random.PRNGKey(0))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    batch = Batch(jax.random.normal(k1, (T, B, 1)), jax.random.normal(k2, (T, B, 1)), jnp.full((T, B), 1.0 / T))
    info = {"machine": machine(), "problem": {"model": "rnn", "N": N, "B": B, "T": T, "K": K, "I": 1, "O": 1,
                                              "P": _forward.n_params(params)}, "quick": args.quick}

    def ours(k, fast=True):
        opt = sofo(system, optax.sgd(0.1), n_tangents=k, fast=fast)
        state = opt.init(params)
        return jax.jit(lambda p, b, key: opt.update(p, state, b, key, None)[0])

    fns = {"vmap_of_jvp": jax.jit(vmap_of_jvp_update(system, K, 1e-5, 0.1)), "sofo": ours(K)}
    if not args.quick:
        fns["sofo_generic_stepper"] = ours(K, fast=False)
        adam = bptt(system, optax.adam(1e-3))
        adam_state = adam.init(params)
        fns["adam_bptt"] = jax.jit(lambda p, b, key: adam.update(p, adam_state, b, key, None)[0])
        fns["forward_only"] = jax.jit(lambda p, b, key: rollout(system, p, system.init_state(p, B), b)[2].sum())
    call = {name: (params, batch, jax.random.PRNGKey(2)) for name in fns}
    compile_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*call[name]))
        compile_s[name] = round(time.perf_counter() - t0, 3)
    res = timed(fns, call, args.repeats)
    ratios = {k: res["sofo"][k] / res["vmap_of_jvp"][k] for k in res["sofo"]}

    sweep = {}
    for k in [int(x) for x in args.k_sweep.split(",")]:
        fn = fns["sofo"] if k == K else ours(k)
        jax.block_until_ready(fn(*call["sofo"]))
        sweep[k] = timed({"sofo": fn}, {"sofo": call["sofo"]}, max(2, args.repeats // 2))["sofo"]["cpu_min_s"]

    if not args.quick:
        info["memory_bytes"] = memory_profile()
        for name in ("sofo", "adam_bptt"):
            short, long = info["memory_bytes"][f"{name}_T100"], info["memory_bytes"][f"{name}_T10000"]
            print(f"{name}: update temp memory {short['temp']} B at T=100, {long['temp']} B at T=10,000 "
                  f"(x{long['temp'] / short['temp']:.2f})")
    info.update({"threads": args.threads, "seconds_per_iteration": res, "first_call_s (compile + run)": compile_s,
                 "ratio_sofo_over_vmap_of_jvp": ratios, "sofo_cpu_seconds_vs_K (min)": sweep})
    print(f"machine: {info['machine']['cpu']} ({info['machine']['cores']} cores), jax {jax.__version__}, "
          f"{jax.default_backend()}, XLA threads: {args.threads}, load {info['machine']['load_avg_1m']}")
    print(f"problem: rnn N={N} B={B} T={T} K={K} (P={info['problem']['P']})")
    for name, r in res.items():
        print(f"  {name:22s} wall median {r['wall_median_s'] * 1e3:8.1f} ms  min {r['wall_min_s'] * 1e3:8.1f} ms"
              f" | cpu median {r['cpu_median_s'] * 1e3:8.1f} ms  min {r['cpu_min_s'] * 1e3:8.1f} ms")
    print("SOFO / vmap-of-jvp time per iteration: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    print("SOFO CPU time vs K: " + ", ".join(f"K={k}: {t * 1e3:.1f} ms" for k, t in sweep.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
