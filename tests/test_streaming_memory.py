"""The streamed input path's memory: training on a folder of 20,000 JPEGs at 128 px (about
1 GB decoded, which the in-memory path would hold) grows the process's resident memory by
less than 300 MB after warm-up.

Measured, not estimated: a background thread samples the process's resident set size
(VmRSS of /proc/self/status) while `train.train_and_evaluate` trains the ImageNet 128 px
test model on the folder with `data.pipeline='streamed'`, batch 32 over the test session's
4 host devices. A whole epoch (625 steps) would take about 20 minutes on this project's
2-core CPU, so the run is `NUM_STEPS` = 50 steps: 1,600 files decoded, each once, 2
minutes in all (at batch 64 and 100 steps, 5-7 minutes, the growth was the same: +19 and
+22 MB, benchmarks/RESULTS.md). The warm-up value is the largest RSS while the trainer takes batches
`WARM_UP_STEPS` .. 2 * `WARM_UP_STEPS` - 1 (programs compiled, grain's threads and buffers
full); the growth is the largest RSS from then until the last batch is taken, minus that.
Opening the dataset must not grow RSS by the dataset's size either (the in-memory path
grew by 1.9 GB there, benchmarks/RESULTS.md).
"""
import importlib
import pathlib
import threading
import time

import numpy as np
import pytest
from compiled_once import PROGRAMS
from PIL import Image, ImageFilter

from sagan_jax import data, train

NUM_IMAGES = 20_000
NUM_CLASSES = 10
IMAGE_SIZE = 128
JPEG_SIDE = 144  # Resized to 128 px by the pipeline, as a real folder would be.
BATCH_SIZE = 32
NUM_STEPS = 50
WARM_UP_STEPS = 10
LIMIT_BYTES = 300 * 2 ** 20


def resident_bytes() -> int:
    """This process's resident set size (VmRSS), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_jpegs(root: pathlib.Path, num_images: int, num_classes: int = NUM_CLASSES,
                side: int = JPEG_SIDE) -> None:
    """`num_images` JPEGs (quality 75) of `side` px in `num_classes` class folders: random
    crops of 16 smooth random images (blurred colour noise and a gradient), fast to make."""
    rng = np.random.default_rng(0)
    big = 2 * side
    yy, xx = np.mgrid[0:big, 0:big] / big
    pool = []
    for _ in range(16):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((big, big), Image.BICUBIC), np.float32)
        image += (rng.uniform(-60, 60) * xx + rng.uniform(-60, 60) * yy)[..., None]
        grain = Image.fromarray(rng.integers(0, 256, (big, big, 3), dtype=np.uint8))
        image += 0.3 * (np.asarray(grain.filter(ImageFilter.GaussianBlur(1)), np.float32) - 128)
        pool.append(image.clip(0, 255).astype(np.uint8))
    for c in range(num_classes):
        (root / f"class_{c:02d}").mkdir(parents=True)
    corners = rng.integers(0, big - side + 1, (num_images, 2))
    for i, (top, left) in enumerate(corners):
        crop = pool[i % len(pool)][top:top + side, left:left + side]
        Image.fromarray(crop).save(root / f"class_{i % num_classes:02d}" / f"{i:05d}.jpg",
                                   quality=75)


class MemorySampler:
    """Samples `resident_bytes()` every `interval` seconds in a thread, each sample with the
    number of batches the trainer had taken by then (`batches`, set by `count_batches`)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.batches, self.samples = interval, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((self.batches, resident_bytes()))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((self.batches, resident_bytes()))

    def count_batches(self, iterator):
        """`iterator` (the trainer's batches), counting them in `batches`."""
        try:
            for item in iterator:
                self.batches += item[1]
                yield item
        finally:
            iterator.close()

    def growth_after(self, warm_up: int) -> tuple[int, int]:
        """(the largest RSS while batches `warm_up` .. `2 * warm_up - 1` were taken, the
        largest after them until the last batch was taken), in bytes. Maxima over many
        steps, not single samples: RSS rises and falls within each step by the step's
        working set. The run's end (its checkpoint, the interpolation grid) is not the
        input path's and is left out."""
        window = [rss for batches, rss in self.samples if warm_up <= batches < 2 * warm_up]
        after = [rss for batches, rss in self.samples if 2 * warm_up <= batches < self.batches]
        return max(window), max(after)


def config_for(folder, pipeline: str, num_steps: int = NUM_STEPS):
    """The ImageNet 128 px test model without its attention blocks, on `folder`, read by
    `pipeline`; only the final checkpoint, no grids or scores, one log line at the end.

    Attention at 64 px (4096 x 4096 maps) would be most of the step's time on this CPU
    and swing RSS by about 0.7 GB within each step; the input path is what is measured.
    """
    config = importlib.import_module("configs.imagenet128").get_config("test")
    config.model.g_attention = config.model.d_attention = ()
    config.data.update(dict(name="image_folder", path=str(folder), pipeline=pipeline,
                            random_flip=True, read_threads=4, workers=0))
    config.train.batch_size = BATCH_SIZE
    config.train.num_steps = num_steps
    config.log.every_steps = num_steps
    config.log.sample_every_steps = config.log.sample_every_epochs = 0
    config.checkpoint.every_steps = config.checkpoint.every_epochs = 0
    return config


def train_measured(config, workdir, monkeypatch, sampler: MemorySampler) -> dict:
    """Trains `config` with `sampler` counting batches; returns the RSS (bytes) just before
    and just after the trainer opened its dataset."""
    opened = {}
    create_dataset = data.create_dataset

    def measured_create_dataset(*args, **kwargs):
        opened["before"] = resident_bytes()
        ds = create_dataset(*args, **kwargs)
        opened["after"] = resident_bytes()
        plan_iterator = ds.plan_iterator
        ds.plan_iterator = lambda *a: sampler.count_batches(plan_iterator(*a))
        return ds

    monkeypatch.setattr(data, "create_dataset", measured_create_dataset)
    with sampler:
        train.train_and_evaluate(config, str(workdir), programs=PROGRAMS)
    return opened


@pytest.mark.slow
def test_streamed_training_keeps_memory_flat(tmp_path, monkeypatch):
    import tensorflow  # noqa: F401 -- imported before measuring; the trainer decodes with it.

    folder = tmp_path / "jpegs"
    write_jpegs(folder, NUM_IMAGES)
    decoded_bytes = NUM_IMAGES * IMAGE_SIZE ** 2 * 3
    sampler = MemorySampler()
    opened = train_measured(config_for(folder, "streamed"), tmp_path / "run", monkeypatch,
                            sampler)
    assert sampler.batches == NUM_STEPS
    warm, peak = sampler.growth_after(WARM_UP_STEPS)
    growth = peak - warm
    print(f"RSS at steps {WARM_UP_STEPS}-{2 * WARM_UP_STEPS - 1}: {warm / 2**20:.0f} MB, "
          f"peak after them {peak / 2**20:.0f} MB (+{growth / 2**20:.0f} MB); opening the dataset "
          f"+{(opened['after'] - opened['before']) / 2**20:.0f} MB; decoded dataset "
          f"{decoded_bytes / 2**20:.0f} MB")
    assert growth < LIMIT_BYTES
    assert opened["after"] - opened["before"] < LIMIT_BYTES < decoded_bytes
