"""The adaptive Kalman task: its generator, its oracle filter, and a short Adam run that learns."""
import jax
import numpy as np

from sofo_lab.tasks.kalman import Kalman
from sofo_lab.train.trainer import train
from tests.conftest import compose_config


def test_shapes_channels_and_weights():
    task = Kalman(n_steps=50)
    batch = task.sample(jax.random.PRNGKey(0), 8)
    assert batch.inputs.shape == (50, 8, 1) and batch.targets.shape == (50, 8, 1)
    assert task.n_inputs == 1 and task.n_outputs == 1
    np.testing.assert_allclose(batch.weights.sum(0), 1.0, rtol=1e-5)   # loss = time-mean MSE
    np.testing.assert_array_equal(batch.inputs[..., 0], batch.extras.y)
    np.testing.assert_array_equal(batch.targets[..., 0], batch.extras.x)


def test_segments_last_at_least_min_segment_and_switch_at_the_given_rate():
    task = Kalman(n_steps=3000, min_segment=100, switch_prob=0.01)
    switch = np.asarray(task.sample(jax.random.PRNGKey(1), 64).extras.switch)
    assert switch[0].sum() == 0
    gaps = []
    for b in range(switch.shape[1]):
        times = np.concatenate([[0], np.flatnonzero(switch[:, b])])
        gaps += list(np.diff(times))
    assert min(gaps) >= 100
    # Geometric tail after the minimum: mean segment length 100 + 1/p = 200 (± sampling error).
    assert 180 < np.mean(gaps) < 220


def test_oracle_filter_beats_copying_the_observation():
    task = Kalman(n_steps=2000)
    metrics = task.evaluate(batch := task.sample(jax.random.PRNGKey(2), 128), batch.extras.y[..., None])
    oracle, copy = float(metrics["oracle_mse"]), float(metrics["copy_mse"])
    assert oracle < copy
    # The SOFO authors' numbers for this generative model: oracle 0.4896, copy E[β²] ≈ 3.10.
    assert 0.44 < oracle < 0.54
    assert 2.9 < copy < 3.3


def test_short_adam_run_lowers_the_loss(tmp_path):
    cfg = compose_config(["task=kalman", "optim=adam", "iterations=40", "batch_size=16", "task.n_steps=60",
                          "model.n_hidden=16",
                          "optim.lr=0.01", "log_every=1", "logger=none", "progress=false", "plots=false", "eval_every=40",
                          "checkpoint_every=40"])
    summary = train(cfg, tmp_path)
    first = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train/loss" in line][0]
    first_loss = __import__("json").loads(first)["train/loss"]
    assert summary["status"] == "completed"
    assert summary["final"]["train/loss"] < 0.7 * first_loss
    assert summary["final"]["eval/mse"] < summary["final"]["eval/copy_mse"]
