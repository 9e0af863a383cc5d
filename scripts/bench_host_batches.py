"""Host-side batches against the pool compiled into the update (issue 22, item 1), one process.

    python scripts/bench_host_batches.py [--quick] [--trials 2000] [--steps 100] [--out docs/results/host_batches.json]

A recording of ``--trials`` trials (task=recorded, written by ``tasks.recorded.example_dataset``'s
model at a larger size) trains with Adam and with SOFO in two ways, side by side:

- ``device``: the old path, the whole pool on the device, compiled into the update as a constant,
  each batch drawn inside ``jit`` (``task.sample``);
- ``host``: the runner's path, batch i made on the host from ``(seed, i)`` and prepared a call
  ahead on a worker thread (sofo_lab/train/host_batches.py), the update taking it as an argument.

Printed per optimizer: compile seconds and ms per update (median over timed updates, including
making the next batch on the host); and the pool's size. The built-in tasks (batches sampled inside
``jit``) take exactly the code path they took before; ``scripts/bench_closed_loop.py`` times them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_common import compose, machine, machine_line, write_json  # noqa: E402


def timed_run(setup, cfg, host: bool, updates: int):
    from sofo_lab.train import profiling
    from sofo_lab.train.host_batches import HostBatches
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    task = setup.task
    task.host_batches = host                      # the instance decides the path (class default: True)
    state = init_train_state(setup, cfg.seed, cfg.batch_size)
    batches = HostBatches(task, cfg.seed, cfg.batch_size) if host else None
    example = (batches.make(0),) if host else ()
    compiled, _, compile_s = profiling.compile_timed(make_train_step(setup, cfg.seed, cfg.batch_size), state, *example)
    jax.block_until_ready(compiled(state, *example))
    times = []
    for i in range(updates):
        t0 = time.perf_counter()
        args = (batches.get(i, 1, upcoming=[(i + 1, 1)]),) if host else ()
        state, metrics = compiled(state, *args)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    if batches is not None:
        batches.close()
    return {"compile_s": compile_s, "ms": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--optims", default="adam,sofo")
    ap.add_argument("--out", default="docs/results/host_batches.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.steps, args.updates = 60, 20, 3
    from sofo_lab.tasks.recorded import example_dataset
    from sofo_lab.train.assemble import build

    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.npz"
        np.savez(path, **example_dataset(n_trials=args.trials, n_steps=args.steps))
        for optim in args.optims.split(","):
            cfg = compose(["task=recorded", f"task.path={path}", f"task.n_steps={args.steps}", f"optim={optim}",
                           "model.n_hidden=32", "logger=none"])
            for host in (False, True):
                setup = build(cfg)
                rec = timed_run(setup, cfg, host, args.updates)
                rec["pool_mb"] = setup.task.pool_bytes / 2**20
                records[f"{optim}/{'host' if host else 'device'}"] = rec
    m = machine()
    print(f"{machine_line(m)}; load {m['load_avg_1m']:.1f}; {args.trials} trials x {args.steps} steps")
    print(f"{'case':14s} {'pool MB':>8s} {'compile s':>10s} {'ms/update':>10s} {'min':>7s}")
    for name, r in records.items():
        print(f"{name:14s} {r['pool_mb']:8.1f} {r['compile_s']:10.2f} {r['ms']:10.1f} {r['ms_min']:7.1f}")
    result = {"machine": m, "trials": args.trials, "steps": args.steps, "updates": args.updates,
              "quick": args.quick, "records": records}
    if not args.quick or args.out != ap.get_default("out"):
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
