"""``optim=fgd``: forward gradient descent, the first-order subspace baseline of the SOFO paper.

Shares SOFO's batched forward pass (sofo_lab/optim/_forward.py) but skips the curvature:

    V  = [v_1 … v_K]        Gaussian, unit-norm columns (uniform on the sphere, E[v vᵀ] = I/P)
    C  = Vᵀ∇L               one batched forward pass
    ĝ  = (P/K) V C          an unbiased estimate of ∇L: E[ĝ] = (P/K)·K·(I/P)∇L = ∇L
    θ ← θ + optax_update(ĝ) SGD by default

With ``optim.orthonormalize`` each column is still uniform on the sphere, so ĝ stays unbiased.
K = 1 is the classic forward gradient.

References:
    Baydin, Pearlmutter, Syme, Wood, Torr. Gradients without backpropagation. arXiv:2202.08587 (2022).
    Yu, Xia, Ma, Lengyel, Hennequin. Second-order forward-mode optimization of recurrent neural
    networks for neuroscience. NeurIPS 2024 (FGD baseline).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

from sofo_lab.core import checks
from sofo_lab.core.tree import tree_norm
from sofo_lab.optim import _forward
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform


def fgd_direction(tangents, c, n_params: int):
    """``(P/K) V C``: the unbiased forward-gradient estimate."""
    k = c.shape[0]
    with _forward._x64():   # C is float64 (sofo_lab/optim/_forward.py): scale it where float64 exists
        scaled = c * (n_params / k)
    return _forward.combine(tangents, scaled)


class FgdState(NamedTuple):
    inner: optax.OptState


def fgd(system, transform: optax.GradientTransformation, *, n_tangents: int = 64, orthonormalize: bool = False,
        sharding=_forward.LaneSharding(), fast: bool = True, names=checks.PLAIN) -> Optimizer:
    """Forward gradient descent with ``transform`` applied to ``(P/K) V Vᵀ∇L``.

    Every argument is checked here, for the command line and the library alike (``names`` names them
    as the caller does, ``checks.named``); K <= P (``orthonormalize``) by ``init``. P is read from
    the parameters."""
    transform = optax.with_extra_args_support(transform)   # update(..., value=loss): optim.plateau
    n_tangents, orthonormalize = _forward.check_tangents(n_tangents, orthonormalize, names)
    fast = checks.boolean(names("fast"), fast)
    sharding = _forward.lane_sharding(sharding, n_tangents, names)
    stepper = _forward.stepper_for(system, fast=fast)

    def init_fn(params):
        _forward.check_basis(params, n_tangents, orthonormalize, names)
        return FgdState(transform.init(params))

    def update_fn(params, state, batch, key, carry):
        tangents = _forward.sample_tangents(key, params, n_tangents, orthonormalize)
        sketch = _forward.forward_sketch(system, params, tangents, batch, carry, with_ggn=False,
                                         stepper=stepper, sharding=sharding)
        grad = fgd_direction(tangents, sketch.c, _forward.n_params(params))
        updates, inner = transform.update(grad, state.inner, params, value=sketch.loss)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": sketch.loss.astype(jnp.float32), "grad_norm": tree_norm(grad),
                   "update_norm": tree_norm(updates)}
        return params, FgdState(inner), sketch.final_state, metrics

    return Optimizer(init_fn, update_fn)


def from_config(system, *, iterations: int, n_tangents, orthonormalize, shard, fast, **update) -> Optimizer:
    """``optim=fgd`` (conf/optim/fgd.yaml holds every default); ``update``: the optax keys."""
    return fgd(system, make_transform(update, iterations), n_tangents=n_tangents, orthonormalize=orthonormalize,
               sharding=shard, fast=fast, names=checks.CONFIG)
