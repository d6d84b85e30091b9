"""Layers of the SNGAN-ResNet + self-attention networks (see shared/SEED.md).

Every layer takes `train` at call time: in training the SN power iteration advances
and BatchNorm uses (and records) batch statistics, as in the original PyTorch code.
Parameters are float32; `dtype` is the compute dtype (bfloat16 for mixed precision).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagan_jax.models.spectral_norm import normalized_param

Dtype = Any
# Xavier-uniform weights and zero biases, as in the original.
weight_init = nn.initializers.xavier_uniform()


class SNDense(nn.Module):
    """Dense layer with optional spectral normalization of its kernel."""

    features: int
    use_bias: bool = True
    sn: bool = True
    sn_iters: int = 1
    sn_eps: float = 1e-12
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = normalized_param(
            self, "kernel", (x.shape[-1], self.features), weight_init,
            enabled=self.sn, update=train, n_iters=self.sn_iters, eps=self.sn_eps,
        )
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class SNConv(nn.Module):
    """Stride-1 'SAME' convolution (NHWC) with optional spectral normalization."""

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    sn: bool = True
    sn_iters: int = 1
    sn_eps: float = 1e-12
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k = self.kernel_size
        kernel = normalized_param(
            self, "kernel", (k, k, x.shape[-1], self.features), weight_init,
            enabled=self.sn, update=train, n_iters=self.sn_iters, eps=self.sn_eps,
        )
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class SNEmbed(nn.Module):
    """Class embedding (bias-free linear map of the one-hot label), optionally SN'd."""

    num_embeddings: int
    features: int
    sn: bool = True
    sn_iters: int = 1
    sn_eps: float = 1e-12
    embedding_init: Any = weight_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array, train: bool = False) -> jax.Array:
        table = normalized_param(
            self, "embedding", (self.num_embeddings, self.features), self.embedding_init,
            enabled=self.sn, update=train, n_iters=self.sn_iters, eps=self.sn_eps,
        )
        return jnp.take(table, labels, axis=0).astype(self.dtype)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm, class-conditional when `num_classes` > 0.

    Conditional: BN without affine, then `gamma = 1 + E_g(y)`, `beta = E_b(y)` with
    bias-free embeddings initialised at zero (plain BN at the start of training).
    Unconditional: BN with its own affine. eps 1e-4 and PyTorch momentum 0.1 as in the
    original (Flax's `momentum` is the running average's decay, hence 0.9).
    `axis_name` syncs batch statistics across replicas.
    """

    num_classes: int = 0
    axis_name: Optional[str] = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, labels: Optional[jax.Array], train: bool = False) -> jax.Array:
        conditional = self.num_classes > 0
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-4,
            use_bias=not conditional, use_scale=not conditional,
            axis_name=self.axis_name if train else None, dtype=jnp.float32, name="bn",
        )(x.astype(jnp.float32))
        if conditional:
            c = x.shape[-1]
            embed = functools.partial(
                SNEmbed, self.num_classes, c, sn=False, embedding_init=nn.initializers.zeros
            )
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
    beta . g). All four convs are SN'd and have biases (SEED.md).
    """

    sn_iters: int = 1
    sn_eps: float = 1e-12
    sn: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        conv = functools.partial(
            SNConv, kernel_size=1, sn=self.sn, sn_iters=self.sn_iters, sn_eps=self.sn_eps,
            dtype=self.dtype,
        )
        theta = conv(c // 8, name="theta")(x, train).reshape(b, h * w, c // 8)
        phi = _max_pool2(conv(c // 8, name="phi")(x, train)).reshape(b, h * w // 4, c // 8)
        g = _max_pool2(conv(c // 2, name="g")(x, train)).reshape(b, h * w // 4, c // 2)
        logits = jnp.einsum("bqc,bkc->bqk", theta, phi).astype(jnp.float32)
        beta = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        o = jnp.einsum("bqk,bkc->bqc", beta, g).reshape(b, h, w, c // 2)
        o = conv(c, name="o")(o, train)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return x + gamma.astype(self.dtype) * o


def _upsample2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool2(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class GBlock(nn.Module):
    """G residual block: BN-ReLU-up-conv3-BN-ReLU-conv3 + (up, conv1x1) shortcut."""

    features: int
    upsample: bool = True
    num_classes: int = 0
    sn: bool = True
    sn_iters: int = 1
    sn_eps: float = 1e-12
    bn_axis_name: Optional[str] = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, labels: Optional[jax.Array], train: bool = False) -> jax.Array:
        conv = functools.partial(
            SNConv, self.features, sn=self.sn, sn_iters=self.sn_iters, sn_eps=self.sn_eps,
            dtype=self.dtype,
        )
        bn = functools.partial(
            ConditionalBatchNorm, self.num_classes, self.bn_axis_name, self.dtype
        )
        h = nn.relu(bn(name="bn1")(x, labels, train))
        if self.upsample:
            h = _upsample2(h)
        h = conv(3, name="conv1")(h, train)
        h = nn.relu(bn(name="bn2")(h, labels, train))
        h = conv(3, name="conv2")(h, train)
        shortcut = _upsample2(x) if self.upsample else x
        if self.upsample or x.shape[-1] != self.features:
            shortcut = conv(1, name="shortcut")(shortcut, train)
        return h + shortcut


class DBlock(nn.Module):
    """D residual block.

    Ordinary: ReLU-conv3-ReLU-conv3-(avgpool2) + conv1x1-(avgpool2) shortcut (the conv
    only when channels change or it downsamples). Optimized (the first block): conv3-
    ReLU-conv3-avgpool2 + avgpool2-conv1x1 shortcut.
    """

    features: int
    downsample: bool = True
    optimized: bool = False
    sn_iters: int = 1
    sn_eps: float = 1e-12
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(
            SNConv, self.features, sn_iters=self.sn_iters, sn_eps=self.sn_eps, dtype=self.dtype
        )
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
