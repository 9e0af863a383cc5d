"""The sweep summary: one table of every run of a multirun, whatever launcher ran it.

``SweepSummary`` is a Hydra callback (registered under ``hydra.callbacks`` in conf/config.yaml).
After every job (``on_job_end``, which runs wherever the job runs: in-process for the basic
launcher, in the job's own process for submitit_local and SLURM) it records the job's status in
``<run dir>/job_status.json`` and rebuilds ``<sweep dir>/sweep_summary.{csv,json}`` under a file
lock, so the table is current even if the launching process dies; after the sweep
(``on_multirun_end``) it rebuilds it once more and prints one line of counts.

A row per run: job number, run directory, the sweep's overrides (one column per swept key), the
status (``completed``; ``diverged`` when the runner stopped on a non-finite loss; ``failed`` when
the job raised; ``missing`` when the run directory holds no result yet, e.g. a SLURM job still
queued, running or killed), the error line, iterations done, ``final/*`` metrics and ``profile/*``
numbers from the run's ``summary.json``. ``collect(sweep_dir)`` builds the same table from the
files alone (scripts/slurm/collect.py uses it after a cluster sweep).
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sofo_lab.train import per_optim
from sofo_lab.train.reporting import strict_json

SUMMARY = "sweep_summary"
JOB_STATUS = "job_status.json"
_FIRST = ("job", "status", "error", "iterations", "overrides", "run_dir")
_failures: dict[str, str] = {}   # run dir -> error line of a job that ended in an error it reported
_incomplete = False              # a sweep launched by this process ended with a run not completed


def sweep_incomplete() -> bool:
    """Whether a sweep this process launched ended with a run that did not complete (``sofo-run -m``
    then exits non-zero, whichever process ran the jobs)."""
    return _incomplete


def note_failure(err: Exception) -> float:
    """Record that this job failed with ``err`` (a value only the run could see: memory after
    compiling, a checkpoint of another config, a full disk), so that its row reads ``failed`` with
    the error line; the job itself returns normally (one line, no traceback). A divergence is not
    recorded: its summary.json says ``diverged``. Returns NaN, the failed job's return value."""
    from hydra.core.hydra_config import HydraConfig

    from sofo_lab.core.errors import RunFailed

    if type(err) is not RunFailed:
        try:
            _failures[str(HydraConfig.get().runtime.output_dir)] = _error_line(err)
        except ValueError:   # not inside a Hydra job
            pass
    return float("nan")


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:500]


def sweep_dir_of(hydra_cfg: DictConfig) -> Path | None:
    """The sweep directory when this job is one run of a multirun, else None.

    Decided from the paths (the run directory lies inside ``hydra.sweep.dir``), not from
    ``hydra.mode``: submitit composes each job's config in RUN mode.
    """
    try:
        out = Path(str(hydra_cfg.runtime.output_dir)).resolve()
        sweep = Path(str(hydra_cfg.sweep.dir)).resolve()
    except Exception:  # noqa: BLE001 - missing or unresolvable keys: not a sweep job
        return None
    return sweep if sweep in out.parents else None


def _flat(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif not isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = v
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(sweep_dir: Path, run_dir: Path) -> dict[str, Any]:
    overrides = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")) or []
    rel = run_dir.relative_to(sweep_dir)
    row: dict[str, Any] = {"job": str(rel), "status": "missing", "error": None, "iterations": None,
                           "overrides": " ".join(overrides), "run_dir": str(run_dir)}
    # +per_optim.<optim>.<key> only on that optimizer's rows, as optim.<key> (sofo_lab/train/per_optim.py)
    row.update({o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in per_optim.run_overrides(run_dir) if "=" in o})
    summary = _read_json(run_dir / "summary.json")
    job = _read_json(run_dir / JOB_STATUS)
    if summary is not None:
        row.update(status=summary.get("status"), error=summary.get("error"), iterations=summary.get("iterations"))
        row.update(_flat(summary.get("final") or {}, "final/"))
        row.update(_flat(summary.get("profile") or {}, "profile/"))
    if job is not None and job.get("status") == "failed":
        # the job raised: any summary.json is from an earlier attempt
        row.update(status="failed", error=job.get("error"))
    return row


def _job_key(row: dict):
    parts = row["job"].split(os.sep)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run directory (any folder below the sweep holding ``.hydra/overrides.yaml``)."""
    sweep_dir = Path(sweep_dir).resolve()
    runs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")
            if ".submitit" not in p.parts and p.parent.parent != sweep_dir]
    return sorted((_row(sweep_dir, r) for r in runs), key=_job_key)


def write_summary(sweep_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``sweep_summary.csv`` and ``sweep_summary.json``; returns the JSON content."""
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / f".{SUMMARY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = collect(sweep_dir)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        table = {"sweep_dir": str(sweep_dir), "n_runs": len(rows), "counts": counts, "runs": rows}
        columns = list(_FIRST) + sorted({k for r in rows for k in r} - set(_FIRST),
                                        key=lambda k: (k.startswith(("final/", "profile/")), k))
        _atomic(sweep_dir / f"{SUMMARY}.json", json.dumps(strict_json(table), indent=2, allow_nan=False) + "\n")
        tmp = sweep_dir / f".{SUMMARY}.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, sweep_dir / f"{SUMMARY}.csv")
    return table


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def describe(table: dict) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(table["counts"].items()))
    return f"Sweep summary: {table['n_runs']} runs ({counts or 'none'}) -> {table['sweep_dir']}/{SUMMARY}.csv"


class SweepSummary(Callback):
    """Writes ``sweep_summary.{csv,json}`` into the sweep directory (see module docstring)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        sweep_dir = sweep_dir_of(config.hydra)
        if sweep_dir is None:
            return
        from hydra.core.utils import JobStatus

        run_dir = Path(str(config.hydra.runtime.output_dir))
        failed = job_return.status == JobStatus.FAILED
        error = _error_line(job_return._return_value) if failed else _failures.pop(str(run_dir), None)
        failed = failed or error is not None
        _atomic(run_dir / JOB_STATUS, json.dumps({"status": "failed" if failed else "finished",
                                                  "error": error}) + "\n")
        try:
            write_summary(sweep_dir)
        except Exception as err:  # noqa: BLE001 - the summary must never fail a run
            print(f"warning: could not update the sweep summary: {err}", file=sys.stderr)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from sofo_lab.cli import slurm

        slurm.install()   # a SLURM job that can never start is cancelled, in one line (sofo_lab/cli/slurm.py)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        table = write_summary(str(config.hydra.sweep.dir))
        print(describe(table), file=sys.stderr, flush=True)
        from sofo_lab.analysis.compare import after_sweep

        after_sweep(str(config.hydra.sweep.dir))   # compare.png/.md/.csv; a failure is one warning line
        if any(r["status"] != "completed" for r in table["runs"]):
            global _incomplete
            _incomplete = True   # the jobs may have run in other processes (submitit): sofo-run exits 1
