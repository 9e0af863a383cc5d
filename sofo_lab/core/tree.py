"""Small pytree utilities shared by the optimizers, the runner and the library (params and
states are plain pytrees of arrays, so ``jax.tree`` does the walking)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def count_params(params) -> int:
    """P: the number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def tree_norm(tree) -> jax.Array:
    """Global L2 norm over every leaf."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def tree_vdot(a, b) -> jax.Array:
    """``Σ_leaves ⟨a, b⟩``: the inner product of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def rademacher_like(key, tree):
    """Independent ±1 signs with the structure, shapes and dtypes of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
