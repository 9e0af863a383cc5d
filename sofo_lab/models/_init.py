"""Initialisers shared by the models."""
import jax
import jax.numpy as jnp


def normal(key, shape, std):
    return std * jax.random.normal(key, shape)


def torch_linear(key, fan_in, shape):
    """Torch's nn.Linear default, U(−1/√fan_in, 1/√fan_in), as in the UORO authors' code."""
    bound = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def check_positive(name, value, kind=int):
    from sofo_lab.core.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        what = "a positive integer" if kind is int else "a positive number"
        raise ConfigError(name, value, f"must be {what}")
