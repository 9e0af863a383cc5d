"""The Trainer's duties, each a ``Callback``: profile, progress bar, evaluation, metrics file,
checkpoints, preemption, plots (``Trainer.callbacks``, in this order by default).

A callback has four hooks, all optional: ``on_start`` (before the update compiles), ``on_step``
(after each update, in list order), ``on_end`` (the summary, before summary.json is written) and
``on_exception``. A callback that needs the training state at some iterations says so with
``every``: the trainer ends a call of several updates (``steps_per_dispatch``) there, so that
``step.state`` is the state after that update. The order matters once: evaluation adds its
metrics to the step's record, the metrics file writes the record (and hands it to the loggers),
then checkpoints save the state, so a record is on disk before the checkpoint that resumes
after it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sofo_lab.train import checkpoint, preemption, profiling
from sofo_lab.train.reporting import plot_loss_curve
from sofo_lab.train.steps import make_eval, run_label, to_host


@dataclass
class Step:
    """One update, as the callbacks see it."""

    done: int                # updates done (0: the untrained network, before the first update of a fresh run)
    metrics: dict            # the update's metrics on the host ({} at iteration 0)
    state: Any               # the TrainState after it; None inside a call of several updates
    time_s: float            # on the training clock (trainer.clock)
    record: dict = field(default_factory=dict)   # what this iteration writes: train/..., eval/...
    diverged: str | None = None   # set by a callback that finds a divergence: the callbacks after it still
    #                               see the step (its record is written, no checkpoint); then the run stops


class Callback:
    """A duty of the Trainer. ``every``: the callback needs ``step.state`` at every ``every``-th update."""

    every: int | None = None

    def on_start(self, trainer) -> None:
        """Before the update compiles; ``trainer.state`` is the initial or resumed state (``trainer.start``)."""

    def on_step(self, trainer, step: Step) -> None:
        """After each update, and at iteration 0 of a fresh run (no update yet)."""

    def on_end(self, trainer, summary: dict) -> None:
        """After the last update or a divergence (``summary["status"]``); may add to ``summary``."""

    def on_exception(self, trainer, err: BaseException) -> None:
        """The run stops on an exception (a full disk, a stop signal's exit)."""


def due(done: int, every: int | None, iterations: int) -> bool:
    """Whether a callback acting every ``every`` updates acts after update ``done`` (and after the last)."""
    return every is not None and done > 0 and (done % every == 0 or done == iterations)


class Progress(Callback):
    """A tqdm bar on stderr: updates done, the last logged training loss."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar = enabled, None

    def on_step(self, trainer, step):
        if self.bar is None:
            self.bar = tqdm(total=trainer.iterations, initial=min(trainer.start, trainer.iterations),
                            desc=run_label(trainer.setup, trainer.choices), disable=not self.enabled,
                            dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        if step.done > 0:
            self.bar.update(1)
        if "train/loss" in step.record:
            self.bar.set_postfix(loss=f"{step.record['train/loss']:.4g}", refresh=False)

    def on_end(self, trainer, summary):
        self.on_exception(trainer, None)

    def on_exception(self, trainer, err):
        if self.bar is not None:
            self.bar.close()


class Evaluation(Callback):
    """The loss and the task's metrics on a fixed held-out batch (``eval/...``) every ``every``
    updates, at iteration 0 and at the end; a non-finite held-out loss is a divergence. Off for a
    task without a held-out batch."""

    def __init__(self, every: int):
        self.every_n, self.evaluate, self.batch = every, None, None

    def on_start(self, trainer):
        setup = trainer.setup
        self.evaluate, self.batch = make_eval(setup, trainer.cfg.seed, setup.eval_batch_size)
        self.every = self.every_n if self.evaluate is not None else None
        if self.evaluate is not None:   # compiled here so that no evaluation's compilation lands in time_s
            t0 = time.perf_counter()
            self.evaluate = self.evaluate.lower(trainer.state.params).compile()
            trainer.profile["eval_compile_s"] = time.perf_counter() - t0

    def on_step(self, trainer, step):
        if self.every is None or not (step.done == 0 or due(step.done, self.every, trainer.iterations)):
            return
        with trainer.clock.pause("eval"):
            step.record.update({f"eval/{k}": v for k, v in to_host(self.evaluate(step.state.params)[0]).items()})
        loss = step.record["eval/loss"]
        if step.done > 0 and not math.isfinite(loss):
            step.diverged = f"non-finite held-out loss (eval/loss={loss})"

    def on_end(self, trainer, summary):
        if self.evaluate is None or summary["status"] != "completed":
            return
        metrics, ys = self.evaluate(trainer.state.params)
        summary["final"].update({f"eval/{k}": v for k, v in to_host(metrics).items()})
        summary["final"]["loss"] = summary["final"]["eval/loss"]
        trainer.rollout = (self.batch, np.asarray(ys))


def _record(line: str) -> dict:
    """One line of metrics.jsonl, or {} for a line torn by a kill mid-write (it is recomputed)."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value   # strict JSON


class MetricsFile(Callback):
    """``metrics.jsonl``: one JSON object per logged iteration, written as it is made, then handed
    to the run's loggers (``trainer.log``). A resumed run drops the lines after its checkpoint
    (they are recomputed) and reads the rest back into ``trainer.history``."""

    NAME = "metrics.jsonl"

    def __init__(self):
        self.file = None

    def open(self, run_dir: Path, resume_iteration: int | None) -> list[dict]:
        path = Path(run_dir) / self.NAME
        kept = []
        if resume_iteration is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if _record(line).get("iteration", resume_iteration + 1) <= resume_iteration]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a")
        return [_record(line) for line in kept]

    def on_start(self, trainer):
        trainer.history[:] = self.open(trainer.run_dir, trainer.resumed_from)

    def on_step(self, trainer, step):
        if step.record:
            with trainer.clock.pause("log"):
                self.write({"iteration": step.done, "time_s": round(step.time_s, 4), **step.record}, trainer)

    def write(self, record: dict, trainer=None):
        self.file.write(json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False) + "\n")
        self.file.flush()
        if trainer is not None:
            trainer.log(record)

    def on_end(self, trainer, summary):
        self.close()

    def on_exception(self, trainer, err):
        self.close()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class Checkpoints(Callback):
    """An atomic checkpoint (checkpoints/last.pkl, params.npz) every ``every`` updates and at the end."""

    def __init__(self, every: int):
        self.every = every

    def on_step(self, trainer, step):
        if due(step.done, self.every, trainer.iterations) and step.diverged is None:
            with trainer.clock.pause("checkpoint"):
                checkpoint.save(trainer.run_dir, step.state, trainer.config)


