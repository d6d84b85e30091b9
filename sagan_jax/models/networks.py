"""`Generator` and `Discriminator` built from an architecture table.

An attention block follows the first block whose output resolution is listed in
`attention` (so D's 8x8 attention at 32 px follows the block after the optimized one,
as in docs/original.md).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagan_jax.models import layers
from sagan_jax.models.architectures import get_architecture, scale_channels
from sagan_jax.models.spectral_norm import SN_MODES, SNSettings


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
      sn_mode: 'standard' or 'original' spectral norm (see `spectral_norm`).
      sn_iters: power-iteration steps per training forward pass ('standard').
      sn_eps: numerical guard of SN ('standard').
      param_init: 'xavier' or 'original' initialisation (see `layers`).
      cbn_init: 'zeros' or 'xavier' conditional BN embeddings.
      bn_unbiased_var: BN running variances unbiased, as PyTorch keeps them.
    """

    resolution: int = 32
    num_classes: int = 0
    attention: Sequence[int] = (8,)
    sn: bool = True
    width: float = 1.0
    channels: int = 3
    z_dim: int = 128
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    sn_mode: str = "standard"
    sn_iters: int = 1
    sn_eps: float = 1e-12
    param_init: str = "xavier"
    cbn_init: str = "zeros"
    bn_unbiased_var: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        arch = get_architecture(self.resolution)
        sn_args = dict(sn_settings=SNSettings(self.sn_mode, self.sn_iters, self.sn_eps),
                       param_init=self.param_init, dtype=self.dtype)
        c0 = scale_channels(arch.g_base_channels, self.width)
        h = layers.SNDense(arch.g_base * arch.g_base * c0, sn=self.sn, name="dense", **sn_args)(z, train)
        h = h.reshape(z.shape[0], arch.g_base, arch.g_base, c0)
        pending_attention = set(self.attention)
        for i, out in enumerate(arch.g_blocks):
            h = layers.GBlock(
                scale_channels(out, self.width), num_classes=self.num_classes, sn=self.sn,
                cbn_init=self.cbn_init, bn_axis_name=self.bn_axis_name,
                bn_unbiased_var=self.bn_unbiased_var, name=f"block{i}", **sn_args,
            )(h, labels, train)
            if h.shape[1] in pending_attention:
                pending_attention.discard(h.shape[1])
                h = layers.SelfAttention(sn=self.sn, name=f"attention{i}", **sn_args)(h, train)
        h = layers.ConditionalBatchNorm(
            self.num_classes, self.bn_axis_name, self.dtype, self.cbn_init, self.bn_unbiased_var,
            name="bn_out",
        )(h, labels, train)
        h = layers.SNConv(
            self.channels, 3, sn=self.sn and arch.g_out_sn, name="conv_out", **sn_args
        )(nn.relu(h), train)
        return jnp.tanh(h.astype(jnp.float32))


class Discriminator(nn.Module):
    """SNGAN-ResNet discriminator with self-attention and a projection head.

    Attributes:
      resolution: key of the architecture table.
      num_classes: classes of the projection term; 0 = unconditional.
      attention: resolutions after which an attention block runs (empty = none).
      width: channel multiplier.
      channels: image channels (1 or 3).
      dtype: compute dtype; parameters and the logits are float32.
      sn_mode: 'standard' or 'original' spectral norm (see `spectral_norm`).
      sn_iters: power-iteration steps per training forward pass ('standard').
      sn_eps: numerical guard of SN ('standard').
      param_init: 'xavier' or 'original' initialisation (see `layers`).
    """

    resolution: int = 32
    num_classes: int = 0
    attention: Sequence[int] = (8,)
    width: float = 1.0
    channels: int = 3
    dtype: Any = jnp.float32
    sn_mode: str = "standard"
    sn_iters: int = 1
    sn_eps: float = 1e-12
    param_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        arch = get_architecture(self.resolution)
        sn_settings = SNSettings(self.sn_mode, self.sn_iters, self.sn_eps)
        sn_args = dict(sn_settings=sn_settings, param_init=self.param_init, dtype=self.dtype)
        h = x.astype(self.dtype)
        pending_attention = set(self.attention)
        for i, (out, down) in enumerate(arch.d_blocks):
            h = layers.DBlock(
                scale_channels(out, self.width), downsample=down, optimized=i == 0,
                name=f"block{i}", **sn_args,
            )(h, train)
            if h.shape[1] in pending_attention:
                pending_attention.discard(h.shape[1])
                h = layers.SelfAttention(name=f"attention{i}", **sn_args)(h, train)
        # Global SUM pooling, as in SNGAN (not a mean).
        features = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
        # D's penultimate features, for the class-wise collapse check without Inception
        # (read with `mutable=["intermediates"]`).
        self.sow("intermediates", "features", features)
        logits = layers.SNDense(
            1, sn=arch.d_out_sn, sn_settings=sn_settings, param_init=self.param_init, name="dense_out"
        )(features, train)[:, 0]
        if self.num_classes > 0:
            embed = layers.SNEmbed(
                self.num_classes, features.shape[-1], sn_settings=sn_settings, param_init=self.param_init,
                name="embed",
            )(labels, train)
            logits = logits + jnp.sum(features * embed, axis=-1)
        return logits


def build_models(model_cfg: Any, num_classes: int, channels: int,
                 bn_axis_name: Optional[str] = None) -> tuple[Generator, Discriminator]:
    """G and D from a `model` config section (see configs/ and the README).

    Args:
      model_cfg: has resolution, width, z_dim, conditional, g_attention, d_attention,
        g_sn, dtype ('float32' or 'bfloat16'), sn_mode ('standard' or 'original'),
        sn_iters, sn_eps, init ('xavier' or 'original'), cbn_init ('zeros' or 'xavier'),
        bn_unbiased_var (False when absent: configs written before it).
      num_classes: classes of the dataset (used when `model_cfg.conditional`).
      channels: image channels.
      bn_axis_name: mesh axis for synced BN statistics, or None.

    Raises:
      ValueError: an unknown sn_mode, init or cbn_init, or sn_iters other than 1 with
        the original SN.
    """
    for field, allowed in (("sn_mode", SN_MODES), ("init", layers.INITS), ("cbn_init", layers.CBN_INITS)):
        if getattr(model_cfg, field) not in allowed:
            raise ValueError(f"unknown model.{field} {getattr(model_cfg, field)!r}; "
                             f"set it to one of {allowed}.")
    SNSettings(model_cfg.sn_mode, model_cfg.sn_iters, model_cfg.sn_eps)  # fails early, clearly
    n = num_classes if model_cfg.conditional else 0
    common = functools.partial(
        dict, resolution=model_cfg.resolution, num_classes=n, width=model_cfg.width,
        channels=channels, dtype=jnp.dtype(model_cfg.dtype), sn_mode=model_cfg.sn_mode,
        sn_iters=model_cfg.sn_iters, sn_eps=model_cfg.sn_eps, param_init=model_cfg.init,
    )
    g = Generator(**common(attention=tuple(model_cfg.g_attention), sn=model_cfg.g_sn,
                           z_dim=model_cfg.z_dim, bn_axis_name=bn_axis_name,
                           cbn_init=model_cfg.cbn_init,
                           bn_unbiased_var=bool(model_cfg.get("bn_unbiased_var", False))))
    d = Discriminator(**common(attention=tuple(model_cfg.d_attention)))
    return g, d
