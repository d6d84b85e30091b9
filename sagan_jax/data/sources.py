"""The registry of dataset sources, and what they share: decoding into memory once.

A source turns the config's `data` section into this process's examples: uint8 images at
the training size and int32 labels, decoded and resized once with `tf.image.resize` and
then kept as one array (`pipeline` shuffles and batches from it in numpy). Each process
loads only its own share of the examples (multi-host).

Adding a dataset is one function in one module of this package:

    @sources.register("my_dataset")
    def load(data_cfg, preprocess, process_index, process_count) -> sources.Examples: ...

The built-in sources (`digits`, `tfds_datasets`, `image_folder`) register themselves when
`sagan_jax.data` is imported. TensorFlow is imported inside the functions that use it;
the entry points hide the GPUs from it first (`sagan_jax.startup`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np

RESIZE_METHODS = ("bilinear", "area", "bicubic", "nearest", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")


@dataclasses.dataclass(frozen=True)
class Examples:
    """This process's examples.

    Attributes:
      images: uint8 (N, size, size, channels).
      labels: int32 (N,), in [0, num_classes) (all 0 when unlabelled).
      num_classes: 0 for unlabelled data.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int


# (data_cfg, preprocess, process_index, process_count) -> Examples
Loader = Callable[[ml_collections.ConfigDict, Callable, int, int], Examples]
_SOURCES: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: makes `loader` the source of `data.name == name`."""
    def add(loader: Loader) -> Loader:
        if name in _SOURCES:
            raise ValueError(f"dataset source {name!r} is registered twice.")
        _SOURCES[name] = loader
        return loader
    return add


def names() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return tuple(_SOURCES)


def preprocess_fn(size: int, channels: int, method: str, center_crop: bool):
    """A TF function: uint8/float image(s) (..., H, W, C) -> uint8 (..., size, size, channels).

    With `center_crop` the central square is cropped first (a no-op for square images);
    without it a non-square image is stretched to the square, as the original did with
    Oxford Flowers. Resizing uses `method`, antialiased when shrinking; grayscale and RGB
    are converted to `channels`.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def preprocess(image):
        if center_crop:
            height, width = tf.shape(image)[-3], tf.shape(image)[-2]
            side = tf.minimum(height, width)
            image = image[..., (height - side) // 2:(height - side) // 2 + side,
                          (width - side) // 2:(width - side) // 2 + side, :]
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method=method,
                                antialias=True)
        if channels == 1 and image.shape[-1] == 3:
            image = tf.image.rgb_to_grayscale(image)
        elif channels == 3 and image.shape[-1] == 1:
            image = tf.tile(image, [1] * (image.shape.rank - 1) + [3])
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    return preprocess


def process_share(n: int, process_index: int, process_count: int) -> slice:
    """Every `process_count`-th example from `process_index`, the same count for all."""
    return slice(process_index, n - n % process_count, process_count)


def load_examples(data_cfg: ml_collections.ConfigDict, process_index: int,
                  process_count: int) -> Examples:
    """Decodes this process's share of the dataset named by `data_cfg.name`.

    Args:
      data_cfg: the config's `data` section.
      process_index: this process (`jax.process_index()`).
      process_count: all processes (`jax.process_count()`); each gets an equal, disjoint
        share, and up to `process_count - 1` examples are dropped to keep them equal.

    Returns:
      The examples, decoded and resized.

    Raises:
      ValueError: an unknown dataset, variant or resize method, or bad images.
      FileNotFoundError: a missing data folder, or ImageNet neither prepared nor in manual_dir.
      ConnectionError: a TFDS dataset that is not prepared and could not be downloaded.
    """
    size, channels, method = int(data_cfg.image_size), int(data_cfg.channels), data_cfg.resize
    if data_cfg.name not in _SOURCES:
        raise ValueError(f"unknown dataset '{data_cfg.name}'; set --config.data.name to one of "
                         f"{', '.join(_SOURCES)}.")
    if channels not in (1, 3):
        raise ValueError(f"data.channels is {channels}; set --config.data.channels to 1 or 3.")
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method '{method}'; set --config.data.resize to one "
                         f"of {', '.join(RESIZE_METHODS)}.")
    preprocess = preprocess_fn(size, channels, method, data_cfg.center_crop)
    return _SOURCES[data_cfg.name](data_cfg, preprocess, process_index, process_count)
