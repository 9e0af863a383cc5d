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


def init_train_state(setup: Setup, seed: int, batch_size: int) -> TrainState:
    k_init, _, _, k_data = run_keys(seed)
    params = setup.system.init_params(k_init)
    carry = None if setup.task.episodic else setup.system.init_state(params, batch_size)
    return TrainState(params, setup.optimizer.init(params), setup.task.init_data(k_data, batch_size),
                      carry, jnp.zeros((), jnp.int32))