class Preemption(Callback):
    """SIGINT/SIGTERM/SIGUSR1/SIGUSR2 (SLURM, submitit): a checkpoint of the last finished state,
    then the signal does what it would have done (preemption.py)."""

    def __init__(self):
        self.signals = None

    def on_step(self, trainer, step):
        if self.signals is None:
            self.signals = preemption.StopSignals().install()
        if self.signals.requested and step.state is not None and step.diverged is None:
            checkpoint.save(trainer.run_dir, step.state, trainer.config)
            self.signals.release()   # submitit requeues and exits; plain SLURM: requeue, exit

    def on_end(self, trainer, summary):
        self.on_exception(trainer, None)

    def on_exception(self, trainer, err):
        if self.signals is not None:
            self.signals.uninstall()
            self.signals = None


class Plots(Callback):
    """The task's plots of the final held-out rollout, the loss curve, the task's plots of the history."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_end(self, trainer, summary):
        if not self.enabled:
            return
        run_dir, task, plots = str(trainer.run_dir), trainer.setup.task, []
        if trainer.rollout is not None:
            plots += task.plot(run_dir, *trainer.rollout)
        curve = plot_loss_curve(trainer.run_dir, trainer.history)
        plots += [curve] if curve else []
        plots += task.plot_history(run_dir, trainer.history)   # streams: online scores / θ over time
        summary["plots"] += [Path(p).name for p in plots]


class Profile(Callback):
    """Seconds per update (median, p90), training time and what was kept out of it, device and host
    peak memory; the trainer adds compile seconds, compiled memory and FLOPs. First in the list: the
    device's peak is read before anything of the run (the held-out batch) is allocated."""

    def on_start(self, trainer):
        self.device_peak = profiling.DevicePeak()

    def on_end(self, trainer, summary):
        import jax

        clock = trainer.clock
        profile = summary["profile"]
        profile.update(profiling.step_time_stats(trainer.durations))
        profile.update(train_time_s=trainer.train_time_s, **{f"{k}_time_s": v for k, v in clock.paused.items()})
        profile.update(**self.device_peak.result(), host_peak_rss_bytes=profiling.host_peak_rss_bytes(),
                       backend=jax.default_backend(), device=str(jax.devices()[0].device_kind))
