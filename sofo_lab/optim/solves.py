"""SOFO's step inside the subspace: from ``C = Vᵀ∇L`` and ``G̃ = VᵀGV`` ([K], [K, K]) to the
coefficients ``z`` of the direction ``V z`` (sofo_lab/optim/sofo.py runs them; docs/sofo.md).

- ``damped_solve``: ``z = (G̃ + λ s_max I)⁻¹ C`` (Yu et al., NeurIPS 2024, Alg. 1);
- ``trust_solve``: the damped step no longer than a radius (``optim.trust_radius``);
- ``noise_aware_solve``: λ and length from an unbiased estimate of the held-out decrease
  (``optim.noise_aware``);
- ``curvature_metrics``: what ``sofo/*`` logs of G̃'s spectrum.

All in float64 (``_forward._x64``): G̃'s condition number reaches 10⁸ on the reach.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.optim import _forward

__all__ = ["NOISE_GRID", "TRUST_GRID", "NoiseAwareStep", "TrustStep", "curvature_metrics", "damped_solve",
           "noise_aware_solve", "tangent_gram", "trust_solve"]


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


# λ candidates of the trust-region solve: the damping in use times 10^(0, ¼, ½, …, 12)
TRUST_GRID = tuple(10.0 ** (i / 4) for i in range(49))


def tangent_gram(tangents):
    """``VᵀV`` ([K, K], float64) of tangents whose leaves are ``[K, *leaf.shape]``."""
    with _forward._x64():
        return sum(jnp.tensordot(v.astype(jnp.float64), v.astype(jnp.float64), axes=(tuple(range(1, v.ndim)),) * 2)
                   for v in jax.tree.leaves(tangents))


class TrustStep(NamedTuple):
    z: jax.Array             # [K] subspace coefficients of the step (float64)
    s: jax.Array             # [K] eigenvalues of G̃
    damping: jax.Array       # the λ taken (>= the damping in use)


def trust_solve(ggn, c, gram, damping, radius: float) -> TrustStep:
    """The damped Gauss-Newton step no longer than ``radius`` in parameter space: the smallest
    ``λ' = damping × TRUST_GRID[i]`` with ``‖V z(λ')‖ <= radius``, ``z(λ') = (G̃ + λ' s_max I)⁻¹ C``.

    This is the trust-region subproblem's solution restricted to span(V) (Nocedal & Wright,
    Numerical Optimization, 2nd ed., Thm 4.1: the step of norm ≤ Δ minimizing the quadratic model is
    ``(B + μI)⁻¹(−g)`` for the μ ≥ 0 that makes its norm Δ), on a grid of λ a quarter decade apart.
    Unlike clipping the direction (``clip_norm``), which shortens ``z(λ)`` as it is, a larger λ
    shortens it mostly along G̃'s small-curvature directions, those the batch determines worst.
    ``‖V z‖² = zᵀ (VᵀV) z`` with ``gram = VᵀV``. If even the largest λ' is too long, ``z`` is scaled to
    the radius."""
    with _forward._x64():
        s, u = jnp.linalg.eigh(ggn)
        s = jnp.abs(s)
        s_max = jnp.max(s)
        proj = u.T @ c                                                    # [K]
        lams = damping * jnp.asarray(TRUST_GRID, jnp.float64)              # [L]
        d = s[None, :] + lams[:, None] * s_max                            # [L, K]
        w = jnp.where(d > 0, proj / jnp.where(d > 0, d, 1.0), 0.0)        # [L, K]
        norms = jnp.sqrt(jnp.maximum(jnp.einsum("lk,kj,lj->l", w, u.T @ gram @ u, w), 0.0))   # [L]
        ok = norms <= radius
        first = ok & (jnp.cumsum(ok.astype(jnp.int32)) == 1)
        last = jnp.arange(len(TRUST_GRID)) == len(TRUST_GRID) - 1
        pick = jnp.where(jnp.any(ok), first, last)
        w, lam, norm = (jnp.sum(jnp.where(pick[:, None], w, 0.0), axis=0),
                        jnp.sum(jnp.where(pick, lams, 0.0)), jnp.sum(jnp.where(pick, norms, 0.0)))
        w = jnp.where(norm > radius, w * radius / norm, w)
        z = u @ w
    return TrustStep(z, s, lam)


# λ candidates of the noise-aware solve: the Levenberg-Marquardt λ times 10^(0, ½, 1, …, 6)
NOISE_GRID = tuple(10.0 ** (i / 2) for i in range(13))


class NoiseAwareStep(NamedTuple):
    z: jax.Array             # [K] subspace coefficients of the step (float64)
    s: jax.Array             # [K] eigenvalues of G̃
    damping: jax.Array       # the λ chosen (≥ the floor)
    scale: jax.Array         # min(η, η*) / η ∈ [0, 1]: how much of the lr step is taken


def noise_aware_solve(ggn, c, c_trials, damping_floor, step_length: float = 1.0) -> NoiseAwareStep:
    """The damped Gauss-Newton step whose decrease on *held-out* trials is estimated largest
    (docs/sofo.md, "Noisy tasks").

    The batch's projected gradient is ``C = g + ε``: the population gradient ``g`` (in the subspace)
    plus sampling noise with covariance ``Σ``, estimated from the per-trial gradients ``C_b``
    (``[B, K]``, ``Σ_b C_b = C``) as ``Σ = Cov_b(B C_b) / B``. In G̃'s eigenbasis (``G̃ = U S Uᵀ``,
    ``D = S + λ s_max I``, ``z = D⁻¹ UᵀC``) the population loss after the step ``−a U z`` falls by
    ``a gᵀU D⁻¹UᵀC − ½ a² zᵀ S z`` in the quadratic model, and since ``E[ε] = 0``

        signal(λ) = CᵀU D⁻¹ UᵀC − tr(D⁻¹ UᵀΣU)

    estimates ``gᵀ U D⁻¹ Uᵀ g`` without bias (Stein's unbiased risk estimate, Ann. Statist. 1981).
    Its best length is ``η* = signal / zᵀSz``; the step is never longer than the learning rate's
    (``η = step_length``), so the length is ``a = min(η, max(0, η*))`` with estimated decrease
    ``a signal − ½ a² zᵀSz``. λ is the candidate ``damping_floor × NOISE_GRID`` of largest estimated
    decrease; the returned ``z`` is scaled by ``a / η`` (the optimizer then multiplies by η), and is
    zero when no candidate promises a decrease. Without noise (``C_b`` all alike) ``η* ≥ 1 ≥ η`` at
    the floor, which wins: the plain damped step.
    """
    with _forward._x64():
        s, u = jnp.linalg.eigh(ggn)
        s = jnp.abs(s)
        s_max = jnp.max(s)
        proj = u.T @ c                                                    # [K]
        B = c_trials.shape[0]
        noise = (jnp.var(B * (c_trials @ u), axis=0, ddof=1) / B if B > 1 else jnp.zeros_like(proj))
        lams = damping_floor * jnp.asarray(NOISE_GRID, jnp.float64)          # [L]
        d = s[None, :] + lams[:, None] * s_max                            # [L, K]
        d = jnp.where(d > 0, d, 1.0)
        signal = jnp.sum((proj ** 2 - noise) / d, axis=1)                 # [L]
        quad = jnp.sum(s * proj ** 2 / d ** 2, axis=1)                    # zᵀ S z
        best = jnp.clip(signal / jnp.where(quad > 0, quad, 1.0), 0.0, step_length)   # min(η, η*)
        best = jnp.where(quad > 0, best, jnp.where(signal > 0, step_length, 0.0))
        gain = best * signal - 0.5 * best ** 2 * quad
        top = gain == jnp.max(gain)                                       # argmax as a one-hot, first of ties
        pick = top & (jnp.cumsum(top.astype(jnp.int32)) == 1)             # (jnp.argmax mixes dtypes under _x64)
        best, lam = (jnp.sum(jnp.where(pick, x, 0.0)) for x in (best, lams))
        d = jnp.sum(jnp.where(pick[:, None], d, 0.0), axis=0)
        scale = best / step_length
        z = u @ (scale * proj / d)
    return NoiseAwareStep(z, s, lam, scale)


def curvature_metrics(s, damping) -> dict:
    with _forward._x64():
        s_max, s_min = jnp.max(s), jnp.min(s)
        used = jnp.sum(s / jnp.where(s + damping * s_max > 0, s + damping * s_max, 1.0))
        floor = jnp.maximum(s_min, 1e-16 * s_max)
        cond = jnp.where(s_max > 0, s_max / jnp.where(floor > 0, floor, 1.0), 1.0)
        damped = jnp.where(s_max > 0, (1 + damping) * s_max / jnp.where(s_min + damping * s_max > 0,
                                                                          s_min + damping * s_max, 1.0), 1.0)
        return {"sofo/top_eigenvalue": s_max.astype(jnp.float32),
                "sofo/effective_dim": used.astype(jnp.float32),
                "sofo/condition_number": cond.astype(jnp.float32),
                "sofo/damped_condition_number": damped.astype(jnp.float32)}
