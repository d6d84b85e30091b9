"""Class-per-folder image datasets (AnimeFace as extracted, or any `root/<class>/<image>` tree).

Sources `animeface` and `image_folder` (the same reader; `animeface` also checks the
class count of the full dataset).

TFDS's `ImageFolder` expects an extra split level (`root/<split>/<class>/`) that the extracted
AnimeFace Character Dataset does not have, skips unreadable layouts silently and fails on a
corrupt file with a TensorFlow error that does not say which file. This module scans the tree
itself, with one clear error per layout problem, and decodes with TensorFlow (`tf.data`),
naming the file that does not decode. Class folders without images are skipped with one
warning and the classes are indexed without them, as the original's AnimeFace loader did
(it deleted them first; this reader never deletes anything).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from typing import Callable, Sequence

import numpy as np
from absl import logging

from sagan_jax.data import sources

# What `tf.io.decode_image` reads. Other files (AnimeFace ships a `color.csv` next to the
# faces of every character) are skipped with one warning.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The full AnimeFace Character Dataset (docs/original.md, "Training").
ANIMEFACE_CLASSES = 176


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """The image files of a class-per-folder tree, in a fixed order.

    Attributes:
      paths: image files, sorted by class folder then by path.
      labels: int32 class index of each file (class folders with images sorted by name,
        as TFDS does).
      class_names: the names of the class folders with images, index = label.
      skipped: files that are not images by their extension (ignored).
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]


def list_image_folder(path: str) -> FolderListing:
    """Lists `path/<class>/**/<image>`; every layout error raises one line saying what to do.

    Args:
      path: the folder that holds one sub-folder per class.

    Returns:
      The listing, sorted, so that every process and every run sees the same order.

    Raises:
      ValueError: no path given, or fewer than 2 class folders with images.
      FileNotFoundError: the folder does not exist, or holds no class folders.
    """
    if not path:
        raise ValueError(
            "a folder dataset needs its location: set --config.data.path to the folder that "
            "holds one sub-folder per class.")
    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {root} does not exist (or is not a folder); set --config.data.path "
            "to the folder that holds one sub-folder per class.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FileNotFoundError(
            f"data folder {root} holds no class sub-folders; expected {root}/<class>/<image> "
            "(one sub-folder per class).")
    if len(class_dirs) == 1:
        raise ValueError(
            f"data folder {root} holds a single class folder '{class_dirs[0].name}'; "
            f"a class-per-folder dataset needs at least 2 (did you mean "
            f"--config.data.path={class_dirs[0]}?).")
    paths, labels, skipped, names, empty = [], [], [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        skipped.extend(str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS)
        if not images:
            empty.append(class_dir.name)
            continue
        paths.extend(str(p) for p in images)
        labels.extend([len(names)] * len(images))
        names.append(class_dir.name)
    if empty:
        logging.warning("skipping %d class folders of %s that hold no images (%s): the classes "
                        "are indexed without them, as the original's AnimeFace loader did.",
                        len(empty), root, ", ".join(empty))
    if len(names) < 2:
        raise ValueError(
            f"data folder {root} has images ({', '.join(IMAGE_EXTENSIONS)}) in "
            f"{len(names)} class folder(s) ({', '.join(names) or 'none'}); a class-per-folder "
            "dataset needs at least 2: add images to the empty ones.")
    skipped.extend(str(p) for p in root.iterdir() if p.is_file())
    return FolderListing(tuple(paths), np.asarray(labels, np.int32), tuple(names), tuple(skipped))


def decode_images(paths: Sequence[str], preprocess: Callable, tf) -> np.ndarray:
    """Reads, decodes and preprocesses image files into one uint8 array, in order.

    Args:
      paths: image files.
      preprocess: TF function uint8 (H, W, 3) -> uint8 (size, size, channels).
      tf: the TensorFlow module (imported lazily by the caller).

    Returns:
      uint8 array (len(paths), size, size, channels).

    Raises:
      ValueError: a file that does not decode as an image, named.
    """
    def load(file):
        image = tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
        return preprocess(image)

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
    chunks, done = [], 0
    try:
        for chunk in ds.as_numpy_iterator():
            chunks.append(chunk)
            done += len(chunk)
    except tf.errors.OpError as error:
        raise _first_undecodable(paths[done:], tf, error) from error
    return np.concatenate(chunks)


def _first_undecodable(paths: Sequence[str], tf, error: Exception) -> ValueError:
    """Finds which file broke the batched decode (only runs after a failure)."""
    for file in paths:
        try:
            tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
        except tf.errors.OpError as file_error:
            return ValueError(f"cannot decode image file {file} ({_reason(file_error)}); "
                              "replace or delete it.")
    return ValueError(f"decoding the image folder failed: {_reason(error)}")


def _reason(error) -> str:
    """TF's error text without its op and function-node decorations."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", error.message.splitlines()[0])
    return text.strip()


def log_skipped(skipped: Sequence[str]) -> None:
    """One warning line for the non-image files that the listing ignored."""
    if skipped:
        logging.warning("ignoring %d non-image files in the data folder (e.g. %s); images are "
                        "read only from class sub-folders, with extensions %s.",
                        len(skipped), skipped[0], ", ".join(IMAGE_EXTENSIONS))


def _load(name: str, data_cfg, preprocess, process_index: int,
          process_count: int) -> sources.Examples:
    """This process's share of the class-per-folder tree at `data.path`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    listing = list_image_folder(data_cfg.path)
    log_skipped(listing.skipped)
    num_classes = len(listing.class_names)
    if name == "animeface" and num_classes != ANIMEFACE_CLASSES:
        logging.warning("animeface: %s has %d class folders; the full AnimeFace Character "
                        "Dataset has %d (its 'thumb' folder).", data_cfg.path, num_classes,
                        ANIMEFACE_CLASSES)
    share = sources.process_share(len(listing.paths), process_index, process_count)
    images = decode_images(listing.paths[share], preprocess, tf)
    return sources.Examples(images, listing.labels[share], num_classes)


for _name in ("animeface", "image_folder"):
    sources.register(_name)(functools.partial(_load, _name))
