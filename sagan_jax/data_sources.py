"""Datasets decoded once into memory: uint8 images at the training size and int32 labels.

Every source (scikit-learn digits, TFDS, class-per-folder trees) is decoded and resized once,
with `tf.image.resize`, then kept as one uint8 array; `input_pipeline` shuffles and batches
from it in numpy. Each process loads only its own share of the examples (multi-host).

TensorFlow is imported inside the functions that use it, so importing this module is cheap.
"""
from __future__ import annotations

import dataclasses
import functools

import ml_collections
import numpy as np
from absl import logging

from sagan_jax import image_folder

DIGITS = "digits"
FOLDER_DATASETS = ("animeface", "image_folder")


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    splits: dict[str, str]  # variant -> TFDS split expression
    source_files: tuple[str, ...]  # what TFDS downloads; the name it looks for in manual_dir
    labelled: tuple[str, ...] = ("labelled",)


# Splits as in the original work (shared/SEED.md): CIFAR-10 train; STL-10 train+test
# (13,000 labelled images) or the 100k unlabelled split; Oxford Flowers 102, all splits.
TFDS_DATASETS = {
    "cifar10": _TfdsSpec({"labelled": "train"}, ("cifar-10-binary.tar.gz",)),
    "stl10": _TfdsSpec({"labelled": "train+test", "unlabelled": "unlabelled"},
                       ("stl10_binary.tar.gz",)),
    "oxford_flowers102": _TfdsSpec({"labelled": "train+validation+test"},
                                   ("102flowers.tgz", "imagelabels.mat", "setid.mat")),
}
KNOWN_DATASETS = (DIGITS, *TFDS_DATASETS, *FOLDER_DATASETS)
RESIZE_METHODS = ("bilinear", "area", "bicubic", "nearest", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")
# The full AnimeFace Character Dataset (shared/SEED.md).
ANIMEFACE_CLASSES = 176


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


@functools.cache
def import_tf():
    """TensorFlow, kept off the accelerators (they belong to JAX)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TF's devices were already initialised by whoever imported it first (the trainer
        # hides the GPUs itself before that); the setting can no longer change.
        pass
    return tf


def preprocess_fn(size: int, channels: int, method: str):
    """A TF function: uint8/float image(s) (..., H, W, C) -> uint8 (..., size, size, channels).

    The central square is cropped (a no-op for square images), then resized with `method`,
    antialiased when shrinking; grayscale and RGB are converted to `channels`.
    """
    tf = import_tf()

    def preprocess(image):
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
      FileNotFoundError: a missing data folder.
      ConnectionError: a TFDS dataset that is not prepared and could not be downloaded.
    """
    name = data_cfg.name
    size, channels = int(data_cfg.image_size), int(data_cfg.channels)
    method = data_cfg.get("resize", "bilinear") or "bilinear"
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset '{name}'; set --config.data.name to one of "
                         f"{', '.join(KNOWN_DATASETS)}.")
    if channels not in (1, 3):
        raise ValueError(f"data.channels is {channels}; set --config.data.channels to 1 or 3.")
    if size < 1:
        raise ValueError(f"data.image_size is {size}; set --config.data.image_size > 0.")
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method '{method}'; set --config.data.resize to one "
                         f"of {', '.join(RESIZE_METHODS)}.")
    preprocess = preprocess_fn(size, channels, method)
    if name == DIGITS:
        return _load_digits(preprocess, process_index, process_count)
    if name in FOLDER_DATASETS:
        return _load_folder(name, data_cfg.get("path", ""), preprocess, process_index,
                            process_count)
    return _load_tfds(name, data_cfg, preprocess, process_index, process_count)


def _process_share(n: int, process_index: int, process_count: int) -> slice:
    """Every `process_count`-th example from `process_index`, the same count for all."""
    return slice(process_index, n - n % process_count, process_count)


def _load_digits(preprocess, process_index: int, process_count: int) -> Examples:
    """scikit-learn's bundled 8x8 digits (1,797 real images, no download)."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    share = _process_share(len(digits.target), process_index, process_count)
    # Pixel values are counts 0..16 of a 4x4 grid of the 32x32 bitmap: 0 -> 0 and 16 -> 255,
    # so that black and white land exactly on -1 and +1 after scaling.
    images = digits.images[share, :, :, None].astype(np.float32) * (255.0 / 16.0)
    return Examples(np.asarray(preprocess(images)), digits.target[share].astype(np.int32), 10)


def _load_folder(name: str, path: str, preprocess, process_index: int,
                 process_count: int) -> Examples:
    """A class-per-folder tree (`animeface`, `image_folder`)."""
    listing = image_folder.list_image_folder(path)
    image_folder.log_skipped(listing.skipped)
    num_classes = len(listing.class_names)
    if name == "animeface" and num_classes != ANIMEFACE_CLASSES:
        logging.warning("animeface: %s has %d class folders; the full AnimeFace Character "
                        "Dataset has %d (its 'thumb' folder).", path, num_classes,
                        ANIMEFACE_CLASSES)
    share = _process_share(len(listing.paths), process_index, process_count)
    images = image_folder.decode_images(listing.paths[share], preprocess, import_tf())
    return Examples(images, listing.labels[share], num_classes)


def _load_tfds(name: str, data_cfg: ml_collections.ConfigDict, preprocess,
               process_index: int, process_count: int) -> Examples:
    """A TFDS dataset, downloaded and prepared on first use."""
    tf = import_tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    spec = TFDS_DATASETS[name]
    variant = data_cfg.get("variant", "") or "labelled"
    if variant not in spec.splits:
        raise ValueError(f"dataset '{name}' has no variant '{variant}'; set "
                         f"--config.data.variant to one of {', '.join(spec.splits)}.")
    builder = _prepared_builder(name, spec, data_cfg, tfds)
    split = tfds.split_for_jax_process(spec.splits[variant], process_index=process_index,
                                       process_count=process_count, drop_remainder=True)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (preprocess(ex["image"]), tf.cast(ex["label"], tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
    chunks = list(ds.as_numpy_iterator())
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    if variant not in spec.labelled:
        # TFDS labels unlabelled examples -1; they train unconditionally, with label 0.
        return Examples(images, np.zeros_like(labels), 0)
    return Examples(images, labels, builder.info.features["label"].num_classes)


def _prepared_builder(name: str, spec: _TfdsSpec, data_cfg: ml_collections.ConfigDict, tfds):
    """The TFDS builder with its data prepared; an offline failure says how to place the data."""
    data_dir = data_cfg.get("data_dir", "") or None
    manual_dir = data_cfg.get("manual_dir", "") or None
    builder = tfds.builder(name, data_dir=data_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as error:  # pylint: disable=broad-except
        # Downloads fail in many ways (DNS, HTTP, proxies, checksums); all end the same way.
        reason = (str(error).splitlines() or [""])[0][:200]
        raise ConnectionError(
            f"TFDS could not download or prepare '{name}' into {builder.data_dir} "
            f"({type(error).__name__}: {reason}). Offline? Either copy a prepared "
            f"'{name}' folder (from `tfds build {name}` on a connected machine) under "
            f"--config.data.data_dir, or put {', '.join(spec.source_files)} in a folder and "
            "set --config.data.manual_dir to it.") from error
    return builder
