"""Layers of the SNGAN-ResNet + self-attention networks (see docs/original.md).

Every layer takes `train` at call time: in training BatchNorm uses (and records) batch
statistics, as in the original PyTorch code, and the standard SN's power iteration
advances (the original's SN never does, see `spectral_norm`). Parameters are float32;
`dtype` is the compute dtype (bfloat16 for mixed precision).

Initialisation (`param_init`; `model.init` in the config):
- 'xavier' (ours): Xavier-uniform kernels and embeddings, zero biases.
- 'original': what the original code ended up with. Its Xavier initialiser never
  reached the SN'd layers, so conv and dense kernels keep PyTorch's default for
  `Conv2d` / `Linear`, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) with fan_in =
  in * kh * kw, and their biases are zero; the layers without SN keep PyTorch's whole
  default, bias U(+-1/sqrt(fan_in)) included. D's projection embedding is the original's
  `SNLinear(K, C, bias=False)` of the one-hot label, so it gets `Linear`'s default
  U(+-1/sqrt(K)) for K classes (see `SNEmbed` for its spectral norm).
The conditional BN embeddings have their own switch (`cbn_init`): 'zeros' (plain BN at
the start) or 'xavier' (the original's, so gamma = 1 + E_g(y) != 1 at the start).

The switches are the fields of the leaf layers (`SNDense`, `SNConv`, `SNEmbed`,
`ConditionalBatchNorm`); the blocks take those layers as module factories (`conv`,
`norm`) with the switches already bound, as flax's ResNet passes `conv` and `norm`.
The switches are checked once, where a config becomes modules (`networks.build_models`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagan_jax.models.spectral_norm import SNSettings, normalized_param

Dtype = Any
# A layer class, or a `functools.partial` of one with some fields bound.
ModuleDef = Callable[..., nn.Module]
INITS = ("xavier", "original")
CBN_INITS = ("zeros", "xavier")
_KERNEL_INITS = {
    "xavier": nn.initializers.xavier_uniform(),
    # PyTorch's kaiming_uniform(a=sqrt(5)): bound sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in).
    "original": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
}
_EMBEDDING_INITS = {
    "xavier": nn.initializers.xavier_uniform(),
    # The table (K, C) is the transpose of the original's Linear(K -> C) weight (C, K):
    # fan_in = K, axis 0.
    "original": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=0, out_axis=1),
    "zeros": nn.initializers.zeros,
}


def _bias_init(init: str, sn: bool, fan_in: int) -> Callable[..., jax.Array]:
    """Zero, except PyTorch's default U(+-1/sqrt(fan_in)) for 'original' layers without SN."""
    if init == "original" and not sn:
        bound = fan_in ** -0.5
        return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    return nn.initializers.zeros


class SNDense(nn.Module):
    """Dense layer with optional spectral normalization of its kernel."""

    features: int
    use_bias: bool = True
    sn: bool = True
    sn_settings: SNSettings = SNSettings()
    param_init: str = "xavier"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = normalized_param(
            self, "kernel", (fan_in, self.features), _KERNEL_INITS[self.param_init],
            enabled=self.sn, update=train, settings=self.sn_settings,
        )
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", _bias_init(self.param_init, self.sn, fan_in), (self.features,))
            y = y + bias.astype(self.dtype)
        return y


