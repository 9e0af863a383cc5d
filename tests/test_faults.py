"""Every failure class ends in one line, loses nothing written before, and a rerun continues
(README, "What goes wrong"): sizes that cannot fit, interrupts, corrupt or contested run
directories, full disks, silent acceptance, sweep failures (SLURM jobs that can never start: tests/test_slurm_watch.py)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from sofo_lab.core.errors import ConfigError, RunFailed
from sofo_lab.train import checkpoint, resources, rundir
from tests.conftest import compose_config, run_cli

KALMAN = ["task=kalman", "optim=adam"]
TINY = [*KALMAN, "iterations=3", "batch_size=4", "task.n_steps=12", "model.n_hidden=8", "logger=none",
        "progress=false", "plots=false", "log_every=1", "eval_every=2", "checkpoint_every=2"]


def one_line_error(out, code=2):
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[-1]


def strict(text: str):
    def bad(constant):
        raise AssertionError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=bad)


# --- sizes that cannot fit --------------------------------------------------------------------

def _setup(overrides):
    from sofo_lab.train.assemble import build

    cfg = compose_config(["logger=none", *overrides])
    return build(cfg), cfg


@pytest.mark.parametrize("overrides, key", [(["batch_size=1000000000"], "batch_size"),
                                            ([*KALMAN, "task.n_steps=100000000"], "task.n_steps")])
def test_a_held_out_batch_that_cannot_fit_is_refused_from_shapes(overrides, key):
    setup, cfg = _setup(overrides)
    estimate = resources.shape_estimate(setup, cfg)   # eval_shape: nothing allocated
    free = 64 << 30
    assert sum(estimate.values()) > free
    with pytest.raises(ConfigError) as err:
        resources.refuse_if_too_big(cfg, estimate, free, "available here")
    msg = str(err.value)
    assert msg.startswith(f"{key}=") and str(sum(estimate.values())) in msg and str(free) in msg
    assert f"lower {key}" in msg and "\n" not in msg
    # the same sizes, smaller: fits
    small = resources.shape_estimate(*_setup([o.replace("000000", "") for o in overrides]))
    resources.refuse_if_too_big(cfg, small, free, "available here")


def test_compiled_update_memory_is_checked_and_names_the_tangents():
    from sofo_lab.train.profiling import compiled_memory_bytes, compile_timed
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    base = ["optim=sofo", "task=kalman", "task.n_steps=6", "batch_size=2", "model.n_hidden=4"]
    sizes = {}
    for k in (8, 512):
        setup, cfg = _setup([*base, f"optim.n_tangents={k}"])
        ts = init_train_state(setup, 0, cfg.batch_size)
        sizes[k] = compiled_memory_bytes(compile_timed(make_train_step(setup, 0, cfg.batch_size), ts)[0])
    P = sum(x.size for x in __import__("jax").tree.leaves(ts.params))
    assert sizes[512] - sizes[8] >= (512 - 8) * P * 4   # K tangents of P float32 parameters, at least
    with pytest.raises(ConfigError) as err:
        resources.check_compiled(cfg, sizes[512], {"training state": 1}, free=sizes[512] - 1, where="free")
    assert str(err.value).startswith("optim.n_tangents=512:") and str(sizes[512]) in str(err.value)
    resources.check_compiled(cfg, sizes[512], {"training state": 1}, free=sizes[512], where="free")


def test_rtrl_limit_counts_the_update_work_not_only_the_jacobian():
    import jax

    from sofo_lab.optim import rtrl
    from sofo_lab.train.profiling import compiled_memory_bytes, compile_timed
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    setup, cfg = _setup(["task=anbn", "model=gru", "optim=rtrl", "model.n_hidden=16", "batch_size=4",
                         "task.n_steps=2"])
    ts = init_train_state(setup, 0, cfg.batch_size)
    measured = compiled_memory_bytes(compile_timed(make_train_step(setup, 0, cfg.batch_size), ts)[0])
    P = sum(x.size for x in jax.tree.leaves(ts.params))
    S = ts.opt_state.jacobian.shape[0]
    assert measured > 4 * 4 * S * P                    # far more than J itself
    assert abs(rtrl.rtrl_update_bytes(S, P) - measured) < 0.1 * measured


def test_sofo_run_refuses_a_batch_that_cannot_fit_in_one_line(tmp_path, monkeypatch):
    """In-process: ``sofo-run``'s pre-check (its one-line print and exit 2: tests/test_cli.py)."""
    from sofo_lab.cli.run import precheck

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        precheck(["batch_size=1000000000", f"hydra.run.dir={tmp_path / 'run'}"])
    line = str(err.value)
    assert line.startswith("batch_size=1000000000: the run needs about") and "bytes" in line
    assert "lower batch_size" in line and "\n" not in line
    assert not list(tmp_path.iterdir())   # refused before anything was written


