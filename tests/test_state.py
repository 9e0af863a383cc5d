"""The run's start (sofo_lab/train/state.py): the network, optimizer state and carry built as one
compiled program equal the op-by-op build, and code that needs concrete values still runs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sofo_lab.train.assemble import build
from sofo_lab.train.state import compiled_once, init_train_state
from sofo_lab.train.steps import make_eval
from tests.conftest import compose_config


def test_compiled_once_runs_code_that_needs_concrete_values_op_by_op():
    calls = []

    def host_code():   # numpy on a JAX value: fails under jit's trace, fine op by op
        calls.append(1)
        return np.asarray(jnp.arange(3.0)) * 2

    np.testing.assert_array_equal(compiled_once(host_code), [0.0, 2.0, 4.0])
    assert len(calls) == 2                        # traced once (refused), then run op by op
    out = compiled_once(lambda: jnp.arange(3.0) * 2)
    assert isinstance(out, jax.Array) and out.tolist() == [0.0, 2.0, 4.0]


def test_compiled_start_equals_the_op_by_op_start_and_the_held_out_batch_is_the_tasks():
    cfg = compose_config(["task=kalman", "optim=sofo", "task.n_steps=6", "batch_size=3", "model.n_hidden=4",
                          "optim.n_tangents=2", "logger=none"])
    setup = build(cfg)
    eager, compiled = init_train_state(setup, 5, 3), init_train_state(setup, 5, 3, compile=True)
    assert jax.tree.structure(eager) == jax.tree.structure(compiled)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
        assert jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    _, batch = make_eval(setup, 5, 3)
    _, _, k_eval, _ = jax.random.split(jax.random.PRNGKey(5), 4)
    k_batch, k_noise = jax.random.split(k_eval)
    by_hand = setup.task.eval_batch(k_batch, 3)
    by_hand = by_hand._replace(noise=setup.system.sample_noise(k_noise, by_hand.n_steps, 3))
    assert jax.tree.structure(batch) == jax.tree.structure(by_hand)
    for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(by_hand)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
