"""Optimizers: each owns its time loop and hands the parameter step to an optax transform.

Each optimizer's YAML (conf/optim/*.yaml) names its ``from_config`` factory with ``_target_``;
the build calls it with ``system``, the YAML's keys and those of ``iterations``, ``batch_size``,
``n_steps`` and ``episodic`` that it names as arguments (sofo_lab/train/assemble.py,
``optim_runtime``). ``from_config`` hands the keys to the method's factory (``sofo.sofo``,
``uoro.uoro``, ...), the one the library (sofo_lab/library.py) calls too: each value is checked
once, there, named as the caller spells it (``checks.named``). ``init(params)`` reads P and
every shape from ``params``.
"""
from sofo_lab.optim.base import Optimizer

__all__ = ["Optimizer"]
