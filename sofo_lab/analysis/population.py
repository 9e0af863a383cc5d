"""Population analyses of simulated networks: condition averages and principal components.

    avg = condition_average(rates, conditions)          # [T, C, N]: the mean over each condition's trials
    p = pca(avg.mean, n_components=3)                     # PCs of the condition-averaged rates
    z = project(p, avg.mean)                              # [T, C, 3]: the trajectories in those PCs
    z_fp = project(p, rates_at_fixed_points)              # fixed points in the same PCs

As in Churchland et al. (2012): average the trials of each condition first (the noise averages
out, the condition-dependent dynamics stay), then take the principal components of those averages
over time and conditions. Pure JAX, jittable (``n_components`` and ``n_conditions`` static).

References:
    M. M. Churchland, J. P. Cunningham, M. T. Kaufman, J. D. Foster, P. Nuyujukian, S. I. Ryu &
    K. V. Shenoy, "Neural population dynamics during reaching", Nature 487, 2012.
    Guide: docs/analysis.md.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ConditionAverage(NamedTuple):
    mean: Any                # pytree, leaves [T, C, ...]: the mean over the trials of each condition
    conditions: jax.Array    # [C]: the condition labels, in the order of axis 1
    counts: jax.Array        # [C]: trials per condition


def condition_average(traj, conditions, n_conditions: int | None = None) -> ConditionAverage:
    """Average the trials of each condition.

    ``traj``: a pytree of ``[T, B, ...]`` leaves (a trajectory's states, rates, outputs);
    ``conditions``: ``[B]`` labels, one per trial (target angles, condition indices). With
    ``n_conditions`` the labels must be the integers ``0 … n_conditions−1`` and the function is
    jittable; without it the conditions are the sorted distinct labels (found on the host).
    """
    conditions = jnp.asarray(conditions)
    if n_conditions is None:
        labels, index = np.unique(np.asarray(conditions), return_inverse=True)
        labels, index, n_conditions = jnp.asarray(labels), jnp.asarray(index.reshape(-1)), len(labels)
    else:
        labels, index = jnp.arange(n_conditions), conditions.astype(jnp.int32)
    onehot = jax.nn.one_hot(index, n_conditions)                    # [B, C]
    counts = onehot.sum(axis=0)

    def average(leaf):
        flat = leaf.reshape(leaf.shape[0], leaf.shape[1], -1)       # [T, B, F]
        mean = jnp.einsum("tbf,bc->tcf", flat, onehot.astype(flat.dtype)) / jnp.maximum(counts, 1)[None, :, None]
        return mean.reshape(leaf.shape[0], n_conditions, *leaf.shape[2:])

    return ConditionAverage(jax.tree.map(average, traj), labels, counts)


class PCA(NamedTuple):
    mean: jax.Array                       # [D]: subtracted before projecting
    components: jax.Array                 # [K, D]: orthonormal rows, by decreasing variance
    explained_variance: jax.Array         # [K]: the variance along each component
    explained_variance_ratio: jax.Array   # [K]: its fraction of the total variance


def pca(data, n_components: int | None = None) -> PCA:
    """Principal components of ``data [..., D]`` (every leading axis is a sample: ``[T, C, N]`` pools
    time and conditions). Each component's sign is chosen so that its largest entry is positive."""
    x = jnp.reshape(data, (-1, data.shape[-1]))
    mean = x.mean(axis=0)
    _, s, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / max(x.shape[0] - 1, 1)
    k = vt.shape[0] if n_components is None else min(n_components, vt.shape[0])
    vt = vt[:k] * jnp.sign(vt[:k][jnp.arange(k), jnp.argmax(jnp.abs(vt[:k]), axis=1)])[:, None]
    return PCA(mean, vt, var[:k], var[:k] / jnp.maximum(var.sum(), jnp.finfo(var.dtype).tiny))


def project(p: PCA, data) -> jax.Array:
    """``data [..., D]`` in the components of ``p``: ``[..., K]``."""
    return (jnp.asarray(data) - p.mean) @ p.components.T
