"""`Generator` and `Discriminator` built from an architecture table.

An attention block follows the first block whose output resolution is listed in
`attention` (so D's 8x8 attention at 32 px follows the block after the optimized one,
as in docs/original.md).

Each network binds its switches (spectral norm, initialisation, dtype, and G's batch
norm) into layer factories once, `dense`, `conv`, `embed` and `norm`, and hands those to
its blocks, as flax's ImageNet ResNet passes `conv` and `norm`. The defaults are those
of `configs/common.py`; `build_models` checks a config's switches, once.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagan_jax.models import layers
from sagan_jax.models.architectures import get_architecture, scale_channels
from sagan_jax.models.spectral_norm import SNSettings

DTYPES = ("float32", "bfloat16")
# G's last BN: conditional on the class, as every block's, or plain BN with its own
# affine (the SAGAN paper's official code).
G_OUT_BNS = ("conditional", "plain")


def _sn_layers(sn_settings: SNSettings, param_init: str, dtype: Any) -> tuple[layers.ModuleDef, ...]:
    """`SNDense`, `SNConv` and `SNEmbed` with a network's switches bound."""
    return tuple(functools.partial(cls, sn_settings=sn_settings, param_init=param_init, dtype=dtype)
                 for cls in (layers.SNDense, layers.SNConv, layers.SNEmbed))


class Generator(nn.Module):
    """SNGAN-ResNet generator with self-attention.

    Attributes:
      resolution: key of the architecture table (16, 32, 48, 96, 128).
      num_classes: classes for conditional BN; 0 = unconditional.
      attention: resolutions after which an attention block runs (empty = none).
      sn: spectral normalization in G (SAGAN: yes; SNGAN: no).
      width: channel multiplier (tiny widths for tests).
      channels: image channels (1 or 3).
      z_dim: latent size.
      dtype: compute dtype; parameters stay float32 and the image comes out float32.
      bn_axis_name: mesh axis to sync BN statistics over (None = per replica).
      sn_settings: the spectral norm's mode, power steps and eps (see `spectral_norm`).
      param_init: 'xavier' or 'original' initialisation (see `layers`).
      cbn_init: 'zeros' or 'xavier' conditional BN embeddings.
      bn_unbiased_var: BN running variances unbiased, as PyTorch keeps them.
      attention_bias: the attention blocks' 1x1 convs have biases.
      out_bn: the last BN, 'conditional' (with `num_classes` > 0) or 'plain'.
    """

    resolution: int = 32
    num_classes: int = 0
    attention: Sequence[int] = ()
    sn: bool = True
    width: float = 1.0
    channels: int = 3
    z_dim: int = 128
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    sn_settings: SNSettings = SNSettings()
    param_init: str = "xavier"
    cbn_init: str = "zeros"
    bn_unbiased_var: bool = False
    attention_bias: bool = True
    out_bn: str = "conditional"

    @nn.compact
    def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        arch = get_architecture(self.resolution)
        dense, conv, _ = (functools.partial(f, sn=self.sn)
                          for f in _sn_layers(self.sn_settings, self.param_init, self.dtype))
        norm = functools.partial(
            layers.ConditionalBatchNorm, num_classes=self.num_classes, axis_name=self.bn_axis_name,
            dtype=self.dtype, cbn_init=self.cbn_init, unbiased_var=self.bn_unbiased_var,
        )
        c0 = scale_channels(arch.g_base_channels, self.width)
        h = dense(arch.g_base * arch.g_base * c0, name="dense")(z, train)
        h = h.reshape(z.shape[0], arch.g_base, arch.g_base, c0)
        pending_attention = set(self.attention)
        for i, out in enumerate(arch.g_blocks):
            block = layers.GBlock(scale_channels(out, self.width), conv, norm, name=f"block{i}")
            h = block(h, labels, train)
            if h.shape[1] in pending_attention:
                pending_attention.discard(h.shape[1])
                h = layers.SelfAttention(conv, self.attention_bias, name=f"attention{i}")(h, train)
        out_norm = norm if self.out_bn == "conditional" else functools.partial(norm, num_classes=0)
        h = out_norm(name="bn_out")(h, labels, train)
        h = conv(self.channels, 3, sn=self.sn and arch.g_out_sn, name="conv_out")(nn.relu(h), train)
        return jnp.tanh(h.astype(jnp.float32))


