"""``hydra/launcher=slurm`` that does not wait forever for a job SLURM will never start.

hydra-submitit-launcher submits the sweep as one array job and then blocks in ``job.results()``
until every task has finished (``install`` hooks in between). A task whose request no node of the partition can satisfy pends
forever (reason ``PartitionConfig``, or ``ReqNodeNotAvail`` / ``Resources`` when the request
exceeds every node), and the launcher waits silently. ``watch`` runs right after the submission:
while any task is pending it polls ``squeue -h -r -o %i|%T|%r -j <array job>`` every
``POLL_S`` seconds; when ``never_starts`` says a pending reason will not resolve, it cancels the
array job (``scancel``) and ends the command (exit 2) with one line naming the request (CPUs, memory,
GPUs, time) and what the partition's nodes offer (``sinfo``). Size requests with
``hydra.launcher.cpus_per_task``/``mem_gb``/``gpus_per_node``/``timeout_min`` from what ``sinfo``
shows (README, Sweeps).
"""
from __future__ import annotations

import subprocess
import sys
import time

POLL_S = 5.0
# Pending reasons that no amount of waiting resolves (squeue(1) "JOB REASON CODES").
FATAL = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
         "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit",
         "QOSMaxWallDurationPerJobLimit", "AssocMaxCpuPerJobLimit", "AssocMaxMemPerJob", "AssocMaxNodePerJobLimit",
         "AssocMaxWallDurationPerJobLimit", "PartitionDown", "PartitionInactive"}
# Reasons that are fatal only when the request exceeds every node of the partition.
IF_TOO_BIG = {"ReqNodeNotAvail", "Resources", "Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved_for_jobs_"
              "in_higher_priority_partitions"}


def parse_sinfo(text: str) -> list[dict]:
    """Nodes from ``sinfo -h -N -o '%N %c %m %G'`` (name, CPUs, memory in MB, GRES)."""
    nodes = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit():
            mem = parts[2].rstrip("+")
            gres = parts[3] if len(parts) > 3 else "(null)"
            gpus = sum(int(g.split(":")[-1].split("(")[0]) for g in gres.split(",")
                       if g.startswith("gpu") and g.split(":")[-1].split("(")[0].isdigit())
            nodes[parts[0]] = {"node": parts[0], "cpus": int(parts[1]), "mem_mb": int(mem) if mem.isdigit() else 0,
                               "gpus": gpus}
    return list(nodes.values())


def parse_squeue(text: str) -> list[tuple[str, str, str]]:
    """(job id, state, reason) from ``squeue -h -r -o '%i|%T|%r'``."""
    rows = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            rows.append(tuple(p.strip() for p in parts))
    return rows


def fits(request: dict, node: dict) -> bool:
    return (request.get("cpus", 1) <= node["cpus"] and request.get("mem_mb", 0) <= node["mem_mb"]
            and request.get("gpus", 0) <= node["gpus"])


def never_starts(jobs: list[tuple[str, str, str]], request: dict, nodes: list[dict]) -> tuple[str, str] | None:
    """(job id, reason) of a pending job that SLURM will never start, else None."""
    for job, state, reason in jobs:
        if state != "PENDING":
            continue
        reason = reason.strip("()")
        if reason in FATAL or (reason in IF_TOO_BIG and nodes and not any(fits(request, n) for n in nodes)):
            return job, reason
    return None


def describe(job: str, reason: str, request: dict, partition: str | None, nodes: list[dict]) -> str:
    return (f"hydra.launcher: SLURM will never start job {job} (pending reason {reason}), cancelled: "
            + _sizes(request, partition, nodes))


def _sizes(request: dict, partition: str | None, nodes: list[dict]) -> str:
    asked = f"{request.get('cpus', 1)} CPUs, {request.get('mem_mb', 0) / 1024:.3g} GB"
    asked += f", {request['gpus']} GPUs" if request.get("gpus") else ""
    asked += f", {request['timeout_min']} min" if request.get("timeout_min") else ""
    if nodes:
        best = max(nodes, key=lambda n: (n["cpus"], n["mem_mb"]))
        offer = (f"its largest node {best['node']} has {best['cpus']} CPUs, {best['mem_mb'] / 1024:.3g} GB"
                 + (f", {best['gpus']} GPUs" if best["gpus"] else "") + f" ({len(nodes)} nodes)")
    else:
        offer = "sinfo lists no nodes in it"
    return (f"each run asks for {asked} but partition {partition or '(default)'}: {offer}. Lower "
            "hydra.launcher.cpus_per_task/mem_gb/gpus_per_node/timeout_min to what sinfo shows, or pick another "
            "hydra.launcher.partition")


