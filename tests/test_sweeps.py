"""Sweeps and resilience: multirun on the basic and the local_parallel launcher, the sweep summary
table, a diverging run among good ones, wandb failing under a run, and stop signals."""
from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from sofo_lab.cli import sweep

SMALL = ["task=kalman", "model=rnn", "optim=adam", "iterations=3", "batch_size=4", "task.n_steps=20",
         "model.n_hidden=8", "progress=false", "plots=false"]


def _table(sweep_dir: Path):
    data = json.loads((sweep_dir / "sweep_summary.json").read_text())
    with open(sweep_dir / "sweep_summary.csv") as f:
        rows = list(csv.DictReader(f))
    return data, rows


@pytest.mark.slow
def test_basic_sweep_divergent_run_finishes_others_and_groups_wandb(tmp_path):
    sweep_dir = tmp_path / "sw"
    r = run_cli(["-m", *SMALL, "logger=wandb", "optim.lr=0.01,1e9", f"hydra.sweep.dir={sweep_dir}"],
                cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert r.returncode == 1, r.stderr[-2000:]          # a failed run makes the sweep exit non-zero
    assert "Sweep summary: 2 runs (1 completed, 1 diverged)" in r.stderr
    data, rows = _table(sweep_dir)
    assert data["counts"] == {"completed": 1, "diverged": 1}
    by_lr = {float(row["optim.lr"]): row for row in rows}
    good, bad = by_lr[0.01], by_lr[1e9]
    assert good["status"] == "completed" and good["iterations"] == "3" and float(good["final/eval/mse"]) > 0
    assert float(good["profile/n_params"]) > 0 and float(good["profile/step_memory_bytes"]) > 0
    assert bad["status"] == "diverged" and "non-finite" in bad["error"]
    assert good["run_dir"] != bad["run_dir"]             # every run in its own directory
    for row in rows:
        run = Path(row["run_dir"])
        assert (run / "metrics.jsonl").is_file() and (run / "summary.json").is_file()
        # both wandb runs carry the sweep directory's name as their group (RunRecord.run_group, field 6)
        blob = next(run.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
        assert b"\x32" + bytes([len(sweep_dir.name)]) + sweep_dir.name.encode() in blob


@pytest.mark.slow
def test_local_parallel_sweep_runs_each_job_in_its_own_process(tmp_path):
    sweep_dir = tmp_path / "sw"
    r = run_cli(["-m", "hydra/launcher=local_parallel", *SMALL, "logger=none", "seed=0,1",
                 f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    data, rows = _table(sweep_dir)
    assert data["counts"] == {"completed": 2}
    assert sorted(row["seed"] for row in rows) == ["0", "1"]
    assert rows[0]["final/eval/mse"] != rows[1]["final/eval/mse"]
    jobs = [p for p in (sweep_dir / ".submitit").iterdir() if list(p.glob("*_result.pkl"))]
    assert len(jobs) == 2                                  # two submitit jobs, two processes
    assert len({json.loads((Path(row["run_dir"]) / "job_status.json").read_text())["status"]
                for row in rows}) == 1


def test_collect_reports_failed_and_missing_runs(tmp_path):
    """Built from files alone: a job that raised, one that never finished, one that completed."""
    for num, overrides in enumerate([["seed=0"], ["seed=1"], ["seed=2"]]):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
        (tmp_path / str(num) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (tmp_path / "0" / "summary.json").write_text(json.dumps(
        {"status": "completed", "error": None, "iterations": 5, "final": {"loss": 1.5}, "profile": {"n_params": 9}}))
    (tmp_path / "1" / "job_status.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom"}))
    table = sweep.write_summary(tmp_path)
    assert table["counts"] == {"completed": 1, "failed": 1, "missing": 1}
    rows = {r["seed"]: r for r in table["runs"]}
    assert rows["0"]["final/loss"] == 1.5 and rows["0"]["profile/n_params"] == 9
    assert rows["1"]["error"] == "ValueError: boom" and rows["2"]["status"] == "missing"
    assert [r["job"] for r in table["runs"]] == ["0", "1", "2"]
    assert (tmp_path / "sweep_summary.csv").read_text().splitlines()[0].startswith("job,status,error")


def _start(args, cwd, env=None):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if not k.startswith("SLURM_")}  # not a job
    return subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for(path: Path, proc, timeout=120):
    end = time.time() + timeout
    while not (path.is_file() and path.stat().st_size > 0):
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.2)


LONG = ["task=kalman", "model=rnn", "optim=adam", "iterations=3000", "batch_size=4", "task.n_steps=20",
        "model.n_hidden=8", "progress=false", "plots=false", "log_every=50", "eval_every=500",
        "checkpoint_every=500"]


def _kill_wandb_service(proc) -> None:
    children = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(proc.pid)], capture_output=True,
                              text=True).stdout.splitlines()
    service = [int(line.split()[0]) for line in children if "wandb" in line]
    assert service, children
    os.kill(service[0], signal.SIGKILL)


