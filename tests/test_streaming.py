"""The streamed input path (grain, `sagan_jax/data/streaming.py`) against its promises.

Batch k is a pure function of (seed, k) whatever reads it (host_batch here and now, grain's
threads, grain's worker processes) and however the global batch is split; an epoch visits
every example once and drops the incomplete batch; a resumed run trains bit for bit as an
unbroken one; a file that does not decode gives its place to the next and is named once;
the images are the in-memory path's pixels. Sources here: a numpy fake (`IndexRecords`,
whose images spell their index), PNG trees the tests write, and TFDS's mock ImageNet read
through its ArrayRecord data source. Two processes: tests/test_multihost_data.py.
"""
import logging
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from compiled_once import PROGRAMS
from PIL import Image

from configs import common
from sagan_jax import data, parallel, train
from sagan_jax.data import image_folder, pipeline, sources, streaming, tfds_datasets

BATCH = 8


class IndexRecords:
    """`n` examples whose 2x2 images hold their index (every pixel), label index % 3;
    `bad` indices raise `sources.Undecodable`. Picklable (grain's workers get it)."""

    num_classes = 3

    def __init__(self, n: int, bad=()):
        self.n, self.bad = n, frozenset(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if index in self.bad:
            raise sources.Undecodable(f"example_{index}.png", "truncated")
        return np.full((2, 2, 1), index, np.uint8), index % 3


class RowRecords(IndexRecords):
    """`IndexRecords` whose 8x8 images are a left-to-right ramp, rolled by the index: a
    mirrored one differs from the original."""

    def __getitem__(self, index):
        ramp = np.roll(np.arange(8, dtype=np.uint8) * 30, index)
        return np.broadcast_to(ramp[None, :, None], (8, 8, 1)).copy(), index % 3


def data_config(**overrides):
    cfg = common.get_base_config().data
    cfg.update({**dict(image_size=2, channels=1, pipeline="streamed", prefetch=0), **overrides})
    return cfg


def stream(records, seed=0, devices=4, batch=BATCH, **overrides):
    mesh = parallel.create_mesh(jax.devices()[:devices])
    return streaming.StreamedDataset(records, data_config(**overrides), batch, seed, mesh)


def indices(batch) -> np.ndarray:
    """The example indices of a batch of `IndexRecords` images (float32 in [-1, 1])."""
    return np.rint((np.asarray(batch["image"])[..., 0, 0, 0] + 1.0) * 127.5).astype(int)


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b, other = stream(IndexRecords(50)), stream(IndexRecords(50)), stream(IndexRecords(50), 1)
    for step in (0, 5, 6, 40):  # 6 steps an epoch: 5 and 6 straddle the first epoch's end.
        np.testing.assert_array_equal(indices(a.host_batch(step)), indices(b.host_batch(step)))
        assert not np.array_equal(indices(a.host_batch(step)), indices(other.host_batch(step)))
    batch = a.host_batch(3)
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (BATCH, 2, 2, 1)
    np.testing.assert_array_equal(batch["label"], indices(batch) % 3)


def test_each_epoch_visits_every_example_once_and_drops_the_remainder():
    ds = stream(IndexRecords(30))  # 3 batches of 8; 6 examples left out of each epoch.
    assert (ds.steps_per_epoch, ds.num_examples, ds.local_batch_size) == (3, 30, BATCH)
    epochs = [np.concatenate([indices(ds.host_batch(e * 3 + s)) for s in range(3)])
              for e in range(3)]
    for seen in epochs:
        assert len(set(seen)) == 24 and set(seen) <= set(range(30))
    assert len({tuple(seen) for seen in epochs}) == 3  # A new order every epoch.


def test_split_batches_make_the_same_global_batch():
    """What each process reads (its devices' rows) together make the batch of one process:
    the batches do not depend on how many processes share them."""
    records, whole = IndexRecords(50), np.arange(BATCH)
    halves = [streaming.LocalBatches(records, 0, BATCH, rows, False)
              for rows in (whole[:4], whole[4:])]
    together = streaming.LocalBatches(records, 0, BATCH, whole, False)
    for step in (0, 7, 13):
        np.testing.assert_array_equal(
            np.concatenate([half(step)["image"] for half in halves]), together(step)["image"])
    assert list(pipeline.local_rows(parallel.create_mesh(jax.devices()[:4]), BATCH)) == list(whole)


@pytest.mark.parametrize("threads,workers", [(1, 0), (3, 0),
                                             pytest.param(2, 2, marks=pytest.mark.slow)])
def test_grain_reads_the_batches_of_host_batch_and_resumes(threads, workers):
    ds = stream(IndexRecords(50), read_threads=threads, workers=workers, prefetch=2)
    plan = [(0, 1), (1, 2), (3, 2), (5, 1)]
    got = [(first, count, indices_of(batches, count)) for first, count, batches
           in ds.plan_iterator(plan, 2)]
    assert [(f, c) for f, c, _ in got] == plan
    for first, count, rows in got:
        for i in range(count):
            np.testing.assert_array_equal(rows[i], indices(ds.host_batch(first + i)))
    resumed = ds.plan_iterator([(3, 2), (5, 1)], 2)  # A run resumed at step 3.
    np.testing.assert_array_equal(indices_of(next(resumed)[2], 2), got[2][2])
    resumed.close()


def indices_of(batches, count):
    images = np.asarray(batches["image"])[:count]
    return [indices({"image": image}) for image in images]


def test_random_flip_mirrors_half_the_images_as_a_function_of_seed_and_step():
    records = RowRecords(64)
    plain = stream(records, batch=32, image_size=8)
    flipped = stream(records, batch=32, image_size=8, random_flip=True)
    mirrored = []
    for step in (0, 1):
        a, b = plain.host_batch(step)["image"], flipped.host_batch(step)["image"]
        same = (a == b).all(axis=(1, 2, 3))
        np.testing.assert_array_equal(b[~same], a[~same][:, :, ::-1])
        np.testing.assert_array_equal(flipped.host_batch(step)["image"], b)
        mirrored.append(~same)
    assert 6 <= mirrored[0].sum() <= 26 and not np.array_equal(*mirrored)
    # The documented rule, which the in-memory path shares (`pipeline.flip`).
    rule = np.random.default_rng([0, 1, 1]).random(32) < 0.5
    np.testing.assert_array_equal(mirrored[1], rule)


def test_a_file_that_does_not_decode_gives_its_place_to_the_next_and_is_named_once(caplog):
    records = IndexRecords(20, bad={3, 4, 19})
    with caplog.at_level(logging.WARNING):
        for index in (3, 4):
            image, label = streaming.read(records, index)
            assert image[0, 0, 0] == 5 and label == 5 % 3
        np.testing.assert_array_equal(streaming.read(records, 19)[0], records[0][0])  # Wraps.
    warnings = [r.getMessage() for r in caplog.records if "example_" in r.getMessage()]
    assert len(warnings) == 3  # One per file, however often it is read.
    assert warnings[0].startswith("cannot decode image file example_3.png (truncated); skipped")
    assert "(3 undecodable file(s) skipped by this process so far)" in warnings[2]
    with pytest.raises(ValueError, match="none of the 2 examples decodes"):
        streaming.read(IndexRecords(2, bad={0, 1}), 0)


@pytest.mark.parametrize("pipeline_name", ["memory", "streamed"])
def test_corrupt_file_in_a_folder_is_skipped_in_both_paths(tmp_path, pipeline_name, caplog):
    files = {"a/0.png": 10, "a/1.png": 20, "b/0.png": 30, "b/1_cut.png": None, "b/2.png": 40}
    for name, value in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        if value is None:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        else:
            Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)
    cfg = data_config(name="image_folder", path=str(tmp_path), image_size=4, channels=3,
                      pipeline=pipeline_name)
    with caplog.at_level(logging.WARNING):
        ds = data.create_dataset(cfg, 4, 0, parallel.create_mesh(jax.devices()[:2]))
        seen = list(ds.eval_iterator(3))
    images = np.concatenate([b["image"] for b in seen])
    labels = np.concatenate([b["label"] for b in seen])
    values = np.rint((images[:, 0, 0, 0] + 1) * 127.5).astype(int)
    assert list(values) == [10, 20, 30, 40, 40] and list(labels) == [0, 0, 1, 1, 1]
    named = [r.getMessage() for r in caplog.records if "1_cut.png" in r.getMessage()]
    assert len(named) == 1 and "skipped" in named[0]


