"""The fast forms of SNConv against the direct ones, on the same weights.

The layers compute G's "repeat the pixels, then conv3x3" as four 2x2 convs at the low
resolution, G's shortcut conv1x1 before the repetition, and every 1x1 conv as a matrix
product (`sagan_jax/models/layers.py`). The reference here is the direct form written
out: `jnp.repeat` twice, then `lax.conv_general_dilated` (1x1 convs included), with the
same spectral normalization (`normalized_param`, tested against PyTorch elsewhere).
Each test compares a training pass (the SN state advancing), its outputs, the new SN
state and the gradients of a fixed random cotangent with respect to the parameters and
the input.

float32 agrees to round-off (1e-5 relative). bfloat16 cannot be held to that: both
forms round the inputs, kernels and outputs to bf16 (8 significant bits, up to 2^-9
relative per rounding), and the fast form rounds the summed kernel taps once where the
direct form rounds each tap, and sums the repeated pixels' gradients in another order,
so the two differ by about one bf16 unit of the values' size. So in bf16 each form is
compared with the float32 result: the fast form must be as accurate as the direct one
to within one bf16 unit (2^-8 of the largest value), and within 2^-7 outright.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sagan_jax.models import SN_COLLECTION
from sagan_jax.models.layers import ConditionalBatchNorm, GBlock, SNConv
from sagan_jax.models.spectral_norm import normalized_param

F32_TOL = 1e-5
BF16_SPACING = 2.0 ** -8  # bf16's spacing relative to the largest value (8 significant bits)
BF16_VS_F32 = 2.0 ** -7  # a few bf16 roundings, relative to the largest value


class PlainConv(nn.Module):
    """The direct form: repeat each pixel 2x2 when `upsample`, then a 'SAME' convolution."""

    features: int
    kernel_size: int
    upsample: bool = False
    sn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        if self.upsample:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        k = self.kernel_size
        kernel = normalized_param(self, "kernel", (k, k, x.shape[-1], self.features),
                                  nn.initializers.lecun_normal(), enabled=self.sn, update=train)
        y = lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)


class PlainGBlock(nn.Module):
    """G's up-block as the original wrote it: BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1x1."""

    features: int
    num_classes: int

    @nn.compact
    def __call__(self, x, labels, train=False):
        def bn(name):
            return ConditionalBatchNorm(self.num_classes, cbn_init="xavier", name=name)

        h = nn.relu(bn("bn1")(x, labels, train))
        h = PlainConv(self.features, 3, upsample=True, name="conv1")(h, train)
        h = nn.relu(bn("bn2")(h, labels, train))
        h = PlainConv(self.features, 3, name="conv2")(h, train)
        return h + PlainConv(self.features, 1, upsample=True, name="shortcut")(x, train)


def _random_biases(params, key):
    """Non-zero biases, so that the order of bias and repetition is checked too."""
    keys = iter(jax.random.split(key, len(jax.tree.leaves(params))))
    return jax.tree_util.tree_map_with_path(
        lambda path, v: jax.random.normal(next(keys), v.shape) if path[-1].key == "bias" else v, params)


def _train_pass(module, variables, *args):
    """The loss of a training pass (output . cotangent), with (output, new state) as aux."""
    mutable = [c for c in variables if c != "params"]

    def loss(params, x, cotangent):
        out, state = module.apply({**variables, "params": params}, x, *args, train=True, mutable=mutable)
        return jnp.sum(out.astype(jnp.float32) * cotangent), (out, state)

    return loss


def _run(module, variables, x, *args):
    """(output, new mutable state, parameter gradients, input gradient) of a training pass."""
    out_shape = jax.eval_shape(lambda: module.apply(variables, x, *args))
    cotangent = jax.random.normal(jax.random.key(7), out_shape.shape)
    grad_fn = jax.grad(_train_pass(module, variables, *args), argnums=(0, 1), has_aux=True)
    (g_params, g_x), (out, state) = grad_fn(variables["params"], x, cotangent)
    return np.asarray(out, np.float32), state, g_params, np.asarray(g_x)


def _assert_close(actual, desired, tol, per_leaf=True):
    """Elementwise within `tol` relative, with a floor of `tol` times the largest value
    of each leaf (`per_leaf`) or of the whole tree."""
    leaves = [np.asarray(d, np.float32) for d in jax.tree.leaves(desired)]
    largest = max(np.abs(d).max() for d in leaves)
    for a, d in zip(jax.tree.leaves(actual), leaves):
        floor = tol * (np.abs(d).max() if per_leaf else largest)
        np.testing.assert_allclose(np.asarray(a, np.float32), d, rtol=tol, atol=floor)


def _max_rel(a, b):
    return float(np.abs(np.asarray(a, np.float32) - b).max() / np.abs(b).max())


def _fast_and_plain(kernel_size, upsample, sn, dtype):
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 8))  # odd width: asymmetric padding shows
    fast = SNConv(12, kernel_size, sn=sn, dtype=dtype, upsample=upsample)
    plain = PlainConv(12, kernel_size, upsample=upsample, sn=sn, dtype=dtype)
    variables = fast.init({"params": jax.random.key(1)}, x)
    variables = {**variables, "params": _random_biases(variables["params"], jax.random.key(2))}
    return x, variables, _run(fast, variables, x), _run(plain, variables, x)


