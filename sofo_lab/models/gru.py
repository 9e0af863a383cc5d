"""GRU as in the UORO authors' code (docs/uoro.md).

    r  = σ(x E_r + h W_r + b_r)
    z  = σ(x E_z + h W_z + b_z)
    h̃ = tanh(x E_h + (r ⊙ h) W_h + b_h)
    h' = z ⊙ h̃ + (1 − z) ⊙ h,          y = h' W_out + b_out

Embeddings ``E`` are N(0, 1) without bias; the linear maps use Torch's default init.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sofo_lab.models._init import check_positive, torch_linear


class GRU:
    def __init__(self, n_inputs: int, n_outputs: int, n_hidden: int = 64,
                 learn_init_state: bool = False):
        check_positive("model.n_hidden", n_hidden)
        self.n_inputs, self.n_outputs, self.n_hidden = n_inputs, n_outputs, n_hidden
        self.learn_init_state = learn_init_state

    def init_params(self, key):
        I, N, O = self.n_inputs, self.n_hidden, self.n_outputs
        k = jax.random.split(key, 6)
        params = {
            "E": jax.random.normal(k[0], (I, 3 * N)),
            "W_rz": torch_linear(k[1], N, (N, 2 * N)),
            "b_rz": torch_linear(k[2], N, (2 * N,)),
            "W_h": torch_linear(k[3], N, (N, N)),
            "b_h": torch_linear(k[4], N, (N,)),
            "W_out": torch_linear(k[5], N, (N, O)),
            "b_out": jnp.zeros(O),
        }
        if self.learn_init_state:
            params["h0"] = jnp.zeros(N)
        return params

    def init_state(self, params, batch_size):
        if self.learn_init_state:
            return jnp.broadcast_to(params["h0"], (batch_size, self.n_hidden))
        return jnp.zeros((batch_size, self.n_hidden), params["W_h"].dtype)

    def step(self, params, h, x):
        N = self.n_hidden
        e = x.u @ params["E"]
        rz = jax.nn.sigmoid(e[:, : 2 * N] + h @ params["W_rz"] + params["b_rz"])
        r, z = rz[:, :N], rz[:, N:]
        h_new = jnp.tanh(e[:, 2 * N:] + (r * h) @ params["W_h"] + params["b_h"])
        h = z * h_new + (1.0 - z) * h
        return h, h @ params["W_out"] + params["b_out"]

    def sample_noise(self, key, n_steps, batch_size):
        return None
