"""Shared fixtures: compose configs through Hydra's compose API, tiny run sizes."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# One persistent XLA compilation cache for the whole session, set before JAX is imported: every
# xdist worker and every sofo-run subprocess inherits it, and the suite compiles the same tiny
# steps in many tests (cold, a tiny run is ~2/3 compilation).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sofo-lab-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite's programs are tiny and compiling them is most of its time: without XLA's backend
# optimizations (a quarter less) and with XLA CPU's older elementwise emitters (half the compile
# time again; slower code, which tiny sizes do not feel). Numerics are checked against exact
# counterparts, which hold either way; benchmarks and users' runs keep XLA's defaults
# (docs/results/suite_speed.md).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "--xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from sofo_lab.conf import CONF_DIR  # noqa: E402

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
    return subprocess.run([sys.executable, "-m", "sofo_lab.cli.run", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(out, code=2):
    """The last line of a ``sofo-run`` that failed as it should: exit ``code``, no traceback."""
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[-1]


def strict(text: str):
    """Parse JSON that must be strict (no NaN or Infinity)."""
    def bad(constant):
        raise AssertionError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=bad)


def _logging_state():
    import logging

    loggers = [logging.root, *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    return {lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}


def _restore_logging(saved) -> None:
    import logging

    for lg in [logging.root, *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]:
        handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture
def sofo_run_here(monkeypatch):
    """``sofo-run``'s ``main()`` in this process, as ``run_cli`` runs it in another: returns a
    ``CompletedProcess`` (exit status, stdout, stderr). No interpreter start; what ``main`` changes
    in the process (working directory, ``sys.path``, ``PYTHONPATH``, warnings) is put back after
    the test. For what needs a process of its own (signals, a kill, concurrency), use ``run_cli``."""
    import contextlib
    import io
    import warnings

    import sofo_lab.cli.run as run

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    # Hydra's job logging (logging.config.dictConfig) would close every handler there is, pytest's own
    # among them: later tests on this worker then fail writing a log record to a closed file
    import logging.config

    monkeypatch.setattr(logging.config, "_clearExistingHandlers", lambda: None)
    before, dirs = set(sys.modules), []

    def call(args, cwd, env=None):
        dirs.append(str(Path(cwd).resolve()))
        monkeypatch.chdir(cwd)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", ["sofo-run", *args])
        monkeypatch.setattr(run, "_exit_code", 0)
        run._checked.clear()
        out, err, code = io.StringIO(), io.StringIO(), 0
        # Hydra's logging set-up closes every handler in the process, and absl's (JAX's) closes its
        # stream then unless it is a sys stream: pytest's capture file when JAX was first imported in
        # an earlier test, and every test after that would fail on a closed file.
        from absl import logging as absl_logging

        monkeypatch.setattr(absl_logging.get_absl_handler().python_handler, "stream", sys.__stderr__)
        saved, environ = _logging_state(), dict(os.environ)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    run.main()
                except SystemExit as exit_:
                    code = exit_.code or 0
        finally:
            _restore_logging(saved)   # Hydra's job logging would keep writing to the closed streams above
            # wandb exports its service's address (WANDB_SERVICE): a sofo-run started later by this
            # worker would join this process's service instead of starting its own
            os.environ.clear()
            os.environ.update(environ)
        return subprocess.CompletedProcess(["sofo-run", *args], code, out.getvalue(), err.getvalue())

    yield call
    for name in set(sys.modules) - before:   # a user's modules (mylab.flipflop) imported from cwd go too
        if any(str(getattr(sys.modules[name], "__file__", None) or "").startswith(d) for d in dirs):
            del sys.modules[name]


@pytest.fixture
def tiny():
    return list(TINY)
