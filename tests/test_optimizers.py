"""One battery over every optimizer config (as optax's alias tests do): on a plain network and
through the arm, each jitted update is finite, moves the parameters, and hands the next update a
state of the same structure, shapes and dtypes, so that the update is traced once and never again;
on the plain network each also shrinks its step when the loss stalls (``optim.plateau``).

The cases are generated from conf/: every optimizer × a plain-network task (kalman, model=rnn),
and every optimizer × every model through the arm, the arm task alternating between the
MotorTasks so that each optimizer and each model runs on each of them. A new file in conf/optim,
conf/model or conf/task (a MotorTask) joins the battery without editing this file.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from sofo_lab.conf import CONF_DIR
from sofo_lab.tasks.motor_common import MotorTask
from sofo_lab.train.assemble import build
from sofo_lab.train.state import init_train_state
from sofo_lab.train.steps import make_train_step
from tests.conftest import compose_config, options

REQUIRED_OPTIMIZERS = ("adam", "sofo", "uoro", "tbptt", "fgd", "rtrl")
OPTIMS = options("optim")
MODELS = options("model")
ARM_TASKS = sorted(t for t in options("task")
                   if issubclass(get_object(OmegaConf.load(Path(CONF_DIR) / "task" / f"{t}.yaml")._target_), MotorTask))
PLAIN = "kalman"                                      # a plain network: no plant, episodic
TINY_OPTIM = {"sofo": ["optim.n_tangents=4"], "fgd": ["optim.n_tangents=4"], "tbptt": ["optim.truncation=4"]}
UPDATES = 3
# optim.plateau (sofo_lab/optim/transforms.py) on the plain network, with a window of one update and a
# tolerance no later update meets: the scale halves at every parameter update after the first. The
# online methods update at every time step (8 per trial here), truncated BPTT at every window of 4.
HALVE_EVERY_UPDATE = "optim.plateau={window: 1, patience: 1, rtol: 0.999, factor: 0.5, min_scale: 0.0}"
UPDATES_PER_ITERATION = {"uoro": 8, "rtrl": 8, "tbptt": 2}

# every optimizer on the plain network; every optimizer × model through the arm, the arm task
# chosen so that each optimizer and each model meets every arm task (a Latin square)
CASES = ([(PLAIN, "rnn", o) for o in OPTIMS] +
         [(ARM_TASKS[(i + j) % len(ARM_TASKS)], m, o) for i, o in enumerate(OPTIMS) for j, m in enumerate(MODELS)])


def test_the_battery_covers_every_optimizer_model_and_arm_task():
    """Every required optimizer has a config with an importable factory; every optimizer runs on the
    plain network and with every model through the arm; every optimizer and every model meet every
    arm task (reach and double_reach differ only in the trials; the closed loop is the same)."""
    assert set(REQUIRED_OPTIMIZERS) <= set(OPTIMS), OPTIMS
    for name in OPTIMS:
        assert callable(get_object(compose_config([f"optim={name}"]).optim._target_)), name
    assert {"reach", "double_reach"} <= set(ARM_TASKS)
    arm = [c for c in CASES if c[0] != PLAIN]
    assert {(o, m) for _, m, o in arm} == {(o, m) for o in OPTIMS for m in MODELS}
    assert {(o, t) for t, _, o in arm} == {(o, t) for o in OPTIMS for t in ARM_TASKS}
    assert {(m, t) for t, m, _ in arm} == {(m, t) for m in MODELS for t in ARM_TASKS}
    assert {o for t, _, o in CASES if t == PLAIN} == set(OPTIMS)
    assert len(set(CASES)) == len(CASES)


def _spec(tree):
    """Structure, shapes and dtypes: what decides whether jit traces again."""
    return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("task,model,optim", CASES)
def test_every_optimizer_update_is_finite_moves_the_parameters_and_is_traced_once(task, model, optim):
    plateau = [HALVE_EVERY_UPDATE] if task == PLAIN else []
    cfg = compose_config([f"task={task}", f"model={model}", f"optim={optim}", "task.n_steps=8", "batch_size=2",
                          "model.n_hidden=4", "logger=none", *TINY_OPTIM.get(optim, []), *plateau])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # tiny trials are compressed, with a warning
        setup = build(cfg)
    ts = init_train_state(setup, 0, 2)   # eager: a jit of the init would cost a compile per case
    traces = []
    raw = make_train_step(setup, 0, 2)

    def counted(state):
        traces.append(1)                                  # runs only while jax traces
        return raw(state)

    step = jax.jit(counted)
    params0, spec0 = ts.params, _spec(ts)
    for i in range(UPDATES):
        ts, metrics = step(ts)
        assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"])), (i, metrics)
        for leaf in jax.tree.leaves(ts.params):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        assert _spec(ts) == spec0, f"update {i} changed the state's structure, shapes or dtypes"
        assert int(ts.iteration) == i + 1
        if plateau:   # the step shrinks when the loss stalls: halved at every parameter update after the first
            n = (i + 1) * UPDATES_PER_ITERATION.get(optim, 1)
            assert float(metrics["lr_scale"]) == pytest.approx(0.5 ** (n - 1), rel=1e-6), (optim, i)
    assert len(traces) == 1, f"traced {len(traces)} times in {UPDATES} updates"
    if hasattr(step, "_cache_size"):
        assert step._cache_size() == 1
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ts.params, params0)
    assert max(jax.tree.leaves(moved)) > 0, "no parameter moved"
