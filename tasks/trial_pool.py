"""Tasks whose trials come from outside JAX (a recording, a neurogym environment): a fixed pool.

The trials are built once on the host when the task is constructed and kept as device arrays,
time-major (``[T, n_trials, ·]``). The pool is split by trials into a training part and a held-out
part; ``sample(key, B)`` draws B training trials with ``jax.random.choice`` inside ``jit``, so batch i
is a function of ``(seed, i)`` exactly as for the tasks that simulate their trials, and a resumed
run sees the same batches (tests/test_recorded.py). ``eval_batch`` is the held-out part itself.

What this is not: batches produced on the host while the device trains (issue 22, item 1). The
pool lives on the device and is compiled into the update as a constant: fine up to tens of MB
(docs/data.md has the measured cost); a data set larger than that, or an endless supply of fresh
neurogym trials, needs host-side batches with prefetching, which the runner does not have yet.
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

    def _set_pool(self, inputs, targets, weights, mask, aux: dict, train_index, holdout_index):
        """Time-major host arrays ``[T, n, ·]`` (``aux`` values: trial axis 1) become device arrays."""
        self.n_trials = int(targets.shape[1])
        self.train_index, self.holdout_index = np.asarray(train_index), np.asarray(holdout_index)
        self._inputs, self._targets = jnp.asarray(inputs, jnp.float32), jnp.asarray(targets, jnp.float32)
        self._weights, self._mask = jnp.asarray(weights, jnp.float32), jnp.asarray(mask, jnp.float32)
        self._aux = {k: jnp.asarray(v) for k, v in aux.items()}
        self._train = jnp.asarray(self.train_index, jnp.int32)
        self._warned_eval = False

    @property
    def pool_bytes(self) -> int:
        leaves = [self._inputs, self._targets, self._weights, self._mask, *self._aux.values()]
        return int(sum(x.size * x.dtype.itemsize for x in leaves))

    def _batch(self, index, valid=None, scale=None) -> Batch:
        index = jnp.asarray(index, jnp.int32)
        take = lambda a: jnp.take(a, index, axis=1)   # noqa: E731
        valid = jnp.ones(index.shape, jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
        weights = take(self._weights)
        shape = (1, -1) + (1,) * (weights.ndim - 2)
        factor = valid if scale is None else valid * scale
        extras = PoolExtras(take(self._mask), valid, index, {k: take(v) for k, v in self._aux.items()})
        return Batch(take(self._inputs), take(self._targets), weights * factor.reshape(shape), extras=extras)

    def sample(self, key, batch_size: int) -> Batch:
        """B training trials, without replacement when the training part has that many."""
        pick = jax.random.choice(key, self._train.shape[0], (batch_size,), replace=batch_size > self._train.shape[0])
        batch = self._batch(self._train[pick])
        return batch._replace(extras=None)   # training needs no extras; metrics use the held-out batch

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