# --- checkpoints: verified, the previous one kept -----------------------------------------------

def _state(i):
    import jax.numpy as jnp

    from sofo_lab.train.state import TrainState

    return TrainState({"w": jnp.full((3,), float(i))}, (), (), None, jnp.asarray(i, jnp.int32))


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = {"seed": 0, "optim": {"lr": 0.1}}
    assert checkpoint.load(tmp_path) is None
    for i in (2, 4):
        checkpoint.save(tmp_path, _state(i), cfg)
    last, prev = tmp_path / checkpoint.CHECKPOINT, tmp_path / checkpoint.PREVIOUS
    assert int(checkpoint.load(tmp_path)["state"].iteration) == 4
    assert int(pickle.loads(prev.read_bytes())["state"].iteration) == 2   # still a plain pickle
    last.write_bytes(last.read_bytes()[:-100])                             # truncated
    capsys.readouterr()
    assert int(checkpoint.load(tmp_path)["state"].iteration) == 2
    warning = capsys.readouterr().err.strip()
    assert "unusable" in warning and "prev.pkl (iteration 2)" in warning and "\n" not in warning
    blob = bytearray(prev.read_bytes())
    blob[10] ^= 0xFF                                                        # a flipped bit
    prev.write_bytes(bytes(blob))
    with pytest.raises(ConfigError) as err:
        checkpoint.load(tmp_path)
    assert "no valid checkpoint" in str(err.value) and "resume=false" in str(err.value)
    assert "checksum mismatch" in str(err.value)


def test_a_checkpoint_written_before_the_layers_still_loads(tmp_path, monkeypatch):
    """A checkpoint pickles TrainState by its module's name: one written when that was
    sofo_lab.runner (before sofo_lab/ was split into layers) loads as today's TrainState."""
    import collections
    import types

    from sofo_lab.train.state import TrainState

    old = types.ModuleType("sofo_lab.runner")
    old.TrainState = collections.namedtuple("TrainState", TrainState._fields, module="sofo_lab.runner")
    monkeypatch.setitem(sys.modules, "sofo_lab.runner", old)
    checkpoint.save(tmp_path, old.TrainState(*_state(3)), {"seed": 0})
    monkeypatch.delitem(sys.modules, "sofo_lab.runner")
    state = checkpoint.load(tmp_path)["state"]
    assert type(state) is TrainState and int(state.iteration) == 3


def test_a_full_disk_mid_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    cfg = {"seed": 0}
    checkpoint.save(tmp_path, _state(2), cfg)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    with pytest.raises(OSError) as err:
        checkpoint.save(tmp_path, _state(4), cfg)
    assert int(checkpoint.load(tmp_path)["state"].iteration) == 2
    msg = str(checkpoint.write_failed(err.value, tmp_path))
    assert msg.startswith("the disk is full writing") and "(iteration 2) is intact" in msg and "rerun" in msg


