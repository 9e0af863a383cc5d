"""How much memory a run may use, and how much a pytree takes: the measures the resource checks
(sofo_lab/train/resources.py) and an optimizer's own limits (RTRL's) share.

The available memory is the device's free memory on an accelerator (``memory_stats()``), and on
CPU ``MemAvailable`` from ``/proc/meminfo`` (or the cgroup's limit, when lower).
"""
from __future__ import annotations

from pathlib import Path

import jax


def available_bytes() -> tuple[int, str]:
    """(bytes free for this run, where they are) on the default device."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"free on {device.device_kind}"
    free, where = _meminfo_available(), "available host memory (MemAvailable)"
    limit = _cgroup_free()
    if limit is not None and (free is None or limit < free):
        free, where = limit, "left under this job's cgroup memory limit"
    return (free if free is not None else 1 << 62), where


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):   # no /proc (macOS) or an odd format: try the next source
        pass
    return None


def _cgroup_free() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def fmt_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
