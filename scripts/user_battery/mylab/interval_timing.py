# mylab/interval_timing.py: ready-set-go (Jazayeri & Shadlen, Nature Neuroscience 2010)
from typing import ClassVar

import jax
import jax.numpy as jnp

from sofo_lab import Batch
from sofo_lab.tasks.base import Task


class IntervalTiming(Task):
    """"Ready" and "set" pulses Ts apart; the output must ramp from 0 to 1 over the Ts after "set"."""

    input_names: ClassVar[tuple[str, ...]] = ("ready", "set")
    output_names: ClassVar[tuple[str, ...]] = ("go",)

    def __init__(self, n_steps: int, interval_range: list):
        self.n_steps, self.interval_range = n_steps, interval_range

    def sample(self, key, batch_size: int) -> Batch:
        k_ready, k_ts = jax.random.split(key)
        T, B = self.n_steps, batch_size
        lo, hi = self.interval_range
        ready = jax.random.randint(k_ready, (B,), 2, 8)
        ts = jax.random.randint(k_ts, (B,), lo, hi + 1)
        set_ = ready + ts
        t = jnp.arange(T)[:, None]
        inputs = jnp.stack([(t == ready).astype(float), (t == set_).astype(float)], -1)
        ramp = jnp.clip((t - set_) / ts, 0.0, 1.0)
        return Batch(inputs, ramp[..., None], jnp.ones((T, B)))
