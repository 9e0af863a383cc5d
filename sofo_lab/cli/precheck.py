"""The pre-check: every run a command asks for, composed and built before anything is written.

Bad input ends in one line naming the key, the value and what is allowed, with a non-zero exit
and no traceback (``HYDRA_FULL_ERROR=1`` shows it). A key that nothing reads is refused alike
with ``+`` or without (``+iteratons=5``), with the closest real key (``optim.lrr=0.1``: did you
mean ``optim.lr``?). Configs are composed on Hydra's search path, so a user's configs
(``--config-dir <dir>`` or ``hydra.searchpath=[...]``, docs/library.md) are checked exactly as the
package's. Each combination is built once (``trainer.prepare``); a run that Hydra then starts in
this process (a single run, or a sweep under the basic launcher) trains what was built here.
"""
from __future__ import annotations

import contextlib
import difflib
import itertools
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sofo_lab.cli.command import command, parse
from sofo_lab.conf import CONF_DIR
from sofo_lab.core.errors import ConfigError
from sofo_lab.train import checkpoint, per_optim, rundir
from sofo_lab.train.trainer import Prepared, prepare

# Top-level keys that are read although no config sets them: ``+per_optim.<optim>.<key>``
# (sofo_lab/train/per_optim.py) and Hydra's own ``hydra.*``.
READ_UNSET = (per_optim.KEY, "hydra")
MAX_COMBINATIONS = 256   # a sweep's combinations checked (the first ones)


def run_key(cfg: DictConfig) -> str:
    """The same string for the same run's config, composed here or by Hydra (``hydra`` aside)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    return json.dumps({k: v for k, v in tree.items() if k != "hydra"}, sort_keys=True, default=str)


def options(group: str, search: tuple[str, ...] = ()) -> list[str]:
    """The configs of ``group`` on Hydra's search path: the package's conf/ and the user's dirs."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group, config_name="config", overrides=list(search)))


def _expand(parsed) -> list[list[str]]:
    """The sweep's combinations as plain override lists (capped: the first MAX_COMBINATIONS)."""
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([f"{key}={o.get_value_element_as_str()}"])
    return [list(c) for c in itertools.islice(itertools.product(*axes), MAX_COMBINATIONS)]


def _check_groups(parsed, search: list[str]) -> set[str]:
    """Every group choice names a config on the search path; returns the overridden groups."""
    groups = set()
    for o in parsed:
        key = o.key_or_group
        choices = options(key, tuple(search))
        if not choices:
            continue   # a config value, not a group
        groups.add(key)
        if o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        for value in values:
            if value == "null":
                raise ConfigError(key, value, f"a config group takes a config name, not null; choose one of {choices}, "
                                             f"or leave the group out with ~{key}")
            if value not in choices:
                raise ConfigError(key, value, f"unknown {key}; choose one of {choices}"
                                              + ("" if search else " (your own: --config-dir, docs/library.md)"))
    return groups


