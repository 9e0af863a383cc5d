"""Sizes that cannot fit end in one line naming the key to lower, before anything is allocated or
written (README, "What goes wrong"; the other failure classes: tests/test_faults.py and
tests/test_faults_checkpoints.py)."""
from __future__ import annotations

import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.train import resources
from tests.conftest import compose_config

KALMAN = ["task=kalman", "optim=adam"]


def _setup(overrides):
    from sofo_lab.train.assemble import build

    cfg = compose_config(["logger=none", *overrides])
    return build(cfg), cfg


@pytest.mark.parametrize("overrides, key", [(["batch_size=1000000000"], "batch_size"),
                                            ([*KALMAN, "task.n_steps=100000000"], "task.n_steps")])
def test_a_held_out_batch_that_cannot_fit_is_refused_from_shapes(overrides, key):
    setup, cfg = _setup(overrides)
    estimate = resources.shape_estimate(setup, cfg)   # eval_shape: nothing allocated
    free = 64 << 30
    assert sum(estimate.values()) > free
    with pytest.raises(ConfigError) as err:
        resources.refuse_if_too_big(cfg, estimate, free, "available here")
    msg = str(err.value)
    assert msg.startswith(f"{key}=") and str(sum(estimate.values())) in msg and str(free) in msg
    assert f"lower {key}" in msg and "\n" not in msg
    # the same sizes, smaller: fits
    small = resources.shape_estimate(*_setup([o.replace("000000", "") for o in overrides]))
    resources.refuse_if_too_big(cfg, small, free, "available here")


def test_compiled_update_memory_is_checked_and_names_the_tangents():
    from sofo_lab.train.profiling import compiled_memory_bytes, compile_timed
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    base = ["optim=sofo", "task=kalman", "task.n_steps=6", "batch_size=2", "model.n_hidden=4"]
    sizes = {}
    for k in (8, 512):
        setup, cfg = _setup([*base, f"optim.n_tangents={k}"])
        ts = init_train_state(setup, 0, cfg.batch_size)
        sizes[k] = compiled_memory_bytes(compile_timed(make_train_step(setup, 0, cfg.batch_size), ts)[0])
    P = sum(x.size for x in __import__("jax").tree.leaves(ts.params))
    assert sizes[512] - sizes[8] >= (512 - 8) * P * 4   # K tangents of P float32 parameters, at least
    with pytest.raises(ConfigError) as err:
        resources.check_compiled(cfg, sizes[512], {"training state": 1}, free=sizes[512] - 1, where="free")
    assert str(err.value).startswith("optim.n_tangents=512:") and str(sizes[512]) in str(err.value)
    resources.check_compiled(cfg, sizes[512], {"training state": 1}, free=sizes[512], where="free")


def test_rtrl_limit_counts_the_update_work_not_only_the_jacobian():
    import jax

    from sofo_lab.optim import rtrl
    from sofo_lab.train.profiling import compiled_memory_bytes, compile_timed
    from sofo_lab.train.state import init_train_state
    from sofo_lab.train.steps import make_train_step

    setup, cfg = _setup(["task=anbn", "model=gru", "optim=rtrl", "model.n_hidden=16", "batch_size=4",
                         "task.n_steps=2"])
    ts = init_train_state(setup, 0, cfg.batch_size)
    measured = compiled_memory_bytes(compile_timed(make_train_step(setup, 0, cfg.batch_size), ts)[0])
    P = sum(x.size for x in jax.tree.leaves(ts.params))
    S = ts.opt_state.jacobian.shape[0]
    assert measured > 4 * 4 * S * P                    # far more than J itself
    assert abs(rtrl.rtrl_update_bytes(S, P) - measured) < 0.1 * measured


def test_sofo_run_refuses_a_batch_that_cannot_fit_in_one_line(tmp_path, monkeypatch):
    """In-process: ``sofo-run``'s pre-check (its one-line print and exit 2: tests/test_cli.py)."""
    from sofo_lab.cli.run import precheck

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        precheck(["batch_size=1000000000", f"hydra.run.dir={tmp_path / 'run'}"])
    line = str(err.value)
    assert line.startswith("batch_size=1000000000: the run needs about") and "bytes" in line
    assert "lower batch_size" in line and "\n" not in line
    assert not list(tmp_path.iterdir())   # refused before anything was written


def test_the_key_named_is_the_one_furthest_above_its_own_default():
    """The defaults come from the YAML the run chose (no ``name`` key in any config): n_tangents at
    its default 64 is not named for a batch 10 times its default."""
    assert resources.culprit(compose_config(["task=kalman", "optim=sofo", "batch_size=640"])) == "batch_size"
    assert resources.culprit(compose_config(["task=kalman", "optim=sofo", "optim.n_tangents=6400"])) == "optim.n_tangents"
    assert resources.culprit(compose_config(["task=kalman", "model.n_hidden=6400"])) == "model.n_hidden"
