"""Global training batches, sharded over the data mesh, from datasets held in memory,
and the choice between that and the streamed path (`streaming`).

`data.pipeline` chooses: 'memory', 'streamed', or 'auto' (the default), which streams a
dataset that can be streamed where this process's decoded share would take more than
`MEMORY_SHARE` of the machine's memory, and otherwise holds it in memory.

In memory, each dataset is decoded and resized once (`sources`); batches are then
gathered in numpy: epoch `e` visits this process's examples in the order of a permutation
drawn from `np.random.default_rng([seed, e])`, the incomplete last batch of an epoch is
dropped (as in the original, docs/original.md), and the local batch becomes this
process's part of a global `jax.Array` sharded on the batch axis. Batch `k` is a pure
function of `(seed, k)`, so a resumed run gets the batches of an unbroken one without
decoding the `k` before. `data.random_flip` mirrors each example of global batch `k`
with probability 1/2, drawn from `(seed, k)` (`flip`).

The trainer reads them through `plan_iterator`: the run's plan of dispatches
(`periods.Periods.chunks`), each dispatch's batches stacked, prepared by a background
thread while the device trains. It needs only a source's `host_batch(step)` and the
mesh's sharding, so any source that can produce batch `k` on demand plugs in.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sagan_jax import parallel
from sagan_jax.data import sources

Batch = dict[str, np.ndarray]
PIPELINES = ("auto", "memory", "streamed")
# 'auto' streams where this process's decoded share would exceed this much of the memory.
MEMORY_SHARE = 0.25
# How long closing the batches waits for the thread that prepares them.
_CLOSE_TIMEOUT_S = 30.0


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (0 and 255 map exactly to -1 and 1)."""
    out = images.astype(np.float32)
    out /= 127.5
    out -= 1.0
    return out


def batch_too_large(global_batch_size: int, num_examples: int) -> ValueError:
    """The one-line error for a global batch larger than the dataset (either path)."""
    return ValueError(f"batch size {global_batch_size} is larger than the dataset "
                      f"({num_examples} examples); lower --config.train.batch_size.")


def local_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
    """The rows of a global batch that this process's devices hold, in order."""
    index_map = parallel.batch_sharding(mesh).addressable_devices_indices_map(
        (global_batch_size,))
    spans = sorted({(s[0].start or 0, s[0].stop or global_batch_size)
                    for s in index_map.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in spans])


def flip(images: np.ndarray, seed: int, step: int, rows: np.ndarray,
         global_batch_size: int) -> np.ndarray:
    """`images`, rows `rows` of global batch `step`, each mirrored with probability 1/2."""
    mirrored = np.random.default_rng([seed, step, 1]).random(global_batch_size)[rows] < 0.5
    return np.where(mirrored[:, None, None, None], images[:, :, ::-1], images)


