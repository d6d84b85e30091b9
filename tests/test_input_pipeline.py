"""Input pipeline: digits and TFDS sources, batching, determinism, resume and sharding.

References are independent of the code under test: scikit-learn's raw digits, TFDS's own
(mocked) examples, and Pillow's float resize (which matches `tf.image.resize` with
antialiasing to ~1e-3 of a grey level).
"""
import jax
import ml_collections
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from configs import common
from sagan_jax import data, parallel, periods
from sagan_jax.data import sources, tfds_datasets


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The base config's `data` section (16 px grey digits) with `overrides`."""
    cfg = common.get_base_config().data
    cfg.update({**dict(name="digits", image_size=16, channels=1), **overrides})
    return cfg


def mesh_of(n: int):
    return parallel.create_mesh(jax.devices()[:n])


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Central square, then Pillow's float bilinear resize per channel, rounded to uint8 levels."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top:top + side, left:left + side].astype(np.float32)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., c])).resize(
        (size, size), Image.BILINEAR)) for c in range(crop.shape[-1])]
    return np.clip(np.round(np.stack(channels, -1)), 0, 255)


def all_examples(ds) -> tuple[np.ndarray, np.ndarray]:
    batches = list(ds.eval_iterator(500))
    return (np.concatenate([b["image"] for b in batches]),
            np.concatenate([b["label"] for b in batches]))


def indexed_dataset(n: int, batch: int, mesh, seed: int = 0, prefetch: int = 2):
    """A Dataset whose example i carries i in its first two pixels (i < 65536)."""
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    labels = (np.arange(n) % 7).astype(np.int32)
    return data.Dataset(images, labels, 7, batch, seed, mesh, prefetch)


def example_ids(images) -> np.ndarray:
    levels = np.rint((np.asarray(images) + 1.0) * 127.5).astype(np.int64)
    return levels[:, 0, 0, 0] + 256 * levels[:, 0, 1, 0]


@pytest.fixture(scope="module")
def digits16():
    return data.create_dataset(data_config(), 64, seed=0, mesh=mesh_of(1))


def test_digits_are_the_real_1797_images(digits16):
    images, labels = all_examples(digits16)
    raw = load_digits()
    assert (digits16.num_examples, digits16.num_classes) == (1797, 10)
    assert (digits16.image_size, digits16.channels) == (16, 1)
    assert images.shape == (1797, 16, 16, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, raw.target)
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(raw.target))
    assert np.bincount(labels).min() >= 174 and np.bincount(labels).max() <= 183
    assert images.min() == -1.0 and images.max() == 1.0
    reference = np.stack([pil_resize(x[..., None] * 255 / 16, 16) for x in raw.images])
    diff = np.abs((images + 1) * 127.5 - reference)
    assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.01


def test_digits_native_size_maps_0_16_onto_minus1_1():
    ds = data.create_dataset(data_config(image_size=8), 64, seed=0, mesh=mesh_of(1))
    images, _ = all_examples(ds)
    expected = np.round(load_digits().images * 255 / 16) / 127.5 - 1
    np.testing.assert_allclose(images[..., 0], expected, atol=1e-6)


def test_digits_three_channels_replicate_gray(digits16):
    ds = data.create_dataset(data_config(channels=3), 64, seed=0, mesh=mesh_of(1))
    rgb, _ = all_examples(ds)
    gray, _ = all_examples(digits16)
    assert ds.channels == 3
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c:c + 1], gray)


def test_resize_method_is_configurable(digits16):
    ds = data.create_dataset(data_config(resize="nearest"), 64, 0, mesh_of(1))
    nearest, _ = all_examples(ds)
    expected = np.repeat(np.repeat(np.round(load_digits().images * 255 / 16), 2, 1), 2, 2)
    np.testing.assert_allclose(nearest[..., 0], expected / 127.5 - 1, atol=1e-6)
    assert not np.array_equal(nearest, all_examples(digits16)[0])


def test_each_process_gets_an_equal_disjoint_share():
    cfg = data_config(image_size=8)
    whole = sources.load_examples(cfg, 0, 1)
    shares = [sources.load_examples(cfg, p, 4) for p in range(4)]
    assert [len(s.labels) for s in shares] == [449] * 4  # 1797 = 4 * 449 + 1 dropped
    for p, share in enumerate(shares):
        np.testing.assert_array_equal(share.images, whole.images[p:1796:4])
        np.testing.assert_array_equal(share.labels, whole.labels[p:1796:4])


