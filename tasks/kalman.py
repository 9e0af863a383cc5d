"""Adaptive Kalman filtering (SOFO paper; docs/sofo.md).

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
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import Batch
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
                 dt: float = 1.0, tau: float = 4.0):
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

    def model_settings(self) -> dict:
        """One step = dt; τ = 4 steps gives α = 0.25, as in the SOFO authors' code."""
        return {"dt": self.dt, "tau": self.tau}

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
        return self._advance(state, switch, self._draw(k_new, B), (k_xn, k_eps, k_obs))

    def _advance(self, state, switch, new, keys):
        """One step given the switch decision ``[B]`` and the next segment's ``new = (τ, b, β)``."""
        (x, tau, b, beta, age, m, p, first), k_steps = state
        (tau_n, b_n, beta_n), (k_xn, k_eps, k_obs), B = new, keys, x.shape
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

    def trials(self, key, tau, drift, obs_noise, switch_times=(), batch_size: int | None = None) -> Batch:
        """Trials with chosen segments instead of random ones; the noise (of x and of y) comes from ``key``.

        ``tau``, ``drift``, ``obs_noise``: each segment's τ (>= 1), b and β (> 0), ``[S]`` (shared by
        all trials) or ``[B, S]``. ``switch_times``: the steps at which segments 2..S begin, ``[S-1]``
        or ``[B, S-1]``, increasing, in ``[1, n_steps)``. ``batch_size``: trials when every
        argument is shared (default 1). ``extras`` holds the ``KalmanLatents`` (with the oracle).
        """
        seg = [np.atleast_1d(np.asarray(v, dtype=float)) for v in (tau, drift, obs_noise)]
        times = np.asarray(switch_times, dtype=float)
        S = seg[0].shape[-1]
        if times.size == 0:
            times = times.reshape(S - 1 if S == 1 else -1)   # S > 1 and no times: refused below
        shapes = [v.shape[:-1] for v in seg] + [times.shape[:-1]]
        try:
            lead = np.broadcast_shapes(*shapes, () if batch_size is None else (batch_size,))
        except ValueError:
            raise ConfigError("switch_times", times.tolist(), f"tau, drift, obs_noise ([B, S]) and switch_times "
                              f"([B, S-1]) must agree on B and S; got leading shapes {shapes}") from None
        B = int(lead[0]) if lead else 1
        for name, v in zip(("tau", "drift", "obs_noise"), seg):
            if v.shape[-1] != S or v.ndim > 2 or not np.all(np.isfinite(v)):
                raise ConfigError(name, v.tolist(), f"must be finite, one value per segment ([S] or [B, S]), S={S}")
        if np.any(seg[0] < 1.0):
            raise ConfigError("tau", seg[0].tolist(), "τ must be >= 1 (the discrete OU map)")
        if np.any(seg[2] <= 0):
            raise ConfigError("obs_noise", seg[2].tolist(), "β must be > 0")
        if times.shape[-1:] != (S - 1,):
            raise ConfigError("switch_times", times.tolist(), f"must hold S-1 = {S - 1} steps per trial (S = {S} "
                              "segments in tau, drift, obs_noise)")
        times = np.broadcast_to(times, (B, S - 1))
        if np.any(np.diff(times, axis=-1) <= 0) or np.any(times < 1) \
                or np.any(times >= self.n_steps) or np.any(times != np.round(times)):
            raise ConfigError("switch_times", times.tolist(), f"must be S-1 = {S - 1} increasing integer steps in "
                              f"[1, {self.n_steps}) per trial")
        tau, drift, obs = (jnp.asarray(np.broadcast_to(v, (B, S)), jnp.float32) for v in seg)
        t = np.arange(self.n_steps)
        index = jnp.asarray(np.stack([np.searchsorted(row, t, side="right") for row in times], axis=1))   # [T, B]
        switch = jnp.asarray(np.stack([np.isin(t, row) for row in times], axis=1))
        per_step = [jnp.take_along_axis(v.T, index, axis=0) for v in (tau, drift, obs)]                  # [T, B]
        k_x0, k_steps = jax.random.split(key)
        x0 = drift[:, 0] + jax.random.normal(k_x0, (B,))
        start = ((x0, tau[:, 0], drift[:, 0], obs[:, 0], jnp.zeros(B, jnp.int32), drift[:, 0], jnp.ones(B),
                  jnp.ones(B, bool)), k_steps)

        def step(state, xs):
            t, sw, new = xs
            keys = jax.random.split(jax.random.fold_in(state[1], t), 3)
            return self._advance(state, sw, new, tuple(keys))

        _, (x, y, m, sw) = jax.lax.scan(step, start, (jnp.arange(self.n_steps), switch, tuple(per_step)))
        lat = KalmanLatents(x, y, m, sw)
        T = self.n_steps
        return Batch(inputs=y[..., None], targets=x[..., None], weights=jnp.full((T, B), 1.0 / T), extras=lat)

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
