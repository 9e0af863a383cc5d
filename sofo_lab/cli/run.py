"""``sofo-run``: the Hydra entry point.

Before Hydra starts, every override is checked by composing the config and building the run
(``precheck``), so bad input ends in one line naming the key, the value and what is allowed,
with a non-zero exit and no traceback (``HYDRA_FULL_ERROR=1`` shows it), before anything is written.
A key that nothing reads is refused alike with ``+`` or without (``+iteratons=5``), and the
logger's keys are checked too (``loggers.check_config``). The pre-check reads the
command line with Hydra's own parser and composes on Hydra's search path, so a user's configs
(``--config-dir <dir>`` or ``hydra.searchpath=[...]``, docs/library.md) are checked exactly as
the package's. Then Hydra runs as usual: ``--cfg job``, ``-m`` and launchers behave as in any
Hydra app.
"""
from __future__ import annotations

import difflib
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from sofo_lab.conf import CONF_DIR
from sofo_lab.core.errors import ConfigError, RunFailed
from sofo_lab.train import checkpoint, console, loggers, per_optim, rundir

GROUPS = ("task", "model", "optim", "logger", "experiment")   # the groups `sofo-run --help` is about
_exit_code = 0


class Command(NamedTuple):
    """What Hydra will do with a command line, read with Hydra's own argument parser."""

    runs: bool              # a run or a sweep (not --help, --cfg, --info or shell completion)
    multirun: bool
    config_name: str
    overrides: list[str]    # the user's overrides
    search: list[str]       # the ``hydra.searchpath=[...]`` override (the user's, with --config-dir's dir), or []


