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