@pytest.mark.parametrize("kernel_size,upsample", [(3, True), (1, True), (1, False)])
@pytest.mark.parametrize("sn", [True, False])
def test_fast_conv_equals_direct_form_float32(kernel_size, upsample, sn):
    x, variables, fast, plain = _fast_and_plain(kernel_size, upsample, sn, jnp.float32)
    assert fast[0].shape == ((2, 12, 10, 12) if upsample else (2, 6, 5, 12))
    _assert_close(fast[0], plain[0], F32_TOL)
    # The SN state advanced identically (same weights, same power iteration).
    for a, b in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(plain[1])):
        np.testing.assert_array_equal(a, b)
    assert bool(fast[1]) == sn
    _assert_close(fast[2], plain[2], F32_TOL)  # parameter gradients, through SN when on
    _assert_close(fast[3], plain[3], F32_TOL)  # input gradient
    assert np.abs(fast[2]["kernel"]).max() > 0.1 and np.abs(fast[2]["bias"]).max() > 0.1


@pytest.mark.parametrize("kernel_size,upsample", [(3, True), (1, True), (1, False)])
@pytest.mark.parametrize("sn", [True, False])
def test_fast_conv_is_as_accurate_as_direct_form_bfloat16(kernel_size, upsample, sn):
    *_, fast, plain = _fast_and_plain(kernel_size, upsample, sn, jnp.bfloat16)
    *_, exact = _fast_and_plain(kernel_size, upsample, sn, jnp.float32)
    quantities = {"output": 0, "input gradient": 3, "kernel gradient": "kernel", "bias gradient": "bias"}
    for name, i in quantities.items():
        pick = (lambda r, i=i: r[i]) if isinstance(i, int) else (lambda r, i=i: r[2][i])
        fast_err, plain_err = (_max_rel(pick(r), np.asarray(pick(exact))) for r in (fast, plain))
        assert fast_err <= plain_err + BF16_SPACING, (name, fast_err, plain_err)
        # The bias gradient is a bf16 sum over every pixel, whose error grows with their
        # number in both forms; the other quantities have a few roundings each.
        if name != "bias gradient":
            assert fast_err < BF16_VS_F32, (name, fast_err)
    assert fast[2]["kernel"].dtype == jnp.float32  # parameters' gradients stay float32


@pytest.mark.parametrize("sn", [True, False])
def test_shortcut_repeats_after_the_conv_with_the_same_values(sn):
    """conv1x1 then repeat: the forward is that of repeat then conv1x1, to float32
    round-off (bit for bit with JAX 0.10; JAX 0.12's CPU matrix product blocks 4x the
    rows differently, 1 ulp)."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 3, 16))
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    after = SNConv(8, 1, sn=sn, upsample=True)
    before = SNConv(8, 1, sn=sn)
    variables = after.init({"params": jax.random.key(1)}, x)
    variables = {**variables, "params": _random_biases(variables["params"], jax.random.key(2))}
    for train in (False, True):
        a = after.apply(variables, x, train=train, mutable=[SN_COLLECTION])[0]
        b = before.apply(variables, up, train=train, mutable=[SN_COLLECTION])[0]
        np.testing.assert_allclose(a, b, rtol=F32_TOL, atol=F32_TOL * np.abs(b).max())


@pytest.mark.slow
def test_gblock_equals_the_direct_transcription():
    x = jax.random.normal(jax.random.key(0), (4, 4, 4, 16))
    labels = jnp.array([0, 2, 1, 2])
    fast = GBlock(8, SNConv, functools.partial(ConditionalBatchNorm, 3, cbn_init="xavier"))
    variables = fast.init({"params": jax.random.key(1)}, x, labels)
    variables = {**variables, "params": _random_biases(variables["params"], jax.random.key(2))}
    # The same variables fit the direct form: the fast form changed no name or shape.
    plain_shapes = jax.eval_shape(PlainGBlock(8, 3).init, {"params": jax.random.key(1)}, x, labels)
    assert jax.tree.map(lambda v: v.shape, plain_shapes) == jax.tree.map(jnp.shape, variables)
    out, state, g_params, g_x = _run(fast, variables, x, labels)
    ref_out, ref_state, ref_g_params, ref_g_x = _run(PlainGBlock(8, 3), variables, x, labels)
    assert out.shape == (4, 8, 8, 8)
    _assert_close(out, ref_out, F32_TOL)
    _assert_close(state, ref_state, F32_TOL)  # BN running statistics and SN vectors
    # conv1's bias gradient is zero but for round-off (bn2 removes the mean), so the
    # floor is set by the largest parameter gradient.
    _assert_close(g_params, ref_g_params, F32_TOL, per_leaf=False)
    assert np.abs(g_params["conv1"]["bias"]).max() < F32_TOL * np.abs(g_params["conv1"]["kernel"]).max()
    _assert_close(g_x, ref_g_x, F32_TOL)


def test_upsampling_conv_rejects_other_kernel_sizes():
    with pytest.raises(ValueError, match="only 1 and 3"):
        SNConv(4, 5, upsample=True).init({"params": jax.random.key(0)}, jnp.zeros((1, 4, 4, 2)))
