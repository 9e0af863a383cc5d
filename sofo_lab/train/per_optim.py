"""Optimizer-specific keys in cross-optimizer sweeps: ``+per_optim.<optim>.<key>=<value>``.

``optim.n_tangents=16`` cannot go into ``sofo-run -m optim=sofo,adam,uoro``: Adam has no such key.
Written under ``per_optim`` and the optimizer's config-group choice, a key applies only to the
runs of that optimizer::

    sofo-run -m task=kalman optim=sofo,adam,uoro seed=0,1,2 +per_optim.sofo.n_tangents=16 \\
        +per_optim.adam.lr=3e-3

``apply(cfg)`` merges ``per_optim.<chosen optim>`` into ``optim`` (an unknown key fails as it
would under ``optim.``) and drops ``per_optim``, so the run, its checkpoint and wandb see the
optimizer's own config only. ``effective_overrides`` does the same to a run's
``.hydra/overrides.yaml``, so the sweep summary and ``sofo-compare`` attribute
``n_tangents=16`` to the SOFO rows and to nothing else.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from sofo_lab.conf import CONF_DIR
from sofo_lab.core.errors import ConfigError

KEY = "per_optim"


def group_choice(cfg: DictConfig, group: str) -> str | None:
    """The config-group choice behind ``cfg.<group>`` (``optim`` -> "sofo"): Hydra's record of it
    (``hydra.runtime.choices``) when the config holds one, else the packaged ``conf/<group>/<name>.yaml``
    that names the same ``_target_`` (the first by name); None for a config of the user's own."""
    choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
    if choice:
        return choice
    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")) if target else []:
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return None


def _choice(cfg: DictConfig, optim_choice: str | None) -> str | None:
    return optim_choice if optim_choice is not None else group_choice(cfg, "optim")


def apply(cfg: DictConfig, optim_choice: str | None = None, known: Iterable[str] | None = None) -> DictConfig:
    """``cfg`` with ``per_optim.<optim>`` merged into ``optim`` and ``per_optim`` removed.

    ``optim_choice``: the optimizer's config-group choice (default: ``group_choice(cfg, "optim")``). ``known``: the optimizer names allowed under ``per_optim`` (a typo such
    as ``per_optim.sofoo`` would otherwise apply to nothing).
    """
    extra = cfg.get(KEY) if isinstance(cfg, DictConfig) else None
    if extra is None:
        return cfg
    if not isinstance(extra, DictConfig):
        raise ConfigError(KEY, extra, "must map optimizer names to keys: +per_optim.sofo.n_tangents=16")
    choice = _choice(cfg, optim_choice)
    if known is not None:
        known = sorted(set(known) | ({choice} if choice else set()))
        for name in extra:
            if name not in known:
                raise ConfigError(f"{KEY}.{name}", OmegaConf.to_container(extra[name]),
                                  f"unknown optimizer; per_optim takes one of {known}")
    own = extra.get(choice) if choice is not None else None
    cfg = copy.deepcopy(cfg)
    if own:
        for key in own:
            if key not in cfg.optim:
                raise ConfigError(f"{KEY}.{choice}.{key}", own[key],
                                  f"unknown key; optim={choice} has {sorted(k for k in cfg.optim if k != '_target_')}")
        with open_dict(cfg):
            cfg.optim = OmegaConf.merge(cfg.optim, own)
    with open_dict(cfg):
        del cfg[KEY]
    return cfg


def effective_overrides(overrides: Iterable[str], optim_choice: str | None) -> list[str]:
    """A run's override strings as they acted: ``+per_optim.<optim>.k=v`` becomes ``optim.k=v``
    for that optimizer's runs and disappears from the others."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        parts = key.lstrip("+~").split(".")
        if parts[0] != KEY or not eq or len(parts) < 2:
            out.append(o)
        elif parts[1] == optim_choice and len(parts) > 2:
            out.append("optim." + ".".join(parts[2:]) + "=" + value)
    return out


def run_overrides(run_dir) -> list[str]:
    """The effective overrides of a Hydra run directory (``.hydra/overrides.yaml``, the optimizer
    from ``.hydra/hydra.yaml``)."""
    from pathlib import Path

    hydra_dir = Path(run_dir) / ".hydra"
    overrides = OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml")) or []
    choice = None
    if (hydra_dir / "hydra.yaml").is_file():
        choice = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices.optim")
    return effective_overrides(overrides, choice)
