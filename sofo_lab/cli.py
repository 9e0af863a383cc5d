"""``sofo-run``: the Hydra entry point.

Before Hydra starts, every override is checked by composing the config and building the run
(``precheck``), so bad input ends in one line naming the key, the value and what is allowed,
with a non-zero exit and no traceback (``HYDRA_FULL_ERROR=1`` shows it). Then Hydra runs as
usual: ``--help``, ``--cfg job``, ``-m`` and launchers behave as in any Hydra app.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from sofo_lab import console, per_optim, rundir
from sofo_lab.errors import ConfigError, RunFailed


def config_dir() -> str:
    """conf/ inside the installed package, or the repository's conf/ for editable installs."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"sofo-run cannot find its conf/ directory next to {here}; reinstall the package")


CONF_DIR = config_dir()
GROUPS = ("task", "model", "optim", "logger", "experiment")
_FLAGS_WITHOUT_RUN = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-p", "--package",
                      "--resolve", "-sc", "--shell-completion", "--version", "-cp", "--config-path",
                      "-cd", "--config-dir", "-cn", "--config-name")
_exit_code = 0


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


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


def _check_groups(parsed) -> None:
    for o in parsed:
        key = o.key_or_group.lstrip("+~")
        if key in GROUPS and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for value in values:
                if value not in _options(key) and value != "null":
                    raise ConfigError(key, value, f"unknown {key}; choose one of {_options(key)}")


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        bad = next((o for o in overrides if f"'{o.split('=')[0].lstrip('+~')}'" in lines[0]), " ".join(overrides))
        key = bad.split("=")[0]
        if "not in struct" in str(err) or "Could not override" in lines[0]:
            parent = key.rsplit(".", 1)[0] if "." in key else None
            base = _compose_quiet([o for o in overrides if o != bad])
            node = OmegaConf.select(base, parent) if parent else base
            known = sorted(k for k in node.keys() if k != "hydra") if isinstance(node, DictConfig) else []
            raise ConfigError(key, bad.split("=", 1)[-1],
                              f"unknown key; {parent or 'the top level'} has {known} (add a new key with +{bad})") from None
        raise ConfigError(key, bad.split("=", 1)[-1], lines[-1] if len(lines) > 1 else lines[0]) from None


def _compose_quiet(overrides):
    try:
        return _compose(overrides)
    except ConfigError:
        return _compose([])


def _check_writable(cfg: DictConfig, multirun: bool) -> None:
    node = cfg.hydra.sweep if multirun else cfg.hydra.run
    raw = OmegaConf.to_container(node, resolve=False)["dir"]
    static = Path(raw.split("${", 1)[0] or ".")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        static.mkdir(parents=True, exist_ok=True)
        probe = static / f".sofo-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(key, raw, f"output directory is not writable ({err.strerror}); "
                                    f"pass a writable {key}=...") from None


def precheck(argv: list[str]) -> None:
    """Compose and build every combination the command asks for; raise ConfigError on bad input."""
    if any(a.split("=")[0] in _FLAGS_WITHOUT_RUN for a in argv):
        return
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    parsed = _parse(overrides)
    _check_groups(parsed)
    from sofo_lab import resources
    from sofo_lab.assemble import build

    for i, combo in enumerate(_expand(parsed)):
        cfg = per_optim.apply(_compose(combo), known=_options("optim"))
        if i == 0:
            _check_writable(cfg, multirun or cfg.hydra.mode == "MULTIRUN")
            rundir.precheck(cfg, multirun or cfg.hydra.mode == "MULTIRUN")   # lock; resumable checkpoint
        resources.check_shapes(build(cfg), cfg, launcher=cfg.hydra.get("launcher"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _run(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from sofo_lab.runner import train

    for noisy in ("jax", "matplotlib", "absl"):   # Hydra's logging config would show their INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    console.install()   # also in submitit's job processes
    cfg = per_optim.apply(cfg, choices.get("optim"))   # +per_optim.<optim>.<key>: this optimizer's runs only
    from sofo_lab.sweep import note_failure, sweep_dir_of

    sweep_dir = sweep_dir_of(hc)
    if sweep_dir is not None and cfg.logger.get("name") == "wandb" and cfg.logger.get("group") is None:
        with open_dict(cfg):
            cfg.logger.group = sweep_dir.name   # group a sweep's wandb runs unless the user named a group
    try:
        summary = train(cfg, Path(hc.runtime.output_dir), choices)
    except ConfigError as err:
        _report(f"error: {err}", 2)
        return float("nan")
    except RunFailed as err:
        _report(f"run failed: {err}", 1)
        return float("nan")
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


def main() -> None:
    _share_one_gpu(sys.argv[1:])
    console.install()
    if any(a in ("-h", "--help") for a in sys.argv[1:]):   # sofo_lab/help.py; Hydra's own: --hydra-help
        from sofo_lab.help import render

        print(render([a for a in sys.argv[1:] if a not in ("-h", "--help", "-m", "--multirun")]))
        sys.exit(0)
    try:
        precheck(sys.argv[1:])
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _run()
    sys.exit(_exit_code)


if __name__ == "__main__":
    main()
