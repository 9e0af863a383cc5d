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


def test_run_writes_the_run_directory_and_prints_the_result(tmp_path, sofo_run_here):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = sofo_run_here([*KALMAN, "iterations=6", "batch_size=4", "task.n_steps=20", "model.n_hidden=8", "eval_every=3",
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


def test_logger_none_and_wandb_disabled_write_no_wandb_run(tmp_path, sofo_run_here):
    for i, (args, env) in enumerate([(["logger=none"], {}), ([], {"WANDB_MODE": "disabled"})]):
        run_dir = tmp_path / f"run{i}"
        out = sofo_run_here([*KALMAN, *TINY[:4], "progress=false", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            env=env)
        assert out.returncode == 0, out.stderr
        assert (run_dir / "summary.json").is_file()
        assert not list(run_dir.glob("wandb/offline-run-*"))


def _final(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "checkpoints/last.pkl", "rb") as f:
        params = pickle.load(f)["state"].params
    return summary, params


def test_killed_run_resumes_to_the_same_result(tmp_path, sofo_run_here):
    """Only the run that is killed needs a process of its own: the reference and the resumed run
    go through ``main()`` in this one."""
    args = [*KALMAN, "iterations=200", "batch_size=8", "task.n_steps=200", "model.n_hidden=24", "checkpoint_every=25",
            "eval_every=50", "log_every=25", "logger=none", "progress=false", "plots=false"]
    reference = tmp_path / "reference"
    out = sofo_run_here([*args, f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *args, f"hydra.run.dir={killed}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints/last.pkl"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(ckpt, "rb") as f:
        stopped_at = int(pickle.load(f)["state"].iteration)
    assert 0 < stopped_at < 200, "the run was not killed mid-way"
    assert not (killed / "summary.json").exists()

    out = sofo_run_here([*args, f"hydra.run.dir={killed}"], cwd=tmp_path)
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


def _bad_cases(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    return [
        (["task=nope"], "task='nope'", "kalman"),
        (["model=transformer"], "model='transformer'", "rnn"),
        (["optim=rmsprop"], "optim='rmsprop'", "adam"),
        (["itterations=5"], "itterations", "iterations"),
        (["+itterations=5"], "itterations", "did you mean iterations?"),
        (["logger.mode=onlinee"], "logger.mode='onlinee'", "'offline'"),
        (["logger._target_=mylab.Nope"], "logger._target_='mylab.Nope'", "cannot be imported"),
        (["experiment=null"], "experiment='null'", "~experiment"),
        (["+logger.foo=1"], "logger.foo=1", "unknown key"),
        (["plots=maybe"], "plots='maybe'", "true or false"),
        (["resume=1"], "resume=1", "true or false"),
        (["log_geometric=0.5"], "log_geometric=0.5", "> 1"),
        (["optim.lrr=0.1"], "optim.lrr", "did you mean optim.lr?"),
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


def test_bad_input_is_refused_by_the_precheck_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    """In-process: the pre-check ``sofo-run`` calls before Hydra starts (the exit code and the
    printed line are checked end to end below)."""
    from sofo_lab.cli.run import precheck
    from sofo_lab.core.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cases = _bad_cases(tmp_path)
    before = sorted(tmp_path.iterdir())
    for args, key, allowed in cases:
        with pytest.raises(ConfigError) as err:
            precheck([*KALMAN, *args])
        assert "\n" not in str(err.value) and key in str(err.value) and allowed in str(err.value), (args, err.value)
    assert sorted(tmp_path.iterdir()) == before, "a bad command wrote something"


def test_a_key_nothing_reads_is_refused_alike_with_or_without_plus(tmp_path, monkeypatch):
    from sofo_lab.cli.run import precheck
    from sofo_lab.core.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    messages = set()
    for key in ("iteratons=5", "+iteratons=5", "++iteratons=5"):
        with pytest.raises(ConfigError) as err:
            precheck([*KALMAN, key])
        messages.add(str(err.value))
    (message,) = messages
    assert message.startswith("iteratons='5': unknown key: nothing reads it (did you mean iterations?); "
                              "fix the name or drop it; the top level has ["), message
    with pytest.raises(ConfigError, match=r"^logger.mde='offline': unknown key.*did you mean logger.mode\?"):
        precheck([*KALMAN, "+logger.mde=offline"])
    # keys that are read although no config sets them: per_optim's and Hydra's own
    precheck([*KALMAN, *TINY, "+per_optim.adam.lr=0.01", "+hydra.job.env_set.FOO=1", "logger=none"])


def test_the_logger_config_is_checked_key_by_key(monkeypatch):
    from sofo_lab.core.errors import ConfigError
    from sofo_lab.train.loggers import WandbLogger, instantiate

    wandb = {"_target_": "sofo_lab.train.loggers.WandbLogger", "mode": None, "project": "p", "entity": None,
             "group": 3, "tags": ["a"], "run_name": None, "run_id": None}
    monkeypatch.setenv("WANDB_MODE", "offline")
    (logger,) = instantiate(wandb)
    assert isinstance(logger, WandbLogger) and logger.mode == "offline" and logger.group == "3"
    assert instantiate(None) == [] and instantiate({}) == []
    assert len(instantiate({"a": wandb, "b": {**wandb, "mode": "disabled"}, "c": None})) == 2
    for change, start in [({"mode": "onlinee"}, "logger.mode='onlinee': choose one of ['online', 'offline', "),
                          ({"_target_": "nowhere.Tensorboard"}, "logger._target_='nowhere.Tensorboard': cannot be "
                                                                "imported"),
                          ({"tags": "abc"}, "logger.tags='abc': must be a list of strings"),
                          ({"project": 1.5}, "logger.project=1.5: must be a string or null"),
                          ({"run_nam": "x"}, "logger.run_nam='x': unknown key (did you mean logger.run_name?)")]:
        with pytest.raises(ConfigError) as err:
            instantiate({**wandb, **change})
        assert str(err.value).startswith(start), str(err.value)
    with pytest.raises(ConfigError, match=r"^logger.b=.*needs a _target_"):
        instantiate({"a": wandb, "b": {"mode": "x"}})
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match="^WANDB_MODE='bogus': choose one of"):
        instantiate(wandb)
    instantiate({**wandb, "mode": "disabled"})   # logger.mode wins over WANDB_MODE


def test_a_bad_value_exits_in_one_line_and_writes_nothing(tmp_path):
    """End to end: the run directory Hydra would write (.hydra/, .lock, metrics.jsonl) never appears."""
    cases = [(["logger.mode=onlinee"], "error: logger.mode='onlinee': choose one of"),
             (["+iteratons=5"], "error: iteratons='5': unknown key: nothing reads it (did you mean iterations?)")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: run_cli(c[0], cwd=tmp_path), cases))
    for (args, start), out in zip(cases, results):
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and "Traceback" not in out.stderr and len(lines) == 1, (args, out.stderr)
        assert lines[0].startswith(start), (args, lines[0])
    assert not list(tmp_path.iterdir()), "a bad command wrote something"


@pytest.mark.parametrize("args,expect", [(["--help"], "sofo-run trains"), (["--cfg", "job"], "task:"),
                                         (["--info", "defaults"], "optim/adam")])
def test_hydra_flags_behave_as_in_any_hydra_app(tmp_path, args, expect, sofo_run_here):
    out = sofo_run_here([*KALMAN, *args], cwd=tmp_path)   # in-process: main() as the console script calls it
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout
    assert not list(tmp_path.iterdir())                     # nothing run, nothing written


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
