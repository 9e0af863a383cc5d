"""Influence balancing: a scalar parameter with a positive short-term but negative long-term
influence on the loss (UORO paper §5; equations as in PES's ``influence_balancing.py``;
docs/uoro.md).

The task is its own system (not an RNN): state s ∈ R^n, scalar parameter θ,

    s_{t+1} = A s_t + θ b,     A = ½ (I + N)   (N: superdiagonal shift, (A s)_i = ½ s_i + ½ s_{i+1})
    b       = (+1 × n_pos, −1 × n_neg),   y_t = s¹_{t+1},   ℓ_t = ½ (s¹_{t+1} − 1)²

with n = 23 = 10 + 13, θ₀ = 0.5 and s₀ = 1. Unit i reaches unit 1 only after i−1 steps, so
the positive units act first and the negative ones later. Closed forms: the stationary state
has s¹ = 2θ(n_pos − n_neg) = −6θ, the optimum is θ* = target/(2(n_pos − n_neg)) = −1/6, and the
K-step truncated sensitivity Σ_{k<K} e₁ᵀA^k b has the wrong sign for K ≤ 40, so truncated
BPTT with windows shorter than ≈110 steps pushes θ away from θ*.

``task=influence`` ignores the ``model`` group (the system is fixed); the streams carry no
input and all B streams are identical (deterministic dynamics). Logged: ``theta`` each window.
"""
from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import LOSSES
from sofo_lab.core.system import Batch
from sofo_lab.tasks.base import Task
from sofo_lab.tasks.streams import check_n_steps


class InfluenceSystem:
    """``F(s, θ) = A s + θ b`` with the readout ``y = s¹`` of the new state."""

    def __init__(self, n_pos: int, n_neg: int, theta0: float, state0: float):
        self.n = n_pos + n_neg
        self.b = jnp.concatenate([jnp.ones(n_pos), -jnp.ones(n_neg)])
        self.theta0, self.state0 = theta0, state0
        self.loss = LOSSES["mse"]
        self.model = None

    def init_params(self, key):
        del key
        return {"theta": jnp.asarray(self.theta0, jnp.float32)}

    def init_state(self, params, batch_size: int):
        return jnp.full((batch_size, self.n), self.state0, jnp.asarray(params["theta"]).dtype)

    def step(self, params, s, x):
        del x
        shifted = jnp.concatenate([s[:, 1:], jnp.zeros_like(s[:, :1])], axis=1)
        s = 0.5 * s + 0.5 * shifted + params["theta"] * self.b.astype(s.dtype)
        return s, s[:, :1]

    def sample_noise(self, key, n_steps, batch_size):
        return None

    # --- closed forms (numpy, float64) ------------------------------------------------------
    def matrix(self) -> np.ndarray:
        return 0.5 * (np.eye(self.n) + np.eye(self.n, k=1))

    def optimum(self, target: float = 1.0) -> float:
        return target / (2.0 * float(np.sum(self.b)))

    def truncated_sensitivity(self, K: int) -> float:
        """Σ_{k<K} e₁ᵀ A^k b: what K-step-truncated backprop sees of ds¹/dθ at stationarity."""
        A, v, total = self.matrix(), np.asarray(self.b, np.float64), 0.0
        for _ in range(K):
            total += v[0]
            v = A @ v
        return total


class Influence(Task):
    name: ClassVar[str] = "influence"
    episodic: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    loss_kind: ClassVar[str] = "mse"
    input_names: ClassVar[tuple[str, ...]] = ()
    output_names: ClassVar[tuple[str, ...]] = ("s1",)

    def __init__(self, n_steps: int = 200, n_pos: int = 10, n_neg: int = 13, theta0: float = 0.5,
                 state0: float = 1.0, target: float = 1.0):
        check_n_steps(n_steps)
        for key, value in (("n_pos", n_pos), ("n_neg", n_neg)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"task.{key}", value, "must be a non-negative integer")
        if n_pos + n_neg < 1 or n_pos == n_neg:
            raise ConfigError("task.n_neg", n_neg, f"need n_pos + n_neg >= 1 and n_neg != n_pos={n_pos} "
                                                   "(otherwise θ has no stationary influence)")
        self.n_steps, self.n_pos, self.n_neg = n_steps, n_pos, n_neg
        self.theta0, self.state0, self.target = float(theta0), float(state0), float(target)
        self.theta_star = self.target / (2.0 * (n_pos - n_neg))

    def make_system(self, model):
        del model   # the model group is ignored: this task is its own system
        return InfluenceSystem(self.n_pos, self.n_neg, self.theta0, self.state0)

    def init_data(self, key, batch_size: int):
        return jnp.zeros((), jnp.int32)   # steps consumed per stream

    def next_batch(self, data_state, key, batch_size: int):
        T, B = self.n_steps, batch_size
        batch = Batch(inputs=jnp.zeros((T, B, 0)), targets=jnp.full((T, B, 1), self.target),
                      weights=jnp.full((T, B), 0.5))
        return data_state + T, batch

    def eval_batch(self, key, batch_size: int):
        return None

    def online_metrics(self, data_state, metrics: dict, params):
        return data_state, {"theta": params["theta"], "theta_star": jnp.asarray(self.theta_star),
                            "steps": data_state, "loss_per_step": metrics["loss"] / self.n_steps}

    def describe(self, final: dict) -> str:
        if "train/theta" not in final:
            return ""
        return (f"theta {final['train/theta']:.5f}   theta* {self.theta_star:.5f}   "
                f"loss/step {final.get('train/loss_per_step', float('nan')):.3g}")

    def plot_history(self, out_dir, history: list[dict]) -> list[str]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in history if "train/theta" in r]
        if not rows:
            return []
        steps = [r["train/steps"] for r in rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        ax1.plot(steps, [r["train/theta"] for r in rows], label="θ")
        ax1.axhline(self.theta_star, color="k", ls="--", lw=0.8, label="θ* = −1/6")
        ax1.set_xlabel("time step")
        ax1.set_ylabel("θ")
        ax1.legend()
        ax2.semilogy(steps, [max(r["train/loss_per_step"], 1e-300) for r in rows])
        ax2.set_xlabel("time step")
        ax2.set_ylabel("loss per step")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = f"{out_dir}/influence_theta_loss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
