"""Turn a composed config into the pieces of a run, validating every value on the way.

Each ``task``, ``model`` and ``optim`` config names what it builds with Hydra's ``_target_``
(conf/task/reach.yaml: ``_target_: sofo_lab.tasks.reach.Reach``); ``build`` instantiates it with
``hydra.utils.instantiate``, so a user's own class from their own files (``--config-dir``,
docs/library.md) is built exactly as a built-in one. What the engine adds at build time:

- model: ``n_inputs``, ``n_outputs`` from the task, and the task's ``model_settings()`` (e.g. the
  reach's ``dt``, ``tau`` and private noise) for every such key the model's YAML leaves ``null``;
- optim: ``system``, and of the run's ``iterations``, ``batch_size`` and the task's ``n_steps`` and
  ``episodic`` those its factory takes (``optim_runtime``): a factory receives only what it uses.

``build`` runs once per run, in ``trainer.prepare``: for sofo-run, in the pre-check before Hydra
starts (so a bad value fails in one line before any run directory or SLURM job exists); a job
that Hydra runs in this process trains what it built.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os
import warnings
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from sofo_lab.core.errors import ConfigError

RUN_INTS = ("iterations", "batch_size", "log_every", "eval_every", "checkpoint_every", "steps_per_dispatch")
RUN_BOOLS = ("resume", "plots", "progress")
# A discrete-time model (GRU, LSTM) steps once per task step: it needs no dt or time constant,
# so dropping these task settings changes nothing the task defines and goes unannounced.
TIME_SETTINGS = ("dt", "tau")
# a model with an initialization of its own (gru, lstm) ignores the task's init settings silently
INIT_SETTINGS = ("learn_init_state", "rec_gain", "readout_scale", "weight_scaling")


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


def locate(target, key: str):
    """The class or factory a ``_target_`` names (``hydra.utils.get_object``), or a one-line error."""
    from hydra.utils import get_object

    if not isinstance(target, str) or not target:
        raise ConfigError(key, target, "must be the dotted path of a class or factory, e.g. mylab.flipflop.FlipFlop")
    log = logging.getLogger("hydra.utils")
    disabled, log.disabled = log.disabled, True   # get_object logs the error that we report in one line
    try:
        return get_object(target)
    except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        raise ConfigError(key, target, f"cannot be imported ({reason}); its module must be importable: on "
                                       "PYTHONPATH, installed, or in the working directory") from err
    finally:
        log.disabled = disabled


def accepted_keys(obj) -> set[str] | None:
    """The keyword arguments ``obj`` (a class or function) takes; None when it takes any (``**kwargs``
    all the way up the class hierarchy)."""
    functions = [vars(c)["__init__"] for c in obj.__mro__ if "__init__" in vars(c)] if isinstance(obj, type) else [obj]
    names: set[str] = set()
    for fn in functions:
        if fn is object.__init__:
            return names
        params = inspect.signature(fn).parameters
        names |= {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def _node(cfg: DictConfig, group: str) -> DictConfig:
    node = cfg.get(group)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(group, None if node is None else OmegaConf.to_container(node),
                          f"pick a {group} config with {group}=<name>; a config of your own names its class "
                          f"with _target_ (docs/library.md)")
    return node


def instantiate(cfg: DictConfig, group: str, **runtime):
    """``hydra.utils.instantiate(cfg.<group>, **runtime)``, every failure a one-line ``ConfigError``."""
    return instantiate_node(_node(cfg, group), group, **runtime)


def instantiate_node(node, key: str, **runtime):
    """``hydra.utils.instantiate(node, **runtime)`` for the config at ``key`` (``task``,
    ``logger.wandb``): its ``_target_`` importable, every key one that the class takes (the closest
    named when not), every failure a one-line ``ConfigError``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    if not isinstance(node, DictConfig):
        node = OmegaConf.create(node)
    target = node._target_
    obj = locate(target, f"{key}._target_")
    keys = [k for k in node.keys() if not (k.startswith("_") and k.endswith("_"))]
    accepted = accepted_keys(obj) if callable(obj) else None
    if accepted is not None:
        unknown = [k for k in keys if k not in accepted]
        if unknown:
            allowed = sorted(accepted - set(runtime))
            close = difflib.get_close_matches(str(unknown[0]), allowed, n=1)
            hint = f" (did you mean {key}.{close[0]}?)" if close else ""
            raise ConfigError(f"{key}.{unknown[0]}", OmegaConf.select(node, str(unknown[0])),
                              f"unknown key{hint}; {target} takes {allowed}")
    try:
        return hydra_instantiate(node, **runtime, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause.with_traceback(None) from None
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
        raise ConfigError(key, target, f"could not be built ({reason.splitlines()[0]}); "
                                       "HYDRA_FULL_ERROR=1 shows the traceback") from err


def instantiate_all(node, key: str) -> list:
    """The objects a config names: none (null or empty), one (a ``_target_``) or several (named
    entries with a ``_target_`` each, as in lightning-hydra-template; an entry set to null is off).
    ``key`` (``logger``, ``callbacks``) names them in messages."""
    if node is None or (isinstance(node, (dict, DictConfig)) and len(node) == 0):
        return []
    if not isinstance(node, (dict, DictConfig)):
        raise ConfigError(key, node, f"pick with {key}=<name> (conf/{key}/), or a config of named _target_ entries")
    if "_target_" in node:
        return [instantiate_node(node, key)]
    built = []
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, (dict, DictConfig)) or "_target_" not in entry:
            raise ConfigError(f"{key}.{name}", entry, "each named entry needs a _target_ (its class), or null")
        built.append(instantiate_node(entry, f"{key}.{name}"))
    return built


