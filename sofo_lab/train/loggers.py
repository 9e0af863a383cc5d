"""Where metrics go: ``metrics.jsonl`` always, and wandb (offline by default) when enabled.

wandb never takes a run down: if it cannot start (no API key for online mode, no network,
service crash) the run falls back to offline mode, then to local files only, with a warning.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from pathlib import Path

from sofo_lab.core.errors import ConfigError

LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
# the keys each logger reads (conf/logger/<name>.yaml); any other is refused before the run starts
LOGGER_KEYS = {"none": ("name",),
               "wandb": ("name", "mode", "project", "entity", "group", "tags", "run_name", "run_id")}


def wandb_mode(mode):
    """The wandb mode a run uses: ``logger.mode``, else ``WANDB_MODE``, else offline; a one-line
    error for any other value."""
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ConfigError("logger.mode", mode, f"choose one of {list(WANDB_MODES)} or null "
                                                   "(null: WANDB_MODE if set, else offline)")
        return mode
    env = os.environ.get("WANDB_MODE") or "offline"
    if env not in WANDB_MODES:
        raise ConfigError("WANDB_MODE", env, f"choose one of {list(WANDB_MODES)}, or unset it, or pass logger.mode=...")
    return env


def check_config(cfg_logger) -> None:
    """Every key of ``cfg.logger`` the logger reads, checked before anything is written: the
    logger's name, each key's type and wandb's mode; a key no logger reads is refused."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not isinstance(cfg_logger, (dict, DictConfig)):
        raise ConfigError("logger", cfg_logger, f"pick a logger with logger=<name>, one of {list(LOGGERS)}")
    name = cfg_logger.get("name")
    if name not in LOGGERS:
        raise ConfigError("logger.name", name, f"choose one of {list(LOGGERS)} (or logger=<name>)")
    known = LOGGER_KEYS[name]
    for key in cfg_logger:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean logger.{close[0]}?)" if close else ""
            raise ConfigError(f"logger.{key}", cfg_logger[key], f"unknown key: nothing reads it{hint}; fix the name "
                                                                 f"or drop it; logger={name} reads {list(known)}")
    if name != "wandb":
        return
    wandb_mode(cfg_logger.get("mode"))
    for key in ("project", "entity", "group", "run_name", "run_id"):
        value = cfg_logger.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ConfigError(f"logger.{key}", value, "must be a string or null")
    tags = cfg_logger.get("tags")
    if isinstance(tags, ListConfig):
        tags = OmegaConf.to_container(tags)
    if tags is not None and (not isinstance(tags, list) or not all(
            isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags)):
        raise ConfigError("logger.tags", tags, "must be a list of strings, e.g. logger.tags=[sofo,reach]")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None   # strict JSON: a non-finite number is null
    return value


def _record(line: str) -> dict:
    """One line of metrics.jsonl, or {} for a line torn by a kill mid-write (it is recomputed)."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class JsonlLogger:
    """One JSON object per logged iteration in ``metrics.jsonl``."""

    def __init__(self, run_dir: Path, resume_iteration: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_iteration is not None and self.path.exists():
            # Drop lines written after the checkpoint we resume from: they will be recomputed.
            kept = [line for line in self.path.read_text().splitlines()
                    if _record(line).get("iteration", resume_iteration + 1) <= resume_iteration]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")

    def log(self, record: dict):
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def quiet_settings(wandb):
    """wandb without console output: no banner, no 'set WANDB_MODE=online' hint (sofo-run says
    which mode the run is in), no sparkline summary, no capture of the console. The records (metrics,
    summary, images) are unchanged. ``WANDB_SILENT=false`` brings wandb's own lines back."""
    loud = os.environ.get("WANDB_SILENT", "").lower() in ("false", "0", "no")
    if loud:
        return wandb.Settings()
    return wandb.Settings(console="off", silent=True, quiet=True, show_info=False, show_warnings=False)


class WandbLogger:
    """A wandb run inside the run directory. ``mode`` null means: respect ``WANDB_MODE``, else offline.
    Quiet by default (``quiet_settings``)."""

    def __init__(self, cfg_logger, run_dir: Path, config: dict, choices: dict):
        import wandb

        self.wandb = wandb
        check_config(cfg_logger)
        mode = wandb_mode(cfg_logger.get("mode"))

        def text(key):
            value = cfg_logger.get(key)
            return None if value is None else str(value)

        kwargs = dict(dir=str(run_dir), project=text("project") or "sofo-lab",
                      entity=text("entity"), group=text("group"),
                      tags=[str(t) for t in cfg_logger.get("tags") or []], name=text("run_name"),
                      config={**config, "choices": choices},
                      reinit="finish_previous", id=text("run_id"), resume="allow",
                      settings=quiet_settings(wandb))
        self.run = None
        for attempt in dict.fromkeys([mode, "offline"]):
            try:
                self.run = wandb.init(mode=attempt, **kwargs)
                self.mode = attempt
                break
            except Exception as err:   # noqa: BLE001 - any wandb failure must not lose the run
                warnings.warn(f"wandb could not start in {attempt} mode ({type(err).__name__}: {err}); "
                              "falling back", stacklevel=2)
        if self.run is None:
            warnings.warn("wandb is off for this run; metrics are still in metrics.jsonl", stacklevel=2)

    def _safe(self, fn, *args, **kwargs):
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"wandb failed ({type(err).__name__}: {err}); continuing with local logs only",
                          stacklevel=3)
            self.run = None

    def log(self, record: dict):
        step = record.get("iteration")
        data = {k: v for k, v in record.items() if k != "iteration" and isinstance(v, (int, float))}
        self._safe(self.run.log if self.run else None, data, step=step)

    def images(self, paths, step=None):
        if self.run is None:
            return
        self._safe(self.run.log, {Path(p).stem: self.wandb.Image(str(p)) for p in paths}, step=step)

    def summary(self, summary: dict):
        def flat(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{prefix}{k}/")
                elif v is not None:
                    yield f"{prefix}{k}", v
        if self.run is not None:
            self._safe(self.run.summary.update, dict(flat(summary)))

    @property
    def directory(self):
        return getattr(self.run, "dir", None) if self.run is not None else None

    def close(self, exit_code: int = 0):
        if self.run is not None:
            self._safe(self.run.finish, exit_code=exit_code)
            self.run = None
