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

    @property
    def n_steps(self) -> int:
        return jax.tree.leaves(self.inputs)[0].shape[0]   # inputs may be a pytree of [T, B, ...]

    @property
    def batch_size(self) -> int:
        return jax.tree.leaves(self.inputs)[0].shape[1]

    @property
    def dtype(self):
        return self.targets.dtype

    def scan(self, body, carry, unroll: int = 1):
        """``lax.scan`` of ``body(carry, (x_t, target_t, w_t))`` over the time steps; ``unroll`` steps
        per loop iteration (small per-step work: fewer loop round trips, larger fusions)."""
        return jax.lax.scan(body, carry, (self.xs, self.targets, self.weights), unroll=unroll)

    def materialize(self) -> Batch:
        return self

    def reweighted(self, trial_weights) -> Batch:
        """The batch with trial ``b``'s loss weights scaled by ``trial_weights[b]`` (``[B]``)."""
        w = self.weights                                                  # [T, B] or [T, B, O]
        return self._replace(weights=w * trial_weights.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 2)))


@jax.tree_util.register_pytree_node_class
class GeneratedBatch:
    """A batch produced one step at a time inside the consumer's scan: no array of length T exists.

    ``step_fn(state, t) -> (state, (x_t: StepInput, target_t [B, O], w_t))`` generates step ``t``
    from a small generator state (a task's latent variables and keys). Consumers call ``scan``
    exactly as on a ``Batch``, so a forward-mode optimizer's memory stays constant in the horizon
    with the data included; ``materialize()`` builds the equivalent ``Batch`` (identical values)
    for methods that need the whole sequence (TBPTT's windows).
    """

    def __init__(self, state, step_fn, n_steps: int, batch_size: int):
        self.state, self.step_fn = state, step_fn
        self.n_steps, self.batch_size = int(n_steps), int(batch_size)

    def tree_flatten(self):
        return (self.state,), (self.step_fn, self.n_steps, self.batch_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    @property
    def dtype(self):
        _, (_, target, _) = jax.eval_shape(self.step_fn, self.state, jnp.zeros((), jnp.int32))
        return target.dtype

    def scan(self, body, carry, unroll: int = 1):
        # The step counter rides in the carry (no xs): nothing the scan reads grows with T.
        def outer(c, _):
            inner, gen, t = c
            gen, xs = self.step_fn(gen, t)
            inner, out = body(inner, xs)
            return (inner, gen, t + 1), out

        (carry, _, _), outs = jax.lax.scan(outer, (carry, self.state, jnp.zeros((), jnp.int32)), None,
                                           length=self.n_steps, unroll=unroll)
        return carry, outs

    def materialize(self) -> Batch:
        _, (x, targets, weights) = self.scan(lambda c, xs: (c, xs), None)
        return Batch(x.u, targets, weights, x.noise)

    def reweighted(self, trial_weights) -> GeneratedBatch:
        """The batch with trial ``b``'s loss weights scaled by ``trial_weights[b]`` (``[B]``): the
        scale rides in the generator state, so the result is a pytree like this one."""
        step_fn = self.step_fn

        def scaled(state, t):
            gen, scale = state
            gen, (x, target, w) = step_fn(gen, t)
            return (gen, scale), (x, target, w * scale.astype(w.dtype).reshape(scale.shape + (1,) * (w.ndim - 1)))

        return GeneratedBatch((self.state, trial_weights), scaled, self.n_steps, self.batch_size)


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


class ClosedLoopState(NamedTuple):
    net: State               # the model's state
    plant: jax.Array         # [B, S]: the plant's state


class ClosedLoop:
    """A model driving a plant in closed loop (a ``Plant``, sofo_lab/core/interfaces.py): a system.

        u_t      = [x_t.u, plant.feedback(s_t)]          (the plant as it was before the step)
        net', c  = model.step(params, net, u_t)          (c: the command, the model's output)
        s', y_t  = plant.step(s_t, c)

    The plant has no parameters and acts trial by trial, so forward mode needs only its per-trial
    Jacobian, one small matrix per trial and step, whatever the number of tangents
    (``ClosedLoopStepper`` in sofo_lab/optim/_forward.py). ``State`` names the state's two parts
    (the arm's is ``ArmState(net, arm)``, tasks/plants/arm.py).
    """

    State = ClosedLoopState

    def __init__(self, model, plant, loss):
        self.model, self.plant, self.loss = model, plant, loss

    def init_params(self, key) -> Params:
        return self.model.init_params(key)

    def init_state(self, params: Params, batch_size: int) -> State:
        net = self.model.init_state(params, batch_size)
        return self.State(net, self.plant.init_state(batch_size, jnp.result_type(*jax.tree.leaves(params))))

    def network_input(self, x: StepInput, plant_state) -> StepInput:
        return StepInput(jnp.concatenate([x.u, self.plant.feedback(plant_state).astype(x.u.dtype)], axis=-1),
                         x.noise)

    def step(self, params: Params, state: State, x: StepInput):
        net, plant_state = state
        net, command = self.model.step(params, net, self.network_input(x, plant_state))
        plant_state, y = self.plant.step(plant_state, command)
        return self.State(net, plant_state), y

    def sample_noise(self, key, n_steps: int, batch_size: int):
        return self.model.sample_noise(key, n_steps, batch_size)


def step_with_loss(system, x: StepInput, target, w):
    """``f(θ, s) -> (ℓ, s')``: one system step and its per-step loss (UORO and RTRL differentiate it)."""

    def f(params, state):
        new_state, y = system.step(params, state, x)
        return system.loss.value(y, target, w), new_state

    return f


def rollout(system, params: Params, state0: State, batch: Batch, unroll: int = 1):
    """Run the system over a ``Batch`` or ``GeneratedBatch`` (``unroll`` steps per loop iteration).

    Returns ``(state_T, ys [T,B,O], losses [T])``."""

    def body(state, xs):
        x, target, w = xs
        state, y = system.step(params, state, x)
        return state, (y, system.loss.value(y, target, w))

    state, (ys, losses) = batch.scan(body, state0, unroll=unroll)
    return state, ys, losses


class Trajectory(NamedTuple):
    """What a system does on a batch, step by step (``simulate``)."""

    states: State         # the full system state after each step, leaves [T, B, ...] (closed loop: net and plant)
    outputs: jax.Array    # [T, B, O]: y_t, computed from states[t]
    losses: jax.Array     # [T]: the per-step losses (their sum is the reported loss)


def simulate(system, params: Params, batch: Batch, *, state: State | None = None, key=None) -> Trajectory:
    """Run ``system`` over ``batch`` and keep every step's state, for analysis (PCA, tuning curves).

    ``state``: the state before the first step (default: ``system.init_state``). ``key``: draw the
    dynamics noise (``system.sample_noise``) when the batch holds none; without it a noisy model
    runs noise-free. For a rate network the state is the pre-activation ``z``, the rates
    ``φ(z)``; for a closed-loop task it is ``ArmState(net, arm)`` (tasks/plants/arm.py).
    """
    batch = batch.materialize()
    if key is not None and batch.noise is None:
        batch = batch._replace(noise=system.sample_noise(key, batch.n_steps, batch.batch_size))
    state0 = system.init_state(params, batch.batch_size) if state is None else state

    def body(state, xs):
        x, target, w = xs
        state, y = system.step(params, state, x)
        return state, (state, y, system.loss.value(y, target, w))

    _, (states, ys, losses) = batch.scan(body, state0)
    return Trajectory(states, ys, losses)


def initial_state(system, params: Params, carry: State | None, batch_size: int) -> State:
    """Episodic runs start from the (possibly learned) initial state; streams from the carry."""
    if carry is None:
        return system.init_state(params, batch_size)
    return jax.lax.stop_gradient(carry)