def command(argv: list[str]) -> Command:
    from hydra._internal.utils import get_args_parser   # the parser @hydra.main uses

    # A bad flag exits here as in Hydra; flags may stand between overrides (Hydra's own parser
    # would refuse `task=kalman -m seed=0,1` with a usage line, after this check).
    args = get_args_parser().parse_intermixed_args(argv)
    runs = not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                or args.config_path)   # -cp points at another app's configs: Hydra's business
    overrides, search = [], []
    for o in args.overrides:
        (search if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath" else overrides).append(o)
    if args.config_dir is not None:   # Hydra adds it to the search path: the same, as hydra.searchpath
        path = Path(args.config_dir).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError("--config-dir", args.config_dir, "is not a directory; pass the folder holding "
                                                               "your task/, model/ or optim/ configs")
        entries = [repr(str(v)) for o in _parse(search) for v in o.value()] + [repr(f"file://{path}")]
        search = [f"hydra.searchpath=[{','.join(entries)}]"]
    return Command(runs, bool(args.multirun), args.config_name or "config", overrides, search)


def flags_first(argv: list[str]) -> list[str]:
    """``argv`` with Hydra's flags before the overrides, where Hydra's own parser wants them."""
    from hydra._internal.utils import get_args_parser

    overrides = list(get_args_parser().parse_intermixed_args(argv).overrides)
    rest, pending = [], list(overrides)
    for a in argv:
        if pending and a == pending[0]:
            pending.pop(0)
        else:
            rest.append(a)
    return rest + overrides


def _options(group: str, search: tuple[str, ...] = ()) -> list[str]:
    """The configs of ``group`` on Hydra's search path: the package's conf/ and the user's dirs."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group, config_name="config", overrides=list(search)))


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError("override", " ".join(overrides), str(err).splitlines()[0]) from None


def _expand(parsed) -> list[list[str]]:
    """The sweep's combinations as plain override lists (capped: the first 256)."""
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([f"{key}={o.get_value_element_as_str()}"])
    return [list(c) for c in itertools.islice(itertools.product(*axes), 256)]


def _check_groups(parsed, search: list[str]) -> set[str]:
    """Every group choice names a config on the search path; returns the overridden groups."""
    groups = set()
    for o in parsed:
        key = o.key_or_group
        options = _options(key, tuple(search))
        if not options:
            continue   # a config value, not a group
        groups.add(key)
        if o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        for value in values:
            if value not in options and value != "null":
                raise ConfigError(key, value, f"unknown {key}; choose one of {options}"
                                              + ("" if search else " (your own: --config-dir, docs/library.md)"))
    return groups


# Top-level keys that are read although no config sets them: ``+per_optim.<optim>.<key>``
# (sofo_lab/train/per_optim.py) and Hydra's own ``hydra.*``.
READ_UNSET = (per_optim.KEY, "hydra")


def _unknown(key: str, value, known, where: str = "the top level") -> ConfigError:
    """The one-line error for a key that nothing reads, with the closest known key."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(key, value, f"unknown key: nothing reads it{hint}; fix the name or drop it; "
                                   f"{where} has {sorted(known)}")


def _check_keys(parsed, base: DictConfig) -> None:
    """Every override names a key that something reads: without ``+`` a key the composed config has
    (Hydra would refuse it too; this says which keys there are); with ``+`` or ``++`` at the top
    level, a key of ``base`` (conf/config.yaml's run-level keys, the groups, what the chosen
    experiment adds) or of ``READ_UNSET``: ``+iteratons=5`` would otherwise be silently ignored.
    A ``+`` key inside a group (``+task.foo``) is checked where it is read (assemble.instantiate,
    loggers.check_config)."""
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
                raise ConfigError(o.key_or_group, value, f"unknown key; {parent} has {known} "
                                                         f"(add a new key with +{o.key_or_group}=...)")


def _compose(combo: list[str], groups: set[str], search: list[str], config_name: str = "config") -> DictConfig:
    """Compose one combination as Hydra will, after checking its keys; Hydra's own refusals
    (for anything else) end in one line too."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parsed = _parse(combo)
    chosen = [c for c, o in zip(combo, parsed) if o.key_or_group in groups]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            base = compose(config_name, overrides=[*chosen, *search], return_hydra_config=True)
            _check_keys([o for o in parsed if o.key_or_group not in groups], base)
            return compose(config_name, overrides=[*combo, *search], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
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


def precheck(argv: list[str]) -> None:
    """Compose and build every combination the command asks for; raise ConfigError on bad input."""
    cmd = command(argv)
    if not cmd.runs:
        return
    parsed = _parse(cmd.overrides)
    groups = _check_groups(parsed, cmd.search)
    from sofo_lab.train import resources
    from sofo_lab.train.assemble import build

    first = None
    for combo in _expand(parsed):
        cfg = per_optim.apply(_compose(combo, groups, cmd.search, cmd.config_name),
                              known=_options("optim", tuple(cmd.search)))
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
        loggers.check_config(cfg.get("logger"))
        setup = build(cfg, choices)
        resources.check_shapes(setup, cfg, launcher=cfg.hydra.get("launcher"))
        first = cfg if first is None else first
    # every value checked: only now is anything written (the output folder, a probe, a lock check)
    multirun = cmd.multirun or first.hydra.mode == "MULTIRUN"
    _check_writable(first, multirun)
    checkpoint.precheck(first, multirun)   # lock; resumable checkpoint


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _run(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from sofo_lab.train.runner import train

    for noisy in ("jax", "matplotlib", "absl"):   # Hydra's logging config would show their INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    console.install()   # also in submitit's job processes
    cfg = per_optim.apply(cfg, choices.get("optim"))   # +per_optim.<optim>.<key>: this optimizer's runs only
    from sofo_lab.cli.sweep import note_failure, sweep_dir_of

    sweep_dir = sweep_dir_of(hc)
    if sweep_dir is not None and cfg.logger.get("name") == "wandb" and cfg.logger.get("group") is None:
        with open_dict(cfg):
            cfg.logger.group = sweep_dir.name   # group a sweep's wandb runs unless the user named a group
    try:
        summary = train(cfg, Path(hc.runtime.output_dir), choices)
    except ConfigError as err:
        _report(f"error: {err}", 2)
        return note_failure(err)
    except RunFailed as err:
        _report(f"run failed: {err}", 1)
        return note_failure(err)
    except OSError as err:   # a full disk or lost permissions mid-run: one line, the checkpoint kept
        _report(f"run failed: {(failed := checkpoint.write_failed(err, Path(hc.runtime.output_dir)))}", 1)
        return note_failure(failed)
    return summary["final"].get("loss", float("nan"))


def _report(message: str, code: int) -> None:
    global _exit_code
    print(message, file=sys.stderr, flush=True)
    _exit_code = max(_exit_code, code)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        import traceback

        traceback.print_exc()


def _share_one_gpu(argv: list[str]) -> None:
    """Parallel local runs share the machine's GPU: without this, the first JAX process would
    pre-allocate 75 % of its memory and the others would fail (JAX's GPU memory allocation docs)."""
    if any(a.replace(" ", "").endswith("launcher=local_parallel") for a in argv):
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _user_modules_importable() -> None:
    """Modules in the working directory import as under ``python -m`` (a ``_target_`` such as
    ``mylab.flipflop.FlipFlop``), here and in every process a launcher starts (submitit_local,
    SLURM): the directory is appended to ``sys.path`` (it cannot shadow an installed package) and
    to ``PYTHONPATH``, whose relative entries become absolute."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(entries + ([cwd] if cwd not in entries else []))


def main() -> None:
    _user_modules_importable()
    _share_one_gpu(sys.argv[1:])
    console.install()
    if any(a in ("-h", "--help") for a in sys.argv[1:]):   # sofo_lab/cli/help.py; Hydra's own: --hydra-help
        from sofo_lab.cli.help import render

        print(render([a for a in sys.argv[1:] if a not in ("-h", "--help", "-m", "--multirun")]))
        sys.exit(0)
    try:
        precheck(sys.argv[1:])
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = flags_first(sys.argv[1:])   # `sofo-run task=reach -m seed=0,1` works too
    try:
        _run()
    except KeyboardInterrupt:   # Ctrl-C before training started (training itself checkpoints and exits 130)
        print("interrupted before training started: nothing new to checkpoint (checkpoints already written are "
              "kept); rerun the same command to start or resume", file=sys.stderr)
        sys.exit(130)
    from sofo_lab.cli.sweep import sweep_incomplete

    sys.exit(max(_exit_code, 1 if sweep_incomplete() else 0))


if __name__ == "__main__":
    main()
