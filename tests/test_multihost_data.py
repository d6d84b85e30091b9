"""Two processes reading one dataset: the streamed batches they share, and a data source
that one of them cannot open.

Two processes on this machine (a localhost coordinator, 2 CPU devices each, collectives
over gloo, as in test_multihost.py) stream a class-per-folder tree of PNGs whose pixels
say which file each image is; this process (4 devices) streams the same tree as the
reference. Each image's left half is one colour and its right half another, so that
both the file and whether the batch mirrored it read back exactly after the resize to
16 px. Then `python -m sagan_jax.main` runs as two processes, one of which (either the
coordinator's or the other) is given a data folder that does not exist: it says so in
one line, the other says that it failed, and both stop at once.
"""
import json
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image
from two_processes import PROCESSES, REPO, free_port, start_workers, worker_env

from configs import common
from sagan_jax import data, parallel
from sagan_jax.data import pipeline

CLASSES = ("a_ant", "b_bee", "c_cat")
EXAMPLES = 60  # 20 per class; 60 // 8 = 7 batches per epoch, the last 4 files dropped.
GLOBAL_BATCH = 8
SEED = 3
# Dispatches of the plans read through `plan_iterator`: from the start, and a resumed
# run's, whose second dispatch crosses into epoch 1 and stops at one of its two places.
PLANS = ([(0, 2), (2, 2)], [(5, 2), (7, 1)])
PLAN_SIZE = 2
EVAL_BATCH = 7
# A run's processes give up on one that never joins a collective after minutes; the
# processes of a run that cannot open its data must stop well before that.
STOP_TIMEOUT_S = 120
GLOG_ERROR = re.compile(r"^[EF]\d{4} ", re.MULTILINE)


def write_tree(root: pathlib.Path) -> pathlib.Path:
    """`EXAMPLES` 32 px PNGs, file i (in the listing's order) with left half
    (i, 80 * label, 255 - i) and right half (255 - i, 80 * label, i)."""
    for i in range(EXAMPLES):
        label = i * len(CLASSES) // EXAMPLES
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[:, :16] = (i, 80 * label, 255 - i)
        pixels[:, 16:] = (255 - i, 80 * label, i)
        path = root / CLASSES[label] / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return root


def folder_config(path, **overrides) -> ml_collections.ConfigDict:
    """The base config's `data` section: the tree at `path`, 16 px RGB, streamed, mirrored."""
    cfg = common.get_base_config().data
    cfg.update({**dict(name="image_folder", image_size=16, channels=3, path=str(path),
                       pipeline="streamed", random_flip=True), **overrides})
    return cfg


def decode(images: np.ndarray, labels: np.ndarray) -> list[list]:
    """[file indices, mirrored flags] of the images of a batch (float32 in [-1, 1]).

    Columns 0-6 and 9-15 of the 16 px images keep the halves' colours exactly (the
    bilinear resize mixes only the two middle columns): a file's left half has red
    i <= 59, its right half red 255 - i >= 196.
    """
    pixels = np.rint((np.asarray(images, np.float64) + 1) * 127.5).astype(np.int64)
    indices, mirrored = [], []
    for image, label in zip(pixels, labels):
        left, right = image[:, :7].reshape(-1, 3), image[:, 9:].reshape(-1, 3)
        assert (left == left[0]).all() and (right == right[0]).all()
        flipped = bool(left[0, 0] >= 128)
        index = int(right[0, 0] if flipped else left[0, 0])
        unflipped = (index, 80 * label, 255 - index), (255 - index, 80 * label, index)
        assert tuple(left[0]) == unflipped[flipped] and tuple(right[0]) == unflipped[not flipped]
        assert label == index * len(CLASSES) // EXAMPLES
        indices.append(index)
        mirrored.append(flipped)
    return [indices, mirrored]


