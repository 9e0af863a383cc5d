"""SOFO, FGD, UORO and RTRL for a recurrent model written as plain JAX functions.

A model is one batched step and a per-sample loss; nothing else is needed:

    step(params, state, x_t) -> (state', y_t)     x_t [B, ...] (array or pytree), y_t [B, O], state any pytree
    loss(y_b, target_b) -> scalar                 one sample (y_b [O]); or "mse" | "xent" (closed forms)

The loss of a sequence is ``L = Σ_t (1/B) Σ_b w_tb loss(y_tb, target_tb)``, with ``w = 1/T`` by
default (the mean over time and batch). Each factory returns a ``RecurrentOptimizer``, a pair of
pure, jit-able functions in the style of optax::

    opt = sofo_lab.sofo(step, loss, init_state=jnp.zeros(64), learning_rate=0.3)
    opt_state = opt.init(params)
    params, opt_state, info = opt.update(params, opt_state, inputs, targets, key)   # inputs [T, B, ...]

``stream=True`` (the default for UORO and RTRL) carries the network state across calls inside
``opt_state``: consecutive windows of B endless streams. ``value_and_sofo_direction`` and
``value_and_fgd_direction`` return the step as a direction ``(loss, direction, info)`` for any
optax chain. This module only adapts plain functions to the engines' system/loss/batch objects
(sofo_lab/core/system.py, sofo_lab/core/losses.py); the methods themselves live in sofo_lab/optim/.
Every argument is checked once, by the engine's factory that ``sofo-run`` uses too, so a bad value
ends in one ``ConfigError`` naming it as the library spells it (``n_tangents``, ``learning_rate``).
Guide with runnable examples: docs/library.md.

References:
    Yu, Xia, Ma, Lengyel, Hennequin. Second-order forward-mode optimization of recurrent neural
    networks for neuroscience. NeurIPS 2024 (SOFO, FGD).
    Tallec, Ollivier. Unbiased Online Recurrent Optimization. ICLR 2018 (UORO).
    Williams, Zipser. A learning algorithm for continually running fully recurrent neural
    networks. Neural Computation 1(2), 1989 (RTRL).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sofo_lab.core import checks
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import LOSSES, PerSampleLoss
from sofo_lab.core.system import Batch, StepInput
from sofo_lab.optim import _forward
from sofo_lab.optim import fgd as _fgd
from sofo_lab.optim import rtrl as _rtrl
from sofo_lab.optim import solves as _solves
from sofo_lab.optim import sofo as _sofo
from sofo_lab.optim import uoro as _uoro
from sofo_lab.optim.transforms import make_plateau

LOSS_NAMES = {"mse": "mse", "xent": "xent", "cross_entropy": "xent", "softmax_cross_entropy": "xent"}


# --- plain functions as a system --------------------------------------------------------------

class FunctionSystem:
    """``step``, ``loss`` and ``init_state`` as the system every engine consumes (sofo_lab/core/system.py).

    ``init_state``: a callable ``(params, batch_size) -> state`` (a learned initial state gets
    gradients) or a pytree of per-sample arrays, broadcast over the batch. It has no
    ``init_params``: the engines read P and the shapes from the parameters given to ``init``.
    """

    def __init__(self, step, loss, init_state):
        self._step, self.loss, self._init_state = step, loss, init_state

    def init_state(self, params, batch_size: int):
        if callable(self._init_state):
            return self._init_state(params, batch_size)
        return jax.tree.map(lambda s: jnp.broadcast_to(s, (batch_size,) + jnp.shape(s)), self._init_state)

    def step(self, params, state, x: StepInput):
        return self._step(params, state, x.u)

    def sample_noise(self, key, n_steps: int, batch_size: int):
        return None


def as_loss(loss):
    """``"mse"`` / ``"xent"`` (closed-form curvature), a per-sample callable, or a loss object."""
    if isinstance(loss, str):
        if loss not in LOSS_NAMES:
            raise ConfigError("loss", loss, f"choose one of {sorted(LOSS_NAMES)} or pass a per-sample "
                              "function loss(y, target) -> scalar")
        return LOSSES[LOSS_NAMES[loss]]
    if callable(getattr(loss, "value", None)) and callable(getattr(loss, "ggn", None)):
        return loss
    if callable(loss):
        return PerSampleLoss(loss)
    raise ConfigError("loss", loss, "must be 'mse', 'xent' or a per-sample function loss(y, target) -> scalar")


def make_system(step, loss, init_state) -> FunctionSystem:
    """Check the three plain pieces and wrap them as a system (also usable with ``sofo_lab.simulate``)."""
    if not callable(step):
        raise ConfigError("step", step, "must be a function step(params, state, x_t) -> (state, y_t)")
    if init_state is None:
        raise ConfigError("init_state", None, "give the state before the first step: a pytree of per-sample "
                          "arrays (e.g. jnp.zeros(n_hidden)) or a function (params, batch_size) -> state")
    if not callable(init_state):
        for leaf in jax.tree.leaves(init_state):
            if not hasattr(leaf, "shape"):
                raise ConfigError("init_state", leaf, "must hold arrays (or be a function (params, batch_size) "
                                  "-> state)")
    return FunctionSystem(step, as_loss(loss), init_state)


def make_batch(inputs, targets, weights=None) -> Batch:
    """Time-major ``inputs`` (array or pytree of ``[T, B, ...]``), ``targets [T, B, ...]`` and weights
    (``[T, B]``, or ``[T, B, O]`` for ``"mse"``; default ``1/T``) as a ``Batch``."""
    leaves = jax.tree.leaves(inputs)
    if not leaves or any(jnp.ndim(x) < 2 for x in leaves):
        raise ConfigError("inputs", jax.tree.map(jnp.shape, inputs), "must be time-major arrays [T, B, ...]")
    T, B = jnp.shape(leaves[0])[:2]
    for name, tree in (("inputs", inputs), ("targets", targets)):
        for x in jax.tree.leaves(tree):
            if jnp.shape(x)[:2] != (T, B):
                raise ConfigError(name, f"shape {jnp.shape(x)}", f"must start with [T, B] = [{T}, {B}] like the inputs")
    dtype = jnp.result_type(float)
    if weights is None:
        weights = jnp.full((T, B), 1.0 / T, dtype)
    elif jnp.shape(weights)[:2] != (T, B):
        raise ConfigError("weights", f"shape {jnp.shape(weights)}", f"must be [T, B] = [{T}, {B}] (or [T, B, O] "
                          "for loss='mse')")
    return Batch(inputs, targets, jnp.asarray(weights))


# --- the update: an optax transformation, or the default one at learning_rate -----------------------
# (each method's own arguments are checked by its factory in sofo_lab/optim/, for sofo-run too)

def _transform(tx, learning_rate, default) -> optax.GradientTransformation:
    """``tx`` (any optax transformation) or ``default(learning_rate)``; exactly one of the two."""
    if tx is not None:
        if learning_rate is not None:
            raise ConfigError("learning_rate", learning_rate, "give learning_rate or tx, not both "
                              "(put the learning rate inside tx)")
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise ConfigError("tx", tx, "must be an optax.GradientTransformation, e.g. optax.adam(1e-3)")
        return tx
    if learning_rate is None:
        raise ConfigError("learning_rate", None, "give a learning rate (or tx=<an optax transformation>)")
    if not callable(learning_rate):
        checks.positive("learning_rate", learning_rate)
    return default(learning_rate)


def _check_batch(batch_size, batch):
    if batch_size is not None and batch.batch_size != batch_size:
        raise ConfigError("inputs", f"B={batch.batch_size}", f"must hold batch_size={batch_size} streams, as "
                          "given to the factory")


# --- optimizers -----------------------------------------------------------------------------------

class RecurrentOptState(NamedTuple):
    inner: Any      # the method's own state (SofoState, FgdState, UoroState, RtrlState)
    carry: Any      # stream=True: the network state at the end of the last window; else None


class RecurrentOptimizer(NamedTuple):
    """``init(params) -> opt_state``;
    ``update(params, opt_state, inputs, targets, key, weights=None) -> (params, opt_state, info)``
    with ``info`` a dict of scalars that always holds ``loss`` (of this batch, before or, for the
    online methods, while updating)."""

    init: Callable
    update: Callable


def _optimizer(system, engine, *, stream: bool, batch_size) -> RecurrentOptimizer:
    """Wrap an engine's ``Optimizer`` (sofo_lab/optim/base.py), built once for ``system``."""
    stream = checks.boolean("stream", stream)
    if stream and batch_size is None:
        raise ConfigError("batch_size", None, "stream=True carries B network states across windows: give "
                          "batch_size=B")
    if batch_size is not None:
        checks.positive_int("batch_size", batch_size)

    def init(params):
        carry = system.init_state(params, batch_size) if stream else None
        return RecurrentOptState(engine.init(params), carry)

    def update(params, opt_state, inputs, targets, key, weights=None):
        batch = make_batch(inputs, targets, weights)
        _check_batch(batch_size if stream else None, batch)
        params, inner, carry, info = engine.update(params, opt_state.inner, batch, key, opt_state.carry)
        return params, RecurrentOptState(inner, carry if stream else None), info

    return RecurrentOptimizer(init, update)


