"""Trained networks are data: load_run, params.npz (numpy only), simulate with states, chosen trials."""
import os
import stat
import zipfile

import jax
import numpy as np
import pytest

import sofo_lab
from sofo_lab.core.errors import ConfigError
from sofo_lab.tasks.double_reach import DoubleReach
from sofo_lab.tasks.kalman import Kalman
from sofo_lab.tasks.reach import Reach
from sofo_lab.train import checkpoint
from tests.conftest import TINY, run_cli


def test_params_npz_round_trips_exactly_with_numpy_alone(tmp_path):
    params = {"W_rec": np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32),
              "net": {"W_in": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float64(0.5)},
              "layers": [np.ones(2, np.float32), np.zeros((1, 2), np.float32)]}
    path = checkpoint.save_params_npz(tmp_path / "params.npz", params)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with np.load(path, allow_pickle=False) as data:          # numpy only, no pickle
        arrays = {k: data[k] for k in data.files}
    assert sorted(arrays) == ["W_rec", "layers/0", "layers/1", "net/W_in", "net/b"]
    for name, expected in [("W_rec", params["W_rec"]), ("net/W_in", params["net"]["W_in"]),
                           ("net/b", params["net"]["b"]), ("layers/1", params["layers"][1])]:
        assert arrays[name].dtype == np.asarray(expected).dtype
        assert np.array_equal(arrays[name], expected)
    back = checkpoint.load_params_npz(path, like=params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))     # no temporary file left behind
    with pytest.raises(ConfigError, match="params.npz"):
        checkpoint.load_params_npz(path, like={"W_rec": params["W_rec"]})
    assert zipfile.is_zipfile(path)


