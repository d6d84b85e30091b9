"""A `gs://` workdir: a whole tiny run (train, checkpoint, resume, grids, scores, report)
in a bucket that lives in a local folder, with nothing written through plain `open`; and
TFDS's public bucket, checked before it is read.

The fake bucket is installed where each library meets the storage service: `etils.epath`
(our files, orbax's small files; with TensorFlow installed epath serves `gs://` through
it, so epath is told that TensorFlow is absent and uses its own, mockable, backends),
orbax's TensorStore spec for `gs://` paths (the array data), orbax's bucket-layout
query, TensorFlow's TensorBoard writer and TensorBoard's event reader. Everything else
sees `gs://bucket/...` paths. orbax takes its cloud code path: in-place saves committed
by a `commit_success.txt` instead of renamed temporary folders.
"""
import builtins
import contextlib
import importlib
import os
import types
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from compiled_once import PROGRAMS
from etils import epath
from etils.epath import gpath, testing as epath_testing
from jax.experimental import multihost_utils
from orbax.checkpoint._src.path import gcs_utils
from tensorboard.backend.event_processing import event_accumulator

from sagan_jax import checkpointing, report, score, train
from sagan_jax import workdir as workdir_lib
from sagan_jax.data import sources, tfds_datasets

RUN = "gs://bucket/run"
VERSION = str(tfds.builder_cls("cifar10").VERSION)  # The version that this TFDS reads.


