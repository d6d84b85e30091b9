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


_LOSSES = {
    "hinge": (hinge_d_loss, hinge_g_loss),
    "non_saturating": (non_saturating_d_loss, non_saturating_g_loss),
}


def get(name: str) -> tuple[Callable[[jax.Array, jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """`(d_loss_fn, g_loss_fn)` for `name`, or one clear error naming the known losses."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; set train.loss to one of {sorted(_LOSSES)}.")
    return _LOSSES[name]
