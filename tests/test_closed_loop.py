"""SOFO's closed-loop fast path (``ClosedLoopStepper``): the generic path's and reverse mode's numbers.

A rate network driving a plant (the two-joint arm of the reach and the double reach, both
integrators, with and without private noise; a user's own plant) goes through the rate network's
hand-written tangents and the plant's per-trial Jacobian. In float64, its loss, C = Vᵀ∇L, G̃ = VᵀGV
and final state equal the generic stepper's (``jax.linearize`` of the whole closed-loop step,
vmapped over K lanes), and C equals reverse mode's gradient projected on the tangents.
"""
from __future__ import annotations

import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.core.system import ClosedLoop, initial_state, rollout
from sofo_lab.models import GRU, RateRNN
from sofo_lab.optim import _forward
from sofo_lab.tasks.double_reach import DoubleReach
from sofo_lab.tasks.reach import Reach

N, T, B, K = 6, 24, 3, 5


def f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class PointMass:
    """A user's own plant: a damped point mass pushed by the command (a ``Plant``); the network
    sees its position through a tanh, the loss sees position and speed."""

    n_feedback = 2

    def init_state(self, batch_size, dtype=jnp.float32):
        return jnp.tile(jnp.asarray([0.1, -0.2, 0.0, 0.0], dtype), (batch_size, 1))

    def feedback(self, s):
        return jnp.tanh(3.0 * s[:, :2])

    def step(self, s, command):
        vel = s[:, 2:] + 0.1 * (jnp.tanh(command) - 0.5 * s[:, 2:] * jnp.abs(s[:, 2:]))
        pos = s[:, :2] + 0.1 * vel
        return jnp.concatenate([pos, vel], axis=1), jnp.concatenate([pos, jnp.sum(vel**2, 1, keepdims=True)], axis=1)


def problem(kind: str, integrator: str = "euler", noise: float = 0.0, seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    if kind == "point_mass":
        model = RateRNN(3 + 2, 2, n_hidden=N, nonlinearity="tanh", learn_init_state=True, noise_amplitude=noise)
        system = ClosedLoop(model, PointMass(), MeanSquaredError())
        from sofo_lab.core.system import Batch
        batch = Batch(jax.random.normal(k[1], (T, B, 3)), jax.random.normal(k[2], (T, B, 3)),
                      jax.random.uniform(k[3], (T, B)))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # T = 24 compresses the trial's periods
            task = {"reach": Reach, "double_reach": DoubleReach}[kind](n_steps=T, integrator=integrator,
                                                                     private_noise=noise)
        model = RateRNN(task.model_n_inputs, task.model_n_outputs, n_hidden=N, dt=task.dt, tau=task.tau,
                        noise_amplitude=noise, learn_init_state=True, readout_scale=3.0)
        system = task.make_system(model)
        batch = task.sample(k[1], B)
    batch = batch._replace(noise=system.sample_noise(k[0], T, B))
    params = system.init_params(k[2])
    params = {**params, "z0": params["z0"] + 0.3}      # a learned initial state with tangents
    return system, f64(params), f64(batch)


CASES = [("reach", "euler", 0.0), ("reach", "euler", 0.28), ("reach", "semi_implicit", 0.28),
         ("double_reach", "euler", 0.28), ("double_reach", "semi_implicit", 0.0), ("point_mass", "-", 0.3)]


@pytest.mark.parametrize("kind,integrator,noise", CASES)
def test_fast_closed_loop_equals_generic_and_reverse_mode(kind, integrator, noise):
    with jax.enable_x64(True):
        system, params, batch = problem(kind, integrator, noise)
        fast, generic = _forward.stepper_for(system), _forward.stepper_for(system, fast=False)
        assert type(fast) is _forward.ClosedLoopStepper and type(generic) is _forward.GenericStepper
        tangents = _forward.sample_tangents(jax.random.PRNGKey(7), params, K)

        @jax.jit
        def all_three(p, v, b):
            def loss(q):
                final, _, losses = rollout(system, q, initial_state(system, q, None, B), b)
                return losses.sum(), final
            return (_forward.forward_sketch(system, p, v, b, None, stepper=fast, per_trial=True),
                    _forward.forward_sketch(system, p, v, b, None, stepper=generic, per_trial=True),
                    jax.value_and_grad(loss, has_aux=True)(p))

        ours, theirs, ((loss, final), grad) = all_three(params, tangents, batch)
        np.testing.assert_allclose(ours.loss, theirs.loss, rtol=1e-12)
        np.testing.assert_allclose(ours.loss, loss, rtol=1e-12)
        np.testing.assert_allclose(ours.c, theirs.c, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.c_trials, theirs.c_trials, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.ggn, theirs.ggn, rtol=1e-9, atol=1e-12)
        flat_grad = jax.flatten_util.ravel_pytree(grad)[0]
        np.testing.assert_allclose(ours.c, _forward.flat_tangents(tangents) @ flat_grad, rtol=1e-9, atol=1e-12)
        for a, b in zip(jax.tree.leaves(ours.final_state), jax.tree.leaves(final)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        assert np.abs(ours.c).max() > 1e-6 and np.abs(ours.ggn).max() > 1e-8     # a non-trivial check


def test_fast_closed_loop_carries_a_stream_state():
    """With a carried state (its tangents zero) the fast path still matches the generic one."""
    with jax.enable_x64(True):
        system, params, batch = problem("reach", "euler", 0.28)
        carry = f64(jax.tree.map(lambda s: s + 0.05, system.init_state(params, B)))
        tangents = _forward.sample_tangents(jax.random.PRNGKey(3), params, K)
        ours = _forward.forward_sketch(system, params, tangents, batch, carry)
        theirs = _forward.forward_sketch(system, params, tangents, batch, carry,
                                         stepper=_forward.GenericStepper(system))
        np.testing.assert_allclose(ours.c, theirs.c, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.ggn, theirs.ggn, rtol=1e-9, atol=1e-12)


def test_other_models_on_the_arm_take_the_generic_path():
    """Only the rate network has hand-written tangents: a GRU driving the arm stays generic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = Reach(n_steps=T)
    system = task.make_system(GRU(task.model_n_inputs, task.model_n_outputs, n_hidden=4))
    assert type(_forward.stepper_for(system)) is _forward.GenericStepper