def test_streamed_images_are_the_in_memory_pixels(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(2):
        for i, shape in enumerate([(20, 30, 3), (17, 17, 3), (40, 25, 3)]):
            path = tmp_path / f"c{c}" / f"{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    mesh = parallel.create_mesh(jax.devices()[:2])
    cfg = dict(name="image_folder", path=str(tmp_path), image_size=8, channels=3)
    memory = data.create_dataset(data_config(**cfg, pipeline="memory"), 2, 0, mesh)
    streamed = data.create_dataset(data_config(**cfg, read_threads=2), 2, 0, mesh)
    assert isinstance(memory, data.Dataset) and isinstance(streamed, streaming.StreamedDataset)
    a, b = next(memory.eval_iterator(6)), next(streamed.eval_iterator(6))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_auto_streams_what_would_not_fit_in_memory():
    imagenet = data_config(name="imagenet2012", image_size=128, channels=3, pipeline="auto")
    decoded = 1_281_167 * 128 * 128 * 3  # 63 GB of uint8.
    assert pipeline.streamed(imagenet, 1, memory_bytes=200 * 2**30)
    assert not pipeline.streamed(imagenet, 1, memory_bytes=5 * decoded)
    assert not pipeline.streamed(imagenet, 8, memory_bytes=100 * 2**30)  # 8 GB a process.
    cifar = data_config(name="cifar10", image_size=32, channels=3, pipeline="auto")
    assert not pipeline.streamed(cifar, 1, memory_bytes=2**30)
    digits = data_config(name="digits", pipeline="auto")  # Not streamable: memory.
    assert not pipeline.streamed(digits, 1, memory_bytes=1)
    assert pipeline.streamed(data_config(name="cifar10", pipeline="streamed"), 1)
    assert not pipeline.streamed(data_config(name="imagenet2012", pipeline="memory"), 1, 1)
    with pytest.raises(ValueError, match="unknown data.pipeline 'disk'; set --config"):
        pipeline.streamed(data_config(pipeline="disk"), 1)


@pytest.mark.parametrize("cfg, match", [
    (dict(name="digits"), "dataset 'digits' is only read into memory; set --config.data.pipeline=memory"),
    (dict(name="image_folder", read_threads=0), "set read_threads >= 1 and workers >= 0"),
])
def test_bad_streamed_settings_are_one_line(tmp_path, cfg, match):
    for c in "ab":
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / c / "0.png")
    with pytest.raises(ValueError, match=match) as error:
        data.create_dataset(data_config(**cfg, path=str(tmp_path)), 2, 0,
                            parallel.create_mesh(jax.devices()[:2]))
    assert "\n" not in str(error.value)


