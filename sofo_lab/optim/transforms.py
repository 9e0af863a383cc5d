"""Parameter updates and schedules from config, all through optax.

The optax keys every ``optim`` config may hold (``UPDATE_KEYS``): ``update`` (adam | sgd), ``lr``,
``b1``, ``b2``, ``eps``, ``momentum``, ``nesterov``, ``weight_decay``, ``clip_norm`` (global-norm
clipping, null = off) and ``schedule`` (null | constant | cosine | exponential | warmup_cosine |
inverse_sqrt, or ``{name: ..., ...}``). A key an optimizer's YAML does not list takes optax's
default (Adam's b1 = 0.9, b2 = 0.999, eps = 1e-8; no momentum).
"""
from __future__ import annotations

import optax

from sofo_lab.core.checks import positive as _positive
from sofo_lab.core.errors import ConfigError

SCHEDULES = ("constant", "cosine", "exponential", "warmup_cosine", "inverse_sqrt")
# The keys each schedule reads (besides ``name``); any other key is an error, not silently kept.
SCHEDULE_KEYS = {"constant": (), "cosine": ("final_fraction",),
                 "exponential": ("transition_steps", "decay_rate", "end_value"),
                 "warmup_cosine": ("warmup_steps", "end_value"), "inverse_sqrt": ("alpha",)}
UPDATE_KEYS = ("update", "lr", "b1", "b2", "eps", "momentum", "nesterov", "weight_decay", "clip_norm", "schedule")
UPDATES = ("adam", "sgd")


def _get(cfg, key, default):
    value = cfg.get(key, default)
    return default if value is None else value


def positive(cfg, key, default=None, prefix="optim"):
    return _positive(f"{prefix}.{key}", _get(cfg, key, default))


def make_schedule(cfg, iterations: int, steps_per_update: int = 1):
    """A learning-rate schedule ``count -> lr`` (count = parameter updates so far).

    ``inverse_sqrt`` is the UORO paper's ``lr_t = γ/(1+α√t)`` with t counted in time steps
    (Tallec & Ollivier 2018); optax counts updates, so with ``steps_per_update`` time steps per
    update α is scaled by √steps_per_update.
    """
    lr = positive(cfg, "lr")
    sched = cfg.get("schedule", None)
    if sched is None or sched == "constant":
        return lr
    name = sched if isinstance(sched, str) else sched.get("name")
    opts = {} if isinstance(sched, str) else {k: v for k, v in dict(sched).items() if k != "name"}
    if name not in SCHEDULE_KEYS:
        raise ConfigError("optim.schedule", name, f"choose one of {list(SCHEDULES)} or null")
    unknown = sorted(set(opts) - set(SCHEDULE_KEYS[name]))
    if unknown:
        raise ConfigError(f"optim.schedule.{unknown[0]}", opts[unknown[0]],
                          f"unknown key; schedule {name} takes {list(SCHEDULE_KEYS[name])}")
    if name == "constant":
        return lr
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=iterations, alpha=opts.get("final_fraction", 0.0))
    if name == "exponential":
        return optax.exponential_decay(lr, transition_steps=opts.get("transition_steps", max(1, iterations // 10)),
                                       decay_rate=opts.get("decay_rate", 0.5), end_value=opts.get("end_value"))
    if name == "warmup_cosine":
        warmup = opts.get("warmup_steps", max(1, iterations // 20))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(iterations, warmup + 1),
                                                  end_value=opts.get("end_value", 0.0))
    if name == "inverse_sqrt":
        alpha = opts.get("alpha", 0.015) * steps_per_update ** 0.5
        return lambda count: lr / (1.0 + alpha * (count + 1) ** 0.5)
    raise ConfigError("optim.schedule", name, f"choose one of {list(SCHEDULES)} or null")


def make_transform(cfg, iterations: int, steps_per_update: int = 1) -> optax.GradientTransformation:
    """``chain(clip_by_global_norm?, adam|sgd(schedule))`` from the optax keys of an ``optim`` config.

    ``cfg`` is a mapping holding only ``UPDATE_KEYS`` (an optimizer's ``from_config`` passes the
    keys it does not consume itself): any other key is an unknown key of the ``optim`` config.
    """
    unknown = sorted(set(cfg) - set(UPDATE_KEYS))
    if unknown:
        raise ConfigError(f"optim.{unknown[0]}", cfg[unknown[0]],
                          f"unknown key; besides its own keys an optimizer takes the optax keys {list(UPDATE_KEYS)}")
    schedule = make_schedule(cfg, iterations, steps_per_update)
    update = cfg.get("update")
    if update == "adam":
        wd = _get(cfg, "weight_decay", 0.0)
        base = optax.adamw(schedule, b1=_get(cfg, "b1", 0.9), b2=_get(cfg, "b2", 0.999),
                           eps=_get(cfg, "eps", 1e-8), weight_decay=wd) if wd else optax.adam(
            schedule, b1=_get(cfg, "b1", 0.9), b2=_get(cfg, "b2", 0.999), eps=_get(cfg, "eps", 1e-8))
    elif update == "sgd":
        momentum = _get(cfg, "momentum", 0.0) or None
        base = optax.sgd(schedule, momentum=momentum, nesterov=bool(_get(cfg, "nesterov", False)))
        if _get(cfg, "weight_decay", 0.0):
            base = optax.chain(optax.add_decayed_weights(cfg["weight_decay"]), base)
    else:
        raise ConfigError("optim.update", update, f"choose one of {list(UPDATES)}")
    clip = cfg.get("clip_norm", None)
    if clip is not None:
        positive(cfg, "clip_norm")
        base = optax.chain(optax.clip_by_global_norm(float(clip)), base)
    return base
