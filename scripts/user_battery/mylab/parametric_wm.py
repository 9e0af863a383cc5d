# mylab/parametric_wm.py: parametric working memory (Romo, Brody, Hernández & Lemus, Nature 1999)
from typing import ClassVar

import jax
import jax.numpy as jnp

from sofo_lab import Batch
from sofo_lab.tasks.base import Task


class ParametricWM(Task):
    """f1, a random delay, f2 (both seen through noise); answer +1 if f1 > f2, else −1.

    The network also has private noise (``model_settings``), as the rate RNN supports."""

    input_names: ClassVar[tuple[str, ...]] = ("stimulus", "fixation")
    output_names: ClassVar[tuple[str, ...]] = ("f1_greater",)

    def __init__(self, n_steps: int, n_stimulus: int, delay_range: list, n_response: int, noise: float,
                 private_noise: float):
        self.n_steps, self.n_stimulus, self.n_response = n_steps, n_stimulus, n_response
        self.delay_range, self.noise, self.private_noise = delay_range, noise, private_noise

    def model_settings(self) -> dict:
        return {"noise_amplitude": self.private_noise}

    def sample(self, key, batch_size: int) -> Batch:
        k_f, k_delay, k_noise = jax.random.split(key, 3)
        T, B, S = self.n_steps, batch_size, self.n_stimulus
        f1, f2 = jax.random.uniform(k_f, (2, B), minval=0.2, maxval=1.0)
        delay = jax.random.randint(k_delay, (B,), self.delay_range[0], self.delay_range[1] + 1)
        t = jnp.arange(T)[:, None]
        on1 = (t >= 2) & (t < 2 + S)
        start2 = 2 + S + delay
        on2 = (t >= start2) & (t < start2 + S)
        stimulus = on1 * f1 + on2 * f2 + (on1 | on2) * self.noise * jax.random.normal(k_noise, (T, B))
        response = (t >= T - self.n_response) & jnp.ones((1, B), bool)
        targets = (response * jnp.sign(f1 - f2))[..., None]
        return Batch(jnp.stack([stimulus, (~response).astype(float)], -1), targets, jnp.ones((T, B)))

    def evaluate(self, batch: Batch, ys) -> dict:
        correct = jnp.sign(ys[-self.n_response:].mean(0)) == batch.targets[-1]
        return {"accuracy": jnp.mean(correct)}
