"""GAN losses for D and G as pure functions of D's logits.

Hinge (the original's choice, docs/original.md) and the non-saturating sigmoid
cross-entropy loss of Goodfellow et al. (2014).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))."""
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
    """-mean(D(G(z)))."""
    return -jnp.mean(fake_logits)


def non_saturating_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """mean(softplus(-D(x))) + mean(softplus(D(G(z)))): -log sigmoid on real, -log(1 - sigmoid) on fake."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def non_saturating_g_loss(fake_logits: jax.Array) -> jax.Array:
    """mean(softplus(-D(G(z)))) = -mean(log sigmoid(D(G(z))))."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def mode_seeking_loss(images: jax.Array, z: jax.Array, eps: float = 1e-5) -> jax.Array:
    """MSGAN's mode-seeking term over pairs (2k, 2k + 1) of a batch drawn with one label.

    Each pair's ratio of image distance to noise distance (mean absolute differences),
    r = mean|G(z_a) - G(z_b)| / mean|z_a - z_b|, enters as 1 / (r + eps), averaged
    over pairs: minimising it spreads a class's images as its noise spreads (Mao et al.,
    "Mode Seeking Generative Adversarial Networks", 2019). Pairs are per example, so the
    value does not depend on how the batch is split over devices.
    """
    a, b = images[0::2], images[1::2]
    image_dist = jnp.mean(jnp.abs(a - b), axis=tuple(range(1, a.ndim)))
    noise_dist = jnp.mean(jnp.abs(z[0::2] - z[1::2]), axis=1)
    return jnp.mean(1.0 / (image_dist / noise_dist + eps))


_LOSSES = {
    "hinge": (hinge_d_loss, hinge_g_loss),
    "non_saturating": (non_saturating_d_loss, non_saturating_g_loss),
}


def get(name: str) -> tuple[Callable[[jax.Array, jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """`(d_loss_fn, g_loss_fn)` for `name`, or one clear error naming the known losses."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; set train.loss to one of {sorted(_LOSSES)}.")
    return _LOSSES[name]
