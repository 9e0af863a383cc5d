"""SOFO's adaptive (Levenberg-Marquardt) damping: the predicted decrease is the subspace quadratic
model's, exactly; λ shrinks on a good model, grows and rejects a step that raises the loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.core.system import Batch, StepInput, rollout
from sofo_lab.optim.sofo import LM_GROW, LM_SHRINK, sofo

T, B, I, O, K = 5, 4, 3, 2, 4


class LinearReadout:
    """``y_t = u_t W + b``: a loss quadratic in the parameters, so Gauss-Newton is the exact Hessian
    and the subspace model predicts the decrease of any step exactly."""

    loss = MeanSquaredError()

    def init_params(self, key):
        return {"W": jax.random.normal(key, (I, O)), "b": jnp.zeros(O)}

    def init_state(self, params, batch_size):
        return jnp.zeros((batch_size, 1), params["W"].dtype)

    def step(self, params, state, x: StepInput):
        return state, x.u @ params["W"] + params["b"]

    def sample_noise(self, key, n_steps, batch_size):
        return None


def _problem():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    batch = Batch(jax.random.normal(keys[0], (T, B, I), jnp.float64),
                  jax.random.normal(keys[1], (T, B, O), jnp.float64), jnp.full((T, B), 1.0 / T, jnp.float64))
    system = LinearReadout()
    params = jax.tree.map(lambda x: x.astype(jnp.float64), system.init_params(keys[2]))
    return system, params, batch


def _loss(system, params, batch):
    return float(rollout(system, params, system.init_state(params, B), batch)[2].sum())


def test_predicted_decrease_is_exact_on_a_quadratic_and_lambda_shrinks():
    with jax.enable_x64(True):
        system, params, batch = _problem()
        opt = sofo(system, optax.sgd(0.5), n_tangents=K, damping=1e-2, adaptive_damping=True)
        state = opt.init(params)
        new, state2, _, m = jax.jit(opt.update)(params, state, batch, jax.random.PRNGKey(0), None)
        actual = _loss(system, params, batch) - _loss(system, new, batch)
        np.testing.assert_allclose(float(m["sofo/predicted_decrease"]), actual, rtol=1e-6)   # a float32 metric
        np.testing.assert_allclose(float(m["sofo/rho"]), 1.0, rtol=1e-6)
        assert float(m["sofo/accepted"]) == 1.0
        np.testing.assert_allclose(float(state2.damping), 1e-2 * LM_SHRINK, rtol=1e-6)


def test_a_step_that_raises_the_loss_is_rejected_and_lambda_grows():
    with jax.enable_x64(True):
        system, params, batch = _problem()
        # lr 3 overshoots the minimum of the quadratic in span(V): the loss rises.
        opt = sofo(system, optax.sgd(3.0), n_tangents=K, damping=1e-6, adaptive_damping=True)
        state = opt.init(params)
        new, state2, _, m = jax.jit(opt.update)(params, state, batch, jax.random.PRNGKey(0), None)
        assert float(m["sofo/accepted"]) == 0.0 and float(m["sofo/rho"]) < 0
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(float(state2.damping), 1e-6 * LM_GROW, rtol=1e-6)
        # fixed damping takes the same bad step: the rejection is what keeps the loss down
        fixed = sofo(system, optax.sgd(3.0), n_tangents=K, damping=1e-6)
        bad, _, _, _ = jax.jit(fixed.update)(params, fixed.init(params), batch, jax.random.PRNGKey(0), None)
        assert _loss(system, bad, batch) > _loss(system, params, batch)


def test_lambda_stays_within_its_bounds():
    with jax.enable_x64(True):
        system, params, batch = _problem()
        opt = sofo(system, optax.sgd(0.5), n_tangents=K, damping=1e-3, adaptive_damping=True,
                   damping_range=(1e-3, 1e-3))
        _, state2, _, _ = jax.jit(opt.update)(params, opt.init(params), batch, jax.random.PRNGKey(0), None)
        np.testing.assert_allclose(float(state2.damping), 1e-3, rtol=1e-6)


def test_a_rejected_step_restarts_momentum():
    with jax.enable_x64(True):
        system, params, batch = _problem()
        opt = sofo(system, optax.sgd(3.0, momentum=0.9), n_tangents=K, damping=1e-6, adaptive_damping=True)
        state = opt.init(params)
        state = state._replace(inner=jax.tree.map(lambda x: x + 1.0, state.inner))   # a stale momentum buffer
        new, state2, _, m = jax.jit(opt.update)(params, state, batch, jax.random.PRNGKey(0), None)
        assert float(m["sofo/accepted"]) == 0.0
        for leaf in jax.tree.leaves(state2.inner):
            np.testing.assert_array_equal(leaf, 0.0)


def test_a_rejected_step_keeps_the_schedule_going():
    """The restart zeroes the buffers but not the step count: the learning-rate schedule goes on
    (a count reset to 0 put a cosine schedule back at its peak after every rejection)."""
    with jax.enable_x64(True):
        system, params, batch = _problem()
        schedule = optax.cosine_decay_schedule(3.0, 10)
        opt = sofo(system, optax.sgd(schedule, momentum=0.9), n_tangents=K, damping=1e-6, adaptive_damping=True)
        state = opt.init(params)
        counts = lambda s: [int(x) for x in jax.tree.leaves(s.inner) if jnp.issubdtype(x.dtype, jnp.integer)]  # noqa: E731
        assert counts(state) == [0]
        _, state2, _, m = jax.jit(opt.update)(params, state, batch, jax.random.PRNGKey(0), None)
        assert float(m["sofo/accepted"]) == 0.0
        assert counts(state2) == [1]
        for leaf in jax.tree.leaves(state2.inner):
            if not jnp.issubdtype(leaf.dtype, jnp.integer):
                np.testing.assert_array_equal(leaf, 0.0)


def test_a_batch_that_is_non_finite_rolls_the_last_step_back():
    with jax.enable_x64(True):
        system, params, batch = _problem()
        opt = sofo(system, optax.sgd(0.5), n_tangents=K, damping=1e-3, adaptive_damping=True)
        update = jax.jit(opt.update)
        stepped, state, _, m = update(params, opt.init(params), batch, jax.random.PRNGKey(0), None)
        assert float(m["rolled_back"]) == 0.0
        # the next batch makes the stepped parameters non-finite (an input blown up to inf)
        bad = batch._replace(inputs=batch.inputs.at[0, 0, 0].set(jnp.inf))
        back, state2, _, m2 = update(stepped, state, bad, jax.random.PRNGKey(1), None)
        assert float(m2["rolled_back"]) == 1.0 and not np.isfinite(float(m2["loss"]))
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)                   # the parameters before the last step
        np.testing.assert_allclose(float(state2.damping), float(state.damping) * 10.0, rtol=1e-6)
        # and training goes on from there
        again, _, _, m3 = update(back, state2, batch, jax.random.PRNGKey(2), None)
        assert float(m3["rolled_back"]) == 0.0 and np.isfinite(float(m3["loss"]))
