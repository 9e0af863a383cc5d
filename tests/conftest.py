"""Shared fixtures: compose configs through Hydra's compose API, tiny run sizes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sofo_lab.cli import CONF_DIR

# Tiny sizes: enough to exercise every code path in seconds on 2 cores.
TINY = ["iterations=3", "batch_size=4", "task.n_steps=12", "model.n_hidden=8", "logger=none",
        "progress=false", "plots=false", "log_every=1", "eval_every=2", "checkpoint_every=2"]


def compose_config(overrides=(), return_hydra_config=False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def run_cli(args, cwd, env=None, timeout=300):
    """Run ``sofo-run`` (through this interpreter) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "sofo_lab.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny():
    return list(TINY)