def _nodes(partition: str | None) -> tuple[str | None, list[dict]]:
    if partition is None:   # the default partition is marked with * by sinfo
        names = _run(["sinfo", "-h", "-o", "%P"]).split()
        partition = next((n.rstrip("*") for n in names if n.endswith("*")), None)
    return partition, parse_sinfo(_run(["sinfo", "-h", "-N", "-o", "%N %c %m %G", *(["-p", partition] if partition else [])]))


def request_of(params: dict) -> dict:
    """CPUs, memory (MB), GPUs and minutes per run from launcher keys (``mem_gb``, ``tasks_per_node``)
    or submitit's sbatch parameters (``mem: 16GB``, ``ntasks_per_node``, ``time``)."""
    tasks = int(params.get("ntasks_per_node") or params.get("tasks_per_node") or 1)
    if params.get("mem_gb") is not None:
        mem_mb = int(float(params["mem_gb"]) * 1024)
    else:
        text = str(params.get("mem") or "0").upper().rstrip("B")
        scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}.get(text[-1:], 1)
        mem_mb = int(float(text.rstrip("KMGT") or 0) * scale)
    gpus = str(params.get("gpus_per_node") or 0).split(":")[-1]
    return {"cpus": int(params.get("cpus_per_task") or 1) * tasks, "mem_mb": mem_mb,
            "gpus": int(gpus) if gpus.isdigit() else 0, "timeout_min": params.get("timeout_min") or params.get("time")}


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def watch(jobs, params: dict, poll_s: float = POLL_S) -> None:
    """Return once no task of ``jobs`` is pending; exit with one line if one never will start."""
    array = sorted({j.job_id.split("_")[0] for j in jobs})
    request = request_of(params)
    while True:
        rows = parse_squeue(_run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(array)]))
        if not any(state == "PENDING" for _, state, _ in rows):
            return
        partition, nodes = _nodes(params.get("partition"))
        stuck = never_starts(rows, request, nodes)
        if stuck is not None:
            _run(["scancel", *array])
            print(f"error: {describe(*stuck, request, partition, nodes)}", file=sys.stderr, flush=True)
            sys.exit(2)
        time.sleep(poll_s)


def refused(err: Exception, params: dict) -> str:
    """The one line for an sbatch that refuses the submission outright (a request no node has)."""
    partition, nodes = _nodes(params.get("partition"))
    why = [x for x in str(err).splitlines() if x.strip()][-1:] or [type(err).__name__]
    return f"hydra.launcher: sbatch refused the sweep ({why[0].strip()}): " + _sizes(request_of(params), partition, nodes)


def install() -> None:
    """Watch every SLURM array job this process submits through submitit (idempotent).

    Hydra accepts launchers only from the ``hydra_plugins`` package, so instead of a launcher of
    its own the sweep callback (``sofo_lab.cli.sweep.SweepSummary.on_multirun_start``, in the
    launching process) wraps ``submitit.AutoExecutor.map_array``: after submitting, ``watch``
    runs before hydra-submitit-launcher's ``job.results()`` starts waiting.
    """
    try:
        import submitit
    except ImportError:   # no SLURM extra: nothing submits
        return
    original = submitit.AutoExecutor.map_array
    if getattr(original, "_sofo_watch", False):
        return

    def map_array(executor, fn, *iterables):
        if executor.cluster != "slurm":
            return original(executor, fn, *iterables)
        params = dict(executor._executor.parameters)
        try:
            jobs = original(executor, fn, *iterables)
        except submitit.core.utils.FailedJobError as err:
            print(f"error: {refused(err, params)}", file=sys.stderr, flush=True)
            sys.exit(2)
        watch(jobs, params)
        return jobs

    map_array._sofo_watch = True
    submitit.AutoExecutor.map_array = map_array