@contextlib.contextmanager
def fake_gcs(root):
    """Serves `gs://<path>` from `root/<path>` for epath, orbax and TensorBoard; a plain
    `open` of a `gs:` path fails the test."""
    root = str(root)

    def local(path):
        path = os.fspath(path)
        return os.path.join(root, path[len("gs://"):]) if path.startswith("gs://") else path

    def cloud(path):
        path = os.fspath(path)
        return "gs://" + os.path.relpath(path, root) if path.startswith(root + os.sep) else path

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    def glob(fn, pattern):
        return [cloud(p) for p in fn(local(pattern))]

    def walk(fn, top, **kwargs):
        for folder, dirs, files in fn(local(top), **kwargs):
            yield cloud(folder), dirs, files

    plain_open = builtins.open

    def open_(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith("gs:"):
            raise AssertionError(f"plain open() of {file}")
        return plain_open(file, *args, **kwargs)

    writer = tf.summary.create_file_writer
    reader = event_accumulator.EventAccumulator
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(gpath, "_is_tf_installed", lambda: False))
        stack.enter_context(epath_testing.mock_epath(
            open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
            rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob, walk=walk))
        stack.enter_context(mock.patch.object(
            gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": local(path)}))
        stack.enter_context(mock.patch.object(
            gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False))
        stack.enter_context(mock.patch.object(
            tf.summary, "create_file_writer",
            lambda logdir, *args, **kwargs: writer(local(logdir), *args, **kwargs)))
        stack.enter_context(mock.patch.object(
            event_accumulator, "EventAccumulator",
            lambda path, *args, **kwargs: reader(local(path), *args, **kwargs)))
        stack.enter_context(mock.patch.object(builtins, "open", open_))
        yield


def digits_config(num_steps, stats_dir):
    config = importlib.import_module("configs.digits").get_config("test")
    config.train.num_steps, config.checkpoint.keep = num_steps, 3
    config.eval.stats_dir = stats_dir
    return config


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.mark.slow
def test_a_run_in_a_bucket(tmp_path, monkeypatch):
    storage, here = tmp_path / "gcs", tmp_path / "cwd"  # gs://X/... is gcs/X/...
    storage.mkdir()
    here.mkdir()
    monkeypatch.chdir(here)  # A path taken for local would be written under here/gs:/...
    local_run = str(tmp_path / "local")
    expected = leaves(train.train_and_evaluate(digits_config(4, str(tmp_path / "stats")),
                                               local_run, programs=PROGRAMS))
    with fake_gcs(storage):
        train.train_and_evaluate(digits_config(2, "gs://bucket/stats"), RUN, programs=PROGRAMS)
        resumed = train.train_and_evaluate(digits_config(4, "gs://bucket/stats"), RUN,
                                           programs=PROGRAMS)
        ckpts = checkpointing.Checkpoints(RUN, 3, read_only=True)
        assert ckpts.all_steps() == [2, 4]
        ckpts.close()
        assert workdir_lib.read_config(RUN).run.num_steps == 4
        rows = score.evaluate_workdir(RUN, num_samples=64, generators=("ema",),
                                      programs=PROGRAMS)
        table = report.write_report([RUN], "gs://bucket/report/runs.md")
    for x, y in zip(leaves(resumed), expected):
        np.testing.assert_array_equal(x, y)  # Resumed in the bucket as from a local disk.
    assert os.listdir(here) == []

    run = storage / "bucket" / "run"
    for step in (2, 4):  # orbax's cloud layout: committed in place.
        assert (run / "checkpoints" / str(step) / "commit_success.txt").exists()
    for name in ("samples/step_0000002.png", "samples/step_0000004.png", "interpolations.png"):
        assert (run / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert [r["step"] for r in rows] == [2, 4]
    for name in ("eval/step_0000002.json", "eval/step_0000004.json", "eval/scores.csv"):
        assert (run / name).exists()
    assert len([f for f in os.listdir(run) if f.startswith("events.out.tfevents")]) == 2
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "eval"))
    assert len(list((storage / "bucket" / "stats").iterdir())) == 1  # Reference statistics.
    # The report read the bucket's config, scores.csv and events, and wrote into it.
    assert (storage / "bucket" / "report" / "runs.md").read_text() == table
    best_is = max(rows, key=lambda r: r["IS"])
    best_fid = min(rows, key=lambda r: r["FID"])
    assert table.splitlines()[4] == (
        f"| run | {best_is['IS']:.3f} | {best_is['step']} | {best_fid['FID']:.2f} | "
        f"{best_fid['step']} | {rows[1]['IS']:.3f} | {rows[1]['FID']:.2f} | "
        + "".join(f"{rows[1][k]:.3f} | " for k in ("precision", "recall", "density", "coverage"))
        + f"{rows[1]['intra_fid']:.2f} | {rows[1]['sample_accuracy']:.3f} | 4 | "
        "ema, 64 samples, scores.csv |")
    for name in ("runs_scores.png", "runs_losses.png"):  # The losses from the events.
        assert (storage / "bucket" / "report" / name).read_bytes()[:4] == b"\x89PNG"


def test_the_fake_bucket_refuses_plain_open(tmp_path):
    with fake_gcs(tmp_path), pytest.raises(AssertionError, match="plain open"):
        np.save("gs://bucket/x.npy", np.zeros(1))


def test_prepare_refuses_a_workdir_it_cannot_write(tmp_path):
    with fake_gcs(tmp_path):
        (tmp_path / "bucket").write_text("a file where the bucket's folder should be")
        with pytest.raises(PermissionError, match="cannot write to workdir gs://bucket/run") as e:
            workdir_lib.prepare(RUN)
    assert "\n" not in str(e.value)


def test_try_gcs_and_a_data_dir_are_one_or_the_other():
    config = importlib.import_module("configs.cifar10").get_config("test")
    config.data.try_gcs, config.data.data_dir = True, "gs://bucket/tensorflow_datasets"
    with pytest.raises(ValueError, match="set only one of them") as e:
        sources.load_examples(config.data, 0, 1)
    assert "\n" not in str(e.value)


class Builder:
    """A TFDS builder: records the data_dir it was made for and its preparation."""

    def __init__(self, data_dir, events, error=None):
        self.data_dir, self.events, self.error = data_dir, events, error
        self.data_path = epath.Path(data_dir) / "cifar10" / VERSION

    def download_and_prepare(self, download_config):
        self.events.append(("prepare", self.data_dir))
        if self.error:
            raise self.error


def fake_tfds(events, error=None):
    """TFDS with its own dataset versions and a fake builder."""
    return types.SimpleNamespace(
        builder_cls=tfds.builder_cls,
        builder=lambda name, data_dir: Builder(data_dir, events, error),
        download=types.SimpleNamespace(DownloadConfig=lambda manual_dir: None))


@pytest.mark.parametrize("process", [0, 1])
def test_a_shared_data_dir_is_prepared_by_process_0_first(tmp_path, monkeypatch, process):
    events = []
    monkeypatch.setattr(jax, "process_index", lambda: process)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    # The processes' exchange of whether each succeeded (`parallel.together`): none failed.
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda ok: events.append("wait") or np.zeros(2, np.int32))
    config = importlib.import_module("configs.cifar10").get_config("test")
    config.data.data_dir = "gs://bucket/tensorflow_datasets"
    prepared = tmp_path / "bucket" / "tensorflow_datasets" / "cifar10" / VERSION
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    with fake_gcs(tmp_path):
        tfds_datasets._prepared_builder(  # pylint: disable=protected-access
            "cifar10", tfds_datasets.TFDS_DATASETS["cifar10"], config.data, fake_tfds(events))
    prepare = ("prepare", "gs://bucket/tensorflow_datasets")
    assert events == ([prepare, "wait", "wait"] if process == 0 else ["wait", prepare, "wait"])


