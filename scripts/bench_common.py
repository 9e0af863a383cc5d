"""Shared by the scripts/bench_*.py benchmarks: the machine record, configs, output paths, plots."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def machine() -> dict:
    """CPU model, cores, device kind, JAX version: recorded next to every number."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:   # no /proc (macOS): keep platform's answer
        pass
    dev = jax.devices()[0]
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cores": os.cpu_count(), "device": str(dev.device_kind),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "backend": jax.default_backend(), "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,   # other work on the machine
            "xla_flags": os.environ.get("XLA_FLAGS", ""),   # e.g. single-threaded CPU (docs/uoro.md)
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    from sofo_lab.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


# a benchmark's run: no wandb, no progress bar or plots, never resumed from an earlier benchmark's checkpoint
QUIET = ("logger=none", "progress=false", "plots=false", "resume=false")


def run_cli(overrides, run_dir: Path) -> Path:
    """One run through the real command line (``python -m sofo_lab.cli.run <overrides>``, quiet) into
    ``run_dir``, its console output kept out of the benchmark's. Hydra writes ``.hydra/`` there, so that
    ``sofo_lab.analysis.compare`` tells the runs apart by their overrides. A run that stopped (diverged) is a
    result: its summary.json says so; a run that wrote no summary is an error.

    The runs beside each other share JAX's persistent compilation cache (``.jax_cache`` next to
    them): a new process would otherwise compile again every small function an earlier run did,
    ~10 s a run at the quick sizes. It shortens the runs' ``compile_s``, not their training seconds."""
    run_dir = Path(run_dir).resolve()
    (run_dir / "summary.json").unlink(missing_ok=True)   # a summary from an earlier benchmark is not this run's
    env = {"JAX_COMPILATION_CACHE_DIR": str(run_dir.parent / ".jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **os.environ}
    proc = subprocess.run([sys.executable, "-m", "sofo_lab.cli.run", *overrides, *QUIET, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=env)
    if not (run_dir / "summary.json").is_file():
        raise RuntimeError(f"sofo-run {' '.join(overrides)} (exit {proc.returncode}) wrote no summary:\n"
                           f"{proc.stderr[-3000:]}")
    return run_dir


def out_path(out: str | None, default_name: str) -> Path:
    path = Path(out) if out else Path("outputs/bench") / default_name
    if path.suffix != ".json":
        path = path / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def write_json(path: Path, data: dict) -> None:
    """``save`` into a directory that may not exist yet, floats for numpy scalars."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"wrote {path}")


def slope(xs, ys) -> float | None:
    """Least-squares slope of y against x (bytes per time step, seconds per tangent, ...)."""
    import numpy as np

    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 2:
        return None
    x, y = np.asarray(pts, dtype=float).T
    return float(np.polyfit(x, y, 1)[0])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def machine_line(m: dict) -> str:
    return f"{m['cpu']} ({m['cpus_usable']}/{m['cpu_count']} cores), {m['backend']}:{m['device_kind']}, jax {m['jax']}"
