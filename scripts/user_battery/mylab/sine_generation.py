# mylab/sine_generation.py: pattern generation (a static input sets the frequency; Sussillo & Abbott 2009)
from typing import ClassVar

import jax
import jax.numpy as jnp

from sofo_lab import Batch
from sofo_lab.tasks.base import Task


class SineGeneration(Task):
    """A constant input in [0, 1] sets the frequency; output sin(2π f t) after a short fixation."""

    input_names: ClassVar[tuple[str, ...]] = ("frequency",)
    output_names: ClassVar[tuple[str, ...]] = ("signal",)

    def __init__(self, n_steps: int, frequency_range: list):
        self.n_steps, self.frequency_range = n_steps, frequency_range

    def sample(self, key, batch_size: int) -> Batch:
        lo, hi = self.frequency_range
        level = jax.random.uniform(key, (batch_size,))
        freq = lo + (hi - lo) * level
        t = jnp.arange(self.n_steps)[:, None]
        targets = jnp.sin(2 * jnp.pi * freq * t)[..., None]
        inputs = jnp.broadcast_to(level, (self.n_steps, batch_size))[..., None]
        return Batch(inputs, targets, jnp.ones((self.n_steps, batch_size)))
