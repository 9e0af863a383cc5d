"""task=recorded: the loss and metrics in closed form, every validation error in one line, the split,
sampling as a pure function of the key, the fit of the known network, resume, load_run, simulate and
sofo-compare on a recorded run."""
import json
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

import sofo_lab
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import PerSampleLoss
from sofo_lab.core.system import ModelSystem
from sofo_lab.models import RateRNN
from sofo_lab.tasks.recorded import PoissonLogRate, Recorded, example_dataset
from sofo_lab.tasks.trial_pool import split_trials
from sofo_lab.train import checkpoint
from sofo_lab.train.trainer import train
from tests.conftest import compose_config

# --dist loadgroup (pyproject.toml): the module's trained run (adam_run) is built once, on one worker
pytestmark = pytest.mark.xdist_group("recorded")


def save(tmp_path, name=None, **arrays):
    path = tmp_path / (name or f"data{len(list(tmp_path.glob('*.npz')))}.npz")
    np.savez(path, **arrays)
    return str(path)


def hand_made(n=10, T=6, I=2, O=3, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, T, I)).astype(np.float32)
    inputs[:, :, 0] = np.arange(n)[:, None]          # channel 0 carries the trial's index
    return inputs, rng.poisson(1.5, size=(n, T, O)).astype(np.float32)


def test_poisson_loss_matches_the_per_sample_form_and_its_curvature():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    B, O, K = 5, 3, 4
    y = jax.random.normal(k[0], (B, O))
    counts = jax.random.poisson(k[1], 2.0, (B, O)).astype(jnp.float32)
    w = jax.random.uniform(k[2], (B,))
    tangents = jax.random.normal(k[3], (K, B, O))
    nll = lambda yb, kb: jnp.sum(jnp.exp(yb) - kb * yb + jax.scipy.special.gammaln(kb + 1.0))  # noqa: E731
    ref = PerSampleLoss(nll)
    closed = PoissonLogRate()
    np.testing.assert_allclose(closed.value(y, counts, w), ref.value(y, counts, w), rtol=1e-6)
    np.testing.assert_allclose(closed.ggn(y, counts, w, tangents), ref.ggn(y, counts, w, tangents), rtol=1e-5)
    # per-output weights: output 1 masked out is the same as dropping it
    w3 = jnp.broadcast_to(w[:, None], (B, O)).at[:, 1].set(0.0)
    keep = jnp.array([0, 2])
    np.testing.assert_allclose(closed.value(y, counts, w3), closed.value(y[:, keep], counts[:, keep], w), rtol=1e-6)


def test_loss_and_metrics_in_closed_form(tmp_path):
    inputs, counts = hand_made(n=10, T=6, O=3)
    task = Recorded(path=save(tmp_path, inputs=inputs, targets=counts), loss="mse", holdout=4)
    batch = task.eval_batch(None, 4)
    k = batch.targets
    system = task.make_system(None)   # the loss only
    loss = lambda ys: float(sum(system.loss.value(ys[t], k[t], batch.weights[t]) for t in range(6)))  # noqa: E731
    assert loss(k + 0.5) == pytest.approx(0.25, rel=1e-6)        # the mean squared error per entry
    perfect, shifted = task.evaluate(batch, k), task.evaluate(batch, k + 0.5)
    assert float(perfect["r2"]) == pytest.approx(1.0) and float(perfect["explained_variance"]) == pytest.approx(1.0)
    assert float(shifted["explained_variance"]) == pytest.approx(1.0, abs=1e-5)   # a constant offset is not variance
    sst = np.sum((np.asarray(k) - np.asarray(k).mean((0, 1))) ** 2, (0, 1))
    assert float(shifted["r2"]) == pytest.approx(np.mean(1 - 0.25 * 24 / sst), rel=1e-5)
    assert set(perfect) >= {"r2_output_0", "r2_output_2"}

    pois = Recorded(path=save(tmp_path, inputs=inputs, targets=counts), loss="poisson", holdout=4)
    batch = pois.eval_batch(None, 4)
    mean_rate = np.asarray(batch.targets).mean((0, 1))
    null = pois.evaluate(batch, jnp.broadcast_to(jnp.log(mean_rate), batch.targets.shape))
    assert float(null["bits_per_spike"]) == pytest.approx(0.0, abs=1e-5)   # the constant-rate model itself
    # the loss is the Poisson NLL in nats per entry: for y = 0 (λ = 1) it is mean(1 + log k!)
    nll0 = np.mean(1.0 + np.vectorize(math.lgamma)(np.asarray(batch.targets) + 1.0))
    total = sum(float(pois.loss.value(jnp.zeros((4, 3)), batch.targets[t], batch.weights[t])) for t in range(6))
    assert total == pytest.approx(nll0, rel=1e-5)


