"""The public library (sofo_lab/library.py): plain functions in, the engines' exact numbers out."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import sofo_lab
from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import MeanSquaredError, PerSampleLoss, SoftmaxCrossEntropy
from sofo_lab.optim import _forward

N, I, O, T, B = 3, 2, 2, 4, 3


def gru_like(p, h, x):
    """A plain-jnp gated step with a dict state, to show the state may be any pytree."""
    gate = jax.nn.sigmoid(x["u"] @ p["U_g"] + h["h"] @ p["W_g"])
    h_new = gate * jnp.tanh(x["u"] @ p["U"] + h["h"] @ p["W"] + p["b"]) + (1 - gate) * h["h"]
    return {"h": h_new}, h_new @ p["V"] + x["bias"]


def poisson(y, t):
    """Negative Poisson log-likelihood of counts t with log-rates y (no closed-form curvature here)."""
    return jnp.sum(jnp.exp(y) - t * y)


def setup(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 8)
    params = {"U": jax.random.normal(k[0], (I, N)), "W": 0.5 * jax.random.normal(k[1], (N, N)),
              "U_g": jax.random.normal(k[2], (I, N)), "W_g": jax.random.normal(k[3], (N, N)),
              "b": 0.1 * jax.random.normal(k[4], (N,)), "V": jax.random.normal(k[5], (N, O))}
    inputs = {"u": jax.random.normal(k[6], (T, B, I)), "bias": jnp.zeros((T, B, O))}
    targets = jax.random.poisson(k[7], 2.0, (T, B, O)).astype(params["U"].dtype)
    weights = jax.random.uniform(k[7], (T, B), minval=0.5, maxval=1.5)
    return params, inputs, targets, weights


def total_loss(params, inputs, targets, weights, per_sample):
    def body(h, xs):
        x, t, w = xs
        h, y = gru_like(params, h, x)
        return h, jnp.sum(w * jax.vmap(per_sample)(y, t)) / B

    h0 = jnp.broadcast_to(params["h0"], (B, N)) if "h0" in params else jnp.zeros((B, N))
    return jax.lax.scan(body, {"h": h0}, (inputs, targets, weights))[1].sum()


# --- the generic (Hessian) curvature path equals the closed forms -------------------------------

def test_generic_hessian_path_equals_the_closed_forms_for_mse_and_cross_entropy():
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(1), 4)
        y = jax.random.normal(k[0], (5, 3))
        w = jax.random.uniform(k[1], (5,), minval=0.1, maxval=2.0)
        tangents = jax.random.normal(k[2], (4, 5, 3))
        t_reg = jax.random.normal(k[3], (5, 3))
        t_cls = jax.nn.one_hot(jax.random.randint(k[3], (5,), 0, 3), 3)
        cases = [(MeanSquaredError(), lambda a, b: jnp.sum((a - b) ** 2), t_reg),
                 (SoftmaxCrossEntropy(), lambda a, b: -jnp.sum(b * jax.nn.log_softmax(a)), t_cls)]
        for closed, fn, target in cases:
            generic = PerSampleLoss(fn)
            assert generic.value(y, target, w) == pytest.approx(float(closed.value(y, target, w)), rel=1e-13)
            np.testing.assert_allclose(generic.ggn(y, target, w, tangents), closed.ggn(y, target, w, tangents),
                                       rtol=1e-12, atol=1e-13)
            # the two paths are not trivially the same code: a different loss gives a different G̃
            assert not np.allclose(PerSampleLoss(lambda a, b: jnp.sum((a - b) ** 4)).ggn(y, target, w, tangents),
                                   closed.ggn(y, target, w, tangents))


def test_custom_loss_gives_the_c_and_ggn_of_dense_jacobians_and_hessian():
    """Poisson loss, float64: C = Vᵀ∇L (reverse mode), G̃ = Vᵀ JᵀHJ V (dense J, H over all T·B·O outputs)."""
    with jax.enable_x64(True):
        params, inputs, targets, weights = setup()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        flat, unravel = ravel_pytree(params)
        K = 5
        tangents = _forward.sample_tangents(jax.random.PRNGKey(3), params, K)
        system = sofo_lab.make_system(gru_like, poisson, {"h": jnp.zeros(N)})
        batch = sofo_lab.make_batch(inputs, targets, weights)
        sketch = _forward.forward_sketch(system, params, tangents, batch, None, stepper=_forward.GenericStepper(system))

        def outputs(theta):
            def body(h, x):
                return gru_like(unravel(theta), h, x)
            return jax.lax.scan(body, {"h": jnp.zeros((B, N))}, inputs)[1]          # [T, B, O]

        def loss_of_outputs(ys):
            return jnp.sum(weights[..., None] * (jnp.exp(ys) - targets * ys)) / B

        J = jax.jacrev(outputs)(flat).reshape(T * B * O, -1)
        H = jax.hessian(lambda v: loss_of_outputs(v.reshape(T, B, O)))(outputs(flat).ravel())
        V = _forward.flat_tangents(tangents)                                         # [K, P]
        grad = jax.grad(lambda th: total_loss(unravel(th), inputs, targets, weights, poisson))(flat)
        np.testing.assert_allclose(sketch.c, V @ grad, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sketch.ggn, V @ J.T @ H @ J @ V.T, rtol=1e-10, atol=1e-12)
        assert float(sketch.loss) == pytest.approx(float(total_loss(params, inputs, targets, weights, poisson)),
                                                   rel=1e-12)


# --- the factories ------------------------------------------------------------------------------

def test_sofo_direction_is_the_damped_gauss_newton_step_and_the_optimizer_applies_it():
    with jax.enable_x64(True):
        params, inputs, targets, weights = setup()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        key, lam, K = jax.random.PRNGKey(4), 1e-2, 6
        f = sofo_lab.value_and_sofo_direction(gru_like, poisson, init_state={"h": jnp.zeros(N)}, n_tangents=K,
                                              damping=lam)
        loss, direction, info = f(params, inputs, targets, key, weights=weights)
        flat, unravel = ravel_pytree(params)
        V = _forward.flat_tangents(_forward.sample_tangents(key, params, K))
        system = sofo_lab.make_system(gru_like, poisson, {"h": jnp.zeros(N)})
        sk = _forward.forward_sketch(system, params, _forward.sample_tangents(key, params, K),
                                     sofo_lab.make_batch(inputs, targets, weights), None)
        s = np.linalg.eigvalsh(np.asarray(sk.ggn))
        z = np.linalg.solve(np.asarray(sk.ggn) + lam * np.abs(s).max() * np.eye(K), np.asarray(sk.c))
        np.testing.assert_allclose(ravel_pytree(direction)[0], np.asarray(V).T @ z, rtol=1e-8, atol=1e-12)
        assert jax.tree.structure(direction) == jax.tree.structure(params)
        assert info["state"]["h"].shape == (B, N)

        opt = sofo_lab.sofo(gru_like, poisson, init_state={"h": jnp.zeros(N)}, n_tangents=K, damping=lam,
                            learning_rate=0.5)
        new, _, metrics = opt.update(params, opt.init(params), inputs, targets, key, weights)
        # 1e-6: the optimizer keeps λ in float32 (SofoState.damping), the direction uses the float64 λ
        np.testing.assert_allclose(ravel_pytree(new)[0], flat - 0.5 * ravel_pytree(direction)[0], rtol=1e-6)
        assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)   # metrics are float32


def test_fgd_with_a_full_orthonormal_basis_is_the_exact_gradient_also_of_a_learned_initial_state():
    with jax.enable_x64(True):
        params, inputs, targets, weights = setup()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), {**params, "h0": jnp.linspace(-0.5, 0.5, N)})
        flat, unravel = ravel_pytree(params)
        learned = lambda p, batch_size: {"h": jnp.broadcast_to(p["h0"], (batch_size, N))}  # noqa: E731
        f = sofo_lab.value_and_fgd_direction(gru_like, poisson, init_state=learned, n_tangents=flat.size,
                                             orthonormalize=True)
        _, g, _ = f(params, inputs, targets, jax.random.PRNGKey(0), weights=weights)
        exact = jax.grad(lambda th: total_loss(unravel(th), inputs, targets, weights, poisson))(flat)
        np.testing.assert_allclose(ravel_pytree(g)[0], exact, rtol=1e-9, atol=1e-12)
        assert float(jnp.abs(g["h0"]).max()) > 1e-3             # the initial state gets credit


def _two_windows():
    params, inputs, targets, _ = setup()
    inputs = {"u": jnp.concatenate([inputs["u"]] * 2), "bias": jnp.zeros((2 * T, B, O))}
    targets = jnp.concatenate([targets, targets[::-1]])
    windows = [(jax.tree.map(lambda a: a[sl], inputs), targets[sl]) for sl in (slice(0, T), slice(T, 2 * T))]
    return params, (inputs, targets), windows


def test_rtrl_on_a_stream_in_two_windows_is_the_same_stream_in_one():
    """stream=True carries the network state and RTRL's Jacobian across calls (RTRL is deterministic)."""
    params, (inputs, targets), windows = _two_windows()
    opt = sofo_lab.rtrl(gru_like, poisson, init_state={"h": jnp.zeros(N)}, batch_size=B, learning_rate=1e-2)
    key = jax.random.PRNGKey(5)
    whole, _, _ = opt.update(params, opt.init(params), inputs, targets, key)
    p, s = params, opt.init(params)
    for x, t in windows:
        p, s, _ = opt.update(p, s, x, t, key)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(p)[0], jax.tree.leaves(params)[0])
    assert s.carry["h"].shape == (B, N)


