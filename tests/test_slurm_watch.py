"""SLURM jobs that can never start (README, "What goes wrong"): sofo_lab.cli.slurm reads squeue/sinfo,
decides which pending reasons never resolve for the request, and cancels the sweep with one line."""
from __future__ import annotations

import pytest

SINFO = "node1 2 3900 (null)\nnode2 2 3900 gpu:1\n"


def test_slurm_pending_reasons_that_never_resolve():
    from sofo_lab.cli import slurm

    nodes = slurm.parse_sinfo(SINFO)
    assert nodes == [{"node": "node1", "cpus": 2, "mem_mb": 3900, "gpus": 0},
                     {"node": "node2", "cpus": 2, "mem_mb": 3900, "gpus": 1}]
    big = slurm.request_of({"cpus_per_task": 4, "mem_gb": 16, "timeout_min": 240})
    small = slurm.request_of({"cpus_per_task": 1, "mem_gb": 1})
    queue = slurm.parse_squeue("123_0|PENDING|PartitionConfig\n123_1|PENDING|PartitionConfig\n")
    assert slurm.never_starts(queue, big, nodes) == ("123_0", "PartitionConfig")
    too_big = slurm.parse_squeue("7_0|PENDING|ReqNodeNotAvail\n7_1|RUNNING|None\n")
    assert slurm.never_starts(too_big, big, nodes) == ("7_0", "ReqNodeNotAvail")
    assert slurm.never_starts(too_big, small, nodes) is None          # a node fits: it will start
    waiting = slurm.parse_squeue("8_0|PENDING|Resources\n8_1|PENDING|Priority\n8_2|PENDING|JobArrayTaskLimit\n")
    assert slurm.never_starts(waiting, small, nodes) is None
    assert slurm.never_starts(waiting, big, nodes) == ("8_0", "Resources")
    line = slurm.describe("123_0", "PartitionConfig", big, "debug", nodes)
    assert "4 CPUs, 16 GB" in line and "2 CPUs, 3.81 GB" in line and "partition debug" in line
    assert "hydra.launcher.cpus_per_task" in line and "\n" not in line


def test_slurm_watch_cancels_a_job_that_never_starts(monkeypatch, capsys):
    from sofo_lab.cli import slurm

    calls = []

    def fake(cmd):
        calls.append(cmd)
        return {"squeue": "55_0|PENDING|PartitionConfig\n", "sinfo": SINFO}.get(cmd[0], "")

    monkeypatch.setattr(slurm, "_run", fake)
    job = type("Job", (), {"job_id": "55_0"})()
    with pytest.raises(SystemExit) as exit_:
        slurm.watch([job], {"cpus_per_task": 4, "mem_gb": 16, "partition": "debug"}, poll_s=0)
    assert exit_.value.code == 2
    assert ["scancel", "55"] in calls and ["sinfo", "-h", "-N", "-o", "%N %c %m %G", "-p", "debug"] in calls
    assert capsys.readouterr().err.startswith("error: hydra.launcher: SLURM will never start job 55_0")
