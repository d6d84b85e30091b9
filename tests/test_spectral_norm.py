"""Spectral norm against numpy's SVD, and its state and gradient rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax.models import SN_COLLECTION, power_iteration, spectral_normalize
from sagan_jax.models.layers import SNConv, SNDense, SNEmbed


def _top_singular_value(w):
    return np.linalg.svd(np.asarray(w).reshape(-1, w.shape[-1]), compute_uv=False)[0]


@pytest.mark.parametrize("shape", [(64, 32), (20, 50), (3, 3, 16, 24), (1, 1, 32, 8)])
def test_power_iteration_converges_to_svd(shape):
    w = jax.random.normal(jax.random.key(0), shape)
    u = jax.random.normal(jax.random.key(1), (shape[-1],))
    sigma, _, _ = power_iteration(w.reshape(-1, shape[-1]), u, n_iters=300)
    ref = _top_singular_value(w)
    assert abs(float(sigma) - ref) / ref < 1e-3


@pytest.mark.parametrize(
    "layer,inputs",
    [
        (SNDense(32), jnp.ones((2, 48))),
        (SNConv(16, 3), jnp.ones((2, 8, 8, 12))),
        (SNEmbed(10, 24), jnp.arange(4)),
    ],
    ids=["dense", "conv", "embed"],
)
def test_training_steps_normalize_the_weight(layer, inputs):
    """Layers advance u once per training call; the weight they use converges to norm 1."""
    variables = layer.init({"params": jax.random.key(0)}, inputs)
    weight = variables["params"].get("kernel", variables["params"].get("embedding"))
    apply = jax.jit(lambda v: layer.apply(v, inputs, train=True, mutable=[SN_COLLECTION])[1])
    for _ in range(300):
        variables = {**variables, **apply(variables)}
    w_sn, _, sigma = spectral_normalize(weight, variables[SN_COLLECTION]["u"], n_iters=0)
    ref = _top_singular_value(weight)
    assert abs(float(sigma) - ref) / ref < 1e-3
    assert abs(_top_singular_value(w_sn) - 1.0) < 1e-3


def test_u_is_read_in_eval_and_advanced_in_training():
    layer = SNDense(8)
    x = jnp.ones((2, 5))
    variables = layer.init({"params": jax.random.key(0)}, x)
    u0 = variables[SN_COLLECTION]["u"]
    _, state = layer.apply(variables, x, train=False, mutable=[SN_COLLECTION])
    np.testing.assert_array_equal(state[SN_COLLECTION]["u"], u0)
    _, state = layer.apply(variables, x, train=True, mutable=[SN_COLLECTION])
    assert np.abs(np.asarray(state[SN_COLLECTION]["u"]) - np.asarray(u0)).max() > 1e-3
    # The new u is the power-iteration step computed by hand.
    w = np.asarray(variables["params"]["kernel"], np.float64)
    v = w @ np.asarray(u0)
    v /= np.linalg.norm(v)
    u1 = w.T @ v
    np.testing.assert_allclose(state[SN_COLLECTION]["u"], u1 / np.linalg.norm(u1), atol=1e-6)


def test_no_gradient_into_u_and_weight_gradient_is_analytic():
    """d/dW <W/sigma, M> = M/sigma - <W, M>/sigma^2 v u^T with u, v held constant."""
    w = jax.random.normal(jax.random.key(0), (6, 4))
    u = jax.random.normal(jax.random.key(1), (4,))
    m = jax.random.normal(jax.random.key(2), (6, 4))

    def objective(w, u):
        return jnp.sum(spectral_normalize(w, u, n_iters=1)[0] * m)

    grad_w, grad_u = jax.grad(objective, argnums=(0, 1))(w, u)
    np.testing.assert_array_equal(grad_u, np.zeros(4))
    wn, un = np.asarray(w, np.float64), np.asarray(u, np.float64)
    v = wn @ un
    v /= np.linalg.norm(v)
    un = wn.T @ v
    un /= np.linalg.norm(un)
    v = wn @ un
    v /= np.linalg.norm(v)
    sigma = v @ wn @ un
    mn = np.asarray(m, np.float64)
    expected = mn / sigma - np.sum(wn * mn) / sigma**2 * np.outer(v, un)
    np.testing.assert_allclose(grad_w, expected, rtol=1e-4, atol=1e-6)


def test_sn_state_is_its_own_collection():
    variables = SNConv(4, 3).init({"params": jax.random.key(0)}, jnp.ones((1, 4, 4, 2)))
    assert set(variables) == {"params", SN_COLLECTION}
    assert variables[SN_COLLECTION]["u"].shape == (4,)
    assert set(variables["params"]) == {"kernel", "bias"}