def test_uoro_stream_hands_the_engine_its_own_carry_and_estimate_window_after_window():
    """The library's stream=True equals the engine (sofo_lab/optim/uoro.py) given the carry by hand."""
    from sofo_lab.optim import uoro as engine_uoro

    params, _, windows = _two_windows()
    tx = optax.adam(1e-2)
    opt = sofo_lab.uoro(gru_like, poisson, init_state={"h": jnp.zeros(N)}, batch_size=B, tx=tx)
    system = sofo_lab.make_system(gru_like, poisson, {"h": jnp.zeros(N)})
    engine = engine_uoro.uoro(system, tx, batch_size=B)
    p, s = params, opt.init(params)
    q, e, carry = params, engine.init(params), system.init_state(params, B)
    for i, (x, t) in enumerate(windows):
        key = jax.random.PRNGKey(i)
        p, s, info = opt.update(p, s, x, t, key)
        q, e, carry, _ = engine.update(q, e, sofo_lab.make_batch(x, t), key, carry)
    for a, b in zip(jax.tree.leaves((p, s.inner, s.carry)), jax.tree.leaves((q, e, carry))):
        assert np.array_equal(a, b)
    assert float(jnp.abs(s.carry["h"]).max()) > 0 and float(info["s_tilde_norm"]) > 0


