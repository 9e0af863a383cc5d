"""The Li & Todorov two-link planar arm, and the closed-loop system that drives it with a network.

Arm state ``q = (θ1, θ2, θ̇1, θ̇2)`` (shoulder, elbow relative to the upper arm), joint torques τ:

    M(θ) θ̈ + C(θ, θ̇) + B θ̇ = τ
    M(θ) = [[a1 + 2 a2 cos θ2, a3 + a2 cos θ2], [a3 + a2 cos θ2, a3]]
    a1 = I1 + I2 + m2 l1²,   a2 = m2 l1 s2,   a3 = I2          (I1, I2 about the joints)
    C(θ, θ̇) = a2 sin θ2 · (−θ̇2 (2 θ̇1 + θ̇2), θ̇1²)
    θ̈ = M⁻¹ (τ − C − B θ̇)                                    (analytic 2×2 inverse)

    hand p = (l1 cos θ1 + l2 cos(θ1+θ2), l1 sin θ1 + l2 sin(θ1+θ2)),   ṗ = J(θ) θ̇

Integration at the task's dt: explicit Euler as in the SOFO authors' code (positions move with
the old velocities), or semi-implicit Euler (velocities first), which is stabler at large dt.

``ArmSystem`` composes a model with the arm into one system (sofo_lab/core/system.py): the state is
(network state, arm state); the network sees the task inputs plus the arm feedback
(θ − θ_start, θ̇) from *before* the step; its readout, times ``torque_scale``, is the torque;
the arm integrates one step; ``y_t = (hand x, hand y, hand ẋ, hand ẏ, τ1, τ2)`` after the step.
The torques are outputs so that plots can show them and an effort cost can weight them; their
loss weight is zero unless a task asks for one. Every optimizer differentiates through it.

References:
    W. Li & E. Todorov, "Iterative linear quadratic regulator design for nonlinear biological
    movement systems", ICINCO 2004. The SOFO authors'
    motor code (Yu et al., NeurIPS 2024; docs/motor.md) uses l2 = 0.30 m.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import ClosedLoop

START_POSTURE_DEG = (20.0, 140.0)    # θ1, θ2 at rest at the start of every trial
INTEGRATORS = ("euler", "semi_implicit")


class ArmParams(NamedTuple):
    """Physical constants (SI units). ``I1, I2`` are moments of inertia about the joints."""

    I1: float = 0.025
    I2: float = 0.045
    m1: float = 1.4          # does not enter the dynamics when I1 is about the shoulder
    m2: float = 1.0
    l1: float = 0.30
    l2: float = 0.30         # 0.30 as in the SOFO code; 0.33 in Li & Todorov
    s2: float = 0.16
    b11: float = 0.05
    b12: float = 0.025
    b22: float = 0.05

    @property
    def a(self):
        return self.I1 + self.I2 + self.m2 * self.l1**2, self.m2 * self.l1 * self.s2, self.I2


def mass_matrix(arm: ArmParams, theta2):
    """``M(θ)`` as ``(M11, M12, M22)``, each shaped like ``theta2``."""
    a1, a2, a3 = arm.a
    c2 = jnp.cos(theta2)
    return a1 + 2.0 * a2 * c2, a3 + a2 * c2, a3 + 0.0 * c2


def coriolis(arm: ArmParams, theta2, dtheta):
    """``C(θ, θ̇)`` for ``dtheta [..., 2]`` → ``[..., 2]``."""
    _, a2, _ = arm.a
    w1, w2 = dtheta[..., 0], dtheta[..., 1]
    s2 = a2 * jnp.sin(theta2)
    return jnp.stack([-s2 * w2 * (2.0 * w1 + w2), s2 * w1**2], axis=-1)


def acceleration(arm: ArmParams, q, torque):
    """``θ̈ = M⁻¹(τ − C − Bθ̇)`` for states ``q [..., 4]`` and torques ``[..., 2]``."""
    theta2, dtheta = q[..., 1], q[..., 2:]
    m11, m12, m22 = mass_matrix(arm, theta2)
    friction = jnp.stack([arm.b11 * dtheta[..., 0] + arm.b12 * dtheta[..., 1],
                          arm.b12 * dtheta[..., 0] + arm.b22 * dtheta[..., 1]], axis=-1)
    rhs = torque - coriolis(arm, theta2, dtheta) - friction
    det = m11 * m22 - m12**2
    return jnp.stack([(m22 * rhs[..., 0] - m12 * rhs[..., 1]) / det,
                      (m11 * rhs[..., 1] - m12 * rhs[..., 0]) / det], axis=-1)


def arm_step(arm: ArmParams, q, torque, dt: float, integrator: str = "euler"):
    """One Euler step of the arm: ``q [..., 4]`` → ``q' [..., 4]``."""
    theta, dtheta = q[..., :2], q[..., 2:]
    new_dtheta = dtheta + dt * acceleration(arm, q, torque)
    new_theta = theta + dt * (new_dtheta if integrator == "semi_implicit" else dtheta)
    return jnp.concatenate([new_theta, new_dtheta], axis=-1)