def test_epochs_visit_every_example_once_and_drop_the_remainder():
    ds = indexed_dataset(n=103, batch=10, mesh=mesh_of(1))
    assert ds.steps_per_epoch == 10
    epochs = [np.concatenate([example_ids(ds.host_batch(e * 10 + s)["image"])
                              for s in range(10)]) for e in range(2)]
    for ids in epochs:
        assert len(np.unique(ids)) == 100 and ids.max() < 103
    assert not np.array_equal(epochs[0], epochs[1])
    first = ds.host_batch(0)
    np.testing.assert_array_equal(first["label"], example_ids(first["image"]) % 7)


def test_same_seed_same_batches_other_seed_other_batches():
    a, b = (indexed_dataset(50, 8, mesh_of(1), seed=3) for _ in range(2))
    c = indexed_dataset(50, 8, mesh_of(1), seed=4)
    for step in (0, 5, 13):
        np.testing.assert_array_equal(a.host_batch(step)["image"], b.host_batch(step)["image"])
    assert not np.array_equal(a.host_batch(0)["image"], c.host_batch(0)["image"])


def plan(start, k, num_steps=9, checkpoint_every=4):
    """`Periods.chunks` of a run of `num_steps` with checkpoints every `checkpoint_every`."""
    return periods.Periods(num_steps=num_steps, steps_per_epoch=3, sample_every=0,
                           checkpoint_every=checkpoint_every, checkpoint_offset=0,
                           eval_every=0, log_every=0).chunks(start, k)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_plan_iterator_stacks_each_dispatch_and_resumes_like_an_unbroken_run(prefetch):
    """Up to 3 steps per dispatch, dispatches ending at the checkpoints of steps 4 and 8:
    each dispatch holds its steps' batches in order, then zeros; a run resumed at step 4
    gets the unbroken run's dispatches from there."""
    ds = indexed_dataset(n=30, batch=8, mesh=mesh_of(1), prefetch=prefetch)
    unbroken = list(ds.plan_iterator(plan(0, 3), 3))  # 3 steps per epoch: crosses 2 epochs
    assert [(first, count) for first, count, _ in unbroken] == [
        (0, 3), (3, 1), (4, 3), (7, 1), (8, 1)]
    for first, count, batches in unbroken:
        assert batches["image"].shape == (3, 8, 4, 4, 3) and batches["label"].shape == (3, 8)
        for i in range(count):  # host_batch's order is tested above.
            for key in ("image", "label"):
                np.testing.assert_array_equal(batches[key][i], ds.host_batch(first + i)[key])
        assert not np.asarray(batches["image"][count:]).any()
    resumed = ds.plan_iterator(plan(4, 3), 3)
    for (first, count, want), (got_first, got_count, got) in zip(unbroken[2:], resumed,
                                                                 strict=True):
        assert (got_first, got_count) == (first, count)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
    resumed.close()


@pytest.mark.parametrize("num_devices", [2, 4])
def test_device_shards_are_disjoint_and_cover_the_batch(num_devices):
    mesh = mesh_of(num_devices)
    ds = indexed_dataset(n=64, batch=16, mesh=mesh)
    it = ds.plan_iterator([(5, 1)], 1)
    _, _, batch = next(it)
    it.close()
    expected = ds.host_batch(5)
    for key in ("image", "label"):
        array = batch[key]
        assert array.shape[:2] == (1, 16)
        assert array.sharding == parallel.stacked_batch_sharding(mesh)
        shards = sorted(array.addressable_shards, key=lambda s: s.index[1].start)
        assert len(shards) == num_devices
        assert {s.device for s in shards} == set(mesh.devices.flat)
        bounds = [(s.index[1].start, s.index[1].stop) for s in shards]
        assert bounds == [(i * 16 // num_devices, (i + 1) * 16 // num_devices)
                          for i in range(num_devices)]
        np.testing.assert_array_equal(np.concatenate([np.asarray(s.data)[0] for s in shards]),
                                      expected[key])
    assert len(np.unique(example_ids(batch["image"][0]))) == 16


def test_prefetch_thread_errors_reach_the_consumer(monkeypatch):
    ds = indexed_dataset(n=30, batch=8, mesh=mesh_of(1))

    def broken(step):
        raise RuntimeError(f"step {step} failed")

    monkeypatch.setattr(ds, "host_batch", broken)
    it = ds.plan_iterator([(2, 1), (3, 1)], 1)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="step 2 failed"):
            next(it)


