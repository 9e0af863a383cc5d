"""UORO and RTRL: unbiasedness against exact RTRL, RTRL == BPTT, constant memory in the horizon."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.core.system import Batch, ModelSystem, rollout
from sofo_lab.models import GRU, LSTM, RateRNN
from sofo_lab.optim.bptt import bptt
from sofo_lab.optim.rtrl import rtrl
from sofo_lab.optim.uoro import uoro
from sofo_lab.train.profiling import compiled_memory_bytes

I, O, N, T, B = 2, 2, 3, 6, 1


def small_system(name="rnn", n_hidden=N):
    model = {"rnn": lambda: RateRNN(I, O, n_hidden=n_hidden, tau=2.0, nonlinearity="tanh", rec_gain=1.2),
             "gru": lambda: GRU(I, O, n_hidden=n_hidden), "lstm": lambda: LSTM(I, O, n_hidden=n_hidden)}[name]()
    return ModelSystem(model, MeanSquaredError())


def make_batch(key, n_steps=T, batch_size=B):
    k1, k2 = jax.random.split(key)
    return Batch(inputs=jax.random.normal(k1, (n_steps, batch_size, I)),
                 targets=jax.random.normal(k2, (n_steps, batch_size, O)),
                 weights=jnp.full((n_steps, batch_size), 1.0 / n_steps))


def exact_jacobian(system, params, batch):
    """∂s_T/∂θ by forward mode through the unrolled rollout (independent of RTRL's recursion)."""
    p_flat, unravel = ravel_pytree(params)

    def final_state(pf):
        p = unravel(pf)
        return ravel_pytree(rollout(system, p, system.init_state(p, batch.inputs.shape[1]), batch)[0])[0]

    return jax.jacfwd(final_state)(p_flat)


def bptt_grad(system, params, batch):
    def loss(p):
        return rollout(system, p, system.init_state(p, batch.inputs.shape[1]), batch)[2].sum()
    return ravel_pytree(jax.grad(loss)(params))[0]


@pytest.mark.parametrize("name", ["lstm"])   # state (c, h): signs and norms over both
def test_uoro_is_unbiased_for_the_jacobian_and_the_gradient(name):
    """E[s̃θ̃ᵀ] = ∂s_T/∂θ and E[Σ_t g̃_t] = ∇ BPTT, checked entrywise with z-scores over draws."""
    draws = 20000
    with jax.enable_x64(True):
        system = small_system(name)
        params = system.init_params(jax.random.PRNGKey(0))
        batch = make_batch(jax.random.PRNGKey(1))
        # No parameter update inside the horizon (update_every > T): θ is fixed, Σ g̃ is kept.
        opt = uoro(system, optax.sgd(1.0), batch_size=B, update_every=T + 1)
        state0 = opt.init(params)

        def chain(key):
            _, s, _, _ = opt.update(params, state0, batch, key, system.init_state(params, B))
            outer = jnp.outer(ravel_pytree(s.s_tilde)[0], ravel_pytree(s.theta_tilde)[0])
            return outer, ravel_pytree(s.grad_sum)[0]

        outers, grads = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.PRNGKey(2), draws))
        for samples, exact in ((outers, exact_jacobian(system, params, batch)),
                               (grads, bptt_grad(system, params, batch))):
            mean, stderr = samples.mean(0), samples.std(0) / np.sqrt(draws)
            z = np.abs(mean - exact) / (stderr + 1e-12)
            assert np.max(z) < 5.0, f"max z-score {np.max(z):.2f}"
            assert np.mean(z) < 1.2          # ≈ 0.8 for a standard normal
            # The comparison has power: the exact values are far outside the noise band.
            assert np.linalg.norm(mean - exact) < 0.1 * np.linalg.norm(exact)


def test_first_uoro_step_is_the_exact_one_step_gradient():
    """With s̃ = θ̃ = 0 the estimate is the exact one-step gradient δθ (paper's ordering)."""
    with jax.enable_x64(True):
        system = small_system("gru")
        params = system.init_params(jax.random.PRNGKey(3))
        batch = make_batch(jax.random.PRNGKey(4), n_steps=1, batch_size=3)
        opt = uoro(system, optax.sgd(1.0), batch_size=3, update_every=5)
        _, s, _, _ = jax.jit(opt.update)(params, opt.init(params), batch, jax.random.PRNGKey(0), None)
        np.testing.assert_allclose(ravel_pytree(s.grad_sum)[0], bptt_grad(system, params, batch), rtol=1e-12)
        assert float(jnp.linalg.norm(ravel_pytree(s.theta_tilde)[0])) > 0   # the estimate has started


