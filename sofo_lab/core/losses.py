"""Per-step ("little") losses with their exact output-space curvature.

Every optimizer sums the little losses over time, ``L = sum_t loss(y_t, target_t, w_t)``.
SOFO also needs the Gauss-Newton block of each step, ``sum_b Y_bᵀ H_b Y_b`` with
``H_b = d²loss/dy_b²``; it is computed here from the same formula as the value, so the
curvature is exactly that of the reported loss (docs/sofo.md). Any other per-sample loss
works through ``PerSampleLoss``, whose curvature is the exact Hessian from JAX.

Shapes: ``y, target: [B, O]``; weights ``w: [B]`` or ``[B, O]``; tangents ``Y: [K, B, O]``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError


def _weights(w, y):
    w = jnp.asarray(w, y.dtype)
    return w[:, None] if w.ndim == 1 else w


class MeanSquaredError(NamedTuple):
    """``loss = (1/B) Σ_b Σ_o w_bo (y_bo − y*_bo)²``; ``H_b = (2/B) diag(w_b)``.

    Tasks put any time normalisation (e.g. 1/T) into the weights, so the summed loss is
    exactly the number they report.
    """

    kind: str = "mse"

    def value(self, y, target, w):
        return jnp.sum(_weights(w, y) * (y - target) ** 2) / y.shape[0]

    def ggn(self, y, target, w, tangents):
        """``Σ_b Y_bᵀ H_b Y_b`` for output tangents ``Y: [K, B, O]`` → ``[K, K]``."""
        del target
        scaled = tangents * (2.0 * _weights(w, y) / y.shape[0])
        return jnp.einsum("kbo,lbo->kl", scaled, tangents)


class SoftmaxCrossEntropy(NamedTuple):
    """``loss = (1/B) Σ_b w_b CE(softmax(y_b), target_b)`` in nats, target one-hot ``[B, O]``.

    ``H_b = (w_b/B)(diag p_b − p_b p_bᵀ)``. Bits per character are ``loss / ln 2`` when the
    weights average over the characters.
    """

    kind: str = "xent"

    def value(self, y, target, w):
        w = jnp.asarray(w, y.dtype).reshape(y.shape[0])
        nll = -jnp.sum(target * jax.nn.log_softmax(y), axis=-1)
        return jnp.sum(w * nll) / y.shape[0]

    def ggn(self, y, target, w, tangents):
        del target
        w = jnp.asarray(w, y.dtype).reshape(y.shape[0])
        p = jax.nn.softmax(y)                                  # [B, O]
        p_dot_y = jnp.einsum("bo,kbo->kb", p, tangents)        # pᵀY_b per tangent
        h_y = p * (tangents - p_dot_y[..., None])              # (diag p − p pᵀ) Y_b
        return jnp.einsum("kbo,lbo,b->kl", h_y, tangents, w / y.shape[0])


class PerSampleLoss:
    """Any per-sample loss ``fn(y_b [O], target_b) -> scalar``: ``loss = (1/B) Σ_b w_b fn(y_b, target_b)``.

    No closed form is needed: SOFO's curvature uses the exact output-space Hessian of ``fn``,

        H_b = ∂²fn/∂y_b²  (O×O per sample, ``jax.hessian``),   G̃ += Σ_b (w_b/B) Ẏ_bᵀ H_b Ẏ_b,

    the generalized Gauss-Newton matrix of Schraudolph (2002) for that loss. It is positive
    semi-definite when ``fn`` is convex in ``y`` (Huber, Poisson, any negative log-likelihood of an
    exponential family in its natural parameter). ``MeanSquaredError`` and ``SoftmaxCrossEntropy``
    give the same numbers in closed form, faster (tests/test_losses.py). Weights: ``[B]`` (one per
    sample); per-output weights need ``MeanSquaredError``.

    References:
        N. N. Schraudolph. Fast curvature matrix-vector products for second-order gradient
        descent. Neural Computation 14(7), 2002.
    """

    kind = "custom"

    def __init__(self, fn):
        self.fn = fn

    def _sample_weights(self, w, y):
        w = jnp.asarray(w, y.dtype)
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.ndim != 1:
            raise ConfigError("weights", f"shape {tuple(w.shape)}", "a custom loss takes one weight per sample "
                              "([T, B]); per-output weights [T, B, O] need loss='mse'")
        return w

    def value(self, y, target, w):
        return jnp.sum(self._sample_weights(w, y) * jax.vmap(self.fn)(y, target)) / y.shape[0]

    def ggn(self, y, target, w, tangents):
        """``Σ_b (w_b/B) Y_bᵀ H_b Y_b`` for output tangents ``Y: [K, B, O]`` → ``[K, K]``."""
        w = self._sample_weights(w, y)
        hess = jax.vmap(jax.hessian(self.fn))(y, target)              # [B, O, O]
        h_y = jnp.einsum("bop,kbp->kbo", hess, tangents)              # H_b Y_b per tangent
        return jnp.einsum("kbo,lbo,b->kl", h_y, tangents, w / y.shape[0])


LOSSES = {"mse": MeanSquaredError(), "xent": SoftmaxCrossEntropy()}
