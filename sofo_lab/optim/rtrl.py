"""``optim=rtrl``: exact real-time recurrent learning (forward-mode gradient, full Jacobian).

RTRL carries ``J_t = ∂s_t/∂θ`` (flattened state of all B streams × P) forward in time:

    (δs, δθ) = ∂ℓ_{t+1}/∂(s_t, θ)                 backprop through one step
    g_t      = δs J_t + δθ                         the exact online gradient of ℓ_{t+1}
    J_{t+1}  = (∂F/∂s) J_t + ∂F/∂θ                 P jvps of the step (vmapped)
    every ``update_every`` steps:  θ ← θ + optax_update(Σ g)

With ``update_every`` ≥ the horizon (no update inside the trial) Σ g is exactly the BPTT
gradient. ``J`` is zeroed whenever a trial resets. Memory O(B·dim s·P) and time O(P) forward
steps per step: for small systems only (``max_jacobian`` caps J; the update's real need,
about 2·P² + 4·S·P floats, must fit in memory); it is the ground
truth UORO's estimate ``s̃θ̃ᵀ`` is tested against.

References:
    R. J. Williams and D. Zipser, A learning algorithm for continually running fully recurrent
    neural networks, Neural Computation 1(2), 1989.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from sofo_lab.core import checks
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.memory import available_bytes
from sofo_lab.core.system import initial_state, step_with_loss
from sofo_lab.core.tree import tree_zeros
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform


class RtrlState(NamedTuple):
    inner: optax.OptState
    jacobian: jax.Array   # [S, P]: ∂(flattened state of all streams)/∂(flattened params)
    grad_sum: Any         # params-shaped: Σ g since the last parameter update
    steps: jax.Array      # int32


def flat_step(system, params, state, x, target, w):
    """The step on flat vectors: ``f(θ_flat, s_flat) -> (ℓ, s'_flat)`` and the unravellers."""
    p_flat, unravel_p = ravel_pytree(params)
    s_flat, unravel_s = ravel_pytree(state)
    f = step_with_loss(system, x, target, w)

    def f_flat(pf, sf):
        loss, new_state = f(unravel_p(pf), unravel_s(sf))
        return loss, ravel_pytree(new_state)[0]

    return f_flat, p_flat, s_flat, unravel_s


def rtrl_step(system, params, state, jacobian, x, target, w):
    """One exact RTRL step: returns ``(loss, new_state, J_{t+1}, g_flat)``."""
    f_flat, p_flat, s_flat, unravel_s = flat_step(system, params, state, x, target, w)
    (loss, new_flat), pullback = jax.vjp(f_flat, p_flat, s_flat)
    d_p, d_s = pullback((jnp.ones_like(loss), jnp.zeros_like(new_flat)))
    grad = d_p + d_s @ jacobian
    column = lambda j, e: jax.jvp(lambda pf, sf: f_flat(pf, sf)[1], (p_flat, s_flat), (e, j))[1]
    eye = jnp.eye(p_flat.size, dtype=p_flat.dtype)
    jacobian = jax.vmap(column, in_axes=(1, 0), out_axes=1)(jacobian, eye)
    return loss, unravel_s(new_flat), jacobian, grad


def check_size(system, params, batch_size: int, max_jacobian: int, names=checks.PLAIN) -> None:
    """Refuse a Jacobian ∂s/∂θ of more than ``max_jacobian`` floats, or an update that cannot fit in
    the memory available (``rtrl_update_bytes``); P and S from ``params`` (arrays or shapes)."""
    state = jax.eval_shape(lambda p: system.init_state(p, batch_size), params)
    S = sum(x.size for x in jax.tree.leaves(state))
    P = sum(x.size for x in jax.tree.leaves(params))
    if S * P > max_jacobian:
        raise ConfigError(names("max_jacobian"), max_jacobian, f"the Jacobian ∂s/∂θ would hold {S}×{P} = "
                          f"{S * P:.3g} floats (more than this); use a smaller model or batch, raise "
                          f"{names('max_jacobian')}, or use uoro")
    need, (free, where) = rtrl_update_bytes(S, P), available_bytes()
    if need > free:   # the update, not only J: J, J', the P×P identity and the P pushed tangents
        raise ConfigError(names("max_jacobian"), max_jacobian, f"an RTRL update of {P} parameters and {S} state "
                          f"numbers needs about {need} bytes but {free} bytes are {where}; use a smaller model "
                          "or batch, or uoro")


def rtrl(system, transform: optax.GradientTransformation, *, batch_size: int, update_every: int = 1,
         max_jacobian: int = 50_000_000, names=checks.PLAIN) -> Optimizer:
    """Exact RTRL with ``transform`` as the online parameter update; ``batch_size``: the B streams.

    Every argument is checked here, for the command line and the library alike (``names`` names
    them as the caller does, ``checks.named``); the size of J by ``init``, which sees the parameters."""
    transform = optax.with_extra_args_support(transform)   # update(..., value=loss): optim.plateau
    batch_size = checks.positive_int(names("batch_size"), batch_size)
    update_every = checks.positive_int(names("update_every"), update_every)
    max_jacobian = checks.positive_int(names("max_jacobian"), max_jacobian)

    def init_fn(params):
        check_size(system, params, batch_size, max_jacobian, names)
        S = ravel_pytree(system.init_state(params, batch_size))[0].size
        P = ravel_pytree(params)[0].size
        return RtrlState(transform.init(params), jnp.zeros((S, P)), tree_zeros(params),
                         jnp.zeros((), jnp.int32))

    def apply(params, inner, g_sum, loss):
        updates, inner = transform.update(g_sum, inner, params, value=loss)   # optim.plateau: this step's loss
        return optax.apply_updates(params, updates), inner, tree_zeros(g_sum)

    def body(carry, xs):
        params, inner, state, jac, g_sum, steps = carry
        x, target, w = xs
        loss, state, jac, g_flat = rtrl_step(system, params, state, jac, x, target, w)
        g_sum = jax.tree.map(jnp.add, g_sum, ravel_pytree(params)[1](g_flat))
        steps = steps + 1
        if update_every == 1:
            params, inner, g_sum = apply(params, inner, g_sum, loss)
        else:
            params, inner, g_sum = jax.lax.cond(steps % update_every == 0, apply, lambda *a: a[:3],
                                                params, inner, g_sum, loss)
        return (params, inner, state, jac, g_sum, steps), (loss, jnp.linalg.norm(g_flat))

    def update_fn(params, opt_state, batch, key, carry):
        B = batch.batch_size
        state = initial_state(system, params, carry, B)
        jac = opt_state.jacobian if carry is not None else jnp.zeros_like(opt_state.jacobian)
        init = (params, opt_state.inner, state, jac, opt_state.grad_sum, opt_state.steps)
        (params, inner, state, jac, g_sum, steps), (losses, g_norms) = batch.scan(body, init)
        metrics = {"loss": losses.sum(), "grad_norm": g_norms.mean()}
        return params, RtrlState(inner, jac, g_sum, steps), state, metrics

    return Optimizer(init_fn, update_fn)


def rtrl_update_bytes(S: int, P: int, itemsize: int = 4) -> int:
    """What an RTRL update needs: J and J' (S×P each), the P×P identity whose columns the vmapped
    jvp pushes through the step, and the step's tangents (about 2·S·P). Measured on the compiled
    update (GRU, B=4, n_hidden 16/32): within 2% of 2·P² + 4·S·P floats."""
    return itemsize * (2 * P * P + 4 * S * P)


def from_config(system, *, iterations: int, n_steps: int, batch_size: int, update_every, max_jacobian,
                **update) -> Optimizer:
    """``optim=rtrl`` (conf/optim/rtrl.yaml); ``batch_size`` is the run's (the build passes it)."""
    per_update = max(1, n_steps // checks.positive_int(checks.CONFIG("update_every"), update_every))
    transform = make_transform(update, iterations * per_update, update_every)
    return rtrl(system, transform, batch_size=batch_size, update_every=update_every, max_jacobian=max_jacobian,
                names=checks.CONFIG)
