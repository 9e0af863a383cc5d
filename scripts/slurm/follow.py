#!/usr/bin/env python
"""Follow a SLURM sweep: each run's job state (squeue/sacct) and progress (last logged iteration).

    scripts/slurm/follow.py SWEEP_DIR [--interval 10] [--once]

Refreshes until no job of the sweep is pending or running, then prints the sweep summary
(sweep_summary.csv, rebuilt from the run directories).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def job_ids(sweep_dir: Path) -> dict[int, str]:
    """Hydra job number -> SLURM job id (``<array id>_<task>``), from the submitit folder names."""
    ids = {}
    for p in (sweep_dir / ".submitit").glob("*_*"):
        m = re.fullmatch(r"(\d+)_(\d+)", p.name)
        if m:
            ids[int(m.group(2))] = p.name
    return ids


def slurm_states(ids) -> dict[str, str]:
    states = {}
    if not ids:
        return states
    q = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True)
    for line in q.stdout.splitlines():
        job, state = line.split()[:2]
        states[job] = state
    missing = [i for i in ids if i not in states]
    if missing:   # finished jobs: sacct when accounting is on
        a = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(missing)],
                           capture_output=True, text=True)
        for line in a.stdout.splitlines():
            job, state = line.split("|")[:2]
            states.setdefault(job, state.split()[0])
    return states


def progress(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        return f"{s['status']} ({s['iterations']} it)"
    log = run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    if not lines:
        return "starting"
    total = OmegaConf.load(run_dir / ".hydra" / "config.yaml").iterations
    return f"iteration {json.loads(lines[-1])['iteration']}/{total}"


def show(sweep_dir: Path) -> bool:
    ids = job_ids(sweep_dir)
    states = slurm_states(list(ids.values()))
    active = False
    print(f"{time.strftime('%H:%M:%S')}  {sweep_dir}")
    for num, job in sorted(ids.items()):
        state = states.get(job, "?")
        active |= state in ACTIVE
        run_dir = sweep_dir / str(num)
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") if (run_dir / ".hydra").is_dir() else []
        print(f"  {num:>4}  {job:>12}  {state:<11} {progress(run_dir) if run_dir.is_dir() else 'queued':<24} "
              f"{' '.join(overrides)}")
    if not ids:
        print("  no jobs submitted yet")
        active = True
    return active


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--once", action="store_true")
    args = ap.parse_args()
    while show(args.sweep_dir) and not args.once:
        time.sleep(args.interval)
    if not args.once:
        from sofo_lab.cli.sweep import describe, write_summary

        print(describe(write_summary(args.sweep_dir)))


if __name__ == "__main__":
    sys.exit(main())
