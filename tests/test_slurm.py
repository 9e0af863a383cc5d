"""Real SLURM: a single-node cluster on this machine (scripts/slurm_local_cluster.sh installs
slurm-wlm + munge with apt-get and starts munged, slurmctld, slurmd), a sweep submitted through
``hydra/launcher=slurm``, and both ways SLURM stops a job mid-run: the pre-time-limit signal
(USR2, which submitit answers with a requeue) and ``scontrol requeue`` (SIGTERM, then SIGKILL).
Each stopped run is requeued, resumes from its checkpoint and ends with exactly the parameters
and loss of an uninterrupted run.

Skipped, with the reason, only where this machine cannot run SLURM (not root and no running
cluster, or no apt-get and no slurmctld). Set SOFO_REQUIRE_SLURM=1 (CI does) to fail instead.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

# --dist loadgroup (pyproject.toml): one SLURM cluster: its tests run one after another, on one worker
pytestmark = pytest.mark.xdist_group("slurm")

ROOT = Path(__file__).resolve().parents[1]
LONG = ["task=kalman", "model=rnn", "optim=adam", "iterations=6000", "batch_size=4", "task.n_steps=20",
        "model.n_hidden=8", "progress=false", "plots=false", "log_every=50", "eval_every=1000",
        "checkpoint_every=1000", "logger=none"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.timeout_min=10"]


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in r.stdout.split())


def _cannot(reason: str):
    # Issue 6: skip only where the machine cannot run SLURM (not root, no apt); .ci/run sets
    # SOFO_REQUIRE_SLURM=1 once its cluster is up, and then a missing cluster is a failure.
    if os.environ.get("SOFO_REQUIRE_SLURM") == "1":
        pytest.fail(f"SOFO_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster():
    if _cluster_up():
        return
    if os.geteuid() != 0:
        _cannot("no running SLURM cluster, and starting one needs root (sudo scripts/slurm_local_cluster.sh)")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        _cannot("no apt-get to install slurm-wlm/munge and no slurmctld on PATH")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local_cluster.sh")], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and _cluster_up(), f"local SLURM cluster did not start:\n{r.stdout}\n{r.stderr}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def _wait(cond, pid, log, what, timeout=180):
    end = time.time() + timeout
    while not cond():
        if not _alive(pid):
            raise AssertionError(f"the launcher ended while waiting for {what}:\n{log.read_text()[-3000:]}")
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.25)


def _state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _params(run_dir: Path):
    import jax

    with open(run_dir / "checkpoints" / "last.pkl", "rb") as f:
        return jax.tree.leaves(pickle.load(f)["state"].params)


@pytest.mark.slow
def test_slurm_sweep_requeued_runs_resume_and_match(tmp_path, slurm_cluster):
    sweep = tmp_path / "sweep"
    submit = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "submit.sh"), "--sweep-dir", str(sweep),
                             *SLURM[1:], *LONG, "seed=0,1"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert submit.returncode == 0 and f"sweep: {sweep}" in submit.stdout, submit.stdout + submit.stderr
    pid, log = int((sweep / "launcher.pid").read_text()), sweep / "launcher.log"
    jobs: list[str] = []
    try:
        def job_of(k: int):   # run k's SLURM job (array task k) once it trains, else None
            metrics = sweep / str(k) / "metrics.jsonl"
            if not (metrics.is_file() and metrics.stat().st_size > 0):
                return None
            found = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(rf"\d+_{k}", p.name)]
            return found[0] if found else None

        # job 0: the signal SLURM sends signal_delay_s before the time limit; job 1: a requeue. Each is
        # sent as soon as its own run trains: a run that starts first must not finish before it.
        actions, acted = {0: ["scancel", "--signal=USR2"], 1: ["scontrol", "requeue"]}, {}

        def act():
            for k in set(actions) - set(acted):
                job = job_of(k)
                if job is not None:
                    subprocess.run([*actions[k], job], check=True)
                    acted[k] = job
            return len(acted) == len(actions)

        _wait(act, pid, log, "both runs to train")
        jobs = [acted[0], acted[1]]
        released = set()

        def requeued():   # a requeued job waits ~2 minutes to be eligible; let it start now
            for job in set(jobs) - released:
                if _state(job) == "PENDING":
                    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
                    released.add(job)
            return released == set(jobs)

        _wait(requeued, pid, log, "both jobs to be requeued", timeout=120)
        follow = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm" / "follow.py"), str(sweep),
                                 "--interval", "1"], capture_output=True, text=True, timeout=300)
        assert follow.returncode == 0 and all(j in follow.stdout for j in jobs), follow.stdout + follow.stderr
        _wait(lambda: not _alive(pid) or (sweep / "sweep_summary.json").is_file() and
              json.loads((sweep / "sweep_summary.json").read_text())["counts"] == {"completed": 2},
              pid, log, "the launcher to finish", timeout=120)
        end = time.time() + 60
        while _alive(pid) and time.time() < end:
            time.sleep(0.25)
    finally:
        if _alive(pid):
            os.kill(pid, 9)
            subprocess.run(["scancel", *jobs], check=False)
    out = log.read_text()
    assert "Sweep summary: 2 runs (2 completed)" in out, out[-3000:]
    assert "Sweep summary: 2 runs (2 completed)" in follow.stdout, follow.stdout

    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@" in script and "#SBATCH --mem=1GB" in script and "--array=0-1" in script
    logs = {j: "".join(p.read_text() for p in (sweep / ".submitit" / j).glob("*_log.err")) for j in jobs}
    assert "Caught SIGUSR2: checkpoint written" in logs[jobs[0]]
    assert "Caught SIGTERM: checkpoint written" in logs[jobs[1]]
    table = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["status"] for r in table["runs"]] == ["completed", "completed"]
    for row in table["runs"]:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        # each resumed from the checkpoint written at its signal, mid-run and off the 1000-step grid
        assert 0 < summary["resumed_from"] < 6000 and summary["resumed_from"] % 1000 != 0, summary
        iters = [json.loads(x)["iteration"] for x in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert iters == [0, *range(50, 6001, 50)]   # 0: the evaluation before training

    collect = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm" / "collect.py"), str(sweep)],
                             capture_output=True, text=True, timeout=60)
    assert collect.returncode == 0 and "2 runs (2 completed)" in collect.stdout, collect.stdout + collect.stderr

    reference = tmp_path / "reference"
    r = run_cli(["-m", *LONG, "seed=0,1", f"hydra.sweep.dir={reference}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for j in "01":
        for a, b in zip(_params(sweep / j), _params(reference / j)):
            np.testing.assert_array_equal(a, b)
        fa, fb = (json.loads((d / j / "summary.json").read_text())["final"] for d in (sweep, reference))
        assert fa["eval/loss"] == fb["eval/loss"]


@pytest.mark.slow
def test_a_job_slurm_can_never_start_is_cancelled_in_one_line(tmp_path, slurm_cluster):
    """More CPUs than any node has: SLURM accepts the array job but leaves it pending
    (PartitionConfig); sofo-run cancels it and names the request and the partition's nodes."""
    cpus = max(int(x) for x in subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True,
                                                text=True).stdout.split())
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "hydra/launcher=slurm", f"hydra.launcher.cpus_per_task={cpus + 8}", "hydra.launcher.mem_gb=1",
                 *LONG, "iterations=2", "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last.startswith("error: hydra.launcher: SLURM will never start job") and "cancelled" in last
    assert f"{cpus + 8} CPUs" in last and f"has {cpus} CPUs" in last
    job = last.split("start job ")[1].split("_")[0]
    assert _state(job) == ""   # cancelled: no longer in the queue

    r = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=100000",
                 *LONG, "iterations=2", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'huge'}"], cwd=tmp_path, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last.startswith("error: hydra.launcher: sbatch refused the sweep") and "1 CPUs, 1e+05 GB" in last