def test_training_a_plain_model_lowers_its_loss_with_every_method():
    params, inputs, targets, weights = setup()
    kw = dict(init_state={"h": jnp.zeros(N)})
    opts = {"sofo": sofo_lab.sofo(gru_like, poisson, learning_rate=1.0, n_tangents=8, **kw),
            "fgd": sofo_lab.fgd(gru_like, poisson, learning_rate=3e-2, **kw),
            "uoro": sofo_lab.uoro(gru_like, poisson, batch_size=B, learning_rate=3e-2, stream=False, **kw),
            "rtrl": sofo_lab.rtrl(gru_like, poisson, batch_size=B, learning_rate=3e-2, stream=False, **kw)}
    for name, opt in opts.items():
        update = jax.jit(opt.update)
        p, s = params, opt.init(params)
        losses = []
        for i in range(12):
            p, s, info = update(p, s, inputs, targets, jax.random.PRNGKey(i))
            losses.append(float(info["loss"]))
        assert losses[-1] < 0.9 * losses[0], (name, losses)


def test_engines_take_p_and_shapes_from_the_params_given_to_init():
    """A system of plain functions has no ``init_params``: every engine reads P and the shapes from
    the parameters handed to ``init`` (and K <= P, RTRL's Jacobian size, are checked there)."""
    from sofo_lab.optim import fgd as engine_fgd
    from sofo_lab.optim import rtrl as engine_rtrl
    from sofo_lab.optim import sofo as engine_sofo
    from sofo_lab.optim import uoro as engine_uoro

    params, inputs, targets, _ = setup()
    system = sofo_lab.make_system(gru_like, poisson, {"h": jnp.zeros(N)})
    assert not hasattr(system, "init_params")
    P = sum(x.size for x in jax.tree.leaves(params))
    tx = optax.sgd(1e-2)
    engines = {"sofo": engine_sofo.sofo(system, tx, n_tangents=P, orthonormalize=True),
               "fgd": engine_fgd.fgd(system, tx, n_tangents=P, orthonormalize=True),
               "uoro": engine_uoro.uoro(system, tx, batch_size=B), "rtrl": engine_rtrl.rtrl(system, tx, batch_size=B)}
    batch = sofo_lab.make_batch(inputs, targets)
    for name, engine in engines.items():
        new, _, _, info = engine.update(params, engine.init(params), batch, jax.random.PRNGKey(0), None)
        assert np.isfinite(float(info["loss"])) and jax.tree.structure(new) == jax.tree.structure(params), name
    with pytest.raises(ConfigError, match=f"n_tangents={P + 1}: must be <= the {P} parameters"):
        engine_sofo.sofo(system, tx, n_tangents=P + 1, orthonormalize=True).init(params)


def _update_once(opt, weights=None):
    params, inputs, targets, _ = setup()
    return opt.update(params, opt.init(params), inputs, targets, jax.random.PRNGKey(0), weights)


