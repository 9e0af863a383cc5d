"""Parameter updates and schedules from config, all through optax.

Keys read from ``optim``: ``update`` (adam | sgd), ``lr``, ``b1``, ``b2``, ``eps``,
``momentum``, ``nesterov``, ``weight_decay``, ``clip_norm`` (global-norm clipping, null = off),
and ``schedule`` (null | constant | cosine | exponential | warmup_cosine | inverse_sqrt).
"""
from __future__ import annotations

import math

import optax

from sofo_lab.errors import ConfigError

SCHEDULES = ("constant", "cosine", "exponential", "warmup_cosine", "inverse_sqrt")


def _get(cfg, key, default):
    value = cfg.get(key, default)
    return default if value is None else value


def positive(cfg, key, default=None, prefix="optim"):
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{prefix}.{key}", value, "must be a positive finite number")
    return float(value)


def make_schedule(cfg, iterations: int):
    """A learning-rate schedule ``count -> lr`` (count = parameter updates so far)."""
    lr = positive(cfg, "lr")
    sched = cfg.get("schedule", None)
    if sched is None or sched == "constant":
        return lr
    name = sched if isinstance(sched, str) else sched.get("name")
    opts = {} if isinstance(sched, str) else dict(sched)
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
        # UORO paper (uoro_spec.md §2.5): lr_t = γ / (1 + α √t).
        alpha = opts.get("alpha", 0.015)
        return lambda count: lr / (1.0 + alpha * (count + 1) ** 0.5)
    raise ConfigError("optim.schedule", name, f"choose one of {list(SCHEDULES)} or null")


def make_transform(cfg, iterations: int) -> optax.GradientTransformation:
    """``chain(clip_by_global_norm?, adam|sgd(schedule))`` from the ``optim`` config."""
    schedule = make_schedule(cfg, iterations)
    update = _get(cfg, "update", "adam")
    if update == "adam":
        wd = _get(cfg, "weight_decay", 0.0)
        base = optax.adamw(schedule, b1=_get(cfg, "b1", 0.9), b2=_get(cfg, "b2", 0.999),
                           eps=_get(cfg, "eps", 1e-8), weight_decay=wd) if wd else optax.adam(
            schedule, b1=_get(cfg, "b1", 0.9), b2=_get(cfg, "b2", 0.999), eps=_get(cfg, "eps", 1e-8))
    elif update == "sgd":
        momentum = _get(cfg, "momentum", 0.0) or None
        base = optax.sgd(schedule, momentum=momentum, nesterov=bool(_get(cfg, "nesterov", False)))
        if _get(cfg, "weight_decay", 0.0):
            base = optax.chain(optax.add_decayed_weights(cfg.weight_decay), base)
    else:
        raise ConfigError("optim.update", update, "choose one of ['adam', 'sgd']")
    clip = cfg.get("clip_norm", None)
    if clip is not None:
        positive(cfg, "clip_norm")
        base = optax.chain(optax.clip_by_global_norm(float(clip)), base)
    return base
