"""The paper-scale presets on a GPU, for a short fixed budget: time per iteration, device memory, criterion.

    python scripts/bench_gpu_paper.py [--iterations 60] [--out docs/results/gpu_paper.json]

Runs ``experiment=reach_paper``, ``experiment=double_reach_paper``, ``experiment=kalman_paper`` and the
CPU-scale reach at N = 32, 64, 128 (``reach_N32`` …)
through the runner (``sofo_lab.train.trainer.train``) for ``--iterations`` iterations each (held-out
evaluation at the end only), and records per preset: compile seconds, median and p90 seconds per
iteration, the compiled step memory, the device allocator peak, and the held-out criterion (reach:
within 1 cm, moved early, hold error; Kalman: MSE next to the oracle's). From the measured time per
iteration it prints how long each preset's full budget (its ``iterations``) takes on this device.

Budget: each preset compiles once (~10-60 s on a GPU) and runs ``--iterations`` steps; the default
fits in well under 8 minutes on one H100/H200-class GPU. On a CPU it runs too, but the numbers are
then CPU numbers and say so (``machine.backend``); the test suite runs it shrunk:
``--iterations 2 --extra "batch_size=4 optim.n_tangents=4 task.n_steps=40 model.n_hidden=8"``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import compose, machine, out_path, save  # noqa: E402

PRESETS = ("reach_paper", "double_reach_paper", "kalman_paper")
REACH_SIZES = ("reach_N32", "reach_N64", "reach_N128")   # the flagship at three sizes (issue 23, item 5)
CRITERION = ("eval/loss", "eval/within_1cm", "eval/moved_early", "eval/hold_error_cm", "eval/endpoint_error_cm",
             "eval/mse", "eval/oracle_mse", "eval/copy_mse")


def case_overrides(case: str) -> list[str]:
    """A preset's name (``reach_paper``), or ``reach_N<n>``: the CPU-scale reach at N = n (issue 23)."""
    if case.startswith("reach_N"):
        return ["task=reach", f"model.n_hidden={int(case[len('reach_N'):])}"]
    return [f"experiment={case}"]


def run_preset(preset: str, iterations: int, root: Path, extra=()) -> dict:
    from sofo_lab.train.trainer import train

    cfg = compose([*case_overrides(preset), f"iterations={iterations}", f"eval_every={iterations}",
                   f"checkpoint_every={iterations}", "logger=none", "plots=false", "progress=false", *extra])
    full_budget = compose(case_overrides(preset)).iterations
    t0 = time.perf_counter()
    summary = train(cfg, root / preset)
    wall = time.perf_counter() - t0
    prof = summary["profile"]
    per_it = prof.get("step_time_median_s")
    return {"preset": preset, "n_hidden": cfg.model.get("n_hidden"), "iterations": iterations,
            "status": summary["status"], "wall_s": wall,
            "compile_s": prof.get("compile_s"), "step_time_median_s": per_it,
            "step_time_p90_s": prof.get("step_time_p90_s"), "step_memory_bytes": prof.get("step_memory_bytes"),
            "device_peak_bytes": prof.get("device_peak_bytes"),
            "device_peak_bytes_per_device": prof.get("device_peak_bytes_per_device"),
            "n_params": prof.get("n_params"), "full_budget_iterations": full_budget,
            "full_budget_minutes": None if per_it is None else per_it * full_budget / 60,
            "criterion": {k: summary["final"].get(k) for k in CRITERION if k in summary["final"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--presets", default=",".join(PRESETS + REACH_SIZES),
                        help="experiment presets, and reach_N<n>: the CPU-scale reach at N = n")
    parser.add_argument("--out", default=None)
    parser.add_argument("--extra", default="", help="overrides for every preset, space-separated (a CPU smoke test)")
    args = parser.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            rec = run_preset(preset, args.iterations, Path(tmp), args.extra.split())
            records.append(rec)
            ms, peak, full = rec["step_time_median_s"], rec["device_peak_bytes"], rec["full_budget_minutes"]
            print(f"{preset:20s} {rec['status']:9s} compile {rec['compile_s']:.1f} s   "
                  f"{'-' if ms is None else f'{1e3 * ms:.1f}'} ms/iteration   "
                  f"device peak {'-' if peak is None else f'{peak / 2**30:.2f} GiB'}   "
                  f"full budget ({rec['full_budget_iterations']} it) {'-' if full is None else f'{full:.1f} min'}   "
                  f"{rec['criterion']}", flush=True)
    save(out_path(args.out, "gpu_paper.json"), {"machine": machine(), "extra": args.extra, "records": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
