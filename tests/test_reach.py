"""The motor tasks: trial structure, reachable targets, metrics, SOFO's sketch through the closed
loop against reverse mode, and the benchmark's quick mode. Every optimizer through the arm:
tests/test_optimizers.py."""
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import rollout
from sofo_lab.tasks.double_reach import DoubleReach
from sofo_lab.tasks.reach import Reach
from sofo_lab.train.assemble import build
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


def _phase_checks(task, batch):
    """Every step of every trial is in exactly the phase the spec gives it."""
    lat = jax.tree.map(np.asarray, batch.extras)
    w, tgt, u = np.asarray(batch.weights), np.asarray(batch.targets), np.asarray(batch.inputs)
    T, scale, start = task.n_steps, 10.0 / task.n_steps, np.asarray(task.start)
    t = np.arange(T)
    for b in range(u.shape[1]):
        go = lat.go[b]
        assert 0 <= lat.shown[b] < go[0] and 1 <= go[0] and go[-1] + task.free_steps < T   # cues inside the trial
        move = np.sum(t[:, None] >= go[None], axis=1) - 1             # movement under way (-1: before go 1)
        in_window = (move >= 0) & (t >= lat.window_end[b, np.maximum(move, 0)])
        weight = np.where(move < 0, 1.0, np.where(in_window, 4.0, 0.0)) * scale
        np.testing.assert_allclose(w[:, b], np.stack([weight] * 4 + [0 * weight] * 2, 1), rtol=1e-6)
        expected = np.where((move < 0)[:, None], start, lat.targets[b, np.maximum(move, 0)])
        scored = weight > 0
        np.testing.assert_allclose(tgt[scored, b, :2], expected[scored], rtol=1e-6)
        np.testing.assert_array_equal(tgt[:, b, 2:], 0.0)
        # Hold channel(s): 1 before their go cue; targets visible only during the delay.
        np.testing.assert_array_equal(u[:, b, :task.n_moves], (t[:, None] < go[None]).astype(float))
        visible = (lat.shown[b] <= t) & (t < go[0])
        shown = (lat.targets[b] - start).reshape(-1) / task.radius[1]
        np.testing.assert_allclose(u[:, b, task.n_moves:], visible[:, None] * shown[None], rtol=1e-5, atol=1e-7)
        assert visible.sum() > 0 and np.all(weight[go[0]:go[0] + task.free_steps] == 0)


@pytest.mark.parametrize("cls", [Reach, DoubleReach])
def test_shapes_channels_and_phases(cls):
    task = cls(n_steps=120, dt=0.02, tau=0.04)
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(0), 6)
    T, B = 120, 6
    assert batch.inputs.shape == (T, B, task.n_inputs) and task.n_inputs == 1 + 3 * (task.n_moves - 1) + 2
    assert batch.targets.shape == batch.weights.shape == (T, B, 6)
    assert task.model_n_inputs == task.n_inputs + 4 and task.model_n_outputs == 2
    assert batch.noise is None                                   # the system adds it (runner)
    _phase_checks(task, batch)


def test_double_reach_go_cues_are_gap_apart_and_scored_separately():
    task = DoubleReach()
    lat = jax.jit(task.latents, static_argnums=1)(jax.random.PRNGKey(1), 64)
    np.testing.assert_array_equal(lat.go[:, 1] - lat.go[:, 0], 70)           # 0.7 s at 10 ms
    assert int(lat.go[:, 0].min()) >= 20 and int(lat.go[:, 0].max()) <= 60   # delay U[0.2, 0.6] s