class SNConv(nn.Module):
    """Stride-1 'SAME' convolution (NHWC) with optional spectral normalization.

    `upsample`: the input is first enlarged 2x by repeating each pixel (nearest
    neighbour), as in G's up-blocks; the result is that of the convolution of the
    enlarged input, computed at the input's resolution (see `_conv3_of_upsampled`; a
    1x1 conv is applied before the repetition, which gives the same values up to float32
    round-off: measured on this 2-core CPU, bit for bit with JAX 0.10, while JAX 0.12's
    matrix product, blocking the 4x rows differently, was 1 ulp off at some shapes).
    1x1 convolutions are matrix products (`einsum`): the same values up to round-off,
    and XLA:CPU ran them, gradients included, about twice as fast as convolutions
    (benchmarks/RESULTS.md).
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    sn: bool = True
    sn_settings: SNSettings = SNSettings()
    param_init: str = "xavier"
    dtype: Dtype = jnp.float32
    upsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k = self.kernel_size
        if self.upsample and k not in (1, 3):
            raise ValueError(f"SNConv(upsample=True) has kernel_size {k}; only 1 and 3 are implemented.")
        kernel = normalized_param(
            self, "kernel", (k, k, x.shape[-1], self.features),
            _KERNEL_INITS[self.param_init],
            enabled=self.sn, update=train, settings=self.sn_settings,
        )
        x = x.astype(self.dtype)
        if k == 1:
            # Accumulated in float32, as XLA's convolutions do (newer JAX would otherwise
            # sum bf16 products in bf16, forward and backward).
            y = jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0].astype(self.dtype),
                           preferred_element_type=jnp.float32).astype(self.dtype)
        elif self.upsample:
            y = _conv3_of_upsampled(x, kernel, self.dtype)
        else:
            y = _conv(x, kernel.astype(self.dtype), "SAME")
        if self.use_bias:
            fan_in = k * k * x.shape[-1]
            bias = self.param("bias", _bias_init(self.param_init, self.sn, fan_in), (self.features,))
            y = y + bias.astype(self.dtype)
        if self.upsample and k == 1:
            # Each output pixel is the same dot product either way, so repeating after
            # the conv and bias gives the same values (up to the matrix product's
            # blocking) at a quarter of the work.
            y = _upsample2(y)
        return y


def _conv(x: jax.Array, kernel: jax.Array, padding: Any) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv3_of_upsampled(x: jax.Array, kernel: jax.Array, dtype: Dtype) -> jax.Array:
    """`conv3x3(_upsample2(x))` ('SAME') as four 2x2 convolutions of `x` ("sub-pixel").

    Output row 2i + a of the 3x3 conv of the enlarged input reads enlarged rows 2i + a - 1,
    2i + a, 2i + a + 1, i.e. input rows (i - 1, i, i) for a = 0 and (i, i, i + 1) for
    a = 1; the kernel rows that meet the same input row are summed: (w0, w1 + w2) on
    rows (i - 1, i) and (w0 + w1, w2) on rows (i, i + 1), with zero padding where the
    enlarged input's padding was. Columns likewise. The four output phases (a, b) are
    2x2 convs of `x` at its resolution, interleaved: 16 instead of 36 multiply-adds per
    input pixel and channel pair, and no enlarged input to read or (in the backward
    pass) to sum back. The values equal the direct form up to round-off.

    Args:
      x: NHWC input in the compute dtype.
      kernel: float32 (3, 3, in, out); the taps are summed in float32 and rounded to
        `dtype` once.
      dtype: the compute dtype.

    Returns:
      NHWC, twice the height and width of `x`.
    """
    def fold(w, axis):  # (3 taps) -> the 2-tap kernels of phases 0 and 1 along `axis`
        t = [jnp.take(w, i, axis=axis) for i in range(3)]
        return jnp.stack([t[0], t[1] + t[2]], axis), jnp.stack([t[0] + t[1], t[2]], axis)

    rows = fold(kernel, 0)
    phases = [[_conv(x, cols.astype(dtype), ((1 - a, a), (1 - b, b)))
               for b, cols in enumerate(fold(rows[a], 1))] for a in range(2)]
    y = jnp.stack([jnp.stack(row, 3) for row in phases], 2)  # (n, h, a, w, b, c)
    n, h, _, w, _, c = y.shape
    return y.reshape(n, 2 * h, 2 * w, c)


class SNEmbed(nn.Module):
    """Class embedding (bias-free linear map of the one-hot label), optionally SN'd.

    The (num, features) table is the linear map's kernel: row k is the map of class k's
    one-hot label. Spectral norm reads it in one of two ways, by `sn_settings.mode`:
    - 'standard': as PyTorch's SN'd `nn.Embedding(num, features)`, `u` over the classes;
    - 'original': as the original's `SNLinear(num, features, bias=False)`, whose weight
      (features, num) is the table's transpose, `u` over the features (C).
    `param_init`: 'xavier', 'original' (`Linear`'s U(+-1/sqrt(num))) or 'zeros'.
    `labels` are int class indices (n,), or float class weights (n, num_embeddings),
    which give the same weighted mix of rows as the linear map of a mixed one-hot label
    (class interpolations).
    """

    num_embeddings: int
    features: int
    sn: bool = True
    sn_settings: SNSettings = SNSettings()
    param_init: str = "xavier"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array, train: bool = False) -> jax.Array:
        table = normalized_param(
            self, "embedding", (self.num_embeddings, self.features),
            _EMBEDDING_INITS[self.param_init],
            enabled=self.sn, update=train, settings=self.sn_settings,
            out_axis=-1 if self.sn_settings.mode == "original" else 0,
        )
        if jnp.issubdtype(labels.dtype, jnp.floating):
            return jnp.dot(labels, table, precision=jax.lax.Precision.HIGHEST).astype(self.dtype)
        return jnp.take(table, labels, axis=0).astype(self.dtype)


class _BatchNorm(nn.BatchNorm):
    """Flax's BatchNorm, optionally keeping PyTorch's unbiased running variance.

    PyTorch's BN records the batch variance times n / (n - 1) (n values per channel, over
    every replica when the statistics are synced) in its running variance, while
    normalising with the biased one, as Flax does. Only eval-mode outputs can differ.
    """

    unbiased_var: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
        training = not nn.merge_param("use_running_average", self.use_running_average,
                                      use_running_average)
        if not (self.unbiased_var and training) or self.is_initializing():
            return super().__call__(x, use_running_average)
        previous = self.get_variable("batch_stats", "var")
        y = super().__call__(x, use_running_average)
        axes = tuple(range(x.ndim - 1))
        n = x.size // x.shape[-1]
        mean = jnp.mean(x, axes)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
        var = jnp.mean(jnp.square(x - mean), axes)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
            n = n * jax.lax.psum(1, self.axis_name)
        self.put_variable("batch_stats", "var",
                          self.momentum * previous + (1 - self.momentum) * var * (n / (n - 1)))
        return y


class ConditionalBatchNorm(nn.Module):
    """BatchNorm, class-conditional when `num_classes` > 0.

    Conditional (the original's): BN without affine, eps 1e-4, then `gamma = 1 +
    E_g(y)`, `beta = E_b(y)` with bias-free embeddings initialised by `cbn_init`
    ('zeros': plain BN at the start; 'xavier': Xavier-uniform, the original's).
    Unconditional: BN with its own affine and PyTorch's default eps 1e-5, as the
    original's unconditional runs. Momentum is PyTorch's 0.1 in both (Flax's `momentum`
    is the running average's decay, hence 0.9). `axis_name` syncs batch statistics
    across replicas. `unbiased_var`: the running variance records PyTorch's unbiased
    batch variance (only eval-mode outputs change; the original's IS came from them).
    """

    num_classes: int = 0
    axis_name: Optional[str] = None
    dtype: Dtype = jnp.float32
    cbn_init: str = "zeros"
    unbiased_var: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, labels: Optional[jax.Array], train: bool = False) -> jax.Array:
        conditional = self.num_classes > 0
        x = _BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-4 if conditional else 1e-5,
            use_bias=not conditional, use_scale=not conditional,
            axis_name=self.axis_name if train else None, dtype=jnp.float32,
            unbiased_var=self.unbiased_var, name="bn",
        )(x.astype(jnp.float32))
        if conditional:
            embed = functools.partial(SNEmbed, self.num_classes, x.shape[-1], sn=False, param_init=self.cbn_init)
            gamma = 1.0 + embed(name="gamma")(labels)
            beta = embed(name="beta")(labels)
            x = x * gamma[:, None, None, :] + beta[:, None, None, :]
        return x.astype(self.dtype)


def _max_pool2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class SelfAttention(nn.Module):
    """BigGAN-style self-attention block: `x + gamma * o`, gamma starting at 0.

    theta = conv1x1(C -> C/8); phi = maxpool2(conv1x1(C -> C/8)); g = maxpool2(conv1x1(
    C -> C/2)); beta = softmax over the HW/4 keys of theta . phi^T; o = conv1x1(C/2 -> C)(
    beta . g). All four convs are SN'd; they have biases as in the original
    (docs/original.md), or none as in the SAGAN paper's official TF code (`use_bias`).
    The softmax is computed in float32, the rest in the dtype of `x` (the network's
    compute dtype).

    Attributes:
      conv: the network's `SNConv` factory (SN, initialisation and dtype bound).
      use_bias: the four 1x1 convs have biases.
    """

    conv: ModuleDef
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        conv = functools.partial(self.conv, kernel_size=1, use_bias=self.use_bias)
        theta = conv(c // 8, name="theta")(x, train).reshape(b, h * w, c // 8)
        phi = _max_pool2(conv(c // 8, name="phi")(x, train)).reshape(b, h * w // 4, c // 8)
        g = _max_pool2(conv(c // 2, name="g")(x, train)).reshape(b, h * w // 4, c // 2)
        logits = jnp.einsum("bqc,bkc->bqk", theta, phi).astype(jnp.float32)
        beta = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
        o = jnp.einsum("bqk,bkc->bqc", beta, g).reshape(b, h, w, c // 2)
        o = conv(c, name="o")(o, train)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return x + gamma.astype(x.dtype) * o


def _upsample2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool2(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class GBlock(nn.Module):
    """G residual block: BN-ReLU-up-conv3-BN-ReLU-conv3 + (up, conv1x1) shortcut.

    The upsampling is done inside the two convs that follow it (`SNConv.upsample`), at
    the input's resolution.

    Attributes:
      features: output channels.
      conv: the network's `SNConv` factory (SN, initialisation and dtype bound).
      norm: the network's `ConditionalBatchNorm` factory (classes, BN axis, dtype,
        embedding initialisation and running variance bound).
      upsample: doubles the height and width.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    upsample: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, labels: Optional[jax.Array], train: bool = False) -> jax.Array:
        conv = functools.partial(self.conv, self.features)
        h = nn.relu(self.norm(name="bn1")(x, labels, train))
        h = conv(3, upsample=self.upsample, name="conv1")(h, train)
        h = nn.relu(self.norm(name="bn2")(h, labels, train))
        h = conv(3, name="conv2")(h, train)
        shortcut = x
        if self.upsample or x.shape[-1] != self.features:
            shortcut = conv(1, upsample=self.upsample, name="shortcut")(x, train)
        return h + shortcut


class DBlock(nn.Module):
    """D residual block.

    Ordinary: ReLU-conv3-ReLU-conv3-(avgpool2) + conv1x1-(avgpool2) shortcut (the conv
    only when channels change or it downsamples). Optimized (the first block): conv3-
    ReLU-conv3-avgpool2 + avgpool2-conv1x1 shortcut.

    Attributes:
      features: output channels.
      conv: the network's `SNConv` factory (SN, initialisation and dtype bound).
      downsample: halves the height and width.
      optimized: the first block's form.
    """

    features: int
    conv: ModuleDef
    downsample: bool = True
    optimized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(self.conv, self.features)
        h = x if self.optimized else nn.relu(x)
        h = conv(3, name="conv1")(h, train)
        h = conv(3, name="conv2")(nn.relu(h), train)
        if self.downsample:
            h = _avg_pool2(h)
        if self.optimized:
            shortcut = conv(1, name="shortcut")(_avg_pool2(x), train)
        elif self.downsample or x.shape[-1] != self.features:
            shortcut = conv(1, name="shortcut")(x, train)
            if self.downsample:
                shortcut = _avg_pool2(shortcut)
        else:
            shortcut = x
        return h + shortcut
