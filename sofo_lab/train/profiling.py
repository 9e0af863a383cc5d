"""Time and memory profile of a run's jitted update (README, "Profiles"; JAX's ``Compiled.memory_analysis``/``cost_analysis``)."""
from __future__ import annotations

import resource
import time

import jax
import numpy as np


def compile_timed(fn, *args):
    """AOT-compile ``jit(fn)`` for ``args``; returns (compiled, lower_s, compile_s)."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def compiled_memory_bytes(compiled) -> int | None:
    """temp + argument + output − alias of a compiled computation.

    ``peak_memory_in_bytes`` counts only arguments and outputs on CPU, so it is not used.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)


def step_memory_bytes(fn, *args) -> int | None:
    """Compiled memory of ``jit(fn)(*args)``; args may be ``jax.ShapeDtypeStruct``s (nothing runs)."""
    return compiled_memory_bytes(jax.jit(fn).lower(*args).compile())


def compiled_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


class DevicePeak:
    """Per-device allocator peak of one run (GPU; CPU backends report none).

    The allocator's ``peak_bytes_in_use`` is a running maximum over the whole process, so a second
    run in the same process (a sequential sweep) cannot read its own peak directly. ``start()``
    records each device's peak before the run; afterwards a device whose peak grew reports the new
    peak (exact: it was reached during this run), and one whose peak did not grow reports the old
    peak as an upper bound (``device_peak_is_upper_bound``).
    """

    def __init__(self):
        self.before = [self._peak(d) for d in jax.local_devices()]

    @staticmethod
    def _peak(device):
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return int(peak) if peak is not None else None

    def result(self) -> dict:
        after = [self._peak(d) for d in jax.local_devices()]
        if all(a is None for a in after):
            return {"device_peak_bytes": None, "device_peak_bytes_per_device": None}
        bound = any(a is not None and b is not None and a <= b for a, b in zip(after, self.before)) \
            and any(b for b in self.before)
        return {"device_peak_bytes": max(a for a in after if a is not None),
                "device_peak_bytes_per_device": after, "device_peak_is_upper_bound": bool(bound)}


def host_peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # KiB on Linux


def step_time_stats(durations) -> dict:
    if len(durations) == 0:
        return {"step_time_median_s": None, "step_time_p90_s": None}
    d = np.asarray(durations)
    return {"step_time_median_s": float(np.median(d)), "step_time_p90_s": float(np.percentile(d, 90))}
