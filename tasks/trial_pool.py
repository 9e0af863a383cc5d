"""Tasks whose trials come from outside JAX (a recording, a neurogym environment): a fixed pool.

The trials are built once on the host when the task is constructed and stay there, time-major
(``[T, n_trials, ·]`` numpy arrays). The pool is split by trials into a training part and a held-out
part. Training batches are made on the host (``host_batches = True``): ``host_batch(seed, i, B)``
draws B training trials with a numpy generator seeded by ``(seed, i)``, so batch i is a function of
``(seed, i)`` exactly as for the tasks that simulate their trials and a resumed run sees the same
batches (tests/test_recorded.py); the runner prepares the next batches on a thread while the device
trains (sofo_lab/train/host_batches.py), and the pool is never compiled into the update.
``eval_batch`` is the held-out part itself. ``sample(key, B)`` (the in-``jit`` draw of the ``Task``
protocol, for the library) puts the pool on the device the first time it is called.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import Batch
from sofo_lab.tasks.base import Task


class PoolExtras(NamedTuple):
    """What metrics and plots need besides inputs, targets and weights (``Batch.extras``)."""

    mask: jax.Array      # [T, B] or [T, B, O]: 1 where the step (and output) counts, 0 on padding
    valid: jax.Array     # [B]: 1 for a real trial, 0 for a repeat that pads the held-out batch
    trial: jax.Array     # [B]: the trial's index in the pool
    aux: dict            # the task's own per-trial arrays, trial axis 1 ([T, B, ·] or [1, B])


def split_trials(n_trials: int, holdout, seed: int, key: str = "task.holdout"):
    """``(train, held_out)`` trial indices: a seeded random split, ``holdout`` a fraction in (0, 1)
    or a count of trials; each part sorted, disjoint, neither empty (else ``ConfigError``)."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not math.isfinite(holdout):
        raise ConfigError(key, holdout, "must be a fraction of the trials in (0, 1) or a number of trials >= 1")
    if isinstance(holdout, float) and 0.0 < holdout < 1.0:
        n_hold = int(round(holdout * n_trials))
    elif float(holdout).is_integer() and holdout >= 1:
        n_hold = int(holdout)
    else:
        raise ConfigError(key, holdout, "must be a fraction of the trials in (0, 1) or a number of trials >= 1")
    if n_hold < 1 or n_hold > n_trials - 1:
        part = "held-out" if n_hold < 1 else "training"
        raise ConfigError(key, holdout, f"leaves no {part} trials of the {n_trials}; choose a fraction in (0, 1) "
                          f"or a count in [1, {n_trials - 1}] (at least 2 trials are needed)")
    order = np.random.default_rng(seed).permutation(n_trials)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


