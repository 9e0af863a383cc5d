"""Every config group option composes, and every task × model × optim combination builds."""
import importlib.util
import inspect
import itertools

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from sofo_lab.core import interfaces
from sofo_lab.core.errors import ConfigError
from sofo_lab.train.assemble import accepted_keys, build
from tests.conftest import TINY, compose_config, options


def test_every_group_has_its_options():
    assert set(options("task")) >= {"kalman", "reach", "double_reach", "influence", "brackets", "anbn"}
    assert set(options("model")) == {"rnn", "gru", "lstm"}
    assert set(options("optim")) >= {"adam", "sofo", "fgd", "tbptt", "uoro", "rtrl"}
    assert set(options("logger")) == {"wandb", "none"}


@pytest.mark.parametrize("group", ["task", "model", "optim"])
def test_every_config_names_an_importable_target_that_takes_its_keys(group):
    for name in options(group):
        node = compose_config([f"{group}={name}"])[group]
        assert "name" not in node, f"{group}/{name}.yaml: the display name comes from the file name"
        target = get_object(node._target_)
        keys = set(node) - {"_target_"}
        accepted = accepted_keys(target)
        if accepted is not None:
            assert keys <= accepted, (group, name, sorted(keys - accepted))


def _signature_defaults(obj):
    """Defaults along the class hierarchy (a subclass's own signature wins)."""
    out = {}
    for fn in ([vars(c)["__init__"] for c in obj.__mro__[::-1] if "__init__" in vars(c) and c is not object]
               if isinstance(obj, type) else [obj]):
        out.update({n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty})
    return out


@pytest.mark.parametrize("group", ["task", "model"])
def test_yaml_defaults_agree_with_the_class_signatures(group):
    # Tasks and models are also called directly by library users, so their signatures keep
    # defaults; the YAML is the CLI's source of truth and may not drift from them.
    from sofo_lab.conf import CONF_DIR

    for name in options(group):   # the file itself: presets such as conf/tuned/ may change a composed value
        node = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/{group}/{name}.yaml"))
        defaults = _signature_defaults(get_object(node.pop("_target_")))
        for key, value in node.items():
            if value is None or key not in defaults:
                continue
            expected = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
            assert value == expected, f"{group}/{name}.yaml: {key}={value!r} but the signature says {expected!r}"


def test_defaults_order_puts_self_first():
    defaults = OmegaConf.load(f"{__import__('sofo_lab.conf').conf.CONF_DIR}/config.yaml").defaults
    assert defaults[0] == "_self_"


@pytest.mark.parametrize("task,model,optim", list(itertools.product(options("task"), options("model"),
                                                                    options("optim"))))
def test_every_combination_builds(task, model, optim):
    extra = []
    if task == "neurogym":
        if importlib.util.find_spec("neurogym") is None:
            pytest.skip("neurogym is not installed (pip install -e '.[neurogym]'); tests/test_neurogym.py runs a fake env")
        extra = ["task.n_steps=null", "task.n_trials=20"]   # 12 steps would cut the trials before their decision
    cfg = compose_config([f"task={task}", f"model={model}", f"optim={optim}", *TINY, *extra])
    setup = build(cfg, {"task": task, "model": model, "optim": optim})
    assert isinstance(setup.task, interfaces.Task) and isinstance(setup.system, interfaces.System)
    assert isinstance(setup.task, interfaces.EpisodicTask if setup.task.episodic else interfaces.StreamTask)
    assert isinstance(setup.optimizer, interfaces.Optimizer)
    if not setup.task.needs_model:
        # Tasks that are their own system (influence balancing) ignore the model group.
        assert setup.model is None
        return
    assert setup.model.n_hidden == 8


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_and_builds(experiment):
    """The preset's task, sizes and model reach the objects the run trains (not only the config)."""
    cfg = compose_config([f"experiment={experiment}", "logger=none"])
    setup = build(cfg)
    assert type(setup.task) is get_object(cfg.task._target_)
    assert setup.task.n_steps == cfg.task.n_steps
    if setup.task.needs_model:
        assert type(setup.model) is get_object(cfg.model._target_) and setup.model.n_hidden == cfg.model.n_hidden


