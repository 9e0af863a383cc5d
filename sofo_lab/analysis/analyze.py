"""``sofo-analyze RUN_DIR``: what a trained network computes, from the run directory alone.

1. Load the run (``load_run``: config, task, network, trained parameters).
2. Simulate held-out conditions: for the motor tasks, ``n_conditions`` target directions spread
   over the task's ``angle_range`` (a double reach: each with the opposite one of the list as its
   second target), the middle delay, ``n_repeats`` noisy trials each; for any other episodic task,
   ``n_conditions`` fresh trials, each its own condition.
3. Average the trials of each condition and take the principal components of the averages
   (rates ``φ(z)`` for the rate network, the flattened state otherwise; Churchland et al. 2012).
4. Find the fixed points (``fixed_points``) of the network held at the task's constant inputs:
   the motor tasks' delay-period input of each condition (targets shown, hold on), with the arm
   feedback held at the start posture at rest (``network_inputs``); zero input for any other task
   (the flip-flop's memory period); or the inputs given with ``inputs=`` (``--input``). The starts
   are ``n_starts`` states of the simulated trials plus noise.
5. Write ``RUN_DIR/analysis/``: ``fixed_points.npz``, ``summary.json``, ``pca_trajectories.png``,
   ``eigenvalues.png`` (analysis/analyze_plot.py), and return the one summary line.

A streaming task has no trials and no input that stays constant for long, so it needs ``inputs=``.
Guide: docs/analysis.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from sofo_lab.analysis.fixed_points import FixedPoints, fixed_points, network_inputs, starting_states
from sofo_lab.analysis.population import PCA, condition_average, pca, project
from sofo_lab.analysis.runs import load_run
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import simulate

OUT = "analysis"


class Conditions(NamedTuple):
    batch: Any               # the simulated trials
    labels: np.ndarray       # [B] int: each trial's condition
    names: list[str]         # [C] the conditions, for legends and the summary
    inputs: np.ndarray       # [K, I] the constant task inputs to find fixed points under
    input_names: list[str]   # [K]
    delay_end: np.ndarray | None   # [B] the last delay step of each trial (motor tasks), else None
    n_plot: int              # the first n_plot conditions are drawn


def motor_conditions(task, n_conditions: int, n_repeats: int) -> Conditions:
    """Target directions over ``task.angle_range``, the middle delay; the delay-period inputs."""
    angles = np.linspace(task.angle_range[0], task.angle_range[1], n_conditions)
    if task.n_moves > 1:   # double reach: the opposite direction of the list as the second target
        angles = np.stack([angles, np.roll(angles, n_conditions // 2)], axis=1)
    batch = task.trials(angles=np.repeat(angles, n_repeats, axis=0))
    labels = np.repeat(np.arange(n_conditions), n_repeats)
    delay_end = np.asarray(batch.extras.go[:, 0]) - 1
    first = np.arange(n_conditions) * n_repeats
    inputs = np.asarray(batch.inputs)[delay_end[first], first]                     # [C, I]
    names = [" → ".join(f"{a:g}°" for a in np.atleast_1d(row)) for row in angles]
    return Conditions(batch, labels, [f"target {n}" for n in names], inputs,
                      [f"delay, target {n}" for n in names], delay_end, n_conditions)


def generic_conditions(task, n_conditions: int, key, n_trials: int = 64) -> Conditions:
    """Fresh trials (at least ``n_trials``: the PCs and the starts come from all of them), each its own
    condition, the first ``n_conditions`` drawn; zero input."""
    B = max(n_conditions, n_trials)
    if task.episodic:
        batch = task.sample(key, B)
    else:
        data = task.init_data(key, B)
        _, batch = task.next_batch(data, jax.random.fold_in(key, 1), B)
    u = np.zeros((1, *np.shape(jax.tree.leaves(batch.inputs)[0])[2:]), np.float32)
    return Conditions(batch, np.arange(B), [f"trial {b}" for b in range(B)], u, ["zero input"], None, n_conditions)


def parse_inputs(values, task) -> np.ndarray:
    """``--input 1,0,0 --input 0,1,0`` → ``[K, I]``, checked against the task's input channels."""
    rows = []
    for v in values:
        try:
            rows.append([float(x) for x in str(v).split(",")])
        except ValueError:
            raise ConfigError("--input", v, "must be numbers separated by commas, one per input channel") from None
        if len(rows[-1]) != task.n_inputs:
            raise ConfigError("--input", v, f"needs {task.n_inputs} values, one per input channel "
                                            f"{list(getattr(task, 'input_names', ()))}")
    return np.asarray(rows, np.float32)