def _model(cfg: DictConfig, task, choice: str | None):
    """The model, given the task's sizes and the task's ``model_settings()``.

    A model key left ``null`` (conf/model/rnn.yaml: ``dt``, ``tau``, ``noise_amplitude``) takes the
    task's setting of that name, else the model's own default (its signature). A non-time setting
    the model cannot take (the reach's private noise with model=gru) is announced in one warning.
    """
    node = _node(cfg, "model")
    obj = locate(node._target_, "model._target_")
    accepted = accepted_keys(obj)
    settings = task.model_settings()
    plain = OmegaConf.to_container(node, resolve=True)
    runtime = {}
    for key, value in settings.items():
        if key in plain:
            if plain[key] is None:
                plain[key] = value
        elif accepted is None or key in accepted:
            runtime[key] = value
        elif key not in TIME_SETTINGS + INIT_SETTINGS and value:
            warnings.warn(f"model={choice or node._target_} has no {key}: the task's {key}={value} is not applied "
                          f"(a model that takes {key}, e.g. model=rnn, applies it)", stacklevel=2)
    defaults = _signature_defaults(obj)
    for key in [k for k, v in plain.items() if v is None and k in defaults]:
        del plain[key]   # null and not set by the task: the model's own default
    return instantiate({"model": OmegaConf.create(plain)}, "model", n_inputs=task.model_n_inputs,
                       n_outputs=task.model_n_outputs, **runtime)


def _signature_defaults(obj) -> dict:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {}
    return {n: p.default for n, p in params.items() if p.default is not p.empty}


def optim_runtime(cfg: DictConfig, task) -> dict:
    """What the build gives the optimizer's factory besides the YAML's keys: those of the run's
    ``iterations``, ``batch_size`` and the task's ``n_steps``, ``episodic`` that the factory names
    as arguments (its ``**kwargs``, the optax keys of the built-in ones, receive none of them)."""
    offered = {"iterations": cfg.iterations, "batch_size": cfg.batch_size, "n_steps": task.n_steps,
               "episodic": task.episodic}
    factory = locate(_node(cfg, "optim")._target_, "optim._target_")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return offered
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in named}


def _optim_node(cfg: DictConfig) -> DictConfig:
    """``cfg.optim``, without the ``batch_size: ${batch_size}`` that runs saved before the build passed
    the run's batch size kept there (conf/optim/uoro.yaml, rtrl.yaml): ignored when it is the run's."""
    node = _node(cfg, "optim")
    if "batch_size" not in node:
        return node
    value = OmegaConf.select(node, "batch_size")
    if value != cfg.batch_size:
        raise ConfigError("optim.batch_size", value, f"the batch size is the run's: set batch_size={value} "
                          "instead (the optimizer takes it from there)")
    plain = OmegaConf.to_container(node, resolve=True)
    del plain["batch_size"]
    return OmegaConf.create(plain)


def build(cfg: DictConfig, choices: dict | None = None) -> Setup:
    """Build task, model, system and optimizer from ``cfg``; ``choices`` (Hydra's group choices, e.g.
    ``{"model": "gru"}``) only names things in messages."""
    for key in RUN_INTS:
        positive_int(cfg, key)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError("seed", cfg.seed, "must be a non-negative integer")
    for key in RUN_BOOLS:
        if not isinstance(cfg.get(key, True), bool):
            raise ConfigError(key, cfg.get(key), "must be true or false")
    geometric = cfg.get("log_geometric")
    if geometric is not None and (isinstance(geometric, bool) or not isinstance(geometric, (int, float))
                                  or geometric <= 1):
        raise ConfigError("log_geometric", geometric, "must be a number > 1 (e.g. 1.01) or null (log every log_every)")
    batch_size = cfg.batch_size
    eval_batch_size = cfg.get("eval_batch_size") or batch_size
    if cfg.get("eval_batch_size") is not None:
        positive_int(cfg, "eval_batch_size")

    task = instantiate(cfg, "task")
    task.check_batch_size(batch_size)

    model = _model(cfg, task, (choices or {}).get("model")) if task.needs_model else None
    system = task.make_system(model)
    optimizer = instantiate({"optim": _optim_node(cfg)}, "optim", system=system, **optim_runtime(cfg, task))
    return Setup(task, model, system, optimizer, eval_batch_size)
