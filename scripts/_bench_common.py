"""Helpers shared by the UORO benchmarks: JSON output, timing (the machine record is bench_common's)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench_common import machine  # noqa: F401  (re-exported for the UORO benchmarks)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"wrote {path}")


def best_time(fn, *args, repeats: int = 5) -> float:
    """Minimum wall time of ``fn(*args)`` (already compiled), blocking on the result."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)
