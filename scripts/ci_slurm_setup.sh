#!/usr/bin/env bash
# CI snippet (called from .ci/run before pytest): a single-node SLURM cluster on the CI machine,
# so that tests/test_slurm.py runs for real instead of skipping. Needs root and apt-get.
#   bash scripts/ci_slurm_setup.sh && export SOFO_REQUIRE_SLURM=1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" = 0 ] && { command -v apt-get >/dev/null || command -v slurmctld >/dev/null; }; then
  bash "$here/slurm_local_cluster.sh" start
  sinfo
else
  echo "ci_slurm_setup: not root or no apt-get; tests/test_slurm.py will skip" >&2
fi
