"""SOFO on noisy tasks (issue 19, docs/sofo.md "Noisy tasks"): the per-trial projected gradients
are each trial's reverse-mode gradient projected on V, and the noise-aware step is the λ and length
of Stein's unbiased estimate of the held-out decrease, written out here with numpy; without noise it
is the plain damped step. Float64 where tolerances need it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.models.rnn import RateRNN
from sofo_lab.optim import _forward
from sofo_lab.optim.sofo import sofo
from sofo_lab.optim.solves import NOISE_GRID, damped_solve, noise_aware_solve
from sofo_lab.core.system import Batch, ModelSystem, rollout

T, B, I, O, N, K = 6, 5, 2, 2, 4, 7


def _problem(seed=0, noise=0.0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    model = RateRNN(I, O, n_hidden=N, tau=2.0, nonlinearity="tanh", noise_amplitude=noise)
    system = ModelSystem(model, MeanSquaredError())
    params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init_params(keys[0]))
    eta = model.sample_noise(keys[3], T, B)
    batch = Batch(jax.random.normal(keys[1], (T, B, I), jnp.float64),
                  jax.random.normal(keys[2], (T, B, O), jnp.float64), jnp.full((T, B), 1.0 / T, jnp.float64),
                  None if eta is None else eta.astype(jnp.float64))
    return system, params, batch


def _loss(system, params, batch, weights=None):
    b = batch if weights is None else batch._replace(weights=weights)
    return rollout(system, params, system.init_state(params, B), b)[2].sum()


@pytest.mark.parametrize("fast,noise", [(True, 0.3), (False, 0.0)])
def test_per_trial_gradients_are_each_trials_reverse_mode_gradient(fast, noise):
    with jax.enable_x64(True):
        system, params, batch = _problem(noise=noise)
        tangents = _forward.sample_tangents(jax.random.PRNGKey(9), params, K)
        stepper = _forward.stepper_for(system, fast=fast)
        sketch = _forward.forward_sketch(system, params, tangents, batch, None, stepper=stepper, per_trial=True)
        plain = _forward.forward_sketch(system, params, tangents, batch, None, stepper=stepper)
        V = np.asarray(_forward.flat_tangents(tangents))
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        assert sketch.c_trials.shape == (B, K)
        for b in range(B):   # trial b's share of the loss: the other trials' weights set to 0
            w = batch.weights * (jnp.arange(B) == b)
            grad = jax.grad(lambda th: _loss(system, unravel(th), batch, w))(flat)
            np.testing.assert_allclose(sketch.c_trials[b], V @ np.asarray(grad), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(sketch.c, plain.c, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sketch.ggn, plain.ggn, rtol=1e-12, atol=1e-14)
        assert plain.c_trials is None


def test_noise_aware_step_picks_the_lambda_and_length_of_the_stein_estimate():
    """G̃ diagonal (its eigenbasis is the coordinate basis up to order and sign), per-trial gradients
    set by hand; the chosen λ, the length min(η, η*) and the step checked against the formula
    written out here with numpy over the same grid."""
    with jax.enable_x64(True):
        s = np.array([4.0, 1.0, 0.01])
        full = np.array([[1.0, 0.5, 0.6],      # B·C_b: trial b's gradient of the mean loss, × B
                         [1.0, 0.3, -0.4],
                         [1.0, 0.7, 0.6],
                         [1.0, 0.5, -0.4]])
        Bt = full.shape[0]
        c = full.mean(0)
        floor, lr = 1e-4, 0.3
        step = noise_aware_solve(jnp.diag(s), jnp.asarray(c), jnp.asarray(full / Bt), floor, lr)
        noise = full.var(0, ddof=1) / Bt
        best = None
        for f in NOISE_GRID:
            d = s + floor * f * s.max()
            signal = np.sum((c ** 2 - noise) / d)
            quad = np.sum(s * c ** 2 / d ** 2)
            length = min(max(signal / quad, 0.0), lr)          # min(η, η*)
            gain = length * signal - 0.5 * length ** 2 * quad
            if best is None or gain > best[0]:
                best = (gain, floor * f, length / lr, c / d)
        gain, lam, eta, z = best
        assert lam >= 100 * floor and gain > 0   # the noisy flat direction pushed λ up
        np.testing.assert_allclose(float(step.damping), lam, rtol=1e-12)
        np.testing.assert_allclose(float(step.scale), eta, rtol=1e-10)
        np.testing.assert_allclose(np.abs(np.asarray(step.z)), np.abs(eta * z), rtol=1e-10)
        # at the floor the noise outweighs the signal: the plain damped step is estimated to hurt
        d0 = s + floor * s.max()
        assert np.sum((c ** 2 - noise) / d0) < 0


def test_noise_aware_step_without_noise_is_the_damped_step():
    """Every trial with the same gradient: no noise, so the floor λ and the plain damped step."""
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(2)
        a = jax.random.normal(key, (K, K), jnp.float64)
        ggn = a @ a.T
        c = jax.random.normal(jax.random.PRNGKey(3), (K,), jnp.float64)
        step = noise_aware_solve(ggn, c, jnp.tile(c / 4, (4, 1)), 1e-3, 0.3)
        z, _ = damped_solve(ggn, c, 1e-3)
        assert float(step.damping) == pytest.approx(1e-3)
        assert float(step.scale) == 1.0
        np.testing.assert_allclose(step.z, z, rtol=1e-10)
        # pure noise (the trials' gradients cancel): no λ promises a decrease, no step
        flip = jnp.stack([c, -c, c, -c]) / 4
        none = noise_aware_solve(ggn, jnp.zeros(K, jnp.float64), flip, 1e-3, 0.3)
        assert float(none.scale) == 0.0 and float(jnp.abs(none.z).max()) == 0.0


def test_noise_aware_off_is_the_exact_step_and_on_changes_it():
    """``noise_aware`` defaults to off in the factory: the step is the damped Gauss-Newton step."""
    with jax.enable_x64(True):
        system, params, batch = _problem()
        a = sofo(system, optax.sgd(0.5), n_tangents=K, damping=1e-2)
        b = sofo(system, optax.sgd(0.5), n_tangents=K, damping=1e-2, noise_aware=True)
        key = jax.random.PRNGKey(1)
        pa = a.update(params, a.init(params), batch, key, None)[0]
        pb = b.update(params, b.init(params), batch, key, None)[0]
        tangents = _forward.sample_tangents(key, params, K)
        sk = _forward.forward_sketch(system, params, tangents, batch, None)
        eig = np.linalg.eigvalsh(np.asarray(sk.ggn))
        z = np.linalg.solve(np.asarray(sk.ggn) + 1e-2 * np.abs(eig).max() * np.eye(K), np.asarray(sk.c))
        flat = jax.flatten_util.ravel_pytree
        np.testing.assert_allclose(flat(pa)[0], flat(params)[0] - 0.5 * np.asarray(_forward.flat_tangents(tangents)).T @ z,
                                   rtol=1e-10, atol=1e-13)
        assert not np.allclose(flat(pa)[0], flat(pb)[0])   # the per-trial noise does change the step


def test_noise_aware_sofo_runs_jitted_in_float32():
    """The network in float32 and the solve in a local float64 scope, as under sofo-run."""
    system, params, batch = _problem(noise=0.3)
    batch = jax.tree.map(lambda x: x.astype(jnp.float32), batch)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    opt = sofo(system, optax.sgd(0.3), n_tangents=K, adaptive_damping=True, noise_aware=True)
    new, state, _, m = jax.jit(opt.update)(params, opt.init(params), batch, jax.random.PRNGKey(0), None)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))
    assert 0.0 <= float(m["sofo/step_scale"]) <= 1.0
    assert float(m["sofo/noise_damping"]) >= float(m["sofo/damping"]) * (1 - 1e-6)


def test_a_run_saved_before_noise_aware_existed_still_builds_its_optimizer():
    """A saved run's config has no ``optim.noise_aware``: ``from_config`` builds the exact method."""
    from sofo_lab.optim.sofo import from_config

    system, params, batch = _problem()
    opt = from_config(system, iterations=10, n_tangents=4, damping=1e-3,
                      orthonormalize=False, adaptive_damping=True, damping_range=[1e-6, 1.0], shard=False,
                      fast=True, lr=0.3, update="sgd")
    _, _, _, metrics = opt.update(params, opt.init(params), batch, jax.random.PRNGKey(0), None)
    assert "sofo/step_scale" not in metrics and "sofo/rho" in metrics