class Discriminator(nn.Module):
    """SNGAN-ResNet discriminator with self-attention and a projection head.

    Attributes:
      resolution: key of the architecture table.
      num_classes: classes of the projection term; 0 = unconditional.
      attention: resolutions after which an attention block runs (empty = none).
      width: channel multiplier.
      channels: image channels (1 or 3).
      dtype: compute dtype of the blocks; parameters, the head and the logits are float32.
      sn_settings: the spectral norm's mode, power steps and eps (see `spectral_norm`).
      param_init: 'xavier' or 'original' initialisation (see `layers`).
      attention_bias: the attention blocks' 1x1 convs have biases.
    """

    resolution: int = 32
    num_classes: int = 0
    attention: Sequence[int] = ()
    width: float = 1.0
    channels: int = 3
    dtype: Any = jnp.float32
    sn_settings: SNSettings = SNSettings()
    param_init: str = "xavier"
    attention_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        arch = get_architecture(self.resolution)
        dense, conv, embed = _sn_layers(self.sn_settings, self.param_init, self.dtype)
        h = x.astype(self.dtype)
        pending_attention = set(self.attention)
        for i, (out, down) in enumerate(arch.d_blocks):
            h = layers.DBlock(scale_channels(out, self.width), conv, downsample=down, optimized=i == 0,
                              name=f"block{i}")(h, train)
            if h.shape[1] in pending_attention:
                pending_attention.discard(h.shape[1])
                h = layers.SelfAttention(conv, self.attention_bias, name=f"attention{i}")(h, train)
        # Global SUM pooling, as in SNGAN (not a mean).
        features = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
        # D's penultimate features, for the class-wise collapse check without Inception
        # (read with `mutable=["intermediates"]`).
        self.sow("intermediates", "features", features)
        logits = dense(1, sn=arch.d_out_sn, dtype=jnp.float32, name="dense_out")(features, train)[:, 0]
        if self.num_classes > 0:
            table = embed(self.num_classes, features.shape[-1], dtype=jnp.float32, name="embed")
            logits = logits + jnp.sum(features * table(labels, train), axis=-1)
        return logits


def build_models(model_cfg: Any, num_classes: int, channels: int,
                 bn_axis_name: Optional[str] = None) -> tuple[Generator, Discriminator]:
    """G and D from a `model` config section (see configs/ and the README).

    The one place where the config's layer switches are checked.

    Args:
      model_cfg: has resolution, width, z_dim, conditional, g_attention, d_attention,
        g_sn, dtype ('float32' or 'bfloat16'), sn_mode ('standard' or 'original'),
        sn_iters, sn_eps, init ('xavier' or 'original'), cbn_init ('zeros' or 'xavier'),
        bn_unbiased_var, attention_bias (True or False) and g_out_bn ('conditional' or
        'plain'); the last three take their defaults (False, True, 'conditional') when
        absent: configs written before them.
      num_classes: classes of the dataset (used when `model_cfg.conditional`).
      channels: image channels.
      bn_axis_name: mesh axis for synced BN statistics, or None.

    Raises:
      ValueError: an unknown dtype, sn_mode, init, cbn_init or g_out_bn, an
        attention_bias other than True or False, or sn_iters other than 1 with the
        original SN, in one line.
    """
    attention_bias = model_cfg.get("attention_bias", True)
    g_out_bn = model_cfg.get("g_out_bn", "conditional")
    for field, value, allowed in (("dtype", model_cfg.dtype, DTYPES), ("init", model_cfg.init, layers.INITS),
                                  ("cbn_init", model_cfg.cbn_init, layers.CBN_INITS),
                                  ("g_out_bn", g_out_bn, G_OUT_BNS)):
        if value not in allowed:
            raise ValueError(f"unknown model.{field} {value!r}; set it to one of {allowed}.")
    if not isinstance(attention_bias, bool):
        raise ValueError(f"model.attention_bias is {attention_bias!r}; set it to True or False.")
    common = dict(
        resolution=model_cfg.resolution, num_classes=num_classes if model_cfg.conditional else 0,
        width=model_cfg.width, channels=channels, dtype=jnp.dtype(model_cfg.dtype),
        sn_settings=SNSettings(model_cfg.sn_mode, model_cfg.sn_iters, model_cfg.sn_eps),
        param_init=model_cfg.init, attention_bias=attention_bias,
    )
    g = Generator(attention=tuple(model_cfg.g_attention), sn=model_cfg.g_sn, z_dim=model_cfg.z_dim,
                  bn_axis_name=bn_axis_name, cbn_init=model_cfg.cbn_init,
                  bn_unbiased_var=bool(model_cfg.get("bn_unbiased_var", False)), out_bn=g_out_bn,
                  **common)
    d = Discriminator(attention=tuple(model_cfg.d_attention), **common)
    return g, d
