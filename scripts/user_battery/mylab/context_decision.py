# mylab/context_decision.py: context-dependent integration (Mante, Sussillo, Shenoy & Newsome, Nature 2013)
from typing import ClassVar

import jax
import jax.numpy as jnp

from sofo_lab import Batch
from sofo_lab.tasks.base import Task


class ContextDecision(Task):
    """Two noisy evidence streams and a context cue; report the sign of the cued stream's mean."""

    input_names: ClassVar[tuple[str, ...]] = ("evidence_1", "evidence_2", "context_1", "context_2", "fixation")
    output_names: ClassVar[tuple[str, ...]] = ("choice",)

    def __init__(self, n_fixation: int, n_stimulus: int, n_response: int, coherences: list, noise: float):
        self.n_fixation, self.n_stimulus, self.n_response = n_fixation, n_stimulus, n_response
        self.n_steps = n_fixation + n_stimulus + n_response
        self.coherences, self.noise = jnp.asarray(coherences), noise

    def sample(self, key, batch_size: int) -> Batch:
        k_coh, k_ctx, k_noise = jax.random.split(key, 3)
        T, B = self.n_steps, batch_size
        coh = jax.random.choice(k_coh, self.coherences, (B, 2)) * jax.random.rademacher(k_ctx, (B, 2), float)
        context = jax.random.bernoulli(k_ctx, 0.5, (B,)).astype(jnp.int32)
        t = jnp.arange(T)[:, None, None]
        stim = (t >= self.n_fixation) & (t < self.n_fixation + self.n_stimulus)
        evidence = stim * (coh + self.noise * jax.random.normal(k_noise, (T, B, 2)))
        ctx = jnp.broadcast_to(jax.nn.one_hot(context, 2), (T, B, 2))
        response = (t[..., 0] >= self.n_fixation + self.n_stimulus).astype(float)          # [T, 1]
        fixation = jnp.broadcast_to(1.0 - response, (T, B))[..., None]
        choice = jnp.sign(jnp.take_along_axis(coh, context[:, None], axis=1))[:, 0]        # [B]
        targets = (response * choice)[..., None]                                          # [T, B, 1]
        inputs = jnp.concatenate([evidence, ctx, fixation], axis=-1)
        return Batch(inputs, targets, jnp.ones((T, B)))

    def evaluate(self, batch: Batch, ys) -> dict:
        r = slice(self.n_steps - self.n_response, None)
        correct = jnp.sign(ys[r].mean(0)) == batch.targets[-1]
        return {"accuracy": jnp.mean(correct)}