def _defaults(factory) -> dict:
    """The keyword defaults of an engine's factory: the library's defaults, written once there."""
    return {n: p.default for n, p in inspect.signature(factory).parameters.items() if p.default is not p.empty}


_SOFO, _FGD, _UORO, _RTRL = (_defaults(f) for f in (_sofo.sofo, _fgd.fgd, _uoro.uoro, _rtrl.rtrl))
SOFO_PLATEAU = True   # conf/optim/sofo.yaml's ``plateau`` (tests/test_library.py checks they agree)


def sofo(step, loss, *, init_state, learning_rate=None, tx=None, n_tangents: int = _SOFO["n_tangents"],
         damping: float = _SOFO["damping"], orthonormalize: bool = _SOFO["orthonormalize"],
         adaptive_damping: bool = _SOFO["adaptive_damping"], damping_range=_SOFO["damping_range"],
         noise_aware: bool = _SOFO["noise_aware"], trust_radius=_SOFO["trust_radius"],
         robust_trials=_SOFO["robust_trials"], plateau=SOFO_PLATEAU,
         stream: bool = False,
         batch_size: int | None = None) -> RecurrentOptimizer:
    """SOFO (Yu et al. 2024): a damped Gauss-Newton step in a fresh random K-dim subspace,

        V ∈ ℝ^{P×K} random,  C = Vᵀ∇L,  G̃ = VᵀGV  (one batched forward pass),
        z = (G̃ + λ s_max I)⁻¹ C,   θ ← θ + tx(V z)   (default tx = optax.sgd(learning_rate)).

    G is the exact GGN of the loss: closed forms for "mse"/"xent", the exact Hessian of any other
    per-sample loss. ``learning_rate = 1`` is the full damped Gauss-Newton step. ``adaptive_damping``:
    Levenberg-Marquardt λ within ``damping_range`` (docs/sofo.md). ``noise_aware``: λ (at least the
    damping) and the step's length (at most ``learning_rate``; 1 with ``tx`` or a schedule) chosen
    from the batch's per-trial gradients to maximize an unbiased estimate of the decrease on
    held-out trials (docs/sofo.md, "Noisy tasks"). ``trust_radius``: the direction ``V z`` at most
    this long, by a larger λ for the step (a trust region, docs/sofo.md). ``robust_trials``: a trial
    whose loss is above this many times the batch's median counts as that many median trials in
    the step (docs/sofo.md). ``plateau`` (``True``, a dict of
    ``sofo_lab.optim.transforms.PLATEAU``'s keys, or ``None``): the step, ``tx``'s included, shrinks
    when the loss of the batches stalls, as ``optim.plateau`` does (docs/sofo.md, "Noisy tasks"); the
    default is ``sofo-run``'s. Memory is constant in T. The arguments are checked by
    ``sofo_lab.optim.sofo.sofo``, the same factory ``sofo-run`` uses.
    """
    system = make_system(step, loss, init_state)
    length = float(learning_rate) if tx is None and isinstance(learning_rate, (int, float)) else 1.0
    tx = _transform(tx, learning_rate, optax.sgd)
    shrink = make_plateau({"plateau": plateau}, prefix="")
    tx = optax.chain(tx, shrink) if shrink is not None else tx
    engine = _sofo.sofo(system, tx, n_tangents=n_tangents, damping=damping, orthonormalize=orthonormalize,
                        fast=False, adaptive_damping=adaptive_damping, damping_range=damping_range,
                        noise_aware=noise_aware, step_length=length, trust_radius=trust_radius,
                        robust_trials=robust_trials)
    return _optimizer(system, engine, stream=stream, batch_size=batch_size)


