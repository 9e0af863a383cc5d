"""sofo_lab.analysis against facts, not against itself (docs/analysis.md):

- a linear network, whose fixed point ``(I − A)⁻¹ (B u + c)`` and Jacobian ``A`` are known in closed
  form (a state that is a pytree, two inputs, an unstable case);
- a hand-built two-unit tanh network with two attractors and a saddle between them, at places and
  with eigenvalues computed here by hand;
- the GRU and the LSTM: every point found is a fixed point of the model's own ``step``, and its
  Jacobian matches finite differences of that step;
- condition averages and PCA against numpy's loops and eigendecomposition;
- the trained networks of scripts/bench_analysis.py (docs/results/analysis_runs/): the 3-bit flip-flop
  trained by sofo-run (100 % of held-out bits), whose 8 attractors are found at the corners of the
  output cube with 19 saddles between them (12 on the edges with one unstable direction, 6 on the
  faces with two, one at the centre with three: Sussillo & Barak's figure); the reach network
  trained by the default ``sofo-run task=reach``, with one stable delay-period fixed point per target,
  around a ring in the order of the targets.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sofo_lab
from sofo_lab.analysis.fixed_points import classify, merge

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs" / "results" / "analysis_runs"


# --- closed forms ----------------------------------------------------------------------------
def test_linear_network_fixed_point_and_jacobian_in_closed_form():
    """x' = A x + B u + c, with the state split into a pytree (a, b): x* = (I − A)⁻¹ (B u + c), ∂F/∂x = A."""
    rng = np.random.default_rng(0)
    D, I = 5, 2
    Q = rng.normal(size=(D, D)) + 3 * np.eye(D)                    # not orthogonal: A is not normal
    A = Q @ np.diag([0.8, 0.5, -0.3, 0.2, -0.7]) @ np.linalg.inv(Q)
    B, c = rng.normal(size=(I, D)), rng.normal(size=D)
    params = {"A": jnp.asarray(A, jnp.float32), "B": jnp.asarray(B, jnp.float32), "c": jnp.asarray(c, jnp.float32)}

    def step(p, state, u):                        # state = (a [S, 2], b [S, 3])
        x = jnp.concatenate(state, axis=-1)
        x = x @ p["A"].T + u @ p["B"] + p["c"]
        return (x[:, :2], x[:, 2:]), x

    inputs = jnp.asarray([[0.0, 0.0], [1.0, -2.0]], jnp.float32)
    starts = (jnp.asarray(rng.normal(size=(16, 2)), jnp.float32), jnp.asarray(rng.normal(size=(16, 3)), jnp.float32))
    fp = sofo_lab.fixed_points(step, params, inputs, starts, n_steps=200)

    assert list(fp.condition) == [0, 1], fp.counts()          # one point per input, duplicates merged
    for k, u in enumerate(np.asarray(inputs)):
        expected = np.linalg.solve(np.eye(D) - A, B.T @ u + c)
        np.testing.assert_allclose(fp.flat[k], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.concatenate([fp.states[0][k], fp.states[1][k]]), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fp.jacobians[k], A, atol=1e-5)
        np.testing.assert_allclose(fp.eigenvalues[k].real, [0.8, -0.7, 0.5, -0.3, 0.2], atol=1e-5)
    assert list(fp.labels) == ["stable", "stable"] and fp.q.max() < 1e-10

    # the same map with one eigenvalue outside the unit circle: a saddle, with one unstable direction
    A2 = Q @ np.diag([1.5, 0.5, -0.3, 0.2, -0.7]) @ np.linalg.inv(Q)
    fp2 = sofo_lab.fixed_points(step, {**params, "A": jnp.asarray(A2, jnp.float32)}, inputs[:1], starts, n_steps=200)
    np.testing.assert_allclose(fp2.flat[0], np.linalg.solve(np.eye(D) - A2, c), rtol=1e-4, atol=1e-4)
    assert list(fp2.labels) == ["saddle"] and list(fp2.n_unstable) == [1]
    np.testing.assert_allclose(abs(fp2.eigenvalues[0, 0]), 1.5, rtol=1e-5)


