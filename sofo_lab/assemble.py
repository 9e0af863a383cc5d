"""Turn a composed config into the pieces of a run, validating every value on the way.

``build`` is used twice: by the CLI before Hydra starts (so a bad value fails in one line
before any run directory or SLURM job exists) and by the runner itself.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from sofo_lab.errors import ConfigError
from sofo_lab.models import MODELS
from sofo_lab.optim import build_optimizer
from sofo_lab.tasks import task_class

RUN_INTS = ("iterations", "batch_size", "log_every", "eval_every", "checkpoint_every")


class Setup(NamedTuple):
    task: Any
    model: Any
    system: Any
    optimizer: Any
    eval_batch_size: int


def positive_int(cfg, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "must be a positive integer")
    return value


def _kwargs(node: DictConfig, group: str) -> dict:
    if not isinstance(node, DictConfig) or "name" not in node:
        raise ConfigError(group, node, f"pick a {group} config with {group}=<name>")
    kwargs = OmegaConf.to_container(node, resolve=True)
    kwargs.pop("name")
    return kwargs


def _construct(cls, kwargs: dict, group: str):
    try:
        return cls(**kwargs)
    except TypeError as err:   # a key the constructor does not know: name it
        raise ConfigError(group, sorted(kwargs), f"{cls.__name__} rejected these keys ({err})") from None


def build(cfg: DictConfig) -> Setup:
    for key in RUN_INTS:
        positive_int(cfg, key)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError("seed", cfg.seed, "must be a non-negative integer")
    batch_size = cfg.batch_size
    eval_batch_size = cfg.get("eval_batch_size") or batch_size
    if cfg.get("eval_batch_size") is not None:
        positive_int(cfg, "eval_batch_size")

    task = _construct(task_class(cfg.task.name), _kwargs(cfg.task, "task"), "task")
    task.check_batch_size(batch_size)

    model = None
    if task.needs_model:
        kwargs = _kwargs(cfg.model, "model")
        name = cfg.model.name
        if name not in MODELS:
            raise ConfigError("model.name", name, f"choose one of {sorted(MODELS)}")
        model = _construct(MODELS[name], dict(n_inputs=task.model_n_inputs, n_outputs=task.model_n_outputs, **kwargs),
                           "model")
    system = task.make_system(model)
    optimizer = build_optimizer(cfg.optim, system, episodic=task.episodic, iterations=cfg.iterations,
                                n_steps=task.n_steps)
    return Setup(task, model, system, optimizer, eval_batch_size)