def test_masked_entries_do_not_count_and_may_be_nan(tmp_path):
    inputs, counts = hand_made()
    mask = np.ones(counts.shape, np.float32)
    mask[:, 3:, 1] = 0.0
    noisy = counts.copy()
    noisy[:, 3:, 1] = np.nan                                    # missing data under mask 0
    a = Recorded(path=save(tmp_path, "a.npz", inputs=inputs, targets=counts, mask=mask), loss="mse")
    b = Recorded(path=save(tmp_path, "b.npz", inputs=inputs, targets=noisy, mask=mask), loss="mse")
    key = jax.random.PRNGKey(3)
    ba, bb = a.sample(key, 5), b.sample(key, 5)
    ys = jnp.ones_like(ba.targets)
    la = sum(float(a.loss.value(ys[t], ba.targets[t], ba.weights[t])) for t in range(6))
    lb = sum(float(b.loss.value(ys[t], bb.targets[t], bb.weights[t])) for t in range(6))
    assert la == pytest.approx(lb) and np.isfinite(lb)
    per_step = Recorded(path=save(tmp_path, "c.npz", inputs=inputs, targets=counts, mask=mask[..., 0]), loss="mse")
    assert per_step.eval_batch(None, 2).extras.mask.shape == (6, 2, 3)   # [trials, T] broadcast over outputs


