"""Adaptive Kalman filtering (SOFO paper; sofo_spec.md §3.3).

A 1-D Ornstein-Uhlenbeck latent whose parameters switch at random times:

    x_{t+1} = x_t + (b − x_t)/τ + σ_ε ε_t,   σ_ε = √(2/τ − 1/τ²)   (stationary variance 1)
    y_t     = x_t + β ξ_t

Per segment τ ~ U[1, 10], b ~ U[−3, 3], β ~ U[0.1, 3]. A segment lasts at least
``min_segment`` steps, then ends with probability ``switch_prob`` per step; on a switch the
parameters are redrawn and x restarts from the new stationary law b + N(0, 1). The network
sees y_t and outputs x̂_t. Loss: mean over time and batch of (x̂_t − x_t)².

References on the same batch: the oracle Kalman filter that knows (τ, b, β) and resets to
(b, 1) at each switch (≈ 0.49 in the authors' code), and copying the observation (≈ E[β²] ≈ 3.1).
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.errors import ConfigError
from sofo_lab.system import Batch
from sofo_lab.tasks.base import Task


class KalmanLatents(NamedTuple):
    x: jax.Array          # [T, B] true latent
    y: jax.Array          # [T, B] observation
    oracle: jax.Array     # [T, B] oracle Kalman estimate x̂_t|t
    switch: jax.Array     # [T, B] 1 where a new segment starts


class Kalman(Task):
    name: ClassVar[str] = "kalman"
    loss_kind: ClassVar[str] = "mse"
    input_names: ClassVar[tuple[str, ...]] = ("observation",)
    output_names: ClassVar[tuple[str, ...]] = ("estimate",)

    def __init__(self, n_steps: int = 300, min_segment: int = 100, switch_prob: float = 0.01,
                 tau_range=(1.0, 10.0), drift_range=(-3.0, 3.0), obs_noise_range=(0.1, 3.0),
                 dt: float = 1.0, tau: float = 4.0, name: str = "kalman"):
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 2:
            raise ConfigError("task.n_steps", n_steps, "must be an integer >= 2")
        if not 0.0 <= switch_prob <= 1.0:
            raise ConfigError("task.switch_prob", switch_prob, "must be a probability in [0, 1]")
        if tau_range[0] < 1.0:
            raise ConfigError("task.tau_range", list(tau_range), "τ must be >= 1 (the discrete OU map)")
        self.n_steps, self.min_segment, self.switch_prob = n_steps, min_segment, switch_prob
        self.tau_range, self.drift_range = tuple(tau_range), tuple(drift_range)
        self.obs_noise_range = tuple(obs_noise_range)
        self.dt, self.tau = dt, tau

    def _draw(self, key, shape):
        k1, k2, k3 = jax.random.split(key, 3)
        u = lambda k, r: jax.random.uniform(k, shape, minval=r[0], maxval=r[1])
        return u(k1, self.tau_range), u(k2, self.drift_range), u(k3, self.obs_noise_range)

    def _start(self, key, batch_size: int):
        """Generator state at t = 0: the first segment's parameters, x_0, the oracle's prior."""
        B = batch_size
        k_init, k_x0, k_steps = jax.random.split(key, 3)
        tau, b, beta = self._draw(k_init, (B,))
        x0 = b + jax.random.normal(k_x0, (B,))
        carry = (x0, tau, b, beta, jnp.zeros(B, jnp.int32), b, jnp.ones(B), jnp.ones(B, bool))
        return carry, k_steps

    def _step(self, state, t):
        """Step t of the latent, the observation and the oracle filter: ``(x, y, m, switch)``."""
        (x, tau, b, beta, age, m, p, first), k_steps = state
        B = x.shape
        # Keys by step number: the same draw whole or step by step (and, with JAX's default
        # partitionable threefry, the same keys as split(k_steps, T)[t]).
        k_sw, k_new, k_xn, k_eps, k_obs = jax.random.split(jax.random.fold_in(k_steps, t), 5)
        # Switch before emitting step t (never at t = 0).
        switch = (~first) & (age >= self.min_segment) & (jax.random.uniform(k_sw, B) < self.switch_prob)
        tau_n, b_n, beta_n = self._draw(k_new, B)
        x_fresh = b_n + jax.random.normal(k_xn, B)
        sigma = jnp.sqrt(2.0 / tau - 1.0 / tau**2)
        x_next = x + (b - x) / tau + sigma * jax.random.normal(k_eps, B)
        x = jnp.where(first, x, jnp.where(switch, x_fresh, x_next))
        m_pred = jnp.where(first | switch, jnp.where(switch, b_n, b), m + (b - m) / tau)
        p_pred = jnp.where(first | switch, 1.0, (1.0 - 1.0 / tau) ** 2 * p + sigma**2)
        tau, b, beta = (jnp.where(switch, new, old) for new, old in ((tau_n, tau), (b_n, b), (beta_n, beta)))
        age = jnp.where(switch, 0, age + 1)
        y = x + beta * jax.random.normal(k_obs, B)
        gain = p_pred / (p_pred + beta**2)
        m = m_pred + gain * (y - m_pred)
        p = (1.0 - gain) * p_pred
        carry = (x, tau, b, beta, age, m, p, jnp.zeros_like(first))
        return (carry, k_steps), (x, y, m, switch.astype(x.dtype))

    def latents(self, key, batch_size: int) -> KalmanLatents:
        _, (x, y, m, switch) = jax.lax.scan(self._step, self._start(key, batch_size),
                                            jnp.arange(self.n_steps))
        return KalmanLatents(x, y, m, switch)

    def step_source(self, key, batch_size: int):
        def step(state, t):
            state, (x, y, _, _) = self._step(state, t)
            return state, (y[:, None], x[:, None], jnp.full(x.shape, 1.0 / self.n_steps))

        return self._start(key, batch_size), step

    def sample(self, key, batch_size: int) -> Batch:
        lat = self.latents(key, batch_size)
        T, B = lat.x.shape
        return Batch(inputs=lat.y[..., None], targets=lat.x[..., None],
                     weights=jnp.full((T, B), 1.0 / T), extras=lat)

    def evaluate(self, batch: Batch, ys) -> dict:
        lat = batch.extras
        return {
            "mse": jnp.mean((ys[..., 0] - lat.x) ** 2),
            "oracle_mse": jnp.mean((lat.oracle - lat.x) ** 2),
            "copy_mse": jnp.mean((lat.y - lat.x) ** 2),
        }

    def describe(self, final: dict) -> str:
        keys = ("eval/mse", "eval/oracle_mse", "eval/copy_mse")
        if not all(k in final for k in keys):
            return ""
        mse, oracle, copy = (final[k] for k in keys)
        return f"MSE {mse:.3f}   oracle Kalman filter {oracle:.3f}   copy observation {copy:.3f}"

    def plot(self, out_dir, batch: Batch, ys) -> list[str]:
        import matplotlib.pyplot as plt
        import numpy as np

        lat = jax.tree.map(np.asarray, batch.extras)
        ys = np.asarray(ys)
        n = min(3, ys.shape[1])
        fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), sharex=True, squeeze=False)
        t = np.arange(ys.shape[0])
        for i, ax in enumerate(axes[:, 0]):
            ax.plot(t, lat.y[:, i], ".", ms=2, color="0.6", label="observation y")
            ax.plot(t, lat.x[:, i], color="k", lw=1.2, label="latent x")
            ax.plot(t, lat.oracle[:, i], color="tab:green", lw=1, label="oracle Kalman")
            ax.plot(t, ys[:, i, 0], color="tab:red", lw=1, label="network x̂")
            for s in np.flatnonzero(lat.switch[:, i]):
                ax.axvline(s, color="tab:blue", ls=":", lw=0.8)
            mse = float(np.mean((ys[:, i, 0] - lat.x[:, i]) ** 2))
            oracle = float(np.mean((lat.oracle[:, i] - lat.x[:, i]) ** 2))
            ax.set_ylabel(f"held-out trial {i}")
            ax.set_title(f"trial {i}: network MSE {mse:.3f}, oracle MSE {oracle:.3f}", fontsize=8, loc="left")
        axes[0, 0].legend(loc="upper right", ncol=4, fontsize=8)
        fig.suptitle(f"{n} held-out trials after training: the latent x, its noisy observation y, the oracle "
                     "Kalman filter (knows τ, b, β) and the network's estimate x̂", fontsize=9)
        axes[-1, 0].set_xlabel("time step (dotted blue: parameter switch)")
        fig.tight_layout()
        path = f"{out_dir}/kalman_trials.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
