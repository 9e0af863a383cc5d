"""``optim=sofo``: second-order forward-mode optimization (damped Gauss-Newton in a random subspace).

Each iteration, with a fresh key (independent of the data key):

    V  = [v_1 … v_K] ∈ ℝ^{P×K}         Gaussian, unit-norm columns (optim.orthonormalize: VᵀV = I)
    C  = Vᵀ∇L,   G̃ = VᵀGV                one batched forward pass (sofo_lab/optim/_forward.py)
    G̃ = U S Uᵀ                          (eigh, float64; S ← |S|)
    z  = U (S + λ s_max I)⁻¹ Uᵀ C         relative damping λ = optim.damping, s_max = max(S)
    θ ← θ + optax_update(V z)             SGD by default: θ ← θ − η V z

G is the exact generalized Gauss-Newton matrix of the reported loss (sofo_lab/losses.py), so
``lr = 1`` is the full damped Gauss-Newton step inside span(V). Memory is constant in T.

Metrics: ``loss``, ``sofo/top_eigenvalue`` (s_max), ``sofo/condition_number`` (s_max / s_min of
G̃, with s_min floored at 1e-16·s_max), ``sofo/damped_condition_number``, ``sofo/projected_grad_norm``
(‖C‖), ``update_norm``.

References:
    Yu, Xia, Ma, Lengyel, Hennequin. Second-order forward-mode optimization of recurrent neural
    networks for neuroscience. NeurIPS 2024 (Alg. 1).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

from sofo_lab.errors import ConfigError
from sofo_lab.optim import _forward
from sofo_lab.optim.base import Optimizer
from sofo_lab.optim.transforms import make_transform
from sofo_lab.system import tree_norm


def damped_solve(ggn, c, damping: float):
    """``z = (G̃ + λ s_max I)⁻¹ C`` by ``eigh``; returns ``(z, eigenvalues)`` (float64)."""
    with _forward._x64():
        s, u = jnp.linalg.eigh(ggn)
        s = jnp.abs(s)
        s_max = jnp.max(s)
        denom = s + damping * s_max
        inv = jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)
        z = u @ (inv * (u.T @ c))
    return z, s


def curvature_metrics(s, damping: float) -> dict:
    with _forward._x64():
        s_max, s_min = jnp.max(s), jnp.min(s)
        floor = jnp.maximum(s_min, 1e-16 * s_max)
        cond = jnp.where(s_max > 0, s_max / jnp.where(floor > 0, floor, 1.0), 1.0)
        damped = jnp.where(s_max > 0, (1 + damping) * s_max / jnp.where(s_min + damping * s_max > 0,
                                                                          s_min + damping * s_max, 1.0), 1.0)
        return {"sofo/top_eigenvalue": s_max.astype(jnp.float32),
                "sofo/condition_number": cond.astype(jnp.float32),
                "sofo/damped_condition_number": damped.astype(jnp.float32)}


class SofoState(NamedTuple):
    inner: optax.OptState


def sofo(system, transform: optax.GradientTransformation, *, n_tangents: int = 64, damping: float = 1e-3,
         orthonormalize: bool = False, sharding: _forward.LaneSharding = _forward.LaneSharding(),
         fast: bool = True) -> Optimizer:
    """SOFO with ``transform`` (an optax transformation) applied to the direction ``V z``."""
    stepper = _forward.stepper_for(system, fast=fast)

    def init_fn(params):
        return SofoState(transform.init(params))

    def update_fn(params, state, batch, key, carry):
        tangents = _forward.sample_tangents(key, params, n_tangents, orthonormalize)
        sketch = _forward.forward_sketch(system, params, tangents, batch, carry, stepper=stepper,
                                         sharding=sharding)
        z, s = damped_solve(sketch.ggn, sketch.c, damping)
        direction = _forward.combine(tangents, z)
        updates, inner = transform.update(direction, state.inner, params)
        params = optax.apply_updates(params, updates)
        with _forward._x64():
            c_norm = jnp.sqrt(jnp.sum(sketch.c ** 2)).astype(jnp.float32)
        metrics = {"loss": sketch.loss.astype(jnp.float32), **curvature_metrics(s, damping),
                   "sofo/projected_grad_norm": c_norm, "update_norm": tree_norm(updates)}
        return params, SofoState(inner), sketch.final_state, metrics

    return Optimizer(init_fn, update_fn)


def check_tangents(cfg, system, prefix: str = "optim") -> tuple[int, bool]:
    """Validate ``n_tangents`` (>= 1, and <= P when orthonormalizing) and ``orthonormalize``."""
    k = cfg.get("n_tangents", 64)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{prefix}.n_tangents", k, "must be an integer >= 1 (the number of tangent directions K)")
    ortho = cfg.get("orthonormalize", False)
    if not isinstance(ortho, bool):
        raise ConfigError(f"{prefix}.orthonormalize", ortho, "must be true or false")
    if ortho:
        p = _forward.n_params(system)
        if k > p:
            raise ConfigError(f"{prefix}.n_tangents", k, f"must be <= the {p} parameters when "
                              f"{prefix}.orthonormalize=true (an orthonormal basis has at most P vectors)")
    return k, ortho


def check_flag(cfg, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"optim.{key}", value, "must be true or false")
    return value


def _with_sgd_default(cfg):
    from omegaconf import OmegaConf

    if cfg.get("update", None) is None:
        cfg = OmegaConf.merge(cfg, {"update": "sgd"})
    return cfg


def from_config(cfg, system, *, episodic, iterations, n_steps):
    del episodic, n_steps
    k, ortho = check_tangents(cfg, system)
    damping = cfg.get("damping", 1e-3)
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping >= 0 \
            or damping == float("inf"):
        raise ConfigError("optim.damping", damping, "must be a finite number >= 0 (relative to G̃'s top eigenvalue)")
    fast = check_flag(cfg, "fast", True)
    transform = make_transform(_with_sgd_default(cfg), iterations)
    return sofo(system, transform, n_tangents=k, damping=float(damping), orthonormalize=ortho,
                sharding=_forward.lane_sharding(cfg.get("shard", "auto"), k), fast=fast)
