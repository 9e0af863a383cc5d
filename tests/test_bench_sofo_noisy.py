"""scripts/bench_sofo_noisy.py in its quick mode: the user's battery (scripts/user_battery) runs
through the installed ``sofo-run --config-dir`` for SOFO's variants, each setting reaches the
optimizer, and the table's numbers are read back from the runs' metrics."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_sofo_noisy", REPO / "scripts" / "bench_sofo_noisy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_battery_runs_every_method_and_reads_its_evaluations(tmp_path):
    bench = _bench()
    result = bench.main(["--quick", "--iterations", "8", "--work", str(tmp_path),
                         "--methods", "sofo", "sofo_constant"])
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"sofo", "sofo_constant"}
    for run in result["runs"]:
        assert run["status"] == "completed" and sorted(run["evals"]) == [0, 2, 4, 6, 8]
        assert math.isfinite(run["end"]) and run["end"] == sum(run["evals"][i] for i in (4, 6, 8)) / 3
    default, constant = (next(tmp_path.glob(f"*-{m}-s0-*")) for m in ("sofo", "sofo_constant"))
    logged = {m: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
              for m, d in (("sofo", default), ("sofo_constant", constant))}
    assert not any("train/sofo/step_scale" in r for r in logged["sofo"])
    assert any("train/lr_scale" in r for r in logged["sofo"])                 # the default shrinks its step
    assert not any("train/lr_scale" in r for r in logged["sofo_constant"])   # optim.plateau=null reached it


def test_a_defined_method_keeps_the_commas_inside_a_mapping():
    split = _bench().split_overrides
    assert split("optim=sofo,optim.plateau={window: 5, patience: 1},optim.lr=0.1") == [
        "optim=sofo", "optim.plateau={window: 5, patience: 1}", "optim.lr=0.1"]
    assert split("optim=sofo,optim.damping_range=[1e-4, 1.0]") == ["optim=sofo", "optim.damping_range=[1e-4, 1.0]"]


def test_reused_runs_come_from_records_at_the_same_iteration_count(tmp_path):
    run = {"task": "flipflop", "model": "rnn", "method": "adam", "seed": 1, "status": "completed",
           "evals": {"0": 9.0, "100": 4.0}, "end": 4.0, "best": 4.0}
    (tmp_path / "a.json").write_text(json.dumps({"iterations": 100, "runs": [run]}))
    (tmp_path / "b.json").write_text(json.dumps({"iterations": 300, "runs": [{**run, "seed": 2}]}))
    found = _bench().reusable_runs([str(tmp_path / "a.json"), str(tmp_path / "b.json")], 100)
    assert list(found) == [("flipflop", "rnn", "adam", 1)]
    assert found[("flipflop", "rnn", "adam", 1)]["evals"] == {0: 9.0, 100: 4.0}
    assert found[("flipflop", "rnn", "adam", 1)]["reused"].endswith("a.json")