@pytest.mark.parametrize("l2", [0.30, 0.33])
def test_targets_are_reachable_and_the_authors_sampling_is_not(l2):
    task = Reach(l2=l2)
    targets = np.asarray(jax.jit(task.sample_targets, static_argnums=1)(jax.random.PRNGKey(2), (20000,)))
    start = np.asarray(task.start)
    from_shoulder = np.linalg.norm(targets, axis=1)
    from_start = np.linalg.norm(targets - start, axis=1)
    assert from_shoulder.max() <= task.reach * (1 + 1e-6) and task.reach < task.arm.l1 + l2
    assert from_shoulder.min() > abs(task.arm.l1 - l2) + 0.05                 # away from the inner edge
    assert from_start.min() >= 0.2 - 1e-6 and from_start.max() <= 0.5 + 1e-6
    angle = np.degrees(np.arctan2(*(targets - start).T[::-1]))
    angle = np.where(angle < -90, angle + 360, angle)
    assert angle.min() >= -36 - 1e-3 and angle.max() <= 216 + 1e-3
    # The authors' sampling (radius U[0.2, 0.5] in every direction) leaves the workspace often.
    rng = np.random.default_rng(0)
    phi, r = np.radians(rng.uniform(-36, 216, 20000)), rng.uniform(0.2, 0.5, 20000)
    theirs = np.linalg.norm(start + r[:, None] * np.stack([np.cos(phi), np.sin(phi)], 1), axis=1)
    assert 0.08 < np.mean(theirs > task.arm.l1 + l2) < 0.2


def test_metrics_score_a_perfect_and_an_early_moving_trajectory():
    task = Reach()
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(3), 16)
    evaluate = jax.jit(task.evaluate)
    perfect = batch.targets                                         # at the start, then at the target
    m = jax.tree.map(float, evaluate(batch, perfect))
    assert m["endpoint_error_cm"] < 1e-4 and m["hold_error_cm"] < 1e-4 and m["within_1cm"] == 1.0
    assert m["moved_early"] == 0.0
    shifted = perfect.at[..., 0].add(0.03)                          # 3 cm off everywhere
    m = jax.tree.map(float, evaluate(batch, shifted))
    assert m["endpoint_error_cm"] == pytest.approx(3.0, rel=1e-3) and m["hold_error_cm"] == pytest.approx(3.0, rel=1e-3)
    assert m["moved_early"] == 1.0 and m["within_1cm"] == 0.0


def test_noise_enters_only_through_the_batch():
    cfg = compose_config(["task=reach", "model=rnn", "optim=adam", "task.n_steps=30", "model.n_hidden=8",
                          "logger=none"])
    setup = build(cfg)
    assert setup.model.noise_amplitude == pytest.approx(0.28)
    system, task = setup.system, setup.task
    params = system.init_params(jax.random.PRNGKey(0))
    sample = jax.jit(task.sample, static_argnums=1)
    batch = sample(jax.random.PRNGKey(1), 4)
    np.testing.assert_array_equal(batch.inputs, sample(jax.random.PRNGKey(1), 4).inputs)
    noisy = batch._replace(noise=system.sample_noise(jax.random.PRNGKey(2), 30, 4))
    run = jax.jit(lambda b: rollout(system, params, system.init_state(params, 4), b)[1])
    np.testing.assert_array_equal(run(noisy), run(noisy))          # deterministic given the batch
    assert not np.allclose(run(noisy), run(batch))                 # and the noise does act
    other = noisy._replace(noise=system.sample_noise(jax.random.PRNGKey(3), 30, 4))
    assert not np.allclose(run(noisy), run(other))


def test_bad_timing_and_targets_raise_config_errors_and_tiny_trials_are_compressed():
    with pytest.raises(ConfigError) as info:
        Reach(radius=[0.5, 0.2])
    assert info.value.key == "task.radius"
    with pytest.raises(ConfigError) as info:
        Reach(radius=[0.45, 0.5])                                  # no room straight up
    assert info.value.key == "task.radius"
    with pytest.raises(ConfigError) as info:
        DoubleReach(gap=0.3)
    assert info.value.key == "task.gap"
    with pytest.raises(ConfigError) as info:
        Reach(n_steps=2)
    assert info.value.key == "task.n_steps"
    with pytest.warns(UserWarning, match="scaled"):
        task = DoubleReach(n_steps=12)
    _phase_checks(task, jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(4), 8))