@pytest.fixture
def servers_reachable(monkeypatch):
    """The datasets' servers count as reachable (this machine may be offline), so that
    TFDS's mock data or a mocked download failure stands in for the download itself."""
    monkeypatch.setattr(tfds_datasets, "unreachable", lambda server: None)


def test_imagenet_without_its_archives_stops_at_once_with_one_line(tmp_path):
    """TFDS cannot download ImageNet: with neither a prepared copy nor the archives the
    run stops in one line saying where to put them, without looking for a server."""
    def no_server(server):
        raise AssertionError(f"looked up {server!r}")

    cfg = data_config(name="imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir="")
    with pytest.raises(FileNotFoundError) as e:
        tfds_datasets._prepare("imagenet2012", tfds_datasets.TFDS_DATASETS["imagenet2012"], cfg, tfds,
                               no_server)
    message = str(e.value)
    assert "\n" not in message and "TFDS cannot download 'imagenet2012'" in message
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert "--config.data.manual_dir" in message and "--config.data.data_dir" in message


@pytest.mark.usefixtures("servers_reachable")
@pytest.mark.parametrize("name, variant, split, size, num_classes", [
    ("cifar10", "labelled", "train", 32, 10),
    ("stl10", "labelled", "train+test", 48, 10),
    ("stl10", "unlabelled", "unlabelled", 48, 0),
    ("oxford_flowers102", "labelled", "train+validation+test", 96, 102),
    ("imagenet2012", "labelled", "train", 128, 1000),
])
def test_tfds_datasets(name, variant, split, size, num_classes):
    with tfds.testing.mock_data(num_examples=12):
        ds = data.create_dataset(
            data_config(name=name, variant=variant, image_size=size, channels=3,
                        pipeline="memory"), 8, seed=1, mesh=mesh_of(2))
        raw = list(tfds.builder(name).as_dataset(split=split).as_numpy_iterator())
    assert (ds.num_examples, ds.num_classes, ds.image_size, ds.channels) == (
        12, num_classes, size, 3)
    batch = ds.host_batch(0)
    assert batch["image"].shape == (8, size, size, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    images, labels = all_examples(ds)
    assert images.min() >= -1.0 and images.max() <= 1.0
    if num_classes:
        np.testing.assert_array_equal(labels, [ex["label"] for ex in raw])
        assert labels.min() >= 0 and labels.max() < num_classes
    else:
        np.testing.assert_array_equal(labels, 0)
    reference = np.stack([pil_resize(ex["image"], size) for ex in raw])
    diff = np.abs((images + 1) * 127.5 - reference)
    assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.05


@pytest.mark.usefixtures("servers_reachable")
def test_tfds_download_failure_says_how_to_place_the_data(monkeypatch, tmp_path):
    def offline(self, *args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    cfg = data_config(name="cifar10", image_size=32, channels=3, data_dir=str(tmp_path))
    with pytest.raises(ConnectionError) as error:
        data.create_dataset(cfg, 8, seed=0, mesh=mesh_of(1))
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    for part in ("Failed to resolve", "data_dir", "manual_dir", "cifar-10-binary.tar.gz",
                 "tfds build cifar10"):
        assert part in message


@pytest.mark.parametrize("overrides, error, match", [
    (dict(name="mnist"), ValueError, "one of digits, cifar10, stl10, oxford_flowers102, "
                                     "imagenet2012, animeface, image_folder"),
    (dict(resize="cubic"), ValueError, "--config.data.resize"),
    (dict(channels=2), ValueError, "--config.data.channels to 1 or 3"),
    (dict(name="stl10", variant="extra"), ValueError, "labelled, unlabelled"),
])
def test_bad_settings_fail_with_one_line(overrides, error, match):
    with pytest.raises(error, match=match) as info:
        data.create_dataset(data_config(**overrides), 8, seed=0, mesh=mesh_of(1))
    assert "\n" not in str(info.value)


def test_batch_must_split_over_the_devices_and_fit_the_data():
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        data.create_dataset(data_config(), 6, seed=0, mesh=mesh_of(4))
    with pytest.raises(ValueError, match="larger than the dataset .50 examples"):
        indexed_dataset(n=50, batch=64, mesh=mesh_of(1))