def local_part(array: jax.Array) -> np.ndarray:
    """This process's rows (axis 1) of a stacked global batch, in row order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[1].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards], axis=1)


def record(ds, mesh) -> dict:
    """What this process reads of `ds`: the rows it holds; (file, mirrored) of its part of
    each batch of epoch 0 and the first of epoch 1, through `host_batch` and through the
    dispatches of `PLANS`; and the files of `eval_iterator`."""
    steps = range(ds.steps_per_epoch + 1)
    host = [decode(b["image"], b["label"]) for b in map(ds.host_batch, steps)]
    plans = []
    for chunks in PLANS:
        read = {}
        for first, count, batches in ds.plan_iterator(chunks, PLAN_SIZE):
            images, labels = local_part(batches["image"]), local_part(batches["label"])
            assert not images[count:].any()  # The stacked axis past `count` is zeros.
            for i in range(count):
                read[first + i] = decode(images[i], labels[i])
        plans.append(read)
    evaluated = [decode(b["image"], b["label"])[0] for b in ds.eval_iterator(EVAL_BATCH)]
    return {"rows": pipeline.local_rows(mesh, GLOBAL_BATCH).tolist(), "host": host,
            "plans": [{str(k): v for k, v in p.items()} for p in plans],
            "eval": sum(evaluated, []), "steps_per_epoch": ds.steps_per_epoch,
            "num_examples": ds.num_examples, "local_batch_size": ds.local_batch_size}


# One process of the pair: streams the tree with its own read threads and workers (the
# batches may not depend on them) and writes what it read.
WORKER = textwrap.dedent("""
    import json, os, sys

    def main(repo, out, coordinator, process_id, root, threads, workers):
        sys.path[:0] = [repo, os.path.join(repo, "tests")]
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        from sagan_jax import startup
        startup.init(coordinator, 2, int(process_id))
        from sagan_jax import data, parallel
        import test_multihost_data as t

        mesh = parallel.create_mesh()
        cfg = t.folder_config(root, read_threads=int(threads), workers=int(workers))
        ds = data.create_dataset(cfg, t.GLOBAL_BATCH, t.SEED, mesh)
        with open(os.path.join(out, f"p{process_id}.json"), "w") as f:
            json.dump({"devices": jax.device_count(), **t.record(ds, mesh)}, f)

    if __name__ == "__main__":  # Not in grain's worker processes, which import this file.
        main(*sys.argv[1:])
