"""What the Trainer (trainer.py) calls: one jitted update per iteration (or ``steps_per_dispatch``
of them in one call), the jitted evaluation, and the host-side schedule.

Inside jit: derive the iteration's key from (seed, iteration), sample the batch (and the
dynamics noise), run the optimizer's update. Keys depend only on the seed and the iteration
number, so a run resumed from a checkpoint computes exactly what an uninterrupted run does.
"""
from __future__ import annotations

import contextlib
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import GeneratedBatch, StepInput, rollout
from sofo_lab.optim.transforms import plateau_metrics
from sofo_lab.train.assemble import Setup
from sofo_lab.train.state import TrainState, compiled_once, run_keys


class TrainClock:
    """Training seconds (``time_s`` in metrics.jsonl): wall time since the first update minus the
    paused intervals (evaluation, checkpoints, writing records), each kept in ``paused``."""

    def __init__(self, offset: float = 0.0):
        self.t0, self.offset = time.perf_counter(), offset
        self.paused = {"eval": 0.0, "checkpoint": 0.0, "log": 0.0}

    def now(self) -> float:
        return self.offset + time.perf_counter() - self.t0 - sum(self.paused.values())

    @contextlib.contextmanager
    def pause(self, what: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused[what] += time.perf_counter() - t


def training_batch(task, system, data_state, k_data, k_noise, batch_size: int):
    """The iteration's batch: a ``GeneratedBatch`` when the task can generate step by step (then
    the dynamics noise is drawn per step too), else the whole sampled ``Batch``."""
    source = task.step_source(k_data, batch_size)
    if source is None:
        data_state, batch = task.next_batch(data_state, k_data, batch_size)
        return data_state, batch._replace(noise=system.sample_noise(k_noise, batch.n_steps, batch_size))
    task_state, task_step = source

    def step_fn(state, t):
        task_state, k_noise = state
        task_state, (u, target, w) = task_step(task_state, t)
        noise = system.sample_noise(jax.random.fold_in(k_noise, t), 1, batch_size)
        return (task_state, k_noise), (StepInput(u, None if noise is None else noise[0]), target, w)

    return data_state, GeneratedBatch((task_state, k_noise), step_fn, task.n_steps, batch_size)


def make_train_step(setup: Setup, seed: int, batch_size: int):
    """One update: ``train_step(ts) -> (ts, metrics)``, the batch sampled inside; for a task with
    ``host_batches`` ``train_step(ts, batch)``, the batch made on the host (host_batches.py), the
    dynamics noise still drawn here from the iteration's key."""
    task, system, optimizer = setup.task, setup.system, setup.optimizer
    _, k_train, _, _ = run_keys(seed)

    def train_step(ts: TrainState, host_batch=None):
        k_data, k_noise, k_opt = jax.random.split(jax.random.fold_in(k_train, ts.iteration), 3)
        if host_batch is None:
            data_state, batch = training_batch(task, system, ts.data_state, k_data, k_noise, batch_size)
        else:
            data_state = ts.data_state
            batch = host_batch._replace(noise=system.sample_noise(k_noise, host_batch.n_steps, batch_size))
        params, opt_state, carry, metrics = optimizer.update(ts.params, ts.opt_state, batch, k_opt, ts.carry)
        data_state, extra = task.online_metrics(data_state, metrics, params)   # streams: online scores
        metrics = {**metrics, **extra, **plateau_metrics(opt_state)}
        # an optimizer that undid its last step because this batch was non-finite (SOFO's adaptive
        # damping) says so with ``rolled_back``: its parameters are the good ones before that step
        finite = jnp.isfinite(metrics["loss"]) | (metrics.get("rolled_back", 0.0) > 0)
        for leaf in jax.tree.leaves(params):
            finite &= jnp.all(jnp.isfinite(leaf))
        metrics = {**metrics, "finite": finite}
        carry = None if task.episodic else carry
        return TrainState(params, opt_state, data_state, carry, ts.iteration + 1), metrics

    return train_step


def make_train_steps(setup: Setup, seed: int, batch_size: int, n: int):
    """``n`` updates in one call: a ``lax.scan`` of :func:`make_train_step`, each update's metrics
    stacked along a leading axis of length n. The updates are the same (keys come from the
    iteration count in the state); only the host work per call (dispatch, reading the metrics) is
    shared by n updates, which is what a stream of short windows needs (docs/uoro.md)."""
    step = make_train_step(setup, seed, batch_size)

    def train_steps(ts: TrainState, host_batches=None):   # host batches: stacked on a leading axis n
        if host_batches is not None:
            return jax.lax.scan(step, ts, host_batches)
        return jax.lax.scan(lambda state, _: step(state), ts, length=n)

    return train_steps


def make_eval(setup: Setup, seed: int, batch_size: int):
    """A jitted evaluation on a fixed held-out batch, or None when the task has none."""
    task, system = setup.task, setup.system
    _, _, k_eval, _ = run_keys(seed)
    k_batch, k_noise = jax.random.split(k_eval)

    def held_out():
        batch = task.eval_batch(k_batch, batch_size)
        return None if batch is None else batch._replace(noise=system.sample_noise(k_noise, batch.n_steps, batch_size))

    # one program, not one per op; a pool of host trials is sliced on the host (never a compiled constant)
    batch = held_out() if getattr(task, "host_batches", False) else compiled_once(held_out)
    if batch is None:
        return None, None

    @jax.jit
    def evaluate(params):
        _, ys, losses = rollout(system, params, system.init_state(params, batch_size), batch)
        return {"loss": losses.sum(), **task.evaluate(batch, ys)}, ys

    return evaluate, batch


def call_starts(start: int, iterations: int, call_length):
    """The update counts at which each call starts, from ``start`` up to ``iterations``."""
    i = start
    while i < iterations:
        yield i
        i += call_length(i)


def log_due(done: int, log_every: int, geometric: float | None = None) -> bool:
    """Whether iteration ``done`` writes train metrics: every ``log_every`` iterations, or with
    ``log_geometric: f`` (> 1) at geometrically spaced iterations, each time ``done`` passes a
    power of f (the UORO authors' ``train.lua`` logs at ×1.01 steps), so a 10⁷-character stream
    writes ~ln(iterations)/ln(f) records. Stateless in ``done``: a resumed run logs the same rows."""
    if not geometric:
        return done % log_every == 0
    if isinstance(geometric, bool) or not isinstance(geometric, (int, float)) or geometric <= 1:
        raise ConfigError("log_geometric", geometric, "must be a number > 1 (e.g. 1.01) or null (log every log_every)")
    if done <= 1:
        return True
    return math.floor(math.log(done) / math.log(geometric)) > math.floor(math.log(done - 1) / math.log(geometric))


def to_host(metrics: dict) -> dict:
    """Device metrics as Python numbers (scalars) or numpy arrays."""
    return {k: (v.item() if np.ndim(v) == 0 else v) for k, v in jax.device_get(metrics).items()}


def run_label(setup: Setup, choices: dict | None) -> str:
    """``task/optim`` from Hydra's group choices, else from the task's and the optimizer's names."""
    choices = choices or {}
    task = choices.get("task") or setup.task.name
    return f"{task}/{choices.get('optim') or 'optim'}"


