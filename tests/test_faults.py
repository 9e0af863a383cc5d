"""Every failure class ends in one line, loses nothing written before, and a rerun continues
(README, "What goes wrong"): interrupts, a second run in a run directory, resuming with another
config, silent acceptance, divergence, sweep failures. Sizes that cannot fit:
tests/test_faults_sizes.py; corrupt checkpoints, full disks, the lock: tests/test_faults_checkpoints.py;
SLURM jobs that can never start: tests/test_slurm_watch.py."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from sofo_lab.core.errors import ConfigError, RunFailed
from sofo_lab.train import checkpoint
from tests.conftest import compose_config, one_line_error, run_cli, strict

KALMAN = ["task=kalman", "optim=adam"]
TINY = [*KALMAN, "iterations=3", "batch_size=4", "task.n_steps=12", "model.n_hidden=8", "logger=none",
        "progress=false", "plots=false", "log_every=1", "eval_every=2", "checkpoint_every=2"]


# --- interrupts, two runs in one directory, resuming with another config --------------------------

@pytest.mark.slow
def test_sigint_checkpoints_a_second_run_is_refused_and_the_rerun_resumes(tmp_path, sofo_run_here):
    """The interrupted run and the resumed one in processes of their own; the two refused commands
    (no training) in-process, through sofo-run's main()."""
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
        line = one_line_error(sofo_run_here([*args, "seed=1"], cwd=tmp_path))   # same directory, another seed
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
    refused = sofo_run_here([*args, "optim.lr=0.5"], cwd=tmp_path)
    line = one_line_error(refused)
    assert "different config" in line and "optim.lr" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before


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
