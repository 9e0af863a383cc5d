"""Every config group option composes, and every task × model × optim combination builds."""
import itertools

import pytest
from omegaconf import OmegaConf

from sofo_lab.assemble import build
from sofo_lab.errors import ConfigError
from sofo_lab.optim import OPTIMIZERS
from sofo_lab.tasks import TASKS, task_class
from tests.conftest import TINY, compose_config, options


def test_every_group_has_its_options():
    assert set(options("task")) >= {"kalman"}
    assert set(options("model")) == {"rnn", "gru", "lstm"}
    assert set(options("optim")) >= {"adam"}
    assert set(options("logger")) == {"wandb", "none"}
    assert set(options("task")) <= set(TASKS), "a task config without a registered task class"
    assert set(options("optim")) <= set(OPTIMIZERS), "an optim config without a registered optimizer"


def test_defaults_order_puts_self_first():
    defaults = OmegaConf.load(f"{__import__('sofo_lab.cli').cli.CONF_DIR}/config.yaml").defaults
    assert defaults[0] == "_self_"


@pytest.mark.parametrize("task,model,optim", list(itertools.product(options("task"), options("model"),
                                                                    options("optim"))))
def test_every_combination_builds(task, model, optim):
    cfg = compose_config([f"task={task}", f"model={model}", f"optim={optim}", *TINY])
    assert cfg.task.name == task and cfg.optim.name == optim
    if not task_class(task).needs_model:
        # Tasks that are their own system (influence balancing) ignore the model group.
        setup = build(cfg)
        assert setup.model is None
        return
    setup = build(cfg)
    assert setup.model.n_hidden == 8


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_and_builds(experiment):
    cfg = compose_config([f"experiment={experiment}", "logger=none"])
    build(cfg)


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_composes(logger):
    assert compose_config([f"logger={logger}"]).logger.name == logger


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_every_launcher_composes(launcher):
    cfg = compose_config([f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_


@pytest.mark.parametrize("override,key", [
    ("iterations=0", "iterations"), ("batch_size=-2", "batch_size"), ("task.n_steps=1", "task.n_steps"),
    ("optim.lr=-0.1", "optim.lr"), ("model.n_hidden=0", "model.n_hidden"), ("seed=-1", "seed"),
    ("model.nonlinearity=sigmoidal", "model.nonlinearity"), ("iterations=ten", "iterations"),
])
def test_impossible_values_raise_config_error_naming_the_key(override, key):
    cfg = compose_config([override, "logger=none"])
    with pytest.raises(ConfigError) as info:
        build(cfg)
    assert info.value.key == key
