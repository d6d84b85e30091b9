"""Sample grids (one column per class, as the original's per-epoch grids) and z-interpolations."""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


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


def save_png(path: str, grid: np.ndarray, scale: int = 1) -> None:
    """Writes a uint8 grid (H, W, 1|3) as PNG, each pixel repeated `scale` x `scale` times."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def class_grid(apply_fn: Callable, key: jax.Array, num_classes: int, rows: int,
               max_classes: int, z_dim: int) -> np.ndarray:
    """A uint8 grid of generated samples, one column per class, `rows` samples per class.

    Args:
      apply_fn: (z, labels) -> images float32 [-1, 1] NHWC (G in eval mode).
      key: PRNG key of the z; a fixed key gives the same z at every step, so the grids
        of a run compare.
      num_classes: classes of G (0 = unconditional: a square grid).
      rows: samples per class.
      max_classes: at most this many classes (the first ones) are shown.
      z_dim: G's latent size.
    """
    labels = grid_labels(num_classes, rows, max_classes)
    z = jax.random.normal(key, (len(labels), z_dim))
    images = np.asarray(jax.device_get(apply_fn(z, jnp.asarray(labels))))
    return to_grid(images, cols=len(labels) // rows)


def interpolate(z0: jax.Array, z1: jax.Array, steps: int) -> jax.Array:
    """`steps` latents from z0 to z1 on the great circle (slerp), endpoints included.

    Slerp keeps the norm typical of N(0, I) samples, which linear paths shrink midway.
    """
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    u0, u1 = z0 / jnp.linalg.norm(z0), z1 / jnp.linalg.norm(z1)
    omega = jnp.arccos(jnp.clip(jnp.dot(u0, u1), -1.0, 1.0))
    so = jnp.sin(omega)
    w0 = jnp.where(so > 1e-6, jnp.sin((1 - t) * omega) / so, 1 - t)
    w1 = jnp.where(so > 1e-6, jnp.sin(t * omega) / so, t)
    return w0 * z0 + w1 * z1


def interpolation_grid(apply_fn: Callable, key: jax.Array, classes: np.ndarray, steps: int,
                       z_dim: int) -> np.ndarray:
    """One row per class: G's images along a slerp between two random z of that class.

    Identical images along a row are the per-class collapse the original saw on
    AnimeFace and Flowers (../shared/SEED.md, "Findings").

    Args:
      apply_fn: (z, labels) -> images float32 [-1, 1] NHWC (G in eval mode).
      key: PRNG key for the two end points of each row.
      classes: int labels, one row each.
      steps: images per row.
      z_dim: G's latent size.
    """
    keys = jax.random.split(key, len(classes))
    z = jnp.concatenate([
        interpolate(*jax.random.normal(k, (2, z_dim)), steps) for k in keys])
    labels = jnp.repeat(jnp.asarray(classes, jnp.int32), steps)
    return to_grid(np.asarray(jax.device_get(apply_fn(z, labels))), cols=steps)
