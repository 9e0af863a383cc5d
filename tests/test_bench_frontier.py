"""scripts/bench_frontier.py's budget logic, against a stand-in for sofo-run (no JAX): a run is
stopped by SIGTERM once its training clock passes the budget and an evaluation follows, and is
read at its last evaluation within the budget. (The real runs are the benchmark's, not the suite's.)"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_frontier  # noqa: E402

# a run whose training clock advances 1 s a record (0.02 s of wall clock), evaluated every 3rd
# record; on SIGTERM it writes "terminated" (as the Preemption callback checkpoints) and exits
FAKE_RUN = textwrap.dedent("""
    import json, signal, sys, time
    from pathlib import Path
    run_dir = Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("hydra.run.dir=")))
    run_dir.mkdir(parents=True, exist_ok=True)
    def stop(*_):
        (run_dir / "terminated").write_text("yes")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    with open(run_dir / "metrics.jsonl", "a") as f:
        for i in range(10000):
            rec = {"iteration": 10 * i, "time_s": float(i), "train/loss": 1.0 / (i + 1)}
            if i % 3 == 0:
                rec["eval/loss"] = 1.0 / (i + 1)
            f.write(json.dumps(rec) + "\\n"); f.flush()
            time.sleep(0.02)
    sys.exit(3)   # never reached within a test's budget
""")


@pytest.fixture
def fake_sofo_run(tmp_path, monkeypatch):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    real = subprocess.Popen
    seen = []

    def popen(args, **kwargs):
        assert args[1:3] == ["-m", "sofo_lab.cli.run"], args
        seen.append(args[3:])
        return real([sys.executable, str(script), *args[3:]], **kwargs)

    monkeypatch.setattr(bench_frontier.subprocess, "Popen", popen)
    monkeypatch.setattr(bench_frontier, "POLL_S", 0.05)
    return seen


def test_a_run_is_stopped_at_the_first_evaluation_past_its_budget(tmp_path, fake_sofo_run):
    run_dir = tmp_path / "sofo-N32"
    rec = bench_frontier.train_for("sofo", 32, 7.0, run_dir, seed=0)
    assert (run_dir / "terminated").is_file() and (run_dir / "budget_reached").is_file()
    args = fake_sofo_run[0]
    assert {"task=reach", "model.n_hidden=32", "optim=sofo", "seed=0", f"hydra.run.dir={run_dir}"} <= set(args)
    assert rec["eval_every"] == max(1, round(7.0 / bench_frontier.SECONDS_PER_ITERATION["sofo"][32] / bench_frontier.EVALS))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # evaluations come at clock 0, 3, 6, 9, ...: the first at or past 7 s is at 9 s; stopped soon after
    assert 9.0 <= records[-1]["time_s"] <= 30.0
    # read at the budget: the last evaluation within 7 s is the one at 6 s (iteration 60), not 9 s
    got = bench_frontier.read_at(str(run_dir), 7.0)
    assert (got["iteration"], got["time_s"], got["loss"]) == (60, 6.0, pytest.approx(1 / 7))
    # a finished run is read again, not rerun
    assert bench_frontier.train_for("sofo", 32, 7.0, run_dir, seed=0)["reused"] and len(fake_sofo_run) == 1


def test_a_run_that_ends_before_its_budget_is_an_error(tmp_path, monkeypatch):
    script = tmp_path / "dies.py"
    script.write_text("import sys; print('error: task.n_steps=0: must be >= 1', file=sys.stderr); sys.exit(2)\n")
    real = subprocess.Popen
    monkeypatch.setattr(bench_frontier.subprocess, "Popen",
                        lambda args, **kw: real([sys.executable, str(script), *args[3:]], **kw))
    with pytest.raises(RuntimeError, match=r"exit 2\) before its budget:\nerror: task.n_steps=0"):
        bench_frontier.train_for("adam", 64, 5.0, tmp_path / "adam-N64", seed=1)


def test_last_record_skips_a_line_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "time_s": 0.5}\n{"iteration": 2, "ti')
    assert bench_frontier.last_record(path) == {"iteration": 1, "time_s": 0.5}
    assert bench_frontier.last_record(tmp_path / "missing.jsonl") == {}
