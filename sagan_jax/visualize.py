"""Sample grids (one column per class, as the original's per-epoch grids), latent
interpolations within a class and class interpolations at a fixed latent."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image

from sagan_jax.gan import GAN


def grid_labels(num_classes: int, rows: int, max_classes: int) -> np.ndarray:
    """Labels in grid order: row r holds classes 0..C-1 (C = min(num_classes, max_classes)).

    An unconditional G (num_classes 0) gets a square grid of `rows` x `rows` zeros.
    """
    cols = min(num_classes, max_classes) if num_classes else rows
    classes = np.arange(cols) if num_classes else np.zeros(cols, np.int64)
    return np.tile(classes, rows).astype(np.int32)


def to_grid(images: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
    """Tiles images (N, H, W, C) in [-1, 1] row-major into one uint8 image (rows*H, cols*W, C)."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    pixels = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(pixels):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def save_png(path: epath.PathLike, grid: np.ndarray, scale: int = 1) -> None:
    """Writes a uint8 grid (H, W, 1|3) as PNG, each pixel repeated `scale` x `scale` times.

    `path` may be local or in a bucket (gs://...), its folder is created.
    """
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    with path.open("wb") as f:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format="PNG")


def class_grid(apply_fn: Callable, gan: GAN, key: jax.Array, rows: int,
               max_classes: int) -> np.ndarray:
    """A uint8 grid of generated samples, one column per class, `rows` samples per class.

    Args:
      apply_fn: (z, labels) -> images float32 [-1, 1] NHWC (G in eval mode).
      gan: G's classes and noise: image i's `z` is `gan.noise(key, i)`'s, as for the
        i-th image that `sampling.make_generate_fn` makes with the same key.
      key: PRNG key of the z; a fixed key gives the same z at every step, so the grids
        of a run compare.
      rows: samples per class.
      max_classes: at most this many classes (the first ones) are shown.
    """
    labels = grid_labels(gan.num_classes, rows, max_classes)
    z, _ = gan.noise(key, jnp.arange(len(labels)))
    images = np.asarray(jax.device_get(apply_fn(z, jnp.asarray(labels))))
    return to_grid(images, cols=len(labels) // rows)


INTERPOLATIONS = ("slerp", "linear")


def interpolate(z0: jax.Array, z1: jax.Array, steps: int, method: str = "slerp") -> jax.Array:
    """`steps` latents from z0 to z1, endpoints included.

    'slerp' follows the great circle, keeping the norm typical of N(0, I) samples, which
    'linear' paths (the original's) shrink midway.
    """
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}; use one of {INTERPOLATIONS}.")
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    if method == "linear":
        return (1 - t) * z0 + t * z1
    u0, u1 = z0 / jnp.linalg.norm(z0), z1 / jnp.linalg.norm(z1)
    omega = jnp.arccos(jnp.clip(jnp.dot(u0, u1), -1.0, 1.0))
    so = jnp.sin(omega)
    w0 = jnp.where(so > 1e-6, jnp.sin((1 - t) * omega) / so, 1 - t)
    w1 = jnp.where(so > 1e-6, jnp.sin(t * omega) / so, t)
    return w0 * z0 + w1 * z1


def interpolation_grid(apply_fn: Callable, gan: GAN, key: jax.Array, classes: np.ndarray,
                       steps: int, method: str = "slerp") -> np.ndarray:
    """One row per class: G's images along a path between two random z of that class.

    Identical images along a row are the per-class collapse the original saw on
    AnimeFace and Flowers (docs/original.md, "Findings").

    Args:
      apply_fn: (z, labels) -> images float32 [-1, 1] NHWC (G in eval mode).
      gan: G's noise: row r goes from `gan.noise(key, 2r)` to `gan.noise(key, 2r + 1)`.
      key: PRNG key for the end points.
      classes: int labels, one row each.
      steps: images per row.
      method: 'slerp' or 'linear' (see `interpolate`).
    """
    ends, _ = gan.noise(key, jnp.arange(2 * len(classes)))
    z = jnp.concatenate([interpolate(ends[2 * r], ends[2 * r + 1], steps, method)
                         for r in range(len(classes))])
    labels = jnp.repeat(jnp.asarray(classes, jnp.int32), steps)
    return to_grid(np.asarray(jax.device_get(apply_fn(z, labels))), cols=steps)


def class_interpolation_grid(apply_fn: Callable, gan: GAN, key: jax.Array,
                             pairs: np.ndarray, steps: int) -> np.ndarray:
    """One row per class pair (a, b): one fixed z, the class weights going from a to b.

    G's class embeddings are linear in the one-hot label, so the row shows G at
    `(1 - t) E(a) + t E(b)`: what the class alone changes. Rows whose images barely move
    while the class changes, or that stay one image within a class, are what the
    original saw when SAGAN collapsed per class.

    Args:
      apply_fn: (z, weights) -> images, `weights` float32 (n, num_classes) rows of class
        weights (G in eval mode).
      gan: G's classes and noise: row r's z is `gan.noise(key, r)`'s.
      key: PRNG key of the z.
      pairs: int (rows, 2) of (from, to) classes.
      steps: images per row.
    """
    pairs = np.asarray(pairs)
    z, _ = gan.noise(key, jnp.arange(len(pairs)))
    t = np.linspace(0.0, 1.0, steps)[:, None]
    eye = np.eye(gan.num_classes, dtype=np.float32)
    weights = np.concatenate([(1 - t) * eye[a] + t * eye[b] for a, b in pairs])
    images = apply_fn(jnp.repeat(z, steps, axis=0), jnp.asarray(weights, jnp.float32))
    return to_grid(np.asarray(jax.device_get(images)), cols=steps)