def _unknown(key: str, value, known, where: str = "the top level") -> ConfigError:
    """The one-line error for a key that nothing reads, with the closest known key."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(key, value, f"unknown key: nothing reads it{hint}; fix the name or drop it; "
                                   f"{where} has {sorted(known)}")


def _check_keys(parsed, base: DictConfig) -> None:
    """Every override names a key that something reads: without ``+`` a key the composed config has
    (Hydra would refuse it too, and suggest ``+``; this names the closest key there is); with ``+``
    or ``++`` at the top level, a key of ``base`` (conf/config.yaml's run-level keys, the groups,
    what the chosen experiment adds) or of ``READ_UNSET``: ``+iteratons=5`` would otherwise be
    silently ignored. A ``+`` key inside a group (``+task.foo``) is checked where it is read
    (assemble.instantiate_node: the class must take it)."""
    tree = OmegaConf.to_container(base, resolve=False)
    top = sorted(k for k in tree if k != "hydra")
    for o in parsed:
        if o.is_delete():
            continue
        value = o.get_value_element_as_str() if not o.is_sweep_override() else "..."
        parts = o.key_or_group.split(".")
        if o.is_add() or o.is_force_add():
            if parts[0] not in tree and parts[0] not in READ_UNSET:
                raise _unknown(o.key_or_group, value, top)
            continue
        node = tree
        for depth, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif depth == 0:
                raise _unknown(o.key_or_group, value, top)
            else:
                parent = ".".join(parts[:depth])
                known = sorted(k for k in node if k != "hydra") if isinstance(node, dict) else []
                close = difflib.get_close_matches(part, known, n=1)
                if close:
                    raise ConfigError(o.key_or_group, value, f"unknown key (did you mean {parent}.{close[0]}?); "
                                                             f"{parent} has {known}")
                raise ConfigError(o.key_or_group, value, f"unknown key; {parent} has {known} (a key its class takes "
                                                         f"that the config leaves out: +{o.key_or_group}=...)")


def _compose(combo: list[str], groups: set[str], search: list[str], config_name: str = "config") -> DictConfig:
    """Compose one combination as Hydra will, after checking its keys; Hydra's own refusals
    (for anything else) end in one line too."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parsed = parse(combo)
    chosen = [c for c, o in zip(combo, parsed) if o.key_or_group in groups]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            if not any(o.is_add() or o.is_force_add() for o in parsed):
                # without `+`, a composition that succeeds has every key: the groups' own composition
                # below (0.5 s) is needed only to name the closest key when this one fails
                with contextlib.suppress(HydraException, OmegaConfBaseException, ValueError):
                    return compose(config_name, overrides=[*combo, *search], return_hydra_config=True)
            base = compose(config_name, overrides=[*chosen, *search], return_hydra_config=True)
            _check_keys([o for o in parsed if o.key_or_group not in groups], base)
            return compose(config_name, overrides=[*combo, *search], return_hydra_config=True)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError("overrides", " ".join(combo), lines[0] if lines else type(err).__name__) from None


def _check_writable(cfg: DictConfig, multirun: bool) -> None:
    node = cfg.hydra.sweep if multirun else cfg.hydra.run
    raw = OmegaConf.to_container(node, resolve=False)["dir"]
    static = Path(raw.split("${", 1)[0] or ".")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        static.mkdir(parents=True, exist_ok=True)
        rundir.probe(static)   # writes and deletes 1 MiB: a full disk fails here
    except OSError as err:
        raise ConfigError(key, raw, f"output directory is not writable ({err.strerror}); "
                                    f"pass a writable {key}=...") from None


def _in_process(cfg: DictConfig, multirun: bool) -> bool:
    """Whether Hydra runs the jobs in this process (a single run; a sweep under the basic launcher)."""
    return not multirun or str(cfg.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")


def precheck(argv: list[str]) -> dict[str, list[Prepared]]:
    """Compose and build every combination the command asks for (``ConfigError`` on bad input);
    the runs Hydra will start in this process, by ``run_key``."""
    cmd = command(argv)
    if not cmd.runs:
        return {}
    parsed = parse(cmd.overrides)
    groups = _check_groups(parsed, cmd.search)
    known = options("optim", tuple(cmd.search))
    first, runs = None, {}
    for combo in _expand(parsed):
        cfg = _compose(combo, groups, cmd.search, cmd.config_name)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
        launcher = cfg.hydra.get("launcher")
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])   # the config a job gets
        OmegaConf.set_struct(job, True)
        run = prepare(job, choices, known_optims=known, launcher=launcher)
        if _in_process(cfg, cmd.multirun or cfg.hydra.mode == "MULTIRUN"):
            runs.setdefault(run_key(job), []).append(run)
        first = cfg if first is None else first
    # every value checked: only now is anything written (the output folder, a probe, a lock check)
    multirun = cmd.multirun or first.hydra.mode == "MULTIRUN"
    _check_writable(first, multirun)
    checkpoint.precheck(first, multirun)   # lock; resumable checkpoint
    return runs
