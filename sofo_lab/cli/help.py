"""``sofo-run [overrides] --help``: the usage, every config group and the keys of the chosen pieces.

Everything on the page comes from the config files themselves: an option's description is the
first comment line of its YAML, a key's description is its trailing ``# ...`` comment, a key's
default is its value in the config composed with the overrides given, so ``sofo-run task=reach
--help`` describes the reach, and a user's own ``--config-dir`` files are described the same way.
Hydra's own page stays available as ``sofo-run --hydra-help``.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from sofo_lab.conf import CONF_DIR

WIDTH = 100
SHOWN_GROUPS = ("task", "model", "optim", "logger", "callbacks", "experiment", "cluster", "local", "hydra/launcher")
KEY_GROUPS = ("task", "model", "optim")
# Options Hydra and its plugins define in code (no YAML to read a comment from).
BUILTIN = {
    "hydra/launcher/basic": "Hydra's default: the runs of a sweep one after another, in this process",
    "hydra/launcher/submitit_local": "hydra-submitit-launcher: one local process per run",
    "hydra/launcher/submitit_slurm": "hydra-submitit-launcher: one SLURM job per run (see slurm)",
}

USAGE = """\
sofo-run trains a recurrent network (rate RNN, GRU, LSTM) on a task with an optimizer (SOFO, UORO,
Adam/BPTT, truncated BPTT, forward gradient, RTRL) and writes the run directory: metrics.jsonl,
summary.json, plots, checkpoints (rerun the same command to resume), sofo.log.

Usage:
  sofo-run [group=option ...] [key=value ...]          one run
  sofo-run -m [group=a,b ...] [key=v1,v2 ...]          a sweep: every combination, one run each
  sofo-run -m optim=sofo,adam +per_optim.sofo.n_tangents=16   a key for one optimizer's runs only
  sofo-run [overrides] --help                          this page, for the chosen task/model/optim
  sofo-run [overrides] --cfg job                       the composed config, without running
  sofo-compare <sweep or run dir> ...                  compare runs: figure and table

Examples:
  sofo-run task=kalman optim=adam iterations=500
  sofo-run -m task=kalman optim=sofo,adam,uoro seed=0,1,2 +per_optim.sofo.n_tangents=16
  sofo-run -m hydra/launcher=slurm hydra.launcher.partition=gpu experiment=reach_paper seed=0,1,2"""


def _comment(line: str) -> str | None:
    """The text of a trailing ``# comment`` outside quotes, or None."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[i + 1:].strip()
    return None


def describe_file(path: Path) -> str:
    """The first sentence of a YAML file's leading comment (``# @package`` lines skipped)."""
    parts = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        if not text.startswith("# @package"):
            parts.append(text.lstrip("#").strip())
            if re.search(r"[.:]$", parts[-1]):
                break
    text = " ".join(parts)
    m = re.search(r"(?<=\.)\s", text)
    return (text[: m.start()] if m else text).rstrip(":")


def key_comments(path: Path) -> dict[str, str]:
    """``{dotted key: trailing comment}`` for every key of a YAML file (``defaults``/``_target_`` skipped)."""
    out, stack = {}, []   # stack: (indent, key)
    for line in path.read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z0-9_\-]+)\s*:(.*)$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if dotted.split(".")[0] in ("defaults", "hydra") or key.startswith("_"):
            continue
        out[dotted] = _comment(m.group(3)) or ""
    return out


def _value(cfg, key: str) -> tuple[str, str | None]:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:   # noqa: BLE001 - an interpolation that needs the runtime (${hydra:...})
        value = None
    raw = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    return _yaml(value), (raw if isinstance(raw, str) and "${" in raw else None)


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _key_row(cfg, key: str, comment: str) -> tuple[str, str]:
    value, interpolation = _value(cfg, key)
    return f"{key} = {value}", comment + (f" (default: {interpolation})" if interpolation else "")


