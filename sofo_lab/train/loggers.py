"""Where a run's records go besides ``metrics.jsonl``: a list of loggers built from ``conf/logger/``.

The Trainer writes ``metrics.jsonl`` itself (sofo_lab/train/callbacks.py: ``MetricsFile``; resume
reads it back) and hands the same records to every logger of the run. A logger is any object with
three methods (``Logger``); its config names its class with ``_target_``, as task, model and
optim configs do, so a logger of the user's own (CSV, TensorBoard, MLflow) needs a YAML file in
their ``--config-dir`` and no change here (docs/library.md)::

    # my_conf/logger/csv.yaml                  sofo-run --config-dir my_conf logger=csv
    _target_: mylab.loggers.CsvLogger
    filename: metrics.csv

``cfg.logger`` is one such config (``logger=wandb logger.mode=online``), nothing (``logger=none``),
or several named ones, composed as in lightning-hydra-template::

    # my_conf/logger/wandb_csv.yaml            sofo-run --config-dir my_conf logger=wandb_csv
    defaults:
      - wandb@wandb
      - csv@csv

``instantiate`` builds the list in the pre-check (every key checked against the class's
signature, before anything is written); a logger does nothing until ``start``.

wandb never takes a run down: if it cannot start (no API key for online mode, no network,
service crash) the run falls back to offline mode, then to local files only, with a warning.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple, Protocol

from sofo_lab.core.errors import ConfigError

WANDB_MODES = ("online", "offline", "disabled")


class RunInfo(NamedTuple):
    """What a logger is told when the run starts."""

    run_dir: Path
    config: dict                # the resolved config (plain containers)
    choices: dict               # Hydra's group choices, e.g. {"task": "reach", "optim": "sofo"}
    resumed_from: int | None    # the iteration a resumed run starts from; None for a fresh run
    sweep: str | None           # the sweep directory's name in a multirun, else None


class Logger(Protocol):
    """A destination for a run's records. Records are flat dicts: ``iteration``, ``time_s`` and
    ``train/<metric>`` / ``eval/<metric>`` numbers, as in metrics.jsonl (a non-finite number is
    ``None``)."""

    def start(self, run: RunInfo) -> None:
        """Before the first record; a resumed run starts again (``run.resumed_from``)."""

    def log(self, record: dict) -> None:
        """One record per logged iteration."""

    def finish(self, summary: dict) -> str | None:
        """At the end (``summary`` as in summary.json: status, final, profile, plots by name,
        run_dir); return a line for the run's printed result, or None."""


def instantiate(node) -> list:
    """The loggers ``cfg.logger`` names: none (null or empty), one (a ``_target_``) or several
    (named entries with a ``_target_`` each; an entry set to null is off). Each is built by
    ``assemble.instantiate_node``: an unknown key or a bad value is a one-line ``ConfigError``."""
    from sofo_lab.train.assemble import instantiate_all

    return instantiate_all(node, "logger")


def wandb_mode(mode):
    """The wandb mode a run uses: ``mode``, else ``WANDB_MODE``, else offline; a one-line error for
    any other value."""
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ConfigError("logger.mode", mode, f"choose one of {list(WANDB_MODES)} or null "
                                                   "(null: WANDB_MODE if set, else offline)")
        return mode
    env = os.environ.get("WANDB_MODE") or "offline"
    if env not in WANDB_MODES:
        raise ConfigError("WANDB_MODE", env, f"choose one of {list(WANDB_MODES)}, or unset it, or pass logger.mode=...")
    return env


def quiet_settings(wandb):
    """wandb without console output: no banner, no 'set WANDB_MODE=online' hint (sofo-run says
    which mode the run is in), no sparkline summary, no capture of the console. The records (metrics,
    summary, images) are unchanged. ``WANDB_SILENT=false`` brings wandb's own lines back."""
    loud = os.environ.get("WANDB_SILENT", "").lower() in ("false", "0", "no")
    if loud:
        return wandb.Settings()
    return wandb.Settings(console="off", silent=True, quiet=True, show_info=False, show_warnings=False)


def _text(key: str, value) -> str | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ConfigError(f"logger.{key}", value, "must be a string or null")
    return None if value is None else str(value)


class WandbLogger:
    """A wandb run inside the run directory (conf/logger/wandb.yaml). ``mode`` null: ``WANDB_MODE``
    if set, else offline (no account needed; ``wandb sync`` uploads it later). Quiet by default
    (``quiet_settings``). In a multirun, ``group`` null groups the sweep's runs by the sweep
    directory's name. Every value is checked here, before the run starts."""

    def __init__(self, mode: str | None = None, project: str | None = "sofo-lab", entity: str | None = None,
                 group: str | None = None, tags=(), run_name: str | None = None, run_id: str | None = None):
        self.mode = wandb_mode(mode)
        self.project, self.entity, self.group = _text("project", project), _text("entity", entity), _text("group", group)
        self.run_name, self.run_id = _text("run_name", run_name), _text("run_id", run_id)
        if tags is None:
            tags = []
        if not isinstance(tags, (list, tuple)) or not all(
                isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags):
            raise ConfigError("logger.tags", tags, "must be a list of strings, e.g. logger.tags=[sofo,reach]")
        self.tags = [str(t) for t in tags]
        self.run = self.directory = None

    def start(self, run: RunInfo) -> None:
        import wandb

        self.wandb = wandb
        kwargs = dict(dir=str(run.run_dir), project=self.project or "sofo-lab", entity=self.entity,
                      group=self.group or run.sweep, tags=self.tags, name=self.run_name,
                      config={**run.config, "choices": run.choices},
                      reinit="finish_previous", id=self.run_id, resume="allow", settings=quiet_settings(wandb))
        for attempt in dict.fromkeys([self.mode, "offline"]):
            try:
                self.run = wandb.init(mode=attempt, **kwargs)
                self.mode = attempt
                break
            except Exception as err:   # noqa: BLE001 - any wandb failure must not lose the run
                warnings.warn(f"wandb could not start in {attempt} mode ({type(err).__name__}: {err}); "
                              "falling back", stacklevel=2)
        if self.run is None:
            warnings.warn("wandb is off for this run; metrics are still in metrics.jsonl", stacklevel=2)
        self.directory = getattr(self.run, "dir", None)

    def _safe(self, fn, *args, **kwargs):
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"wandb failed ({type(err).__name__}: {err}); continuing with local logs only",
                          stacklevel=3)
            self.run = None

    def log(self, record: dict) -> None:
        data = {k: v for k, v in record.items() if k != "iteration" and isinstance(v, (int, float))}
        self._safe(self.run.log if self.run else None, data, step=record.get("iteration"))

    def finish(self, summary: dict) -> str | None:
        run_dir = Path(summary["run_dir"])
        if self.run is not None and summary.get("plots"):
            self._safe(self.run.log, {Path(p).stem: self.wandb.Image(str(run_dir / p)) for p in summary["plots"]})

        def flat(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{prefix}{k}/")
                elif v is not None:
                    yield f"{prefix}{k}", v
        if self.run is not None:
            keys = ("final", "profile", "status")
            self._safe(self.run.summary.update, dict(flat({k: summary[k] for k in keys})))
            self._safe(self.run.finish, exit_code=0 if summary["status"] == "completed" else 1)
            self.run = None
        if self.directory is None:
            return None
        where = Path(self.directory).parent
        return (f"wandb: offline run; upload it with: wandb sync {where}" if self.mode == "offline"
                else f"wandb: {self.mode} run in {where}")
