"""Parameter updates and schedules from config, all through optax.

The optax keys every ``optim`` config may hold (``UPDATE_KEYS``): ``update`` (adam | sgd), ``lr``,
``b1``, ``b2``, ``eps``, ``momentum``, ``nesterov``, ``weight_decay``, ``clip_norm`` (global-norm
clipping, null = off), ``schedule`` (null | constant | cosine | exponential | warmup_cosine |
inverse_sqrt, or ``{name: ..., ...}``) and ``plateau`` (null | true | ``{factor: ..., ...}``: the
step shrinks when the loss stalls, ``PLATEAU``). A key an optimizer's YAML does not list takes optax's
default (Adam's b1 = 0.9, b2 = 0.999, eps = 1e-8; no momentum).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sofo_lab.core.checks import positive as _positive
from sofo_lab.core.errors import ConfigError

SCHEDULES = ("constant", "cosine", "exponential", "warmup_cosine", "inverse_sqrt")
# The keys each schedule reads (besides ``name``); any other key is an error, not silently kept.
SCHEDULE_KEYS = {"constant": (), "cosine": ("final_fraction",),
                 "exponential": ("transition_steps", "decay_rate", "end_value"),
                 "warmup_cosine": ("warmup_steps", "end_value"), "inverse_sqrt": ("alpha",)}
UPDATE_KEYS = ("update", "lr", "b1", "b2", "eps", "momentum", "nesterov", "weight_decay", "clip_norm", "schedule",
               "plateau")
# ``plateau: true``: optax.contrib.reduce_on_plateau on the loss the optimizer reports (each batch's loss
# before its step: a held-out loss on a task that samples fresh trials), averaged over ``window``
# iterations; after ``patience`` windows without a ``rtol`` relative improvement the step is multiplied
# by ``factor``, down to ``min_scale`` (docs/sofo.md, "Noisy tasks").
PLATEAU = {"factor": 0.5, "window": 50, "patience": 3, "rtol": 0.01, "min_scale": 0.01}
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


def is_plateau_state(x) -> bool:
    """An ``optim.plateau`` state inside an optimizer's state (a leaf for ``jax.tree`` maps)."""
    return isinstance(x, optax.contrib.ReduceLROnPlateauState)


def plateau_metrics(opt_state) -> dict:
    """``{"lr_scale": s}``: the factor ``optim.plateau`` has multiplied the step by so far (1 until the
    loss first stalls), found anywhere in an optimizer's state; ``{}`` without a plateau."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_plateau_state) if is_plateau_state(x)]
    return {"lr_scale": found[0].scale.astype(jnp.float32)} if found else {}


def make_plateau(cfg, prefix: str = "optim.") -> optax.GradientTransformationExtraArgs | None:
    """``optim.plateau``: null/false = off, true = ``PLATEAU``, a mapping = ``PLATEAU`` with its keys
    changed. ``prefix`` names the key in errors (``"optim."`` for sofo-run, ``""`` for the library)."""
    spec = cfg.get("plateau", None)
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = {}
    if not hasattr(spec, "items"):
        raise ConfigError(f"{prefix}plateau", spec, f"must be null, true or a mapping of {list(PLATEAU)}")
    unknown = sorted(set(spec) - set(PLATEAU))
    if unknown:
        raise ConfigError(f"{prefix}plateau.{unknown[0]}", spec[unknown[0]], f"unknown key; plateau takes {list(PLATEAU)}")
    opts = {**PLATEAU, **{k: v for k, v in dict(spec).items() if v is not None}}
    for key in ("factor", "rtol"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{prefix}plateau.{key}", value, "must be a number in (0, 1)")
    for key in ("window", "patience"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{prefix}plateau.{key}", value, "must be an integer >= 1")
    value = opts["min_scale"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{prefix}plateau.min_scale", value, "must be a number in [0, 1]")
    return optax.contrib.reduce_on_plateau(factor=float(opts["factor"]), patience=opts["patience"],
                                           rtol=float(opts["rtol"]), accumulation_size=opts["window"],
                                           min_scale=float(opts["min_scale"]))


def make_transform(cfg, iterations: int, steps_per_update: int = 1) -> optax.GradientTransformationExtraArgs:
    """``chain(clip_by_global_norm?, adam|sgd(schedule), reduce_on_plateau?)`` from the optax keys of an
    ``optim`` config. Its ``update`` takes ``value=`` (the loss; only ``plateau`` reads it).

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
    plateau = make_plateau(cfg)
    return optax.chain(base, plateau) if plateau is not None else optax.with_extra_args_support(base)