def public_bucket(root, versions):
    """TFDS's public bucket holding the given versions of cifar10."""
    for version in versions:
        folder = root / "tfds-data" / "datasets" / "cifar10" / version
        folder.mkdir(parents=True)
        (folder / "dataset_info.json").write_text("{}")


def prepare_public(root, events, data_dir="", error=None, why_unreachable=lambda server: None):
    config = importlib.import_module("configs.cifar10").get_config("test")
    config.data.try_gcs, config.data.data_dir = not data_dir, data_dir
    with fake_gcs(root):
        return tfds_datasets._prepare(  # pylint: disable=protected-access
            "cifar10", tfds_datasets.TFDS_DATASETS["cifar10"], config.data,
            fake_tfds(events, error), why_unreachable)


@pytest.mark.parametrize("data_dir", ["", "gs://tfds-data/datasets"])
def test_the_public_bucket_is_read_where_it_has_this_version(tmp_path, data_dir):
    events = []
    public_bucket(tmp_path, ["3.0.1", VERSION])
    builder = prepare_public(tmp_path, events, data_dir)
    assert builder.data_dir == "gs://tfds-data/datasets"
    assert events == [("prepare", "gs://tfds-data/datasets")]


@pytest.mark.parametrize("versions, found", [
    (["3.0.0", "3.0.1"], "it has versions 3.0.0, 3.0.1 of 'cifar10'"),
    ([], "it has no 'cifar10'"),
])
def test_the_public_bucket_without_this_version_is_one_line(tmp_path, versions, found):
    events = []
    public_bucket(tmp_path, versions)
    with pytest.raises(FileNotFoundError) as e:
        prepare_public(tmp_path, events)
    assert str(e.value) == (
        f"TFDS's public bucket gs://tfds-data/datasets/cifar10 lacks version {VERSION} of "
        f"'cifar10', the version that this tensorflow-datasets reads ({found}): prepare it "
        "into your own bucket with --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets "
        "instead of data.try_gcs.")
    assert events == []


def test_a_refused_write_to_the_public_bucket_says_it_is_read_only(tmp_path):
    public_bucket(tmp_path, [VERSION])
    refused = tf.errors.PermissionDeniedError(
        None, None, "Error executing an HTTP request: HTTP response code 403 with body "
        "'anonymous caller does not have storage.objects.create access'\nmore")
    with pytest.raises(PermissionError) as e:
        prepare_public(tmp_path, [], "gs://tfds-data/datasets", refused)
    assert str(e.value) == (
        "gs://tfds-data is TFDS's public bucket and read-only, and it refused this request "
        "(PermissionDeniedError: Error executing an HTTP request: HTTP response code 403 with "
        "body 'anonymous caller does not have storage.objects.create access'); prepare the "
        "dataset into your own bucket with --config.data.data_dir=gs://YOUR_BUCKET/"
        "tensorflow_datasets.")


def test_the_public_bucket_offline_is_one_line(tmp_path):
    with pytest.raises(ConnectionError) as e:
        prepare_public(tmp_path, [], why_unreachable=lambda server: f"no connection to {server}")
    assert str(e.value) == (
        "cannot read TFDS's public bucket gs://tfds-data (no connection to "
        "https://storage.googleapis.com); offline, set --config.data.try_gcs=False and copy the "
        "data into --config.data.data_dir.")