class Dataset:
    """This process's examples, and the batches the trainer and the evaluator read.

    Attributes:
      num_classes: label classes (0 for unlabelled data).
      image_size: height = width of the images.
      channels: 1 or 3.
      num_examples: examples over all processes.
      steps_per_epoch: global batches in one pass (the incomplete last one is dropped).
      local_batch_size: this process's examples of each global batch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 global_batch_size: int, seed: int, mesh: Mesh, prefetch: int = 2,
                 process_count: int = 1, random_flip: bool = False):
        """Wraps decoded examples.

        Args:
          images: uint8 (N, size, size, channels), this process's examples.
          labels: int32 (N,).
          num_classes: label classes (0 = unlabelled).
          global_batch_size: examples per step over all devices.
          seed: shuffling seed.
          mesh: the data mesh the batches are sharded over.
          prefetch: dispatches prepared ahead in a background thread (0 = none).
          process_count: processes sharing the mesh (each holds as many examples).
          random_flip: mirror each example with probability 1/2 (`flip`).

        Raises:
          ValueError: a batch the mesh cannot split, or larger than the dataset.
        """
        parallel.check_divisible(global_batch_size, mesh)
        self._images, self._labels = images, labels
        self._seed, self._prefetch = seed, prefetch
        self._global_batch_size, self._random_flip = global_batch_size, random_flip
        self._rows = local_rows(mesh, global_batch_size)
        self._sharding = parallel.stacked_batch_sharding(mesh)
        self._cached_permutation = (None, None)
        local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
        self.local_batch_size = global_batch_size * local_devices // mesh.devices.size
        self.num_classes = num_classes
        self.image_size, self.channels = images.shape[1], images.shape[3]
        self.num_examples = len(images) * process_count
        self.steps_per_epoch = len(images) // self.local_batch_size
        if self.steps_per_epoch == 0:
            raise batch_too_large(global_batch_size, self.num_examples)

    def _permutation(self, epoch: int) -> np.ndarray:
        cached_epoch, permutation = self._cached_permutation
        if cached_epoch != epoch:
            permutation = np.random.default_rng([self._seed, epoch]).permutation(len(self._images))
            self._cached_permutation = (epoch, permutation)
        return permutation

    def host_batch(self, step: int) -> Batch:
        """This process's part of global batch `step`, in numpy (float32 images in [-1, 1])."""
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.local_batch_size
        index = self._permutation(epoch)[start:start + self.local_batch_size]
        images = self._images[index]
        if self._random_flip:
            images = flip(images, self._seed, step, self._rows, self._global_batch_size)
        return {"image": to_float(images), "label": self._labels[index]}

    def plan_iterator(self, chunks: Iterable[tuple[int, int]],
                      size: int) -> Iterator[tuple[int, int, dict[str, jax.Array]]]:
        """`plan_iterator` over this dataset's batches (see there), prefetched in the
        background by `data.prefetch` batches."""
        return plan_iterator(self.host_batch, self._sharding, chunks, size, self._prefetch)

    def eval_iterator(self, batch_size: int) -> Iterator[Batch]:
        """One pass over this process's examples, in order, in numpy; the last may be short."""
        for start in range(0, len(self._images), batch_size):
            yield {"image": to_float(self._images[start:start + batch_size]),
                   "label": self._labels[start:start + batch_size]}


def create_dataset(data_cfg: ml_collections.ConfigDict, global_batch_size: int, seed: int,
                   mesh: Mesh | None = None):
    """The dataset named by `data_cfg.name`, held in memory or streamed, for training on `mesh`.

    Every process takes part: where the data cannot be opened on one process, that one
    says why and all stop (`parallel.together`); with `data.pipeline='auto'`, all stream
    where any process would.

    Args:
      data_cfg: the config's `data` section (see configs/common.py).
      global_batch_size: examples per step over all devices.
      seed: shuffling seed; the same seed gives the same batches.
      mesh: the data mesh (default: all devices).

    Returns:
      A `Dataset` (decoded into memory) or a `streaming.StreamedDataset`, as
      `data.pipeline` chooses.

    Raises:
      ValueError, FileNotFoundError, ConnectionError: bad settings or data, one line each.
      startup.OtherProcessFailed: another process could not open the data.
    """
    mesh = parallel.create_mesh() if mesh is None else mesh
    parallel.check_divisible(global_batch_size, mesh)

    # One choice for all processes (hosts may differ in memory): they split the data alike.
    stream = parallel.on_any_process(parallel.together(
        lambda: streamed(data_cfg, jax.process_count()), f"sizing dataset '{data_cfg.name}'"))

    def open_dataset():
        if stream:
            from sagan_jax.data import streaming  # pylint: disable=g-import-not-at-top

            return streaming.StreamedDataset(sources.open_records(data_cfg), data_cfg,
                                             global_batch_size, seed, mesh)
        examples = sources.load_examples(data_cfg, jax.process_index(), jax.process_count())
        return Dataset(examples.images, examples.labels, examples.num_classes,
                       global_batch_size, seed, mesh, data_cfg.prefetch, jax.process_count(),
                       bool(data_cfg.random_flip))

    return parallel.together(open_dataset, f"opening dataset '{data_cfg.name}'")


