"""SOFO and FGD: exact against reverse mode and dense Jacobians, memory constant in T, sharding."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, compose_config
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import MeanSquaredError, SoftmaxCrossEntropy
from sofo_lab.core.system import Batch, ModelSystem, StepInput, initial_state, rollout
from sofo_lab.models import GRU, LSTM, RateRNN
from sofo_lab.optim import _forward
from sofo_lab.optim.bptt import bptt
from sofo_lab.optim.fgd import fgd
from sofo_lab.optim.sofo import sofo
from sofo_lab.train.assemble import build

I, O, N, T, B, K = 2, 3, 5, 6, 3, 7
ROOT = Path(__file__).resolve().parents[1]


class ToyPlantSystem:
    """A network driving a damped point mass: state (net, pos [B,2], vel [B,2]); y = (pos, vel).

    The network sees the task input and the plant's position; its readout (2 of O channels) is a
    force. A stand-in for the arm: a closed loop trained through a differentiable plant.
    """

    def __init__(self, loss):
        self.model = RateRNN(I + 2, 2, n_hidden=N, nonlinearity="tanh", learn_init_state=True)
        self.loss, self.dt = loss, 0.1

    def init_params(self, key):
        return {**self.model.init_params(key), "gain": jnp.ones(2)}

    def init_state(self, params, batch_size):
        zeros = jnp.zeros((batch_size, 2), params["W_rec"].dtype)
        return (self.model.init_state(params, batch_size), zeros + 0.1, zeros)

    def step(self, params, state, x):
        net, pos, vel = state
        net, force = self.model.step(params, net, StepInput(jnp.concatenate([x.u, pos], axis=1), x.noise))
        vel = vel + self.dt * (params["gain"] * jnp.tanh(force) - 0.5 * vel)
        pos = pos + self.dt * vel
        return (net, pos, vel), jnp.concatenate([pos, vel[:, :1]], axis=1)

    def sample_noise(self, key, n_steps, batch_size):
        return None


def make_system(name, loss=MeanSquaredError()):
    if name == "plant":
        return ToyPlantSystem(loss)
    if name.startswith("rnn"):   # "rnn": private noise (carry ż, q); "rnn-stream": none (fused GEMM)
        model = RateRNN(I, O, n_hidden=N, nonlinearity="softplus", learn_init_state=True,
                        noise_amplitude=0.0 if name.endswith("stream") else 0.4)
    else:
        model = {"gru": GRU, "lstm": LSTM}[name](I, O, n_hidden=N, learn_init_state=True)
    return ModelSystem(model, loss)


def f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_problem(system, seed=0, xent=False, weights_per_output=False):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    params = system.init_params(k[0])
    params = {n: (v + 0.2 if n in ("z0", "h0", "c0") else v) for n, v in params.items()}
    targets = jax.random.normal(k[2], (T, B, O))
    if xent:
        targets = jax.nn.one_hot(jax.random.randint(k[2], (T, B), 0, O), O)
    shape = (T, B, O) if weights_per_output else (T, B)
    batch = Batch(jax.random.normal(k[1], (T, B, I)), targets, jax.random.uniform(k[3], shape),
                  noise=system.sample_noise(k[4], T, B))
    return f64(params), f64(batch)


def loss_and_final(system, params, batch, carry=None):
    final, ys, losses = rollout(system, params, initial_state(system, params, carry, B), batch)
    return losses.sum(), (final, ys)


def flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "plant", "rnn-stream"])
def test_projected_gradient_equals_reverse_mode(name):
    """C = Vᵀ∇L (and the loss, and the final state) for every model, a plant, and a stream."""
    with jax.enable_x64(True):
        system = make_system(name)
        params, batch = make_problem(system)
        carry = None
        if name.endswith("stream"):
            carry = f64(jax.tree.map(lambda s: s + 0.3, system.init_state(params, B)))
        tangents = _forward.sample_tangents(jax.random.PRNGKey(7), params, K)
        stepper = _forward.stepper_for(system)
        expected_type = _forward.RateRNNStepper if name.startswith("rnn") else _forward.GenericStepper
        assert type(stepper) is expected_type

        @jax.jit
        def both(p, v, b, c):          # one compilation for the sketch and the reverse-mode gradient
            sketch = _forward.forward_sketch(system, p, v, b, c, stepper=stepper)
            return sketch, jax.value_and_grad(lambda q: loss_and_final(system, q, b, c), has_aux=True)(p)

        sketch, ((loss, (final, _)), grad) = both(params, tangents, batch, carry)
        np.testing.assert_allclose(sketch.c, _forward.flat_tangents(tangents) @ flat(grad), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sketch.loss, loss, rtol=1e-12)
        for a, b in zip(jax.tree.leaves(sketch.final_state), jax.tree.leaves(final)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        assert sketch.c.dtype == jnp.float64 and sketch.ggn.dtype == jnp.float64


def dense_ggn(system, params, batch):
    """Σ_t J_tᵀ H_t J_t from the dense Jacobian of every output and jax.hessian of each step's loss."""
    vec, unravel = jax.flatten_util.ravel_pytree(params)

    def outputs(v):
        p = unravel(v)
        return rollout(system, p, system.init_state(p, B), batch)[1]

    ys = outputs(vec)
    jac = jax.jacfwd(outputs)(vec)                                           # [T, B, O, P]
    hess = jax.vmap(jax.hessian(system.loss.value))(ys, batch.targets, batch.weights)   # [T, B, O, B, O]
    return jnp.einsum("tbop,tbocq,tcqr->pr", jac, hess, jac), vec


