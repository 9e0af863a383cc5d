#!/usr/bin/env bash
# Submit a sweep to SLURM through the Hydra launcher and return at once.
#
#   scripts/slurm/submit.sh [--sweep-dir DIR] OVERRIDE...
#   scripts/slurm/submit.sh optim=sofo,adam seed=0,1,2 hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1
#
# `sofo-run -m hydra/launcher=slurm ...` submits one array job and then waits for it (it writes the
# sweep summary at the end). This wrapper runs that launcher under nohup on the login node, so the
# shell is free; its log is <sweep dir>/launcher.log. Then:
#   scripts/slurm/follow.py <sweep dir>     # job states and per-run progress, until all are done
#   scripts/slurm/collect.py <sweep dir>    # the summary table (also works if the launcher died)
# Jobs keep running if the launcher is killed; collect.py rebuilds the table from the run dirs.
set -euo pipefail
sweep_dir="outputs/multirun/$(date +%Y-%m-%d_%H-%M-%S)_slurm"
if [ "${1:-}" = "--sweep-dir" ]; then sweep_dir=$2; shift 2; fi
if [ $# = 0 ]; then sed -n '2,13p' "$0"; exit 2; fi
mkdir -p "$sweep_dir"
sweep_dir=$(cd "$sweep_dir" && pwd)
nohup sofo-run -m hydra/launcher=slurm "hydra.sweep.dir=$sweep_dir" "$@" >"$sweep_dir/launcher.log" 2>&1 &
pid=$!
echo "$pid" >"$sweep_dir/launcher.pid"
# bad overrides fail within seconds (sofo-run checks every combination before submitting)
for _ in $(seq 60); do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" || { echo "sofo-run failed:" >&2; tail -20 "$sweep_dir/launcher.log" >&2; exit 1; }
    break
  fi
  if compgen -G "$sweep_dir/.submitit/*/*_submission.sh" >/dev/null; then break; fi
  sleep 1
done
echo "sweep: $sweep_dir"
echo "launcher pid $pid, log $sweep_dir/launcher.log"
echo "follow:  scripts/slurm/follow.py $sweep_dir"
echo "collect: scripts/slurm/collect.py $sweep_dir"