def hand(arm: ArmParams, q):
    """Hand position and velocity by forward kinematics: ``q [..., 4]`` → ``[..., 4]``."""
    t1, t12 = q[..., 0], q[..., 0] + q[..., 1]
    w1, w2 = q[..., 2], q[..., 3]
    x = arm.l1 * jnp.cos(t1) + arm.l2 * jnp.cos(t12)
    y = arm.l1 * jnp.sin(t1) + arm.l2 * jnp.sin(t12)
    vx = -arm.l1 * jnp.sin(t1) * w1 - arm.l2 * jnp.sin(t12) * (w1 + w2)
    vy = arm.l1 * jnp.cos(t1) * w1 + arm.l2 * jnp.cos(t12) * (w1 + w2)
    return jnp.stack([x, y, vx, vy], axis=-1)


def kinetic_energy(arm: ArmParams, q):
    """``½ θ̇ᵀ M(θ) θ̇``."""
    m11, m12, m22 = mass_matrix(arm, q[..., 1])
    w1, w2 = q[..., 2], q[..., 3]
    return 0.5 * (m11 * w1**2 + 2.0 * m12 * w1 * w2 + m22 * w2**2)


def start_state(batch_size: int, dtype=jnp.float32):
    """The arm at rest in the start posture, ``[B, 4]``."""
    theta = [math.radians(d) for d in START_POSTURE_DEG]
    return jnp.broadcast_to(jnp.asarray(theta + [0.0, 0.0], dtype), (batch_size, 4))


def start_hand(arm: ArmParams):
    """The hand position in the start posture (the 'central spot'), as floats ``(x, y)``."""
    t1, t2 = (math.radians(d) for d in START_POSTURE_DEG)
    return (arm.l1 * math.cos(t1) + arm.l2 * math.cos(t1 + t2),
            arm.l1 * math.sin(t1) + arm.l2 * math.sin(t1 + t2))


def make_arm(l2: float = 0.30, integrator: str = "euler") -> ArmParams:
    if integrator not in INTEGRATORS:
        raise ConfigError("task.integrator", integrator, f"choose one of {list(INTEGRATORS)}")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0.1 <= l2 <= 0.6:
        raise ConfigError("task.l2", l2, "forearm length in metres, in [0.1, 0.6] (0.30 SOFO code, 0.33 Li & Todorov)")
    return ArmParams(l2=float(l2))


class ArmState(NamedTuple):
    net: object              # the model's state (a pytree of [B, ...])
    arm: object              # [B, 4]: θ1, θ2, θ̇1, θ̇2


class Arm:
    """The arm as a ``Plant`` (sofo_lab/core/interfaces.py): state ``q [B, 4]``, command the
    network's readout, torque ``τ = torque_scale · command``, output ``(hand x, y, ẋ, ẏ, τ1, τ2)``
    after the step; the network's feedback ``(θ1 − θ1⁰, θ2 − θ2⁰, θ̇1, θ̇2)``."""

    n_feedback = 4

    def __init__(self, arm: ArmParams, dt: float, integrator: str = "euler", torque_scale: float = 1.0):
        self.params, self.dt, self.integrator = arm, float(dt), integrator
        self.torque_scale = float(torque_scale)
        self._start = tuple(math.radians(d) for d in START_POSTURE_DEG)

    def init_state(self, batch_size: int, dtype=jnp.float32):
        return start_state(batch_size, dtype)

    def feedback(self, q):
        return q - jnp.asarray(self._start + (0.0, 0.0), q.dtype)

    def step(self, q, command):
        torque = self.torque_scale * command
        q = arm_step(self.params, q, torque, self.dt, self.integrator)
        return q, jnp.concatenate([hand(self.params, q), torque], axis=-1)


class ArmSystem(ClosedLoop):
    """A model driving the arm in closed loop: a system every optimizer consumes unchanged, SOFO
    through its closed-loop fast path (sofo_lab/optim/_forward.py) when the model is the rate network."""

    State = ArmState
    n_feedback = Arm.n_feedback

    def __init__(self, model, loss, arm: ArmParams, dt: float, integrator: str = "euler",
                 torque_scale: float = 1.0):
        super().__init__(model, Arm(arm, dt, integrator, torque_scale), loss)
        self.arm, self.dt, self.integrator, self.torque_scale = arm, float(dt), integrator, float(torque_scale)

    def feedback(self, q):
        """What the network sees of the arm: ``(θ1 − θ1⁰, θ2 − θ2⁰, θ̇1, θ̇2)``."""
        return self.plant.feedback(q)
