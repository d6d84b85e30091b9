"""Class-per-folder datasets (`image_folder`, `animeface`) on PNG trees the tests write.

The reference decodes with Pillow and resizes with Pillow's float bilinear filter, which
matches `tf.image.resize` with antialiasing to ~1e-3 of a grey level.
"""
import logging
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from sagan_jax import data, parallel

CLASSES = ("a_dog", "b_cat", "c_owl")  # sorted: labels 0, 1, 2


def folder_config(path, **overrides) -> ml_collections.ConfigDict:
    """The base config's `data` section for a 16 px RGB folder dataset, with `overrides`."""
    cfg = common.get_base_config().data
    cfg.update({**dict(name="image_folder", image_size=16, channels=3, path=str(path)), **overrides})
    return cfg


def load(path, **overrides):
    return data.create_dataset(folder_config(path, **overrides), 4, seed=0,
                                         mesh=parallel.create_mesh(jax.devices()[:2]))


def write_png(path: pathlib.Path, shape, mode: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)


def reference(path: str, size: int, crop: bool = True) -> np.ndarray:
    """Pillow: decode to RGB, central square (or the whole image, stretched), float bilinear
    resize per channel (unrounded)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    side = min(rgb.shape[:2])
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    crop = rgb[top:top + side, left:left + side] if crop else rgb
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., c])).resize(
        (size, size), Image.BILINEAR)) for c in range(3)], -1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
    """3 classes of RGB, grayscale and RGBA PNGs of odd sizes, a nested folder, and the
    non-image files an extracted dataset carries (AnimeFace has a color.csv per class)."""
    root = tmp_path_factory.mktemp("faces")
    seed = 0
    for name in CLASSES:
        for i, (shape, mode) in enumerate([((40, 30, 3), "RGB"), ((20, 20), "L"),
                                           ((25, 35, 4), "RGBA")]):
            seed += 1
            write_png(root / name / f"face_{i}.png", shape, mode, seed)
        (root / name / "color.csv").write_text("r,g,b\n")
    write_png(root / "c_owl" / "more" / "face_9.png", (18, 18, 3), "RGB", 99)
    (root / "README.txt").write_text("extracted\n")
    return root


def expected_files(root: pathlib.Path) -> list[tuple[str, int]]:
    files = []
    for label, name in enumerate(CLASSES):
        files += [(str(p), label) for p in sorted((root / name).rglob("*.png"))]
    return files


def test_folder_images_labels_and_skipped_files(tree, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load(tree)
    files = expected_files(tree)
    assert (ds.num_examples, ds.num_classes, ds.image_size, ds.channels) == (10, 3, 16, 3)
    batch = ds.host_batch(0)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["label"].dtype == np.int32
    images, labels = zip(*[(b["image"], b["label"]) for b in ds.eval_iterator(4)])
    images, labels = np.concatenate(images), np.concatenate(labels)
    np.testing.assert_array_equal(labels, [label for _, label in files])
    want = np.clip(np.round(np.stack([reference(path, 16) for path, _ in files])), 0, 255)
    diff = np.abs((images + 1) * 127.5 - want)
    assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.01
    assert "ignoring 4 non-image files" in caplog.text


def test_without_center_crop_images_are_stretched(tree):
    """`data.center_crop=False` (the original's Oxford Flowers) squeezes the whole image."""
    ds = load(tree, center_crop=False)
    files = expected_files(tree)
    images = np.concatenate([b["image"] for b in ds.eval_iterator(100)])
    want = np.clip(np.round(np.stack([reference(p, 16, crop=False) for p, _ in files])), 0, 255)
    diff = np.abs((images + 1) * 127.5 - want)
    assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.01
    cropped = np.clip(np.round(np.stack([reference(p, 16) for p, _ in files])), 0, 255)
    assert np.abs((images + 1) * 127.5 - cropped).mean() > 5  # the two really differ


def test_animeface_reads_the_same_tree_in_gray(tree, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load(tree, name="animeface", channels=1, image_size=8)
    files = expected_files(tree)
    images = np.concatenate([b["image"] for b in ds.eval_iterator(100)])
    # TF's luma weights (ITU-R 601), applied before rounding to grey levels.
    gray = np.stack([reference(path, 8) for path, _ in files]) @ [0.2989, 0.5870, 0.1140]
    diff = np.abs((images[..., 0] + 1) * 127.5 - np.round(gray))
    assert ds.channels == 1 and diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.01
    assert "has 3 class folders; the full AnimeFace Character Dataset has 176" in caplog.text


def make_layout(root: pathlib.Path, layout: str) -> pathlib.Path:
    if layout == "one_class":
        write_png(root / "thumb" / "x.png", (8, 8, 3), "RGB", 0)
    elif layout == "class_without_images":
        write_png(root / "a" / "x.png", (8, 8, 3), "RGB", 0)
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("no images here")
    elif layout == "loose_images":
        write_png(root / "x.png", (8, 8, 3), "RGB", 0)
    return root if layout != "missing" else root / "nowhere"


@pytest.mark.parametrize("layout, error, match", [
    ("missing", FileNotFoundError, "does not exist .* set --config.data.path"),
    ("empty", FileNotFoundError, "holds no class sub-folders"),
    ("loose_images", FileNotFoundError, "holds no class sub-folders; expected .*/<class>/"),
    ("one_class", ValueError, "single class folder 'thumb'.*data.path=.*thumb"),
    ("class_without_images", ValueError, "has images .* in 1 class folder\\(s\\) \\(a\\).*at least 2"),
])
def test_bad_layouts_fail_with_one_line(tmp_path, layout, error, match):
    with pytest.raises(error, match=match) as info:
        load(make_layout(tmp_path, layout))
    assert "\n" not in str(info.value)


def test_empty_class_folders_are_skipped_with_one_warning(tree, tmp_path, caplog):
    """The original's AnimeFace loader deleted empty class folders, then indexed the rest:
    same labels, one warning naming them, and the folders stay."""
    for name in CLASSES:
        for png in sorted((tree / name).rglob("*.png")):
            target = tmp_path / name / png.relative_to(tree / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png.read_bytes())
    for name in ("a_empty", "b_dog_nested", "d_last"):
        (tmp_path / name).mkdir()
    (tmp_path / "b_dog_nested" / "sub").mkdir()
    (tmp_path / "d_last" / "color.csv").write_text("r,g,b\n")
    with caplog.at_level(logging.WARNING):
        ds = load(tmp_path)
    labels = np.concatenate([b["label"] for b in ds.eval_iterator(4)])
    np.testing.assert_array_equal(labels, [label for _, label in expected_files(tree)])
    assert ds.num_classes == 3
    warnings = [r.getMessage() for r in caplog.records if "hold no images" in r.getMessage()]
    assert len(warnings) == 1 and "(a_empty, b_dog_nested, d_last)" in warnings[0]
    assert all((tmp_path / name).is_dir() for name in ("a_empty", "b_dog_nested", "d_last"))


def test_missing_path_setting():
    with pytest.raises(ValueError, match="set --config.data.path"):
        load("")