@pytest.mark.parametrize("task", ["reach", "double_reach"])
def test_training_batches_generated_step_by_step_are_the_sampled_batches(task):
    """The runner trains on a GeneratedBatch (nothing of length T stored); it must hold exactly
    the trials ``sample`` draws, and its per-step private noise must match its materialized form."""
    from sofo_lab.core.system import GeneratedBatch
    from sofo_lab.train.steps import training_batch

    setup = build(compose_config([f"task={task}", "model=rnn", "optim=sofo", "model.n_hidden=8", "logger=none"]))
    key = jax.random.PRNGKey(5)
    _, generated = training_batch(setup.task, setup.system, (), key, key, 3)
    assert isinstance(generated, GeneratedBatch)
    whole = jax.jit(GeneratedBatch.materialize)(generated)
    sampled = setup.task.sample(key, 3)
    for a, b in ((whole.inputs, sampled.inputs), (whole.targets, sampled.targets), (whole.weights, sampled.weights)):
        np.testing.assert_array_equal(a, b)
    assert whole.noise.shape == (setup.task.n_steps, 3, 8) and float(whole.noise.std()) > 0
    seen = jax.jit(lambda g: g.scan(lambda c, xs: (c, xs[0].noise), None)[1])(generated)
    np.testing.assert_array_equal(seen, whole.noise)


