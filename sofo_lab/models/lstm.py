"""LSTM as in the UORO authors' code (docs/uoro.md). State is the pair (c, h).

    e = x E                                     (embedding, N(0, 1), no bias)
    f = σ(e U_f + h W_f + b_f − 0.3),  i = σ(e U_i + h W_i + b_i),  o = σ(e U_o + h W_o + b_o)
    c̃ = tanh(e U_c + h W_c + b_c)
    c' = f ⊙ c + i ⊙ c̃,   h' = o ⊙ tanh(c'),   y = h' W_out + b_out
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sofo_lab.models._init import check_positive, torch_linear

FORGET_OFFSET = -0.3   # the authors' fixed forget-gate offset


class LSTM:
    def __init__(self, n_inputs: int, n_outputs: int, n_hidden: int = 64,
                 learn_init_state: bool = False):
        check_positive("model.n_hidden", n_hidden)
        self.n_inputs, self.n_outputs, self.n_hidden = n_inputs, n_outputs, n_hidden
        self.learn_init_state = learn_init_state

    def init_params(self, key):
        I, N, O = self.n_inputs, self.n_hidden, self.n_outputs
        k = jax.random.split(key, 5)
        params = {
            "E": jax.random.normal(k[0], (I, N)),
            "U": torch_linear(k[1], N, (N, 4 * N)),     # gates from the embedding, order f,i,o,c
            "W": torch_linear(k[2], N, (N, 4 * N)),     # gates from h
            "b": torch_linear(k[3], N, (4 * N,)),
            "W_out": torch_linear(k[4], N, (N, O)),
            "b_out": jnp.zeros(O),
        }
        if self.learn_init_state:
            params["c0"] = jnp.zeros(N)
            params["h0"] = jnp.zeros(N)
        return params

    def init_state(self, params, batch_size):
        shape = (batch_size, self.n_hidden)
        if self.learn_init_state:
            return (jnp.broadcast_to(params["c0"], shape), jnp.broadcast_to(params["h0"], shape))
        zeros = jnp.zeros(shape, params["W"].dtype)
        return (zeros, zeros)

    def step(self, params, state, x):
        c, h = state
        N = self.n_hidden
        gates = (x.u @ params["E"]) @ params["U"] + h @ params["W"] + params["b"]
        f = jax.nn.sigmoid(gates[:, :N] + FORGET_OFFSET)
        i = jax.nn.sigmoid(gates[:, N:2 * N])
        o = jax.nn.sigmoid(gates[:, 2 * N:3 * N])
        c = f * c + i * jnp.tanh(gates[:, 3 * N:])
        h = o * jnp.tanh(c)
        return (c, h), h @ params["W_out"] + params["b_out"]

    def sample_noise(self, key, n_steps, batch_size):
        return None