def streamed(data_cfg: ml_collections.ConfigDict, process_count: int,
             memory_bytes: int | None = None) -> bool:
    """Whether `data.pipeline` streams the dataset ('auto': by its decoded size).

    Args:
      data_cfg: the config's `data` section.
      process_count: processes that share the dataset.
      memory_bytes: the machine's memory (default: what the OS reports).

    Raises:
      ValueError: an unknown `data.pipeline`.
    """
    choice = data_cfg.pipeline
    if choice not in PIPELINES:
        raise ValueError(f"unknown data.pipeline '{choice}'; set --config.data.pipeline to one "
                         f"of {', '.join(PIPELINES)}.")
    if choice != "auto":
        return choice == "streamed"
    examples = sources.count_examples(data_cfg)
    if examples is None:
        return False
    share = examples // process_count * int(data_cfg.image_size) ** 2 * int(data_cfg.channels)
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return share > MEMORY_SHARE * memory_bytes


def plan_iterator(host_batch: Callable[[int], Batch], sharding: jax.sharding.Sharding,
                  chunks: Iterable[tuple[int, int]], size: int,
                  prefetch: int = 2) -> Iterator[tuple[int, int, dict[str, jax.Array]]]:
    """The batches of a plan of dispatches, stacked for the train step.

    Args:
      host_batch: `host_batch(step)`, this process's part of global batch `step` as
        numpy arrays; where it has a `close()` (a stream), that is called, on the thread
        that read the batches, once they end or the iterator is closed.
      sharding: of the stacked global batches (`parallel.stacked_batch_sharding`).
      chunks: (first step, count) of each dispatch, as `periods.Periods.chunks` plans a
        run (a resumed run's plan starts at its checkpoint's step).
      size: the stacked axis, at least every count (`train.steps_per_dispatch`).
      prefetch: dispatches prepared ahead in a background thread (0 = none).

    Returns:
      An iterator of `(first, count, batches)`: global batches `first` ..
      `first + count - 1` stacked on a leading axis of `size` (zeros after them), each
      sharded on the batch axis; `close()` it to stop its thread early.
    """
    def make(chunk):
        first, count = chunk
        batches = [host_batch(step) for step in range(first, first + count)]
        stacked = {k: np.zeros((size, *v.shape), v.dtype) for k, v in batches[0].items()}
        for i, batch in enumerate(batches):
            for k, v in batch.items():
                stacked[k][i] = v
        return first, count, {k: jax.make_array_from_process_local_data(sharding, v)
                              for k, v in stacked.items()}

    close = getattr(host_batch, "close", lambda: None)
    if prefetch <= 0:
        return _closing((make(chunk) for chunk in chunks), close)
    return _Prefetcher(make, iter(chunks), prefetch, close)


def _closing(batches: Iterator, close: Callable[[], None]) -> Iterator:
    """`batches`, and `close()` once they end or the iterator is closed."""
    try:
        yield from batches
    finally:
        close()


class _Failure:
    """An exception for the consumer to raise: one raised while preparing a batch, or
    StopIteration after the last one."""

    def __init__(self, error: BaseException):
        self.error = error


def _put(out: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _fill(make_batch, args: Iterator, out: queue.Queue, stop: threading.Event,
          close: Callable[[], None]) -> None:
    """Producer loop of `_Prefetcher` (holds no reference to it, so it can be collected)."""
    try:
        for arg in args:
            if stop.is_set():
                return
            try:
                item = make_batch(arg)
            except Exception as error:  # pylint: disable=broad-except
                item = _Failure(error)
            _put(out, item, stop)
            if isinstance(item, _Failure):
                return
        _put(out, _Failure(StopIteration()), stop)
    finally:
        close()


class _Prefetcher:
    """Iterates `make_batch(arg)` for each of `args`, `depth` batches ahead, and ends
    with them."""

    def __init__(self, make_batch, args: Iterator, depth: int,
                 close: Callable[[], None] = lambda: None):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._failure: _Failure | None = None
        self._thread = threading.Thread(target=_fill, daemon=True, name="input_pipeline",
                                        args=(make_batch, args, self._queue, self._stop,
                                              close))
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._failure is None:
            item = self._queue.get()
            if not isinstance(item, _Failure):
                return item
            self._failure = item
        raise self._failure.error

    def close(self) -> None:
        """Stops the background thread and waits for it (it exits within 0.1 s of a batch
        it is preparing, and closes the source's stream first)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_CLOSE_TIMEOUT_S)

    def __del__(self):
        self.close()
