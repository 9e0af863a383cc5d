"""``sofo-run`` end to end in a temporary directory: outputs, resume after SIGKILL, bad input."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import TINY
from tests.conftest import run_cli as _run_cli

KALMAN = ["task=kalman", "optim=adam"]   # explicit, whatever the config defaults are


def run_cli(args, cwd, env=None):
    return _run_cli([*KALMAN, *args], cwd=cwd, env=env)

SUMMARY_PROFILE_KEYS = {"n_params", "lower_s", "compile_s", "step_time_median_s", "step_time_p90_s",
                        "step_memory_bytes", "device_peak_bytes", "host_peak_rss_bytes", "flops"}


def test_run_writes_the_run_directory_and_prints_the_result(tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = run_cli(["iterations=6", "batch_size=4", "task.n_steps=20", "model.n_hidden=8", "eval_every=3",
                   "checkpoint_every=3", "log_every=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert f"Run directory: {run_dir}" in out.stdout
    assert "oracle Kalman filter" in out.stdout and "copy observation" in out.stdout
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "summary.json",
                 "loss_curve.png", "kalman_trials.png", "checkpoints/last.pkl"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 2, 3, 4, 6]   # 0: the untrained network, evaluated
    assert "eval/mse" in records[0] and "train/loss" not in records[0]
    assert "eval/mse" in records[2] and "train/loss" in records[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 6
    assert {"loss", "eval/mse", "eval/oracle_mse", "eval/copy_mse"} <= set(summary["final"])
    assert SUMMARY_PROFILE_KEYS <= set(summary["profile"])
    assert summary["profile"]["step_memory_bytes"] > 0 and summary["profile"]["n_params"] > 0
    # The default logger writes an offline wandb run inside the run directory.
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline wandb run"


def test_logger_none_and_wandb_disabled_write_no_wandb_run(tmp_path):
    for i, (args, env) in enumerate([(["logger=none"], {}), ([], {"WANDB_MODE": "disabled"})]):
        run_dir = tmp_path / f"run{i}"
        out = run_cli([*TINY[:4], "progress=false", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        assert (run_dir / "summary.json").is_file()
        assert not list(run_dir.glob("wandb/offline-run-*"))


def _final(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "checkpoints/last.pkl", "rb") as f:
        params = pickle.load(f)["state"].params
    return summary, params


def test_killed_run_resumes_to_the_same_result(tmp_path):
    args = ["iterations=500", "batch_size=8", "task.n_steps=200", "model.n_hidden=24", "checkpoint_every=25",
            "eval_every=100", "log_every=25", "logger=none", "progress=false", "plots=false"]
    reference = tmp_path / "reference"
    out = run_cli([*args, f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *KALMAN, *args, f"hydra.run.dir={killed}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints/last.pkl"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(ckpt, "rb") as f:
        stopped_at = int(pickle.load(f)["state"].iteration)
    assert 0 < stopped_at < 500, "the run was not killed mid-way"
    assert not (killed / "summary.json").exists()

    out = run_cli([*args, f"hydra.run.dir={killed}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Resuming" in out.stderr
    ref_summary, ref_params = _final(reference)
    res_summary, res_params = _final(killed)
    assert res_summary["resumed_from"] == stopped_at
    for key in ref_params:
        np.testing.assert_array_equal(ref_params[key], res_params[key])
    assert {k: v for k, v in res_summary["final"].items()} == ref_summary["final"]
    ref_lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    res_lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(res_lines) == strip(ref_lines)


def test_resuming_with_a_different_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli([*TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    out = run_cli([*TINY, "optim.lr=0.5", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "optim" in out.stderr and "lr" in out.stderr and "Traceback" not in out.stderr


def _bad_cases(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    return [
        (["task=nope"], "task='nope'", "kalman"),
        (["model=transformer"], "model='transformer'", "rnn"),
        (["optim=rmsprop"], "optim='rmsprop'", "adam"),
        (["itterations=5"], "itterations", "iterations"),
        (["optim.lrr=0.1"], "optim.lrr", "lr"),
        (["iterations=abc"], "iterations='abc'", "positive integer"),
        (["iterations=0"], "iterations=0", "positive integer"),
        (["batch_size=-4"], "batch_size=-4", "positive integer"),
        (["task.n_steps=0"], "task.n_steps=0", ">= 2"),
        (["optim.lr=-0.001"], "optim.lr=-0.001", "positive"),
        (["optim.lr=0"], "optim.lr=0", "positive"),
        (["model.n_hidden=0"], "model.n_hidden=0", "positive integer"),
        (["eval_batch_size=0"], "eval_batch_size=0", "positive integer"),
        ([f"hydra.run.dir={blocker}/run"], "hydra.run.dir", "not writable"),
        (["-m", "optim.lr=0.1,-1"], "optim.lr=-1", "positive"),
    ]


def test_bad_input_exits_nonzero_with_one_line_and_no_traceback(tmp_path):
    cases = _bad_cases(tmp_path)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda c: run_cli(c[0], cwd=tmp_path), cases))
    for (args, key, allowed), out in zip(cases, results):
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode != 0, args
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert len(lines) == 1, (args, out.stderr)
        assert lines[0].startswith("error: ") and key in lines[0] and allowed in lines[0], (args, lines[0])
    assert not list(tmp_path.glob("outputs/*/*")), "a bad command created a run directory"


@pytest.mark.parametrize("args,expect", [(["--help"], "sofo"), (["--cfg", "job"], "task:"),
                                         (["--info", "defaults"], "optim/adam")])
def test_hydra_flags_behave_as_in_any_hydra_app(tmp_path, args, expect):
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout


def test_two_runs_started_together_get_different_directories(tmp_path):
    cmd = [sys.executable, "-m", "sofo_lab.cli.run", *KALMAN, *TINY]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = sorted(tmp_path.glob("outputs/kalman-adam/*"))
    assert len(dirs) == 2 and all((d / "summary.json").is_file() for d in dirs)


def test_a_tasks_py_in_the_working_directory_does_not_shadow_the_task_catalogue(tmp_path):
    # `python -m` puts the working directory first on sys.path: a top-level `tasks` package
    # would be this file. The catalogue is sofo_lab.tasks, so the run never imports it.
    (tmp_path / "tasks.py").write_text("raise SystemExit('the user tasks.py was imported')\n")
    out = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
