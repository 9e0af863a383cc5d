"""Optimizers: each owns its time loop and hands the parameter step to an optax transform.

``OPTIMIZERS`` maps ``optim.name`` to the module that defines ``from_config``.
"""
import importlib

from sofo_lab.optim.base import Optimizer

OPTIMIZERS = {
    "adam": "sofo_lab.optim.bptt",
    "sofo": "sofo_lab.optim.sofo",
    "fgd": "sofo_lab.optim.fgd",
    "tbptt": "sofo_lab.optim.tbptt",
    "uoro": "sofo_lab.optim.uoro",
    "rtrl": "sofo_lab.optim.rtrl",
}


def build_optimizer(cfg_optim, system, *, episodic: bool, iterations: int, n_steps: int) -> Optimizer:
    """Build the optimizer named by ``cfg_optim.name`` for ``system``."""
    from sofo_lab.errors import ConfigError

    name = cfg_optim.name
    if name not in OPTIMIZERS:
        raise ConfigError("optim.name", name, f"choose one of {sorted(OPTIMIZERS)}")
    module = importlib.import_module(OPTIMIZERS[name])
    return module.from_config(cfg_optim, system, episodic=episodic, iterations=iterations,
                              n_steps=n_steps)


__all__ = ["OPTIMIZERS", "Optimizer", "build_optimizer"]