def test_the_write_probe_writes_bytes(tmp_path):
    """On a filesystem with less than 1 MiB free the probe fails (a 0-byte probe would pass)."""
    code = ("import resource, signal, sys; from sofo_lab.train import rundir\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, 512 << 10))\n"
            "open(sys.argv[1] + '/empty', 'w').close()\n"
            "try:\n    rundir.probe(sys.argv[1])\nexcept OSError as e:\n    print('refused', e.errno)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.split() == ["refused", str(errno.EFBIG)], out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]   # the probe file is gone
    rundir.probe(tmp_path)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root; test_a_full_disk_mid_checkpoint_keeps_the_last_good_one "
                    "covers the in-process path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_before_and_during_a_run(tmp_path, tiny_disk):
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1536 << 10))             # 0.5 MiB left: the 1 MiB probe fails
    line = one_line_error(run_cli([*TINY, f"hydra.run.dir={tiny_disk}/run"], cwd=tmp_path))
    assert "hydra.run.dir" in line and "No space left on device" in line
    filler.unlink()
    run = tiny_disk / "run"
    args = [*TINY, "iterations=400", "checkpoint_every=20", "log_every=1", "eval_every=1000",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (run / checkpoint.CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    with open(filler, "wb") as f:                           # fill the disk mid-run
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:   # ENOSPC: the disk is full now, which is what the test wants
            pass
    out = subprocess.CompletedProcess(proc.args, proc.wait(timeout=180), *proc.communicate())
    line = one_line_error(out, code=1)
    assert line.startswith("run failed: the disk is full") and "is intact" in line, out.stderr[-2000:]
    assert checkpoint.load(run) is not None


# --- interrupts, two runs in one directory, resuming with another config --------------------------

@pytest.mark.slow
def test_sigint_checkpoints_a_second_run_is_refused_and_the_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "iterations=300", "checkpoint_every=25", "log_every=25", "eval_every=100",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (run / checkpoint.CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Caught SIGINT: checkpoint written")
    stopped = int(checkpoint.load(run)["state"].iteration)
    assert 25 <= stopped < 300   # written at the signal, after the first periodic checkpoint

    # another process holds the directory: a second run is refused before Hydra writes .hydra/
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sofo_lab.train import rundir; "
                               "rundir.lock(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = (run / ".hydra" / "config.yaml").read_bytes()
        line = one_line_error(run_cli([*args, "seed=1"], cwd=tmp_path))     # same directory, another seed
        assert f"in use by process {holder.pid}" in line and "hydra.run.dir" in line
        assert (run / ".hydra" / "config.yaml").read_bytes() == config
    finally:
        holder.kill()
        holder.wait()

    # a truncated last.pkl: the rerun resumes from prev.pkl and says so
    last = run / checkpoint.CHECKPOINT
    last.write_bytes(last.read_bytes()[:-10])
    prev_iter = int(pickle.loads((run / checkpoint.PREVIOUS).read_bytes())["state"].iteration)
    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "prev.pkl" in resumed.stderr and f"Resuming {run} from iteration {prev_iter}" in resumed.stderr
    summary = strict((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == prev_iter

    # resuming with a different config: refused before anything in the directory changes
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    refused = run_cli([*args, "optim.lr=0.5"], cwd=tmp_path)
    line = one_line_error(refused)
    assert "different config" in line and "optim.lr" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_the_lock_names_its_holder_and_is_reentrant(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sofo_lab.train import rundir; "
                               "rundir.lock(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as err:
            rundir.lock(tmp_path)
        assert f"in use by process {holder.pid}" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    rundir.lock(tmp_path)        # released by the holder's death
    rundir.lock(tmp_path)        # this process holds it already: no-op
    assert (tmp_path / rundir.LOCK).read_text().strip() == str(os.getpid())
    rundir.unlock(tmp_path)


# --- silent acceptance, divergence, strict JSON ------------------------------------------------

def test_unknown_schedule_keys_are_errors():
    from omegaconf import OmegaConf

    from sofo_lab.optim.transforms import make_schedule

    with pytest.raises(ConfigError) as err:
        make_schedule(OmegaConf.create({"lr": 0.1, "schedule": {"name": "cosine", "bogus": 1}}), 10)
    assert str(err.value).startswith("optim.schedule.bogus=1: unknown key") and "final_fraction" in str(err.value)
    make_schedule(OmegaConf.create({"lr": 0.1, "schedule": {"name": "cosine", "final_fraction": 0.1}}), 10)


def test_strict_json_has_no_nan():
    import numpy as np

    from sofo_lab.train.reporting import strict_json

    data = {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.int64(3)}
    assert strict_json(data) == {"a": None, "b": [None, 1.5], "c": 3}


def test_the_divergence_advice_names_the_runs_own_settings(tmp_path):
    from sofo_lab.train.checkpoint import divergence

    clipped = str(divergence(tmp_path, 7, "non-finite loss", {"lr": 0.3, "clip_norm": 1.0}))
    assert clipped.endswith("at iteration 7; stopped, no checkpoint had been written yet; "
                            "lower optim.lr (now 0.3) or optim.clip_norm (now 1)")
    assert str(divergence(tmp_path, 7, "x", {"lr": 1e-2, "clip_norm": None})).endswith(
        "lower optim.lr (now 0.01) or add optim.clip_norm=1.0")
    assert str(divergence(tmp_path, 7, "x", {"lr": 1e-3})).endswith("lower optim.lr (now 0.001)")   # no clip key


@pytest.mark.slow
def test_a_non_finite_evaluation_is_a_divergence(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from sofo_lab.train.trainer import train

    cfg = compose_config([*TINY, "iterations=4", "checkpoint_every=3"])
    from sofo_lab.train.assemble import build

    task_cls = type(build(cfg).task)
    original = task_cls.evaluate
    monkeypatch.setattr(task_cls, "evaluate", lambda self, batch, ys: {**original(self, batch, ys), "loss": jnp.nan})
    with pytest.raises(RunFailed) as err:
        train(cfg, tmp_path)
    msg = str(err.value)
    assert "non-finite held-out loss" in msg and "at iteration 2;" in msg
    assert "no checkpoint had been written yet" in msg and "is kept" not in msg
    assert msg.endswith(f"lower optim.lr (now {cfg.optim.lr:g}) or add optim.clip_norm=1.0")   # this run's values
    summary = strict((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["iterations"] == 2 and summary["error"] == msg
    rows = [strict(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in r and r["eval/loss"] is None for r in rows)


@pytest.mark.slow
def test_the_divergence_line_is_the_last_thing_printed_even_with_wandb(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-m", "sofo_lab.cli.run", *TINY, "logger=wandb", "iterations=20",
                          "checkpoint_every=1000", "optim.lr=1e30", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stdout, out.stdout[-3000:]
    last = [x for x in out.stdout.splitlines() if x.strip()][-1]
    summary = strict((run / "summary.json").read_text())
    assert last.startswith("run failed: non-finite") and f"at iteration {summary['iterations']};" in last
    assert "no checkpoint had been written yet" in last and summary["status"] == "diverged"


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    from sofo_lab.train.callbacks import MetricsFile

    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3, "train/lo')
    metrics = MetricsFile()
    assert metrics.open(tmp_path, resume_iteration=2) == [{"iteration": 1}, {"iteration": 2}]   # a SIGKILL mid-write
    metrics.close()                                                                           # left half a line
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iteration": 1}\n{"iteration": 2}\n'


# --- sweeps -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_rows_say_diverged_and_failed_with_their_error_lines(tmp_path):
    """Run 0 diverges (exit 1, its line consistent with summary.json, no checkpoint claimed); run 1
    fails on what only it can see (a corrupt checkpoint in its directory): ``failed``, not ``missing``."""
    sweep = tmp_path / "sweep"
    (sweep / "1" / "checkpoints").mkdir(parents=True)
    (sweep / "1" / checkpoint.CHECKPOINT).write_bytes(b"not a checkpoint")
    out = run_cli(["-m", *TINY, "iterations=20", "checkpoint_every=1000", "optim.lr=1e30", "seed=0,1",
                   f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    table = strict((sweep / "sweep_summary.json").read_text())
    rows = {r["job"]: r for r in table["runs"]}
    assert rows["0"]["status"] == "diverged"
    diverged = next(x for x in out.stderr.splitlines() if x.startswith("run failed: non-finite"))
    assert f"at iteration {rows['0']['iterations']};" in diverged and "no checkpoint had been written yet" in diverged
    assert strict((sweep / "0" / "summary.json").read_text())["error"] == diverged[len("run failed: "):]
    assert rows["1"]["status"] == "failed" and "no valid checkpoint" in rows["1"]["error"]
