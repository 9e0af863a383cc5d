"""What the motor tasks share: timing, reachable targets, loss weights, metrics and plots.

A motor trial (times in seconds, steps of ``dt``):

    idle ─► delay (targets shown, hold at the start) ─► go_1 ─► free window ─► at target 1
         [─► go_2 = go_1 + gap ─► free window ─► at target 2]                (double reach)

Outputs ``y_t = (hand x, y, ẋ, ẏ, τ1, τ2)`` (tasks/plants/arm.py). Loss per step, summed over t
(docs/motor.md):

    (loss_scale / T) · (1/B) Σ_b w_tb [ |p_tb − p*_tb|² + velocity_weight |ṗ_tb|² ] + effort_weight |τ|²

with ``w = hold_weight`` and ``p* = start`` before go_1, ``w = 0`` during each free window,
``w = target_weight`` and ``p* = target k`` from ``go_k + free`` until ``go_{k+1}`` (or the end).

Targets: angle ~ U[angle_range] (degrees) and radius ~ U[r_min, r_max] around the start hand
position, as in the authors' code, except that the radius range is cut, direction by direction,
at the workspace edge ``reach_fraction · (l1 + l2)`` from the shoulder. The authors' sampling
puts about 13 % of the targets beyond full extension; here every target is reachable.
"""
from __future__ import annotations

import warnings
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import Batch
from sofo_lab.tasks.base import Task
from sofo_lab.tasks.plants.arm import ArmSystem, make_arm, start_hand

TORQUE_OUTPUTS = ("torque_1", "torque_2")


class MotorLatents(NamedTuple):
    go: jax.Array             # [B, M] go-cue steps of the M movements
    shown: jax.Array          # [B] step at which the targets appear (end of idle)
    targets: jax.Array        # [B, M, 2] hand targets (m)
    window_end: jax.Array     # [B, M] end of each free movement window (endpoint is scored here)


def _pair(key, value, low=0.0):
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and low <= value[0] <= value[1]):
        raise ConfigError(key, value, f"must be [min, max] with {low} <= min <= max")
    return float(value[0]), float(value[1])


def _positive(key, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, value, "must be a " + ("non-negative" if allow_zero else "positive") + " number")
    return float(value)


