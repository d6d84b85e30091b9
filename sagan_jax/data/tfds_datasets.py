"""TensorFlow Datasets sources: CIFAR-10, STL-10 and Oxford Flowers 102.

Each is downloaded and prepared by TFDS on first use; offline, a prepared copy under
`data.data_dir` or the source archives in `data.manual_dir` are used instead.

On the hosts of a TPU slice, which all need the data, `data.data_dir` may be a bucket
(`gs://bucket/tensorflow_datasets`, prepared once by process 0 and read by all), or
`data.try_gcs=True` reads the copy that TFDS publishes in its own public bucket
(nothing to prepare). A local `data_dir` is prepared on each host.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sagan_jax.data import sources


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How one TFDS dataset is read.

    Attributes:
      splits: variant -> TFDS split expression.
      source_files: what TFDS downloads; the names it looks for in `manual_dir`.
      labelled: the variants whose labels are classes.
    """

    splits: dict[str, str]
    source_files: tuple[str, ...]
    labelled: tuple[str, ...] = ("labelled",)


# Splits as in the original work (docs/original.md, "Training"): CIFAR-10 train; STL-10
# train+test (13,000 labelled images) or the 100k unlabelled split; Oxford Flowers 102,
# all splits.
TFDS_DATASETS = {
    "cifar10": TfdsSpec({"labelled": "train"}, ("cifar-10-binary.tar.gz",)),
    "stl10": TfdsSpec({"labelled": "train+test", "unlabelled": "unlabelled"},
                      ("stl10_binary.tar.gz",)),
    "oxford_flowers102": TfdsSpec({"labelled": "train+validation+test"},
                                  ("102flowers.tgz", "imagelabels.mat", "setid.mat")),
}


def load(name: str, data_cfg, preprocess, process_index: int,
         process_count: int) -> sources.Examples:
    """This process's share of TFDS dataset `name`, decoded and resized."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    spec = TFDS_DATASETS[name]
    variant = data_cfg.variant
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
        return sources.Examples(images, np.zeros_like(labels), 0)
    return sources.Examples(images, labels, builder.info.features["label"].num_classes)


def _prepared_builder(name: str, spec: TfdsSpec, data_cfg, tfds):
    """The TFDS builder with its data prepared, by process 0 first and then by the others
    (for whom a data_dir shared with process 0 is already prepared)."""
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    builder = None
    if jax.process_index() == 0:
        builder = _prepare(name, spec, data_cfg, tfds)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"sagan_jax: TFDS {name} prepared")
        if jax.process_index() > 0:
            builder = _prepare(name, spec, data_cfg, tfds)
    return builder


def _prepare(name: str, spec: TfdsSpec, data_cfg, tfds):
    """The TFDS builder with its data prepared; an offline failure says how to place the data."""
    try_gcs = bool(data_cfg.get("try_gcs", False))
    if try_gcs and data_cfg.data_dir:
        raise ValueError(f"data.try_gcs reads TFDS's public bucket and data.data_dir="
                         f"{data_cfg.data_dir} another copy: set only one of them.")
    builder = tfds.builder(name, data_dir=data_cfg.data_dir or None, try_gcs=try_gcs)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir or None))
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


for _name in TFDS_DATASETS:
    sources.register(_name)(functools.partial(load, _name))
