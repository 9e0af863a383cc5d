"""``optim=uoro``: Unbiased Online Recurrent Optimization, in the paper's step order.

UORO keeps a rank-one estimate ``s̃ θ̃ᵀ`` of ``J_t = ∂s_t/∂θ`` with ``E[s̃ θ̃ᵀ] = J_t`` and
updates the parameters while the stream runs. One time step (uoro_spec.md §2.1), with
``F(θ, s, x) -> s'`` the system step and ``ℓ`` the per-step loss of its output:

    s_{t+1}, ℓ_{t+1}  = F(θ, s_t, x_{t+1}), loss                       one forward
    (δs, δθ)          = ∂ℓ_{t+1}/∂(s_t, θ)                              backprop through one step
    g̃                 = (δs · s̃_t) θ̃_t + δθ                           the gradient estimate
    s̃'               = (∂F/∂s) s̃_t                                    jax.jvp (never finite differences)
    ν                 = i.i.d. ±1 signs over the whole state (LSTM: both c and h; all B streams)
    δθ_g              = νᵀ ∂F/∂θ                                       the same vjp, cotangent ν
    ρ0 = √(‖θ̃_t‖ / (‖s̃'‖ + ε)) + ε,      ρ1 = √(‖δθ_g‖ / (‖ν‖ + ε)) + ε
    s̃_{t+1} = ρ0 s̃' + ρ1 ν,               θ̃_{t+1} = θ̃_t / ρ0 + δθ_g / ρ1
    every ``update_every`` steps:  θ ← θ + optax_update(Σ g̃)   (Adam, lr_t = γ/(1+α√t) by default)

``s̃`` and ``θ̃`` start at zero and are zeroed whenever a trial resets (episodic tasks: every
batch); on streams they live in the optimizer state and carry across windows and iterations.
The B streams share one ``θ̃`` (the authors' code): the batch is one big recurrent state.
Memory is O(P + state): nothing is stored across time (one ``lax.scan`` with a constant carry).
A learned initial state (``model.learn_init_state``) receives no credit: ``s̃₀ = 0``.

References:
    C. Tallec and Y. Ollivier, Unbiased Online Recurrent Optimization, ICLR 2018
    (arXiv:1702.05043), Algorithm 1; research/uoro_spec.md §2.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from omegaconf import OmegaConf

from sofo_lab.errors import ConfigError
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform, positive
from sofo_lab.system import initial_state, tree_norm

# --- small pytree helpers shared by uoro / rtrl / tbptt -------------------------------------


def tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def rademacher_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def positive_int(cfg, key, default):
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"optim.{key}", value, "must be a positive integer")
    return value


def batch_size_of(cfg) -> int:
    """Streams (B): the optimizer state holds state-shaped vectors, so it needs B at init."""
    value = cfg.get("batch_size", None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("optim.batch_size", value, "must be a positive integer (default: ${batch_size})")
    return value


def chars_transform(cfg, iterations: int, steps_per_update: int) -> optax.GradientTransformation:
    """``make_transform`` with the ``inverse_sqrt`` schedule counted in time steps, not updates.

    The paper's ``lr_t = γ/(1+α√t)`` uses t = characters processed; optax counts updates,
    so with ``steps_per_update`` steps per update α is scaled by √steps_per_update.
    """
    sched = cfg.get("schedule", None)
    name = sched if isinstance(sched, str) or sched is None else sched.get("name")
    if steps_per_update > 1 and name == "inverse_sqrt":
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        opts = {} if isinstance(sched, str) else dict(plain["schedule"])
        opts.update(name="inverse_sqrt", alpha=opts.get("alpha", 0.015) * steps_per_update ** 0.5)
        cfg = OmegaConf.create({**plain, "schedule": opts})
    return make_transform(cfg, iterations)


def step_with_loss(system, x, target, w):
    """``f(θ, s) -> (ℓ, s')``: one system step and its little loss."""

    def f(params, state):
        new_state, y = system.step(params, state, x)
        return system.loss.value(y, target, w), new_state

    return f


# --- UORO -------------------------------------------------------------------------------------


class UoroState(NamedTuple):
    inner: optax.OptState
    s_tilde: Any        # state-shaped [B, ...]: the state factor of the rank-one estimate
    theta_tilde: Any    # params-shaped: the parameter factor
    grad_sum: Any       # params-shaped: Σ g̃ since the last parameter update
    steps: jax.Array    # int32: time steps seen (parameter update when steps % update_every == 0)


def uoro(system, transform: optax.GradientTransformation, *, batch_size: int, update_every: int = 1,
         eps: float = 1e-7) -> Optimizer:
    """UORO with ``transform`` as the online parameter update (see the module docstring)."""

    def init_fn(params):
        zeros_p = tree_zeros(params)
        return UoroState(transform.init(params), tree_zeros(system.init_state(params, batch_size)),
                         zeros_p, zeros_p, jnp.zeros((), jnp.int32))

    def apply(params, inner, g_sum):
        updates, inner = transform.update(g_sum, inner, params)
        return optax.apply_updates(params, updates), inner, tree_zeros(g_sum)

    def body(carry, xs):
        params, inner, state, s_t, th_t, g_sum, steps, key, loss_sum = carry
        x, target, w = xs
        (loss, new_state), pullback = jax.vjp(step_with_loss(system, x, target, w), params, state)
        d_theta, d_s = pullback((jnp.ones_like(loss), tree_zeros(new_state)))
        coef = tree_vdot(d_s, s_t)
        g = jax.tree.map(lambda d, t: d + coef * t, d_theta, th_t)                       # g̃
        _, s_push = jax.jvp(lambda s: system.step(params, s, x)[0], (state,), (s_t,))   # (∂F/∂s) s̃
        nu = rademacher_like(jax.random.fold_in(key, steps), new_state)
        d_theta_g, _ = pullback((jnp.zeros_like(loss), nu))                                # νᵀ ∂F/∂θ
        rho0 = jnp.sqrt(tree_norm(th_t) / (tree_norm(s_push) + eps)) + eps
        rho1 = jnp.sqrt(tree_norm(d_theta_g) / (tree_norm(nu) + eps)) + eps
        s_t = jax.tree.map(lambda a, n: rho0 * a + rho1 * n, s_push, nu)
        th_t = jax.tree.map(lambda a, b: a / rho0 + b / rho1, th_t, d_theta_g)
        steps = steps + 1
        if update_every == 1:   # no accumulator: g̃ goes straight to optax
            params, inner, _ = apply(params, inner, g)
        else:
            g_sum = jax.tree.map(jnp.add, g_sum, g)
            params, inner, g_sum = jax.lax.cond(steps % update_every == 0, apply, lambda *a: a,
                                                params, inner, g_sum)
        # Running sums, not stacked per-step outputs: memory stays constant in the horizon.
        return (params, inner, new_state, s_t, th_t, g_sum, steps, key, loss_sum + loss), None

    def update_fn(params, opt_state, batch, key, carry):
        B = batch.batch_size
        state = initial_state(system, params, carry, B)
        s_t, th_t = opt_state.s_tilde, opt_state.theta_tilde
        if carry is None:   # episodic: every trial starts afresh, so does the estimate
            s_t, th_t = tree_zeros(s_t), tree_zeros(th_t)
        zero = jnp.zeros((), batch.dtype)
        init = (params, opt_state.inner, state, s_t, th_t, opt_state.grad_sum, opt_state.steps, key, zero)
        (params, inner, state, s_t, th_t, g_sum, steps, _, loss), _ = batch.scan(body, init)
        metrics = {"loss": loss, "s_tilde_norm": tree_norm(s_t), "theta_tilde_norm": tree_norm(th_t)}
        return params, UoroState(inner, s_t, th_t, g_sum, steps), state, metrics

    return Optimizer(init_fn, update_fn)


def from_config(cfg, system, *, episodic, iterations, n_steps):
    del episodic
    update_every = positive_int(cfg, "update_every", 1)
    eps = positive(cfg, "epsilon", 1e-7)
    transform = chars_transform(cfg, iterations * max(1, n_steps // update_every), update_every)
    return uoro(system, transform, batch_size=batch_size_of(cfg), update_every=update_every, eps=eps)
