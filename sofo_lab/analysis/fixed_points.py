"""Fixed and slow points of a recurrent network, and the linear dynamics around them.

Held at a constant input ``u``, a network is a map ``x_{t+1} = F(x_t, u)`` (one ``step``). Its
fixed points ``x* = F(x*, u)`` and slow points are found, as Sussillo & Barak do, as the minima
of the speed

    q(x) = ½ ‖F(x, u) − x‖²

from many starting states (states the network visits, plus noise; ``starting_states``):

1. every start under every input, all at once: one batched optax Adam minimization of Σ q
   (Adam is per coordinate, so the starts do not interact), learning rate decaying ×0.1 over the
   run;
2. Newton steps ``x ← x − (J − I)⁻¹ (F(x) − x)``, each kept only where it lowers q (a fixed point
   is then found to the precision of the arithmetic, not of the gradient descent);
3. the points with ``q < q_tol`` kept, duplicates (closer than ``unique_tol``) merged, the one
   with the lowest q standing for them;
4. each point's Jacobian ``J = ∂F/∂x`` (``jax.jacfwd``) and its eigenvalues. ``F`` is the
   discrete-time map the runner iterates, so a point is **stable** when every ``|λ| < 1``,
   **unstable** when every ``|λ| > 1``, a **saddle** otherwise; a point whose q is above
   ``fixed_tol`` is a **slow** point (q small, not zero: a ghost, a place the dynamics linger).

A state may be any pytree (the LSTM's ``(c, h)``, a closed loop's parts): it is flattened with
``jax.flatten_util.ravel_pytree``; Jacobians and eigenvalues are in those flat coordinates
(rate RNN: ``z``; GRU: ``h``; LSTM: ``c`` then ``h``).

The closed-loop reach: the fixed points are those of the *network* (``run.model``), with the task
inputs chosen and the arm feedback held at a fixed arm state (``network_inputs``: by default the
start posture at rest, where the arm is during the delay). They are not fixed points of network
and arm together: the arm moves when the torque is not zero.

References:
    D. Sussillo & O. Barak, "Opening the black box: low-dimensional dynamics in high-dimensional
    recurrent neural networks", Neural Computation 25(3), 2013.
    M. D. Golub & D. Sussillo, "FixedPointFinder: a Tensorflow toolbox for identifying and
    characterizing fixed points in recurrent neural networks", JOSS 3(31), 2018.
    Guide: docs/analysis.md.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import StepInput

LABELS = ("stable", "saddle", "unstable", "slow")


class FixedPoints(NamedTuple):
    """What ``fixed_points`` found: M points, sorted by condition, then by q."""

    states: Any              # pytree, leaves [M, ...]: the points, shaped as a batch of M network states
    flat: np.ndarray         # [M, D]: the same, flattened (ravel_pytree of one state)
    condition: np.ndarray    # [M] int: which row of ``inputs`` each point is a fixed point under
    inputs: Any              # leaves [M, ...]: that input
    q: np.ndarray            # [M]: ½‖F(x*, u) − x*‖²
    jacobians: np.ndarray    # [M, D, D]: ∂F/∂x at x*
    eigenvalues: np.ndarray  # [M, D] complex: of each Jacobian, by decreasing modulus
    n_unstable: np.ndarray   # [M] int: eigenvalues outside the unit circle (1 for a saddle between two attractors)
    labels: np.ndarray       # [M] str: 'stable', 'saddle', 'unstable' or 'slow'

    def counts(self) -> dict[str, int]:
        """How many points of each label, e.g. ``{'stable': 8, 'saddle': 12, 'unstable': 1, 'slow': 0}``."""
        return {label: int(np.sum(self.labels == label)) for label in LABELS}


def step_map(system_or_model, params, like_state) -> tuple[Callable, Callable, int]:
    """``(F, unravel, D)``: ``F(x [D], u) -> x' [D]``, one step of one sample in flat coordinates.

    ``system_or_model``: a sofo-lab model or system (anything with ``step(params, state,
    x: StepInput)``, batched) or a plain step function ``step(params, state, u)`` (docs/library.md;
    ``u`` is passed as given). ``like_state``: one sample's state (a pytree, no batch axis).
    """
    if callable(system_or_model):
        step, wrap = system_or_model, (lambda u: u)
    elif callable(getattr(system_or_model, "step", None)):
        step, wrap = system_or_model.step, (lambda u: StepInput(u))
    else:
        raise ConfigError("system_or_model", type(system_or_model).__name__,
                          "pass a model or system with step(params, state, x), or a step function")
    _, unravel = ravel_pytree(like_state)
    D = ravel_pytree(like_state)[0].size

    def F(x, u):
        state = jax.tree.map(lambda a: a[None], unravel(x))           # a batch of one
        new, _ = step(params, state, wrap(jax.tree.map(lambda a: jnp.asarray(a)[None], u)))
        return ravel_pytree(jax.tree.map(lambda a: a[0], new))[0].astype(x.dtype)

    return F, unravel, D


def speed(F, x, u) -> jax.Array:
    """``q(x) = ½‖F(x, u) − x‖²`` of one flat state (vmap it for many)."""
    r = F(x, u) - x
    return 0.5 * jnp.sum(r * r)


def newton_polish(F, x, u, n_steps: int = 10, fractions=(1.0, 0.5, 0.25, 0.125)):
    """``n_steps`` damped Newton steps on ``F(x) − x = 0`` for a batch ``x [S, D]``: each tries the
    ``fractions`` of the step ``(J − I)⁻¹ (F(x) − x)`` and keeps the one with the lowest q, only
    where it lowers q (so slow points and singular ``J − I`` stay put, and a piecewise-linear
    network's kinks are crossed by the shorter steps). Jittable."""
    q_fn = jax.vmap(lambda x, u: speed(F, x, u))
    jac = jax.vmap(jax.jacfwd(F), in_axes=(0, 0))
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    fractions = jnp.asarray(fractions, x.dtype)

    def body(_, x):
        r = jax.vmap(F)(x, u) - x
        dx = jnp.linalg.solve(jac(x, u) - eye, r[..., None])[..., 0]
        trials = x[None] - fractions[:, None, None] * dx[None]                       # [A, S, D]
        q_trials = jax.vmap(lambda xt: q_fn(xt, u))(trials)                          # [A, S]
        q_trials = jnp.where(jnp.isfinite(q_trials), q_trials, jnp.inf)
        best = jnp.argmin(q_trials, axis=0)
        x_new = jnp.take_along_axis(trials, best[None, :, None], axis=0)[0]
        better = jnp.min(q_trials, axis=0) < q_fn(x, u)
        return jnp.where(better[:, None], x_new, x)

    return jax.lax.fori_loop(0, n_steps, body, x)


def merge(flat: np.ndarray, q: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the points to keep: by increasing q, each point closer than ``tol`` (Euclidean) to
    one already kept is a duplicate of it."""
    kept: list[int] = []
    for i in np.argsort(q, kind="stable"):
        if not kept or np.min(np.linalg.norm(flat[kept] - flat[i], axis=1)) >= tol:
            kept.append(int(i))
    return np.asarray(kept, dtype=int)


def classify(eigenvalues: np.ndarray, q: np.ndarray, fixed_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """``(n_unstable [M], labels [M])`` from the eigenvalues ``[M, D]`` of a discrete-time map."""
    n_unstable = np.sum(np.abs(eigenvalues) > 1.0, axis=-1)
    D = eigenvalues.shape[-1]
    labels = np.where(n_unstable == 0, "stable", np.where(n_unstable == D, "unstable", "saddle")).astype("<U8")
    labels[np.asarray(q) > fixed_tol] = "slow"
    return n_unstable, labels


def starting_states(states, n: int, key, noise: float = 0.0):
    """``n`` states drawn from those a network visited, plus Gaussian noise (the starts of
    ``fixed_points``, as in Sussillo & Barak).

    ``states``: a pytree whose leaves are ``[T, B, ...]`` (a ``simulate`` trajectory's states) or
    ``[S, ...]``. The noise's standard deviation is ``noise`` times each leaf's standard deviation
    over the visited states. Returns leaves ``[n, ...]``. Jittable (``n`` static).
    """
    leaves, treedef = jax.tree.flatten(states)
    lead = 2 if all(a.ndim >= 2 for a in leaves) and len({a.shape[:2] for a in leaves}) == 1 else 1
    count = int(np.prod(leaves[0].shape[:lead]))
    k_pick, k_noise = jax.random.split(key)
    pick = jax.random.randint(k_pick, (n,), 0, count)
    keys = jax.random.split(k_noise, len(leaves))
    out = []
    for a, k in zip(leaves, keys):
        a = jnp.reshape(a, (count, *a.shape[lead:]))
        out.append(a[pick] + noise * jnp.std(a) * jax.random.normal(k, (n, *a.shape[1:]), a.dtype))
    return treedef.unflatten(out)


def fixed_points(system_or_model, params, inputs, initial_states, *, n_steps: int = 2000,
                 learning_rate: float = 1e-2, newton_steps: int = 10, q_tol: float = 1e-6,
                 fixed_tol: float = 1e-10, unique_tol: float = 1e-3, chunk: int = 200,
                 progress: bool | str = False) -> FixedPoints:
    """Fixed and slow points of ``system_or_model`` held at each constant input.

    Args:
        system_or_model: a sofo-lab model or system (``run.model``; its ``step`` takes a
            ``StepInput``) or a plain ``step(params, state, u)`` (its input passed as given).
        params: the network's parameters.
        inputs: ``[C, ...]`` (a pytree of them for a plain step): C constant inputs, one per
            condition; pass ``u[None]`` for one. Every start is tried under every input.
        initial_states: the starts, leaves ``[S, ...]``, a batch of S states as the model's
            ``step`` takes them (``starting_states`` draws them from a trajectory).
        n_steps: Adam steps; ``learning_rate``: its initial rate (decayed ×0.1 over ``n_steps``).
        newton_steps: Newton polishing steps after Adam (0: none).
        q_tol: keep the points with q below it; ``fixed_tol``: q below it is a fixed point, above
            it a slow point; ``unique_tol``: points closer than this (flat Euclidean distance) under
            the same input are one point.
        chunk: Adam steps per jitted call (the progress bar moves once per call).
        progress: show a tqdm bar (a string is its description).

    Returns:
        ``FixedPoints``, sorted by condition then q; possibly empty (M = 0).

    The optimization and the linearization (``step_map``, ``speed``, ``newton_polish``) are pure
    JAX; keeping, merging and the eigenvalues (numpy's, which every backend has) run on the host.
    """
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, initial_states))
    like = treedef.unflatten([a[0] for a in leaves])
    F, _, D = step_map(system_or_model, params, like)
    S = leaves[0].shape[0]
    starts = np.concatenate([a.reshape(S, -1) for a in leaves], axis=1)                  # [S, D], ravel_pytree's order
    C = jax.tree.leaves(inputs)[0].shape[0]
    for value, key in ((n_steps, "n_steps"), (chunk, "chunk")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(key, value, "must be a positive integer")
    dtype = ravel_pytree(like)[0].dtype
    x0 = jnp.asarray(np.tile(starts, (C, 1)), dtype)                                     # [C·S, D]
    u = jax.tree.map(lambda a: jnp.asarray(np.repeat(np.asarray(a), S, axis=0)), inputs)  # [C·S, ...]
    cond = np.repeat(np.arange(C), S)

    x = _minimize(F, x0, u, n_steps, learning_rate, chunk, progress)

    def polish(x, u):
        x = newton_polish(F, x, u, newton_steps) if newton_steps else x
        return x, jax.vmap(lambda x, u: speed(F, x, u))(x, u)

    x, q = (np.asarray(a) for a in jax.jit(polish)(x, u))

    keep = []
    for c in range(C):
        idx = np.flatnonzero((cond == c) & np.isfinite(q) & (q < q_tol))
        keep.extend(idx[merge(x[idx], q[idx], unique_tol)] if len(idx) else [])
    keep = np.asarray(sorted(keep, key=lambda i: (cond[i], q[i])), dtype=int)

    flat = x[keep]
    u_kept = jax.tree.map(lambda a: np.asarray(a)[keep], u)
    if len(keep):
        jac = np.asarray(jax.jit(jax.vmap(jax.jacfwd(F)))(jnp.asarray(flat), jax.tree.map(jnp.asarray, u_kept)))
        eig = np.linalg.eigvals(jac.astype(np.float64))
        eig = np.take_along_axis(eig, np.argsort(-np.abs(eig), axis=-1, kind="stable"), axis=-1)
    else:
        jac, eig = np.zeros((0, D, D), x.dtype), np.zeros((0, D), complex)
    n_unstable, labels = classify(eig, q[keep], fixed_tol)
    sizes = np.cumsum([a[0].size for a in leaves])[:-1]
    states = treedef.unflatten([part.reshape(len(keep), *a.shape[1:]).astype(a.dtype)
                                for part, a in zip(np.split(flat, sizes, axis=1), leaves)])
    return FixedPoints(states, flat, cond[keep], u_kept, q[keep], jac, eig, n_unstable, labels)


def _minimize(F, x0, u, n_steps, learning_rate, chunk, progress):
    """Adam on Σ_s q(x_s) for ``n_steps``, in jitted calls of ``chunk`` steps."""
    tx = optax.adam(optax.exponential_decay(learning_rate, n_steps, 0.1))
    loss = lambda x: jnp.sum(jax.vmap(lambda x, u: speed(F, x, u))(x, u))   # noqa: E731

    def run(x, opt_state, length):
        def body(carry, _):
            x, opt_state = carry
            grad = jax.grad(loss)(x)
            updates, opt_state = tx.update(grad, opt_state, x)
            return (optax.apply_updates(x, updates), opt_state), None

        return jax.lax.scan(body, (x, opt_state), None, length=length)[0]

    run = jax.jit(run, static_argnums=2)
    speeds = jax.jit(jax.vmap(lambda x, u: speed(F, x, u)))
    x, opt_state = x0, jax.jit(tx.init)(x0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc=progress if isinstance(progress, str) else "fixed points", unit="step",
                   leave=False)
    done = 0
    while done < n_steps:
        length = min(chunk, n_steps - done)
        x, opt_state = run(x, opt_state, length)
        done += length
        if bar is not None:
            jax.block_until_ready(x)
            bar.update(length)
            bar.set_postfix(median_q=f"{float(jnp.median(speeds(x, u))):.2e}")
    if bar is not None:
        bar.close()
    return x


def network_inputs(system, task_inputs, plant_state=None):
    """The network's inputs ``[C, I + feedback]`` for fixed points of a closed loop with the plant
    *held still*: the task inputs ``[C, I]`` next to the feedback of ``plant_state`` (default: the
    arm at rest in its start posture, where it is during the delay). For a system without a plant
    the task inputs are returned unchanged. tasks/plants/arm.py describes the feedback."""
    from sofo_lab.tasks.plants.arm import ArmSystem, start_state

    task_inputs = jnp.asarray(task_inputs)
    if not isinstance(system, ArmSystem):
        return task_inputs
    C = task_inputs.shape[0]
    q = start_state(C, task_inputs.dtype) if plant_state is None else jnp.broadcast_to(plant_state, (C, 4))
    return jnp.concatenate([task_inputs, system.feedback(q).astype(task_inputs.dtype)], axis=-1)
