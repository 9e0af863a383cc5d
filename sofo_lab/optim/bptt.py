"""``optim=adam``: the exact gradient by backpropagation through time, then an optax update.

    g = ∇_θ Σ_t loss(y_t(θ), y*_t, w_t)      (jax.value_and_grad through one lax.scan)
    θ ← θ + optax_update(g)                  (Adam by default: optim.lr, b1, b2, eps, clip_norm, schedule)

Memory grows linearly with the horizon T: reverse mode stores every step's residuals.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from sofo_lab.core.system import initial_state, rollout
from sofo_lab.core.tree import tree_norm
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform


class BpttState(NamedTuple):
    inner: optax.OptState


def bptt(system, transform: optax.GradientTransformation) -> Optimizer:
    """Full backprop-through-time with ``transform`` as the parameter update."""
    transform = optax.with_extra_args_support(transform)   # update(..., value=loss): optim.plateau

    def init_fn(params):
        return BpttState(transform.init(params))

    def update_fn(params, state, batch, key, carry):
        del key
        batch_size = batch.batch_size

        def loss_fn(p):
            final, _, losses = rollout(system, p, initial_state(system, p, carry, batch_size), batch)
            return losses.sum(), final

        (loss, final), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, inner = transform.update(grads, state.inner, params, value=loss)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": tree_norm(grads), "update_norm": tree_norm(updates)}
        return params, BpttState(inner), final, metrics

    return Optimizer(init_fn, update_fn)


def from_config(system, *, iterations: int, **update) -> Optimizer:
    """``optim=adam`` (conf/optim/adam.yaml): BPTT with the optax keys in ``update``."""
    return bptt(system, make_transform(update, iterations))
