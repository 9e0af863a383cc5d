"""Will the run fit in memory? Estimates from shapes (nothing allocated) and from the compiled update.

Two checks, both before anything large is allocated:

- ``check_shapes`` (``trainer.prepare``, in sofo-run's pre-check; before the held-out batch or
  the initial state exist): ``jax.eval_shape`` of the initial training state, of the held-out batch and of
  the evaluation rollout's outputs. ``batch_size=1000000000`` is refused here: building its
  held-out batch would need terabytes.
- ``check_compiled`` (the Trainer, right after compiling the update, before its first call): the
  compiled update's ``memory_analysis()`` (temp + arguments + outputs − aliased), plus what is
  already resident. ``task.n_steps=100000000`` with ``optim=adam`` (BPTT keeps every step) and
  ``optim.n_tangents=100000`` (K tangents of P parameters) are refused here.

The available memory is ``available_bytes`` (sofo_lab/core/memory.py). A refusal is one line: the
key that made the run large, the estimated and the available bytes, what to lower.
"""
from __future__ import annotations

from pathlib import Path

import jax
from omegaconf import OmegaConf

from sofo_lab.conf import CONF_DIR
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.memory import available_bytes, fmt_bytes, tree_bytes
from sofo_lab.core.system import rollout
from sofo_lab.train.per_optim import group_choice
from sofo_lab.train.state import init_train_state

# The keys that set a run's size, with where their defaults live (conf/<file>).
SIZE_KEYS = {"batch_size": "config", "eval_batch_size": "config", "task.n_steps": "task",
             "optim.n_tangents": "optim", "model.n_hidden": "model"}


def shape_estimate(setup, cfg) -> dict[str, int]:
    """Bytes of the initial training state and of the held-out evaluation, from shapes alone."""
    system, task = setup.system, setup.task
    out = {"training state": tree_bytes(jax.eval_shape(lambda: init_train_state(setup, 0, cfg.batch_size)))}
    B = setup.eval_batch_size

    def evaluation():
        batch = task.eval_batch(jax.random.PRNGKey(0), B)
        if batch is None:
            return None, None
        batch = batch._replace(noise=system.sample_noise(jax.random.PRNGKey(1), batch.n_steps, B))
        params = system.init_params(jax.random.PRNGKey(0))
        return batch, rollout(system, params, system.init_state(params, B), batch)[1:]

    try:
        batch, outputs = jax.eval_shape(evaluation)
    except Exception:  # noqa: BLE001 - a task whose held-out batch is built on the host: no estimate
        return out
    if batch is not None:
        out["held-out batch"] = tree_bytes(batch)
        out["held-out rollout"] = tree_bytes(outputs)
    return out


def culprit(cfg) -> str:
    """The size key furthest above its default (the likeliest one to lower)."""
    best, best_ratio = "batch_size", 0.0
    for key, group in SIZE_KEYS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if group == "config":
            default = OmegaConf.load(Path(CONF_DIR) / "config.yaml").get(key.split(".")[-1])
        else:
            name = group_choice(cfg, group)   # the YAML the run chose, or the one naming its _target_
            path = Path(CONF_DIR) / group / f"{name}.yaml"
            default = OmegaConf.load(path).get(key.split(".")[-1]) if name and path.is_file() else None
        default = default if isinstance(default, int) and not isinstance(default, bool) else 1
        if value / default > best_ratio:
            best, best_ratio = key, value / default
    return best


def refuse_if_too_big(cfg, need: dict[str, int], free: int | None = None, where: str = "") -> None:
    """``ConfigError`` (one line) when the parts in ``need`` add up to more than ``free`` bytes."""
    if free is None:
        free, where = available_bytes()
    total = sum(need.values())
    if total <= free:
        return
    key = culprit(cfg)
    parts = ", ".join(f"{name} {fmt_bytes(n)}" for name, n in sorted(need.items(), key=lambda kv: -kv[1]) if n)
    others = [k for k in SIZE_KEYS if k != key and OmegaConf.select(cfg, k, default=None) is not None]
    raise ConfigError(key, OmegaConf.select(cfg, key),
                      f"the run needs about {fmt_bytes(total)} ({total} bytes: {parts}) but {fmt_bytes(free)} "
                      f"({free} bytes) is {where}; lower {key} (or {', '.join(others)})")


def check_shapes(setup, cfg, launcher=None) -> dict[str, int]:
    """Refuse a run whose state or held-out evaluation cannot fit; returns the estimate.

    ``launcher`` (the CLI's pre-check): a SLURM job runs elsewhere, so its runs are measured
    against the memory they request (``hydra.launcher.mem_gb``), not this machine's."""
    estimate = shape_estimate(setup, cfg)
    free = where = None
    if launcher is not None and "slurm" in str(launcher.get("_target_", "")).lower():
        if launcher.get("gpus_per_node") or not launcher.get("mem_gb"):
            return estimate   # device memory of a node we cannot see: the job checks it when it runs
        free, where = int(launcher.mem_gb * 2**30), "requested per run (hydra.launcher.mem_gb)"
    refuse_if_too_big(cfg, estimate, free, where)
    return estimate


def check_compiled(cfg, compiled_bytes: int | None, estimate: dict[str, int], free: int | None = None,
                   where: str = "") -> None:
    """Refuse a run whose compiled update (its arguments, the training state, included) and
    held-out evaluation cannot fit together."""
    if compiled_bytes is not None:
        resident = {k: v for k, v in estimate.items() if k != "training state"}
        refuse_if_too_big(cfg, {"compiled update": compiled_bytes, **resident}, free, where)
