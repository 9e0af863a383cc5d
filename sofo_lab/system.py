"""The one abstraction every optimizer consumes: a *system*.

A system is a pure, deterministic step function plus a per-step loss:

    step(params, state, x_t) -> (state', y_t)      # batched: x_t.u [B, I], y_t [B, O]
    loss.value(y_t, target_t, w_t) -> scalar      # summed over t

A model (rnn, gru, lstm) is a system on its own (``ModelSystem``). A closed-loop task wraps
the model with a differentiable plant (the arm) and is still a system, so every optimizer
trains through the plant with no special case. Noise the dynamics use is sampled outside
``step`` (``sample_noise``) and handed in through ``x_t.noise``, so SOFO's tangents and
UORO's jvp/vjp see the same noise as the primal.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any   # a pytree (dict) of arrays
State = Any    # a pytree of [B, ...] arrays


class StepInput(NamedTuple):
    """What ``step`` consumes at one time step."""

    u: jax.Array                 # [B, I] task input
    noise: jax.Array | None = None   # [B, N] private noise factors (or None)


class Batch(NamedTuple):
    """A batch in time-major layout."""

    inputs: jax.Array            # [T, B, I]
    targets: jax.Array           # [T, B, O]
    weights: jax.Array           # [T, B] or [T, B, O]
    noise: jax.Array | None = None   # [T, B, N], filled by the system's sample_noise
    extras: Any = None           # task-specific latent variables (for metrics/plots)

    @property
    def xs(self) -> StepInput:
        return StepInput(self.inputs, self.noise)


class ModelSystem:
    """A recurrent model with a loss: the system of an open-loop task."""

    def __init__(self, model, loss):
        self.model, self.loss = model, loss

    def init_params(self, key) -> Params:
        return self.model.init_params(key)

    def init_state(self, params: Params, batch_size: int) -> State:
        return self.model.init_state(params, batch_size)

    def step(self, params: Params, state: State, x: StepInput):
        return self.model.step(params, state, x)

    def sample_noise(self, key, n_steps: int, batch_size: int):
        return self.model.sample_noise(key, n_steps, batch_size)


def rollout(system, params: Params, state0: State, batch: Batch):
    """Run the system over the batch. Returns ``(state_T, ys [T,B,O], losses [T])``."""

    def body(state, xs):
        x, target, w = xs
        state, y = system.step(params, state, x)
        return state, (y, system.loss.value(y, target, w))

    state, (ys, losses) = jax.lax.scan(body, state0, (batch.xs, batch.targets, batch.weights))
    return state, ys, losses


def initial_state(system, params: Params, carry: State | None, batch_size: int) -> State:
    """Episodic runs start from the (possibly learned) initial state; streams from the carry."""
    if carry is None:
        return system.init_state(params, batch_size)
    return jax.lax.stop_gradient(carry)


def count_params(params: Params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
