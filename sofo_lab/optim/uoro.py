"""``optim=uoro``: Unbiased Online Recurrent Optimization, in the paper's step order.

UORO keeps a rank-one estimate ``s̃ θ̃ᵀ`` of ``J_t = ∂s_t/∂θ`` with ``E[s̃ θ̃ᵀ] = J_t`` and
updates the parameters while the stream runs. One time step (the paper's Algorithm 1), with
``F(θ, s, x) -> s'`` the system step and ``ℓ`` the per-step loss of its output:

    s_{t+1}, ℓ_{t+1}  = F(θ, s_t, x_{t+1}), loss                       one forward
    (δs, δθ)          = ∂ℓ_{t+1}/∂(s_t, θ)                              backprop through one step
    g̃                 = (δs · s̃_t) θ̃_t + δθ                           the gradient estimate
    s̃'               = (∂F/∂s) s̃_t                                    jax.jvp (never finite differences)

(δs · s̃_t is read off the same jvp: it is ∂ℓ/∂y · (∂y/∂s) s̃_t, so δs itself, a transposed
state-Jacobian product, is never formed.)
    ν                 = i.i.d. ±1 signs over the whole state (LSTM: both c and h; all B streams),
                        32 per threefry word, one draw per block of up to 64 steps
    δθ_g              = νᵀ ∂F/∂θ                                       a vjp of the state map, cotangent ν
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

from sofo_lab.core import checks
from sofo_lab.core.system import initial_state
from sofo_lab.core.tree import tree_norm, tree_vdot, tree_zeros
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform



SIGN_BLOCK = 64   # at most this many steps' signs come from one random draw (memory: 64 · dim s bits)


def sign_bits(key, block, n_steps: int, words: int):
    """Random words for the signs of ``n_steps`` steps from step ``block·n_steps`` on
    (``[n_steps, words]``): one threefry call over counters that never repeat within the update,
    32 signs per word. ``jax.random.rademacher`` per step would hash every entry, and on CPU one
    threefry call (a rolled loop of small kernels) costs several network steps; one draw per
    block of steps amortizes it, and the memory stays constant in the horizon."""
    raw = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    n = n_steps * words
    count = block.astype(jnp.uint32) * jnp.uint32(n) + jnp.arange(n, dtype=jnp.uint32)
    return jax.extend.random.threefry_2x32(raw, count).reshape(n_steps, words)


def unpack_signs(word_row, like):
    """``[words]`` uint32 -> ±1 signs shaped like the pytree ``like`` (bit j of word i is flat entry 32i + j)."""
    leaves, treedef = jax.tree.flatten(like)
    bits = (word_row[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    flat = 2 * bits.reshape(-1).astype(leaves[0].dtype) - 1
    out, start = [], 0
    for x in leaves:
        out.append(flat[start:start + x.size].reshape(x.shape))
        start += x.size
    return treedef.unflatten(out)


class UoroState(NamedTuple):
    inner: optax.OptState
    s_tilde: Any        # state-shaped [B, ...]: the state factor of the rank-one estimate
    theta_tilde: Any    # params-shaped: the parameter factor
    grad_sum: Any       # params-shaped: Σ g̃ since the last parameter update
    steps: jax.Array    # int32: time steps seen (parameter update when steps % update_every == 0)


def uoro(system, transform: optax.GradientTransformation, *, batch_size: int, update_every: int = 1,
         eps: float = 1e-7, names=checks.PLAIN) -> Optimizer:
    """UORO with ``transform`` as the online parameter update (see the module docstring).

    ``batch_size``: the B streams (s̃ is state-shaped, ``[B, ...]``). Every argument is checked
    here, for the command line and the library alike; ``names`` names them as the caller does
    (``checks.named``).

    Per step: one ``jax.vjp`` of the step, whose pullback of the loss's output cotangent gives
    δθ; one ``vjp`` of the state map alone for νᵀ∂F/∂θ (no readout work); one ``jax.jvp`` of the
    step for (∂F/∂s)s̃ and the output tangent that gives δs · s̃ (XLA computes the shared forward
    once); ‖ν‖ = √dim s exactly.
    """
    transform = optax.with_extra_args_support(transform)   # update(..., value=loss): optim.plateau
    batch_size = checks.positive_int(names("batch_size"), batch_size)
    update_every = checks.positive_int(names("update_every"), update_every)
    eps = checks.positive(names("eps"), eps)

    def init_fn(params):
        zeros_p = tree_zeros(params)
        return UoroState(transform.init(params), tree_zeros(system.init_state(params, batch_size)),
                         zeros_p, zeros_p, jnp.zeros((), jnp.int32))

    def apply(params, inner, g_sum, loss):
        updates, inner = transform.update(g_sum, inner, params, value=loss)   # optim.plateau: this step's loss
        return optax.apply_updates(params, updates), inner, tree_zeros(g_sum)

    def step_fn(key, start, block, words, n_state):
        def body(carry, xs):
            params, inner, state, s_t, th_t, g_sum, steps, bits, loss_sum = carry
            x, target, w = xs
            (new_state, y), pullback = jax.vjp(lambda p, s: system.step(p, s, x), params, state)
            loss, d_y = jax.value_and_grad(system.loss.value)(y, target, w)
            d_theta, _ = pullback((tree_zeros(new_state), d_y))                            # δθ
            _, (s_push, y_dot) = jax.jvp(lambda s: system.step(params, s, x), (state,), (s_t,))
            coef = tree_vdot(d_y, y_dot)             # δs · s̃ = ∂ℓ/∂y · (∂y/∂s) s̃: no δs needed
            g = jax.tree.map(lambda d, t: d + coef * t, d_theta, th_t)                       # g̃
            t = steps - start
            bits = jax.lax.cond(t % block == 0, lambda: sign_bits(key, t // block, block, words), lambda: bits)
            nu = unpack_signs(bits[t % block], new_state)                                    # ν
            _, pull_state = jax.vjp(lambda p: system.step(p, state, x)[0], params)
            (d_theta_g,) = pull_state(nu)                                                    # νᵀ ∂F/∂θ
            rho0 = jnp.sqrt(tree_norm(th_t) / (tree_norm(s_push) + eps)) + eps
            rho1 = jnp.sqrt(tree_norm(d_theta_g) / (jnp.sqrt(float(n_state)) + eps)) + eps   # ‖ν‖ = √dim s
            s_t = jax.tree.map(lambda a, n: rho0 * a + rho1 * n, s_push, nu)
            th_t = jax.tree.map(lambda a, b: a / rho0 + b / rho1, th_t, d_theta_g)
            steps = steps + 1
            if update_every == 1:   # no accumulator: g̃ goes straight to optax
                params, inner, _ = apply(params, inner, g, loss)
            else:
                g_sum = jax.tree.map(jnp.add, g_sum, g)
                params, inner, g_sum = jax.lax.cond(steps % update_every == 0, apply, lambda *a: a[:3],
                                                    params, inner, g_sum, loss)
            # Running sums, not stacked per-step outputs: memory stays constant in the horizon.
            return (params, inner, new_state, s_t, th_t, g_sum, steps, bits, loss_sum + loss), None

        return body

    def update_fn(params, opt_state, batch, key, carry):
        B = batch.batch_size
        state = initial_state(system, params, carry, B)
        s_t, th_t = opt_state.s_tilde, opt_state.theta_tilde
        if carry is None:   # episodic: every trial starts afresh, so does the estimate
            s_t, th_t = tree_zeros(s_t), tree_zeros(th_t)
        n_state = sum(x.size for x in jax.tree.leaves(state))
        block, words = min(batch.n_steps, SIGN_BLOCK), -(-n_state // 32)
        bits = jnp.zeros((block, words), jnp.uint32)   # drawn at the first step
        zero = jnp.zeros((), batch.dtype)
        init = (params, opt_state.inner, state, s_t, th_t, opt_state.grad_sum, opt_state.steps, bits, zero)
        body = step_fn(key, opt_state.steps, block, words, n_state)
        (params, inner, state, s_t, th_t, g_sum, steps, _, loss), _ = batch.scan(body, init)
        metrics = {"loss": loss, "s_tilde_norm": tree_norm(s_t), "theta_tilde_norm": tree_norm(th_t)}
        return params, UoroState(inner, s_t, th_t, g_sum, steps), state, metrics

    return Optimizer(init_fn, update_fn)


NAMES = checks.named("optim", batch_size="batch_size", eps="optim.epsilon")   # Adam's eps is optim.eps


def from_config(system, *, iterations: int, n_steps: int, batch_size: int, update_every, epsilon,
                **update) -> Optimizer:
    """``optim=uoro`` (conf/optim/uoro.yaml); ``batch_size`` is the run's (the build passes it)."""
    per_update = max(1, n_steps // checks.positive_int(NAMES("update_every"), update_every))
    transform = make_transform(update, iterations * per_update, update_every)
    return uoro(system, transform, batch_size=batch_size, update_every=update_every, eps=epsilon, names=NAMES)
