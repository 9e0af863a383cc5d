"""What a ``sofo-run`` command line asks for, read before Hydra reads it, and the process it runs in.

``command(argv)`` reads Hydra's flags (the ones ``@hydra.main`` takes, Hydra 1.3) with a parser of
our own: Hydra's parser is private, and the pre-check only needs to know whether the command runs
(not ``--help``, ``--cfg``, ``--info``, ...), whether it is a multirun, the config name, the
overrides and ``--config-dir``. tests/test_cli.py checks that the flags here are Hydra's.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

from sofo_lab.core.errors import ConfigError

SWITCHES = ("--help -h", "--hydra-help", "--version", "--resolve", "--run -r", "--multirun -m",
            "--shell-completion -sc")
VALUED = ("--cfg -c", "--package -p", "--config-path -cp", "--config-name -cn", "--config-dir -cd",
          "--experimental-rerun")


def parser() -> argparse.ArgumentParser:
    """Hydra's command-line flags; a bad flag exits with a usage line, as Hydra would."""
    p = argparse.ArgumentParser(prog="sofo-run", add_help=False)
    p.add_argument("overrides", nargs="*")
    for flags in SWITCHES:
        p.add_argument(*flags.split(), action="store_true")
    for flags in VALUED:
        p.add_argument(*flags.split())
    p.add_argument("--info", "-i", nargs="?", const="all")
    return p


class Command(NamedTuple):
    """What Hydra will do with a command line."""

    runs: bool              # a run or a sweep (not --help, --cfg, --info or shell completion)
    multirun: bool
    config_name: str
    overrides: list[str]    # the user's overrides
    search: list[str]       # the ``hydra.searchpath=[...]`` override (the user's, with --config-dir's dir), or []


def parse(overrides: list[str]):
    """Hydra's reading of override strings (``hydra.core.override_parser``), a bad one in one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError("override", " ".join(overrides), str(err).splitlines()[0]) from None


def command(argv: list[str]) -> Command:
    args = parser().parse_intermixed_args(argv)   # flags may stand between overrides
    runs = not (args.help or args.hydra_help or args.version or args.cfg or args.info or args.shell_completion
                or args.config_path or args.experimental_rerun)   # -cp points at another app's configs
    overrides, search = [], []
    for o in args.overrides:
        (search if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath" else overrides).append(o)
    if args.config_dir is not None:   # Hydra adds it to the search path: the same, as hydra.searchpath
        path = Path(args.config_dir).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError("--config-dir", args.config_dir, "is not a directory; pass the folder holding "
                                                               "your task/, model/ or optim/ configs")
        entries = [repr(str(v)) for o in parse(search) for v in o.value()] + [repr(f"file://{path}")]
        search = [f"hydra.searchpath=[{','.join(entries)}]"]
    return Command(runs, bool(args.multirun), args.config_name or "config", overrides, search)


def flags_first(argv: list[str]) -> list[str]:
    """``argv`` with the flags before the overrides, where Hydra's own parser wants them
    (``sofo-run task=reach -m seed=0,1`` works too)."""
    rest, pending = [], list(parser().parse_intermixed_args(argv).overrides)
    overrides = list(pending)
    for a in argv:
        if pending and a == pending[0]:
            pending.pop(0)
        else:
            rest.append(a)
    return rest + overrides


def set_up_process(argv: list[str]) -> None:
    """Modules in the working directory import as under ``python -m`` (a ``_target_`` such as
    ``mylab.flipflop.FlipFlop``), here and in every process a launcher starts (submitit_local,
    SLURM): the directory is appended to ``sys.path`` (it cannot shadow an installed package) and
    to ``PYTHONPATH``, whose relative entries become absolute. Parallel local runs share the
    machine's GPU: without ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` the first JAX process would
    take 75 % of its memory and the others would fail (JAX's GPU memory allocation docs)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(entries + ([cwd] if cwd not in entries else []))
    if any(a.replace(" ", "").endswith("launcher=local_parallel") for a in argv):
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
