"""The training state: what one update carries to the next and what a checkpoint holds
(``TrainState``), and where a run starts (``init_train_state``). The Trainer steps it; the
resource check (resources.py) measures it from shapes before anything is allocated."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.train.assemble import Setup


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    data_state: Any
    carry: Any              # network state carried across windows (streams); None when episodic
    iteration: jax.Array    # int32 scalar: updates done so far


def run_keys(seed: int):
    """The run's four keys (init, train, eval, data): from the seed alone, so a resumed run draws
    what an uninterrupted one does."""
    init, train, eval_, data = jax.random.split(jax.random.PRNGKey(seed), 4)
    return init, train, eval_, data


def compiled_once(fn):
    """``fn()`` as one compiled program: one XLA compilation instead of one per operation, which is
    most of a short run's start-up on CPU (~40 small ops to initialise a network). A user's code that
    needs concrete values (numpy on the parameters, a Python branch on a value) raises a ``TypeError``
    under the trace and runs op by op instead, as it would have."""
    try:
        return jax.jit(fn)()
    except TypeError:   # ConcretizationTypeError, TracerArrayConversionError, ... are TypeErrors
        return fn()


def init_train_state(setup: Setup, seed: int, batch_size: int, compile: bool = False) -> TrainState:
    """Where a run starts. ``compile=True`` (the Trainer's start-up) initialises the network, the
    optimizer and the carry in one program (:func:`compiled_once`); the task's data state is always
    made op by op (a stream's data must not become a constant of a compiled program)."""
    k_init, _, _, k_data = run_keys(seed)

    def network():
        params = setup.system.init_params(k_init)
        carry = None if setup.task.episodic else setup.system.init_state(params, batch_size)
        return params, setup.optimizer.init(params), carry

    params, opt_state, carry = compiled_once(network) if compile else network()
    return TrainState(params, opt_state, setup.task.init_data(k_data, batch_size), carry, jnp.zeros((), jnp.int32))