@pytest.mark.slow
def test_load_run_returns_the_trained_network_of_a_real_run(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["task=reach", "model=rnn", "optim=sofo", "optim.n_tangents=4", *TINY,
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    npz = run_dir / "checkpoints" / "params.npz"
    assert stat.S_IMODE(os.stat(npz).st_mode) & 0o044 == 0o044           # group- and world-readable

    run = sofo_lab.load_run(run_dir)
    assert run.iteration == 3 and run.config.task.n_steps == 12
    assert isinstance(run.task, Reach)
    with np.load(npz) as data:
        assert sorted(data.files) == sorted(run.params)
        for name in data.files:
            assert np.array_equal(data[name], run.params[name])
    with open(run_dir / checkpoint.CHECKPOINT, "rb") as f:               # the params of the final checkpoint
        import pickle
        saved = pickle.load(f)["state"].params
    assert all(np.array_equal(saved[k], run.params[k]) for k in saved)

    batch = run.task.trials(angles=[0.0, 90.0, 180.0])
    traj = sofo_lab.simulate(run.system, run.params, batch)
    T = run.task.n_steps
    assert traj.states.net.shape == (T, 3, run.config.model.n_hidden)    # the network
    assert traj.states.arm.shape == (T, 3, 4)                             # and the plant
    assert traj.outputs.shape == (T, 3, 6)
    _, ys, losses = sofo_lab.rollout(run.system, run.params, run.system.init_state(run.params, 3), batch)
    assert np.array_equal(ys, traj.outputs) and np.array_equal(losses, traj.losses)
    # y_t is the hand of the arm state after step t
    from sofo_lab.tasks.plants.arm import hand
    assert np.allclose(hand(run.task.arm, traj.states.arm), traj.outputs[..., :4], atol=1e-6)

    # only params.npz and the config: still loads
    for name in ("last.pkl", "prev.pkl"):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    again = sofo_lab.load_run(run_dir)
    assert again.iteration is None and all(np.array_equal(again.params[k], run.params[k]) for k in run.params)


def test_load_run_of_a_directory_without_a_run_says_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"run_dir=.*has no \.hydra/config\.yaml"):
        sofo_lab.load_run(tmp_path)


def test_reach_trials_put_targets_and_go_cues_where_asked():
    with pytest.warns(UserWarning):
        task = Reach(n_steps=60)
    angles, radius = np.array([0.0, 90.0, 200.0]), np.array([0.1, 0.2, 0.15])
    batch = task.trials(angles=angles, delays=[0.1, 0.2, 0.3], radius=radius, idle=0.05)
    lat = batch.extras
    expected = np.asarray(task.start) + radius[:, None] * np.stack([np.cos(np.radians(angles)),
                                                                    np.sin(np.radians(angles))], axis=-1)
    np.testing.assert_allclose(lat.targets[:, 0], expected, atol=1e-6)
    assert lat.go[:, 0].tolist() == [15, 25, 35] and lat.shown.tolist() == [5, 5, 5]
    # the task's own channels show it: hold drops at go, the target input is the scaled displacement
    hold, shown_target = batch.inputs[..., 0], batch.inputs[..., 1:]
    assert hold[14, 0] == 1 and hold[15, 0] == 0 and hold[24, 1] == 1 and hold[25, 1] == 0
    np.testing.assert_allclose(shown_target[10], (expected - np.asarray(task.start)) / task.radius[1], atol=1e-6)
    assert np.all(shown_target[4] == 0) and np.all(shown_target[40] == 0)
    # the scored target position after the free window
    end = int(lat.window_end[0, 0])
    np.testing.assert_allclose(batch.targets[end, 0, :2], expected[0], atol=1e-6)


def test_double_reach_trials_take_one_angle_per_movement_and_refuse_what_cannot_be():
    task = DoubleReach()
    batch = task.trials(angles=[[0.0, 90.0]], radius=0.1)
    np.testing.assert_allclose(batch.extras.targets[0], np.asarray(task.start) + [[0.1, 0.0], [0.0, 0.1]], atol=1e-6)
    assert int(batch.extras.go[0, 1] - batch.extras.go[0, 0]) == task.gap_steps
    one_each = "angles=\\[0.0\\]: must be finite degrees, one per trial and movement"
    for kwargs, message in [(dict(angles=[0.0]), one_each),
                            (dict(angles=[[0.0, 0.0]], radius=0.9), "radius=0.9: must be in \\[0, 0.5"),
                            (dict(angles=[[0.0, 0.0]], delays=9.0), "delays=9.0: idle \\+ delay must be <=")]:
        with pytest.raises(ConfigError, match=message):
            task.trials(**kwargs)


def test_kalman_trials_switch_where_asked_with_the_chosen_parameters():
    task = Kalman(n_steps=400)
    tau, drift, beta = [2.0, 5.0, 1.5], [-2.5, 2.5, 0.0], [0.2, 0.2, 2.0]
    batch = task.trials(jax.random.PRNGKey(0), tau=tau, drift=drift, obs_noise=beta, switch_times=[150, 300],
                        batch_size=64)
    lat = jax.tree.map(np.asarray, batch.extras)
    assert batch.inputs.shape == (400, 64, 1)
    assert [np.flatnonzero(lat.switch[:, b]).tolist() for b in (0, 63)] == [[150, 300]] * 2
    x, y = lat.x, lat.y
    # each segment's latent hovers around its drift b, and y - x has the segment's noise β
    assert abs(x[100:150].mean() + 2.5) < 0.3 and abs(x[250:300].mean() - 2.5) < 0.3 and abs(x[350:].mean()) < 0.3
    assert abs((y - x)[:150].std() - 0.2) < 0.02 and abs((y - x)[300:].std() - 2.0) < 0.1
    # the oracle knows the parameters: it beats copying the observation
    assert np.mean((lat.oracle - x) ** 2) < np.mean((y - x) ** 2)
    per_trial = task.trials(jax.random.PRNGKey(0), tau=[[2.0, 2.0], [3.0, 3.0]], drift=[[0.0, 1.0], [1.0, 0.0]],
                            obs_noise=[[1.0, 1.0], [1.0, 1.0]], switch_times=[[10], [20]])
    assert [np.flatnonzero(per_trial.extras.switch[:, b]).tolist() for b in (0, 1)] == [[10], [20]]
    with pytest.raises(ConfigError, match="switch_times=.*increasing integer steps"):
        task.trials(jax.random.PRNGKey(0), tau=tau, drift=drift, obs_noise=beta, switch_times=[300, 150])


@pytest.mark.slow
def test_load_run_of_a_run_of_the_users_own_task(tmp_path, monkeypatch):
    """The flip-flop of docs/library.md ("Your own task from the command line"), run from a directory
    outside the repository, loads back with its own task class once its module imports."""
    from tests.test_custom_task import TINY as CUSTOM_TINY
    from tests.test_custom_task import files

    for name, body in files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "mylab" / "__init__.py").write_text("")
    run_dir = tmp_path / "runs" / "flipflop"
    out = run_cli(["--config-dir", "conf", "task=flipflop", "optim=sofo", *CUSTOM_TINY, f"hydra.run.dir={run_dir}"],
                  cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    monkeypatch.syspath_prepend(str(tmp_path))
    run = sofo_lab.load_run(run_dir)
    assert type(run.task).__module__ == "mylab.flipflop" and run.iteration == 3
    batch = run.task.sample(jax.random.PRNGKey(0), 2)
    traj = sofo_lab.simulate(run.system, run.params, batch)
    assert traj.states.shape == (run.task.n_steps, 2, run.config.model.n_hidden)
    assert traj.outputs.shape == (run.task.n_steps, 2, 3)


def test_one_run_and_one_load_run_for_the_library_and_sofo_compare(tmp_path):
    """sofo_lab.load_run is sofo-compare's: the records (metrics, summary, choices, settings) always,
    the trained pieces unless ``build=False``."""
    import json

    from omegaconf import OmegaConf

    from sofo_lab.analysis import compare
    from sofo_lab.train.assemble import build
    from tests.conftest import compose_config

    assert compare.load_run is sofo_lab.load_run and compare.Run is sofo_lab.Run
    cfg = compose_config(["task=kalman", "optim=adam", "model.n_hidden=8", "logger=none"])
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"choices": {"task": "kalman", "optim": "adam"}}}},
                   tmp_path / ".hydra" / "hydra.yaml")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "train/loss": 2.0}) + "\n{cut")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    records = sofo_lab.load_run(tmp_path, build=False)
    assert records.task is None and records.params is None and records.config.optim.lr == cfg.optim.lr
    assert records.history == [{"iteration": 1, "train/loss": 2.0}] and records.status == "completed"
    assert records.task_name == "kalman" and records.settings["optim.lr"] == cfg.optim.lr
    checkpoint.save_params_npz(tmp_path / "checkpoints" / checkpoint.PARAMS_NPZ,
                               build(cfg).system.init_params(jax.random.PRNGKey(0)))
    run = sofo_lab.load_run(tmp_path)
    assert isinstance(run.task, Kalman) and run.iteration is None and run.history == records.history
    assert set(run.params) == set(build(cfg).system.init_params(jax.random.PRNGKey(0)))