def observable(run, states):
    """What the PCs are taken of: the rate network's rates ``φ(z)``, else the flattened state."""
    from sofo_lab.models.rnn import RateRNN

    if isinstance(run.model, RateRNN):
        return run.model.phi(jnp.asarray(states))
    leaves = jax.tree.leaves(states)
    lead = leaves[0].shape[:-1]
    return jnp.concatenate([jnp.reshape(a, (*lead, -1)) for a in leaves], axis=-1)


class Analysis(NamedTuple):
    points: FixedPoints
    pca: PCA
    trajectories: np.ndarray     # [T, C, k]: the condition averages in the PCs
    points_pcs: np.ndarray       # [M, k]: the fixed points in the same PCs
    conditions: Conditions
    summary: dict
    files: list[str]
    line: str


def analyze_run(run_dir, *, out_dir=None, inputs=None, n_conditions: int = 8, n_repeats: int = 8,
                n_starts: int = 256, noise: float = 0.1, n_steps: int = 2000, learning_rate: float = 1e-2,
                q_tol: float = 1e-6, fixed_tol: float = 1e-10, unique_tol: float = 1e-2, n_components: int = 3,
                seed: int = 0, progress: bool = True, plots: bool = True) -> Analysis:
    """Everything ``sofo-analyze`` does (module docstring); raises ``ConfigError`` in one line."""
    from sofo_lab.tasks.motor_common import MotorTask
    from sofo_lab.tasks.plants.arm import ArmSystem

    began = time.perf_counter()
    for key, value in (("--conditions", n_conditions), ("--repeats", n_repeats), ("--starts", n_starts),
                       ("--steps", n_steps), ("--components", n_components)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(key, value, "must be a positive integer")
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError("run_dir", str(path), "is not a directory: pass a run directory written by sofo-run")
    run = load_run(path)
    task = run.task
    if run.model is None:
        raise ConfigError("run_dir", str(path), f"task {task.name!r} trains no network: nothing to analyze")
    if not task.episodic and inputs is None:
        raise ConfigError("run_dir", str(path), f"is a run of the streaming task {task.name!r}: its input changes "
                          "every step and has no constant value to hold; choose one with --input v1,v2,...")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5A)   # not a key the run trained on
    k_trials, k_noise, k_starts = jax.random.split(key, 3)
    if isinstance(task, MotorTask):
        cond = motor_conditions(task, n_conditions, n_repeats)
    else:
        cond = generic_conditions(task, n_conditions, k_trials)
        n_repeats = 1
    if inputs is not None:
        u = parse_inputs(inputs, task)
        cond = cond._replace(inputs=u, input_names=[f"input ({', '.join(f'{x:g}' for x in row)})" for row in u])

    traj = simulate(run.system, run.params, cond.batch, key=k_noise if n_repeats > 1 else None)
    closed_loop = isinstance(run.system, ArmSystem)
    net = traj.states.net if closed_loop else traj.states                       # [T, B, ...]
    avg = condition_average(observable(run, net), cond.labels, len(cond.names))
    p = pca(avg.mean, n_components)
    trajectories = np.asarray(project(p, avg.mean))                             # [T, C, k]

    starts = starting_states(net, n_starts, k_starts, noise)
    flat_visited = jax.vmap(jax.vmap(lambda s: ravel_pytree(s)[0]))(net)                     # [T, B, D]
    scale = float(jnp.mean(jnp.linalg.norm(flat_visited, axis=-1)))
    u_net = network_inputs(run.system, jnp.asarray(cond.inputs, jax.tree.leaves(run.params)[0].dtype))
    fp = fixed_points(run.model, run.params, u_net, starts, n_steps=n_steps, learning_rate=learning_rate,
                      q_tol=q_tol, fixed_tol=fixed_tol, unique_tol=unique_tol * max(scale, 1e-12),
                      progress="fixed points" if progress else False)
    points_pcs = np.asarray(project(p, observable(run, fp.states))) if len(fp.q) else np.zeros((0, p.components.shape[0]))
    paths = _saddle_paths(run, fp, 0.01 * scale)
    paths_pcs = np.asarray(project(p, observable(run, paths))) if paths is not None else None

    out = Path(out_dir) if out_dir is not None else path / OUT
    out.mkdir(parents=True, exist_ok=True)
    delay_view = _delay_view(run, net, cond, fp)
    summary = _summary(run, task, cond, fp, p, closed_loop, net, n_repeats, delay_view,
                       dict(n_conditions=n_conditions, n_repeats=n_repeats, n_starts=n_starts, noise=noise,
                            n_steps=n_steps, learning_rate=learning_rate, q_tol=q_tol, fixed_tol=fixed_tol,
                            unique_tol=unique_tol, unique_distance=unique_tol * scale, n_components=n_components, seed=seed))
    np.savez(out / "fixed_points.npz", states=fp.flat, q=fp.q, jacobians=fp.jacobians, eigenvalues=fp.eigenvalues,
             n_unstable=fp.n_unstable, labels=fp.labels, condition=fp.condition,
             inputs=np.asarray(jax.tree.leaves(fp.inputs)[0]) if len(fp.q) else np.zeros((0, u_net.shape[-1])),
             input_names=np.asarray(cond.input_names), pcs=points_pcs, trajectories_pcs=trajectories,
             condition_names=np.asarray(cond.names), pca_components=np.asarray(p.components),
             pca_mean=np.asarray(p.mean), explained_variance_ratio=np.asarray(p.explained_variance_ratio))
    files = [str(out / "fixed_points.npz"), str(out / "summary.json")]
    if plots:
        from sofo_lab.analysis.analyze_plot import plot_eigenvalues, plot_pca

        files += [plot_pca(out, trajectories, points_pcs, fp, cond, p, task.name, isinstance(task, MotorTask),
                           delay_view, paths_pcs),
                  plot_eigenvalues(out, fp, task.name)]
    summary["seconds"] = round(time.perf_counter() - began, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    counts = summary["counts"]
    line = (f"{task.name}: {sum(counts[k] for k in ('stable', 'saddle', 'unstable'))} fixed points "
            f"({counts['stable']} stable, {counts['saddle']} saddle, {counts['unstable']} unstable) and "
            f"{counts['slow']} slow under {len(cond.input_names)} input{'s' if len(cond.input_names) > 1 else ''}; "
            f"{n_components} PCs explain {100 * float(np.sum(p.explained_variance_ratio)):.0f}% of the "
            f"condition-averaged {'rates' if summary['pcs_of'] == 'rates' else 'states'}; "
            f"{summary['seconds']:.1f} s -> {out}")
    return Analysis(fp, p, trajectories, points_pcs, cond, summary, files, line)


def _saddle_paths(run, fp, eps: float, n_steps: int = 150):
    """Where each saddle leads: the network run from ``x* ± eps·v`` (``v``: the real part of the eigenvector
    of its largest eigenvalue) at the saddle's input, ``n_steps`` steps. For the flip-flop these paths
    run along the cube's edges to the attractors (Sussillo & Barak's figure 3). States ``[n_steps, 2K, ...]``."""
    from sofo_lab.analysis.fixed_points import step_map

    saddles = np.flatnonzero(fp.labels == "saddle")
    if not len(saddles):
        return None
    like = jax.tree.map(lambda a: jnp.asarray(a[0]), fp.states)
    F, unravel, _ = step_map(run.model, run.params, like)
    starts, inputs = [], []
    for i in saddles:
        w, v = np.linalg.eig(fp.jacobians[i].astype(np.float64))
        lead = np.real(v[:, np.argmax(np.abs(w))])
        lead /= np.linalg.norm(lead)
        starts += [fp.flat[i] + eps * lead, fp.flat[i] - eps * lead]
        inputs += [np.asarray(jax.tree.leaves(fp.inputs)[0][i])] * 2
    x0 = jnp.asarray(np.stack(starts), fp.flat.dtype)
    u = jnp.asarray(np.stack(inputs))

    @jax.jit
    def flow(x0, u):
        def body(x, _):
            x = jax.vmap(F)(x, u)
            return x, x

        return jax.vmap(jax.vmap(unravel))(jax.lax.scan(body, x0, None, length=n_steps)[1])

    return flow(x0, u)


def _delay_view(run, net, cond, fp):
    """Motor tasks: the end-of-delay state of each condition (mean of its trials' observables) and the
    stable fixed points, in the top 2 PCs of both together: ``(ends [C, 2], points [S, 2])``."""
    if cond.delay_end is None:
        return None
    obs = np.asarray(observable(run, net))                                                # [T, B, D]
    at_end = obs[cond.delay_end, np.arange(obs.shape[1])]                                 # [B, D]
    ends = np.stack([at_end[cond.labels == c].mean(axis=0) for c in range(len(cond.names))])
    pts = np.asarray(observable(run, fp.states))[fp.labels == "stable"] if len(fp.q) else np.zeros((0, ends.shape[1]))
    both = np.asarray(project(pca(jnp.asarray(np.concatenate([ends, pts])), 2), np.concatenate([ends, pts])))
    return both[:len(ends)], both[len(ends):]


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def ring_order(points) -> list[int]:
    """The order of 2-D ``points [C, 2]`` around their centroid (by angle), starting from point 0."""
    d = np.asarray(points) - np.mean(points, axis=0)
    order = list(np.argsort(np.arctan2(d[:, 1], d[:, 0]), kind="stable"))
    start = order.index(0)
    return [int(i) for i in order[start:] + order[:start]]


def _summary(run, task, cond, fp, p, closed_loop, net, n_repeats, delay_view, settings) -> dict:
    from sofo_lab.models.rnn import RateRNN

    points = []
    for i in range(len(fp.q)):
        top = fp.eigenvalues[i, 0]
        points.append({"condition": int(fp.condition[i]), "input": cond.input_names[int(fp.condition[i])],
                       "label": str(fp.labels[i]), "q": _finite(fp.q[i]),
                       "max_abs_eigenvalue": _finite(abs(top)), "top_eigenvalue": [_finite(top.real), _finite(top.imag)],
                       "n_unstable": int(fp.n_unstable[i])})
    per_input = [{"input": name, "u": [float(x) for x in cond.inputs[k]],
                  **{label: int(np.sum((fp.condition == k) & (fp.labels == label))) for label in fp.counts()}}
                 for k, name in enumerate(cond.input_names)]
    if cond.delay_end is not None:
        # which condition's end-of-delay state each stable point is nearest to (motor tasks): one per
        # target, in the order of the targets, when the network holds each target in its own point
        flat = np.asarray(jax.vmap(jax.vmap(lambda s: ravel_pytree(s)[0]))(net))   # [T, B, D]
        B = flat.shape[1]
        at_delay = flat[cond.delay_end, np.arange(B)]                                                # [B, D]
        centers = np.stack([at_delay[cond.labels == c].mean(axis=0) for c in range(len(cond.names))])
        for k, row in enumerate(per_input):
            stable = fp.flat[(fp.condition == k) & (fp.labels == "stable")]
            if len(stable):
                d = np.linalg.norm(centers[None] - stable[:, None], axis=-1)                         # [S, C]
                row["nearest_condition"] = [int(c) for c in np.argmin(d, axis=1)]
                row["distance_to_delay_state"] = [_finite(x) for x in np.min(d, axis=1)]
    delay = None
    if delay_view is not None:
        one_each = [int(np.sum((fp.condition == k) & (fp.labels == "stable"))) for k in range(len(cond.input_names))]
        delay = {"stable_per_target": one_each}
        if all(n == 1 for n in one_each) and len(one_each) >= 3:
            order = ring_order(delay_view[1])                 # stable points are sorted by condition
            C = len(order)
            delay["ring_order"] = order
            delay["ordered_as_targets"] = order in ([*range(C)], [0, *range(C - 1, 0, -1)])
    return {
        "run_dir": str(run.path), "task": task.name, "model": type(run.model).__name__, "iteration": run.iteration,
        "closed_loop": "network alone, arm feedback held at the start posture at rest" if closed_loop else None,
        "conditions": cond.names if cond.delay_end is not None else
        f"{len(cond.names)} held-out trials, each its own condition ({cond.n_plot} drawn)", "repeats": n_repeats, "counts": fp.counts(), "inputs": per_input, "points": points,
        "pcs_of": "rates" if isinstance(run.model, RateRNN) else "states",
        "explained_variance_ratio": [float(x) for x in np.asarray(p.explained_variance_ratio)],
        "delay": delay,
        "settings": settings,
    }
