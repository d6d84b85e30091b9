"""D's projection embedding with the original SN and init: the original's
`SNLinear(K, C, bias=False)` of the one-hot label, against `torch.nn.Linear` with the
original's SN as a parametrization (value, gradients, init distribution, `u` length)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sagan_jax.models import SN_COLLECTION, Discriminator, get_architecture
from sagan_jax.models.layers import SNEmbed
from sagan_jax.models.spectral_norm import SNSettings

try:
    import torch
except ImportError:  # PyTorch comes with the `reference` extra.
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch (pip install -e .[reference])")
ORIGINAL = SNSettings("original")
# (resolution, classes) of the original's conditional runs: CIFAR-10, STL-10, AnimeFace.
RUNS = [(32, 10), (48, 10), (96, 176)]


def _original_sn(u0):
    """The original's SN (`models/basic_module.py`) as a torch parametrization: one power
    step from the fixed `u0`, gradients through it, on the weight viewed as (out, -1)."""
    class OriginalSN(torch.nn.Module):
        def forward(self, weight):
            def l2normalize(t, eps=1e-8):
                return t / (t.norm() + eps)

            w = weight.view(weight.shape[0], -1)
            v = l2normalize(torch.mv(w.t(), u0))
            u = l2normalize(torch.mv(w, v))
            return weight / u.dot(w.mv(v))

    return OriginalSN()


def _torch_embedding(table, u0):
    """`SNLinear(K, C, bias=False)`: nn.Linear with weight (C, K) = the table's transpose."""
    k, c = table.shape
    linear = torch.nn.Linear(k, c, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(np.asarray(table, np.float64).T))
    torch.nn.utils.parametrize.register_parametrization(
        linear, "weight", _original_sn(torch.tensor(np.asarray(u0, np.float64))))
    return linear


@needs_torch
def test_equals_torch_linear_on_one_hot_labels():
    """Same weight and u0: outputs for int labels and for class weights (interpolations),
    and the weight gradient, equal torch's; u0 (length C) is never written."""
    k, c = 7, 16
    layer = SNEmbed(k, c, sn_settings=ORIGINAL, param_init="original")
    labels = jnp.array([0, 3, 6, 3, 1])
    variables = layer.init({"params": jax.random.key(0)}, labels)
    table, u0 = variables["params"]["embedding"], variables[SN_COLLECTION]["u"]
    assert u0.shape == (c,)
    linear = _torch_embedding(table, u0)
    mix = np.random.default_rng(0).dirichlet(np.ones(k), size=4).astype(np.float32)
    one_hot = torch.nn.functional.one_hot(torch.tensor(np.asarray(labels), dtype=torch.long), k)
    for y, y_t in ((labels, one_hot.double()), (jnp.asarray(mix), torch.tensor(mix).double())):
        cot = np.random.default_rng(1).normal(size=(y.shape[0], c))
        linear.zero_grad()
        out_t = linear(y_t)
        (out_t * torch.tensor(cot)).sum().backward()

        def objective(params):
            out, state = layer.apply({**variables, "params": params}, y, train=True,
                                     mutable=[SN_COLLECTION])
            return jnp.sum(out * jnp.asarray(cot, jnp.float32)), (out, state[SN_COLLECTION])

        (_, (out, state)), grads = jax.value_and_grad(objective, has_aux=True)(variables["params"])
        np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-5, atol=1e-6)
        grad_t = linear.parametrizations.weight.original.grad.numpy()
        np.testing.assert_allclose(grads["embedding"], grad_t.T, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(state["u"], u0)


@needs_torch
@pytest.mark.parametrize("resolution,classes", RUNS)
def test_init_is_linear_default_and_u_runs_over_the_channels(resolution, classes):
    """U(+-1/sqrt(K)) (KS test against the uniform law, and against torch.nn.Linear(K, C)'s
    own draw), at D's channel count C; D's `u` of the embedding has length C."""
    d = Discriminator(resolution=resolution, num_classes=classes,
                      attention=get_architecture(resolution).d_attention, sn_settings=ORIGINAL,
                      param_init="original")
    labels = jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(lambda: d.init(
        {"params": jax.random.key(0)}, jnp.zeros((1, resolution, resolution, 3)), labels))
    channels = get_architecture(resolution).d_blocks[-1][0]
    assert shapes["params"]["embed"]["embedding"].shape == (classes, channels)
    assert shapes[SN_COLLECTION]["embed"]["u"].shape == (channels,)

    layer = SNEmbed(classes, channels, sn_settings=ORIGINAL, param_init="original")
    params = layer.init({"params": jax.random.key(resolution)}, labels)["params"]
    table = np.asarray(params["embedding"], np.float64).ravel()
    torch.manual_seed(resolution)
    theirs = torch.nn.Linear(classes, channels, bias=False).weight.detach().numpy().ravel()
    bound = classes ** -0.5
    for sample in (table, theirs):
        assert bound * (1 - 10 / sample.size) <= np.abs(sample).max() <= bound * (1 + 1e-6)
        assert scipy.stats.kstest(sample, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    assert scipy.stats.ks_2samp(table, theirs).pvalue > 1e-3


def test_standard_mode_keeps_the_embedding_reading():
    """Standard SN reads the table as an SN'd nn.Embedding: u and v over the classes and
    the features."""
    variables = SNEmbed(7, 16).init({"params": jax.random.key(0)}, jnp.zeros((1,), jnp.int32))
    state = flax.core.unfreeze(variables[SN_COLLECTION])
    assert (state["u"].shape, state["v"].shape) == ((7,), (16,))
