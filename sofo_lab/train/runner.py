"""The training loop: one jitted update per iteration (or ``steps_per_dispatch`` of them in one
call), everything else on the host.

Inside jit: derive the iteration's key from (seed, iteration), sample the batch (and the
dynamics noise), run the optimizer's update. Outside: progress bar, metrics read one step
late (the device is already busy with the next step), periodic evaluation on a fixed
held-out batch, checkpoints, plots, summary. Keys depend only on the seed and the iteration
number, so a run resumed from a checkpoint computes exactly what an uninterrupted run does.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sofo_lab.core.errors import ConfigError, RunFailed
from sofo_lab.core.system import GeneratedBatch, StepInput, rollout
from sofo_lab.core.tree import count_params
from sofo_lab.train import checkpoint, console, preemption, profiling, resources, rundir
from sofo_lab.train.assemble import Setup, build
from sofo_lab.train.loggers import JsonlLogger, WandbLogger
from sofo_lab.train.reporting import format_metrics, plot_loss_curve, write_json_atomic
from sofo_lab.train.state import TrainState, init_train_state, run_keys


class TrainClock:
    """Training seconds (``time_s`` in metrics.jsonl): wall time since the first update minus the
    paused intervals (evaluation, checkpoints, writing records), each kept in ``paused``."""

    def __init__(self, offset: float = 0.0):
        self.t0, self.offset = time.perf_counter(), offset
        self.paused = {"eval": 0.0, "checkpoint": 0.0, "log": 0.0}

    def now(self) -> float:
        return self.offset + time.perf_counter() - self.t0 - sum(self.paused.values())

    @contextlib.contextmanager
    def pause(self, what: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused[what] += time.perf_counter() - t


def training_batch(task, system, data_state, k_data, k_noise, batch_size: int):
    """The iteration's batch: a ``GeneratedBatch`` when the task can generate step by step (then
    the dynamics noise is drawn per step too), else the whole sampled ``Batch``."""
    source = task.step_source(k_data, batch_size)
    if source is None:
        data_state, batch = task.next_batch(data_state, k_data, batch_size)
        return data_state, batch._replace(noise=system.sample_noise(k_noise, batch.n_steps, batch_size))
    task_state, task_step = source

    def step_fn(state, t):
        task_state, k_noise = state
        task_state, (u, target, w) = task_step(task_state, t)
        noise = system.sample_noise(jax.random.fold_in(k_noise, t), 1, batch_size)
        return (task_state, k_noise), (StepInput(u, None if noise is None else noise[0]), target, w)

    return data_state, GeneratedBatch((task_state, k_noise), step_fn, task.n_steps, batch_size)


def make_train_step(setup: Setup, seed: int, batch_size: int):
    task, system, optimizer = setup.task, setup.system, setup.optimizer
    _, k_train, _, _ = run_keys(seed)

    def train_step(ts: TrainState):
        k_data, k_noise, k_opt = jax.random.split(jax.random.fold_in(k_train, ts.iteration), 3)
        data_state, batch = training_batch(task, system, ts.data_state, k_data, k_noise, batch_size)
        params, opt_state, carry, metrics = optimizer.update(ts.params, ts.opt_state, batch, k_opt, ts.carry)
        data_state, extra = task.online_metrics(data_state, metrics, params)   # streams: online scores
        metrics = {**metrics, **extra}
        # an optimizer that undid its last step because this batch was non-finite (SOFO's adaptive
        # damping) says so with ``rolled_back``: its parameters are the good ones before that step
        finite = jnp.isfinite(metrics["loss"]) | (metrics.get("rolled_back", 0.0) > 0)
        for leaf in jax.tree.leaves(params):
            finite &= jnp.all(jnp.isfinite(leaf))
        metrics = {**metrics, "finite": finite}
        carry = None if task.episodic else carry
        return TrainState(params, opt_state, data_state, carry, ts.iteration + 1), metrics

    return train_step


def make_train_steps(setup: Setup, seed: int, batch_size: int, n: int):
    """``n`` updates in one call: a ``lax.scan`` of :func:`make_train_step`, each update's metrics
    stacked along a leading axis of length n. The updates are the same (keys come from the
    iteration count in the state); only the host work per call (dispatch, reading the metrics) is
    shared by n updates, which is what a stream of short windows needs (docs/uoro.md)."""
    step = make_train_step(setup, seed, batch_size)

    def train_steps(ts: TrainState):
        return jax.lax.scan(lambda state, _: step(state), ts, length=n)

    return train_steps


def make_eval(setup: Setup, seed: int, batch_size: int):
    """A jitted evaluation on a fixed held-out batch, or None when the task has none."""
    task, system = setup.task, setup.system
    _, _, k_eval, _ = run_keys(seed)
    k_batch, k_noise = jax.random.split(k_eval)
    batch = task.eval_batch(k_batch, batch_size)
    if batch is None:
        return None, None
    batch = batch._replace(noise=system.sample_noise(k_noise, batch.n_steps, batch_size))

    @jax.jit
    def evaluate(params):
        _, ys, losses = rollout(system, params, system.init_state(params, batch_size), batch)
        return {"loss": losses.sum(), **task.evaluate(batch, ys)}, ys

    return evaluate, batch


def _call_starts(start: int, iterations: int, call_length):
    """The update counts at which each call starts, from ``start`` up to ``iterations``."""
    i = start
    while i < iterations:
        yield i
        i += call_length(i)


def log_due(done: int, log_every: int, geometric: float | None = None) -> bool:
    """Whether iteration ``done`` writes train metrics: every ``log_every`` iterations, or with
    ``log_geometric: f`` (> 1) at geometrically spaced iterations, each time ``done`` passes a
    power of f (the UORO authors' ``train.lua`` logs at ×1.01 steps), so a 10⁷-character stream
    writes ~ln(iterations)/ln(f) records. Stateless in ``done``: a resumed run logs the same rows."""
    if not geometric:
        return done % log_every == 0
    if isinstance(geometric, bool) or not isinstance(geometric, (int, float)) or geometric <= 1:
        raise ConfigError("log_geometric", geometric, "must be a number > 1 (e.g. 1.01) or null (log every log_every)")
    if done <= 1:
        return True
    return math.floor(math.log(done) / math.log(geometric)) > math.floor(math.log(done - 1) / math.log(geometric))


def _host(metrics: dict) -> dict:
    return {k: (v.item() if np.ndim(v) == 0 else v) for k, v in jax.device_get(metrics).items()}


def train(cfg: DictConfig, run_dir: Path, choices: dict | None = None) -> dict:
    """Run (or resume) the experiment described by ``cfg`` in ``run_dir``; return the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.lock(run_dir)                            # one process per run directory
    setup = build(cfg, choices)
    estimate = resources.check_shapes(setup, cfg)   # refuse what cannot fit before allocating it
    device_peak = profiling.DevicePeak()
    container = OmegaConf.to_container(cfg, resolve=True)
    B, iterations = cfg.batch_size, cfg.iterations

    ts = init_train_state(setup, cfg.seed, B)
    resumed_from = None
    saved = checkpoint.resume_payload(run_dir, container) if cfg.get("resume", True) else None
    if saved is not None:
        ts = jax.tree.map(jnp.asarray, saved["state"])
        resumed_from = int(ts.iteration)

    history_logger = JsonlLogger(run_dir, resume_iteration=resumed_from if resumed_from is not None else None)
    history = _read_history(history_logger.path) if resumed_from is not None else []
    wandb_logger = None
    if cfg.logger.name == "wandb":
        wandb_logger = WandbLogger(cfg.logger, run_dir, container, choices or {})

    status, error = "completed", None
    stop = preemption.StopSignals()   # SIGTERM/USR1/USR2 (SLURM): checkpoint, then hand the signal on
    try:
        evaluate, eval_batch = make_eval(setup, cfg.seed, setup.eval_batch_size)
        start = int(ts.iteration)
        # plain values: one DictConfig lookup costs 0.1-0.2 ms, more than the rest of an update's host work
        chunk, log_every, geometric = cfg.get("steps_per_dispatch", 1), cfg.log_every, cfg.get("log_geometric")
        eval_every, checkpoint_every = cfg.eval_every, cfg.checkpoint_every
        marks = [checkpoint_every] + ([eval_every] if evaluate is not None else [])

        def call_length(i):   # updates in the call after update i: a whole chunk if no pause falls inside
            nxt = min([iterations] + [(i // m + 1) * m for m in marks])
            return chunk if nxt - i >= chunk else 1

        lengths = {call_length(i) for i in _call_starts(start, iterations, call_length)} or {1}
        if chunk > 1 and chunk not in lengths:
            warnings.warn(f"steps_per_dispatch={chunk} is never used: a checkpoint or evaluation falls inside every "
                         f"call (checkpoint_every={checkpoint_every}, eval_every={eval_every}); make them multiples of it")
        # updates per call -> (compiled, lower s, compile s), only the lengths the schedule uses
        calls = {n: profiling.compile_timed(make_train_steps(setup, cfg.seed, B, n) if n > 1
                                            else make_train_step(setup, cfg.seed, B), ts) for n in sorted(lengths)}
        memory = profiling.compiled_memory_bytes(calls[max(calls)][0])
        resources.check_compiled(cfg, memory, estimate)
        profile = {"n_params": count_params(ts.params), "steps_per_dispatch": chunk,
                   "lower_s": sum(c[1] for c in calls.values()), "compile_s": sum(c[2] for c in calls.values()),
                   "step_memory_bytes": memory,   # XLA counts a scan body once: flops of one update only
                   "flops": profiling.compiled_flops(calls[1][0]) if 1 in calls else None}
        calls = {n: c[0] for n, c in calls.items()}
        if resumed_from is not None:
            print(f"Resuming {run_dir} from iteration {start}", file=sys.stderr)
        t0 = time.perf_counter()   # a first, discarded call of each: its one-off runtime set-up stays out of time_s
        for fn in calls.values():
            jax.block_until_ready(fn(ts))
        profile["first_step_s"] = time.perf_counter() - t0
        if evaluate is not None:   # compiled here so that no evaluation's compilation lands in time_s
            t0 = time.perf_counter()
            evaluate = evaluate.lower(ts.params).compile()
            profile["eval_compile_s"] = time.perf_counter() - t0
        durations = []
        clock = TrainClock(offset=next((r["time_s"] for r in reversed(history) if "time_s" in r), 0.0))
        if evaluate is not None and start == 0:   # the untrained network: every curve starts here
            with clock.pause("eval"):
                record = {"iteration": 0, "time_s": 0.0,
                          **{f"eval/{k}": v for k, v in _host(evaluate(ts.params)[0]).items()}}
            history.append(record)
            history_logger.log(record)
            if wandb_logger:
                wandb_logger.log(record)
        bar = tqdm(total=iterations, initial=min(start, iterations), desc=run_label(setup, choices),
                   disable=not cfg.get("progress", True), dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        pending, last_ready = None, None

        def handle(i, n, metrics, ts_after):   # the n updates after update i, read back
            nonlocal last_ready
            host = _host(metrics)
            now, before = clock.now(), last_ready
            if before is not None:   # on the training clock: pauses are not in it
                durations.append((now - before) / n)
            last_ready = now
            for j in range(n):   # a call's updates share its time evenly
                row = host if n == 1 else {k: (v[j].item() if np.ndim(v) == 1 else v[j]) for k, v in host.items()}
                at = now if before is None else before + (now - before) * (j + 1) / n
                handle_update(i + j, row, ts_after if j == n - 1 else None, at)

        def handle_update(i, m, ts_after, now):   # ts_after: the state after update i, at the end of a call
            if not m.pop("finite"):
                raise checkpoint.divergence(run_dir, i + 1, f"non-finite loss or parameters (loss={m['loss']})",
                                           cfg.get("optim"))
            done = i + 1
            bar.update(1)
            record = {}
            if log_due(done, log_every, geometric) or done == iterations:
                record.update({f"train/{k}": v for k, v in m.items()})
                bar.set_postfix(loss=f"{m['loss']:.4g}", refresh=False)
            if evaluate is not None and (done % eval_every == 0 or done == iterations):
                with clock.pause("eval"):
                    record.update({f"eval/{k}": v for k, v in _host(evaluate(ts_after.params)[0]).items()})
            if record:
                with clock.pause("log"):
                    record = {"iteration": done, "time_s": round(now, 4), **record}
                    history.append(record)
                    history_logger.log(record)
                    if wandb_logger:
                        wandb_logger.log(record)
            if not math.isfinite(record.get("eval/loss", 0.0)):   # a non-finite evaluation is a divergence
                raise checkpoint.divergence(run_dir, done, f"non-finite held-out loss (eval/loss={record['eval/loss']})",
                                           cfg.get("optim"))
            if done % checkpoint_every == 0 or done == iterations:
                with clock.pause("checkpoint"):
                    checkpoint.save(run_dir, ts_after, container)

        def pauses(done):   # evaluates or checkpoints after update `done`
            return (done % checkpoint_every == 0 or done == iterations
                    or (evaluate is not None and done % eval_every == 0))

        stop.install()
        for i in _call_starts(start, iterations, call_length):
            if pending is not None and pauses(pending[0] + pending[1]):
                handle(*pending)   # nothing in flight while it evaluates or checkpoints: time_s stays honest
                pending = None
            n = call_length(i)
            new_ts, metrics = calls[n](ts)
            if pending is not None:
                handle(*pending)
            pending, ts = (i, n, metrics, new_ts), new_ts
            if stop.requested:
                handle(*pending)
                pending = None
                checkpoint.save(run_dir, ts, container)
                stop.release()   # submitit requeues and exits; plain SLURM: requeue, exit
        if pending is not None:
            handle(*pending)
        bar.close()
    except RunFailed as err:
        status, error = "diverged", str(err)
        ts = ts._replace(iteration=getattr(err, "iteration", ts.iteration))   # the update that diverged
        bar.close()
    finally:
        stop.uninstall()
        history_logger.close()

    final, plots = {}, []
    last_train = next((r for r in reversed(history) if "train/loss" in r), {})
    final.update({k: v for k, v in last_train.items() if k.startswith("train/")})
    if evaluate is not None and status == "completed":
        eval_metrics, ys = evaluate(ts.params)
        final.update({f"eval/{k}": v for k, v in _host(eval_metrics).items()})
        final["loss"] = final["eval/loss"]
        if cfg.get("plots", True):
            plots += setup.task.plot(str(run_dir), eval_batch, np.asarray(ys))
    elif "train/loss" in final:
        final["loss"] = final["train/loss"]
    if cfg.get("plots", True):
        curve = plot_loss_curve(run_dir, history)
        plots += [curve] if curve else []
        plots += setup.task.plot_history(str(run_dir), history)   # streams: online scores / θ over time

    profile.update(profiling.step_time_stats(durations))
    # training seconds (the last time_s) and what was kept out of them
    profile.update(train_time_s=clock.offset if last_ready is None else last_ready,
                   **{f"{k}_time_s": v for k, v in clock.paused.items()})
    profile.update(**device_peak.result(),
                   host_peak_rss_bytes=profiling.host_peak_rss_bytes(),
                   backend=jax.default_backend(), device=str(jax.devices()[0].device_kind))
    summary = {"status": status, "error": error, "iterations": int(ts.iteration), "resumed_from": resumed_from,
               "final": final, "profile": profile, "plots": [Path(p).name for p in plots],
               "run_dir": str(run_dir), "choices": choices or {}}
    write_json_atomic(run_dir / "summary.json", summary)
    if wandb_logger:
        if plots:
            wandb_logger.images(plots)
        wandb_logger.summary({"final": final, "profile": profile, "status": status})
        summary["wandb_dir"] = wandb_logger.directory
        summary["wandb_mode"] = getattr(wandb_logger, "mode", None)
        wandb_logger.close(exit_code=0 if status == "completed" else 1)
    _print_result(setup, summary)
    if error:
        raise RunFailed(error)
    return summary


def run_label(setup: Setup, choices: dict | None) -> str:
    """``task/optim`` from Hydra's group choices, else from the task's and the optimizer's names."""
    choices = choices or {}
    task = choices.get("task") or setup.task.name
    return f"{task}/{choices.get('optim') or 'optim'}"


def _read_history(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _print_result(setup: Setup, summary: dict) -> None:
    final, profile = summary["final"], summary["profile"]
    lines = [f"Run directory: {summary['run_dir']}"]
    described = setup.task.describe(final)
    if described:
        lines.append(described)
    lines.append("Final: " + format_metrics({k: v for k, v in final.items() if not k.startswith("train/")}
                                            or final))
    ms = profile.get("step_time_median_s")
    mem = profile.get("step_memory_bytes")
    lines.append(f"Profile: {profile['n_params']} params, compile {profile['compile_s']:.2f} s"
                 + (f", {ms * 1e3:.2f} ms/iteration (median)" if ms and math.isfinite(ms) else "")
                 + (f", step memory {mem / 2**20:.1f} MiB" if mem else "")
                 + (f", training {profile['train_time_s']:.2f} s (evaluation {profile['eval_time_s']:.2f} s and "
                    f"checkpoints {profile['checkpoint_time_s']:.2f} s not counted)" if "train_time_s" in profile else ""))
    if summary.get("wandb_dir"):
        mode, where = summary.get("wandb_mode"), Path(summary["wandb_dir"]).parent
        lines.append(f"wandb: offline run; upload it with: wandb sync {where}" if mode == "offline"
                     else f"wandb: {mode} run in {where}")
    console.emit("\n".join(lines))
