"""Verifiable atomic checkpoints of the whole training state, and the one before it.

Plain files, not orbax: the state is a small pytree (params, optax state, stream state,
carried network state) that must come back bit-for-bit on the same machine. ``save`` pickles
host numpy arrays and appends a trailer with the pickle's SHA-256 (``pickle.load`` stops at the
pickle's end, so the file still reads as a plain pickle). It writes the new file to a fsynced
temporary file, hard-links the current ``last.pkl`` (if it verifies) to ``prev.pkl``, then
``os.replace``s the new file in: a crash or a full disk at any moment leaves a ``last.pkl`` (or
``prev.pkl``) that verifies.

Every save also writes ``params.npz`` next to ``last.pkl``: the parameters alone as flat named
arrays (``W_rec``, ``net/W_in``), readable with ``numpy.load`` and nothing else (docs/library.md).

``load`` verifies the checksum before unpickling. A truncated or corrupt ``last.pkl`` falls back
to ``prev.pkl`` and says so in one line; if checkpoints exist but none verifies, it refuses
(``ConfigError``: delete the checkpoints or set ``resume=false``) rather than silently starting
from scratch.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import sys
from pathlib import Path

import jax
import numpy as np

from sofo_lab.core.errors import ConfigError, RunFailed
from sofo_lab.train.rundir import WriteFailed, lock, write_atomic

CHECKPOINT = "checkpoints/last.pkl"
PREVIOUS = "checkpoints/prev.pkl"
PARAMS_NPZ = "params.npz"    # next to last.pkl: the parameters alone, for numpy (save_params_npz)
_TRAILER = b"\n#sha256="   # + 64 hex digits + b"\n" after the pickle
_TRAILER_LEN = len(_TRAILER) + 65
# Where the classes a checkpoint pickles by name (the training state, the arm's state) lived before
# sofo_lab/ was split into layers: a checkpoint written then still resumes.
_MOVED = {"sofo_lab.runner": "sofo_lab.train.state", "sofo_lab.system": "sofo_lab.core.system",
          "sofo_lab.tasks.arm": "sofo_lab.tasks.plants.arm"}
# Keys that do not change what a run computes; a resumed run may change them.
_NOT_HASHED = ("logger", "callbacks", "checkpoint_every", "log_every", "resume", "progress", "plots", "hydra",
               "steps_per_dispatch")


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
    blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    blob += _TRAILER + hashlib.sha256(blob).hexdigest().encode() + b"\n"
    staged = path.with_name(".staged.pkl")
    write_atomic(staged, blob)                       # a full disk fails here: nothing moved yet
    if _verify(path)[0] is not None:                 # keep the last good one as prev.pkl
        link = path.with_name(".prev.pkl")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:                              # no hard links on this filesystem: copy
            write_atomic(link, path.read_bytes())
        os.replace(link, Path(run_dir) / PREVIOUS)
    os.replace(staged, path)
    save_params_npz(path.parent / PARAMS_NPZ, payload["state"].params)
    _fsync_dir(path.parent)
    return path


def param_names(params) -> dict:
    """``{"W_rec": array, "net/W_in": array, ...}``: the leaves of ``params`` named by their key paths."""
    def part(key):
        for attr in ("key", "name", "idx"):   # DictKey, GetAttrKey, SequenceKey
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(part(k) for k in path) or "params": np.asarray(x) for path, x in leaves}


def save_params_npz(path: Path, params) -> Path:
    """Write ``params`` as a portable ``.npz`` of flat named arrays (``np.load`` reads it, no sofo-lab
    or pickle needed), atomically (fsynced temporary file, ``os.replace``), mode 0o644."""
    path = Path(path)
    buffer = io.BytesIO()
    np.savez(buffer, **param_names(jax.device_get(params)))
    write_atomic(path, buffer.getvalue(), mode=0o644)   # group/world-readable: analysis from other accounts
    return path


def load_params_npz(path: Path, like=None):
    """The arrays of a ``params.npz``: a flat ``{name: array}`` dict, or, given ``like`` (a pytree of the
    same structure, e.g. ``jax.eval_shape(system.init_params, key)``), that pytree with the saved arrays."""
    with np.load(Path(path)) as data:
        arrays = {name: data[name] for name in data.files}
    if like is None:
        return arrays
    names = list(param_names(jax.tree.map(lambda x: np.zeros((), np.int8), like)))
    if sorted(names) != sorted(arrays):
        raise ConfigError("params.npz", str(path), f"holds {sorted(arrays)}, but the model has {sorted(names)}")
    return jax.tree.unflatten(jax.tree.structure(like), [arrays[n] for n in names])


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(_MOVED.get(module, module), name)


def _verify(path: Path) -> tuple[dict | None, str]:
    """(payload, "") when ``path`` matches its checksum and unpickles, else (None, why not)."""
    if not path.is_file():
        return None, "missing"
    try:
        blob = path.read_bytes()
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    body, trailer = blob[:-_TRAILER_LEN], blob[-_TRAILER_LEN:]
    if not trailer.startswith(_TRAILER):
        return None, f"no checksum ({len(blob)} bytes; truncated, or not written by sofo-run)"
    if hashlib.sha256(body).hexdigest().encode() != trailer[len(_TRAILER):-1]:
        return None, f"checksum mismatch ({len(blob)} bytes; truncated or corrupt)"
    try:
        return _Unpickler(io.BytesIO(body)).load(), ""
    except Exception as err:  # noqa: BLE001 - any unpickling failure means unusable
        return None, f"does not unpickle ({type(err).__name__})"


def load(run_dir: Path, quiet: bool = False):
    """The newest checkpoint that verifies, or None when the run directory holds none.

    Falls back from ``last.pkl`` to ``prev.pkl`` with one line on stderr (unless ``quiet``);
    raises ``ConfigError`` when checkpoint files exist but none verifies.
    """
    run_dir = Path(run_dir)
    last, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not (last.exists() or previous.exists()):
        return None
    payload, why_last = _verify(last)
    if payload is not None:
        return payload
    payload, why_prev = _verify(previous)
    if payload is not None:
        if not quiet:
            print(f"warning: {last} is unusable ({why_last}); resuming from the previous checkpoint {previous} "
                  f"(iteration {int(payload['state'].iteration)})", file=sys.stderr, flush=True)
        return payload
    raise ConfigError("hydra.run.dir", str(run_dir), f"holds no valid checkpoint (last.pkl: {why_last}; prev.pkl: "
                                                     f"{why_prev}); delete {run_dir / 'checkpoints'} to start over, "
                                                     "or set resume=false")


def newest_valid(run_dir: Path) -> str | None:
    """'<file> (iteration N)' of the checkpoint a rerun would resume from, or None."""
    for name in (CHECKPOINT, PREVIOUS):
        payload, _ = _verify(Path(run_dir) / name)
        if payload is not None:
            return f"{Path(run_dir) / name} (iteration {int(payload['state'].iteration)})"
    return None


def resume_payload(run_dir: Path, container: dict, quiet: bool = False):
    """The verified checkpoint to resume from, or None; ``ConfigError`` when it was written under a
    different config (the differing keys named). A key the saved config lacks and the new one holds
    as null (a key added later with a null default, e.g. ``optim.plateau`` for Adam) is no difference."""
    saved = load(run_dir, quiet=quiet)
    if saved is not None and saved["config_hash"] != config_hash(container):
        diff = "; ".join(differences(saved["config"], config_fingerprint(container))[:4])
        if not diff:
            return saved
        raise ConfigError("hydra.run.dir", str(run_dir),
                          f"holds a checkpoint of a different config ({diff}); rerun with the same "
                          "overrides to resume, pick a new hydra.run.dir, or set resume=false")
    return saved


def divergence(run_dir: Path, iteration: int, detail: str, optim=None) -> RunFailed:
    """The one line for a non-finite update or evaluation at ``iteration`` (updates counted from 1);
    ``optim`` (the run's optimizer config) makes the advice concrete: the values to lower."""
    kept = newest_valid(run_dir)
    kept = (f"the last good checkpoint {kept} is kept" if kept else "no checkpoint had been written yet")
    optim = optim or {}
    lr, clip = optim.get("lr"), optim.get("clip_norm")
    advice = "lower optim.lr" + (f" (now {lr:g})" if isinstance(lr, (int, float)) else "")
    if isinstance(clip, (int, float)):
        advice += f" or optim.clip_norm (now {clip:g})"
    elif "clip_norm" in optim or not optim:   # an optimizer without the key cannot clip
        advice += " or add optim.clip_norm=1.0"
    err = RunFailed(f"{detail} at iteration {iteration}; stopped, {kept}; {advice}")
    err.iteration = iteration
    return err


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


def write_failed(err: OSError, run_dir: Path) -> WriteFailed:
    """The one line for an ``OSError`` while writing into ``run_dir`` mid-run."""
    what = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "a write failed"
    where = f" writing {err.filename}" if err.filename else ""
    kept = newest_valid(run_dir)
    kept = (f"the last good checkpoint {kept} is intact; free space and rerun the same command to resume"
            if kept else "no checkpoint had been written yet; free space and rerun")
    return WriteFailed(f"{what}{where} ({err.strerror or err}); {kept}")


def precheck(cfg, multirun: bool) -> None:
    """Before Hydra writes anything: hold a fixed run (or sweep) directory, and for a single run
    refuse a checkpoint it could not resume (corrupt, or of a different config), so that a refused
    run leaves ``.hydra/config.yaml`` and ``overrides.yaml`` as they were. A directory named after
    the time (``${now:...}``, the default) is new for every start: the runner locks it."""
    from omegaconf import OmegaConf

    kind = "sweep" if multirun else "run"
    raw = OmegaConf.to_container(cfg.hydra[kind], resolve=False)["dir"]
    if "${now:" in str(raw):
        return
    try:
        path = Path(str(OmegaConf.select(cfg, f"hydra.{kind}.dir", throw_on_resolution_failure=True)))
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        container = OmegaConf.to_container(job, resolve=True)
    except Exception:  # noqa: BLE001 - needs Hydra's runtime to resolve: the runner checks it
        return
    lock(path, f"hydra.{kind}.dir")
    if not multirun and cfg.get("resume", True):
        resume_payload(path, container, quiet=True)
