"""Self-attention and conditional BN against NumPy computations of their formulas."""
import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax.models import SN_COLLECTION
from sagan_jax.models.layers import ConditionalBatchNorm, SelfAttention, SNConv


def _np_sn_conv1x1(x, params, sn_state):
    """A 1x1 conv with the spectrally normalized kernel, from the stored u, v (eval mode),
    and its bias if it has one."""
    w = np.asarray(params["kernel"], np.float64)[0, 0]  # (in, out)
    u, v = (np.asarray(sn_state[k], np.float64) for k in ("u", "v"))
    sigma = u @ w.T @ v  # torch's u^T A v with A = w^T (out, in)
    return x @ (w / sigma) + np.asarray(params.get("bias", 0.0), np.float64)


def _np_max_pool2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _np_attention(x, params, sn_state):
    b, h, w, c = x.shape

    def conv(name, t):
        return _np_sn_conv1x1(t, params[name], sn_state[name])

    theta = conv("theta", x).reshape(b, h * w, -1)
    phi = _np_max_pool2(conv("phi", x)).reshape(b, h * w // 4, -1)
    g = _np_max_pool2(conv("g", x)).reshape(b, h * w // 4, -1)
    logits = theta @ phi.transpose(0, 2, 1)
    beta = np.exp(logits - logits.max(-1, keepdims=True))
    beta /= beta.sum(-1, keepdims=True)
    o = (beta @ g).reshape(b, h, w, c // 2)
    return x + float(params["gamma"]) * conv("o", o)


def _init_attention(x, use_bias=True):
    """Initial variables after one training pass, so that u and v are power-iterated."""
    attention = SelfAttention(SNConv, use_bias)
    variables = attention.init({"params": jax.random.key(0)}, x)
    _, state = attention.apply(variables, x, train=True, mutable=[SN_COLLECTION])
    return {**variables, **state}


def test_attention_with_zero_gamma_is_identity():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    variables = _init_attention(x)
    assert float(variables["params"]["gamma"]) == 0.0
    np.testing.assert_array_equal(SelfAttention(SNConv).apply(variables, x), x)


def test_attention_matches_numpy_formula():
    x = jax.random.normal(jax.random.key(1), (2, 8, 6, 32))
    variables = _init_attention(x)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["gamma"] = np.float32(0.7)
    # Non-zero biases so that they are checked too.
    for i, name in enumerate(("theta", "phi", "g", "o")):
        params[name]["bias"] = np.linspace(-0.5, 0.5, params[name]["bias"].size).astype(np.float32) * (i + 1)
    variables = {"params": params, SN_COLLECTION: variables[SN_COLLECTION]}
    out = SelfAttention(SNConv).apply(variables, x)
    ref = _np_attention(np.asarray(x, np.float64), params, variables[SN_COLLECTION])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(ref - np.asarray(x)).max() > 0.1  # the attention term is not negligible


def _np_batch_norm(x, eps):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps)


def test_conditional_bn_with_zero_embeddings_is_plain_bn():
    """eps 1e-4 when conditional (the original's CBN), PyTorch's 1e-5 when not."""
    # A small variance, so that the two eps differ by far more than the tolerance.
    x = 0.01 * jax.random.normal(jax.random.key(0), (6, 4, 4, 5)) + 0.003
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    cbn = ConditionalBatchNorm(num_classes=3)
    variables = cbn.init({"params": jax.random.key(1)}, x, labels)
    assert not np.any(variables["params"]["gamma"]["embedding"])  # zero at initialisation
    out, state = cbn.apply(variables, x, labels, train=True, mutable=["batch_stats"])
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(out, _np_batch_norm(x64, 1e-4), rtol=1e-4, atol=1e-4)
    plain = ConditionalBatchNorm(num_classes=0)
    plain_vars = plain.init({"params": jax.random.key(1)}, x, None)
    plain_out = plain.apply(plain_vars, x, None, train=True, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(plain_out, _np_batch_norm(x64, 1e-5), rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(plain_out) - np.asarray(out)).max() > 0.5
    # Running statistics follow PyTorch's momentum 0.1.
    np.testing.assert_allclose(
        state["batch_stats"]["bn"]["mean"], 0.1 * np.asarray(x).mean(axis=(0, 1, 2)), rtol=1e-5
    )


def test_conditional_bn_applies_class_gamma_and_beta():
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 3))
    labels = jnp.array([1, 0, 1, 0])
    cbn = ConditionalBatchNorm(num_classes=2)
    variables = cbn.init({"params": jax.random.key(1)}, x, labels)
    e_g = np.array([[0.5, -0.2, 0.1], [1.0, 2.0, -0.5]], np.float32)
    e_b = np.array([[0.3, 0.0, -1.0], [-0.4, 0.6, 0.2]], np.float32)
    variables = {**variables, "params": {"gamma": {"embedding": e_g}, "beta": {"embedding": e_b}}}
    out, _ = cbn.apply(variables, x, labels, train=True, mutable=["batch_stats"])
    y = np.asarray(labels)
    ref = _np_batch_norm(np.asarray(x, np.float64), 1e-4) * (1 + e_g[y])[:, None, None] + e_b[y][:, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_attention_without_biases_matches_numpy_formula():
    """use_bias=False (the SAGAN paper's official code): the four convs have kernels only."""
    x = jax.random.normal(jax.random.key(2), (2, 8, 6, 32))
    variables = _init_attention(x, use_bias=False)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    assert {name: set(params[name]) for name in ("theta", "phi", "g", "o")} == dict.fromkeys(
        ("theta", "phi", "g", "o"), {"kernel"})
    params["gamma"] = np.float32(0.7)
    variables = {"params": params, SN_COLLECTION: variables[SN_COLLECTION]}
    out = SelfAttention(SNConv, use_bias=False).apply(variables, x)
    ref = _np_attention(np.asarray(x, np.float64), params, variables[SN_COLLECTION])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(ref - np.asarray(x)).max() > 0.1
