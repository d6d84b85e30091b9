"""Input pipeline throughput: one-off decode+resize, then sharded global batches per second.

Workloads: the digits quick start at 32 px (3 channels) and a class-per-folder tree of 160x160
PNGs (the size of AnimeFace's thumbnails) resized to 96 px. "load once" rows time decoding and
resizing the whole dataset into memory (batch = all its examples, ms/iter = the whole load,
TensorFlow's import excluded); "batches" rows time the steady-state prefetching iterator, whose
consumer only waits for each batch: the most the pipeline can feed a training step. The
"in memory" rows repeat that on random arrays as large as CIFAR-10 (50,000 x 32 px) and
AnimeFace (14,490 x 96 px), since gathering from a larger array touches more memory.

  python benchmarks/input_pipeline_benchmark.py [--steps 50] [--folder_images 2000]
"""
import argparse
import itertools
import pathlib
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`
from configs import common  # pylint: disable=wrong-import-position
from sagan_jax import data, parallel, startup  # pylint: disable=wrong-import-position


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The base config's `data` section (32 px RGB digits) with `overrides`."""
    cfg = common.get_base_config().data
    cfg.update({**dict(name="digits", image_size=32, channels=3), **overrides})
    return cfg


def write_folder(root: pathlib.Path, num_images: int, num_classes: int = 10) -> None:
    """Random 160x160 RGB PNGs in `num_classes` class folders."""
    rng = np.random.default_rng(0)
    for i in range(num_images):
        folder = root / f"class_{i % num_classes:03d}"
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"face_{i:05d}.png", compress_level=1)


def time_iterator(ds, steps: int) -> float:
    """Seconds per batch of the prefetching plan iterator (one step per dispatch, as the
    trainer's default), after 3 warm-up batches."""
    it = ds.plan_iterator(((step, 1) for step in itertools.count()), 1)
    for _ in range(3):
        jax.block_until_ready(next(it)[2])
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(next(it)[2])
    seconds = (time.perf_counter() - start) / steps
    it.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--folder_images", type=int, default=2000)
    args = parser.parse_args()
    mesh = parallel.create_mesh(jax.devices()[:1])
    device = jax.devices()[0].device_kind
    startup.hide_gpus_from_tensorflow()  # Imports TF outside the timed loads.
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(pathlib.Path(tmp), args.folder_images)
        workloads = [
            ("digits 8->32 px, RGB", data_config(), 256),
            ("PNG folder 160->96 px", data_config(name="image_folder", path=tmp,
                                                   image_size=96), 128),
        ]
        for name, cfg, batch in workloads:
            start = time.perf_counter()
            ds = data.create_dataset(cfg, batch, seed=0, mesh=mesh)
            load = time.perf_counter() - start
            rows.append((f"{name}: load once", device, ds.num_examples, load * 1e3,
                         ds.num_examples / load))
            seconds = time_iterator(ds, args.steps)
            rows.append((f"{name}: batches", device, batch, seconds * 1e3, batch / seconds))
    rng = np.random.default_rng(0)
    for name, n, size, batch in [("in memory 50,000 x 32 px", 50_000, 32, 256),
                                 ("in memory 14,490 x 96 px", 14_490, 96, 128)]:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        ds = data.Dataset(images, np.zeros(n, np.int32), 10, batch, 0, mesh)
        seconds = time_iterator(ds, args.steps)
        rows.append((f"{name}: batches", device, batch, seconds * 1e3, batch / seconds))
    print(f"{'workload':<34} {'device':<8} {'batch':>6} {'ms/iter':>9} {'img/s':>10} "
          f"{'TFLOP/s':>8}")
    for name, dev, batch, ms, rate in rows:
        print(f"{name:<34} {dev:<8} {batch:>6} {ms:>9.1f} {rate:>10,.0f} {'-':>8}")


if __name__ == "__main__":
    main()
