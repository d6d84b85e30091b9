"""Training batches streamed with grain: datasets bigger than memory.

The in-memory path (`pipeline.Dataset`) decodes a process's share once at start-up. This
path decodes each batch when the step needs it, from a source that reads example `i` of
the whole dataset on demand (`sources.Records`): an image folder's files
(`image_folder.FolderRecords`) or a TFDS dataset prepared as ArrayRecord
(`tfds_datasets.TfdsRecords`). Memory holds the batches in flight, not the dataset.

Batch `k` is a pure function of `(seed, k)`, the same for any number of processes,
devices, threads and workers: epoch `e = k // steps_per_epoch` visits all N examples in
the order of `np.random.default_rng([seed, e]).permutation(N)`; global batch `k` is the
`global_batch_size` examples at its place in that order (an epoch's incomplete last batch
is dropped, as in memory), and each process reads only the rows of the batch that its
devices hold. So the processes read disjoint shares that together make every batch, and
a resumed run starts reading at its checkpoint's step and gets the batches of an unbroken
run. With `data.random_flip`, the rows of batch `k` are mirrored by the in-memory path's
rule (`pipeline.flip`), a function of `(seed, k)` and the row.

grain runs it: a `MapDataset` whose element `k` is this process's part of batch `k`,
read `data.read_threads` batches at a time ahead of the step, in the training process or,
with `data.workers` > 0, in that many worker processes (`mp_prefetch`, which returns the
elements in order). A file that does not decode is skipped with one warning and its place
goes to the next example of the source that decodes (`sources.skip`).
"""
from __future__ import annotations