def test_sofo_sketch_through_the_arm_equals_reverse_mode():
    """C = Vᵀ∇L (reverse mode) and G̃ = Vᵀ(Σ JᵀHJ)V (dense Jacobian), through the closed loop
    with private noise, both go cues and an effort cost (float64)."""
    from sofo_lab.optim import _forward

    T, B, K = 6, 3, 5
    cfg = compose_config(["task=double_reach", "model=rnn", f"task.n_steps={T}", "model.n_hidden=5", "logger=none",
                          "task.effort_weight=0.1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setup = build(cfg)
    system, task = setup.system, setup.task
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, tree)
        params = f64(system.init_params(jax.random.PRNGKey(0)))
        batch = f64(task.sample(jax.random.PRNGKey(1), B)._replace(
            noise=system.sample_noise(jax.random.PRNGKey(2), T, B)))
        assert batch.noise is not None
        tangents = _forward.sample_tangents(jax.random.PRNGKey(3), params, K)
        sketch = jax.jit(lambda p, v: _forward.forward_sketch(system, p, v, batch, None))(params, tangents)
        flat, unravel = jax.flatten_util.ravel_pytree(params)

        def run(f):
            _, ys, losses = rollout(system, unravel(f), system.init_state(unravel(f), B), batch)
            return ys, losses.sum()

        V = jnp.stack([jax.flatten_util.ravel_pytree(jax.tree.map(lambda v: v[k], tangents))[0]
                       for k in range(K)], axis=1)                                     # [P, K]
        grad = jax.jit(jax.grad(lambda f: run(f)[1]))(flat)
        np.testing.assert_allclose(sketch.c, V.T @ grad, rtol=1e-9)
        # Output Jacobian times V by plain jax.jvp through the rollout, one direction at a time.
        JV = jax.jit(jax.vmap(lambda v: jax.jvp(lambda f: run(f)[0], (flat,), (v,))[1]))(V.T)   # [K, T, B, O]
        H = 2.0 * batch.weights / B                                                    # MSE curvature
        np.testing.assert_allclose(sketch.ggn, jnp.einsum("ktbo,tbo,ltbo->kl", JV, H, JV), rtol=1e-9, atol=1e-14)
        assert float(sketch.loss) == pytest.approx(float(run(flat)[1]), rel=1e-12)


def test_benchmark_quick_mode_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    # one Adam learning rate: the sweep still picks between clipped and unclipped, in 2 runs fewer
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_motor.py"), "--quick", "--adam-lrs", "1e-2",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"machine", "runs", "table"} <= set(data)
    assert {"sofo", "adam"} <= {r["optim"] for r in data["runs"]}
    assert {r["role"] for r in data["runs"]} == {"sofo", "adam_sweep", "adam_best"}
    for r in data["runs"]:
        assert r["curve"][0]["iteration"] == 0 and all(math.isfinite(p["loss"]) for p in r["curve"])
        assert "solved_iteration" in r
    sofo = next(r for r in data["runs"] if r["optim"] == "sofo")
    assert sofo["curve"][-1]["loss"] < sofo["curve"][0]["loss"]                 # it learns
    adam_best = next(r for r in data["runs"] if r["role"] == "adam_best")
    assert adam_best["iterations"] >= sofo["iterations"]                        # equal wall-clock: at least as many
    assert {"equal iterations", "equal wall-clock"} <= {row["comparison"] for row in data["table"]}
    assert {"cpu", "cores", "jax", "backend"} <= set(data["machine"])
    # every run went through the command line (its .hydra/ beside its metrics); figure and table are
    # sofo-compare's, grouped by the overrides, with the motor metrics and the solved columns
    runs_dir = tmp_path / "outputs" / "bench" / "bench_runs"
    dirs = [d for d in runs_dir.iterdir() if (d / "metrics.jsonl").is_file()]
    assert len(dirs) == len(data["runs"]) + 1 and all((d / ".hydra" / "overrides.yaml").is_file() for d in dirs)
    assert (tmp_path / "bench.png").exists()
    md = (tmp_path / "bench.md").read_text()
    assert "| final eval/within_1cm | final eval/moved_early | final eval/hold_error_cm | solved (seeds) |" in md
    # Adam's iteration count names its configuration where it differs from SOFO's (the budget is measured:
    # on a loaded machine Adam may get no more iterations than SOFO)
    adam_label = "| optim=adam iterations=" if adam_best["iterations"] != sofo["iterations"] else "| optim=adam "
    assert adam_label in md and "optim.clip_norm=1.0 |" in md
    assert "Reference levels of eval/within_1cm: solved 0.8." in md
    # --collect reads the same directories back with the same reader
    partial = tmp_path / "partial.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_motor.py"), "--collect", str(runs_dir),
                           "--out", str(partial)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    collected = json.loads(partial.read_text())

    def key(r):
        return json.dumps([r["optim"], r["lr"], r["clip_norm"], r["solved_iteration"], r["curve"]])

    assert sorted(map(key, collected["runs"])) == sorted(map(key, data["runs"]))    # the Adam probe left out
    assert "solved (seeds)" in collected["table_markdown"] and (tmp_path / "partial.png").exists()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_motor.py"), "--collect", str(runs_dir),
                           "--at", "iteration=10", "--out", str(tmp_path / "at10.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    at10 = json.loads((tmp_path / "at10.json").read_text())
    assert at10["at"] == "iteration=10" and "| eval/within_1cm at iteration 10 |" in at10["table_markdown"]

    # scripts/motor_noise_share.py on one of these runs: it scores the same trials as the task does
    sys.path.insert(0, str(ROOT / "scripts"))
    import motor_noise_share

    sofo_dir = next(d for d in dirs if "-sofo-" in d.name)
    share = motor_noise_share.main([str(sofo_dir), "--trials", "64", "--out", str(tmp_path / "n.json")])
    assert json.loads((tmp_path / "n.json").read_text()) == share
    assert share["noisy_within_1cm_around_window_end"]["+0 ms"] == pytest.approx(share["noisy"]["within_1cm"])
    assert share["noisy"]["endpoint_error_cm"] != share["noise_free"]["endpoint_error_cm"]   # the noise matters


def test_gpu_paper_script_runs_every_paper_preset_shrunk_on_cpu(tmp_path):
    """scripts/bench_gpu_paper.py end to end (shrunk, CPU): one record per paper preset with the
    time per iteration, the memory fields and the criterion, so the first lent GPU runs it as is."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu_paper.py"), "--iterations", "2",
                           "--presets", "reach_paper,double_reach_paper,kalman_paper,reach_N32",
                           "--extra", "batch_size=4 optim.n_tangents=4 task.n_steps=40 model.n_hidden=8",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    records = {r["preset"]: r for r in data["records"]}
    assert list(records) == ["reach_paper", "double_reach_paper", "kalman_paper", "reach_N32"]
    for preset, r in records.items():
        assert r["status"] == "completed" and r["step_time_median_s"] > 0 and r["step_memory_bytes"] > 0
        assert r["full_budget_iterations"] >= 1000 and r["full_budget_minutes"] > 0   # the preset's own budget
        assert "device_peak_bytes_per_device" in r
    assert {"eval/within_1cm", "eval/moved_early"} <= set(records["reach_paper"]["criterion"])
    assert {"eval/within_1cm", "eval/moved_early"} <= set(records["reach_N32"]["criterion"])
    assert records["reach_N32"]["n_hidden"] == 8          # --extra comes last: the shrunk size
    assert {"eval/mse", "eval/oracle_mse"} <= set(records["kalman_paper"]["criterion"])
    assert data["machine"]["backend"] == "cpu"
