"""A run, built once (``prepare``) and trained (``Trainer``).

``prepare(cfg)`` builds what a run needs from its composed config and checks every value on the
way: ``+per_optim`` applied, the loggers (loggers.instantiate), task, model, system and optimizer
(assemble.build), the memory the run needs from shapes (resources.check_shapes). sofo-run's
pre-check calls it before anything is written and hands the result to the Trainer.

``Trainer(prepared, run_dir).fit()`` runs the run, or resumes it from its last checkpoint. The host
loop dispatches one jitted update per call (or ``steps_per_dispatch`` of them) and reads each
call's metrics while the next one runs; everything else is a callback (callbacks.py: progress bar,
evaluation, metrics file, checkpoints, preemption, plots, profile) or a logger (loggers.py: wandb,
or any class a ``logger`` config names). Adding a duty or a logger changes nothing here::

    trainer = Trainer(prepare(cfg), "outputs/mine", callbacks=[*default_callbacks(cfg), MyCallback()])
    summary = trainer.fit()
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from sofo_lab.core.errors import RunFailed
from sofo_lab.core.tree import count_params
from sofo_lab.train import callbacks as cb
from sofo_lab.train import checkpoint, console, loggers, per_optim, profiling, resources, rundir
from sofo_lab.train.assemble import Setup, build, instantiate_all
from sofo_lab.train.host_batches import HostBatches
from sofo_lab.train.reporting import format_metrics, write_json_atomic
from sofo_lab.train.state import init_train_state
from sofo_lab.train.steps import TrainClock, call_starts, log_due, make_train_step, make_train_steps, to_host


class Prepared(NamedTuple):
    """A run ready to train: every value checked, nothing written yet."""

    cfg: DictConfig         # the composed config, +per_optim applied
    choices: dict           # Hydra's group choices ({"task": "reach", ...}); names things in messages
    setup: Setup            # task, model, system, optimizer
    loggers: list           # instances, not started
    estimate: dict          # bytes from shapes (resources.shape_estimate), for the check after compiling
    callbacks: tuple = ()   # the user's own (cfg.callbacks), after the built-in duties


def prepare(cfg: DictConfig, choices: dict | None = None, known_optims=None, launcher=None) -> Prepared:
    """Build and check the run ``cfg`` describes; a bad value is a one-line ``ConfigError``.
    ``known_optims``: the names ``+per_optim.<name>`` may use; ``launcher``: Hydra's launcher
    config (a SLURM job is measured against the memory it requests)."""
    choices = dict(choices or {})
    cfg = per_optim.apply(cfg, choices.get("optim"), known=known_optims)
    run_loggers = loggers.instantiate(cfg.get("logger"))
    own_callbacks = instantiate_all(cfg.get("callbacks"), "callbacks")
    setup = build(cfg, choices)
    estimate = resources.check_shapes(setup, cfg, launcher=launcher)
    return Prepared(cfg, choices, setup, run_loggers, estimate, tuple(own_callbacks))


def default_callbacks(cfg: DictConfig) -> list[cb.Callback]:
    """The duties of a run, in the order they act on each step (callbacks.py)."""
    return [cb.Profile(), cb.Progress(cfg.get("progress", True)), cb.Evaluation(cfg.eval_every), cb.MetricsFile(),
            cb.Checkpoints(cfg.checkpoint_every), cb.Preemption(), cb.Plots(cfg.get("plots", True))]


def train(cfg: DictConfig, run_dir, choices: dict | None = None) -> dict:
    """Run (or resume) the run ``cfg`` describes in ``run_dir``; return the summary."""
    return Trainer(prepare(cfg, choices), run_dir).fit()


class Trainer:
    """The host loop of one run. ``callbacks``: unless given, default_callbacks(cfg) and then the
    user's own (``cfg.callbacks``); ``sweep``: the sweep directory's name in a multirun (loggers may
    group by it)."""

    def __init__(self, run: Prepared, run_dir, *, callbacks=None, sweep: str | None = None):
        cfg = run.cfg
        self.cfg, self.setup, self.choices, self.estimate = cfg, run.setup, run.choices, run.estimate
        self.loggers = list(run.loggers)
        self.callbacks = [*default_callbacks(cfg), *run.callbacks] if callbacks is None else list(callbacks)
        self.run_dir, self.sweep = Path(run_dir), sweep
        self.iterations, self.batch_size = cfg.iterations, cfg.batch_size
        self.config = OmegaConf.to_container(cfg, resolve=True)   # what checkpoints and loggers record
        self.history: list[dict] = []     # every record written, this run's and (resumed) the earlier ones
        self.profile: dict = {}
        self.durations: list[float] = []  # seconds per update, on the training clock
        self.state = self.resumed_from = self.clock = self.rollout = self._last_ready = self.batches = None
        self.start = 0

    @property
    def train_time_s(self) -> float:
        """Training seconds so far (the last record's ``time_s``)."""
        return self.clock.offset if self._last_ready is None else self._last_ready

    def log(self, record: dict) -> None:
        """A record of one iteration (written to metrics.jsonl by ``MetricsFile``): the history, every logger."""
        self.history.append(record)
        for logger in self.loggers:
            logger.log(record)

    def fit(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.lock(self.run_dir)   # one process per run directory
        self.state = init_train_state(self.setup, self.cfg.seed, self.batch_size, compile=True)
        saved = checkpoint.resume_payload(self.run_dir, self.config) if self.cfg.get("resume", True) else None
        if saved is not None:
            self.state = jax.tree.map(jnp.asarray, saved["state"])
            self.resumed_from = int(self.state.iteration)
        self.start = int(self.state.iteration)
        status, error = "completed", None
        try:
            for c in self.callbacks:
                c.on_start(self)
            info = loggers.RunInfo(self.run_dir, self.config, self.choices, self.resumed_from, self.sweep)
            for logger in self.loggers:
                logger.start(info)
            self._loop(self._compile())
        except RunFailed as err:   # a divergence: the summary says so
            status, error = "diverged", str(err)
            self.state = self.state._replace(iteration=getattr(err, "iteration", self.state.iteration))
        except BaseException as err:
            for c in self.callbacks:
                c.on_exception(self, err)
            raise
        finally:
            if self.batches is not None:
                self.batches.close()
        return self._finish(status, error)

    def _compile(self) -> dict:
        """The jitted calls the schedule uses (updates per call -> compiled), with their profile."""
        cfg, state, seed, B = self.cfg, self.state, self.cfg.seed, self.batch_size
        chunk = cfg.get("steps_per_dispatch", 1)
        marks = [c.every for c in self.callbacks if c.every]

        def call_length(i):   # updates in the call after update i: a whole chunk if no pause falls inside
            nxt = min([self.iterations] + [(i // m + 1) * m for m in marks])
            return chunk if nxt - i >= chunk else 1

        self.call_length = call_length
        lengths = {call_length(i) for i in call_starts(self.start, self.iterations, call_length)} or {1}
        if chunk > 1 and chunk not in lengths:
            warnings.warn(f"steps_per_dispatch={chunk} is never used: a checkpoint or evaluation falls inside every "
                          f"call (checkpoint_every={cfg.checkpoint_every}, eval_every={cfg.eval_every}); make them "
                          "multiples of it")
        if getattr(self.setup.task, "host_batches", False):   # batches made on the host, a few calls ahead
            self.batches = HostBatches(self.setup.task, seed, B)
        examples = {n: () if self.batches is None else (self.batches.make(self.start, n),) for n in lengths}
        calls = {n: profiling.compile_timed(make_train_steps(self.setup, seed, B, n) if n > 1
                                            else make_train_step(self.setup, seed, B), state, *examples[n])
                 for n in sorted(lengths)}
        memory = profiling.compiled_memory_bytes(calls[max(calls)][0])
        resources.check_compiled(cfg, memory, self.estimate)
        self.profile.update(n_params=count_params(state.params), steps_per_dispatch=chunk,
                            lower_s=sum(c[1] for c in calls.values()), compile_s=sum(c[2] for c in calls.values()),
                            step_memory_bytes=memory,   # XLA counts a scan body once: flops of one update only
                            flops=profiling.compiled_flops(calls[1][0]) if 1 in calls else None)
        calls = {n: c[0] for n, c in calls.items()}
        if self.resumed_from is not None:
            print(f"Resuming {self.run_dir} from iteration {self.start}", file=sys.stderr)
        t0 = time.perf_counter()   # a first, discarded call of each: its one-off runtime set-up stays out of time_s
        for n, fn in calls.items():
            jax.block_until_ready(fn(state, *examples[n]))
        self.profile["first_step_s"] = time.perf_counter() - t0
        return calls

    def _loop(self, calls: dict) -> None:
        self.clock = TrainClock(offset=next((r["time_s"] for r in reversed(self.history) if "time_s" in r), 0.0))
        if self.start == 0:   # the untrained network: every curve starts here
            self._step(cb.Step(0, {}, self.state, 0.0))
        pending = None
        for i in call_starts(self.start, self.iterations, self.call_length):
            if pending is not None and self._pauses(pending[0] + pending[1]):
                self._handle(*pending)   # nothing in flight while a callback works: time_s stays honest
                pending = None
            n = self.call_length(i)
            batch = () if self.batches is None else (self.batches.get(i, n, upcoming=self._calls_after(i + n)),)
            new_state, metrics = calls[n](self.state, *batch)
            if pending is not None:
                self._handle(*pending)   # the previous call's metrics, read while this one runs
            pending, self.state = (i, n, metrics, new_state), new_state
        if pending is not None:
            self._handle(*pending)

    def _calls_after(self, i: int, count: int = 2) -> list[tuple[int, int]]:
        """The next ``count`` calls ``(first update, updates)`` from update ``i`` on (host batches made ahead)."""
        calls = []
        while i < self.iterations and len(calls) < count:
            calls.append((i, self.call_length(i)))
            i += calls[-1][1]
        return calls

    def _pauses(self, done: int) -> bool:
        return any(cb.due(done, c.every, self.iterations) for c in self.callbacks)

    def _handle(self, i: int, n: int, metrics, state_after) -> None:
        """The n updates after update i, read back; a call's updates share its time evenly."""
        host = to_host(metrics)
        now, before = self.clock.now(), self._last_ready
        if before is not None:
            self.durations.append((now - before) / n)
        self._last_ready = now
        for j in range(n):
            row = host if n == 1 else {k: (v[j].item() if np.ndim(v) == 1 else v[j]) for k, v in host.items()}
            at = now if before is None else before + (now - before) * (j + 1) / n
            if not row.pop("finite"):
                raise checkpoint.divergence(self.run_dir, i + j + 1, f"non-finite loss or parameters "
                                            f"(loss={row['loss']})", self.cfg.get("optim"))
            step = cb.Step(i + j + 1, row, state_after if j == n - 1 else None, at)
            if log_due(step.done, self.cfg.log_every, self.cfg.get("log_geometric")) or step.done == self.iterations:
                step.record.update({f"train/{k}": v for k, v in row.items()})
            self._step(step)

    def _step(self, step: cb.Step) -> None:
        for c in self.callbacks:
            c.on_step(self, step)
        if step.diverged:
            raise checkpoint.divergence(self.run_dir, step.done, step.diverged, self.cfg.get("optim"))

    def _finish(self, status: str, error: str | None) -> dict:
        last_train = next((r for r in reversed(self.history) if "train/loss" in r), {})
        summary = {"status": status, "error": error, "iterations": int(self.state.iteration),
                   "resumed_from": self.resumed_from, "profile": self.profile, "plots": [],
                   "final": {k: v for k, v in last_train.items() if k.startswith("train/")},
                   "run_dir": str(self.run_dir), "choices": self.choices}
        for c in self.callbacks:
            c.on_end(self, summary)
        if "loss" not in summary["final"] and "train/loss" in summary["final"]:
            summary["final"]["loss"] = summary["final"]["train/loss"]
        write_json_atomic(self.run_dir / "summary.json", summary)
        lines = [logger.finish(summary) for logger in self.loggers]
        print_result(self.setup, summary, [line for line in lines if line])
        if error:
            raise RunFailed(error)
        return summary


def print_result(setup: Setup, summary: dict, extra: list[str] = ()) -> None:
    """The run's result in a few lines: its directory, the task's reading, final metrics, profile."""
    final, profile = summary["final"], summary["profile"]
    lines = [f"Run directory: {summary['run_dir']}"]
    described = setup.task.describe(final)
    if described:
        lines.append(described)
    lines.append("Final: " + format_metrics({k: v for k, v in final.items() if not k.startswith("train/")} or final))
    ms, mem = profile.get("step_time_median_s"), profile.get("step_memory_bytes")
    lines.append(f"Profile: {profile['n_params']} params, compile {profile['compile_s']:.2f} s"
                 + (f", {ms * 1e3:.2f} ms/iteration (median)" if ms and math.isfinite(ms) else "")
                 + (f", step memory {mem / 2**20:.1f} MiB" if mem else "")
                 + (f", training {profile['train_time_s']:.2f} s (evaluation {profile['eval_time_s']:.2f} s and "
                    f"checkpoints {profile['checkpoint_time_s']:.2f} s not counted)" if "train_time_s" in profile else ""))
    console.emit("\n".join([*lines, *extra]))