@pytest.mark.parametrize("name", ["lstm"])
def test_rtrl_jacobian_and_gradient_equal_forward_mode_and_bptt(name):
    with jax.enable_x64(True):
        system = small_system(name)
        params = system.init_params(jax.random.PRNGKey(5))
        batch = make_batch(jax.random.PRNGKey(6), batch_size=2)
        opt = rtrl(system, optax.sgd(1.0), batch_size=2, update_every=T + 1)
        _, s, _, _ = jax.jit(opt.update)(params, opt.init(params), batch, jax.random.PRNGKey(0), None)
        np.testing.assert_allclose(s.jacobian, exact_jacobian(system, params, batch), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ravel_pytree(s.grad_sum)[0], bptt_grad(system, params, batch),
                                   rtol=1e-10, atol=1e-13)
        # update_every = T: the single SGD step is exactly full BPTT's.
        opt_t = rtrl(system, optax.sgd(0.1), batch_size=2, update_every=T)
        ref = bptt(system, optax.sgd(0.1))
        p_rtrl = jax.jit(opt_t.update)(params, opt_t.init(params), batch, jax.random.PRNGKey(0), None)[0]
        p_bptt = jax.jit(ref.update)(params, ref.init(params), batch, jax.random.PRNGKey(0), None)[0]
        np.testing.assert_allclose(ravel_pytree(p_rtrl)[0], ravel_pytree(p_bptt)[0], rtol=1e-12)


def test_episodic_trials_reset_the_estimate_and_streams_carry_it():
    system = small_system("rnn")
    params = system.init_params(jax.random.PRNGKey(7))
    batch = make_batch(jax.random.PRNGKey(8))
    opt = uoro(system, optax.sgd(1e-3), batch_size=B)
    opt = opt._replace(update=jax.jit(opt.update))
    s1 = opt.update(params, opt.init(params), batch, jax.random.PRNGKey(1), None)[1]
    # Episodic (carry None): the estimate restarts at 0, so the second batch ignores s1's vectors.
    a = opt.update(params, s1, batch, jax.random.PRNGKey(2), None)[1]
    b = opt.update(params, s1._replace(s_tilde=jax.tree.map(jnp.zeros_like, s1.s_tilde),
                                       theta_tilde=jax.tree.map(jnp.zeros_like, s1.theta_tilde)),
                   batch, jax.random.PRNGKey(2), None)[1]
    np.testing.assert_array_equal(ravel_pytree(a.theta_tilde)[0], ravel_pytree(b.theta_tilde)[0])
    # Stream (carry given): the vectors carry over and change the result.
    carry = system.init_state(params, B)
    c = opt.update(params, s1, batch, jax.random.PRNGKey(2), carry)[1]
    assert not np.allclose(ravel_pytree(c.theta_tilde)[0], ravel_pytree(a.theta_tilde)[0])


def _temp_bytes(opt, system, n_steps, stream):
    params = system.init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), n_steps=n_steps, batch_size=4)
    spec = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
    carry = system.init_state(params, 4) if stream else None
    fn = lambda p, s, bt, c: opt.update(p, s, bt, jax.random.PRNGKey(0), c)
    compiled = jax.jit(fn).lower(spec(params), spec(opt.init(params)), spec(batch), spec(carry)).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled_memory_bytes(compiled)


@pytest.mark.parametrize("name", ["rnn"])
def test_uoro_step_memory_does_not_grow_with_the_horizon(name):
    system = small_system(name, n_hidden=16)
    opt = uoro(system, optax.adam(1e-3), batch_size=4)
    short, _ = _temp_bytes(opt, system, 16, True)
    long, total_long = _temp_bytes(opt, system, 1024, True)
    assert long <= short + 1024, (short, long)
    # The same measurement sees BPTT's residuals grow with T (so the check can fail).
    ref = bptt(system, optax.adam(1e-3))
    b_short, _ = _temp_bytes(ref, system, 16, True)
    b_long, _ = _temp_bytes(ref, system, 256, True)
    assert b_long > 8 * b_short
    assert total_long is not None and total_long > 0


@pytest.mark.parametrize("optim", ["uoro", "rtrl"])
def test_the_batch_size_comes_from_the_run_and_old_runs_with_optim_batch_size_still_load(optim, tmp_path):
    """The build passes the run's batch_size (conf/optim/uoro.yaml, rtrl.yaml hold none); a run saved
    when the YAML held ``batch_size: ${batch_size}`` still loads (the key accepted and ignored), and a
    batch size under ``optim`` that differs from the run's is refused in one line."""
    from omegaconf import OmegaConf, open_dict

    import sofo_lab
    from sofo_lab.core.errors import ConfigError
    from sofo_lab.train import checkpoint
    from sofo_lab.train.assemble import build
    from tests.conftest import TINY, compose_config

    cfg = compose_config([*TINY, "task=anbn", "model=gru", f"optim={optim}", "batch_size=3"])
    assert "batch_size" not in cfg.optim
    setup = build(cfg)
    params = setup.system.init_params(jax.random.PRNGKey(0))
    state = setup.optimizer.init(params)
    assert (state.s_tilde.shape if optim == "uoro" else state.jacobian.shape)[0] == 3 * (1 if optim == "uoro" else 8)

    with open_dict(cfg):
        cfg.optim.batch_size = "${batch_size}"          # as conf/optim/<optim>.yaml had it
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    checkpoint.save_params_npz(tmp_path / "checkpoints" / checkpoint.PARAMS_NPZ, params)
    run = sofo_lab.load_run(tmp_path)
    assert run.config.batch_size == 3 and run.iteration is None
    assert jax.tree.structure(run.params) == jax.tree.structure(params)

    with open_dict(cfg):
        cfg.optim.batch_size = 5
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert str(err.value).startswith("optim.batch_size=5: the batch size is the run's")