def _leaves(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_holds_only_deltas(experiment):
    # A preset names its groups and then only the values that differ from those groups' defaults.
    from sofo_lab.conf import CONF_DIR

    raw = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/experiment/{experiment}.yaml"))
    groups = [f"experiment={entry}" if isinstance(entry, str) else   # a preset on top of another preset
              next(f"{key.split()[-1].lstrip('/')}={value}" for key, value in entry.items())
              for entry in raw.pop("defaults", []) if entry != "_self_"]
    raw.pop("hydra", None)
    base = OmegaConf.to_container(compose_config(groups))
    flat = dict(_leaves(base))
    same = [key for key, value in _leaves(raw) if key in flat and flat[key] == value]
    assert not same, f"experiment/{experiment}.yaml repeats defaults: {same}"


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_composes(logger):
    from sofo_lab.train.loggers import instantiate

    built = instantiate(compose_config([f"logger={logger}"]).get("logger"))   # built from _target_, none by name
    assert [type(x).__name__ for x in built] == {"none": [], "wandb": ["WandbLogger"]}[logger]


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_every_launcher_composes(launcher):
    cfg = compose_config([f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_   # submitit's launchers, or sofo-lab's subclass of one
    assert "submitit" in target or target.startswith("sofo_lab."), target


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


def test_the_task_hands_its_settings_to_the_model_and_a_model_without_them_says_so():
    base = ["task=reach", "optim=adam", "logger=none"]
    rnn = build(compose_config([*base, "model=rnn"])).model
    assert rnn.alpha == 0.01 / 0.02 and rnn.noise_amplitude == 0.28   # reach.yaml's dt, tau, private_noise
    quiet = build(compose_config([*base, "model=rnn", "model.noise_amplitude=0", "model.tau=0.05"])).model
    assert quiet.noise_amplitude == 0.0 and quiet.alpha == 0.01 / 0.05   # a number in the model config wins
    assert build(compose_config(["task=anbn", "model=rnn", "optim=adam"])).model.alpha == 1.0 / 4.0   # defaults
    for model in ("gru", "lstm"):
        with pytest.warns(UserWarning, match=f"model={model} has no noise_amplitude: the task's noise_amplitude=0.28"):
            build(compose_config([*base, f"model={model}"]), {"model": model})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # dt and tau mean nothing to a discrete-time model: no warning
        build(compose_config(["task=kalman", "model=gru", "optim=adam"]), {"model": "gru"})


def test_tuned_presets_apply_to_their_task_model_and_optimizer_only():
    """conf/tuned/<task>_<model>.yaml for every optimizer on that pair; conf/tuned/optim/
    <task>_<model>_<optim>.yaml for that optimizer only; the command line wins over both."""
    reach = compose_config(["task=reach", "model=rnn", "optim=sofo"])
    assert (reach.iterations, reach.model.n_hidden, reach.optim.clip_norm) == (2000, 32, 1.0)
    assert reach.optim.robust_trials == 10 and compose_config(["optim=sofo"]).optim.robust_trials == 10
    double = compose_config(["task=double_reach", "model=rnn", "optim=sofo"])
    assert (double.optim.clip_norm, double.optim.robust_trials) == (1.0, 10)
    adam = compose_config(["task=reach", "model=rnn", "optim=adam"])
    assert (adam.iterations, adam.model.n_hidden, adam.optim.clip_norm) == (2000, 32, None)
    assert compose_config(["optim=sofo", "optim.clip_norm=null"]).optim.clip_norm is None
    kalman = compose_config(["task=kalman", "model=rnn", "optim=sofo"])
    assert kalman.optim.clip_norm is None and kalman.optim.robust_trials is None and kalman.model.n_hidden != 32
