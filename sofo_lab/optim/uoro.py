"""``optim=uoro``: Unbiased Online Recurrent Optimization, in the paper's step order.

UORO keeps a rank-one estimate ``s̃ θ̃ᵀ`` of ``J_t = ∂s_t/∂θ`` with ``E[s̃ θ̃ᵀ] = J_t`` and
updates the parameters while the stream runs. One time step (the paper's Algorithm 1), with
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
    (arXiv:1702.05043), Algorithm 1; docs/uoro.md.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.extend.random
import jax.numpy as jnp
import optax

from sofo_lab import checks
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform
from sofo_lab.system import initial_state
from sofo_lab.tree import tree_norm, tree_vdot, tree_zeros



class FlatLayout(NamedTuple):
    """Where each leaf of a pytree lives in one flat vector (``jax.tree.leaves`` order, each leaf
    raveled, as ``jax.flatten_util.ravel_pytree``): UORO's O(P) vector work runs on flat vectors,
    one fused XLA loop per operation instead of one per parameter leaf."""

    treedef: Any
    shapes: tuple
    offsets: tuple
    size: int

    @classmethod
    def of(cls, tree) -> FlatLayout:
        leaves, treedef = jax.tree.flatten(tree)
        sizes = [int(x.size) for x in leaves]
        offsets = tuple(sum(sizes[:i]) for i in range(len(sizes) + 1))
        return cls(treedef, tuple(x.shape for x in leaves), offsets, offsets[-1])

    def flatten(self, tree) -> jax.Array:
        return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(tree)])

    def unflatten(self, flat):
        return self.treedef.unflatten([flat[a:b].reshape(s) for a, b, s in
                                       zip(self.offsets[:-1], self.offsets[1:], self.shapes)])


def signs(key, counter, layout: FlatLayout, dtype):
    """Fresh ±1 signs for one step, flat ``[layout.size]``: one threefry call whose counters are
    ``counter·words + 0 … words−1``, 32 signs per random word (``jax.random`` would hash every
    entry, and on CPU that cost more than the whole network step at B = 64)."""
    words = -(-layout.size // 32)
    count = counter.astype(jnp.uint32) * jnp.uint32(words) + jnp.arange(words, dtype=jnp.uint32)
    raw = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    bits = jax.extend.random.threefry_2x32(raw, count)
    bits = (bits[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return 2 * bits.reshape(-1)[:layout.size].astype(dtype) - 1


class UoroState(NamedTuple):
    inner: optax.OptState   # the transform's state, over the flat parameter vector
    s_tilde: Any            # state-shaped [B, ...]: the state factor of the rank-one estimate
    theta_tilde: Any        # [P], flat (FlatLayout of the params): the parameter factor
    grad_sum: Any           # [P], flat: Σ g̃ since the last parameter update
    steps: jax.Array        # int32: time steps seen (parameter update when steps % update_every == 0)


def uoro(system, transform: optax.GradientTransformation, *, batch_size: int, update_every: int = 1,
         eps: float = 1e-7) -> Optimizer:
    """UORO with ``transform`` as the online parameter update (see the module docstring).

    Per step: one ``jax.vjp`` of the step (its pullback gives the loss part δθ, δs), one ``vjp``
    of the state map alone for νᵀ∂F/∂θ (XLA shares the forward of the three), one ``jax.jvp``
    for (∂F/∂s)s̃; θ̃, g̃, Σg̃ and the transform's state are flat vectors.
    """

    def init_fn(params):
        flat = FlatLayout.of(params).flatten(params)
        zeros = jnp.zeros_like(flat)
        return UoroState(transform.init(flat), tree_zeros(system.init_state(params, batch_size)),
                         zeros, zeros, jnp.zeros((), jnp.int32))

    def apply(flat_p, inner, g_sum):
        updates, inner = transform.update(g_sum, inner, flat_p)
        return flat_p + updates, inner, jnp.zeros_like(g_sum)

    def step_fn(layout, state_layout, key, start):
        def body(carry, xs):
            flat_p, inner, state, s_t, th_t, g_sum, steps, loss_sum = carry
            x, target, w = xs
            params = layout.unflatten(flat_p)
            (new_state, y), pullback = jax.vjp(lambda p, s: system.step(p, s, x), params, state)
            loss, d_y = jax.value_and_grad(system.loss.value)(y, target, w)
            d_theta, d_s = pullback((tree_zeros(new_state), d_y))                         # δθ, δs
            g = layout.flatten(d_theta) + tree_vdot(d_s, s_t) * th_t                        # g̃
            _, s_push = jax.jvp(lambda s: system.step(params, s, x)[0], (state,), (s_t,))   # (∂F/∂s) s̃
            nu = signs(key, steps - start, state_layout, th_t.dtype)
            _, pull_state = jax.vjp(lambda p: system.step(p, state, x)[0], params)
            d_theta_g = layout.flatten(pull_state(state_layout.unflatten(nu))[0])           # νᵀ ∂F/∂θ
            rho0 = jnp.sqrt(jnp.linalg.norm(th_t) / (tree_norm(s_push) + eps)) + eps
            rho1 = jnp.sqrt(jnp.linalg.norm(d_theta_g) / (jnp.sqrt(float(state_layout.size)) + eps)) + eps
            s_t = jax.tree.map(lambda a, n: rho0 * a + rho1 * n, s_push, state_layout.unflatten(nu))
            th_t = th_t / rho0 + d_theta_g / rho1
            steps = steps + 1
            if update_every == 1:   # no accumulator: g̃ goes straight to optax
                flat_p, inner, _ = apply(flat_p, inner, g)
            else:
                flat_p, inner, g_sum = jax.lax.cond(steps % update_every == 0, apply, lambda *a: a,
                                                    flat_p, inner, g_sum + g)
            # Running sums, not stacked per-step outputs: memory stays constant in the horizon.
            return (flat_p, inner, new_state, s_t, th_t, g_sum, steps, loss_sum + loss), None

        return body

    def update_fn(params, opt_state, batch, key, carry):
        B = batch.batch_size
        layout = FlatLayout.of(params)
        state = initial_state(system, params, carry, B)
        state_layout = FlatLayout.of(state)
        s_t, th_t = opt_state.s_tilde, opt_state.theta_tilde
        if carry is None:   # episodic: every trial starts afresh, so does the estimate
            s_t, th_t = tree_zeros(s_t), jnp.zeros_like(th_t)
        zero = jnp.zeros((), batch.dtype)
        init = (layout.flatten(params), opt_state.inner, state, s_t, th_t, opt_state.grad_sum, opt_state.steps, zero)
        body = step_fn(layout, state_layout, key, opt_state.steps)
        (flat_p, inner, state, s_t, th_t, g_sum, steps, loss), _ = batch.scan(body, init)
        metrics = {"loss": loss, "s_tilde_norm": tree_norm(s_t), "theta_tilde_norm": jnp.linalg.norm(th_t)}
        return layout.unflatten(flat_p), UoroState(inner, s_t, th_t, g_sum, steps), state, metrics

    return Optimizer(init_fn, update_fn)


def from_config(system, *, iterations: int, n_steps: int, episodic: bool, update_every, epsilon, batch_size,
                **update) -> Optimizer:
    """``optim=uoro`` (conf/optim/uoro.yaml); ``batch_size`` is the run's (B streams: s̃ is [B, ...])."""
    del episodic
    update_every = checks.positive_int("optim.update_every", update_every)
    eps = checks.positive("optim.epsilon", epsilon)
    transform = make_transform(update, iterations * max(1, n_steps // update_every), update_every)
    return uoro(system, transform, batch_size=checks.positive_int("optim.batch_size", batch_size),
                update_every=update_every, eps=eps)
