"""Models: shapes, determinism, scan == Python loop, BPTT gradient == central finite differences."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.core.system import Batch, ModelSystem, StepInput, rollout
from sofo_lab.models import GRU, LSTM, RateRNN

I, O, N, T, B = 3, 2, 6, 7, 4


def make(name, **kw):
    if name == "rnn":
        return RateRNN(I, O, n_hidden=N, dt=1.0, tau=4.0, nonlinearity=kw.pop("nonlinearity", "tanh"), **kw)
    return {"gru": GRU, "lstm": LSTM}[name](I, O, n_hidden=N, **kw)


def batch(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return Batch(inputs=jax.random.normal(k1, (T, B, I)), targets=jax.random.normal(k2, (T, B, O)),
                 weights=jax.random.uniform(k3, (T, B)))


MODELS = ["rnn", "gru", "lstm"]


@pytest.mark.parametrize("name", MODELS)
def test_step_shapes_and_determinism(name):
    model = make(name, learn_init_state=True)
    params = model.init_params(jax.random.PRNGKey(0))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, params, model.init_params(jax.random.PRNGKey(0))))
    state = model.init_state(params, B)
    new_state, y = model.step(params, state, StepInput(jnp.ones((B, I))))
    assert y.shape == (B, O)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))
    _, y2 = model.step(params, state, StepInput(jnp.ones((B, I))))
    assert jnp.array_equal(y, y2)


@pytest.mark.parametrize("name", MODELS)
def test_scan_rollout_equals_python_loop(name):
    model = make(name)
    system = ModelSystem(model, MeanSquaredError())
    params = model.init_params(jax.random.PRNGKey(1))
    data = batch(jax.random.PRNGKey(2))
    state, ys, losses = rollout(system, params, model.init_state(params, B), data)
    s = model.init_state(params, B)
    for t in range(T):
        s, y = model.step(params, s, StepInput(data.inputs[t]))
        np.testing.assert_allclose(ys[t], y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses[t], system.loss.value(y, data.targets[t], data.weights[t]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(s)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_bptt_gradient_equals_central_finite_differences(name):
    with jax.enable_x64(True):
        model = make(name, learn_init_state=True, **({"nonlinearity": "softplus"} if name == "rnn" else {}))
        system = ModelSystem(model, MeanSquaredError())
        params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init_params(jax.random.PRNGKey(3)))
        # Non-zero learned initial state so its gradient is exercised too.
        params = {k: (v + 0.3 if k in ("z0", "h0", "c0") else v) for k, v in params.items()}
        data = jax.tree.map(lambda x: x.astype(jnp.float64), batch(jax.random.PRNGKey(4)))

        def loss(p):
            return rollout(system, p, model.init_state(p, B), data)[2].sum()

        grad = jax.grad(loss)(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        flat_grad = jax.flatten_util.ravel_pytree(grad)[0]
        f = jax.jit(lambda v: loss(unravel(v)))
        eps = 1e-6
        for i in range(flat.size):   # every coordinate: P is ~100-300 here
            e = jnp.zeros_like(flat).at[i].set(eps)
            fd = (f(flat + e) - f(flat - e)) / (2 * eps)
            assert abs(fd - flat_grad[i]) <= 1e-6 * max(1.0, abs(fd)), (i, fd, flat_grad[i])


def test_rnn_noise_enters_only_through_the_batch():
    model = make("rnn", noise_amplitude=0.5)
    params = model.init_params(jax.random.PRNGKey(0))
    noise = model.sample_noise(jax.random.PRNGKey(1), T, B)
    assert noise.shape == (T, B, N) and float(noise.min()) >= 0.0
    assert float(noise.min()) >= 0.5 - 1e-6 and float(noise.max()) <= 1.5 + 1e-6
    system = ModelSystem(model, MeanSquaredError())
    data = batch(jax.random.PRNGKey(2))
    state0 = jnp.ones((B, N))
    ys_a = rollout(system, params, state0, data._replace(noise=noise))[1]
    ys_b = rollout(system, params, state0, data._replace(noise=noise))[1]
    ys_c = rollout(system, params, state0, data._replace(noise=model.sample_noise(jax.random.PRNGKey(9), T, B)))[1]
    assert jnp.array_equal(ys_a, ys_b)
    assert not jnp.allclose(ys_a, ys_c)
    assert make("rnn").sample_noise(jax.random.PRNGKey(1), T, B) is None
