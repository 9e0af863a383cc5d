# mylab/dots_decision.py: a two-alternative perceptual decision (random dots; Gold & Shadlen, Annu. Rev. Neurosci. 2007)
from typing import ClassVar

import jax
import jax.numpy as jnp

from sofo_lab import Batch
from sofo_lab.tasks.base import Task


class DotsDecision(Task):
    """Fixate while a noisy stream of motion evidence plays, then choose left or right (cross-entropy)."""

    loss_kind: ClassVar[str] = "xent"
    input_names: ClassVar[tuple[str, ...]] = ("fixation", "motion")
    output_names: ClassVar[tuple[str, ...]] = ("fixate", "left", "right")

    def __init__(self, n_fixation: int, n_stimulus: int, n_response: int, coherences: list, noise: float):
        self.n_fixation, self.n_stimulus, self.n_response = n_fixation, n_stimulus, n_response
        self.n_steps = n_fixation + n_stimulus + n_response
        self.coherences, self.noise = jnp.asarray(coherences), noise

    def sample(self, key, batch_size: int) -> Batch:
        k_coh, k_sign, k_noise = jax.random.split(key, 3)
        T, B = self.n_steps, batch_size
        coh = jax.random.choice(k_coh, self.coherences, (B,)) * jax.random.rademacher(k_sign, (B,), float)
        t = jnp.arange(T)[:, None]
        stim = (t >= self.n_fixation) & (t < self.n_fixation + self.n_stimulus)
        motion = stim * (coh + self.noise * jax.random.normal(k_noise, (T, B)))
        response = t >= self.n_fixation + self.n_stimulus                                   # [T, 1]
        fixation = jnp.broadcast_to(~response, (T, B)).astype(float)
        label = jnp.where(response, jnp.where(coh > 0, 2, 1), 0)                            # [T, B]
        return Batch(jnp.stack([fixation, motion], -1), jax.nn.one_hot(label, 3), jnp.ones((T, B)))

    def evaluate(self, batch: Batch, ys) -> dict:
        r = slice(self.n_steps - self.n_response, None)
        choice = jnp.argmax(ys[r].mean(0)[:, 1:], -1) + 1
        return {"accuracy": jnp.mean(choice == jnp.argmax(batch.targets[-1], -1))}