def _error(path=None, **kwargs):
    with pytest.raises(ConfigError) as info:
        Recorded(path=path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_every_validation_error_is_one_line_naming_the_array(tmp_path):
    inputs, counts = hand_made()
    ok = dict(inputs=inputs, targets=counts)
    assert "no such file" in _error(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_text("not a zip")
    assert "cannot be read as a .npz" in _error(str(tmp_path / "junk.npz"))
    assert "array 'targets' is missing" in _error(save(tmp_path, inputs=inputs))
    assert "array 'inputs' has shape (10, 6)" in _error(save(tmp_path, inputs=inputs[..., 0], targets=counts))
    assert "trials and T" in _error(save(tmp_path, inputs=inputs[:8], targets=counts))
    assert "trials and T" in _error(save(tmp_path, inputs=inputs[:, :5], targets=counts))
    bad = inputs.copy()
    bad[2, 4, 1] = np.nan
    assert "array 'inputs' has 1 NaN/inf values (first at trial 2, step 4, channel 1)" in _error(
        save(tmp_path, inputs=bad, targets=counts))
    bad = counts.copy()
    bad[1, 0, 2] = np.inf
    assert "array 'targets' has 1 NaN/inf values where mask > 0" in _error(save(tmp_path, inputs=inputs, targets=bad))
    assert "array 'mask' has shape (10, 5)" in _error(save(tmp_path, **ok, mask=np.ones((10, 5))))
    assert "array 'mask' must be finite and >= 0" in _error(save(tmp_path, **ok, mask=-np.ones((10, 6))))
    assert "array 'rates' has shape" in _error(save(tmp_path, **ok, rates=np.ones((10, 6, 2))))
    path = save(tmp_path, **ok)
    assert "leaves no held-out trials" in _error(path, holdout=0.01)
    assert "leaves no training trials" in _error(path, holdout=10)
    assert "task.holdout" in _error(path, holdout=-1)
    assert "choose one of ['mse', 'poisson', 'xent']" in _error(path, loss="gaussian")
    assert "needs counts >= 0" in _error(save(tmp_path, inputs=inputs, targets=-counts), loss="poisson")
    assert "one-hot" in _error(path, loss="xent")
    assert "task.n_steps" in _error(path, n_steps=7)
    zero = np.ones((10, 6))
    zero[split_trials(10, 0.2, 0)[1]] = 0.0
    assert "the held-out trials have no unmasked target" in _error(save(tmp_path, **ok, mask=zero))


def test_the_split_is_disjoint_and_training_batches_come_from_the_training_trials(tmp_path):
    inputs, counts = hand_made(n=20)
    task = Recorded(path=save(tmp_path, inputs=inputs, targets=counts), holdout=0.25)
    train_idx, held = set(task.train_index.tolist()), set(task.holdout_index.tolist())
    assert not train_idx & held and train_idx | held == set(range(20)) and len(held) == 5
    seen = set()
    for i in range(20):
        seen |= set(np.asarray(task.sample(jax.random.PRNGKey(i), 8).inputs[0, :, 0]).astype(int).tolist())
    assert seen == train_idx                                       # every training trial, no held-out one
    assert set(np.asarray(task.eval_batch(None, 5).inputs[0, :, 0]).astype(int).tolist()) == held
    one = np.asarray(task.sample(jax.random.PRNGKey(0), 8).inputs[0, :, 0]).astype(int)
    assert len(set(one.tolist())) == 8                              # no repeat while the training part is larger
    # a larger eval batch pads with weight 0 and keeps the mean; a smaller one warns
    padded = task.eval_batch(None, 8)
    assert np.asarray(padded.extras.valid).tolist() == [1] * 5 + [0] * 3
    assert float(padded.weights.sum()) == pytest.approx(float(task.eval_batch(None, 5).weights.sum()) * 8 / 5, rel=1e-5)  # float32 sums
    with pytest.warns(UserWarning, match="evaluates the first 3 of the 5 held-out trials"):
        task.eval_batch(None, 3)


def test_sampling_is_a_pure_function_of_the_key(tmp_path):
    inputs, counts = hand_made(n=20)
    task = Recorded(path=save(tmp_path, inputs=inputs, targets=counts))
    key = jax.random.PRNGKey(7)
    eager, jitted = task.sample(key, 6), jax.jit(lambda k: task.sample(k, 6))(key)
    again = Recorded(path=save(tmp_path, "again.npz", inputs=inputs, targets=counts)).sample(key, 6)
    for a, b in ((eager, jitted), (eager, again)):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(eager.inputs, task.sample(jax.random.PRNGKey(8), 6).inputs)


def test_the_example_data_come_from_the_rnn_model_that_fits_them():
    small = dict(n_trials=12, n_steps=20)
    data = example_dataset(**small)
    task = Recorded(holdout=4)
    assert task.n_trials == 240 and task.output_names[0] == "neuron_0" and task.dt == 0.01
    # the teacher is exactly model=rnn (tanh, α = dt/τ): its weights give the true log-rates
    model = RateRNN(3, 12, n_hidden=16, dt=0.01, tau=0.05, nonlinearity="tanh")
    params = {"W_in": data["teacher_W_in"], "W_rec": data["teacher_W_rec"], "b": data["teacher_b"],
              "W_out": data["teacher_W_out"], "b_out": data["teacher_b_out"]}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    batch = sofo_lab.Batch(jnp.swapaxes(data["inputs"], 0, 1), jnp.swapaxes(data["targets"], 0, 1),
                           jnp.ones((20, 12)))
    traj = sofo_lab.simulate(ModelSystem(model, PoissonLogRate()), params, batch)
    np.testing.assert_allclose(np.exp(np.asarray(traj.outputs)), np.swapaxes(data["rates"], 0, 1), rtol=2e-4)


RUN = ["task=recorded", "task.n_steps=30", "model.n_hidden=16", "model.nonlinearity=tanh", "batch_size=32",
       "eval_batch_size=48", "logger=none", "progress=false", "log_every=10"]
ADAM = [*RUN, "optim=adam", "optim.lr=1e-2", "iterations=300", "eval_every=150", "checkpoint_every=150"]


def write_config(run_dir, cfg):
    """What Hydra writes for a sofo-run run (``train`` in-process does not): the composed config."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory):
    """Adam on the example counts at tiny size (T 30, N 16, 300 iterations), with its config and plots."""
    run_dir = tmp_path_factory.mktemp("recorded") / "adam"
    cfg = compose_config(ADAM)
    summary = train(cfg, run_dir)
    write_config(run_dir, cfg)
    return cfg, run_dir, summary


def test_training_recovers_the_known_network_and_resumes_bit_identical(adam_run, tmp_path):
    """Adam at tiny size fits the example counts well above the constant-rate model; a run resumed from
    its mid-run checkpoint ends with the uninterrupted run's parameters and metrics."""
    cfg, run_dir, full = adam_run
    final = full["final"]
    assert final["eval/oracle_bits_per_spike"] > 0.15
    assert final["eval/bits_per_spike"] > 0.5 * final["eval/oracle_bits_per_spike"]   # measured 0.26 of 0.30
    assert final["eval/true_rates_r2"] > 0.25                  # measured 0.34 (0.90 with 300 SOFO iterations, T 100)
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["eval/bits_per_spike"] < 0 and first["eval/true_rates_r2"] < 0   # the untrained network

    with open(run_dir / checkpoint.PREVIOUS, "rb") as f:     # the checkpoint at 150
        state = pickle.load(f)["state"]
    assert int(state.iteration) == 150
    checkpoint.save(tmp_path / "resumed", state, OmegaConf.to_container(cfg, resolve=True))
    resumed = train(compose_config([*ADAM, "plots=false"]), tmp_path / "resumed")
    assert resumed["resumed_from"] == 150 and resumed["final"] == final
    with open(run_dir / checkpoint.CHECKPOINT, "rb") as f:
        a = pickle.load(f)["state"].params
    with open(tmp_path / "resumed" / checkpoint.CHECKPOINT, "rb") as f:
        b = pickle.load(f)["state"].params
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_load_run_simulate_and_compare_on_a_recorded_run(adam_run, tmp_path):
    from sofo_lab.analysis import compare

    _, adam_dir, _ = adam_run
    assert (adam_dir / "recorded_traces.png").stat().st_size > 10_000
    run = sofo_lab.load_run(adam_dir)
    assert run.iteration == 300 and run.task.n_trials == 240 and run.task.n_steps == 30
    batch = run.task.trials(run.task.holdout_index[:3])
    traj = sofo_lab.simulate(run.system, run.params, batch)
    assert traj.states.shape == (30, 3, 16) and traj.outputs.shape == (30, 3, 12)
    sofo_cfg = compose_config([*RUN, "optim=sofo", "optim.n_tangents=4", "iterations=4", "eval_every=2",
                               "plots=false"])
    train(sofo_cfg, tmp_path / "sofo")
    write_config(tmp_path / "sofo", sofo_cfg)
    compare.compare([tmp_path / "sofo", adam_dir], out=tmp_path / "cmp")
    assert (tmp_path / "cmp" / "compare.png").is_file()
    assert "final eval/r2" in (tmp_path / "cmp" / "compare.md").read_text()   # the task's headline metric