@pytest.mark.parametrize("loss,name", [("mse", "rnn"), ("xent", "gru")])
def test_ggn_sketch_equals_dense_jacobian(loss, name):
    with jax.enable_x64(True):
        system = make_system(name, MeanSquaredError() if loss == "mse" else SoftmaxCrossEntropy())
        params, batch = make_problem(system, seed=1, xent=loss == "xent", weights_per_output=loss == "mse")
        tangents = _forward.sample_tangents(jax.random.PRNGKey(3), params, K)
        sketch, (ggn, _) = jax.jit(lambda p, v, b: (_forward.forward_sketch(system, p, v, b, None),
                                                    dense_ggn(system, p, b)))(params, tangents, batch)
        vf = _forward.flat_tangents(tangents)
        np.testing.assert_allclose(sketch.ggn, vf @ ggn @ vf.T, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(sketch.ggn, sketch.ggn.T)


def test_full_orthonormal_basis_gives_the_exact_damped_gauss_newton_step():
    with jax.enable_x64(True):
        system = ModelSystem(RateRNN(1, 1, n_hidden=3, nonlinearity="tanh"), MeanSquaredError())
        params = f64(system.init_params(jax.random.PRNGKey(0)))
        batch = f64(Batch(jax.random.normal(jax.random.PRNGKey(1), (T, B, 1)),
                          jax.random.normal(jax.random.PRNGKey(2), (T, B, 1)), jnp.full((T, B), 1.0 / T)))
        P = _forward.n_params(params)
        lr, damping = 0.7, 1e-3
        opt = sofo(system, optax.sgd(lr), n_tangents=P, damping=damping, orthonormalize=True)

        @jax.jit
        def everything(p, b):           # one compilation: the SOFO step, the dense GGN, the gradient
            new, _, _, metrics = opt.update(p, opt.init(p), b, jax.random.PRNGKey(5), None)
            grad = jax.grad(lambda q: loss_and_final(system, q, b)[0])(p)
            return new, metrics, dense_ggn(system, p, b), grad

        new, metrics, (ggn, vec), grad = everything(params, batch)
        grad = flat(grad)
        s_max = jnp.linalg.eigvalsh(ggn).max()
        expected = vec - lr * jnp.linalg.solve(ggn + damping * s_max * jnp.eye(P), grad)
        np.testing.assert_allclose(flat(new), expected, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(metrics["sofo/top_eigenvalue"], s_max, rtol=1e-5)


def test_fgd_is_unbiased():
    """The mean of FGD's step over many tangent keys approaches −lr·∇L; without P/K it would not."""
    with jax.enable_x64(True):
        system = make_system("rnn")
        params, batch = make_problem(system, seed=2)
        opt = fgd(system, optax.sgd(1.0), n_tangents=2)
        state = opt.init(params)
        keys = jax.random.split(jax.random.PRNGKey(11), 20000)

        @jax.jit
        def steps_and_grad(p, b):
            steps = jax.vmap(lambda k: flat(opt.update(p, state, b, k, None)[0]) - flat(p))(keys)
            return steps, flat(jax.grad(lambda q: loss_and_final(system, q, b)[0])(p))

        steps, grad = steps_and_grad(params, batch)
        error = jnp.linalg.norm(-steps.mean(0) - grad) / jnp.linalg.norm(grad)
        # Standard error of the mean ≈ sqrt((P/K)/n) ≈ 0.04 here; dropping P/K would give ≈ 0.97.
        assert error < 0.15, error


def _update_memory(optimizer, params, horizon, batch_size=16):
    batch = Batch(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in
                    ((horizon, batch_size, 1), (horizon, batch_size, 1), (horizon, batch_size))))
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    compiled = jax.jit(lambda p, s, b, k: optimizer.update(p, s, b, k, None)).lower(
        params, optimizer.init(params), batch, key).compile()
    return compiled.memory_analysis()


def test_update_memory_is_constant_in_the_horizon_while_bptt_grows():
    """memory_analysis() on CPU, nothing executed: working memory (temp) at T=10,000 vs T=100."""
    system = ModelSystem(RateRNN(1, 1, n_hidden=32), MeanSquaredError())
    params = jax.eval_shape(system.init_params, jax.random.PRNGKey(0))
    sofo_opt = sofo(system, optax.sgd(0.1), n_tangents=16)
    adam_opt = bptt(system, optax.adam(1e-3))
    s_short, s_long = (_update_memory(sofo_opt, params, t) for t in (100, 10_000))
    a_short, a_long = (_update_memory(adam_opt, params, t) for t in (100, 10_000))
    assert s_long.temp_size_in_bytes <= 1.03 * s_short.temp_size_in_bytes
    assert s_long.output_size_in_bytes == s_short.output_size_in_bytes
    assert a_long.temp_size_in_bytes >= 50 * a_short.temp_size_in_bytes


BAD = [("optim.n_tangents=0", "optim.n_tangents"), ("optim.n_tangents=2.5", "optim.n_tangents"),
       ("optim.lr=0", "optim.lr"), ("optim.shard=sometimes", "optim.shard"),
       ("optim.orthonormalize=maybe", "optim.orthonormalize"), ("optim.fast=maybe", "optim.fast")]


@pytest.mark.parametrize("optim,override,key", [("sofo", *b) for b in BAD] + [("fgd", *b) for b in BAD]
                         + [("sofo", "optim.damping=-1", "optim.damping")])
def test_bad_values_raise_config_error(optim, override, key):
    with pytest.raises(ConfigError) as err:
        build(compose_config([f"optim={optim}", override, *TINY]))
    assert err.value.key == key


def test_orthonormal_basis_needs_at_most_p_tangents(tmp_path, monkeypatch):
    """P comes from the parameters ``init`` is given: the pre-check's ``init`` (shapes only) refuses
    K > P in one line, before anything is written."""
    from sofo_lab.cli.run import precheck
    from sofo_lab.train.trainer import prepare

    cfg = [*TINY, "optim=sofo", "optim.orthonormalize=true"]
    prepare(compose_config([*cfg, "optim.n_tangents=8"]))
    with pytest.raises(ConfigError, match="parameters") as err:
        prepare(compose_config([*cfg, "optim.n_tangents=100000"]))
    assert str(err.value).startswith("optim.n_tangents=100000: must be <= the ") and "\n" not in str(err.value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="optim.n_tangents=100000: must be <= the "):
        precheck([*cfg, "optim.n_tangents=100000", f"hydra.run.dir={tmp_path / 'run'}"])
    assert not list(tmp_path.iterdir())   # refused before anything was written


@pytest.mark.parametrize("optim,argument,override,value", [
    ("sofo", "n_tangents", "n_tangents", 0), ("sofo", "damping", "damping", -1.0),
    ("sofo", "damping_range", "damping_range", [1.0, 0.1]), ("sofo", "adaptive_damping", "adaptive_damping", "yes"),
    ("sofo", "trust_radius", "trust_radius", 0.0), ("sofo", "robust_trials", "robust_trials", 1.0),
    ("fgd", "orthonormalize", "orthonormalize", "maybe"), ("uoro", "update_every", "update_every", 0),
    ("uoro", "eps", "epsilon", -1.0), ("rtrl", "max_jacobian", "max_jacobian", 0),
    ("fgd", "learning_rate", "lr", -1.0)])
def test_the_library_and_the_command_line_refuse_a_bad_value_by_the_same_rule(optim, argument, override, value):
    """One check per optimizer (its factory in sofo_lab/optim/): the same rule and message, named
    as each caller spells the value (``optim.<key>`` on the command line, the argument in the library)."""
    import sofo_lab

    def step(p, h, x):
        h = jnp.tanh(x @ p["w"] + h)
        return h, h

    kw = {"learning_rate": 0.1, **({"batch_size": 2} if optim in ("uoro", "rtrl") else {}), argument: value}
    with pytest.raises(ConfigError) as lib:
        getattr(sofo_lab, optim)(step, "mse", init_state=jnp.zeros(3), **kw)
    dotted = f"{value}".replace(" ", "")
    with pytest.raises(ConfigError) as cli:
        build(compose_config([*TINY, "task=kalman", f"optim={optim}", f"optim.{override}={dotted}"]))
    assert (lib.value.key, cli.value.key) == (argument, f"optim.{override}")
    assert lib.value.value == cli.value.value and lib.value.allowed == cli.value.allowed, (lib.value, cli.value)


def test_sofo_run_learns_logs_curvature_and_its_step_memory_is_flat_in_the_horizon(tmp_path):
    from sofo_lab.train import profiling
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step
    from sofo_lab.train.trainer import train

    run = ["task=kalman", *TINY, "iterations=6", "eval_every=6", "batch_size=16", "model.n_hidden=32"]
    sofo_run = [*run, "optim=sofo", "optim.lr=0.5", "optim.n_tangents=16"]
    summary = train(compose_config([*sofo_run, "task.n_steps=100"]), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["iteration"] > 0]   # iteration 0: the evaluation before training
    for key in ("loss", "sofo/top_eigenvalue", "sofo/condition_number", "update_norm"):
        assert all(np.isfinite(r[f"train/{key}"]) for r in rows), key
    assert summary["status"] == "completed"
    # From a network that outputs ≈ 0 (MSE ≈ E[x²] ≈ 4) to well below copying the observation.
    assert summary["final"]["eval/mse"] < 0.5 * summary["final"]["eval/copy_mse"], summary["final"]

    # summary.json's step_memory_bytes is the whole jitted iteration, the Kalman batch included
    # (generated step by step inside the scan): T = 10,000 against the run's T = 100.
    def step_memory(optim, T):
        overrides = sofo_run if optim == "sofo" else [*run, f"optim={optim}"]
        setup = build(compose_config([*overrides, f"task.n_steps={T}"]))
        return profiling.step_memory_bytes(make_train_step(setup, 0, 16), init_train_state(setup, 0, 16))

    short = summary["profile"]["step_memory_bytes"]
    assert step_memory("sofo", 100) == short
    assert step_memory("sofo", 10_000) <= 1.03 * short
    assert step_memory("adam", 10_000) >= 50 * step_memory("adam", 100)


def test_generated_batch_is_the_sampled_batch_and_sofo_sees_no_difference():
    """The Kalman task's step-by-step batch materializes to ``sample``'s batch (float64 rounding), and the
    SOFO/UORO updates on either agree (float64)."""
    from sofo_lab.core.system import GeneratedBatch
    from sofo_lab.train.steps import training_batch

    with jax.enable_x64():
        for optim in ("sofo", "uoro"):
            tangents = ["optim.n_tangents=4"] if optim == "sofo" else []
            setup = build(compose_config(["task=kalman", f"optim={optim}", *TINY, "task.n_steps=40",
                                          "batch_size=3", *tangents]))
            key = jax.random.PRNGKey(7)
            _, generated = training_batch(setup.task, setup.system, (), key, key, 3)
            assert isinstance(generated, GeneratedBatch)
            whole = jax.jit(GeneratedBatch.materialize)(generated)
            sampled = setup.task.sample(key, 3)
            for a, b in ((whole.inputs, sampled.inputs), (whole.targets, sampled.targets),
                         (whole.weights, sampled.weights)):
                # to the last bit but one: compiled and eager code may round differently (contracted
                # multiply-adds), and the suite compiles with other XLA flags than a run (conftest.py)
                np.testing.assert_allclose(a, b, rtol=2e-15, atol=0)
            params = jax.tree.map(lambda x: x.astype(jnp.float64), setup.system.init_params(key))
            opt_state = setup.optimizer.init(params)
            update = jax.jit(setup.optimizer.update)
            on_generated = update(params, opt_state, generated, key, None)
            on_whole = update(params, opt_state, whole, key, None)
            for a, b in zip(jax.tree.leaves(on_generated[0]), jax.tree.leaves(on_whole[0])):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from sofo_lab.core.losses import MeanSquaredError
    from sofo_lab.core.system import Batch, ModelSystem
    from sofo_lab.models import RateRNN
    from sofo_lab.optim import _forward
    from sofo_lab.optim.sofo import sofo
    assert jax.device_count() == 2, jax.devices()
    for model in (RateRNN(2, 2, n_hidden=8),):
        system = ModelSystem(model, MeanSquaredError())
        params = system.init_params(jax.random.PRNGKey(0))
        k = jax.random.split(jax.random.PRNGKey(1), 2)
        batch = Batch(jax.random.normal(k[0], (20, 4, 2)), jax.random.normal(k[1], (20, 4, 2)), jnp.ones((20, 4)))
        out = {}
        for shard in (False, True):
            opt = sofo(system, optax.sgd(0.5), n_tangents=8, sharding=_forward.lane_sharding(shard, 8))
            step = jax.jit(lambda p, s: opt.update(p, s, batch, jax.random.PRNGKey(2), None))
            hlo = step.lower(params, opt.init(params)).compile().as_text()
            assert ("num_partitions=2" in hlo) == shard, shard
            out[shard] = step(params, opt.init(params))
        for a, b in zip(jax.tree.leaves(out[False][0]), jax.tree.leaves(out[True][0])):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(out[False][3]["loss"], out[True][3]["loss"], rtol=1e-5)
    print("ok")
""")


def test_lanes_shard_across_two_host_devices_with_the_same_result():
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_benchmarks_run_in_quick_mode(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_kalman_sofo_vs_adam
    import bench_sofo_speed

    speed = bench_sofo_speed.main(["--quick", "--out", str(tmp_path / "speed.json")])
    assert json.loads((tmp_path / "speed.json").read_text())["machine"]["jax"] == jax.__version__
    assert speed["ratio_sofo_over_vmap_of_jvp"]["cpu_min_s"] > 0
    kalman = bench_kalman_sofo_vs_adam.main(["--quick", "--out", str(tmp_path / "kalman.json")])
    summary = kalman["summary"]
    assert 0 < summary["oracle_mse"] < summary["copy_mse"]
    assert len(summary["sofo_final_mse"]) == len(summary["adam_mse_at_equal_wall_clock"]) == 1
    assert summary["adam_iterations_at_equal_wall_clock"][0] >= kalman["problem"]["iterations"]
    # the runs went through the command line; figure and table are sofo-compare's, one row per optimizer
    assert (tmp_path / "kalman_runs" / "adam-s0" / ".hydra" / "overrides.yaml").is_file()
    assert (tmp_path / "kalman.png").stat().st_size > 0
    md = (tmp_path / "kalman.md").read_text()
    assert "| optim=sofo " in md and "| optim=adam " in md and "oracle" in md.splitlines()[-1]
