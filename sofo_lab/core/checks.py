"""One-line validation of config values: each check names the key, the value and what is allowed
(``ConfigError``), so a library caller and a ``sofo-run`` user get the same message."""
from __future__ import annotations

import math

from sofo_lab.core.errors import ConfigError


def boolean(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be a positive integer")
    return value


def positive(key: str, value) -> float:
    """A positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(key, value, "must be a positive finite number")
    return float(value)


def named(prefix: str = "", **renamed):
    """How the caller spells an optimizer's arguments in messages: ``named()`` gives the library's own
    argument names (``n_tangents``); ``named("optim", batch_size="batch_size")`` the command line's
    keys, ``optim.<argument>`` unless ``renamed`` gives the whole key (the run's ``batch_size``).
    Each optimizer checks its arguments once, in its factory (sofo_lab/optim/*.py), naming them
    with this, so that a library call and ``sofo-run`` are refused by the same rule."""
    def key(name: str) -> str:
        if name in renamed:
            return renamed[name]
        return f"{prefix}.{name}" if prefix else name

    return key


PLAIN = named()
CONFIG = named("optim", batch_size="batch_size")   # the batch size is the run's, not the optimizer's
