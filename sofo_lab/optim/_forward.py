"""Batched forward mode through a whole system: the engine shared by ``optim=sofo`` and ``optim=fgd``.

One ``lax.scan`` over time carries the primal state, its K tangents, and three accumulators:

    carry = (state [B, ...], state tangents (K lanes), loss, C [K], G̃ [K, K])
    C  += Σ_b (∂ℓ_t/∂y_b) · Ẏ_b                (= Vᵀ∇L, the K tangents of the summed loss)
    G̃ += Σ_b Ẏ_bᵀ H_b Ẏ_b                     (= VᵀGV, exact GGN of the reported loss)

``loss``, ``C`` and ``G̃`` accumulate in float64 (a local ``jax.enable_x64`` scope, even when the
network runs in float32). No per-step activation is kept, so memory is constant in T.

How a step's tangents are computed is a *stepper*:

- ``GenericStepper`` works for every system (models, closed loops with a plant): it linearizes
  ``system.step`` once at the primal point (``jax.linearize``: the primal runs once, never per
  lane) and ``vmap``s the linear map over the K lanes, whose tangents lead ``[K, B, ...]``.
- ``RateRNNStepper`` writes the rate network's tangent equations by hand, with the lanes inside
  the batch (``[B, K, N]``): one GEMM ``[B·K, N] @ W_rec`` for all state tangents, one GEMM
  ``[r, u, 1] @ [Ẇ_rec; Ẇ_in; ḃ]`` (``[B, N+I+1] @ [N+I+1, K·N]``) for every parameter-tangent
  term, the φ' mask applied once per step, no transposes inside the loop.

- ``ClosedLoopStepper``: a rate network driving a plant (``ClosedLoop``: the arm of the motor tasks,
  or a user's ``Plant``): the rate network's hand-written tangents, and the plant's per-trial
  Jacobian (S + C directions, not K lanes) applied to every lane by broadcast products.

The steppers live in sofo_lab/optim/_steppers.py (re-exported here).

``stepper_for(system)`` picks a fast one for a rate network, alone or in closed loop, and the generic
one otherwise; tests prove all give the same C and G̃ as reverse mode and a dense Jacobian
(tests/test_sofo.py, tests/test_closed_loop.py).

References:
    Yu, Xia, Ma, Lengyel, Hennequin. Second-order forward-mode optimization of recurrent neural
    networks for neuroscience. NeurIPS 2024 (Alg. 1; App. C for the cost).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sofo_lab.core import checks
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import initial_state
from sofo_lab.optim._steppers import (ClosedLoopStepper, GenericStepper, RateRNNStepper,  # noqa: F401 - the engine's
                                       stepper_for)

ACC = "float64"


def _x64():
    """Scope in which float64 exists (a no-op when x64 is already on)."""
    return jax.enable_x64(True)


# --- tangent directions ---------------------------------------------------------------------

def sample_tangents(key, params, n_tangents: int, orthonormalize: bool = False):
    """K random directions in parameter space, as a pytree whose leaves are ``[K, *leaf.shape]``.

    Gaussian entries, each direction scaled to unit global L2 norm (uniform on the sphere);
    with ``orthonormalize`` the K directions are an orthonormal basis (QR with the sign of R's
    diagonal fixed, so each column stays uniform on the sphere).
    """
    leaves, treedef = jax.tree.flatten(params)
    sizes = [x.size for x in leaves]
    flat = jax.random.normal(key, (n_tangents, sum(sizes)), jnp.result_type(*leaves))   # [K, P]
    if orthonormalize:
        q, r = jnp.linalg.qr(flat.T)                                                   # [P, K]
        flat = (q * jnp.sign(jnp.diagonal(r))).T
    else:
        flat = flat / jnp.linalg.norm(flat, axis=1, keepdims=True)
    offsets = np.cumsum(sizes)[:-1].tolist()
    v = [part.reshape((n_tangents,) + x.shape) for part, x in zip(jnp.split(flat, offsets, axis=1), leaves)]
    return jax.tree.unflatten(treedef, v)


def combine(tangents, coeffs):
    """``Σ_k coeffs_k V_k`` leaf by leaf: a parameter-shaped pytree."""
    return jax.tree.map(lambda v: jnp.tensordot(coeffs.astype(v.dtype), v, axes=1), tangents)


def n_params(params) -> int:
    """P: the number of parameters in the pytree ``params`` (arrays or shapes)."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def check_tangents(n_tangents, orthonormalize, names=checks.PLAIN) -> tuple[int, bool]:
    """Validate K = ``n_tangents`` (>= 1) and ``orthonormalize``; ``names`` names them as the caller
    does (sofo_lab/core/checks.py, ``named``). K <= P is checked by ``check_basis`` once P is known."""
    k = n_tangents
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(names("n_tangents"), k, "must be an integer >= 1 (the number of tangent directions K)")
    return k, checks.boolean(names("orthonormalize"), orthonormalize)


def check_basis(params, n_tangents: int, orthonormalize: bool, names=checks.PLAIN) -> None:
    """An orthonormal basis of K directions needs K <= P (P from ``params``: arrays or shapes)."""
    p = n_params(params)
    if orthonormalize and n_tangents > p:
        raise ConfigError(names("n_tangents"), n_tangents, f"must be <= the {p} parameters when "
                          f"{names('orthonormalize')}=true (an orthonormal basis has at most P vectors)")


