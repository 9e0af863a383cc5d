"""The two-link arm against first principles: the mass matrix and the equations of motion are
re-derived here from the links' kinetic energy by automatic differentiation (float64), and the
closed loop (ArmSystem) is checked to feed the arm back and to be deterministic given its noise."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import MeanSquaredError
from sofo_lab.core.system import StepInput
from sofo_lab.models import RateRNN
from sofo_lab.tasks.plants.arm import (ArmParams, ArmSystem, acceleration, arm_step, hand, kinetic_energy, make_arm, mass_matrix,
                       start_hand, start_state)

ARMS = [ArmParams(l2=0.30), ArmParams(l2=0.33)]


def _lagrangian_ke(arm, theta, dtheta):
    """Kinetic energy from the links: link 1 rotates about the shoulder (I1 about the joint);
    link 2 = point mass m2 at its centre of mass s2 from the elbow + rotation about that centre
    (I2 about the elbow = I2c + m2 s2²)."""
    def com2(th):
        elbow = arm.l1 * jnp.array([jnp.cos(th[0]), jnp.sin(th[0])])
        return elbow + arm.s2 * jnp.array([jnp.cos(th[0] + th[1]), jnp.sin(th[0] + th[1])])

    v2 = jax.jvp(com2, (theta,), (dtheta,))[1]
    omega2 = dtheta[0] + dtheta[1]
    i2c = arm.I2 - arm.m2 * arm.s2**2
    return 0.5 * arm.I1 * dtheta[0] ** 2 + 0.5 * arm.m2 * v2 @ v2 + 0.5 * i2c * omega2**2


def _random_states(key, n, speed=3.0):
    k1, k2 = jax.random.split(key)
    theta = jax.random.uniform(k1, (n, 2), jnp.float64, -math.pi, math.pi)
    return jnp.concatenate([theta, speed * jax.random.normal(k2, (n, 2), jnp.float64)], axis=1)


@pytest.mark.parametrize("arm", ARMS)
def test_mass_matrix_is_the_hessian_of_the_kinetic_energy_and_positive_definite(arm):
    with jax.enable_x64(True):
        theta2 = jnp.linspace(-math.pi, math.pi, 73)
        theta = jnp.stack([jnp.full_like(theta2, 0.3), theta2], axis=1)
        hess = jax.vmap(jax.hessian(lambda th, w: _lagrangian_ke(arm, th, w), argnums=1))(theta, jnp.zeros((73, 2)))
        m11, m12, m22 = mass_matrix(arm, theta2)
        M = np.stack([np.stack([m11, m12], -1), np.stack([m12, m22], -1)], -2)
        np.testing.assert_allclose(M, hess, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(M, np.swapaxes(M, 1, 2))
        assert np.all(np.linalg.eigvalsh(M) > 1e-3)


@pytest.mark.parametrize("arm", ARMS)
def test_acceleration_solves_the_euler_lagrange_equations(arm):
    """M θ̈ + (∂²KE/∂θ̇∂θ) θ̇ − ∂KE/∂θ = τ − Bθ̇, solved for θ̈ with autodiff and numpy."""
    B = np.array([[arm.b11, arm.b12], [arm.b12, arm.b22]])
    with jax.enable_x64(True):
        states = _random_states(jax.random.PRNGKey(0), 20)
        torques = jax.random.normal(jax.random.PRNGKey(1), (20, 2), jnp.float64)
        ke = lambda th, dth: _lagrangian_ke(arm, th, dth)

        @jax.jit
        @jax.vmap
        def euler_lagrange(q, tau):
            theta, w = q[:2], q[2:]
            M = jax.hessian(ke, argnums=1)(theta, w)
            mixed = jax.jacfwd(jax.grad(ke, argnums=1), argnums=0)(theta, w)
            return jnp.linalg.solve(M, tau - B @ w - mixed @ w + jax.grad(ke, argnums=0)(theta, w))

        np.testing.assert_allclose(acceleration(arm, states, torques), euler_lagrange(states, torques),
                                   rtol=1e-10, atol=1e-10)


def test_without_torque_the_kinetic_energy_never_increases(arm=ArmParams(l2=0.33)):
    with jax.enable_x64(True):
        states = _random_states(jax.random.PRNGKey(2), 200)
        zero = jnp.zeros((200, 2))
        # Exact power balance along the vector field: dKE/dt = −θ̇ᵀBθ̇ ≤ 0 (Coriolis does no work).
        field = jnp.concatenate([states[:, 2:], acceleration(arm, states, zero)], axis=1)
        dke = jax.jvp(lambda q: kinetic_energy(arm, q), (states,), (field,))[1]
        w = states[:, 2:]
        friction = arm.b11 * w[:, 0] ** 2 + 2 * arm.b12 * w[:, 0] * w[:, 1] + arm.b22 * w[:, 1] ** 2
        np.testing.assert_allclose(dke, -friction, rtol=1e-10, atol=1e-12)
        assert np.all(dke <= 0)
        # And along simulated trajectories (1 ms semi-implicit Euler steps, 1.5 s).
        def body(q, _):
            q = arm_step(arm, q, zero[:16], 1e-3, "semi_implicit")
            return q, kinetic_energy(arm, q)

        _, energy = jax.lax.scan(body, states[:16], None, length=1500)
        energy = np.concatenate([np.asarray(kinetic_energy(arm, states[:16]))[None], energy])
        assert np.all(np.diff(energy, axis=0) <= 1e-9 * energy[:-1] + 1e-15)
        assert np.all(energy[-1] < energy[0])


def test_hand_velocity_is_the_time_derivative_of_hand_position(arm=ArmParams(l2=0.33)):
    with jax.enable_x64(True):
        states = _random_states(jax.random.PRNGKey(3), 50)
        h = 1e-6
        ahead = states.at[:, :2].add(h * states[:, 2:])
        behind = states.at[:, :2].add(-h * states[:, 2:])
        finite_difference = (hand(arm, ahead)[:, :2] - hand(arm, behind)[:, :2]) / (2 * h)
        np.testing.assert_allclose(hand(arm, states)[:, 2:], finite_difference, rtol=1e-7, atol=1e-8)


def test_constant_torque_from_rest_gives_the_initial_acceleration_m_inverse_tau():
    arm = ArmParams()
    with jax.enable_x64(True):
        q0 = start_state(3, jnp.float64)
        tau = jnp.array([[1.0, 0.0], [0.0, 1.0], [-0.7, 0.4]])
        m11, m12, m22 = (float(v) for v in mass_matrix(arm, q0[0, 1]))
        expected = np.linalg.solve(np.array([[m11, m12], [m12, m22]]), np.asarray(tau).T).T
        dt = 1e-3
        for integrator in ("euler", "semi_implicit"):
            q1 = arm_step(arm, q0, tau, dt, integrator)
            np.testing.assert_allclose((q1[:, 2:] - q0[:, 2:]) / dt, expected, rtol=1e-12)
        # Explicit Euler moves the angles with the old (zero) velocities; semi-implicit with the new.
        np.testing.assert_array_equal(arm_step(arm, q0, tau, dt, "euler")[:, :2], q0[:, :2])
        np.testing.assert_allclose(arm_step(arm, q0, tau, dt, "semi_implicit")[:, :2] - q0[:, :2],
                                   dt**2 * expected, rtol=1e-9)


def test_start_posture_puts_the_hand_at_the_central_spot():
    x, y = start_hand(ArmParams(l2=0.30))
    assert x == pytest.approx(0.0, abs=1e-12) and y == pytest.approx(0.2052, abs=1e-4)
    np.testing.assert_allclose(hand(ArmParams(), start_state(1))[0], [x, y, 0, 0], atol=1e-6)


def test_bad_arm_settings_raise_config_errors():
    with pytest.raises(ConfigError) as info:
        make_arm(integrator="rk4")
    assert info.value.key == "task.integrator"
    with pytest.raises(ConfigError) as info:
        make_arm(l2=3.0)
    assert info.value.key == "task.l2"


def _system(noise=0.0):
    model = RateRNN(n_inputs=3 + 4, n_outputs=2, n_hidden=8, dt=0.01, tau=0.02, noise_amplitude=noise)
    return ArmSystem(model, MeanSquaredError(), ArmParams(), dt=0.01)


def test_closed_loop_step_feeds_the_arm_back_and_outputs_hand_and_torque():
    system = _system()
    params = system.init_params(jax.random.PRNGKey(0))
    state = system.init_state(params, 2)
    np.testing.assert_allclose(system.feedback(state.arm), 0.0, atol=1e-6)   # feedback relative to the start
    u = jnp.zeros((2, 3))
    new, y = system.step(params, state, StepInput(u))
    torque = y[:, 4:]
    # The arm integrated exactly one step under the network's torque, and y is its hand after the step.
    np.testing.assert_allclose(new.arm, arm_step(system.arm, state.arm, torque, 0.01), rtol=1e-6)
    np.testing.assert_allclose(y[:, :4], hand(system.arm, new.arm), rtol=1e-6)
    # The network's next input carries the arm state: moving the arm changes its next output.
    moved = new._replace(arm=new.arm.at[:, 2].add(1.0))
    assert not np.allclose(system.step(params, new, StepInput(u))[1], system.step(params, moved, StepInput(u))[1])


def test_the_step_is_deterministic_and_noise_enters_only_through_the_input():
    system = _system(noise=0.5)
    params = system.init_params(jax.random.PRNGKey(0))
    state = system.init_state(params, 4)
    state = state._replace(net=state.net + 0.5)   # non-zero rates, so the noise matters
    u = jnp.ones((4, 3))
    noise = system.sample_noise(jax.random.PRNGKey(5), 1, 4)[0]
    y1 = system.step(params, state, StepInput(u, noise))[1]
    y2 = system.step(params, state, StepInput(u, noise))[1]
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(y1, system.step(params, state, StepInput(u, None))[1])
    np.testing.assert_array_equal(noise, system.sample_noise(jax.random.PRNGKey(5), 1, 4)[0])