def _rows(rows: list[tuple[str, str]], indent: int = 2) -> list[str]:
    width = min(max((len(a) for a, _ in rows), default=0), 34)
    out = []
    for a, b in rows:
        head = " " * indent + a.ljust(width) + "  "
        if len(a) > width:
            out.append(" " * indent + a)
            head = " " * (indent + width + 2)
        wrapped = textwrap.wrap(b, WIDTH - len(head)) or [""]
        out.append(head + wrapped[0])
        out += [" " * len(head) + w for w in wrapped[1:]]
    return out


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        options = {g: loader.get_group_options(g) for g in SHOWN_GROUPS}
    sources = [Path(s["path"]) for s in cfg.hydra.runtime.config_sources if s["schema"] == "file"]
    for group in SHOWN_GROUPS:   # the --config-dir / hydra.searchpath ones too
        found = {f.stem for src in sources for f in (src / group).glob("*.yaml")}
        options[group] = sorted(set(options.get(group) or []) | found)
    return cfg, options, sources


def _find(sources: list[Path], group: str, option: str) -> Path | None:
    return next((s / group / f"{option}.yaml" for s in sources if (s / group / f"{option}.yaml").is_file()), None)


def render(overrides: list[str]) -> str:
    """The help page for the config composed from ``overrides``."""
    lines = [USAGE, ""]
    args, extra_dirs, i = [], [], 0
    while i < len(overrides):   # --config-dir DIR / -cd DIR / --config-dir=DIR: a user's own configs
        a = overrides[i]
        if a in ("--config-dir", "-cd") and i + 1 < len(overrides):
            extra_dirs.append(overrides[i + 1])
            i += 1
        elif a.startswith("--config-dir="):
            extra_dirs.append(a.split("=", 1)[1])
        elif not a.startswith("-"):
            args.append(a)
        i += 1
    if extra_dirs:
        args.append("hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in extra_dirs) + "]")
    try:
        cfg, options, sources = _compose(args)
    except Exception as err:   # noqa: BLE001 - a bad override: say so, describe the defaults
        lines += [f"(could not compose these overrides: {str(err).splitlines()[0]}; showing the defaults)", ""]
        cfg, options, sources = _compose([])
    choices = cfg.hydra.runtime.choices
    lines.append("Config groups (group=option; * marks the choice in effect):")
    for group in SHOWN_GROUPS:
        if not options.get(group):
            continue
        lines.append(f"  {group}:")
        rows = []
        for option in options[group]:
            path = _find(sources, group, option)
            text = describe_file(path) if path else BUILTIN.get(f"{group}/{option}", "")
            rows.append((("* " if choices.get(group) == option else "  ") + option, text))
        lines += _rows(rows, indent=4)
    lines += ["", "Run keys (key=value):"]
    main = next((s / "config.yaml" for s in sources if (s / "config.yaml").is_file()), None)
    if main is not None:
        lines += _rows([_key_row(cfg, k, c) for k, c in key_comments(main).items()
                        if "." not in k and k != "per_optim" and not isinstance(cfg.get(k), DictConfig)])
    for group in KEY_GROUPS:
        choice = choices.get(group)
        path = _find(sources, group, choice) if choice else None
        if path is None:
            continue
        lines += ["", f"{group}={choice} keys ({group}.KEY=value): {describe_file(path)}"]
        comments = key_comments(path)
        rows = [_key_row(cfg, f"{group}.{k}", c) for k, c in comments.items()
                if k != "name" and not isinstance(OmegaConf.select(cfg, f"{group}.{k}"), DictConfig)]
        lines += _rows(rows)
    lines += ["", "Optimizer-specific keys in a sweep over optim: +per_optim.<optim>.<key>=<value> applies to that",
              "optimizer's runs only (e.g. +per_optim.sofo.n_tangents=16 +per_optim.adam.lr=3e-3).",
              "Launchers: hydra/launcher=local_parallel (local processes) or slurm; Hydra's own options:",
              "sofo-run --hydra-help. Runs and sweeps are compared with sofo-compare <dir> ... (--help)."]
    return "\n".join(lines)