def test_folder_smaller_than_a_global_batch_is_one_line():
    with pytest.raises(ValueError) as error:
        stream(IndexRecords(5))
    assert str(error.value) == ("batch size 8 is larger than the dataset (5 examples); lower "
                                "--config.train.batch_size.")


def test_imagenet_mock_is_read_through_its_array_record_data_source(monkeypatch):
    monkeypatch.setattr(tfds_datasets, "unreachable", lambda server: None)
    cfg = data_config(name="imagenet2012", image_size=16, channels=3, read_threads=2)
    with tfds.testing.mock_data(num_examples=24):
        ds = data.create_dataset(cfg, BATCH, 0, parallel.create_mesh(jax.devices()[:4]))
        records = ds._records  # pylint: disable=protected-access
        assert isinstance(records, tfds_datasets.TfdsRecords)
        assert (len(records), records.num_classes, ds.steps_per_epoch) == (24, 1000, 3)
        example = records.source[5]  # TFDS's example, decoded by TFDS on the host.
        want = records.preprocess.image(np.asarray(example["image"]))
        np.testing.assert_array_equal(records[5][0], want)
        assert records[5][1] == int(example["label"])
        _, _, batches = next(ds.plan_iterator([(0, 1)], 1))
    assert batches["image"].shape == (1, BATCH, 16, 16, 3)


