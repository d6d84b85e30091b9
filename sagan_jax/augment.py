"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020), off by default.

Not in the original. On small datasets D memorises the real images within a few dozen
epochs and G answers with one image per class (the per-class collapse that the
original saw on AnimeFace and Flowers, and that the digits quick start shows without
its mode-seeking term; there DiffAugment delayed the collapse but did not prevent it).
DiffAugment applies the same random transformations to every image D sees, real
and generated, in D's steps and in G's step: D cannot tell real from fake by the
transformation, and G, which gets its gradient through the transformation, still
learns the unaugmented images. `train.augment` is a comma-separated policy:

- `translation`: each image shifted by up to 1/8 of its size in each direction, the
  uncovered border filled with 0 (mid grey in [-1, 1]);
- `cutout`: a square of half the image's size, at a random place, set to 0.

Each image's draw depends only on the key and its global index in the batch, as G's
noise does, so a run gives the same numbers on 1 or N devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

POLICIES = ("translation", "cutout")


def parse(policy: str) -> tuple[str, ...]:
    """The transformations of a policy string ('' = none), validated."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r} in train.augment={policy!r}; "
                         f"use a comma-separated subset of {', '.join(POLICIES)}, or ''.")
    return names


def _translate(image: jax.Array, key: jax.Array) -> jax.Array:
    h, w, _ = image.shape
    sy, sx = h // 8, w // 8
    dy = jax.random.randint(key, (), -sy, sy + 1)
    dx = jax.random.randint(jax.random.fold_in(key, 1), (), -sx, sx + 1)
    padded = jnp.pad(image, ((sy, sy), (sx, sx), (0, 0)))
    return jax.lax.dynamic_slice(padded, (sy - dy, sx - dx, 0), image.shape)


def _cutout(image: jax.Array, key: jax.Array) -> jax.Array:
    h, w, _ = image.shape
    ch, cw = h // 2, w // 2
    top = jax.random.randint(key, (), 0, h - ch + 1)
    left = jax.random.randint(jax.random.fold_in(key, 1), (), 0, w - cw + 1)
    rows = (jnp.arange(h) >= top) & (jnp.arange(h) < top + ch)
    cols = (jnp.arange(w) >= left) & (jnp.arange(w) < left + cw)
    return jnp.where((rows[:, None] & cols[None, :])[..., None], 0.0, image).astype(image.dtype)


_TRANSFORMS = {"translation": _translate, "cutout": _cutout}


def augment(images: jax.Array, key: jax.Array, indices: jax.Array,
            policy: tuple[str, ...]) -> jax.Array:
    """`images` (n, H, W, C) transformed by `policy` (from `parse`), in its order.

    Args:
      images: a batch (or a replica's slice of one).
      key: the key of this draw, shared by all replicas.
      indices: int32 (n,) the images' global indices in the batch.
      policy: transformation names; empty returns `images` unchanged.
    """
    for i, name in enumerate(policy):
        keys = jax.vmap(lambda j, i=i: jax.random.fold_in(jax.random.fold_in(key, i), j))(indices)
        images = jax.vmap(_TRANSFORMS[name])(images, keys)
    return images
