"""How one step's K tangents are computed: the *steppers* of the forward-mode engine
(sofo_lab/optim/_forward.py, whose docstring describes each).

- ``GenericStepper``: any system, ``jax.linearize`` of the step, ``vmap`` over the K lanes.
- ``RateRNNStepper``: the rate network's tangents by hand, lanes inside the batch.
- ``ClosedLoopStepper``: a rate network driving a ``Plant`` (sofo_lab/core/system.py ``ClosedLoop``).

``stepper_for(system)`` picks one. Every stepper has ``lane_axis``, ``prepare(params, tangents)``,
``from_lanes_first(params, state, state_tangents)`` and ``step(params, consts, state, tangents, x)
-> (state', y, tangents', ẏ [K, B, O])``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sofo_lab.core.system import ClosedLoop, ModelSystem


class GenericStepper:
    """Any system: ``jax.linearize`` the step once, ``vmap`` the linear map over K lanes."""

    lane_axis = 0

    def __init__(self, system):
        self.system = system

    def prepare(self, params, tangents):
        return tangents

    def from_lanes_first(self, params, state, state_tangents):
        return state_tangents

    def step(self, params, consts, state, state_tangents, x):
        primal, linear = jax.linearize(lambda p, s: self.system.step(p, s, x), params, state)
        state_new, y = primal
        tangent_state, tangent_y = jax.vmap(linear)(consts, state_tangents)
        return state_new, y, tangent_state, tangent_y          # tangent_y: [K, B, O]


class RateRNNStepper:
    """Hand-written tangents of ``RateRNN`` (sofo_lab/models/rnn.py), lanes inside the batch.

        ṙ  = φ'(z) ⊙ η ⊙ ż
        ż' = (1 − α) ż + α (ṙ W_rec + [r, u, 1] [Ẇ_rec; Ẇ_in; ḃ])
        ẏ  = (φ'(z') ⊙ ż') W_out + [φ(z'), 1] [Ẇ_out; ḃ_out]

    Tangents are ``[B, K, N]``. Without private noise (η = 1) the products of ``q = φ'(z') ⊙ ż'``
    with ``α W_rec`` (next step's recurrence) and with ``W_out`` (this step's readout) are one GEMM
    ``q @ [α W_rec, W_out]``, and the carry is ``(ż, that product)``. With noise, η of the next
    step multiplies q first, so the carry is ``(ż, q)`` and the two products stay apart.
    """

    lane_axis = 1

    def __init__(self, system):
        self.system, self.model = system, system.model
        self.fused = self.model.noise_amplitude == 0.0

    def _dphi(self, z):
        return jax.jvp(self.model.phi, (z,), (jnp.ones_like(z),))[1]

    def prepare(self, params, tangents):
        alpha = self.model.alpha
        K = tangents["W_rec"].shape[0]

        def lanes_last(v):                       # [K, A, M] -> [A, K·M]
            return jnp.moveaxis(v, 0, 1).reshape(v.shape[1], K * v.shape[2])

        drive = jnp.concatenate([lanes_last(tangents["W_rec"]), lanes_last(tangents["W_in"]),
                                 tangents["b"].reshape(1, -1)], axis=0) * alpha
        out = jnp.concatenate([lanes_last(tangents["W_out"]), tangents["b_out"].reshape(1, -1)], axis=0)
        return drive, out, self.prepare_both(params)

    def _through(self, q, both):
        B, K, N = q.shape
        return (q.reshape(B * K, N) @ both).reshape(B, K, both.shape[1])

    def from_lanes_first(self, params, state, state_tangents):
        dz = jnp.moveaxis(state_tangents, 0, 1)                         # [B, K, N]
        q = dz * self._dphi(state)[:, None, :]
        if self.fused:
            return dz, self._through(q, self.prepare_both(params))
        return dz, q

    def prepare_both(self, params):
        return jnp.concatenate([self.model.alpha * params["W_rec"], params["W_out"]], axis=1)

    def step(self, params, consts, z, tangents, x):
        z_new, y, tangents, dy = self.net_step(params, consts, z, tangents, x.u, x.noise)
        return z_new, y, tangents, jnp.moveaxis(dy, 1, 0)

    def net_step(self, params, consts, z, tangents, u, noise, input_drive=None):
        """One step with lanes inside the batch: ``dy`` is ``[B, K, O]``. ``input_drive`` ``[B, K, N]``
        adds ``α u̇ W_in`` when the input has tangents (a closed loop's feedback)."""
        drive_t, out_t, both = consts
        dz, carried = tangents
        alpha, phi = self.model.alpha, self.model.phi
        B, K, N = dz.shape
        r = phi(z)
        if self.fused:
            if noise is not None:
                raise ValueError("RateRNNStepper: noise given to a model with noise_amplitude=0")
            recurrent = carried[..., :N]                                 # α (φ'(z) ⊙ ż) W_rec
        else:
            r, dr = r * noise, carried * noise[:, None, :]
            recurrent = alpha * (dr.reshape(B * K, N) @ params["W_rec"]).reshape(B, K, N)
        ones = jnp.ones((B, 1), z.dtype)
        z_new = (1.0 - alpha) * z + alpha * (r @ params["W_rec"] + u @ params["W_in"] + params["b"])
        inject = (jnp.concatenate([r, u.astype(z.dtype), ones], axis=1) @ drive_t).reshape(B, K, N)
        dz_new = (1.0 - alpha) * dz + inject + recurrent
        if input_drive is not None:
            dz_new = dz_new + input_drive
        h = phi(z_new)
        q_new = dz_new * self._dphi(z_new)[:, None, :]
        y = h @ params["W_out"] + params["b_out"]
        O = y.shape[1]
        if self.fused:
            carried = self._through(q_new, both)                         # [B, K, N + O]
            readout = carried[..., N:]
        else:
            carried = q_new
            readout = (q_new.reshape(B * K, N) @ params["W_out"]).reshape(B, K, O)
        dy = readout + (jnp.concatenate([h, ones], axis=1) @ out_t).reshape(B, K, O)
        return z_new, y, (dz_new, carried), dy


class ClosedLoopStepper:
    """A rate network driving a plant (``ClosedLoop``, sofo_lab/core/system.py), lanes inside the batch.

    The network's tangents are ``RateRNNStepper``'s; the feedback enters them as one GEMM
    ``α Ḟ W_fb`` (``Ḟ`` [B, K, F], ``W_fb`` the feedback rows of ``W_in``). The plant is linearized
    once per step at the primal point and its per-trial Jacobian

        J_b = ∂(s', y, feedback(s')) / ∂(s, c)          [S + C, S + O + F] for trial b

    is built from S + C basis directions (not K lanes); every lane then goes through it in one
    batched contraction ``[ṡ, ċ]_bk J_b``. The plant is trial by trial (sofo_lab/core/interfaces.py,
    ``Plant``), so this is its exact linearization; tests compare it with the generic stepper and
    reverse mode in float64.
    """

    lane_axis = 1

    def __init__(self, system):
        self.system, self.plant = system, system.plant
        self.net = RateRNNStepper(ModelSystem(system.model, system.loss))
        self.n_feedback = int(system.plant.n_feedback)

    def prepare(self, params, tangents):
        return self.net.prepare(params, tangents)

    def from_lanes_first(self, params, state, state_tangents):
        net_state, s = state
        ds = jnp.moveaxis(state_tangents[1], 0, 1)                           # [B, K, S]
        dfb = jax.vmap(lambda d: jax.jvp(self.plant.feedback, (s,), (d,))[1], in_axes=1, out_axes=1)(ds)
        return self.net.from_lanes_first(params, net_state, state_tangents[0]), ds, dfb

    def _plant_jacobian(self, s, command):
        """The plant's step and its per-trial Jacobian ``[B, S + C, S + O + F]``."""
        def through(s, c):
            s_new, y = self.plant.step(s, c)
            return s_new, y, self.plant.feedback(s_new)

        (s_new, y, _), linear = jax.linearize(through, s, command)
        S, C = s.shape[1], command.shape[1]
        B = s.shape[0]
        eye_s = jnp.broadcast_to(jnp.eye(S + C, S, dtype=s.dtype)[:, None, :], (S + C, B, S))
        eye_c = jnp.broadcast_to(jnp.eye(S + C, C, -S, dtype=command.dtype)[:, None, :], (S + C, B, C))
        parts = jax.vmap(linear)(eye_s, eye_c)                               # each [S + C, B, ...]
        jac = jnp.concatenate([p.astype(s.dtype) for p in parts], axis=-1)   # [S + C, B, S + O + F]
        return s_new, y, jnp.moveaxis(jac, 1, 0), S, y.shape[-1]

    def step(self, params, consts, state, tangents, x):
        net_state, s = state
        net_t, ds, dfb = tangents
        B, K, F = dfb.shape
        alpha = self.net.model.alpha
        w_fb = params["W_in"][-F:]
        # F and S + C are a handful: sums of broadcast products fuse into one loop each, where a GEMM
        # with an inner dimension of 4-6 (or B tiny batched ones) costs more (measured on CPU)
        feedback_drive = alpha * _small_contraction(dfb.astype(w_fb.dtype), w_fb)
        u = self.system.network_input(x, s).u
        net_new, command, net_t, dcommand = self.net.net_step(params, consts, net_state, net_t, u, x.noise,
                                                              feedback_drive)
        s_new, y, jac, S, O = self._plant_jacobian(s, command)
        d_in = jnp.concatenate([ds, dcommand.astype(ds.dtype)], axis=-1)     # [B, K, S + C]
        d_out = _small_contraction(d_in, jac[:, None])                      # [B, K, S + O + F]
        ds_new, dy, dfb_new = d_out[..., :S], d_out[..., S:S + O], d_out[..., S + O:]
        return self.system.State(net_new, s_new), y, (net_t, ds_new, dfb_new), jnp.moveaxis(dy, 1, 0)


def _small_contraction(x, m):
    """``Σ_i x[..., i] m[..., i, :]`` for a short contracted axis, as broadcast products."""
    return sum(x[..., i:i + 1] * m[..., i, :] for i in range(x.shape[-1]))


def stepper_for(system, fast: bool = True):
    """The hand-written stepper when the network is exactly ``RateRNN`` (alone, ``ModelSystem``, or
    driving a plant, ``ClosedLoop``); the generic one for every other system, or with ``fast=False``."""
    from sofo_lab.models.rnn import RateRNN

    if fast and isinstance(system, ModelSystem) and type(system.model) is RateRNN:
        return RateRNNStepper(system)
    if fast and isinstance(system, ClosedLoop) and type(system.model) is RateRNN:
        return ClosedLoopStepper(system)
    return GenericStepper(system)