def test_two_unit_network_two_attractors_and_a_saddle():
    """x' = (1 − α) x + α W tanh(x), W = [[2, 0.3], [0, 0.5]]: x2 = 0 and x1 = 2 tanh x1, so the fixed
    points are (0, 0) and (±s, 0) with s = 2 tanh s. The Jacobian (1 − α) I + α W diag(sech² x) is
    triangular: its eigenvalues are 1 − α + 2α sech² x1 and 1 − α + α/2. At the origin the first is
    1 + α > 1 (a saddle); at ±s it is < 1 (attractors)."""
    alpha = 0.5
    W = jnp.asarray([[2.0, 0.3], [0.0, 0.5]])

    def step(p, x, u):
        x = (1 - alpha) * x + alpha * (jnp.tanh(x) @ p.T + u)
        return x, x

    lo, hi = 1.0, 3.0                                  # s = 2 tanh s by bisection, no JAX involved
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 2 * np.tanh(mid) else (lo, mid)
    s = (lo + hi) / 2
    starts = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    fp = sofo_lab.fixed_points(step, W, jnp.zeros((1, 2)), starts, n_steps=500)

    assert fp.counts() == {"stable": 2, "saddle": 1, "unstable": 0, "slow": 0}
    order = np.argsort(fp.flat[:, 0])
    np.testing.assert_allclose(fp.flat[order], [[-s, 0.0], [0.0, 0.0], [s, 0.0]], atol=1e-5)
    assert list(fp.labels[order]) == ["stable", "saddle", "stable"]
    sech2 = 1 - np.tanh(s) ** 2
    for i, x1 in zip(order, (-s, 0.0, s)):
        lam = sorted([1 - alpha + 2 * alpha * (1 - np.tanh(x1) ** 2), 1 - alpha + alpha / 2], reverse=True)
        np.testing.assert_allclose(fp.eigenvalues[i].real, lam, atol=1e-5)
        np.testing.assert_allclose(fp.eigenvalues[i].imag, 0.0, atol=1e-7)
    saddle = order[1]
    assert fp.n_unstable[saddle] == 1 and fp.eigenvalues[saddle, 0].real == pytest.approx(1 + alpha, abs=1e-5)
    for attractor in order[[0, 2]]:
        assert fp.eigenvalues[attractor, 1].real == pytest.approx(1 - alpha + 2 * alpha * sech2, abs=1e-5)
        assert np.all(np.abs(fp.eigenvalues[attractor]) < 1)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_gated_models_points_are_fixed_points_of_their_own_step(name):
    from sofo_lab.core.system import StepInput
    from sofo_lab.models import GRU, LSTM

    model = {"gru": GRU, "lstm": LSTM}[name](n_inputs=2, n_outputs=1, n_hidden=5)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(3))
    params = jax.tree.map(lambda a: 2.0 * a, params)          # stronger recurrence: more than one point
    starts = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(4), (16, *a.shape[1:])),
                          model.init_state(params, 1))
    u = jnp.asarray([[0.5, -0.5]])
    fp = sofo_lab.fixed_points(model, params, u, starts, n_steps=100)
    assert len(fp.q) >= 1 and set(fp.labels) <= {"stable", "saddle", "unstable", "slow"}

    @jax.jit
    def flat_step(x):                                          # the model's own step on a batch of flat states
        N = model.n_hidden
        state = (x[:, :N], x[:, N:]) if name == "lstm" else x   # the LSTM's (c, h)
        new, _ = model.step(params, state, StepInput(jnp.broadcast_to(u, (x.shape[0], 2))))
        return jnp.concatenate(jax.tree.leaves(new), axis=-1)

    fixed = fp.labels != "slow"
    assert np.any(fixed)
    np.testing.assert_allclose(flat_step(fp.flat[fixed]), fp.flat[fixed], atol=1e-5)
    eps, x = 1e-3, fp.flat[np.flatnonzero(fixed)[0]]
    D = len(x)
    out = np.asarray(flat_step(np.concatenate([x + eps * np.eye(D), x - eps * np.eye(D)])))
    fd = (out[:D] - out[D:]).T / (2 * eps)                     # central differences, column j = ∂F/∂x_j
    np.testing.assert_allclose(fp.jacobians[np.flatnonzero(fixed)[0]], fd, atol=2e-3)


def test_merge_and_classify():
    flat = np.asarray([[0.0, 0.0], [1e-4, 0.0], [1.0, 1.0], [1.0, 1.0005]])
    q = np.asarray([1e-12, 1e-14, 3e-12, 1e-13])
    assert sorted(merge(flat, q, 1e-3)) == [1, 3]               # the lowest q of each pair stands for it
    eig = np.asarray([[0.5, 0.2j], [1.2, 0.5], [1.1, -1.3], [0.3, 0.1]])
    n_unstable, labels = classify(eig, np.asarray([0, 0, 0, 1e-7]), fixed_tol=1e-10)
    assert list(n_unstable) == [0, 1, 2, 0] and list(labels) == ["stable", "saddle", "unstable", "slow"]


