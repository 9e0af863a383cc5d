# mylab/flipflop.py: the 3-bit flip-flop of docs/library.md (Sussillo & Barak, Neural Computation 2013)
from typing import ClassVar

import jax
import jax.numpy as jnp

from sofo_lab import Batch
from sofo_lab.tasks.base import Task


class FlipFlop(Task):
    """3-bit flip-flop: output i holds the sign of the last ±1 pulse on input i (0 before any)."""

    name: ClassVar[str] = "flipflop"
    input_names: ClassVar[tuple[str, ...]] = ("pulse_1", "pulse_2", "pulse_3")
    output_names: ClassVar[tuple[str, ...]] = ("bit_1", "bit_2", "bit_3")

    def __init__(self, n_steps: int, pulse_prob: float):
        self.n_steps, self.pulse_prob = n_steps, pulse_prob

    def sample(self, key, batch_size: int) -> Batch:
        k_when, k_sign = jax.random.split(key)
        shape = (self.n_steps, batch_size, 3)
        pulses = jax.random.bernoulli(k_when, self.pulse_prob, shape) * jax.random.rademacher(k_sign, shape, float)

        def hold(bits, pulse):
            bits = jnp.where(pulse != 0, pulse, bits)
            return bits, bits

        _, targets = jax.lax.scan(hold, jnp.zeros((batch_size, 3)), pulses)
        return Batch(pulses, targets, jnp.ones((self.n_steps, batch_size)))

    def evaluate(self, batch: Batch, ys) -> dict:
        return {"bit_accuracy": jnp.mean(jnp.sign(ys) == batch.targets)}
