"""TensorFlow Datasets sources: CIFAR-10, STL-10, Oxford Flowers 102 and ImageNet 2012.

Each is downloaded and prepared by TFDS on first use; offline, a prepared copy under
`data.data_dir` or the source archives in `data.manual_dir` are used instead. ImageNet's
archives are not public, so TFDS never downloads them: it prepares `imagenet2012` from
the ILSVRC2012 archives in `data.manual_dir`, or reads a copy prepared before.

On the hosts of a TPU slice, which all need the data, `data.data_dir` may be a bucket
(`gs://bucket/tensorflow_datasets`, prepared once by process 0 and read by all), or
`data.try_gcs=True` reads the copy that TFDS publishes in its own public bucket
(nothing to prepare; the dataset and the version that this TFDS reads are checked to be
there first). A local `data_dir` is prepared on each host.

Before TFDS downloads anything (it retries for minutes), one connection to the source's
host, or to Cloud Storage for a bucket, is tried: offline, the run stops in seconds.
"""
from __future__ import annotations

import dataclasses
import functools
import socket
import urllib.parse
import urllib.request
from typing import Any, Callable

import numpy as np
from etils import epath

from sagan_jax.data import sources

# TFDS's public bucket of prepared datasets (`tensorflow_datasets.core.utils.gcs_utils`
# names it too, but TFDS 4.9.10 switches it off there: its `try_gcs` would download).
PUBLIC_BUCKET = "gs://tfds-data"
PUBLIC_DATASETS = f"{PUBLIC_BUCKET}/datasets"
STORAGE = "https://storage.googleapis.com"


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How one TFDS dataset is read.

    Attributes:
      splits: variant -> TFDS split expression.
      source_files: what TFDS downloads; the names it looks for in `manual_dir`.
      server: where TFDS downloads them from (scheme and host); '' when TFDS cannot
        download them (they must be in `manual_dir`).
      examples: variant -> examples of its split (TFDS's catalogue), known before the
        data is prepared (`data.pipeline='auto'`).
      labelled: the variants whose labels are classes.
    """

    splits: dict[str, str]
    source_files: tuple[str, ...]
    server: str
    examples: dict[str, int]
    labelled: tuple[str, ...] = ("labelled",)


# Splits as in the original work (docs/original.md, "Training"): CIFAR-10 train; STL-10
# train+test (13,000 labelled images) or the 100k unlabelled split; Oxford Flowers 102,
# all splits. ImageNet 2012: train (1,281,167 images), as the SAGAN paper.
TFDS_DATASETS = {
    "cifar10": TfdsSpec({"labelled": "train"}, ("cifar-10-binary.tar.gz",),
                        "https://www.cs.toronto.edu", {"labelled": 50_000}),
    "stl10": TfdsSpec({"labelled": "train+test", "unlabelled": "unlabelled"},
                      ("stl10_binary.tar.gz",), "http://ai.stanford.edu",
                      {"labelled": 13_000, "unlabelled": 100_000}),
    "oxford_flowers102": TfdsSpec({"labelled": "train+validation+test"},
                                  ("102flowers.tgz", "imagelabels.mat", "setid.mat"),
                                  "https://www.robots.ox.ac.uk", {"labelled": 8_189}),
    "imagenet2012": TfdsSpec({"labelled": "train"},
                             ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"), "",
                             {"labelled": 1_281_167}),
}


def _split(name: str, data_cfg) -> tuple[TfdsSpec, str]:
    """(the dataset's spec, the TFDS split of `data.variant`)."""
    spec = TFDS_DATASETS[name]
    if data_cfg.variant not in spec.splits:
        raise ValueError(f"dataset '{name}' has no variant '{data_cfg.variant}'; set "
                         f"--config.data.variant to one of {', '.join(spec.splits)}.")
    return spec, spec.splits[data_cfg.variant]


def _num_classes(builder, spec: TfdsSpec, variant: str) -> int:
    """Label classes of `variant`; 0 for unlabelled data, which TFDS labels -1."""
    return builder.info.features["label"].num_classes if variant in spec.labelled else 0


def load(name: str, data_cfg, preprocess, process_index: int,
         process_count: int) -> sources.Examples:
    """This process's share of TFDS dataset `name`, decoded and resized."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    spec, split = _split(name, data_cfg)
    builder = _prepared_builder(name, spec, data_cfg, tfds)
    split = tfds.split_for_jax_process(split, process_index=process_index,
                                       process_count=process_count, drop_remainder=True)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (preprocess(ex["image"]), tf.cast(ex["label"], tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
    chunks = list(ds.as_numpy_iterator())
    images = np.concatenate([c[0] for c in chunks])
    num_classes = _num_classes(builder, spec, data_cfg.variant)
    labels = np.concatenate([c[1] for c in chunks]) if num_classes else np.zeros(len(images),
                                                                                  np.int32)
    return sources.Examples(images, labels, num_classes)


def _count(name: str, data_cfg) -> int:
    spec, _ = _split(name, data_cfg)  # Checks the variant.
    return spec.examples[data_cfg.variant]


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsRecords:
    """Random access to a TFDS split prepared as ArrayRecord: example i decoded when read.

    Attributes:
      source: TFDS's data source of the split (`builder.as_data_source`), which decodes
        an example's JPEG or PNG on the host without TensorFlow.
      num_classes: label classes (0: unlabelled, label 0).
      preprocess: resizing to the training size.
    """

    source: Any
    num_classes: int
    preprocess: sources.Preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        example = self.source[index]
        label = int(example["label"]) if self.num_classes else 0
        return self.preprocess.image(np.asarray(example["image"])), label


def records(name: str, data_cfg, preprocess: sources.Preprocess) -> TfdsRecords:
    """Random access to TFDS dataset `name`, prepared as ArrayRecord where TFDS prepares it.

    Raises:
      ValueError: a copy prepared before in another file format (TFRecord), which TFDS
        cannot read at random, with the command that prepares it as ArrayRecord.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    spec, split = _split(name, data_cfg)

    def not_random_access(error: Exception) -> ValueError:
        reason = (str(error).splitlines() or [""])[0][:200]
        return ValueError(
            f"TFDS '{name}' cannot be read at random where it is prepared ({reason}): "
            f"streaming reads ArrayRecord files; prepare them with `tfds build {name} "
            "--file_format=array_record --data_dir=DIR` (or convert the copy with `tfds "
            "convert_format`), or set --config.data.pipeline=memory.")

    try:
        builder = _prepared_builder(name, spec, data_cfg, tfds, file_format="array_record")
        source = builder.as_data_source(split=split)
    except NotImplementedError as error:  # Prepared in another format before.
        raise not_random_access(error) from error
    except ValueError as error:  # TFDS refuses a builder for another format than the copy's.
        if "file format" not in str(error).lower():
            raise
        raise not_random_access(error) from error
    return TfdsRecords(source, _num_classes(builder, spec, data_cfg.variant), preprocess)


def _prepared_builder(name: str, spec: TfdsSpec, data_cfg, tfds, file_format: str | None = None):
    """The TFDS builder with its data prepared, by process 0 first and then by the others
    (for whom a data_dir shared with process 0 is already prepared). Where it fails on one
    process, every process stops (`parallel.together`)."""
    import jax  # pylint: disable=g-import-not-at-top
    from sagan_jax import parallel  # pylint: disable=g-import-not-at-top

    prepare = functools.partial(_prepare, name, spec, data_cfg, tfds, file_format=file_format)
    first = jax.process_index() == 0
    builder = parallel.together(lambda: prepare() if first else None,
                                f"preparing '{name}' (process 0)")
    return parallel.together(lambda: builder if first else prepare(),
                             f"opening the prepared '{name}'")


def unreachable(server: str, timeout: float = 10.0) -> str | None:
    """Why no connection to `server` ('https://host'), or to the proxy set for it, opens;
    None when one does."""
    scheme, host = server.split("://")
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(scheme)
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname, parts.port or 80
    else:
        port = 443 if scheme == "https" else 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"no connection to {host}:{port}: {error}"
    return None


def _public_data_dir(name: str, tfds, why_unreachable: Callable[[str], str | None]) -> str:
    """The public bucket, once the version of `name` that this TFDS reads is found there."""
    problem = why_unreachable(STORAGE)
    if problem:
        raise ConnectionError(f"cannot read TFDS's public bucket {PUBLIC_BUCKET} ({problem}); "
                              "offline, set --config.data.try_gcs=False and copy the data into "
                              "--config.data.data_dir.")
    version = str(tfds.builder_cls(name).VERSION)
    folder = epath.Path(PUBLIC_DATASETS) / name
    try:
        if (folder / version / "dataset_info.json").exists():
            return PUBLIC_DATASETS
        there = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    except Exception as error:  # pylint: disable=broad-except
        if _denied(error):
            raise _read_only(error) from error
        raise
    found = (f"it has versions {', '.join(there)} of '{name}'" if there
             else f"it has no '{name}'")
    raise FileNotFoundError(
        f"TFDS's public bucket {folder} lacks version {version} of '{name}', the version that "
        f"this tensorflow-datasets reads ({found}): prepare it into your own bucket with "
        "--config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets instead of data.try_gcs.")


def _denied(error: Exception) -> bool:
    """A refused permission, from Python's file API or TensorFlow's (gs:// through TF)."""
    return isinstance(error, PermissionError) or "PermissionDenied" in type(error).__name__


def _read_only(error: Exception) -> PermissionError:
    return PermissionError(
        f"{PUBLIC_BUCKET} is TFDS's public bucket and read-only, and it refused this request "
        f"({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}); prepare the "
        "dataset into your own bucket with --config.data.data_dir=gs://YOUR_BUCKET/"
        "tensorflow_datasets.")


def _prepare(name: str, spec: TfdsSpec, data_cfg, tfds,
             why_unreachable: Callable[[str], str | None] | None = None,
             file_format: str | None = None):
    """The TFDS builder with its data prepared; an offline failure says how to place the data.

    Args:
      name: the TFDS name.
      spec: how the dataset is read.
      data_cfg: the config's `data` section.
      tfds: the `tensorflow_datasets` module.
      why_unreachable: server -> why it cannot be reached, or None (default: the
        module's `unreachable`, looked up when called).
      file_format: what TFDS writes where it prepares the data ('array_record' for the
        streamed path; None: TFDS's default, TFRecord).
    """
    why_unreachable = why_unreachable or unreachable
    try_gcs = bool(data_cfg.get("try_gcs", False))
    if try_gcs and data_cfg.data_dir:
        raise ValueError(f"data.try_gcs reads TFDS's public bucket and data.data_dir="
                         f"{data_cfg.data_dir} another copy: set only one of them.")
    data_dir = data_cfg.data_dir or None
    public = try_gcs or (data_dir or "").startswith(PUBLIC_BUCKET)
    if public:
        data_dir = _public_data_dir(name, tfds, why_unreachable)
    builder = tfds.builder(name, data_dir=data_dir,
                           **({"file_format": file_format} if file_format else {}))
    manual = data_cfg.manual_dir and all(
        (epath.Path(data_cfg.manual_dir) / f).exists() for f in spec.source_files)
    # Prepared: what `builder.is_prepared()` checks, without its warning where it is not.
    prepared = (builder.data_path / "dataset_info.json").exists()
    # Nothing to download (a server-less dataset) is nothing to wait for: TFDS stops at once.
    problem = None if public or manual or prepared or not spec.server else why_unreachable(spec.server)
    offline = (f"Offline? Either copy a prepared '{name}' folder (from `tfds build {name}` on "
               f"a connected machine) under --config.data.data_dir, or put "
               f"{', '.join(spec.source_files)} in a folder and set --config.data.manual_dir "
               "to it.")
    if problem:
        raise ConnectionError(f"TFDS cannot download '{name}' ({problem}). {offline}")
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir or None))
    except Exception as error:  # pylint: disable=broad-except
        if public and _denied(error):
            raise _read_only(error) from error
        # Downloads fail in many ways (DNS, HTTP, proxies, checksums); all end the same way.
        reason = (str(error).splitlines() or [""])[0][:200]
        if not spec.server:
            reason = reason.rstrip(" :")
            raise FileNotFoundError(
                f"TFDS cannot download '{name}' (its archives are not public) and could not "
                f"prepare it into {builder.data_dir} ({type(error).__name__}: {reason}): put "
                f"{' and '.join(spec.source_files)} in a folder and set --config.data.manual_dir "
                f"to it, or set --config.data.data_dir to a folder or bucket where '{name}' is "
                "prepared.") from error
        raise ConnectionError(
            f"TFDS could not download or prepare '{name}' into {builder.data_dir} "
            f"({type(error).__name__}: {reason}). {offline}") from error
    return builder


for _name in TFDS_DATASETS:
    sources.register(_name)(functools.partial(load, _name))
    sources.register_records(_name, count=functools.partial(_count, _name))(
        functools.partial(records, _name))