@pytest.mark.slow
def test_stop_signal_wandb_failures_and_resume_match_uninterrupted(tmp_path, sofo_run_here):
    """Three runs of the same config:

    - ``cut``: wandb (offline) whose service is killed mid-run, then SIGTERM: the run keeps training
      after losing wandb, checkpoints off the checkpoint_every grid at the signal and exits 143;
      rerun in the same directory, it resumes from that checkpoint;
    - ``straight``: uninterrupted, with ``logger.mode=online`` and no API key or network: wandb falls
      back to an offline run and the run keeps its local metrics;
    and the resumed run ends with exactly the parameters and loss of the uninterrupted one.
    """
    proc = _start([*LONG, "logger=wandb", f"hydra.run.dir={tmp_path / 'cut'}"], tmp_path, {"WANDB_MODE": "offline"})
    _wait_for(tmp_path / "cut" / "metrics.jsonl", proc)
    _kill_wandb_service(proc)
    time.sleep(0.3)
    assert proc.poll() is None, proc.stdout.read()[-2000:]     # training goes on without wandb
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "Caught SIGTERM: checkpoint written" in out
    with open(tmp_path / "cut" / "checkpoints" / "last.pkl", "rb") as f:
        stopped_at = int(pickle.load(f)["state"].iteration)
    assert 0 < stopped_at < 3000 and stopped_at % 500 != 0      # written at the signal
    resumed = sofo_run_here([*LONG, "logger=none", f"hydra.run.dir={tmp_path / 'cut'}"], cwd=tmp_path)
    assert resumed.returncode == 0 and f"from iteration {stopped_at}" in resumed.stderr, resumed.stderr[-2000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="online", HOME=str(tmp_path), WANDB_BASE_URL="http://127.0.0.1:9")
    straight = subprocess.run([sys.executable, "-m", "sofo_lab.cli.run", *LONG, "logger=wandb", "logger.mode=online",
                               f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "could not start in online mode" in straight.stderr
    assert list((tmp_path / "straight" / "wandb").glob("offline-run-*"))   # `wandb sync` uploads it later

    for d in ("cut", "straight"):
        iters = [json.loads(x)["iteration"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        assert iters == [0, *range(50, 3001, 50)], d        # every logged iteration, once (0: evaluation)
    a, b = (pickle.load(open(tmp_path / d / "checkpoints" / "last.pkl", "rb"))["state"] for d in ("cut", "straight"))
    for x, y in zip(jax_leaves(a.params), jax_leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    fa, fb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cut", "straight"))
    assert fa["status"] == fb["status"] == "completed" and fa["resumed_from"] == stopped_at
    assert fa["final"]["eval/loss"] == fb["final"]["eval/loss"]


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.parametrize("cfg", ["slurm", "local_parallel"])
def test_launcher_presets_compose(cfg):
    from conftest import compose_config

    c = compose_config([f"hydra/launcher={cfg}"], return_hydra_config=True)
    assert c.hydra.launcher.timeout_min > 0
    if cfg == "slurm":
        assert c.hydra.launcher.max_num_timeout > 0 and c.hydra.launcher.setup
        g = compose_config(["+cluster=slurm_gpu"], return_hydra_config=True)
        assert g.hydra.launcher.gpus_per_node == 1 and str(g.hydra.mode) == "RunMode.MULTIRUN"