def fgd(step, loss, *, init_state, learning_rate=None, tx=None, n_tangents: int = _FGD["n_tangents"],
        orthonormalize: bool = _FGD["orthonormalize"], stream: bool = False,
        batch_size: int | None = None) -> RecurrentOptimizer:
    """Forward gradient descent (Baydin et al. 2022; the SOFO paper's first-order baseline):
    ``ĝ = (P/K) V Vᵀ∇L`` from the same forward pass, ``θ ← θ + tx(ĝ)`` (default ``optax.adam``)."""
    system = make_system(step, loss, init_state)
    tx = _transform(tx, learning_rate, optax.adam)
    engine = _fgd.fgd(system, tx, n_tangents=n_tangents, orthonormalize=orthonormalize, fast=False)
    return _optimizer(system, engine, stream=stream, batch_size=batch_size)


def uoro(step, loss, *, init_state, batch_size: int, learning_rate=None, tx=None,
         update_every: int = _UORO["update_every"], eps: float = _UORO["eps"],
         stream: bool = True) -> RecurrentOptimizer:
    """UORO (Tallec & Ollivier 2018): a rank-one unbiased estimate ``s̃ θ̃ᵀ`` of ∂s_t/∂θ carried
    forward, ``θ ← θ + tx(Σ g̃)`` every ``update_every`` steps *inside* the window (default
    ``optax.adam``). ``stream=True``: the network state, s̃ and θ̃ carry across calls; B streams
    (``batch_size``) share one θ̃. The algorithm step by step: sofo_lab/optim/uoro.py."""
    system = make_system(step, loss, init_state)
    tx = _transform(tx, learning_rate, optax.adam)
    engine = _uoro.uoro(system, tx, batch_size=batch_size, update_every=update_every, eps=eps)
    return _optimizer(system, engine, stream=stream, batch_size=batch_size)


