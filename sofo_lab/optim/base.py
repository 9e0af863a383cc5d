"""The optimizer interface: an optax-style pair of pure functions.

    init(params)                                   -> opt_state
    update(params, opt_state, batch, key, carry)   -> (params, opt_state, carry, metrics)

``carry`` is ``None`` for episodic tasks (each trial starts from the system's initial state,
which may be learned) and the system state carried from the previous window for streams.
``metrics`` is a flat dict of scalars and always holds ``loss``, the summed per-step loss of
the batch evaluated before (or, for online methods, while) updating.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Optimizer(NamedTuple):
    init: Callable[[Any], Any]
    update: Callable[..., tuple]
