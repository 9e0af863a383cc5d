# mylab/lowrank.py: a user's low-rank RNN (Mastrogiuseppe & Ostojic, Neuron 2018)
import jax
import jax.numpy as jnp


class LowRankRNN:
    """x' = (1 − α) x + α (tanh(x) m nᵀ / N + u W_in),  y = tanh(x') W_out / N; rank R."""

    def __init__(self, n_inputs: int, n_outputs: int, n_hidden: int = 64, rank: int = 2, alpha: float = 0.25):
        self.n_inputs, self.n_outputs, self.n_hidden = n_inputs, n_outputs, n_hidden
        self.rank, self.alpha = rank, alpha

    def init_params(self, key):
        k_m, k_n, k_in, k_out = jax.random.split(key, 4)
        N, R = self.n_hidden, self.rank
        return {"m": jax.random.normal(k_m, (N, R)), "n": jax.random.normal(k_n, (N, R)),
                "W_in": jax.random.normal(k_in, (self.n_inputs, N)),
                "W_out": jax.random.normal(k_out, (N, self.n_outputs)) * 4.0}

    def init_state(self, params, batch_size):
        return jnp.zeros((batch_size, self.n_hidden))

    def step(self, params, x, inp):
        r = jnp.tanh(x)
        rec = (r @ params["n"]) @ params["m"].T / self.n_hidden
        x = (1 - self.alpha) * x + self.alpha * (rec + inp.u @ params["W_in"])
        return x, jnp.tanh(x) @ params["W_out"] / self.n_hidden

    def sample_noise(self, key, n_steps, batch_size):
        return None