# --- sharding of the K lanes ----------------------------------------------------------------

class LaneSharding(NamedTuple):
    """Shard the K tangent lanes across ``devices`` (None: one device, nothing to do)."""

    mesh: Any = None

    def constrain(self, tree, axis: int = 0):
        if self.mesh is None:
            return tree

        def one(x):
            spec = [None] * x.ndim
            spec[axis] = "lanes"
            return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))

        return jax.tree.map(one, tree)


def lane_sharding(mode, n_tangents: int, names=checks.PLAIN) -> LaneSharding:
    """``mode``: "auto" (shard when several devices divide K), true (require it), false (never);
    a ``LaneSharding`` is returned as it is."""
    if isinstance(mode, LaneSharding):
        return mode
    devices = jax.devices()
    if mode not in ("auto", True, False):
        raise ConfigError(names("shard"), mode, "choose auto, true or false")
    if mode is False or len(devices) == 1:
        return LaneSharding()
    if n_tangents % len(devices):
        if mode is True:
            raise ConfigError(names("shard"), mode, f"n_tangents={n_tangents} must be a multiple of the "
                              f"{len(devices)} devices; change {names('n_tangents')} or set {names('shard')}=auto")
        return LaneSharding()
    return LaneSharding(Mesh(devices, ("lanes",)))


# --- the forward sketch ------------------------------------------------------------------------

class Sketch(NamedTuple):
    loss: jax.Array          # summed per-step loss (float64)
    c: jax.Array             # [K] = Vᵀ∇L (float64)
    ggn: jax.Array | None    # [K, K] = VᵀGV, symmetrized (float64); None when not requested
    final_state: Any         # primal state after the last step
    c_trials: jax.Array | None = None   # [B, K]: each trial's share of C (Σ_b = C); None when not requested


def forward_sketch(system, params, tangents, batch, carry, *, with_ggn: bool = True, stepper=None,
                   sharding: LaneSharding = LaneSharding(), per_trial: bool = False, unroll: int = 1) -> Sketch:
    """Run ``system`` once over ``batch`` in batched forward mode along ``tangents`` (leaves [K, ...]).

    ``carry`` None: episodic, the initial state's tangents are those of ``init_state`` (non-zero
    only when it is learned). Otherwise a stream: the carried state is a constant (its tangents
    are zero) and the returned ``final_state`` is the next carry.

    ``per_trial``: also accumulate ``C_b = Σ_t (∂ℓ_t/∂y_b) · Ẏ_b`` for every trial b (``[B, K]``,
    ``Σ_b C_b = C``): the spread of the K projected gradients over the batch, at the cost of a
    ``[B, K]`` accumulator (no extra pass).
    """
    stepper = stepper or stepper_for(system)
    loss_fn = system.loss
    B = batch.batch_size
    K = jax.tree.leaves(tangents)[0].shape[0]
    tangents = sharding.constrain(tangents, 0)

    state0 = initial_state(system, params, carry, B)
    if carry is None:
        _, init_linear = jax.linearize(lambda p: system.init_state(p, B), params)
        dstate0 = jax.vmap(init_linear)(tangents)
    else:
        dstate0 = jax.tree.map(lambda s: jnp.zeros((K,) + s.shape, s.dtype), state0)
    consts = stepper.prepare(params, tangents)
    dstate0 = stepper.from_lanes_first(params, state0, dstate0)
    axis = stepper.lane_axis
    with _x64():
        acc0 = (jnp.zeros((), ACC), jnp.zeros((B, K) if per_trial else (K,), ACC),
                jnp.zeros((K, K) if with_ggn else (0, 0), ACC))

    def body(c, xs):
        state, dstate, (loss, cvec, ggn) = c
        x, target, w = xs
        state, y, dstate, dy = stepper.step(params, consts, state, dstate, x)
        dstate = sharding.constrain(dstate, axis)
        value, dl = jax.value_and_grad(loss_fn.value)(y, target, w)
        c_t = jnp.einsum("bo,kbo->bk" if per_trial else "bo,kbo->k", dl, dy)
        g_t = loss_fn.ggn(y, target, w, dy) if with_ggn else None
        with _x64():
            loss = loss + value.astype(ACC)
            cvec = cvec + c_t.astype(ACC)
            if with_ggn:
                ggn = ggn + g_t.astype(ACC)
        return (state, dstate, (loss, cvec, ggn)), None

    (state, _, (loss, cvec, ggn)), _ = batch.scan(body, (state0, dstate0, acc0), unroll=unroll)
    with _x64():
        if with_ggn:
            ggn = 0.5 * (ggn + ggn.T)
        c_trials = cvec if per_trial else None
        cvec = jnp.sum(cvec, axis=0) if per_trial else cvec
    return Sketch(loss, cvec, ggn if with_ggn else None, state, c_trials)


def flat_tangents(tangents):
    """``[K, P]``: each lane raveled in ``jax.flatten_util.ravel_pytree`` order."""
    return jax.vmap(lambda v: jax.flatten_util.ravel_pytree(v)[0])(tangents)
