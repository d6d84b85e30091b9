"""SIGTERM (a preempted TPU VM or spot GPU): `sagan_jax.main` saves the step it reached,
exits with one line and status 143, and the rerun continues as an unbroken run.

The runs use a stand-in step that compiles in a second (the real step's bit-for-bit
resume is tested in test_train.py): it adds to every float the mean of batch `k` and a
number drawn from the key folded with the step, so a rerun that skipped or repeated a
batch or a step, or restored another state, would end elsewhere.
"""
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiled_once import compile_once  # noqa: F401 -- an autouse fixture.

from sagan_jax import checkpointing, gan as gan_lib, train, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def standin_train_step(*unused_args, **unused_kwargs):
    """`train_step.make_train_step`'s stand-in (one step per call)."""
    def step(state, batch, rng):
        shift = jnp.mean(batch["image"]) + jax.random.uniform(jax.random.fold_in(rng, state.step))
        state = jax.tree.map(
            lambda x: x + shift if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
        return state.replace(step=state.step + 1), dict(d_loss=shift, g_loss=shift,
                                                        g_updated=jnp.float32(1))
    return jax.jit(step)


# `python -m sagan_jax.main` with the stand-in step, printing STEP as each step starts.
CHILD = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from absl import app
    from sagan_jax import main, train_step
    from test_preemption import standin_train_step

    def announced(*args, **kwargs):
        step = standin_train_step(*args, **kwargs)
        def run(*step_args):
            print("STEP", flush=True)
            return step(*step_args)
        return run

    train_step.make_train_step = announced
    sys.argv = ["sagan_jax.main"] + sys.argv[1:]
    app.run(main.main, flags_parser=main.parse_flags)
""")

# Long enough never to end by itself, no periodic checkpoint or grid before the signal.
FLAGS = ["--config=configs/digits.py:test", "--config.train.num_steps=1000000",
         "--config.checkpoint.every_steps=1000", "--config.log.sample_every_steps=1000"]


def digits_config(num_steps):
    config = importlib.import_module("configs.digits").get_config("test")
    config.train.num_steps = num_steps
    config.checkpoint.every_steps = config.log.sample_every_steps = 1000
    return config


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_sigterm_saves_the_step_reached_and_the_rerun_continues(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=REPO, tests=TESTS))
    log = tmp_path / "child.log"
    with log.open("w") as stderr_file:
        child = subprocess.Popen([sys.executable, str(script), *FLAGS, f"--workdir={workdir}"],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=stderr_file, text=True)
    try:
        steps, deadline = 0, time.time() + 300
        while steps < 3 and time.time() < deadline and child.poll() is None:
            steps += child.stdout.readline().strip() == "STEP"
        assert steps == 3, "the child never trained: " + log.read_text()[-3000:]
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=120)
    finally:
        child.kill()
    stderr = log.read_text()
    assert child.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: SIGTERM received; saved the checkpoint of step ")
    assert last.endswith("; run the same command again to resume.")

    ckpts = checkpointing.Checkpoints(workdir, 2, read_only=True)
    (reached,) = ckpts.all_steps()  # Only the preemption's, complete.
    assert reached >= 3 and f"step {reached} in {workdir}/checkpoints" in last
    config = digits_config(reached + 3)
    like = train_step.create_train_state(gan_lib.build(config, 10, 1), config, jax.random.key(0))
    saved = ckpts.restore(reached, like)
    ckpts.close()

    monkeypatch.setattr(train_step, "make_train_step", standin_train_step)
    unbroken = train.train_and_evaluate(digits_config(reached), str(tmp_path / "unbroken"))
    for x, y in zip(leaves(saved), leaves(unbroken)):
        np.testing.assert_array_equal(x, y)  # The state of exactly `reached` steps.
    resumed = train.train_and_evaluate(config, workdir)
    unbroken = train.train_and_evaluate(config, str(tmp_path / "unbroken"))
    assert int(resumed.step) == reached + 3
    for x, y in zip(leaves(resumed), leaves(unbroken)):
        np.testing.assert_array_equal(x, y)


def test_sigterm_is_caught_once_and_only_while_a_run_writes_checkpoints(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    reader = checkpointing.Checkpoints(str(tmp_path), 2)
    reader.close()
    checkpointing.Checkpoints(str(tmp_path), 2, read_only=True).close()
    assert signal.getsignal(signal.SIGTERM) == before
    ckpts = checkpointing.Checkpoints(str(tmp_path), 2)
    assert signal.getsignal(signal.SIGTERM) == ckpts._on_sigterm  # pylint: disable=protected-access
    assert not ckpts.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpts.reached_preemption(2)
    assert signal.getsignal(signal.SIGTERM) == before  # A second one ends the process.
    ckpts.close()
    assert signal.getsignal(signal.SIGTERM) == before
