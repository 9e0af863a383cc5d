"""``optim=tbptt``: truncated backpropagation through time in non-overlapping windows.

The task window of T steps is cut into windows of k = ``truncation`` steps (the last one
shorter when k does not divide T). For each window w, from the state carried in (its value
kept, its gradient cut):

    L_w = Σ_{t ∈ w} loss(y_t, y*_t, w_t),   g_w = ∂L_w/∂θ   (backprop inside the window only)
    θ  ← θ + optax_update(g_w)                              (one update per window)

or, with ``accumulate=true``, ``θ ← θ + optax_update(Σ_w g_w)`` once per task window. The loss
at position j of a window is backpropagated j steps, so the mean truncation is (k+1)/2. With
k = T and one window this is exactly full BPTT (``optim=adam``) on the window. A truncation
longer than the task window is clipped to it (a window cannot see across iterations).

References:
    R. J. Williams and J. Peng, An efficient gradient-based algorithm for on-line training of
    recurrent network trajectories, Neural Computation 1990; the UORO paper's baseline
    (Tallec & Ollivier, ICLR 2018, §5); docs/uoro.md.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sofo_lab.core import checks
from sofo_lab.core.system import Batch, initial_state, rollout
from sofo_lab.core.tree import tree_norm, tree_zeros
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform


class TbpttState(NamedTuple):
    inner: optax.OptState


def _split(batch: Batch, start: int, n_windows: int, k: int) -> Batch:
    """Steps ``start … start + n_windows·k`` of the batch as ``[n_windows, k, ...]`` leaves."""
    cut = lambda a: None if a is None else a[start:start + n_windows * k].reshape(n_windows, k, *a.shape[1:])
    return Batch(cut(batch.inputs), cut(batch.targets), cut(batch.weights), cut(batch.noise))


def tbptt(system, transform: optax.GradientTransformation, *, truncation: int,
          accumulate: bool = False) -> Optimizer:
    """Truncated BPTT over windows of ``truncation`` steps, ``transform`` as the update."""
    transform = optax.with_extra_args_support(transform)   # update(..., value=loss): optim.plateau

    def init_fn(params):
        return TbpttState(transform.init(params))

    def window_grad(params, state, window: Batch):
        def loss_fn(p):
            final, _, losses = rollout(system, p, jax.lax.stop_gradient(state), window)
            return losses.sum(), final

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def body(carry, window):
        params, inner, state, g_acc = carry
        (loss, state), grads = window_grad(params, state, window)
        if accumulate:
            g_acc = jax.tree.map(jnp.add, g_acc, grads)
        else:
            updates, inner = transform.update(grads, inner, params, value=loss)
            params = optax.apply_updates(params, updates)
        return (params, inner, state, g_acc), (loss, tree_norm(grads))

    def update_fn(params, opt_state, batch, key, carry):
        del key
        batch = batch.materialize()   # windows slice the whole sequence
        T, B = batch.inputs.shape[:2]
        k = min(truncation, T)
        n_full, rest = divmod(T, k)
        state = initial_state(system, params, carry, B)
        c = (params, opt_state.inner, state, tree_zeros(params))
        c, (losses, g_norms) = jax.lax.scan(body, c, _split(batch, 0, n_full, k))
        if rest:
            last = jax.tree.map(lambda a: a[0], _split(batch, n_full * k, 1, rest))
            c, (loss_r, g_r) = body(c, last)
            losses, g_norms = jnp.append(losses, loss_r), jnp.append(g_norms, g_r)
        params, inner, state, g_acc = c
        if accumulate:
            updates, inner = transform.update(g_acc, inner, params, value=losses.sum())
            params = optax.apply_updates(params, updates)
        metrics = {"loss": losses.sum(), "grad_norm": g_norms.mean()}
        return params, TbpttState(inner), state, metrics

    return Optimizer(init_fn, update_fn)


def from_config(system, *, iterations: int, n_steps: int, truncation, accumulate, **update) -> Optimizer:
    """``optim=tbptt`` (conf/optim/tbptt.yaml); ``update``: the optax keys, ``inverse_sqrt`` counted in steps."""
    truncation = checks.positive_int("optim.truncation", truncation)
    accumulate = checks.boolean("optim.accumulate", accumulate)
    if truncation > n_steps:
        warnings.warn(f"optim.truncation={truncation} is longer than task.n_steps={n_steps}: "
                      f"truncating at the task window ({n_steps} steps)", stacklevel=2)
    k = min(truncation, n_steps)
    per_update = n_steps if accumulate else k
    updates = iterations * (1 if accumulate else -(-n_steps // k))
    return tbptt(system, make_transform(update, updates, per_update), truncation=truncation,
                 accumulate=accumulate)