""")



@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
    return write_tree(tmp_path_factory.mktemp("indexed"))


@pytest.mark.slow
def test_each_process_streams_a_disjoint_complete_share(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    started = time.time()
    # Process 0 reads in 2 threads of its own, process 1 in 3 threads of a grain worker.
    readers = [("2", "0"), ("3", "1")]
    workers, log = start_workers(tmp_path, WORKER, out, lambda p: [str(tree), *readers[p]])
    try:
        # Meanwhile, the reference: one process, 4 devices, the whole of every batch.
        assert jax.device_count() == 4
        mesh = parallel.create_mesh()
        one = record(data.create_dataset(folder_config(tree), GLOBAL_BATCH, SEED, mesh), mesh)
        codes = [w.wait(timeout=300) for w in workers]
        assert codes == [0, 0], log.read_text()[-4000:]
    finally:
        for w in workers:
            w.kill()
    two_s = time.time() - started
    two = [json.loads((out / f"p{p}.json").read_text()) for p in range(PROCESSES)]

    steps_per_epoch = EXAMPLES // GLOBAL_BATCH
    for r in (one, *two):
        assert r["steps_per_epoch"] == steps_per_epoch and r["num_examples"] == EXAMPLES
    assert [t["devices"] for t in two] == [4, 4]
    assert one["rows"] == list(range(GLOBAL_BATCH))
    assert [t["rows"] for t in two] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [t["local_batch_size"] for t in two] == [4, 4]

    # Batch k: its place in epoch k // 7's permutation, mirrored as (seed, k) draws, for
    # one process as for two.
    orders = [np.random.default_rng([SEED, e]).permutation(EXAMPLES) for e in (0, 1)]
    for step in range(steps_per_epoch + 1):
        epoch, position = divmod(step, steps_per_epoch)
        expected = orders[epoch][position * GLOBAL_BATCH:(position + 1) * GLOBAL_BATCH]
        mirrored = np.random.default_rng([SEED, step, 1]).random(GLOBAL_BATCH) < 0.5
        assert one["host"][step] == [expected.tolist(), mirrored.tolist()], step
        parts = [t["host"][step] for t in two]
        assert not set(parts[0][0]) & set(parts[1][0])
        for t, part in zip(two, parts):
            assert part == [expected[t["rows"]].tolist(), mirrored[t["rows"]].tolist()], step
    # Epoch 0: every file once, but for the 4 that do not fill a batch.
    epoch0 = sum((t["host"][s][0] for t in two for s in range(steps_per_epoch)), [])
    assert len(epoch0) == len(set(epoch0)) == steps_per_epoch * GLOBAL_BATCH
    assert set(range(EXAMPLES)) - set(epoch0) == set(orders[0][-(EXAMPLES % GLOBAL_BATCH):])

    # The trainer's path (grain's iterator, from the plan's first step) reads the same.
    for r in (one, *two):
        for plan, read in zip(PLANS, r["plans"]):
            assert sorted(map(int, read)) == [s for first, n in plan
                                              for s in range(first, first + n)]
            for step, part in read.items():
                assert part == r["host"][int(step)], step

    # The evaluator's pass: every other file on each process.
    assert one["eval"] == list(range(EXAMPLES))
    assert [t["eval"] for t in two] == [list(range(p, EXAMPLES, PROCESSES))
                                        for p in range(PROCESSES)]
    print(f"\ntwo processes streamed {steps_per_epoch + 1} batches each ({two_s:.1f} s)")


def run_main(tmp_path, paths, pipeline_choice):
    """`python -m sagan_jax.main` as two processes, process p reading `paths[p]`;
    returns each one's (exit status, stderr) and the seconds until both stopped."""
    coordinator = f"localhost:{free_port()}"
    env = {**worker_env(), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    logs = [tmp_path / f"p{p}.err" for p in range(PROCESSES)]
    started = time.time()
    processes = []
    for p in range(PROCESSES):
        with logs[p].open("w") as err:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "sagan_jax.main", "--config=configs/digits.py:test",
                 f"--workdir={tmp_path / 'run'}", "--config.data.name=image_folder",
                 f"--config.data.path={paths[p]}", f"--config.data.pipeline={pipeline_choice}",
                 "--config.train.compile_cache_dir=off", f"--coordinator_address={coordinator}",
                 f"--num_processes={PROCESSES}", f"--process_id={p}"],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err))
    deadline = started + STOP_TIMEOUT_S
    try:
        for w in processes:
            w.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass  # A process still running has no exit status: the test fails on it.
    finally:
        codes = [w.poll() for w in processes]
        for w in processes:
            w.kill()
    return codes, [log.read_text() for log in logs], time.time() - started


@pytest.mark.slow
@pytest.mark.parametrize("pipeline_choice,missing_on", [
    ("streamed", 1), ("memory", 1),
    ("streamed", 0),  # The process that hosts the coordinator.
])
def test_a_data_folder_missing_on_one_process_stops_all(tree, tmp_path, pipeline_choice,
                                                        missing_on):
    missing = tmp_path / "not_here"
    paths = [missing if p == missing_on else tree for p in range(PROCESSES)]
    codes, errs, seconds = run_main(tmp_path, paths, pipeline_choice)
    errors = [[line for line in err.splitlines() if line.startswith("error:")] for err in errs]
    assert codes == [1, 1], (codes, seconds, errs[0][-3000:], errs[1][-3000:])
    for p in range(PROCESSES):
        assert errors[p] == [
            f"error: data folder {missing} does not exist (or is not a folder); set "
            "--config.data.path to the folder that holds one sub-folder per class."
            if p == missing_on else
            f"error: opening dataset 'image_folder' failed on process(es) {missing_on} (its "
            "own log says why); every process stops."], errs[p]
        # No traceback, and no error of JAX's distributed service (it logs as glog).
        assert "Traceback" not in errs[p] and not GLOG_ERROR.search(errs[p]), errs[p]
    print(f"\n{pipeline_choice}, no data on process {missing_on}: both processes stopped "
          f"{seconds:.1f} s after they started")
