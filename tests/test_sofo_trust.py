"""SOFO's guards for closed loops that blow up on some trials (docs/sofo.md): the trust region
(``optim.trust_radius``: the damped Gauss-Newton step of the smallest grid λ whose direction ``V z``
fits in the radius, checked against numpy's solve in float64; a radius that never binds gives the
plain damped step) and robust trial weights (``optim.robust_trials``: the plain step of the batch
reweighted by hand)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.core.system import Batch, ModelSystem
from sofo_lab.models.rnn import RateRNN
from sofo_lab.optim.sofo import _primal_loss, robust_weights, sofo, trial_losses
from sofo_lab.optim.solves import TRUST_GRID, damped_solve, tangent_gram, trust_solve

K, P = 6, 40


def _subspace(seed=0):
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((K, P))
    V /= np.linalg.norm(V, axis=1, keepdims=True)                 # SOFO's unit-norm, non-orthogonal lanes
    A = rng.standard_normal((K, K)) * np.logspace(0, -3, K)        # condition number ~1e6
    return V, A @ A.T, rng.standard_normal(K)


def _norm(V, z):
    return np.linalg.norm(V.T @ z)


@pytest.mark.parametrize("radius", [0.05, 0.5, 5.0])
def test_the_step_is_the_damped_step_of_the_smallest_grid_lambda_that_fits_the_radius(radius):
    V, G, c = _subspace()
    damping = 1e-6
    with jax.enable_x64(True):
        gram = tangent_gram({"w": jnp.asarray(V).reshape(K, 8, 5), "b": jnp.zeros((K, 3))})
        np.testing.assert_allclose(gram, V @ V.T, rtol=1e-12)
        step = trust_solve(jnp.asarray(G), jnp.asarray(c), gram, damping, radius)
    s_max = np.linalg.eigvalsh(G).max()
    lam = float(step.damping)
    grid = damping * np.asarray(TRUST_GRID)
    i = int(np.argmin(abs(grid - lam)))
    assert np.isclose(grid[i], lam, rtol=1e-12)
    expected = np.linalg.solve(G + lam * s_max * np.eye(K), c)
    np.testing.assert_allclose(step.z, expected, rtol=1e-8)
    assert _norm(V, expected) <= radius * (1 + 1e-12)
    if i > 0:   # the grid's previous λ would have stepped outside the radius
        assert _norm(V, np.linalg.solve(G + grid[i - 1] * s_max * np.eye(K), c)) > radius
    assert i > 0 or _norm(V, np.linalg.solve(G + damping * s_max * np.eye(K), c)) <= radius


def test_a_radius_that_never_binds_gives_the_plain_damped_step_and_a_tiny_one_is_scaled_to_it():
    V, G, c = _subspace(1)
    with jax.enable_x64(True):
        gram = jnp.asarray(V @ V.T)
        wide = trust_solve(jnp.asarray(G), jnp.asarray(c), gram, 1e-3, 1e9)
        plain, _ = damped_solve(jnp.asarray(G), jnp.asarray(c), 1e-3)
        tiny = trust_solve(jnp.asarray(G), jnp.asarray(c), gram, 1e-3, 1e-12)
    np.testing.assert_allclose(wide.z, plain, rtol=1e-12)
    assert float(wide.damping) == pytest.approx(1e-3)
    assert float(tiny.damping) == pytest.approx(1e-3 * TRUST_GRID[-1])
    assert _norm(V, np.asarray(tiny.z)) == pytest.approx(1e-12, rel=1e-9)


def _network_problem():
    model = RateRNN(2, 2, n_hidden=8, tau=2.0, nonlinearity="tanh")
    system = ModelSystem(model, MeanSquaredError())
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = model.init_params(keys[0])
    T, B = 10, 16
    batch = Batch(jax.random.normal(keys[1], (T, B, 2)), 3.0 * jax.random.normal(keys[2], (T, B, 2)),
                  jnp.full((T, B), 1.0 / T), None)
    return system, params, batch


@pytest.mark.parametrize("radius", [1e-3, 1e3])
def test_sofo_steps_no_longer_than_lr_times_the_radius_and_equals_plain_sofo_when_it_never_binds(radius):
    system, params, batch = _network_problem()
    lr = 0.5
    trust = sofo(system, optax.sgd(lr), n_tangents=8, damping=1e-6, trust_radius=radius)
    plain = sofo(system, optax.sgd(lr), n_tangents=8, damping=1e-6)
    key = jax.random.PRNGKey(3)
    new, _, _, metrics = trust.update(params, trust.init(params), batch, key, None)
    ref, _, _, ref_metrics = plain.update(params, plain.init(params), batch, key, None)
    assert float(metrics["update_norm"]) <= lr * radius * (1 + 1e-5)
    if radius > 1:
        assert float(metrics["sofo/trust_damping"]) == pytest.approx(1e-6)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    else:
        assert float(metrics["sofo/trust_damping"]) > 1e-6
        assert float(ref_metrics["update_norm"]) > lr * radius


def test_robust_weights_cap_a_trial_at_cap_times_the_median_and_zero_a_non_finite_one():
    losses = jnp.asarray([1.0, 2.0, 3.0, 4.0, 100.0, jnp.inf])
    w = np.asarray(robust_weights(losses, 10.0))           # median of the finite ones: 3
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0, 1.0, 30.0 / 100.0, 0.0])


def test_trial_losses_sum_to_the_loss_and_a_reweighted_batch_scales_each_trial():
    system, params, batch = _network_problem()
    losses = trial_losses(system, params, batch, None)
    assert losses.shape == (16,)
    np.testing.assert_allclose(losses.sum(), _primal_loss(system, params, batch, None), rtol=1e-5)
    scale = jnp.arange(16.0) / 7
    np.testing.assert_allclose(trial_losses(system, params, batch.reweighted(scale), None), scale * losses, rtol=1e-5)
    for b in (1, 5):   # trial b alone: the other trials' weights set to 0 by hand
        alone = batch._replace(weights=batch.weights * (jnp.arange(16) == b))
        np.testing.assert_allclose(losses[b], _primal_loss(system, params, alone, None), rtol=1e-5)


def test_robust_sofo_takes_the_plain_step_of_the_batch_reweighted_by_hand():
    """A trial with 100x the others' error: robust SOFO equals plain SOFO on the batch whose weights
    were scaled by ``robust_weights`` by hand, reports the task's loss, and a batch without an
    outlier gives the plain step."""
    system, params, batch = _network_problem()
    targets = batch.targets.at[:, 3].multiply(100.0)
    loud = batch._replace(targets=targets)
    key = jax.random.PRNGKey(4)
    robust = sofo(system, optax.sgd(0.5), n_tangents=8, damping=1e-3, robust_trials=10.0)
    plain = sofo(system, optax.sgd(0.5), n_tangents=8, damping=1e-3)
    weights = robust_weights(trial_losses(system, params, loud, None), 10.0)
    assert float(weights[3]) < 0.1 and float(jnp.min(jnp.delete(weights, 3))) == 1.0
    new, _, _, metrics = robust.update(params, robust.init(params), loud, key, None)
    ref, _, _, ref_metrics = plain.update(params, plain.init(params), loud.reweighted(weights), key, None)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(metrics["sofo/robust_loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(_primal_loss(system, params, loud, None)), rel=1e-5)
    assert float(metrics["sofo/downweighted"]) == pytest.approx(1 / 16)
    quiet, _, _, _ = robust.update(params, robust.init(params), batch, key, None)
    same, _, _, _ = plain.update(params, plain.init(params), batch, key, None)
    if float(jnp.max(trial_losses(system, params, batch, None))) < 10 * float(jnp.median(
            trial_losses(system, params, batch, None))):
        for a, b in zip(jax.tree.leaves(quiet), jax.tree.leaves(same)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_robust_levenberg_marquardt_accepts_a_step_only_if_the_tasks_loss_falls_too():
    """The adaptive step is the fixed-λ step when both the reweighted and the task's loss of the batch
    fall, else no step; among the keys below the reweighted loss falls while the task's rises."""
    system, params, batch = _network_problem()
    loud = batch._replace(targets=batch.targets.at[:, 3].multiply(30.0))
    weights = robust_weights(trial_losses(system, params, loud, None), 3.0)
    kw = dict(n_tangents=8, damping=1e-3, robust_trials=3.0)
    adaptive = sofo(system, optax.sgd(1.0), adaptive_damping=True, damping_range=(1e-3, 1.0), **kw)
    fixed = sofo(system, optax.sgd(1.0), **kw)
    seen = set()
    for k in range(8):
        key = jax.random.PRNGKey(k)
        new, _, _, metrics = adaptive.update(params, adaptive.init(params), loud, key, None)
        candidate, _, _, _ = fixed.update(params, fixed.init(params), loud, key, None)
        task = [float(_primal_loss(system, p, loud, None)) for p in (params, candidate)]
        reweighted = [float(_primal_loss(system, p, loud.reweighted(weights), None)) for p in (params, candidate)]
        falls = (reweighted[1] <= reweighted[0], task[1] <= task[0])
        seen.add(falls)
        assert float(metrics["sofo/accepted"]) == float(all(falls)), (k, task, reweighted)
        for a, b, c in zip(jax.tree.leaves(new), jax.tree.leaves(candidate), jax.tree.leaves(params)):
            np.testing.assert_allclose(a, b if all(falls) else c, rtol=1e-5, atol=1e-7)
    assert (True, False) in seen   # a step the task's loss refuses