def rtrl(step, loss, *, init_state, batch_size: int, learning_rate=None, tx=None,
         update_every: int = _RTRL["update_every"], stream: bool = True,
         max_jacobian: int = _RTRL["max_jacobian"]) -> RecurrentOptimizer:
    """Exact RTRL (Williams & Zipser 1989): the full Jacobian ∂s_t/∂θ carried forward, the exact
    online gradient, ``θ ← θ + tx(Σ g)`` every ``update_every`` steps (default ``optax.adam``).
    Memory B·dim(s)·P floats, refused by ``init`` above ``max_jacobian``: small models only."""
    system = make_system(step, loss, init_state)
    tx = _transform(tx, learning_rate, optax.adam)
    engine = _rtrl.rtrl(system, tx, batch_size=batch_size, update_every=update_every, max_jacobian=max_jacobian)
    return _optimizer(system, engine, stream=stream, batch_size=batch_size)


# --- the step as a direction, for any optax chain --------------------------------------------------

def _direction_fn(step, loss, init_state, n_tangents, orthonormalize, with_ggn, finish):
    system = make_system(step, loss, init_state)
    n_tangents, orthonormalize = _forward.check_tangents(n_tangents, orthonormalize)
    stepper = _forward.GenericStepper(system)

    def value_and_direction(params, inputs, targets, key, weights=None, state=None):
        _forward.check_basis(params, n_tangents, orthonormalize)
        batch = make_batch(inputs, targets, weights)
        tangents = _forward.sample_tangents(key, params, n_tangents, orthonormalize)
        sketch = _forward.forward_sketch(system, params, tangents, batch, state, with_ggn=with_ggn, stepper=stepper)
        dtype = jnp.result_type(*jax.tree.leaves(params))
        direction, info = finish(tangents, sketch, params)
        return sketch.loss.astype(dtype), direction, {**info, "state": sketch.final_state}

    return value_and_direction


def value_and_sofo_direction(step, loss, *, init_state, n_tangents: int = _SOFO["n_tangents"],
                             damping: float = _SOFO["damping"], orthonormalize: bool = _SOFO["orthonormalize"]):
    """The SOFO step as a direction: returns ``f(params, inputs, targets, key, weights=None, state=None)
    -> (loss, direction, info)``.

    ``direction = V (G̃ + λ s_max I)⁻¹ Vᵀ∇L`` is a pytree like ``params`` that plays the role of a
    gradient: ``updates, s = tx.update(direction, s, params)`` with any optax chain (``optax.sgd(1.0)``
    is the full damped Gauss-Newton step). ``state``: continue a stream from this network state
    (no credit flows into it); ``info["state"]`` is the state after the last step. ``info`` also
    holds the curvature metrics of sofo_lab/optim/sofo.py.
    """
    damping = _sofo.check_damping(damping)

    def finish(tangents, sketch, params):
        z, s = _solves.damped_solve(sketch.ggn, sketch.c, damping)
        return _forward.combine(tangents, z), _solves.curvature_metrics(s, damping)

    return _direction_fn(step, loss, init_state, n_tangents, orthonormalize, True, finish)


def value_and_fgd_direction(step, loss, *, init_state, n_tangents: int = _FGD["n_tangents"],
                            orthonormalize: bool = _FGD["orthonormalize"]):
    """The forward gradient ``(P/K) V Vᵀ∇L`` (an unbiased estimate of ∇L) as ``f(params, inputs, targets,
    key, weights=None, state=None) -> (loss, gradient, info)``, like ``jax.value_and_grad``."""

    def finish(tangents, sketch, params):
        return _fgd.fgd_direction(tangents, sketch.c, _forward.n_params(params)), {}

    return _direction_fn(step, loss, init_state, n_tangents, orthonormalize, False, finish)
