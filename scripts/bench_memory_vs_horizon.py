#!/usr/bin/env python
"""Memory vs horizon T for sofo, uoro, tbptt and adam (BPTT): the SOFO paper's memory figure.

    python scripts/bench_memory_vs_horizon.py [--quick] [--out DIR_OR_JSON]

One task (kalman), one model size (rnn, N=64, B=32; SOFO K=32; TBPTT truncation 16), T from 100
to 100k. Nothing runs: each jitted step is compiled for abstract shapes (jax.ShapeDtypeStruct) and
XLA's memory_analysis() gives its memory. Two numbers per point:

- ``step``: the whole jitted train step the runner executes (temp + arguments + outputs − aliased),
  ``summary.json``'s ``step_memory_bytes``; kalman generates its batch step by step inside the
  optimizer's scan (``GeneratedBatch``), so for SOFO and UORO nothing in it grows with T;
- ``update_temp``: the optimizer's working memory beyond its inputs: temp bytes of
  ``optimizer.update`` with the batch passed in. Flat in T for forward-mode methods (SOFO, UORO:
  they carry tangents, store nothing per step), linear for BPTT (it stores every step's state).

Prints a table and the slope of each line (bytes per time step, least squares), writes JSON + PNG.
On a GPU, ``--device-peak`` also runs one step of each point in a fresh process and records the
allocator's peak bytes (``memory_stats()``; its high-water mark never resets, hence the process).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

METHODS = ("sofo", "uoro", "tbptt", "adam")
HORIZONS = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
METHOD_OVERRIDES = {"sofo": ["optim.n_tangents=32"], "uoro": [], "tbptt": ["optim.truncation=16"], "adam": []}


def overrides(method: str, T: int, n_hidden: int, batch: int) -> list[str]:
    return ["task=kalman", "model=rnn", f"optim={method}", f"task.n_steps={T}", f"model.n_hidden={n_hidden}",
            f"batch_size={batch}", "logger=none", *METHOD_OVERRIDES[method]]


def measure(method: str, T: int, n_hidden: int, batch: int, whole_step: bool = True) -> dict:
    import jax

    from sofo_lab.train import profiling
    from sofo_lab.train.assemble import build
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    cfg = bc.compose(overrides(method, T, n_hidden, batch))
    setup = build(cfg)
    abstract = jax.eval_shape(lambda: init_train_state(setup, cfg.seed, batch))
    t0 = time.perf_counter()
    step = jax.jit(make_train_step(setup, cfg.seed, batch)).lower(abstract).compile() if whole_step else None
    m = step.memory_analysis() if whole_step else None

    def sample(ts):
        key = jax.random.PRNGKey(0)
        _, b = setup.task.next_batch(ts.data_state, key, batch)
        return b._replace(noise=setup.system.sample_noise(key, b.inputs.shape[0], batch))

    abstract_batch = jax.eval_shape(sample, abstract)
    key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
    update = jax.jit(setup.optimizer.update).lower(abstract.params, abstract.opt_state, abstract_batch, key,
                                                   abstract.carry).compile()
    u = update.memory_analysis()
    return {"method": method, "T": T, "step_bytes": profiling.compiled_memory_bytes(step) if step else None,
            "step_temp_bytes": int(m.temp_size_in_bytes) if m else None,
            "step_argument_bytes": int(m.argument_size_in_bytes) if m else None,
            "update_temp_bytes": int(u.temp_size_in_bytes),
            "batch_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_batch))),
            "compile_s": round(time.perf_counter() - t0, 3)}


def device_peak(method: str, T: int, n_hidden: int, batch: int) -> int | None:
    """One executed step in a fresh process; the allocator's peak (GPU only)."""
    code = ("import sys, json, jax; sys.path.insert(0, %r); import bench_common as bc\n"
            "from sofo_lab.train.assemble import build\nfrom sofo_lab.train.state import init_train_state\nfrom sofo_lab.train.steps import make_train_step\n"
            "cfg = bc.compose(%r); s = build(cfg); ts = init_train_state(s, 0, %d)\n"
            "out = jax.jit(make_train_step(s, 0, %d))(ts); jax.block_until_ready(out)\n"
            "print(json.dumps((jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use')))"
            % (str(Path(__file__).resolve().parent), overrides(method, T, n_hidden, batch), batch, batch))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None


def plot(result: dict, path: Path) -> None:
    plt = bc.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "update_temp_bytes", "optimizer working memory (temp)"),
                           (axes[1], "step_bytes", "whole train step (incl. sampled batch)")):
        for method in result["methods"]:
            pts = [(r["T"], r[key]) for r in result["points"] if r["method"] == method and r[key] is not None]
            s = result["slopes"][method][key] or 0.0
            if not pts:
                continue
            ax.plot(*zip(*pts), "o-", label=f"{method} ({s if abs(s) >= 0.5 else 0:,.0f} B/step)", ms=3)
        ax.set(xscale="log", yscale="log", xlabel="horizon T (steps)", ylabel="bytes", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Memory vs horizon: kalman, rnn N={result['n_hidden']}, B={result['batch_size']}\n"
                 f"{bc.machine_line(result['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="sofo and adam, T in {100, 1000}, N=16, B=8, optimizer update only: a smoke test")
    ap.add_argument("--out", default=None, help="JSON path or directory (default outputs/bench/)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device-peak", action="store_true", help="GPU: also run each point and record the peak")
    args = ap.parse_args()
    horizons = (100, 1_000) if args.quick else HORIZONS
    n_hidden, batch = (16, 8) if args.quick else (64, 32)
    methods = [m for m in args.methods.split(",") if m]
    if args.quick and args.methods == ",".join(METHODS):
        methods = ["sofo", "adam"]
    points = []
    print(f"{'method':<7}{'T':>8}{'update temp':>14}{'step total':>14}{'batch':>12}  (MiB)")
    for method in methods:
        for T in horizons:
            r = measure(method, T, n_hidden, batch, whole_step=not args.quick)
            if args.device_peak:
                r["device_peak_bytes"] = device_peak(method, T, n_hidden, batch)
            points.append(r)
            print(f"{method:<7}{T:>8}{r['update_temp_bytes'] / 2**20:>14.3f}{(r['step_bytes'] or 0) / 2**20:>14.3f}"
                  f"{r['batch_bytes'] / 2**20:>12.3f}", flush=True)
    slopes = {m: {k: bc.slope([p["T"] for p in points if p["method"] == m],
                              [p[k] for p in points if p["method"] == m])
                  for k in ("update_temp_bytes", "step_bytes", "batch_bytes")} for m in methods}
    print("\nslope, bytes per time step (least squares over T):")
    for m in methods:
        s = slopes[m]
        print(f"  {m:<6} update temp {s['update_temp_bytes']:>10.1f}   whole step {s['step_bytes'] or 0:>10.1f}"
              f"   (a materialized batch: {s['batch_bytes']:.1f})")
    result = {"benchmark": "memory_vs_horizon", "task": "kalman", "model": "rnn", "n_hidden": n_hidden,
              "batch_size": batch, "sofo_n_tangents": 32, "tbptt_truncation": 16, "horizons": list(horizons),
              "methods": methods, "points": points, "slopes": slopes, "quick": args.quick,
              "machine": bc.machine(),
              "note": "compiled memory_analysis() on abstract shapes (nothing executed); "
                      "device_peak_bytes only with --device-peak on a GPU"}
    path = bc.out_path(args.out, "memory_vs_horizon.json")
    plot(result, path.with_suffix(".png"))
    bc.save(path, result)
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
