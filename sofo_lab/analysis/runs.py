"""A trained run as data: its config, task, system and parameters, for analysis.

    run = sofo_lab.load_run("outputs/reach-sofo/2026-...")
    batch = run.task.trials(angles=[0, 90, 180])          # chosen conditions (motor tasks)
    traj = sofo_lab.simulate(run.system, run.params, batch)   # every step's state and output

The pieces are rebuilt from ``<run dir>/.hydra/config.yaml`` by the same ``sofo_lab.train.assemble.build``
the runner uses (so a run of a user's own task loads too, as long as its module imports), and the
parameters from the verified checkpoint ``checkpoints/last.pkl`` (or ``prev.pkl``), or from
``checkpoints/params.npz`` alone when only that was kept. Guide: docs/library.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
from omegaconf import DictConfig, OmegaConf

from sofo_lab.core.errors import ConfigError
from sofo_lab.train import checkpoint

CONFIG = ".hydra/config.yaml"


class Run(NamedTuple):
    config: DictConfig     # the run's composed config (as Hydra saved it)
    task: Any              # the task object (sample, eval_batch, evaluate, plot; trials for the motor tasks)
    model: Any             # the network alone (None for a task without one)
    system: Any            # what was trained: the model, or the model in closed loop with the arm
    params: Any            # the trained parameters, a pytree of numpy arrays
    iteration: int | None  # updates behind these parameters (None when only params.npz was read)
    path: Path


def load_run(run_dir) -> Run:
    """Load the run in ``run_dir`` (a directory ``sofo-run`` wrote, with ``.hydra/config.yaml`` and a
    checkpoint). Raises ``ConfigError`` naming what is missing."""
    from sofo_lab.train.assemble import build

    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise ConfigError("run_dir", str(path), f"has no {CONFIG}: pass a directory written by sofo-run "
                          "(the 'Run directory:' it printed)")
    cfg = OmegaConf.load(path / CONFIG)
    setup = build(cfg)
    like = jax.eval_shape(setup.system.init_params, jax.random.PRNGKey(0))
    npz = (path / checkpoint.CHECKPOINT).parent / checkpoint.PARAMS_NPZ
    saved = checkpoint.load(path, quiet=True)
    if saved is not None:
        params, iteration = saved["state"].params, int(saved["state"].iteration)
    elif npz.is_file():
        params, iteration = checkpoint.load_params_npz(npz, like), None
    else:
        raise ConfigError("run_dir", str(path), f"has no checkpoint yet ({npz.parent}/ is empty): the run "
                          "saves one every checkpoint_every iterations and at its end")
    return Run(cfg, setup.task, setup.model, setup.system, params, iteration, path)
