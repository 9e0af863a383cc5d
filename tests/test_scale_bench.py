"""The scale benchmarks' --quick modes: each runs, records the machine, writes JSON + PNG, and
its numbers have the expected structure (memory flat in T for SOFO, growing for BPTT)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MACHINE_KEYS = {"cpu", "cpu_count", "backend", "device_kind", "jax"}


def _run(name: str, out: Path) -> dict:
    r = subprocess.run([sys.executable, str(SCRIPTS / name), "--quick", "--out", str(out)], capture_output=True,
                       text=True, timeout=600, cwd=out.parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert out.with_suffix(".png").stat().st_size > 1000
    result = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(result["machine"]) and result["quick"] is True
    return result


@pytest.mark.slow
def test_memory_vs_horizon_quick(tmp_path):
    res = _run("bench_memory_vs_horizon.py", tmp_path / "mem.json")
    pts = {(p["method"], p["T"]): p for p in res["points"]}
    # forward mode: the optimizer's working memory does not depend on T; BPTT's grows ~linearly
    assert pts["sofo", 100]["update_temp_bytes"] == pts["sofo", 1000]["update_temp_bytes"]
    assert pts["adam", 1000]["update_temp_bytes"] > 5 * pts["adam", 100]["update_temp_bytes"]
    assert res["slopes"]["adam"]["update_temp_bytes"] > 100
    assert abs(res["slopes"]["sofo"]["update_temp_bytes"]) < 1e-6


@pytest.mark.slow
def test_time_vs_tangents_quick(tmp_path):
    res = _run("bench_time_vs_tangents.py", tmp_path / "time.json")
    methods = [(p["method"], p["K"]) for p in res["points"]]
    assert methods == [("forward", None), ("adam", None), ("sofo", 8)]
    assert all(p["median_s"] > 0 and p["ratio_to_forward"] > 0 for p in res["points"])


@pytest.mark.slow
def test_loss_vs_wallclock_quick(tmp_path):
    res = _run("bench_loss_vs_wallclock.py", tmp_path / "loss.json")
    assert [r["optim"] for r in res["runs"]] == ["adam", "sofo"]
    for r in res["runs"]:
        assert r["status"] == "completed" and len(r["curve"]) == 11          # iteration 0 and 10 evaluations
        assert r["curve"][0]["iteration"] == 0 and r["curve"][0]["time_s"] == 0.0
        times = [p["time_s"] for p in r["curve"]]
        assert times == sorted(times) and all(p["eval_loss"] > 0 for p in r["curve"])
        assert (tmp_path / "runs" / r["optim"] / ".hydra" / "overrides.yaml").is_file()   # the command line's run
    md = (tmp_path / "loss.md").read_text()                                              # sofo-compare's table
    assert "| optim=adam |" in md and "| optim=sofo |" in md


@pytest.mark.parametrize("name", ["bench_memory_vs_horizon.py", "bench_time_vs_tangents.py",
                                  "bench_loss_vs_wallclock.py"])
def test_help(name):
    r = subprocess.run([sys.executable, str(SCRIPTS / name), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--quick" in r.stdout
