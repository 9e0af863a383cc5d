"""scripts/bench_closed_loop.py --quick (issue 23): every case compiles and runs through the runner's
update, the record holds times, XLA's flop counts and the ratios the issue bounds, with the machine."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.mark.slow
def test_closed_loop_benchmark_quick(tmp_path):
    import bench_closed_loop

    out = tmp_path / "closed_loop.json"
    result = bench_closed_loop.main(["--quick", "--optims", "sofo", "--out", str(out)])
    assert json.loads(out.read_text())["records"].keys() == result["records"].keys()
    assert set(result["records"]) == {"sofo/reach/N32", "sofo/plain/N32", "sofo/reach-generic/N32"}
    for rec in result["records"].values():
        assert 0 < rec["ms_min"] <= rec["ms"] and len(rec["ms_all"]) == result["repeats"]
        assert rec["xla_flops_per_update"] > 0 and rec["gflops"] > 0
    for name in ("sofo/reach/N32 : plain", "sofo/reach/N32 : generic"):
        r = result["ratios"][name]
        assert r["ratio"] > 0 and isinstance(r["met"], bool)
    assert {"cpu", "backend", "jax", "load_avg_1m"} <= set(result["machine"])