@pytest.mark.slow
def test_a_sweep_of_the_users_own_task_runs_on_slurm(tmp_path, slurm_cluster):
    """docs/library.md's flip-flop task from a directory outside the repository: the SLURM jobs
    import the user's module (sofo-run hands them the working directory on PYTHONPATH)."""
    from tests.test_custom_task import files as custom_task_files
    from tests.test_custom_task import run as run_sofo_run

    project = tmp_path / "myproject"
    (project / "mylab").mkdir(parents=True)
    (project / "mylab" / "__init__.py").write_text("")
    for name, body in custom_task_files().items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(body)
    sweep = tmp_path / "sweep"
    r = run_sofo_run(["-m", "--config-dir", "conf", "task=flipflop", "optim=adam", "seed=0,1", *SLURM,
                      "iterations=3", "batch_size=4", "task.n_steps=12", "model.n_hidden=8", "logger=none",
                      "progress=false", "plots=false", f"hydra.sweep.dir={sweep}"], cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads((sweep / "sweep_summary.json").read_text())
    assert table["counts"] == {"completed": 2}, table
    assert list((sweep / ".submitit").glob("*/*_submission.sh")), "the runs did not go through sbatch"
    assert "_target_: mylab.flipflop.FlipFlop" in (sweep / "0" / ".hydra" / "config.yaml").read_text()
