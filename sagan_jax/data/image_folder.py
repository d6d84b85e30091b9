"""Class-per-folder image datasets (AnimeFace as extracted, or any `root/<class>/<image>` tree).

Sources `animeface` and `image_folder` (the same reader; `animeface` also checks the
class count of the full dataset), in memory or streamed (`FolderRecords`).

TFDS's `ImageFolder` expects an extra split level (`root/<split>/<class>/`) that the extracted
AnimeFace Character Dataset does not have, skips unreadable layouts silently and fails on a
corrupt file with a TensorFlow error that does not say which file. This module scans the tree
itself, with one clear error per layout problem, and decodes with TensorFlow. Class
folders without images are skipped with one warning and the classes are indexed without
them, as the original's AnimeFace loader did (it deleted them first; this reader never
deletes anything). Files without an image extension are ignored with one warning.

A file with an image extension that does not decode (truncated, or not an image) is
skipped with one warning that names it and counts the skips so far, and its place goes to
the next file that decodes: in memory the next one of this process's share, streamed the
next one of the listing (`streaming`). Batches keep their size and stay a pure function
of (seed, step); nothing stops the run, and nothing is skipped silently.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
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


def list_image_folder(path: str, quiet: bool = False) -> FolderListing:
    """Lists `path/<class>/**/<image>`; every layout error raises one line saying what to do.

    Args:
      path: the folder that holds one sub-folder per class.
      quiet: no warning about class folders without images (a listing only counted).

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
    if empty and not quiet:
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


def decode_images(paths: Sequence[str], preprocess: Callable,
                  tf) -> tuple[np.ndarray, np.ndarray]:
    """Reads, decodes and preprocesses image files into one uint8 array, in order.

    A file that does not decode is skipped (`skip`) and its row holds the next file of
    `paths` that decodes (cyclically).

    Args:
      paths: image files.
      preprocess: TF function uint8 (H, W, 3) -> uint8 (size, size, channels).
      tf: the TensorFlow module (imported lazily by the caller).

    Returns:
      (uint8 images (len(paths), size, size, channels), int rows (len(paths),)): row i
      holds the image of `paths[rows[i]]` (i itself, but for the skipped files).

    Raises:
      ValueError: none of the files decodes.
    """
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(lambda file: (file, preprocess(sources.decode_file(file, tf))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Files that fail to decode are dropped here and found by their names below.
    ds = ds.ignore_errors().batch(256)
    decoded, images = set(), []
    for names, chunk in ds.as_numpy_iterator():
        decoded.update(name.decode() for name in names)
        images.append(chunk)
    if len(decoded) == len(paths):
        return np.concatenate(images), np.arange(len(paths))
    if not decoded:
        raise ValueError(f"none of the {len(paths)} image files decodes (e.g. {paths[0]}); "
                         "check the data folder.")
    good = np.asarray([i for i, file in enumerate(paths) if file in decoded])
    # The next decodable file of each: its place among the decoded ones.
    places = np.searchsorted(good, np.arange(len(paths))) % len(good)
    for i, file in enumerate(paths):
        if file not in decoded:
            try:  # The reason, from a decode of that file alone.
                sources.decode_file(file, tf)
                reason = "decoding failed"
            except tf.errors.InvalidArgumentError as error:
                reason = sources.tf_reason(error)
            except tf.errors.OpError as error:  # Not a bad image: a file that cannot be read.
                raise sources.unreadable(file, error) from None
            sources.skip(sources.Undecodable(file, reason))
    return np.concatenate(images)[places], good[places]


def log_skipped(skipped: Sequence[str]) -> None:
    """One warning line for the non-image files that the listing ignored."""
    if skipped:
        logging.warning("ignoring %d non-image files in the data folder (e.g. %s); images are "
                        "read only from class sub-folders, with extensions %s.",
                        len(skipped), skipped[0], ", ".join(IMAGE_EXTENSIONS))


def _listing(name: str, data_cfg) -> FolderListing:
    """The listing of `data.path`, its warnings logged."""
    listing = list_image_folder(data_cfg.path)
    log_skipped(listing.skipped)
    if name == "animeface" and len(listing.class_names) != ANIMEFACE_CLASSES:
        logging.warning("animeface: %s has %d class folders; the full AnimeFace Character "
                        "Dataset has %d (its 'thumb' folder).", data_cfg.path,
                        len(listing.class_names), ANIMEFACE_CLASSES)
    return listing


def _load(name: str, data_cfg, preprocess, process_index: int,
          process_count: int) -> sources.Examples:
    """This process's share of the class-per-folder tree at `data.path`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    listing = _listing(name, data_cfg)
    share = sources.process_share(len(listing.paths), process_index, process_count)
    images, rows = decode_images(listing.paths[share], preprocess, tf)
    return sources.Examples(images, listing.labels[share][rows], len(listing.class_names))


@dataclasses.dataclass(frozen=True, eq=False)
class FolderRecords:
    """Random access to a class-per-folder tree: file i decoded when it is read.

    Attributes:
      paths: the image files (`FolderListing.paths`).
      labels: their class indices.
      num_classes: class folders with images.
      preprocess: decoding and resizing to the training size.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    num_classes: int
    preprocess: sources.Preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 image, label) of file `index`; raises `sources.Undecodable`."""
        return self.preprocess.file(self.paths[index]), int(self.labels[index])


def _count(name: str, data_cfg) -> int:
    """Image files of the tree (`data.pipeline='auto'` lists it once more to read it)."""
    del name
    return len(list_image_folder(data_cfg.path, quiet=True).paths)


def _records(name: str, data_cfg, preprocess: sources.Preprocess) -> FolderRecords:
    listing = _listing(name, data_cfg)
    return FolderRecords(listing.paths, listing.labels, len(listing.class_names), preprocess)


for _name in ("animeface", "image_folder"):
    sources.register(_name)(functools.partial(_load, _name))
    sources.register_records(_name, count=functools.partial(_count, _name))(
        functools.partial(_records, _name))
