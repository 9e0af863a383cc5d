"""Each loss's Gauss-Newton block equals Yᵀ (∂²loss/∂y²) Y from jax.hessian."""
import jax
import jax.numpy as jnp
import pytest

from sofo_lab.core.losses import MeanSquaredError, SoftmaxCrossEntropy


@pytest.mark.parametrize("loss,weight_shape", [(MeanSquaredError(), (5,)), (MeanSquaredError(), (5, 3)),
                                               (SoftmaxCrossEntropy(), (5,))])
def test_ggn_block_is_the_exact_output_curvature(loss, weight_shape):
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(0), 4)
        B, O, K = 5, 3, 4
        y = jax.random.normal(k[0], (B, O))
        target = jax.nn.one_hot(jax.random.randint(k[1], (B,), 0, O), O) if loss.kind == "xent" \
            else jax.random.normal(k[1], (B, O))
        w = jax.random.uniform(k[2], weight_shape, minval=0.1, maxval=2.0)
        tangents = jax.random.normal(k[3], (K, B, O))

        hess = jax.hessian(lambda yy: loss.value(yy.reshape(B, O), target, w))(y.ravel())
        flat = tangents.reshape(K, B * O)
        expected = flat @ hess @ flat.T
        assert jnp.allclose(loss.ggn(y, target, w, tangents), expected, rtol=1e-10, atol=1e-12)


def test_mse_value_is_weighted_batch_mean():
    y, t = jnp.ones((2, 3)), jnp.zeros((2, 3))
    assert jnp.isclose(MeanSquaredError().value(y, t, jnp.array([1.0, 3.0])), (3 + 9) / 2)


def test_cross_entropy_value_matches_log_softmax():
    y = jnp.array([[2.0, 0.0, -1.0]])
    t = jnp.array([[0.0, 1.0, 0.0]])
    expected = -jax.nn.log_softmax(y)[0, 1]
    assert jnp.isclose(SoftmaxCrossEntropy().value(y, t, jnp.ones(1)), expected)