@pytest.mark.parametrize("call,message", [
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=0.3, n_tangents=0),
     "n_tangents=0: must be an integer >= 1 (the number of tangent directions K)"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=0.3, damping=-1.0),
     "damping=-1.0: must be a finite number >= 0"),
    (lambda: sofo_lab.sofo(gru_like, "mae", init_state=jnp.zeros(N), learning_rate=0.3), "loss='mae': choose one of"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state=jnp.zeros(N)), "learning_rate=None: give a learning rate"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=0.1, tx=optax.sgd(0.1)),
     "learning_rate=0.1: give learning_rate or tx, not both"),
    (lambda: sofo_lab.fgd(gru_like, "mse", init_state=None, learning_rate=0.1), "init_state=None: give the state"),
    (lambda: sofo_lab.fgd(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=-1), "learning_rate=-1: must be a "
     "positive finite number"),
    (lambda: sofo_lab.fgd(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=0.1, stream="yes"),
     "stream='yes': must be true or false"),
    (lambda: sofo_lab.fgd("gru", "mse", init_state=jnp.zeros(N), learning_rate=0.1), "step='gru': must be a function"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=0.1, stream=True),
     "batch_size=None: stream=True carries"),
    (lambda: sofo_lab.uoro(gru_like, "mse", init_state=jnp.zeros(N), batch_size=0, learning_rate=0.1),
     "batch_size=0: must be a positive integer"),
    (lambda: sofo_lab.uoro(gru_like, "mse", init_state=jnp.zeros(N), batch_size=2, learning_rate=0.1,
                           update_every=0), "update_every=0: must be a positive integer"),
    (lambda: sofo_lab.rtrl(gru_like, "mse", init_state={"h": jnp.zeros(N)}, batch_size=B, learning_rate=0.1,
                           max_jacobian=10).init(setup()[0]), "max_jacobian=10: the Jacobian"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state={"h": jnp.zeros(N)}, learning_rate=0.1, n_tangents=10_000,
                           orthonormalize=True).init(setup()[0]), "n_tangents=10000: must be <= the"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state={"h": jnp.zeros(N)}, learning_rate=0.1).update(
        setup()[0], None, setup()[1], jnp.zeros((T + 1, B, O)), jax.random.PRNGKey(0)), "targets='shape (5, 3, 2)'"),
    (lambda: _update_once(sofo_lab.sofo(gru_like, poisson, init_state={"h": jnp.zeros(N)}, learning_rate=0.1),
                          weights=jnp.ones((T, B, O))), "weights='shape (3, 2)': a custom loss takes one weight"),
    (lambda: sofo_lab.sofo(gru_like, "mse", init_state=jnp.zeros(N), learning_rate=0.1, plateau={"factor": 2}),
     "plateau.factor=2: must be a number in (0, 1)"),
])
def test_bad_arguments_end_in_one_line_naming_them(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_public_names_are_listed_and_importable():
    assert {"sofo", "fgd", "uoro", "rtrl", "value_and_sofo_direction", "load_run", "simulate",
            "PerSampleLoss", "load_params_npz"} <= set(sofo_lab.__all__)
    for name in sofo_lab.__all__:
        assert getattr(sofo_lab, name) is not None


def test_the_library_sofo_shrinks_its_step_as_sofo_run_does():
    """``plateau``'s default is conf/optim/sofo.yaml's, and it reaches the update: with a window of one
    batch and a tolerance no batch meets, the second update is half the plain one."""
    from omegaconf import OmegaConf

    from sofo_lab.conf import CONF_DIR

    yaml = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "optim" / "sofo.yaml"))
    assert sofo_lab.library.SOFO_PLATEAU == yaml["plateau"]
    params, inputs, targets, weights = setup()
    halve = {"window": 1, "patience": 1, "rtol": 0.999, "min_scale": 0.0}
    moves = {}
    for name, plateau in (("plain", None), ("halved", halve)):
        opt = sofo_lab.sofo(gru_like, poisson, init_state={"h": jnp.zeros(N)}, learning_rate=0.1, plateau=plateau,
                            adaptive_damping=False)
        state = opt.init(params)
        _, state, _ = opt.update(params, state, inputs, targets, jax.random.PRNGKey(1), weights)
        new, _, _ = opt.update(params, state, inputs, targets, jax.random.PRNGKey(2), weights)
        moves[name] = ravel_pytree(new)[0] - ravel_pytree(params)[0]
    np.testing.assert_allclose(moves["halved"], 0.5 * moves["plain"], rtol=1e-5, atol=1e-9)
