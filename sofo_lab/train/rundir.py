"""The run directory as a resource: one process at a time, durable writes, a full disk in one line.

- ``lock(run_dir)``: an exclusive ``fcntl.flock`` on ``<run dir>/.lock``, which holds the pid of
  the process that has it. A second run into the same directory (same ``hydra.run.dir``) is
  refused with a ``ConfigError`` naming that pid. The lock dies with its process (also on
  SIGKILL or a node lost under SLURM), so a requeued or rerun job gets it again. A process that
  already holds a directory's lock gets the same lock back (the CLI takes it before Hydra writes
  ``.hydra/``, the runner again).
- ``write_atomic(path, data)``: temporary file in the same directory, fsync, ``os.replace``: a
  crash or a full disk leaves the old file or the new one, never a torn one.
- ``probe(directory)``: writes (and deletes) 1 MiB, so a full or read-only disk fails before the
  run starts rather than at its first checkpoint.
- ``WriteFailed``: what an ``OSError`` during a run becomes (one line: the file, the reason, the
  checkpoint that is intact, what to do; ``checkpoint.write_failed`` words it).

The run directory knows nothing of checkpoints: checkpoint.py builds on it (``precheck``, the
pre-check's lock and resumable checkpoint, is there).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from sofo_lab.core.errors import ConfigError, RunFailed

LOCK = ".lock"
PROBE_BYTES = 1 << 20
_held: dict[str, int] = {}   # resolved run dir -> fd of its lock file, for this process


class WriteFailed(RunFailed):
    """Writing into the run directory failed (full disk, quota, permissions); nothing was lost."""


def lock(run_dir: str | Path, key: str = "hydra.run.dir") -> None:
    """Hold ``run_dir`` for this process until it exits (or ``unlock``); refuse if another holds it."""
    run_dir = Path(run_dir).resolve()
    if str(run_dir) in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(key, str(run_dir), f"is in use by process {holder} (lock {run_dir / LOCK}); wait "
                                             f"for it to end, or pass another {key}=...") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[str(run_dir)] = fd


def unlock(run_dir: str | Path) -> None:
    fd = _held.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)   # closing the only descriptor releases the flock


def holds(run_dir: str | Path) -> bool:
    return str(Path(run_dir).resolve()) in _held


def write_atomic(path: str | Path, data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and ``os.replace`` (``mode``: its permissions)."""
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def probe(directory: str | Path, n_bytes: int = PROBE_BYTES) -> None:
    """Write and delete ``n_bytes`` in ``directory`` (raises ``OSError`` when it cannot)."""
    path = Path(directory) / f".sofo-write-test-{os.getpid()}"
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * n_bytes)
            f.flush()
            os.fsync(f.fileno())
    finally:
        path.unlink(missing_ok=True)
