"""The driver end to end: every config's `test` variant, resume, SIGKILL while saving,
the NaN guard and the bad inputs a user can give, through `train.train_and_evaluate`.
(`compiled_once.PROGRAMS`: one compilation per architecture for all these runs.)
"""
import glob
import importlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from compiled_once import PROGRAMS, programs_built
from PIL import Image

from sagan_jax import checkpointing, data, gan as gan_lib, train
from sagan_jax import workdir as workdir_lib
from sagan_jax.data import tfds_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg="test"):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def assert_same_state(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def png_tree(root, classes, per_class, size=20):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c}"))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, f"class_{c}", f"{i}.png"))
    return root


def run_driver(config, workdir):
    """`train.train_and_evaluate` with the module's shared compilations."""
    return train.train_and_evaluate(config, workdir, programs=PROGRAMS)


def event_tags(workdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"])


# AnimeFace's test tree has Flowers' 102 classes, so both 96 px runs share one compilation.
@pytest.mark.parametrize("name,classes", [
    pytest.param("digits", 10, marks=pytest.mark.smoke),
    *(pytest.param(name, classes, marks=pytest.mark.slow) for name, classes in (
        ("cifar10", 10), ("stl10", 10), ("flowers", 102), ("animeface", 102),
        ("imagenet128", 1000)))])
def test_config_test_variant_trains_end_to_end(name, classes, tmp_path, monkeypatch):
    # TFDS's mock data stands in for the download; this machine may be offline.
    monkeypatch.setattr(tfds_datasets, "unreachable", lambda server: None)
    config = load(name)
    if name == "digits":  # The quick start's hook: digits-net scores at step 2 and the end.
        config.eval.every_steps = 2
        config.eval.stats_dir = str(tmp_path / "stats")
    elif name == "cifar10":  # Without Inception weights the run goes on unscored.
        config.eval.every_steps = 2
        config.eval.inception_weights = str(tmp_path / "missing.npz")
    elif name == "animeface":
        config.data.path = png_tree(str(tmp_path / "anime"), classes=102, per_class=1)
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=16):
        state = run_driver(config, workdir)

    assert int(state.step) == config.train.num_steps == 3
    assert all(np.isfinite(x).all() for x in leaves(state) if x.dtype.kind == "f")
    assert checkpointing.Checkpoints(workdir, 2, read_only=True).all_steps() == [2, 3]
    saved = workdir_lib.read_config(workdir)
    run = saved.run.to_dict()
    del saved.run
    assert workdir_lib.jsonable(saved) == workdir_lib.jsonable(config)
    assert run["num_steps"] == 3 and run["num_classes"] == classes
    # One column per class shown (at most log.grid_classes), log.grid_rows rows.
    res, scale = config.model.resolution, max(1, 64 // config.model.resolution)
    cols = min(classes, config.log.grid_classes)
    for step in (2, 3):
        grid = Image.open(os.path.join(workdir, "samples", f"step_{step:07d}.png"))
        assert grid.size == ((cols * (res + 1) + 1) * scale, (2 * (res + 1) + 1) * scale)
    assert os.path.exists(os.path.join(workdir, "interpolations.png"))
    tags = event_tags(workdir)
    assert {"train/d_loss", "train/g_loss", "samples", "steps_per_sec"} <= tags
    if name == "digits":
        assert {"eval/ema/IS", "eval/ema/FID", "eval/ema/KID", "eval/ema/diversity_ratio_min",
                "eval/ema/diversity_ratio/0", "eval/ema/precision", "eval/ema/recall",
                "eval/ema/density", "eval/ema/coverage", "eval/ema/intra_fid",
                "eval/ema/intra_fid/0", "eval/ema/sample_accuracy",
                "eval/ema/sample_accuracy/9"} <= tags
    elif name == "cifar10":  # No Inception weights: the collapse check runs in D's features.
        assert {"eval/ema/d_features/diversity_ratio_min",
                "eval/ema/d_features/diversity_ratio/9"} <= tags
        assert not any(t.startswith("eval/ema/IS") for t in tags)
    else:
        assert not any(t.startswith("eval/") for t in tags)


def digits_config(num_steps, every=2):
    config = load("digits")
    config.train.num_steps = num_steps
    config.checkpoint.every_steps = every
    config.checkpoint.keep = 3
    return config


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 4-step digits run (checkpoints 2 and 4) and its final state."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    state = run_driver(digits_config(4), workdir)
    return workdir, jax.device_get(state)


@pytest.mark.smoke
def test_resume_reaches_the_same_state_bit_for_bit(reference_run, tmp_path):
    """Also: these runs of the reference run's architecture build and compile none of
    its programs again (a driver that bypassed the injected programs would)."""
    _, expected = reference_run
    workdir = str(tmp_path)
    with programs_built(0):
        half = run_driver(digits_config(2), workdir)
        assert int(half.step) == 2
        resumed = run_driver(digits_config(4), workdir)
    assert_same_state(resumed, expected)
    assert checkpointing.Checkpoints(workdir, 3, read_only=True).all_steps() == [2, 4]


@pytest.mark.slow
def test_several_steps_per_dispatch_resume_bit_for_bit(tmp_path):
    """Up to 3 steps per call (a device-side loop), calls ending at the checkpoints: an
    unbroken 4-step run, and one stopped at 2 and resumed, end bit-identical, with the
    checkpoints of every 2 steps. (How close the loop's steps are to single steps is
    tested in test_train_step.py.)"""
    def config(num_steps):
        c = digits_config(num_steps)
        c.train.steps_per_dispatch = 3
        c.log.every_steps = c.log.sample_every_steps = 6
        return c

    unbroken = run_driver(config(4), str(tmp_path / "a"))
    run_driver(config(2), str(tmp_path / "b"))
    resumed = run_driver(config(4), str(tmp_path / "b"))
    assert_same_state(resumed, unbroken)
    assert checkpointing.Checkpoints(str(tmp_path / "b"), 3, read_only=True).all_steps() == [2, 4]


# A training run in a child process whose save of step 4 blocks once every file of the
# step is written, just before its temporary directory is renamed into place, and says
# so: the test SIGKILLs it at exactly that point. The block sits in the file system call
# (`os.rename`, which orbax uses for that final rename of a local directory), not in
# orbax's internals. The child's step is a stand-in (every float +1) that compiles in a
# second: what is tested is the checkpointing, not the numbers.
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp
    from sagan_jax import programs, train
    from configs import digits

    rename = os.rename

    def blocking_rename(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == "4":
            print("SAVING 4", flush=True)
            time.sleep(600)
        return rename(src, dst, *args, **kwargs)

    class PlusOne(programs.Programs):
        def train_step(self, *unused_args, **unused_kwargs):
            def step(state, batches, rng, count):
                state = jax.tree.map(
                    lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
                metrics = dict(d_loss=jnp.zeros(1), g_loss=jnp.zeros(1), g_updated=jnp.ones(1))
                return state.replace(step=state.step + 1), metrics
            return jax.jit(step)

    os.rename = blocking_rename
    config = digits.get_config("test")
    config.train.num_steps, config.checkpoint.every_steps = 6, 2
    config.checkpoint.keep, config.log.sample_every_steps = 3, 100
    train.train_and_evaluate(config, sys.argv[1], programs=PlusOne())
""")


@pytest.mark.slow
def test_sigkill_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=REPO))
    child_log = tmp_path / "child.log"
    child = subprocess.Popen([sys.executable, str(script), workdir], stdout=subprocess.PIPE,
                             stderr=child_log.open("w"), text=True, cwd=REPO)
    try:
        deadline = time.time() + 180
        line = ""
        while "SAVING 4" not in line and time.time() < deadline and child.poll() is None:
            line = child.stdout.readline()
        assert "SAVING 4" in line, (
            "the child never reached the save of step 4: " + child_log.read_text()[-2000:])
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4.orbax-checkpoint-tmp"]

    config = digits_config(4)
    init_key = jax.random.split(jax.random.key(config.train.seed), 4)[0]
    initial = PROGRAMS.train_state(gan_lib.build(config, 10, 1), config, init_key)
    ckpts = checkpointing.Checkpoints(workdir, 3, read_only=True)
    restored, step = ckpts.restore_latest(initial, config)
    ckpts.close()
    assert step == 2 and int(restored.step) == 2
    for before, after in zip(leaves(initial), leaves(restored)):
        if before.dtype.kind == "f":  # Two stand-in steps: every float + 1, twice.
            np.testing.assert_array_equal(after, before + 1 + 1)

    resumed = run_driver(config, workdir)  # Real steps 3 and 4.
    assert int(resumed.step) == 4
    assert "half-written checkpoints (4.orbax-checkpoint-tmp)" in caplog.text
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(reference_run, tmp_path, caplog):
    source, expected = reference_run
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    for path in glob.glob(os.path.join(workdir, "checkpoints", "4", "state", "**", "d", "*"),
                          recursive=True):
        with open(path, "r+b") as f:  # As a crash or a full disk leaves them: truncated.
            f.truncate(3)
    resumed = run_driver(digits_config(4), workdir)
    assert_same_state(resumed, expected)
    assert "checkpoint step 4 is unreadable" in caplog.text
    assert len(os.listdir(os.path.join(workdir, checkpointing.CORRUPT_DIR))) == 1


@pytest.mark.slow
def test_checkpoints_of_another_architecture_are_refused_and_kept(reference_run, tmp_path):
    source, _ = reference_run
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    before = files_and_times(workdir)
    config = digits_config(6)
    config.model.width *= 2
    with pytest.raises(ValueError, match="different architecture") as e:
        run_driver(config, workdir)
    assert "\n" not in str(e.value) and "model.width" in str(e.value)
    assert files_and_times(workdir) == before


def files_and_times(root):
    paths = glob.glob(f"{root}/**", recursive=True)
    return {p: os.stat(p).st_mtime_ns for p in paths if os.path.isfile(p)}


def _poison_batch(monkeypatch, bad_step):
    """Makes the input pipeline's batch `bad_step` all NaN."""
    create = data.create_dataset

    def create_dataset(*args, **kwargs):
        ds = create(*args, **kwargs)
        host_batch = ds.host_batch

        def poisoned(step):
            batch = host_batch(step)
            return {**batch, "image": batch["image"] * np.nan} if step == bad_step else batch

        ds.host_batch = poisoned
        return ds

    monkeypatch.setattr(data, "create_dataset", create_dataset)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path):
    _poison_batch(monkeypatch, bad_step=4)  # Iteration 5 sees NaN images.
    workdir = str(tmp_path)
    with pytest.raises(FloatingPointError) as e:
        run_driver(digits_config(8), workdir)
    message = str(e.value)
    assert "\n" not in message
    assert "non-finite loss at step 5" in message and "last good checkpoint is step 4" in message
    ckpts = checkpointing.Checkpoints(workdir, 3, read_only=True)
    assert ckpts.all_steps() == [2, 4]
    config = digits_config(8)
    like = PROGRAMS.train_state(gan_lib.build(config, 10, 1), config, jax.random.key(0))
    restored = ckpts.restore(4, like)
    assert int(restored.step) == 4
    assert all(np.isfinite(x).all() for x in leaves(restored) if x.dtype.kind == "f")


def test_batch_not_divisible_by_the_devices(tmp_path):
    config = digits_config(2)
    config.train.batch_size = 6  # The test session has 4 devices.
    with pytest.raises(ValueError, match="not divisible by the 4 devices") as e:
        run_driver(config, str(tmp_path))
    assert "\n" not in str(e.value)


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="cannot write to workdir") as e:
        run_driver(digits_config(2), str(blocker / "run"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/digits.py:test", "--config.train.batchsize=8"],
     'error: unknown config key --config.train.batchsize. Did you mean "batch_size"'),
    (["--config=configs/cifar10.py:case=9"], "error: ValueError: no row 9 in this table"),
])
def test_cli_reports_a_bad_config_in_one_line(args, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sagan_jax.main", *args, f"--workdir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(expected)
    assert "Traceback" not in result.stderr



def test_cli_run_outside_the_repository_says_where_to_run(tmp_path):
    config = os.path.join(REPO, "configs", "digits.py") + ":test"
    # sagan_jax is installed; the repository itself is not on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "sagan_jax.main", f"--config={config}",
         f"--workdir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the config file imports the `configs` package, which is not on the path: run "
        "from the repository's root (the folder that holds configs/), or add that folder to "
        "PYTHONPATH."]

def test_logged_g_metrics_average_over_g_steps_only():
    history = [
        {"d_loss": 1.0, "g_loss": 2.0, "g_grad_norm": 4.0, "g_updated": 1.0},
        {"d_loss": 3.0, "g_loss": 0.0, "g_grad_norm": 0.0, "g_updated": 0.0},
        {"d_loss": 5.0, "g_loss": 6.0, "g_grad_norm": 8.0, "g_updated": 1.0},
    ]
    means = train.window_means(history)
    assert means == {"d_loss": 3.0, "g_loss": 4.0, "g_grad_norm": 6.0, "g_updated": 2 / 3}
    no_g = train.window_means(history[1:2])
    assert no_g == {"d_loss": 3.0, "g_updated": 0.0}
