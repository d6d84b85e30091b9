"""The GAN of a config, built once: G, D, their optimizers, the label count and the noise.

    gan = gan_lib.build(config, num_classes=ds.num_classes, channels=ds.channels)

The train step, generation for scores, sample grids, the training loop and the scoring
CLI all take this one object, so the config is read in one place: which classes the
networks are conditioned on, the learning rates after batch-size scaling, and how `z`
and fake labels are drawn.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sagan_jax import parallel
from sagan_jax.models import Discriminator, Generator, build_models


@dataclasses.dataclass(frozen=True)
class GAN:
    """G and D with their optimizers.

    Attributes:
      generator: G (its BN statistics synced over `parallel.DATA_AXIS` with `bn_sync`).
      discriminator: D.
      g_tx, d_tx: Adam of G and D at the scaled learning rates.
      g_lr, d_lr: those learning rates.
      num_classes: the classes G and D are conditioned on; 0 = unconditional.
    """

    generator: Generator
    discriminator: Discriminator
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    g_lr: float
    d_lr: float
    num_classes: int

    @property
    def z_dim(self) -> int:
        return self.generator.z_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of G's images and D's inputs."""
        size = self.generator.resolution
        return size, size, self.generator.channels

    def noise(self, key: jax.Array, indices: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """`z ~ N(0, I)` and uniform fake labels, one draw per example index.

        Each example's draw depends only on `key` and its index, so a batch split over
        any number of devices (each passing its global indices), a sample grid and a
        scoring batch all see the same `z` for the same key and index.

        Args:
          key: the key of this draw.
          indices: int32 [n], the examples' (global) indices.

        Returns:
          `(z float32 [n, z_dim], labels int32 [n] or None when unconditional)`.
        """
        keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(indices)
        z = jax.vmap(lambda k: jax.random.normal(k, (self.z_dim,), jnp.float32))(keys[:, 0])
        if not self.num_classes:
            return z, None
        labels = jax.vmap(
            lambda k: jax.random.randint(k, (), 0, self.num_classes, jnp.int32))(keys[:, 1])
        return z, labels

    def labels_or_none(self, labels: jax.Array) -> jax.Array | None:
        """`labels` for a conditional GAN, None for an unconditional one."""
        return labels if self.num_classes else None


def scaled_learning_rates(config: Any) -> tuple[float, float]:
    """G and D learning rates after batch-size scaling.

    With `optim.lr_scaling == 'linear'` both rates are multiplied by
    `train.batch_size / optim.base_batch` (reference batch 256: x0.25 at 64, x0.5 at
    128, the lrscale table of docs/original.md); with 'none' they are used as given.
    """
    scaling = config.optim.lr_scaling
    if scaling == "none":
        factor = 1.0
    elif scaling == "linear":
        factor = config.train.batch_size / config.optim.base_batch
    else:
        raise ValueError(f"unknown optim.lr_scaling {scaling!r}; set it to 'none' or 'linear'.")
    return config.optim.g_lr * factor, config.optim.d_lr * factor


def build(config: Any, num_classes: int, channels: int) -> GAN:
    """The GAN that `config` describes, for data with `num_classes` classes and `channels`.

    Args:
      config: the full config (model, optim, train sections).
      num_classes: classes of the dataset (G and D ignore them when
        `model.conditional` is False).
      channels: image channels.

    Raises:
      ValueError: an unknown model switch (see `models.build_models`) or learning-rate
        scaling, one line.
    """
    n = num_classes if config.model.conditional else 0
    g, d = build_models(config.model, n, channels,
                        parallel.DATA_AXIS if config.train.bn_sync else None)
    g_lr, d_lr = scaled_learning_rates(config)
    adam = functools.partial(optax.adam, b1=config.optim.b1, b2=config.optim.b2)
    return GAN(generator=g, discriminator=d, g_tx=adam(g_lr), d_tx=adam(d_lr), g_lr=g_lr,
               d_lr=d_lr, num_classes=n)