import functools
import sys
from typing import Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sagan_jax import parallel, startup
from sagan_jax.data import pipeline, sources


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the examples (cached: one per epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def read(records: sources.Records, index: int) -> tuple[np.ndarray, int]:
    """Example `index`, or where its file does not decode, the next one that does.

    Raises:
      ValueError: no example of the source decodes.
    """
    for attempt in range(len(records)):
        try:
            return records[(index + attempt) % len(records)]
        except sources.Undecodable as error:
            sources.skip(error)
    raise ValueError(f"none of the {len(records)} examples decodes; check the data.")


class LocalBatches:
    """grain's map function: step `k` -> this process's rows of global batch `k`, uint8.

    Picklable (grain's worker processes receive it); holds the records, not the data.
    """

    def __init__(self, records: sources.Records, seed: int, global_batch_size: int,
                 rows: np.ndarray, random_flip: bool):
        self.records, self.seed, self.rows = records, seed, rows
        self.global_batch_size, self.random_flip = global_batch_size, random_flip
        self.steps_per_epoch = len(records) // global_batch_size

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, position = divmod(int(step), self.steps_per_epoch)
        order = epoch_order(self.seed, epoch, len(self.records))
        examples = [read(self.records, i)
                    for i in order[position * self.global_batch_size + self.rows]]
        images = np.stack([image for image, _ in examples])
        if self.random_flip:
            images = pipeline.flip(images, self.seed, step, self.rows, self.global_batch_size)
        return {"image": images, "label": np.asarray([label for _, label in examples],
                                                      np.int32)}


class EvalBatches:
    """grain's map function of `eval_iterator`: batch `j` of this process's examples."""

    def __init__(self, records: sources.Records, indices: np.ndarray, batch_size: int):
        self.records, self.indices, self.batch_size = records, indices, batch_size

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        examples = [read(self.records, i)
                    for i in self.indices[j * self.batch_size:(j + 1) * self.batch_size]]
        return {"image": pipeline.to_float(np.stack([image for image, _ in examples])),
                "label": np.asarray([label for _, label in examples], np.int32)}


def _init_worker(index: int, count: int) -> None:
    """Each grain worker: TensorFlow, which decodes, kept off the GPUs."""
    del index, count
    startup.hide_gpus_from_tensorflow()


class _Reader:
    """`host_batch(step)` read from a grain iterator, which starts again where the steps
    asked for are not consecutive (the first call, a resume); `close()` ends it."""

    def __init__(self, dataset: "StreamedDataset"):
        self._dataset, self._iterator, self._next = dataset, None, None

    def __call__(self, step: int) -> pipeline.Batch:
        if step != self._next:
            self.close()
            self._iterator = self._dataset.stream(step)
        self._next = step + 1
        batch = next(self._iterator)
        return {"image": pipeline.to_float(batch["image"]), "label": batch["label"]}

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
            self._next = None


class StreamedDataset:
    """A dataset read batch by batch with grain (the interface of `pipeline.Dataset`).

    Attributes:
      num_classes: label classes (0 for unlabelled data).
      image_size: height = width of the images.
      channels: 1 or 3.
      num_examples: examples of the whole dataset.
      steps_per_epoch: global batches in one pass (the incomplete last one is dropped).
      local_batch_size: this process's examples of each global batch.
    """

    def __init__(self, records: sources.Records, data_cfg: ml_collections.ConfigDict,
                 global_batch_size: int, seed: int, mesh: Mesh):
        """Wraps random access to a dataset.

        Args:
          records: the whole dataset (`sources.open_records`).
          data_cfg: the config's `data` section (image size and channels; `prefetch`,
            `read_threads`, `workers`, `random_flip`).
          global_batch_size: examples per step over all devices.
          seed: shuffling seed.
          mesh: the data mesh the batches are sharded over.

        Raises:
          ValueError: a batch the mesh cannot split, or larger than the dataset, or
            negative thread or worker counts.
        """
        parallel.check_divisible(global_batch_size, mesh)
        if len(records) < global_batch_size:
            raise pipeline.batch_too_large(global_batch_size, len(records))
        self._threads, self._workers = int(data_cfg.read_threads), int(data_cfg.workers)
        if self._threads < 1 or self._workers < 0:
            raise ValueError(f"data.read_threads={self._threads}, data.workers="
                             f"{self._workers}: set read_threads >= 1 and workers >= 0.")
        self._records, self._prefetch = records, int(data_cfg.prefetch)
        self._sharding = parallel.stacked_batch_sharding(mesh)
        rows = pipeline.local_rows(mesh, global_batch_size)
        self._batches = LocalBatches(records, seed, global_batch_size, rows,
                                     bool(data_cfg.random_flip))
        self.num_classes = records.num_classes
        self.image_size, self.channels = int(data_cfg.image_size), int(data_cfg.channels)
        self.num_examples = len(records)
        self.steps_per_epoch = self._batches.steps_per_epoch
        self.local_batch_size = len(rows)

    def _read_options(self):
        import grain  # pylint: disable=g-import-not-at-top

        return grain.ReadOptions(num_threads=self._threads,
                                 prefetch_buffer_size=2 * self._threads)

    def stream(self, step: int) -> Iterator[dict[str, np.ndarray]]:
        """grain's iterator of this process's uint8 batches from global batch `step` on;
        `close()` it."""
        import grain  # pylint: disable=g-import-not-at-top

        stream = grain.MapDataset.range(step, sys.maxsize).map(self._batches)
        stream = stream.to_iter_dataset(self._read_options())
        if self._workers:
            from absl import flags  # pylint: disable=g-import-not-at-top

            if not flags.FLAGS.is_parsed():  # grain's workers read its flags (a notebook).
                flags.FLAGS.mark_as_parsed()
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers),
                                        worker_init_fn=_init_worker)
        return iter(stream)

    def host_batch(self, step: int) -> pipeline.Batch:
        """This process's part of global batch `step`, read here and now (float32 images
        in [-1, 1]); the trainer's batches come from `plan_iterator` instead."""
        batch = self._batches(step)
        return {"image": pipeline.to_float(batch["image"]), "label": batch["label"]}

    def plan_iterator(self, chunks: Iterable[tuple[int, int]],
                      size: int) -> Iterator[tuple[int, int, dict[str, jax.Array]]]:
        """`pipeline.plan_iterator` over the streamed batches, from the plan's first step."""
        return pipeline.plan_iterator(_Reader(self), self._sharding, chunks, size,
                                      self._prefetch)

    def eval_iterator(self, batch_size: int) -> Iterator[pipeline.Batch]:
        """One pass over this process's share of the examples (every `process_count`-th,
        as in memory), in order; the last batch may be short."""
        import grain  # pylint: disable=g-import-not-at-top

        share = sources.process_share(len(self._records), jax.process_index(),
                                      jax.process_count())
        indices = np.arange(len(self._records))[share]
        batches = EvalBatches(self._records, indices, batch_size)
        stream = grain.MapDataset.range(-(-len(indices) // batch_size)).map(batches)
        iterator = iter(stream.to_iter_dataset(self._read_options()))
        try:
            yield from iterator
        finally:
            iterator.close()
