"""``optim.plateau``: the step shrinks when the loss the optimizer reports stalls (sofo_lab/optim/transforms.py).

Every optimizer's plateau (the scale after n stalled updates) is checked in the battery of
tests/test_optimizers.py; here the transform itself, SOFO's rejected steps (which must not restart
the plateau state) and the one-line errors.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.optim.sofo import _restart
from sofo_lab.optim.transforms import make_plateau, make_transform, plateau_metrics

def test_without_a_plateau_no_scale_is_logged_and_the_update_is_the_plain_one():
    grads = {"w": jnp.array([1.0, -2.0])}
    tx = make_transform({"update": "sgd", "lr": 0.1}, 10)
    updates, state = tx.update(grads, tx.init(grads), grads, value=jnp.float32(3.0))
    np.testing.assert_allclose(updates["w"], [-0.1, 0.2], rtol=1e-6)
    assert plateau_metrics(state) == {}


def test_the_plateau_multiplies_the_optax_update_by_its_scale():
    """sgd(lr 0.1) then the plateau: the update is ``scale × (−0.1 g)``; after two windows of 2 without
    improvement (window 2, patience 2) the scale is 0.3, then 0.09 after two more."""
    grads = {"w": jnp.array([1.0, -2.0])}
    tx = make_transform({"update": "sgd", "lr": 0.1, "plateau": {"window": 2, "patience": 2, "factor": 0.3}}, 10)
    state = tx.init(grads)
    scales = []
    for _ in range(10):
        updates, state = tx.update(grads, state, grads, value=jnp.float32(5.0))   # a loss that never improves
        scale = float(plateau_metrics(state)["lr_scale"])
        np.testing.assert_allclose(updates["w"], [-0.1 * scale, 0.2 * scale], rtol=1e-6)
        scales.append(scale)
    # windows end at updates 2, 4, 6, 8, 10; the first sets the best; patience 2 -> shrink at 6 and 10
    assert scales == pytest.approx([1, 1, 1, 1, 1, 0.3, 0.3, 0.3, 0.3, 0.09])


def test_a_rejected_sofo_step_restarts_the_momentum_but_not_the_plateau():
    params = {"w": jnp.ones(3)}
    tx = make_transform({"update": "sgd", "lr": 1.0, "momentum": 0.9,
                         "plateau": {"window": 1, "patience": 1, "rtol": 0.999, "min_scale": 0.0}}, 10)
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(params, state, params, value=jnp.float32(1.0))
    restarted = _restart(tx.init(params), state)
    assert float(plateau_metrics(restarted)["lr_scale"]) == 0.25
    trace = [x for x in jax.tree.leaves(restarted, is_leaf=lambda x: isinstance(x, optax.TraceState))
             if isinstance(x, optax.TraceState)]
    assert trace and float(jnp.max(jnp.abs(trace[0].trace["w"]))) == 0.0, "momentum kept after a rejection"


@pytest.mark.parametrize("spec,key,allowed", [
    ({"windw": 5}, "optim.plateau.windw", "unknown key"),
    ({"factor": 1.5}, "optim.plateau.factor", "(0, 1)"),
    ({"window": 0}, "optim.plateau.window", ">= 1"),
    ({"patience": 2.5}, "optim.plateau.patience", ">= 1"),
    ({"min_scale": -1}, "optim.plateau.min_scale", "[0, 1]"),
    ("yes", "optim.plateau", "null, true or a mapping"),
])
def test_bad_plateau_values_name_the_key(spec, key, allowed):
    with pytest.raises(ConfigError) as err:
        make_plateau({"plateau": spec})
    assert err.value.key == key and allowed in str(err.value)


def test_plateau_true_takes_the_documented_defaults():
    assert make_plateau({"plateau": None}) is None and make_plateau({"plateau": False}) is None
    tx = make_plateau({"plateau": True})
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
