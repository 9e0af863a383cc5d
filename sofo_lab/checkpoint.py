"""Atomic checkpoints of the whole training state.

Plain files, not orbax: the state is a small pytree (params, optax state, stream state,
carried network state) that must come back bit-for-bit on the same machine, and a pickle of
host numpy arrays written to a temporary file, fsynced and ``os.replace``d over the old one
does exactly that with no extra dependency or background threads. A crash at any moment
leaves either the previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import jax
import numpy as np

CHECKPOINT = "checkpoints/last.pkl"
# Keys that do not change what a run computes; a resumed run may change them.
_NOT_HASHED = ("logger", "checkpoint_every", "log_every", "resume", "progress", "plots", "hydra")


def config_fingerprint(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _NOT_HASHED}


def config_hash(cfg: dict) -> str:
    blob = json.dumps(config_fingerprint(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save(run_dir: Path, train_state, cfg: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state": jax.tree.map(np.asarray, jax.device_get(train_state)),
               "config": config_fingerprint(cfg), "config_hash": config_hash(cfg)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(run_dir: Path):
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of config keys whose values differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
