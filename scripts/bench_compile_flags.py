"""Compile time of the suite's tiny training steps under the XLA settings tests/conftest.py uses.

The test suite is bound by compilation, not by arithmetic: its programs are tiny (N = 16, T = 40,
B = 8). This benchmark lowers and compiles one jitted update per case (reach and Kalman, SOFO and
Adam) in a fresh process per setting, with no compilation cache, and prints each setting's compile
time and its ratio to XLA's defaults:

- ``default``: what ``sofo-run`` uses;
- ``no_opt``: ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (no LLVM optimization passes);
- ``suite``: that and ``--xla_cpu_use_fusion_emitters=false`` (XLA CPU's older elementwise
  emitters), the suite's setting.

    python scripts/bench_compile_flags.py [--out docs/results/suite_compile_flags.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import compose, machine, write_json  # noqa: E402

SETTINGS = {
    "default": {},
    "no_opt": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    "suite": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"},
}
CASES = [("reach", "adam"), ("reach", "sofo"), ("kalman", "adam"), ("kalman", "sofo")]
TINY = ["task.n_steps=40", "batch_size=8", "model.n_hidden=16", "logger=none"]


def compile_times() -> dict:
    """In this process: ``{case: {"lower_s", "compile_s"}}`` for one jitted update of each case."""
    import jax

    from sofo_lab.train.assemble import build
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    out = {}
    for task, optim in CASES:
        cfg = compose([f"task={task}", f"optim={optim}", *TINY, *(["optim.n_tangents=8"] if optim == "sofo" else [])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # tiny trials are compressed, with a warning
            setup = build(cfg)
        state = init_train_state(setup, 0, 1)
        step = jax.jit(make_train_step(setup, 0, 1))
        t0 = time.perf_counter()
        lowered = step.lower(state)
        t1 = time.perf_counter()
        lowered.compile()
        out[f"{task}/{optim}"] = {"lower_s": t1 - t0, "compile_s": time.perf_counter() - t1}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/suite_compile_flags.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(compile_times()))
        return {}
    clean = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS", "JAX_COMPILATION_CACHE_DIR")}
    results = {}
    for name, env in SETTINGS.items():
        proc = subprocess.run([sys.executable, __file__, "--child"], env={**clean, **env},
                              capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'case':14s}" + "".join(f"{n:>12s}" for n in SETTINGS) + "   compile s; ratio to default")
    for case in results["default"]:
        base = results["default"][case]["compile_s"]
        print(f"{case:14s}" + "".join(f"{results[n][case]['compile_s']:12.2f}" for n in SETTINGS) + "   " +
              " ".join(f"{results[n][case]['compile_s'] / base:.2f}" for n in SETTINGS))
    total = {n: sum(r["compile_s"] for r in results[n].values()) for n in SETTINGS}
    print(f"{'total':14s}" + "".join(f"{total[n]:12.2f}" for n in SETTINGS) + "   " +
          " ".join(f"{total[n] / total['default']:.2f}" for n in SETTINGS))
    record = {"benchmark": "compile time of tiny steps by XLA setting", "machine": machine(),
              "load_avg_1m": os.getloadavg()[0], "settings": SETTINGS, "sizes": TINY, "results": results,
              "total_compile_s": total}
    write_json(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
