"""The registry of dataset sources, and what they share: decoding into memory once.

A source turns the config's `data` section into this process's examples: uint8 images at
the training size and int32 labels, decoded and resized once with `tf.image.resize` and
then kept as one array (`pipeline` shuffles and batches from it in numpy). Each process
loads only its own share of the examples (multi-host).

Adding a dataset is one function in one module of this package:

    @sources.register("my_dataset")
    def load(data_cfg, preprocess, process_index, process_count) -> sources.Examples: ...

A source that can also be streamed (`streaming`: datasets bigger than memory) registers
a second function, which returns random access to the whole dataset, example `i` decoded
on demand (`Records`):

    @sources.register_records("my_dataset")
    def records(data_cfg, preprocess) -> sources.Records: ...

The built-in sources (`digits`, `tfds_datasets`, `image_folder`) register themselves when
`sagan_jax.data` is imported. TensorFlow is imported inside the functions that use it;
the entry points hide the GPUs from it first (`sagan_jax.startup`).
"""
from __future__ import annotations

import dataclasses
import re
import threading
from typing import Callable, Protocol

import ml_collections
import numpy as np
from absl import logging

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


class Undecodable(ValueError):
    """An example whose file does not decode as an image; `name` says which file."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot decode image file {name} ({reason})")
        self.name, self.reason = name, reason


class Records(Protocol):
    """Random access to a whole dataset, each example decoded when it is read.

    Instances are pickled into grain's worker processes: hold paths and settings, not
    open files. `len()` is the number of examples; `records[i]` is example i as
    (uint8 image (size, size, channels), int label), or raises `Undecodable`.
    """

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


# (data_cfg, preprocess) -> Records
RecordsOpener = Callable[[ml_collections.ConfigDict, "Preprocess"], Records]
# data_cfg -> the number of examples of the whole dataset, known before any decoding.
Counter = Callable[[ml_collections.ConfigDict], int]
_RECORDS: dict[str, tuple[RecordsOpener, Counter]] = {}


def register_records(name: str, count: Counter) -> Callable[[RecordsOpener], RecordsOpener]:
    """Decorator: makes `opener` the streamed source of `data.name == name`; `count`
    tells the size of the dataset before either path decodes it (`data.pipeline='auto'`)."""
    def add(opener: RecordsOpener) -> RecordsOpener:
        if name in _RECORDS:
            raise ValueError(f"streamed dataset source {name!r} is registered twice.")
        _RECORDS[name] = (opener, count)
        return opener
    return add


def count_examples(data_cfg: ml_collections.ConfigDict) -> int | None:
    """The examples of the whole dataset, for a source that can be streamed; else None."""
    return _RECORDS[data_cfg.name][1](data_cfg) if data_cfg.name in _RECORDS else None


_SKIPPED: set[str] = set()
_SKIPPED_LOCK = threading.Lock()


def skip(error: Undecodable) -> None:
    """One warning for a file that does not decode, once per file and process, with the
    count of such files that this process skipped so far."""
    with _SKIPPED_LOCK:
        if error.name in _SKIPPED:
            return
        _SKIPPED.add(error.name)
        count = len(_SKIPPED)
    logging.warning("%s; skipped: its place goes to the next image file that decodes "
                    "(%d undecodable file(s) skipped by this process so far); replace or "
                    "delete it.", error, count)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """uint8/float image(s) (..., H, W, C) -> uint8 (..., size, size, channels), in TF.

    With `center_crop` the central square is cropped first (a no-op for square images);
    without it a non-square image is stretched to the square, as the original did with
    Oxford Flowers. Resizing uses `method`, antialiased when shrinking; grayscale and RGB
    are converted to `channels`. Calling it builds TF ops (in a `tf.data` map, or
    eagerly); `image` and `file` run one image through a compiled `tf.function` (the
    streamed path's decoding, per process and thread-safe). Picklable.
    """

    size: int
    channels: int
    method: str
    center_crop: bool

    def __call__(self, image):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        if self.center_crop:
            height, width = tf.shape(image)[-3], tf.shape(image)[-2]
            side = tf.minimum(height, width)
            image = image[..., (height - side) // 2:(height - side) // 2 + side,
                          (width - side) // 2:(width - side) // 2 + side, :]
        image = tf.image.resize(tf.cast(image, tf.float32), (self.size, self.size),
                                method=self.method, antialias=True)
        if self.channels == 1 and image.shape[-1] == 3:
            image = tf.image.rgb_to_grayscale(image)
        elif self.channels == 3 and image.shape[-1] == 1:
            image = tf.tile(image, [1] * (image.shape.rank - 1) + [3])
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    def image(self, image: np.ndarray) -> np.ndarray:
        """One decoded uint8 image (H, W, 1 or 3) at the training size, in numpy."""
        return _compiled(self, "image")(image).numpy()

    def file(self, path: str) -> np.ndarray:
        """One image file (any format `tf.io.decode_image` reads; gs:// allowed) at the
        training size, in numpy.

        Raises:
          Undecodable: the file is not an image that TF decodes.
          OSError: the file cannot be read (gone since the listing, no permission, an
            unreachable bucket): not skipped, since every other file would fail alike.
        """
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        try:
            return _compiled(self, "file")(path).numpy()
        except tf.errors.InvalidArgumentError as error:
            raise Undecodable(path, tf_reason(error)) from None
        except tf.errors.OpError as error:
            raise unreadable(path, error) from None


_COMPILED: dict[tuple[Preprocess, str], Callable] = {}
_COMPILED_LOCK = threading.Lock()


def _compiled(preprocess: Preprocess, kind: str):
    """The `tf.function` of `Preprocess.image` or `Preprocess.file`, built once per process."""
    with _COMPILED_LOCK:
        if (preprocess, kind) not in _COMPILED:
            import tensorflow as tf  # pylint: disable=g-import-not-at-top

            if kind == "image":
                fn = tf.function(preprocess, input_signature=[
                    tf.TensorSpec([None, None, None], tf.uint8)])
            else:
                fn = tf.function(lambda path: preprocess(decode_file(path, tf)),
                                 input_signature=[tf.TensorSpec([], tf.string)])
            fn.get_concrete_function()  # Traced here, once, not by each reading thread.
            _COMPILED[preprocess, kind] = fn
        return _COMPILED[preprocess, kind]


def decode_file(path, tf):
    """TF ops: the image file at `path` (a string tensor), decoded to uint8 (H, W, 3)."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def unreadable(path: str, error) -> OSError:
    """The one-line error for a TF error that reading `path` raised (not a decode's)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    kind = {tf.errors.NotFoundError: FileNotFoundError,
            tf.errors.PermissionDeniedError: PermissionError}.get(type(error), OSError)
    return kind(f"cannot read image file {path} ({tf_reason(error)}); check that the data "
                "is still where the run found it at its start.")


def tf_reason(error) -> str:
    """TF's error text without its op and function-node decorations."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", error.message.splitlines()[0])
    return text.strip()


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
    preprocess = preprocess_of(data_cfg)  # Checks the name and the settings first.
    return _SOURCES[data_cfg.name](data_cfg, preprocess, process_index, process_count)


def open_records(data_cfg: ml_collections.ConfigDict) -> Records:
    """Random access to the whole dataset named by `data_cfg.name`, for streaming.

    Raises:
      ValueError: a dataset that cannot be streamed, or bad settings (as `load_examples`).
      FileNotFoundError, ConnectionError: as `load_examples`.
    """
    preprocess = preprocess_of(data_cfg)
    if data_cfg.name not in _RECORDS:
        raise ValueError(f"dataset '{data_cfg.name}' is only read into memory; set "
                         f"--config.data.pipeline=memory (streamed: {', '.join(_RECORDS)}).")
    return _RECORDS[data_cfg.name][0](data_cfg, preprocess)


def preprocess_of(data_cfg: ml_collections.ConfigDict) -> Preprocess:
    """The `Preprocess` that `data_cfg` asks for, once its name and settings are checked.

    Raises:
      ValueError: an unknown dataset, channel count or resize method.
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
    return Preprocess(size, channels, method, bool(data_cfg.center_crop))
