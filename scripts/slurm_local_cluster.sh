#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian packages (slurm-wlm, munge).
#
#   sudo scripts/slurm_local_cluster.sh          # install (if needed), configure, start
#   sudo scripts/slurm_local_cluster.sh stop     # stop the daemons
#   scripts/slurm_local_cluster.sh status        # sinfo
#
# What it does: apt-get installs slurm-wlm and munge when slurmctld is missing, writes
# /etc/slurm/slurm.conf for this host (its short hostname, CPU count and ~90% of its memory,
# one partition `debug`, requeue allowed, no cgroups so it also runs inside containers),
# starts munged, slurmctld and slurmd without systemd, and waits until the node is idle.
# Idempotent: a second call with the daemons running only checks them.
# Needs root and apt (Debian/Ubuntu). The SLURM tests (tests/test_slurm.py) use it.
set -euo pipefail

ACTION=${1:-start}
CONF_DIR=/etc/slurm
HOST=$(hostname -s)
LOG_DIR=/var/log/slurm
SPOOL=/var/spool

log() { echo "[slurm_local_cluster] $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then log "needs root (run with sudo)"; exit 3; fi
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  if ! command -v apt-get >/dev/null; then log "no apt-get: install slurm-wlm and munge by hand"; exit 4; fi
  log "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
  local cpus mem_mib
  cpus=$(nproc)
  mem_mib=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/slurmctld" "$SPOOL/slurmd"
  cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by scripts/slurm_local_cluster.sh for a single-node cluster on $HOST.
ClusterName=sofolocal
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobRequeue=1
# seconds between SIGTERM and SIGKILL when a job is stopped (requeue, scancel, time limit)
KillWait=5
# time limits checked every few seconds, so short limits in tests are honoured promptly
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
SchedulerParameters=sched_interval=2
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  log "wrote $CONF_DIR/slurm.conf: node $HOST, $cpus CPUs, $mem_mib MiB"
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return; sleep 0.1; done
  log "munged did not start"; exit 5
}

start_slurm() {
  if ! pgrep -x slurmctld >/dev/null; then slurmctld; fi
  if ! pgrep -x slurmd >/dev/null; then slurmd; fi
  for _ in $(seq 120); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mix|alloc) log "node $HOST is $state"; return ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  log "the node did not become idle; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
  sinfo -N -l >&2 || true
  exit 6
}

stop_all() {
  for d in slurmd slurmctld munged; do
    if pgrep -x "$d" >/dev/null; then kill "$(pgrep -x "$d")" && log "stopped $d"; fi
  done
}

case "$ACTION" in
  start)
    need_root
    install_packages
    if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && sinfo -h >/dev/null 2>&1; then
      log "already running"; start_slurm; exit 0
    fi
    write_config
    start_munge
    start_slurm
    ;;
  stop) need_root; stop_all ;;
  status) sinfo -N -l ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
