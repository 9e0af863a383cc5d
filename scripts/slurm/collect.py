#!/usr/bin/env python
"""Collect a sweep's results: rebuild <sweep dir>/sweep_summary.{csv,json} from the run directories
and print one line per run (status, swept overrides, final loss, median step time).

    scripts/slurm/collect.py SWEEP_DIR [--metric final/loss]

Works for any launcher, also after the launching process died (the table is built from the run
directories' summary.json, job_status.json and .hydra/overrides.yaml). Exit status 1 when a run
did not complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sofo_lab.cli.sweep import describe, write_summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--metric", default="final/loss")
    args = ap.parse_args()
    table = write_summary(args.sweep_dir)
    print(f"{'job':>4}  {'status':<10} {args.metric:>14} {'ms/it':>8}  overrides")
    for r in table["runs"]:
        value, step = r.get(args.metric), r.get("profile/step_time_median_s")
        value = "-" if not isinstance(value, (int, float)) else f"{value:.5g}"
        step = "-" if not isinstance(step, (int, float)) else f"{step * 1e3:.2f}"
        print(f"{r['job']:>4}  {r['status']:<10} {value:>14} {step:>8}  {r['overrides']}")
        if r["error"]:
            print(f"{'':>6}{r['error']}")
    print(describe(table))
    return 0 if all(r["status"] == "completed" for r in table["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