class TrialPool(Task):
    """Base class of the pool tasks: subclasses call ``_set_pool`` in ``__init__``.

    Attributes after ``_set_pool``: ``n_trials``, ``train_index`` and ``holdout_index`` (numpy, pool
    indices of the two parts).
    """

    host_batches = True

    def _set_pool(self, inputs, targets, weights, mask, aux: dict, train_index, holdout_index):
        """Time-major host arrays ``[T, n, ·]`` (``aux`` values: trial axis 1), kept on the host."""
        self.n_trials = int(targets.shape[1])
        self.train_index, self.holdout_index = np.asarray(train_index), np.asarray(holdout_index)
        f32 = lambda a: np.ascontiguousarray(a, np.float32)   # noqa: E731
        self._inputs, self._targets, self._weights, self._mask = f32(inputs), f32(targets), f32(weights), f32(mask)
        self._aux = {k: np.asarray(v) for k, v in aux.items()}
        self._device = None
        self._warned_eval = False

    @property
    def pool_bytes(self) -> int:
        leaves = [self._inputs, self._targets, self._weights, self._mask, *self._aux.values()]
        return int(sum(x.size * x.dtype.itemsize for x in leaves))

    def _batch(self, index, valid=None, scale=None) -> Batch:
        """The pool's trials ``index`` as a device batch with extras (evaluation, plots, analysis)."""
        index = np.asarray(index, np.int64)
        take = lambda a: jnp.asarray(np.take(a, index, axis=1))   # noqa: E731
        valid = np.ones(index.shape, np.float32) if valid is None else np.asarray(valid, np.float32)
        weights = np.take(self._weights, index, axis=1)
        shape = (1, -1) + (1,) * (weights.ndim - 2)
        factor = valid if scale is None else valid * scale
        extras = PoolExtras(take(self._mask), jnp.asarray(valid), jnp.asarray(index, jnp.int32),
                            {k: take(v) for k, v in self._aux.items()})
        return Batch(take(self._inputs), take(self._targets), jnp.asarray(weights * factor.reshape(shape)),
                     extras=extras)

    def host_batch(self, seed: int, iteration: int, batch_size: int) -> Batch:
        """Training batch ``iteration``: B training trials (without replacement when there are that
        many), drawn by ``numpy.random.default_rng((seed, iteration))``; numpy arrays, no extras."""
        n = len(self.train_index)
        pick = np.random.default_rng((seed, iteration)).choice(n, batch_size, replace=batch_size > n)
        index = self.train_index[pick]
        return Batch(*(np.take(a, index, axis=1) for a in (self._inputs, self._targets, self._weights)))

    def sample(self, key, batch_size: int) -> Batch:
        """B training trials drawn inside ``jit`` (without replacement when there are that many); the
        runner uses ``host_batch`` instead."""
        if self._device is None:   # the pool on the device, once
            self._device = tuple(jnp.asarray(a) for a in (self._inputs, self._targets, self._weights))
        train = jnp.asarray(self.train_index, jnp.int32)
        pick = train[jax.random.choice(key, train.shape[0], (batch_size,), replace=batch_size > train.shape[0])]
        return Batch(*(jnp.take(a, pick, axis=1) for a in self._device))

    def eval_batch(self, key, batch_size: int) -> Batch:
        """The held-out trials, the same at every evaluation (``key`` is not used).

        ``eval_batch_size`` smaller than the held-out part: its first ``eval_batch_size`` trials (one
        warning says so); larger: every held-out trial, padded with repeats that have weight 0 and
        ``valid`` 0, and the real trials' weights scaled so that ``eval/loss`` is their mean.
        """
        del key
        held = self.holdout_index
        n = len(held)
        if batch_size < n:
            if not self._warned_eval:
                warnings.warn(f"eval_batch_size={batch_size} evaluates the first {batch_size} of the {n} held-out "
                              f"trials; eval_batch_size={n} evaluates them all", stacklevel=2)
                self._warned_eval = True
            return self._batch(held[:batch_size])
        index = np.concatenate([held, np.full(batch_size - n, held[0])])
        valid = np.arange(batch_size) < n
        return self._batch(index, valid, batch_size / n)

    def trials(self, index) -> Batch:
        """The pool's trials ``index`` (ints, e.g. ``task.holdout_index[:5]``) as a batch, for analysis
        (``sofo_lab.simulate``)."""
        index = np.asarray(index, dtype=int).reshape(-1)
        if index.size == 0 or index.min() < 0 or index.max() >= self.n_trials:
            raise ConfigError("index", index.tolist(), f"must hold trial indices in [0, {self.n_trials})")
        return self._batch(index)


def weighted_mean(x, w, axis=None):
    """``Σ w x / Σ w`` (0 where the weights sum to 0)."""
    total = jnp.sum(w, axis=axis)
    return jnp.sum(w * x, axis=axis) / jnp.maximum(total, 1e-12)


def per_trial_mask(extras: PoolExtras, like) -> Any:
    """The extras' mask times ``valid``, broadcast to ``like``'s shape ``[T, B(, O)]``."""
    m = extras.mask * extras.valid.reshape((1, -1) + (1,) * (extras.mask.ndim - 2))
    while m.ndim < like.ndim:
        m = m[..., None]
    return jnp.broadcast_to(m, like.shape)