@pytest.mark.slow
def test_resume_on_the_streamed_path_reaches_the_same_state_bit_for_bit(tmp_path):
    """The digits test config's programs, trained on a 10-class PNG tree, streamed."""
    tree = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for c in range(10):
        for i in range(3):
            path = tree / f"class_{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(path)

    def config(num_steps):
        cfg = __import__("configs.digits", fromlist=["x"]).get_config("test")
        cfg.data.update(dict(name="image_folder", path=str(tree), pipeline="streamed",
                             read_threads=2, random_flip=True))
        cfg.train.num_steps, cfg.checkpoint.every_steps, cfg.eval.every_steps = num_steps, 2, 0
        return cfg

    unbroken = train.train_and_evaluate(config(5), str(tmp_path / "a"), programs=PROGRAMS)
    half = train.train_and_evaluate(config(2), str(tmp_path / "b"), programs=PROGRAMS)
    assert int(half.step) == 2
    resumed = train.train_and_evaluate(config(5), str(tmp_path / "b"), programs=PROGRAMS)
    assert int(resumed.step) == 5 and os.path.isdir(tmp_path / "b")
    for x, y in zip(jax.tree.leaves(jax.device_get(unbroken)),
                    jax.tree.leaves(jax.device_get(resumed))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_picklable_records_for_grain_workers(tmp_path):
    import pickle

    for c in "ab":
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / c / "0.png")
    cfg = data_config(name="image_folder", path=str(tmp_path), image_size=4, channels=3)
    records = sources.open_records(cfg)
    assert isinstance(records, image_folder.FolderRecords)
    copy = pickle.loads(pickle.dumps(records))
    np.testing.assert_array_equal(copy[1][0], records[1][0])


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_a_tfds_copy_prepared_as_tfrecord_is_one_line(tmp_path, monkeypatch, file_format):
    """TFDS's dummy dataset, prepared here as TFRecord: the streamed path cannot read it at
    random, and says how to prepare it (TFDS raises at the builder, or at the source)."""
    builder = tfds.testing.DummyDataset(data_dir=str(tmp_path))
    builder.download_and_prepare()
    monkeypatch.setitem(tfds_datasets.TFDS_DATASETS, "dummy_dataset", tfds_datasets.TfdsSpec(
        {"labelled": "train"}, ("dummy.tar",), "", {"labelled": 3}))
    if file_format == "array_record":  # The builder accepts the format; the source fails.
        monkeypatch.setattr(tfds_datasets, "_prepared_builder", lambda *args, **kwargs: builder)
    cfg = data_config(name="dummy_dataset", data_dir=str(tmp_path))
    with pytest.raises(ValueError) as error:
        tfds_datasets.records("dummy_dataset", cfg, sources.preprocess_of(data_config()))
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        "TFDS 'dummy_dataset' cannot be read at random where it is prepared (")
    assert "tfds build dummy_dataset --file_format=array_record" in message


@pytest.mark.parametrize("pipeline_name", ["memory", "streamed"])
def test_a_file_gone_since_the_listing_stops_the_run_with_one_line(tmp_path, monkeypatch,
                                                                  pipeline_name):
    """Not an undecodable image to skip: every other file would fail alike (a folder
    removed, a bucket unreachable), so the first one stops the run."""
    for c in "ab":
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / c / f"{i}.png")
    listing = image_folder.list_image_folder(str(tmp_path))
    gone = listing.paths[2]
    os.remove(gone)
    monkeypatch.setattr(image_folder, "list_image_folder", lambda path, quiet=False: listing)
    cfg = data_config(name="image_folder", path=str(tmp_path), image_size=4, channels=3,
                      pipeline=pipeline_name)
    with pytest.raises(FileNotFoundError) as error:
        ds = data.create_dataset(cfg, 2, 0, parallel.create_mesh(jax.devices()[:2]))
        list(ds.eval_iterator(6))
    assert str(error.value).startswith(f"cannot read image file {gone} (")
    assert "\n" not in str(error.value)
