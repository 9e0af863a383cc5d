"""A run as data: what it wrote (records) and what it trained (config, task, system and parameters).

    run = sofo_lab.load_run("outputs/reach-sofo/2026-...")
    batch = run.task.trials(angles=[0, 90, 180])          # chosen conditions (motor tasks)
    traj = sofo_lab.simulate(run.system, run.params, batch)   # every step's state and output
    run.history[-1], run.summary["final"]                 # what it logged (metrics.jsonl, summary.json)

One ``Run`` and one ``load_run`` for the library, ``sofo-analyze`` and ``sofo-compare``. The trained
pieces are rebuilt from ``<run dir>/.hydra/config.yaml`` by the same ``sofo_lab.train.assemble.build``
the runner uses (so a run of a user's own task loads too, as long as its module imports), and the
parameters from the verified checkpoint ``checkpoints/last.pkl`` (or ``prev.pkl``), or from
``checkpoints/params.npz`` alone when only that was kept. ``load_run(path, build=False)`` reads the
records only (no JAX, no import of the task): ``sofo-compare`` reads hundreds of runs, some of tasks
that do not import here, some still running or killed. Guide: docs/library.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sofo_lab.core.errors import ConfigError
from sofo_lab.train import checkpoint, per_optim

CONFIG = ".hydra/config.yaml"
GROUP_CHOICES = ("task", "model", "optim", "experiment")


@dataclass
class Run:
    path: Path
    config: DictConfig | None   # the run's composed config as Hydra saved it (None: records-only, none saved)
    task: Any = None            # the task object (sample, eval_batch, evaluate, plot; trials for the motor tasks)
    model: Any = None           # the network alone (None for a task without one)
    system: Any = None          # what was trained: the model, or the model in closed loop with the arm
    params: Any = None          # the trained parameters, a pytree of numpy arrays
    iteration: int | None = None   # updates behind these parameters (None when only params.npz was read)
    # --- what the run wrote (read always, built or not) ---
    history: list = field(default_factory=list)        # metrics.jsonl, one dict per logged iteration
    summary: dict | None = None                        # summary.json (None: running, or killed)
    choices: dict = field(default_factory=dict)        # config-group choices: task, model, optim, experiment
    overrides: dict = field(default_factory=dict)      # effective overrides, +per_optim applied (per_optim.py)
    settings: dict = field(default_factory=dict)       # the config flat ("optim.lr"), unresolved, per_optim applied
    seed: object = None

    @property
    def task_name(self) -> str:
        """The task's config-group choice, else its class's name in lower case, else "task"."""
        target = str(self.settings.get("task._target_") or "")
        return str(self.choices.get("task") or target.rsplit(".", 1)[-1].lower() or "task")

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status") or "unfinished"   # no summary.json: running, or killed


def read_yaml(path: Path):
    """A YAML file as plain containers, interpolations unresolved; None when missing or torn."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:   # noqa: BLE001 - a torn or missing file: treat as absent
        return None


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _records(path: Path) -> dict:
    """What the run wrote, each file optional: metrics, summary, choices, effective overrides, settings."""
    summary = None
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):   # a run still going (or killed) has no summary yet: read its metrics only
        pass
    history = []
    try:
        lines = (path / "metrics.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            history.append(json.loads(line))
        except ValueError:   # a line cut by a killed job
            pass
    hydra = read_yaml(path / ".hydra" / "hydra.yaml") or {}
    runtime = (hydra.get("hydra") or {}).get("runtime") or {}
    choices = dict(runtime.get("choices") or (summary or {}).get("choices") or {})
    choices = {k: v for k, v in choices.items() if k in GROUP_CHOICES and v is not None}
    optim = choices.get("optim")
    overrides = {}
    for o in per_optim.effective_overrides(read_yaml(path / ".hydra" / "overrides.yaml") or [], optim):
        key, _, value = o.partition("=")
        overrides[key.lstrip("+~")] = value
    settings = _flatten(read_yaml(path / CONFIG) or {})
    for k in [k for k in settings if k.startswith(per_optim.KEY + ".")]:
        parts = k.split(".")
        if len(parts) > 2 and parts[1] == optim:
            settings["optim." + ".".join(parts[2:])] = settings[k]
        del settings[k]
    seed = overrides.get("seed", settings.get("seed"))
    return {"history": history, "summary": summary, "choices": choices, "overrides": overrides,
            "settings": settings, "seed": seed}


def load_run(run_dir, *, build: bool = True) -> Run:
    """Load the run in ``run_dir`` (a directory ``sofo-run`` wrote, with ``.hydra/config.yaml``, a
    checkpoint and its metrics). ``build=False``: its records only (``task`` and the trained pieces
    None). Raises ``ConfigError`` naming what is missing."""
    path = Path(run_dir)
    records = _records(path)
    if not build:
        config = OmegaConf.load(path / CONFIG) if read_yaml(path / CONFIG) is not None else None
        return Run(path, config, **records)
    from sofo_lab.train.assemble import build as build_setup

    if not (path / CONFIG).is_file():
        raise ConfigError("run_dir", str(path), f"has no {CONFIG}: pass a directory written by sofo-run "
                          "(the 'Run directory:' it printed)")
    cfg = OmegaConf.load(path / CONFIG)
    setup = build_setup(cfg)
    npz = (path / checkpoint.CHECKPOINT).parent / checkpoint.PARAMS_NPZ
    saved = checkpoint.load(path, quiet=True)
    if saved is not None:
        params, iteration = saved["state"].params, int(saved["state"].iteration)
    elif npz.is_file():
        import jax

        params, iteration = checkpoint.load_params_npz(npz, jax.eval_shape(setup.system.init_params,
                                                                          jax.random.PRNGKey(0))), None
    else:
        raise ConfigError("run_dir", str(path), f"has no checkpoint yet ({npz.parent}/ is empty): the run "
                          "saves one every checkpoint_every iterations and at its end")
    return Run(path, cfg, setup.task, setup.model, setup.system, params, iteration, **records)
