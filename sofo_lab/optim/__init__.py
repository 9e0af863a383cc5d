"""Optimizers: each owns its time loop and hands the parameter step to an optax transform.

Each optimizer's YAML (conf/optim/*.yaml) names its ``from_config`` factory with ``_target_``;
the engine calls it with ``system``, ``iterations``, ``n_steps``, ``episodic`` and the YAML's keys.
"""
from sofo_lab.optim.base import Optimizer

__all__ = ["Optimizer"]