# --- population analyses ---------------------------------------------------------------------------
def test_condition_average_and_pca_against_numpy():
    rng = np.random.default_rng(1)
    T, B, N = 7, 12, 4
    traj = rng.normal(size=(T, B, N)).astype(np.float32)
    labels = rng.choice([10.0, -5.0, 3.0], size=B)
    avg = sofo_lab.condition_average(traj, labels)
    assert list(np.asarray(avg.conditions)) == [-5.0, 3.0, 10.0]
    for c, lab in enumerate([-5.0, 3.0, 10.0]):
        np.testing.assert_allclose(avg.mean[:, c], traj[:, labels == lab].mean(axis=1), atol=1e-6)
        assert int(avg.counts[c]) == int(np.sum(labels == lab))
    index = np.searchsorted([-5.0, 3.0, 10.0], labels)
    jitted = jax.jit(sofo_lab.condition_average, static_argnums=2)(traj, index, 3)
    np.testing.assert_allclose(jitted.mean, avg.mean, atol=1e-6)

    data = rng.normal(size=(200, N)) @ np.diag([3.0, 2.0, 1.0, 0.1]) @ np.linalg.qr(rng.normal(size=(N, N)))[0]
    p = jax.jit(sofo_lab.pca, static_argnums=1)(jnp.asarray(data, jnp.float32), 2)
    cov = np.cov(data.T)
    w, v = np.linalg.eigh(cov)
    np.testing.assert_allclose(p.explained_variance, w[::-1][:2], rtol=1e-4)
    np.testing.assert_allclose(p.explained_variance_ratio, w[::-1][:2] / w.sum(), rtol=1e-4)
    np.testing.assert_allclose(np.abs(np.asarray(p.components) @ v[:, ::-1][:, :2]), np.eye(2), atol=1e-4)
    z = sofo_lab.project(p, data)
    np.testing.assert_allclose(np.var(np.asarray(z), axis=0, ddof=1), w[::-1][:2], rtol=1e-4)


# --- trained networks (scripts/bench_analysis.py) ----------------------------------------------------
@pytest.fixture(scope="module")
def flipflop_run(tmp_path_factory):
    """The flip-flop trained by sofo-run (docs/results/analysis_runs/flipflop), with the docs' task module."""
    from tests.test_custom_task import files

    root = tmp_path_factory.mktemp("flipflop")
    for name, body in files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    (root / "mylab" / "__init__.py").write_text("")
    shutil.copytree(RUNS / "flipflop", root / "run")
    sys.path.append(str(root))
    yield root
    sys.path.remove(str(root))
    for mod in [m for m in sys.modules if m == "mylab" or m.startswith("mylab.")]:
        del sys.modules[mod]


def test_flipflop_memories_are_attractors_at_the_cube_corners(flipflop_run):
    run = sofo_lab.load_run(flipflop_run / "run")
    batch = run.task.sample(jax.random.PRNGKey(7), 256)
    traj = sofo_lab.simulate(run.system, run.params, batch)
    ys, targets = np.asarray(traj.outputs), np.asarray(batch.targets)
    held = targets != 0
    assert np.mean(np.sign(ys[held]) == targets[held]) >= 0.99        # the record: 100 % on 1024 trials

    starts = sofo_lab.starting_states(traj.states, 256, jax.random.PRNGKey(8), noise=0.1)
    fp = sofo_lab.fixed_points(run.model, run.params, jnp.zeros((1, 3)), starts, n_steps=400)
    readout = np.asarray(run.model.phi(fp.flat) @ run.params["W_out"] + run.params["b_out"])   # [M, 3]
    stable = fp.labels == "stable"
    corners = {tuple(c) for c in np.sign(readout[stable]).astype(int)}
    assert stable.sum() == 8 and len(corners) == 8, fp.counts()         # every corner, once
    assert np.max(np.abs(np.abs(readout[stable]) - 1)) < 0.1
    saddles = fp.labels == "saddle"
    zeros = np.sum(np.abs(readout[saddles]) < 0.1, axis=1)               # coordinates between two corners
    assert np.all(np.abs(readout[saddles])[np.abs(readout[saddles]) >= 0.1] > 0.9)
    assert list(zeros) == list(fp.n_unstable[saddles])                   # an edge: 1 unstable direction, ...
    assert sorted(np.bincount(zeros, minlength=4)[1:]) == [1, 6, 12]     # 12 edges, 6 faces, the centre
    assert fp.counts()["unstable"] == 0 and fp.q[fp.labels != "slow"].max() < 1e-10


def test_reach_one_delay_attractor_per_target_in_their_order(tmp_path):
    from sofo_lab.analysis.analyze import analyze_run

    shutil.copytree(RUNS / "reach", tmp_path / "run")
    result = analyze_run(tmp_path / "run", n_conditions=8, n_repeats=2, n_starts=32, n_steps=300,
                         progress=False, plots=False)
    delay = result.summary["delay"]
    assert delay["stable_per_target"] == [1] * 8, result.summary["counts"]
    assert delay["ordered_as_targets"], delay["ring_order"]
    for row in result.summary["inputs"]:                        # each target's point is nearest its own delay state
        assert row["stable"] == 1 and row["unstable"] == 0
    assert [r["nearest_condition"] for r in result.summary["inputs"]] == [[c] for c in range(8)]
    assert result.summary["closed_loop"].startswith("network alone")
