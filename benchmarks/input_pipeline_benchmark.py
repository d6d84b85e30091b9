"""Input pipeline throughput: one-off decode+resize, then sharded global batches per second.

Workloads: the digits quick start at 32 px (3 channels) and a class-per-folder tree of 160x160
PNGs (the size of AnimeFace's thumbnails) resized to 96 px. "load once" rows time decoding and
resizing the whole dataset into memory (batch = all its examples, ms/iter = the whole load,
TensorFlow's import excluded); "batches" rows time the steady-state prefetching iterator, whose
consumer only waits for each batch: the most the pipeline can feed a training step. The
"in memory" rows repeat that on random arrays as large as CIFAR-10 (50,000 x 32 px) and
AnimeFace (14,490 x 96 px), since gathering from a larger array touches more memory.

The "streamed" rows time the streamed path (`data.pipeline='streamed'`, grain) on a folder of
JPEGs of ImageNet's sizes and file sizes (500x375, 375x500, 500x333, 640x480, 400x400; about
110 KB each at quality 90; smooth content: blurred noise, gradients and fine grain, which
decode like photos rather than like pure noise), decoded, centre-cropped, resized to 128 px
and randomly flipped for each batch, at the batch one host of a v4-32 feeds (256 over 4
hosts = 64): in threads of this process (`data.workers=0`, several `data.read_threads`),
then in 1 and 2 grain worker processes. The lines after the table give the CPU time per
image of the rows without workers (this process's, all threads), and turn the rates with
workers into the workers that one host needs to keep up with a step of `--step_ms`
(default: the original PyTorch code's 179.6 ms/iter, 96 px model at batch 128, float32,
one H100).

  python benchmarks/input_pipeline_benchmark.py [--steps 50] [--folder_images 2000]
      [--jpeg_images 2000] [--stream_steps 20] [--stream_threads 1,2,4,8]
      [--stream_workers 1,2] [--worker_threads 4] [--step_ms 179.6]
"""
import argparse
import itertools
import math
import os
import pathlib
import sys
import tempfile
import threading
import time

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`
from configs import common  # pylint: disable=wrong-import-position
from sagan_jax import data, parallel, startup  # pylint: disable=wrong-import-position

# One host of a v4-32 (4 hosts, 16 chips) reads a quarter of the global batch of 256.
V4_32_HOSTS, GLOBAL_BATCH = 4, 256
# The step the streamed path must keep up with until the accelerator benchmark has run: the
# original PyTorch code's 96 px model at batch 128, float32, on one H100 (ms/iter).
REFERENCE_STEP_MS = 179.6
# (width, height) of the JPEGs, cycled: ImageNet's commonest shapes and a square.
JPEG_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (400, 400))


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


def smooth_images(rng: np.random.Generator, count: int, side: int) -> list[np.ndarray]:
    """`count` uint8 (side, side, 3) images that compress and decode like photos: random
    colour blobs (bicubic upsampling of a coarse random grid), a gradient, and fine grain
    (blurred noise); pure noise would compress badly and decode several times slower."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    images = []
    for _ in range(count):
        coarse = rng.normal(128, 50, (side // 40 + 2, side // 40 + 2, 3)).clip(0, 255)
        image = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
            (side, side), Image.BICUBIC), np.float32)
        image += (rng.uniform(-60, 60) * xx + rng.uniform(-60, 60) * yy)[..., None]
        grain = rng.normal(128, 80, (side, side, 3)).clip(0, 255).astype(np.uint8)
        image += np.asarray(Image.fromarray(grain).filter(ImageFilter.GaussianBlur(0.8)),
                            np.float32) - 128
        images.append(image.clip(0, 255).astype(np.uint8))
    return images


def write_jpeg_folder(root: pathlib.Path, num_images: int, sizes=JPEG_SIZES,
                      quality: int = 90, num_classes: int = 10, bases: int = 16) -> int:
    """`num_images` JPEGs in `num_classes` class folders, each a random crop of one of
    `bases` smooth images (`smooth_images`), of the `sizes` in turn; returns their bytes."""
    rng = np.random.default_rng(0)
    pool = smooth_images(rng, bases, max(max(size) for size in sizes))
    total = 0
    for i in range(num_images):
        base, (width, height) = pool[i % bases], sizes[i % len(sizes)]
        top = rng.integers(0, base.shape[0] - height + 1)
        left = rng.integers(0, base.shape[1] - width + 1)
        folder = root / f"class_{i % num_classes:03d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"image_{i:06d}.jpg"
        Image.fromarray(base[top:top + height, left:left + width]).save(path, quality=quality)
        total += path.stat().st_size
    return total


def time_iterator(ds, steps: int) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) per batch of the prefetching plan iterator
    (one step per dispatch, as the trainer's default), after 3 warm-up batches."""
    it = ds.plan_iterator(((step, 1) for step in itertools.count()), 1)
    for _ in range(3):
        jax.block_until_ready(next(it)[2])
    start, cpu = time.perf_counter(), sum(os.times()[:2])
    for _ in range(steps):
        jax.block_until_ready(next(it)[2])
    seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (sum(os.times()[:2]) - cpu) / steps
    it.close()
    return seconds, cpu_seconds


def time_streamed(cfg: ml_collections.ConfigDict, batch: int, steps: int,
                  mesh) -> tuple[float, float]:
    """`time_iterator` of the streamed path.

    Without worker processes, grain's reading threads finish the batches in flight after
    the iterator is closed; they are waited for, so that they neither slow the next row
    nor read a deleted folder.
    """
    times = time_iterator(data.create_dataset(cfg, batch, seed=0, mesh=mesh), steps)
    for thread in threading.enumerate():
        if thread.name.startswith("grain-"):
            thread.join()
    return times


def counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    return [int(n) for n in text.split(",") if n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--folder_images", type=int, default=2000)
    parser.add_argument("--jpeg_images", type=int, default=2000)
    parser.add_argument("--stream_steps", type=int, default=20)
    parser.add_argument("--stream_threads", type=counts, default=[1, 2, 4, 8],
                        help="data.read_threads of the rows without worker processes")
    parser.add_argument("--stream_workers", type=counts, default=[1, 2],
                        help="data.workers of the rows with worker processes")
    parser.add_argument("--worker_threads", type=int, default=4,
                        help="data.read_threads of each worker process")
    parser.add_argument("--step_ms", type=float, default=REFERENCE_STEP_MS,
                        help="the training step that one host's batch has to keep up with")
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
            seconds = time_iterator(ds, args.steps)[0]
            rows.append((f"{name}: batches", device, batch, seconds * 1e3, batch / seconds))
    host_batch = GLOBAL_BATCH // V4_32_HOSTS
    stream_rows, loads = {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_bytes = write_jpeg_folder(pathlib.Path(tmp), args.jpeg_images)
        settings = [(threads, 0) for threads in args.stream_threads]
        settings += [(args.worker_threads, workers) for workers in args.stream_workers]
        for threads, workers in settings:
            cfg = data_config(name="image_folder", path=tmp, image_size=128,
                              pipeline="streamed", read_threads=threads, workers=workers,
                              random_flip=True)
            seconds, cpu = time_streamed(cfg, host_batch, args.stream_steps, mesh)
            name = f"streamed JPEG->128 px: {threads} thr, {workers} wkr"
            rows.append((name, device, host_batch, seconds * 1e3, host_batch / seconds))
            stream_rows[threads, workers] = (host_batch / seconds, cpu)
        loads.append(os.getloadavg()[0])
    rng = np.random.default_rng(0)
    for name, n, size, batch in [("in memory 50,000 x 32 px", 50_000, 32, 256),
                                 ("in memory 14,490 x 96 px", 14_490, 96, 128)]:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        ds = data.Dataset(images, np.zeros(n, np.int32), 10, batch, 0, mesh)
        seconds = time_iterator(ds, args.steps)[0]
        rows.append((f"{name}: batches", device, batch, seconds * 1e3, batch / seconds))
    print(f"{'workload':<40} {'device':<8} {'batch':>6} {'ms/iter':>9} {'img/s':>10} "
          f"{'TFLOP/s':>8}")
    for name, dev, batch, ms, rate in rows:
        print(f"{name:<40} {dev:<8} {batch:>6} {ms:>9.1f} {rate:>10,.0f} {'-':>8}")
    print(f"streamed JPEGs: {args.jpeg_images} files, {jpeg_bytes / args.jpeg_images / 1024:.0f} "
          f"KB each on average; {os.cpu_count()} CPUs here, 1-minute load average "
          f"{loads[0]:.2f} before the streamed rows, {loads[1]:.2f} after.")
    for (threads, workers), (rate, cpu) in stream_rows.items():
        if workers == 0:
            print(f"  {threads} thr, 0 wkr: {cpu * 1e3 / host_batch:.1f} CPU ms per image in "
                  f"this process = {host_batch / cpu:,.0f} img/s per busy core.")
    needed = host_batch / (args.step_ms / 1e3)
    print(f"one v4-32 host feeds {host_batch} images per step; at {args.step_ms} ms/step that "
          f"is {needed:,.0f} img/s.")
    for workers in args.stream_workers:
        rate = stream_rows[args.worker_threads, workers][0]
        print(f"  with {workers} worker process(es) here: {rate / workers:,.0f} img/s per "
              f"worker -> {math.ceil(needed / (rate / workers))} worker(s) per host.")


if __name__ == "__main__":
    main()