class MotorTask(Task):
    """Base of ``reach`` and ``double_reach``: subclasses set ``n_moves``, ``gap`` and input layout."""

    loss_kind: ClassVar[str] = "mse"
    output_names: ClassVar[tuple[str, ...]] = ("hand_x", "hand_y", "hand_vx", "hand_vy") + TORQUE_OUTPUTS
    n_moves: ClassVar[int] = 1
    # "Solved" (docs/motor.md): every movement ends within 1 cm of its target in at least
    # solve_within of the trials, at most solve_moved_early of them move > 1 cm before the go cue,
    # and (single reach) the mean hold error is at most solve_hold_cm.
    solve_within: ClassVar[float] = 0.8
    solve_moved_early: ClassVar[float] = 0.1
    solve_hold_cm: ClassVar[float | None] = 1.0

    def __init__(self, n_steps=180, dt=0.01, tau=0.02, private_noise=0.28, idle=(0.1, 0.3), delay=(0.2, 0.6),
                 gap=0.0, free=0.5, final_hold=0.1, radius=(0.2, 0.5), angle_range=(-36.0, 216.0),
                 reach_fraction=0.95, l2=0.30, integrator="euler", torque_scale=1.0, hold_weight=1.0,
                 target_weight=4.0, velocity_weight=1.0, effort_weight=0.0, loss_scale=10.0, name=None):
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 4:
            raise ConfigError("task.n_steps", n_steps, "must be an integer >= 4")
        self.n_steps, self.dt, self.tau = n_steps, _positive("task.dt", dt), _positive("task.tau", tau)
        self.private_noise = _positive("task.private_noise", private_noise, allow_zero=True)
        idle, delay = _pair("task.idle", list(idle)), _pair("task.delay", list(delay))
        gap, free = _positive("task.gap", gap, allow_zero=True), _positive("task.free", free)
        final_hold = _positive("task.final_hold", final_hold, allow_zero=True)
        needed = idle[1] + delay[1] + (self.n_moves - 1) * gap + free + final_hold
        scale = min(1.0, n_steps * self.dt / needed)
        if scale < 1.0:   # tiny test runs: compress every period by the same factor
            warnings.warn(f"task.n_steps={n_steps} ({n_steps * self.dt:.2f} s) is shorter than the timing needs "
                          f"({needed:.2f} s): every period is scaled by {scale:.2f}", stacklevel=2)
        self.idle, self.delay = tuple(scale * v for v in idle), tuple(scale * v for v in delay)
        self.gap_steps = round(scale * gap / self.dt)
        self.free_steps = max(1, round(scale * free / self.dt))
        self.radius = _pair("task.radius", list(radius), low=0.0)
        self.angle_range = _pair("task.angle_range", list(angle_range), low=-360.0)
        self.arm = make_arm(l2, integrator)
        self.integrator, self.torque_scale = integrator, _positive("task.torque_scale", torque_scale)
        if not 0.5 <= reach_fraction < 1.0:
            raise ConfigError("task.reach_fraction", reach_fraction, "must be in [0.5, 1)")
        self.reach = reach_fraction * (self.arm.l1 + self.arm.l2)
        self.start = start_hand(self.arm)
        edge = float(np.min(self._edge(np.radians(np.linspace(*self.angle_range, 181)), np)))
        if self.radius[0] > edge:
            raise ConfigError("task.radius", list(radius),
                              f"the minimum radius must be <= {edge:.3f} m, the nearest workspace edge")
        self.weights = dict(hold=_positive("task.hold_weight", hold_weight, True),
                            target=_positive("task.target_weight", target_weight, True),
                            velocity=_positive("task.velocity_weight", velocity_weight, True),
                            effort=_positive("task.effort_weight", effort_weight, True),
                            scale=_positive("task.loss_scale", loss_scale))

    # --- closed loop -----------------------------------------------------------------------
    @property
    def model_n_inputs(self) -> int:
        return self.n_inputs + ArmSystem.n_feedback

    @property
    def model_n_outputs(self) -> int:
        return len(TORQUE_OUTPUTS)

    def make_system(self, model):
        return ArmSystem(model, self.loss, self.arm, self.dt, self.integrator, self.torque_scale)

    def model_settings(self) -> dict:
        """The network steps with the arm (dt), with the authors' τ, private noise and initialization."""
        return {"dt": self.dt, "tau": self.tau, "noise_amplitude": self.private_noise,
                # the authors' motor init: nearly feedforward, tiny torques, learned initial state
                "weight_scaling": "n", "rec_gain": 0.5, "readout_scale": 0.1, "learn_init_state": True}

    # --- sampling --------------------------------------------------------------------------
    def _edge(self, angle, xp=jnp):
        """Distance from the start along direction ``angle`` (radians) to the workspace edge."""
        px, py = self.start
        dot = px * xp.cos(angle) + py * xp.sin(angle)
        return -dot + xp.sqrt(dot**2 - (px**2 + py**2) + self.reach**2)

    def sample_targets(self, key, shape):
        k_angle, k_radius = jax.random.split(key)
        angle = jnp.deg2rad(jax.random.uniform(k_angle, shape, minval=self.angle_range[0],
                                               maxval=self.angle_range[1]))
        r_max = jnp.minimum(self.radius[1], self._edge(angle))
        radius = self.radius[0] + jax.random.uniform(k_radius, shape) * (r_max - self.radius[0])
        return self.target_positions(angle, radius)

    def target_positions(self, angle, radius):
        """Hand targets ``[..., 2]`` at ``angle`` (radians) and ``radius`` (m) around the start."""
        start = jnp.asarray(self.start)
        return start + radius[..., None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)

    @property
    def last_go(self) -> int:
        """The latest first go cue (step) that leaves every movement its free window."""
        return self.n_steps - 1 - self.free_steps - (self.n_moves - 1) * self.gap_steps

    def sample_timing(self, key, batch_size):
        """Steps at which the targets appear (``shown [B]``) and the go cues (``go [B, M]``)."""
        k_idle, k_delay = jax.random.split(key)
        idle = jax.random.uniform(k_idle, (batch_size,), minval=self.idle[0], maxval=self.idle[1])
        delay = jax.random.uniform(k_delay, (batch_size,), minval=self.delay[0], maxval=self.delay[1])
        return self.timing(idle, delay)

    def timing(self, idle, delay):
        """``(shown [B], go [B, M])`` of trials whose idle and delay periods last ``idle``, ``delay`` [B] (s)."""
        shown = jnp.round(idle / self.dt).astype(jnp.int32)
        go1 = jnp.clip(jnp.round((idle + delay) / self.dt).astype(jnp.int32), 1, self.last_go)
        go = go1[:, None] + self.gap_steps * jnp.arange(self.n_moves, dtype=jnp.int32)
        return jnp.minimum(shown, go1 - 1), go

    def latents(self, key, batch_size) -> MotorLatents:
        k_time, k_targets = jax.random.split(key)
        shown, go = self.sample_timing(k_time, batch_size)
        targets = self.sample_targets(k_targets, (batch_size, self.n_moves))
        return MotorLatents(go, shown, targets, go + self.free_steps)

    # --- data: everything is a function of the trial's latents and the step index t [T'], so the
    # same code gives the whole batch (t = 0..T-1) and one step (t = [t]) for GeneratedBatch.
    def sample(self, key, batch_size: int) -> Batch:
        lat = self.latents(key, batch_size)
        return Batch(*self.arrays_at(lat, jnp.arange(self.n_steps)), extras=lat)

    def trials(self, angles, delays=None, radius=None, idle=None) -> Batch:
        """Trials with chosen conditions (for analysis: tuning curves, PCA by condition), not random ones.

        ``angles``: target directions in degrees, ``[B]`` (``[B, M]`` for M movements). ``radius``
        (m), ``delays`` and ``idle`` (s): scalars or one per trial (``radius`` also one per
        movement); defaults: the middle of ``task.radius`` (capped at the workspace edge),
        ``task.delay`` and ``task.idle``. ``extras`` holds the trials' ``MotorLatents``.
        """
        M = self.n_moves
        angles = np.asarray(angles, dtype=float)
        if angles.ndim == 1 and M == 1:
            angles = angles[:, None]
        if angles.ndim != 2 or angles.shape[1] != M or not np.all(np.isfinite(angles)):
            shape = f"one per trial and movement, [B, {M}]" if M > 1 else "one per trial, [B]"
            raise ConfigError("angles", angles.tolist(), f"must be finite degrees, {shape}")
        B, rad = angles.shape[0], np.radians(angles)
        edge = self._edge(rad, np)
        if radius is None:
            radius = np.minimum(0.5 * (self.radius[0] + self.radius[1]), edge)
        radius = np.asarray(radius, dtype=float)
        if radius.ndim == 1 and len(radius) == B:   # one per trial (for every movement)
            radius = radius[:, None]
        try:
            radius = np.broadcast_to(radius, (B, M))
        except ValueError:
            raise ConfigError("radius", radius.tolist(), f"must be a scalar, one per trial [B] or [B, {M}] (m)") \
                from None
        if np.any(radius < 0) or np.any(radius > edge + 1e-9):
            worst = int(np.argmax(radius - edge))
            raise ConfigError("radius", float(radius.flat[worst]), f"must be in [0, {float(edge.flat[worst]):.3f}] m "
                              f"at {float(angles.flat[worst]):g}° (the workspace edge)")
        idle = self._seconds("idle", idle, self.idle, B)
        delays = self._seconds("delays", delays, self.delay, B)
        late = (idle + delays) / self.dt > self.last_go + 0.5
        if np.any(late):
            raise ConfigError("delays", float(delays[np.argmax(late)]), f"idle + delay must be <= "
                              f"{self.last_go * self.dt:.3f} s so the movement fits in task.n_steps={self.n_steps}")
        shown, go = self.timing(jnp.asarray(idle, jnp.float32), jnp.asarray(delays, jnp.float32))
        targets = self.target_positions(jnp.asarray(rad, jnp.float32), jnp.asarray(radius, jnp.float32))
        lat = MotorLatents(go, shown, targets, go + self.free_steps)
        return Batch(*self.arrays_at(lat, jnp.arange(self.n_steps)), extras=lat)

    def _seconds(self, name, value, period, batch_size):
        value = np.broadcast_to(np.asarray(0.5 * (period[0] + period[1]) if value is None else value, dtype=float),
                                (batch_size,))
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise ConfigError(name, value.tolist(), "must be durations >= 0 in seconds, a scalar or one per trial")
        return value

    def step_source(self, key, batch_size: int):
        def step(lat, t):
            return lat, tuple(a[0] for a in self.arrays_at(lat, t[None]))

        return self.latents(key, batch_size), step

    def arrays_at(self, lat: MotorLatents, t):
        """``(inputs [T', B, I], targets, weights)`` at the steps ``t [T']``."""
        return (self.inputs_at(lat, t), *self.loss_terms(lat, t))

    def inputs_at(self, lat: MotorLatents, t):
        # Each task names its own input channels (tasks/reach.py, tasks/double_reach.py).
        raise NotImplementedError(f"{type(self).__name__} must define inputs_at(lat, t) -> [T', B, I]")

    def loss_terms(self, lat: MotorLatents, t):
        """Targets ``[T', B, 6]`` and weights ``[T', B, 6]`` at steps ``t`` of the phases described above."""
        T, B = self.n_steps, lat.go.shape[0]
        t = t[:, None]
        start = jnp.broadcast_to(jnp.asarray(self.start), (t.shape[0], B, 2))
        position, w = start, jnp.where(t < lat.go[None, :, 0], self.weights["hold"], 0.0)
        for k in range(self.n_moves):
            begin = lat.window_end[None, :, k]
            end = lat.go[None, :, k + 1] if k + 1 < self.n_moves else T
            on = (t >= begin) & (t < end)
            position = jnp.where(on[..., None], lat.targets[None, :, k], position)
            w = jnp.where(on, self.weights["target"], w)
        targets = jnp.concatenate([position, jnp.zeros((t.shape[0], B, 4))], axis=-1)
        w = w[..., None] * jnp.asarray([1.0, 1.0, self.weights["velocity"], self.weights["velocity"], 0.0, 0.0])
        w = w + jnp.asarray([0.0] * 4 + [self.weights["effort"]] * 2)
        return targets, w * (self.weights["scale"] / T)

    def target_inputs(self, lat: MotorLatents, t):
        """Each target's displacement from the start in units of ``radius[1]``, ``[T', B, M, 2]``,
        shown from ``shown`` until the first go cue, zero before and after."""
        t = t[:, None]
        visible = (t >= lat.shown[None]) & (t < lat.go[None, :, 0])
        rel = (lat.targets - jnp.asarray(self.start)) / self.radius[1]
        return jnp.where(visible[..., None, None], rel[None], 0.0)

    # --- reporting -------------------------------------------------------------------------
    def evaluate(self, batch, ys) -> dict:
        lat: MotorLatents = batch.extras
        B = ys.shape[1]
        pos, speed = ys[..., :2], jnp.linalg.norm(ys[..., 2:4], axis=-1)
        t = jnp.arange(ys.shape[0])[:, None]
        end = jnp.clip(lat.window_end, 0, ys.shape[0] - 1)
        at_end = pos[end, jnp.arange(B)[:, None]]                                # [B, M, 2]
        endpoint = 100.0 * jnp.linalg.norm(at_end - lat.targets, axis=-1)        # [B, M] cm
        drift = 100.0 * jnp.linalg.norm(pos - jnp.asarray(self.start), axis=-1)  # [T, B] cm
        hold = jnp.max(jnp.where(t < lat.go[None, :, 0], drift, 0.0), axis=0)
        moving = t >= lat.go[None, :, 0]
        final = 100.0 * jnp.linalg.norm(pos[-1] - lat.targets[:, -1], axis=-1)
        metrics = {
            "endpoint_error_cm": endpoint.mean(),
            "final_error_cm": final.mean(),
            "hold_error_cm": hold.mean(),
            "moved_early": jnp.mean(hold > 1.0),
            "peak_speed": jnp.max(jnp.where(moving, speed, 0.0), axis=0).mean(),
            "within_1cm": jnp.mean(endpoint < 1.0),
        }
        if self.n_moves > 1:
            metrics.update({f"endpoint_error{k + 1}_cm": endpoint[:, k].mean() for k in range(self.n_moves)})
            metrics.update({f"within_1cm{k + 1}": jnp.mean(endpoint[:, k] < 1.0) for k in range(self.n_moves)})
        worst = jnp.min(jnp.mean(endpoint < 1.0, axis=0))                        # the worst movement
        solved = (worst >= self.solve_within) & (metrics["moved_early"] <= self.solve_moved_early)
        if self.solve_hold_cm is not None:
            solved &= metrics["hold_error_cm"] <= self.solve_hold_cm
        metrics["solved"] = solved.astype(jnp.float32)
        return metrics

    def describe(self, final: dict) -> str:
        keys = ("eval/endpoint_error_cm", "eval/hold_error_cm", "eval/within_1cm", "eval/peak_speed")
        if not all(k in final for k in keys):
            return ""
        err, hold, within, speed = (final[k] for k in keys)
        return (f"endpoint error {err:.2f} cm ({100 * within:.0f}% within 1 cm)   hold error {hold:.2f} cm   "
                f"peak speed {speed:.2f} m/s")

    def plot(self, out_dir, batch, ys) -> list[str]:
        from sofo_lab.tasks.plots.motor import plot_torques, plot_trajectories

        return [plot_trajectories(self, out_dir, batch, ys), plot_torques(self, out_dir, batch, ys)]
