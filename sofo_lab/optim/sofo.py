"""``optim=sofo``: second-order forward-mode optimization (damped Gauss-Newton in a random subspace).

Each iteration, with a fresh key (independent of the data key):

    V  = [v_1 … v_K] ∈ ℝ^{P×K}         Gaussian, unit-norm columns (optim.orthonormalize: VᵀV = I)
    C  = Vᵀ∇L,   G̃ = VᵀGV                one batched forward pass (sofo_lab/optim/_forward.py)
    G̃ = U S Uᵀ                          (eigh, float64; S ← |S|)
    z  = U (S + λ s_max I)⁻¹ Uᵀ C         relative damping λ = optim.damping, s_max = max(S)
    θ ← θ + optax_update(V z)             SGD by default: θ ← θ − η V z

With ``optim.plateau`` (sofo-run's default; optim/transforms.py) the optax update ends in
``reduce_on_plateau`` on the batch's loss before the step: ``θ ← θ − s η V z``, the scale ``s``
halved when that loss (held-out for fresh trials) stalls (docs/sofo.md, "Noisy tasks").

G is the exact generalized Gauss-Newton matrix of the reported loss (sofo_lab/core/losses.py), so
``lr = 1`` is the full damped Gauss-Newton step inside span(V). Memory is constant in T.

Adaptive damping (``adaptive_damping=True``, Levenberg-Marquardt as in Martens 2010, §4.1):
the quadratic model in the subspace predicts the decrease of the step actually taken,
``Δ = −a V z`` (``a`` = the step's length along ``V z``, η for plain SGD),

    predicted = a Cᵀz − ½ a² zᵀ G̃ z,    actual = L(θ) − L(θ + Δ)   (same batch, same noise)
    ρ = actual / predicted:   ρ > ¾: λ ← λ·⅔      ρ < ¼: λ ← λ·3/2

one extra primal pass (no tangents). A step that raises the loss on its own batch (or makes
it non-finite) is rejected: θ stays, λ grows by 3/2 at every rejection until a step is
accepted, which keeps a closed loop that a small λ would blow up from diverging; a rejection
also restarts the optax state (momentum). λ stays in ``[damping_min, damping_max]``.

Metrics: ``loss``, ``sofo/top_eigenvalue`` (s_max), ``sofo/condition_number`` (s_max / s_min of
G̃, with s_min floored at 1e-16·s_max), ``sofo/damped_condition_number``, ``sofo/projected_grad_norm``
(‖C‖), ``sofo/effective_dim`` (Σ s/(s + λ s_max): how many of the K directions the damped step
really uses), ``sofo/damping`` (λ), ``update_norm``; with adaptive damping also ``sofo/rho`` and
``sofo/accepted``; with ``noise_aware`` also ``sofo/noise_damping`` (the λ taken) and
``sofo/step_scale`` (the share of the lr step taken, 0 = no step).

References:
    Yu, Xia, Ma, Lengyel, Hennequin. Second-order forward-mode optimization of recurrent neural
    networks for neuroscience. NeurIPS 2024 (Alg. 1).
    Martens. Deep learning via Hessian-free optimization. ICML 2010 (§4.1, Levenberg-Marquardt).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sofo_lab.core import checks
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import initial_state
from sofo_lab.core.tree import tree_norm
from sofo_lab.optim import _forward
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.solves import curvature_metrics, damped_solve, noise_aware_solve, tangent_gram, trust_solve
from sofo_lab.optim.transforms import is_plateau_state, make_transform


class SofoState(NamedTuple):
    inner: optax.OptState
    damping: jax.Array       # λ in use (float32 scalar); constant unless adaptive_damping
    previous: Any            # adaptive: the parameters before the last step (finite on their batch), else None


LM_LOWER, LM_UPPER, LM_SHRINK, LM_GROW = 0.25, 0.75, 2.0 / 3.0, 1.5   # Martens (2010) §4.1
ROLLBACK_GROW = 10.0   # λ after a step whose next batch was non-finite


def _tree_vdot(a, b):
    with _forward._x64():
        return sum(jnp.vdot(x.astype(jnp.float64), y.astype(jnp.float64))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _select(flag, a, b):
    return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def _restart(fresh_inner, inner):
    """The optax state after a rejected or rolled-back step: the buffers (momentum, Adam's moments)
    from ``fresh_inner``, the step counts and the plateau state from ``inner``. A stale momentum
    buffer would push the loss up again; a restarted count would restart the learning-rate schedule
    at its peak (with 1-2 % of steps rejected, a cosine schedule never got past its first ~100
    steps), and a restarted plateau state its scale at 1."""
    return jax.tree.map(lambda f, c: c if is_plateau_state(c) or jnp.issubdtype(c.dtype, jnp.integer) else f,
                        fresh_inner, inner, is_leaf=is_plateau_state)


def check_damping(damping, names=checks.PLAIN) -> float:
    """λ: a finite number >= 0 (relative to G̃'s top eigenvalue)."""
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 <= damping < math.inf:
        raise ConfigError(names("damping"), damping, "must be a finite number >= 0 (relative to G̃'s top eigenvalue)")
    return float(damping)


def check_trust_radius(radius, noise_aware: bool, names=checks.PLAIN) -> float | None:
    """``None`` (off) or a finite number > 0; the noise-aware solve sets its own step length."""
    if radius is None:
        return None
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 < radius < math.inf:
        raise ConfigError(names("trust_radius"), radius, "must be null (off) or a finite number > 0 (the longest "
                          "direction V z, in parameter norm)")
    if noise_aware:
        raise ConfigError(names("trust_radius"), radius, f"must be null when {names('noise_aware')} is true "
                          "(the noise-aware solve chooses the step's length itself)")
    return float(radius)


def check_damping_range(bounds, names=checks.PLAIN) -> tuple[float, float]:
    """``[min, max]`` of the adaptive λ, with 0 < min <= max < ∞."""
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            and 0 < bounds[0] <= bounds[1] < math.inf):
        raise ConfigError(names("damping_range"), bounds, "must be [min, max] with 0 < min <= max (adaptive λ bounds)")
    return float(bounds[0]), float(bounds[1])


def sofo(system, transform: optax.GradientTransformation, *, n_tangents: int = 64, damping: float = 1e-3,
         orthonormalize: bool = False, sharding=_forward.LaneSharding(), fast: bool = True,
         adaptive_damping: bool = False, damping_range=(1e-6, 1.0), noise_aware: bool = False,
         step_length: float = 1.0, trust_radius: float | None = None, robust_trials: float | None = None,
         names=checks.PLAIN) -> Optimizer:
    """SOFO with ``transform`` (an optax transformation) applied to the direction ``V z``.

    Every argument is checked here, once, for the command line (``from_config``) and the library
    (sofo_lab/library.py) alike; ``names`` names them as the caller does (``checks.named``). K <= P
    (``orthonormalize``) is checked by ``init``, which sees the parameters. ``sharding``: a
    ``LaneSharding`` or the mode of ``_forward.lane_sharding`` ("auto", true, false).

    With ``adaptive_damping`` a batch on which the current parameters are non-finite (a closed loop
    that the last step made unstable for some trial) rolls that step back: θ returns to the
    parameters before it, the optax state's buffers restart (its step count goes on), λ grows ×10,
    and ``metrics["rolled_back"]`` is 1 so that the runner goes on instead of stopping at a
    non-finite loss.

    ``noise_aware``: the forward pass also keeps each trial's projected gradient, and the step is
    ``noise_aware_solve``'s: λ (at least the damping in use) and the step's length (at most
    ``step_length``, the learning rate) chosen to maximize an unbiased estimate of the decrease on
    trials the step was not fitted to. Off, the step is the exact damped Gauss-Newton step.

    ``trust_radius``: the direction ``V z`` is at most this long, by a larger λ for this step
    (``trust_solve``; ``sofo/trust_damping`` is the λ taken); ``None``: off.

    ``robust_trials`` (``c > 1``): before the forward pass, one primal pass gives each trial's loss,
    and trials above ``c`` times the median are down-weighted to count as ``c`` median trials in C,
    G̃ and the Levenberg-Marquardt test (``robust_weights``); ``loss`` stays the task's loss,
    ``sofo/robust_loss`` is the reweighted one the step minimizes, ``sofo/downweighted`` the share
    of trials down-weighted; with ``adaptive_damping`` a step must also lower the task's loss of the
    batch (``_levenberg_marquardt``), and the plateau watches the task's loss. ``None``: off (every
    trial counts in full).
    """
    n_tangents, orthonormalize = _forward.check_tangents(n_tangents, orthonormalize, names)
    damping = check_damping(damping, names)
    fast = checks.boolean(names("fast"), fast)
    adaptive_damping = checks.boolean(names("adaptive_damping"), adaptive_damping)
    damping_min, damping_max = check_damping_range(damping_range, names)
    noise_aware = checks.boolean(names("noise_aware"), noise_aware)
    trust_radius = check_trust_radius(trust_radius, noise_aware, names)
    if robust_trials is not None and (isinstance(robust_trials, bool) or not isinstance(robust_trials, (int, float))
                                      or not 1 < robust_trials < math.inf):
        raise ConfigError(names("robust_trials"), robust_trials, "must be null (off) or a finite number > 1 (a "
                          "trial's loss above this many times the batch's median is down-weighted to it)")
    sharding = _forward.lane_sharding(sharding, n_tangents, names)
    stepper = _forward.stepper_for(system, fast=fast)
    transform = optax.with_extra_args_support(transform)   # update(..., value=loss) for optim.plateau

    def init_fn(params):
        _forward.check_basis(params, n_tangents, orthonormalize, names)
        return SofoState(transform.init(params), jnp.asarray(damping, jnp.float32),
                         params if adaptive_damping else None)

    def update_fn(params, state, batch, key, carry):
        tangents = _forward.sample_tangents(key, params, n_tangents, orthonormalize)
        metrics, robust = {}, None
        if robust_trials is not None:
            losses = trial_losses(system, params, batch, carry)
            robust = Robust(robust_weights(losses, robust_trials), jnp.sum(losses), batch)
            batch = batch.reweighted(robust.weights)
            metrics = {"sofo/downweighted": jnp.mean((robust.weights < 1).astype(jnp.float32))}
        sketch = _forward.forward_sketch(system, params, tangents, batch, carry, stepper=stepper,
                                         sharding=sharding, per_trial=noise_aware)
        lam = state.damping if adaptive_damping else damping   # fixed: the exact float64 λ
        if noise_aware:
            step = noise_aware_solve(sketch.ggn, sketch.c, sketch.c_trials, lam, step_length)
            z, s = step.z, step.s
            metrics.update({"sofo/noise_damping": step.damping.astype(jnp.float32),
                            "sofo/step_scale": step.scale.astype(jnp.float32)})
        elif trust_radius is not None:
            step = trust_solve(sketch.ggn, sketch.c, tangent_gram(tangents), lam, trust_radius)
            z, s = step.z, step.s
            metrics["sofo/trust_damping"] = step.damping.astype(jnp.float32)
        else:
            z, s = damped_solve(sketch.ggn, sketch.c, lam)
        direction = _forward.combine(tangents, z)
        reported = sketch.loss if robust is None else robust.loss   # the task's loss, not the reweighted one
        updates, inner = transform.update(direction, state.inner, params, value=reported)
        new_params = optax.apply_updates(params, updates)
        with _forward._x64():
            c_norm = jnp.sqrt(jnp.sum(sketch.c ** 2)).astype(jnp.float32)
        if robust is not None:
            metrics["sofo/robust_loss"] = sketch.loss.astype(jnp.float32)
        metrics.update({"loss": reported.astype(jnp.float32), **curvature_metrics(s, lam),
                        "sofo/projected_grad_norm": c_norm, "sofo/damping": lam})
        previous = state.previous
        if adaptive_damping:
            new_params, inner, lam, lm = _levenberg_marquardt(
                system, params, new_params, transform.init(params), inner, updates, direction, z, sketch, batch,
                carry, lam, robust)
            lam = jnp.clip(lam, damping_min, damping_max)
            metrics.update(lm)
            with _forward._x64():
                finite = jnp.isfinite(sketch.loss) & jnp.all(jnp.isfinite(sketch.c)) & jnp.all(jnp.isfinite(s))
            new_params = _select(finite, new_params, state.previous)
            inner = _select(finite, inner, _restart(transform.init(state.previous), inner))
            lam = jnp.where(finite, lam, jnp.clip(state.damping * ROLLBACK_GROW, damping_min, damping_max))
            previous = _select(finite, params, state.previous)
            metrics["rolled_back"] = (~finite).astype(jnp.float32)
            updates = jax.tree.map(jnp.subtract, new_params, params)
        metrics["update_norm"] = tree_norm(updates)
        return new_params, SofoState(inner, jnp.asarray(lam, jnp.float32), previous), sketch.final_state, metrics

    return Optimizer(init_fn, update_fn)


def _summed(system, params, batch, carry, loss_at, shape=()):
    """``Σ_t loss_at(y_t, target_t, w_t)`` over one primal pass of ``params`` on ``batch`` (nothing of
    length T kept); ``shape``: that of one step's loss."""

    def body(c, xs):
        state, total = c
        x, target, w = xs
        state, y = system.step(params, state, x)
        return (state, total + loss_at(y, target, w).astype(total.dtype)), None

    init = (initial_state(system, params, carry, batch.batch_size), jnp.zeros(shape, batch.dtype))
    (_, total), _ = batch.scan(body, init)
    return total


def _primal_loss(system, params, batch, carry):
    """The summed loss of ``params`` on ``batch`` (one primal pass)."""
    return _summed(system, params, batch, carry, system.loss.value)


def trial_losses(system, params, batch, carry):
    """``[B]``: each trial's share of the batch's loss (they sum to ``_primal_loss``); one primal pass."""

    def one(y, target, w):   # the loss of one trial, as a batch of one, divided by B
        return system.loss.value(y[None], target[None], w[None]) / batch.batch_size

    return _summed(system, params, batch, carry, jax.vmap(one), (batch.batch_size,))


def robust_weights(losses, cap: float):
    """IRLS weights ``w_b = min(1, cap·m / ℓ_b)`` of the trials' losses ``ℓ_b`` (``m`` their median).

    They are ``ρ'(ℓ_b)`` of the robust loss ``ρ(ℓ) = ℓ`` for ``ℓ <= cap·m``, ``cap·m (1 + log(ℓ/(cap·m)))``
    beyond: a trial whose closed loop blows up counts as ``cap`` median trials, not as the whole
    batch, in C and G̃ (iteratively reweighted least squares: Holland & Welsch, Commun. Stat. 1977;
    for Gauss-Newton, Triggs et al., Bundle adjustment — a modern synthesis, 2000, §4.3). Non-finite
    losses get weight 0."""
    m = jnp.nanmedian(jnp.where(jnp.isfinite(losses), losses, jnp.nan))   # of the finite losses
    bound = cap * m
    ok = jnp.isfinite(losses) & (losses > bound)
    return jnp.where(ok, bound / jnp.where(ok, losses, 1.0), jnp.where(jnp.isfinite(losses), 1.0, 0.0))


class Robust(NamedTuple):
    weights: jax.Array       # [B] robust_weights of the trials' losses before the step
    loss: jax.Array          # the task's (unweighted) loss of the batch before the step
    batch: Any               # the batch as the task gave it


def _levenberg_marquardt(system, params, new_params, fresh_inner, inner, updates, direction, z, sketch, batch,
                         carry, lam, robust: Robust | None = None):
    """Compare the subspace model's predicted decrease with the actual one; adapt λ, reject bad steps.

    A rejected step also restarts the optax state's buffers (``fresh_inner``, ``_restart``): a
    momentum buffer that pushed the loss up would otherwise push it up again at every later step.
    With ``robust`` trial weights, ρ is the reweighted loss's, and a step must lower the task's own
    loss of the batch too: the weights bound what one trial does to the step, and this keeps the
    step from buying the other trials' decrease with a growing loss on the down-weighted ones."""
    if robust is None:
        new_loss, guard = _primal_loss(system, new_params, batch, carry), True
    else:
        new_trials = trial_losses(system, new_params, robust.batch, carry)
        new_loss = jnp.sum(robust.weights.astype(new_trials.dtype) * new_trials)
        guard = jnp.sum(new_trials) <= robust.loss
    with _forward._x64():
        new_loss = new_loss.astype(jnp.float64)
        dd = _tree_vdot(direction, direction)
        a = -_tree_vdot(updates, direction) / jnp.where(dd > 0, dd, 1.0)      # Δ = −a V z
        predicted = a * jnp.dot(sketch.c, z) - 0.5 * a**2 * jnp.dot(z, sketch.ggn @ z)
        actual = sketch.loss - new_loss
        rho = jnp.where(predicted > 0, actual / jnp.where(predicted > 0, predicted, 1.0), -1.0)
        accept = jnp.isfinite(new_loss) & (actual >= 0) & guard
        rho = jnp.where(jnp.isfinite(rho), rho, -1.0).astype(jnp.float32)
    factor = jnp.where(rho > LM_UPPER, LM_SHRINK, jnp.where(rho < LM_LOWER, LM_GROW, 1.0)).astype(jnp.float32)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)  # noqa: E731
    metrics = {"sofo/rho": rho.astype(jnp.float32), "sofo/accepted": accept.astype(jnp.float32),
               "sofo/predicted_decrease": predicted.astype(jnp.float32)}
    return keep(new_params, params), keep(inner, _restart(fresh_inner, inner)), lam * factor, metrics


def _step_length(update: dict) -> float:
    """η for the noise-aware solve: SGD's learning rate (a schedule's peak, the longest step it
    takes); 1 for Adam, whose step is not a multiple of V z."""
    return float(update.get("lr", 1.0)) if update.get("update", "sgd") == "sgd" else 1.0


def from_config(system, *, iterations: int, n_tangents, damping, orthonormalize, adaptive_damping, damping_range,
                shard, fast, noise_aware=False, trust_radius=None, robust_trials=None, **update) -> Optimizer:
    """``optim=sofo`` (conf/optim/sofo.yaml holds every default): ``sofo`` with the optax keys in
    ``update`` (``lr``, ``update``, ..., sofo_lab/optim/transforms.py), which checks each key.

    ``noise_aware``, ``trust_radius`` and ``robust_trials`` have defaults here only so that runs saved before the keys
    existed still load.
    """
    return sofo(system, make_transform(update, iterations), n_tangents=n_tangents, damping=damping,
                orthonormalize=orthonormalize, sharding=shard, fast=fast, adaptive_damping=adaptive_damping,
                damping_range=damping_range, noise_aware=noise_aware, step_length=_step_length(update),
                trust_radius=trust_radius, robust_trials=robust_trials, names=checks.CONFIG)
