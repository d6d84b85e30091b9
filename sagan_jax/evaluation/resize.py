"""TensorFlow 1.x bilinear resizing (`tf.compat.v1.image.resize_bilinear`) in JAX.

The 2015-12-05 Inception graph that published IS/FID numbers use resizes its input with
TF1's `ResizeBilinear` op (`align_corners=False`, no half-pixel centres): output pixel `i`
samples the input at `i * in_size / out_size`, i.e. the grid is anchored at the top-left
corner, not at pixel centres as in `jax.image.resize` or PyTorch's `F.interpolate`. The
difference shifts every sample by up to half an input pixel, which moves FID measurably
for 32 px images, so the scores here reproduce the legacy op exactly: same float32 source
coordinates, same clamping, same interpolation order (rows first, then columns).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _source_coords(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and lerp weights of TF1's legacy scaler.

    Mirrors `CalculateResizeScale` and `LegacyScaler` of TensorFlow's
    `resize_bilinear_op.cc`: `scale = float(in) / float(out)` and `src = float(i) * scale`,
    both in float32, so the weights are bit-identical to TF's.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(src)
    lerp = (src - lower).astype(np.float32)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
    return lower.astype(np.int32), upper, lerp


def resize_bilinear_tf1(images: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Resize NHWC images like `tf.compat.v1.image.resize_bilinear(align_corners=False)`.

    Args:
      images: (B, H, W, C) array; computed in float32 whatever its dtype.
      size: (out_height, out_width).

    Returns:
      (B, out_height, out_width, C) float32 array.
    """
    out_h, out_w = size
    top, bottom, y_lerp = _source_coords(images.shape[1], out_h)
    left, right, x_lerp = _source_coords(images.shape[2], out_w)
    x = images.astype(jnp.float32)
    # Interpolate along the width first, then along the height: TF's `compute_lerp`
    # forms `top = tl + (tr - tl) * x_lerp` and `bottom` likewise before mixing them.
    x_left, x_right = x[:, :, left], x[:, :, right]
    rows = x_left + (x_right - x_left) * x_lerp[:, None]
    rows_top, rows_bottom = rows[:, top], rows[:, bottom]
    return rows_top + (rows_bottom - rows_top) * y_lerp[:, None, None]
