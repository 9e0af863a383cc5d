"""The neuroscience rate network: leaky integration of rates with time constant tau.

    r_t     = η_t ⊙ φ(z_t)                              (η_t: multiplicative private noise, or 1)
    z_{t+1} = (1 − α) z_t + α (r_t W_rec + u_t W_in + b),   α = dt / tau
    y_t     = φ(z_{t+1}) W_out + b_out

``η_t = max(0, 1 + a (2U − 1))`` with ``U ~ U[0, 1)`` per neuron and step and ``a`` the
``noise_amplitude``: the SOFO authors' motor-task noise (docs/motor.md). It is sampled by
``sample_noise`` outside the step and enters through ``x_t.noise``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError
from sofo_lab.models._init import check_positive, normal

NONLINEARITIES = {"relu": jax.nn.relu, "tanh": jnp.tanh, "softplus": jax.nn.softplus}
# W_rec and W_out std = gain / √N (the usual), or gain / N: the SOFO authors' motor networks start
# nearly feedforward with tiny torques (W_rec std 0.5/N, readout std 0.1/N; docs/motor.md).
WEIGHT_SCALINGS = ("sqrt_n", "n")


class RateRNN:
    def __init__(self, n_inputs: int, n_outputs: int, n_hidden: int = 64, dt: float = 1.0,
                 tau: float = 4.0, nonlinearity: str = "relu", noise_amplitude: float = 0.0,
                 learn_init_state: bool = False, rec_gain: float = 0.9, input_scale: float = 1.0,
                 readout_scale: float = 1.0, weight_scaling: str = "sqrt_n"):
        check_positive("model.n_hidden", n_hidden)
        check_positive("model.dt", dt, float)
        check_positive("model.tau", tau, float)
        if dt > tau:
            raise ConfigError("model.dt", dt, f"must not exceed model.tau={tau} (α = dt/tau ≤ 1)")
        if nonlinearity not in NONLINEARITIES:
            raise ConfigError("model.nonlinearity", nonlinearity, f"choose one of {sorted(NONLINEARITIES)}")
        if noise_amplitude < 0:
            raise ConfigError("model.noise_amplitude", noise_amplitude, "must be >= 0")
        if weight_scaling not in WEIGHT_SCALINGS:
            raise ConfigError("model.weight_scaling", weight_scaling, f"choose one of {list(WEIGHT_SCALINGS)}")
        self.weight_scaling = weight_scaling
        self.n_inputs, self.n_outputs, self.n_hidden = n_inputs, n_outputs, n_hidden
        self.alpha = dt / tau
        self.phi = NONLINEARITIES[nonlinearity]
        self.noise_amplitude = float(noise_amplitude)
        self.learn_init_state = learn_init_state
        self.rec_gain, self.input_scale, self.readout_scale = rec_gain, input_scale, readout_scale

    def init_params(self, key):
        I, N, O = self.n_inputs, self.n_hidden, self.n_outputs
        k_in, k_rec, k_out = jax.random.split(key, 3)
        fan = jnp.sqrt(N) if self.weight_scaling == "sqrt_n" else N
        params = {
            "W_in": normal(k_in, (I, N), self.input_scale / jnp.sqrt(I)),
            "W_rec": normal(k_rec, (N, N), self.rec_gain / fan),
            "b": jnp.zeros(N),
            "W_out": normal(k_out, (N, O), self.readout_scale / fan),
            "b_out": jnp.zeros(O),
        }
        if self.learn_init_state:
            params["z0"] = jnp.zeros(N)
        return params

    def init_state(self, params, batch_size):
        if self.learn_init_state:
            return jnp.broadcast_to(params["z0"], (batch_size, self.n_hidden))
        return jnp.zeros((batch_size, self.n_hidden), params["W_rec"].dtype)

    def step(self, params, z, x):
        r = self.phi(z)
        if x.noise is not None:
            r = r * x.noise
        drive = r @ params["W_rec"] + x.u @ params["W_in"] + params["b"]
        z = (1.0 - self.alpha) * z + self.alpha * drive
        return z, self.phi(z) @ params["W_out"] + params["b_out"]

    def sample_noise(self, key, n_steps, batch_size):
        if self.noise_amplitude == 0.0:
            return None
        u = jax.random.uniform(key, (n_steps, batch_size, self.n_hidden))
        return jnp.maximum(0.0, 1.0 + self.noise_amplitude * (2.0 * u - 1.0))
