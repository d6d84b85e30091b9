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
import orbax.checkpoint as ocp
import pytest
from compiled_once import PROGRAMS

from sagan_jax import checkpointing, gan as gan_lib, preemption, programs, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def standin_step(state, batches, rng, count):
    """The stand-in for the train step (one step per call: `train.steps_per_dispatch` 1)."""
    del count
    batch = jax.tree.map(lambda x: x[0], batches)
    shift = jnp.mean(batch["image"]) + jax.random.uniform(jax.random.fold_in(rng, state.step))
    state = jax.tree.map(
        lambda x: x + shift if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    metrics = dict(d_loss=shift, g_loss=shift, g_updated=jnp.float32(1))
    return state.replace(step=state.step + 1), jax.tree.map(lambda m: m[None], metrics)


class Standin(programs.Programs):
    """The real initial state (from `states`) and the stand-in step."""

    def __init__(self, states=programs.Programs()):
        self.states = states

    def train_state(self, gan, config, key):
        return self.states.train_state(gan, config, key)

    def train_step(self, *unused_args, **unused_kwargs):
        return jax.jit(standin_step)


# `python -m sagan_jax.main` with the stand-in step, printing STEP as each step starts.
CHILD = textwrap.dedent("""
    import functools, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from absl import app
    from sagan_jax import main, train
    from test_preemption import Standin

    class Announced(Standin):
        def train_step(self, *args, **kwargs):
            step = super().train_step(*args, **kwargs)
            def run(*step_args):
                print("STEP", flush=True)
                return step(*step_args)
            return run

    train.train_and_evaluate = functools.partial(train.train_and_evaluate, programs=Announced())
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


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_the_rerun_continues(tmp_path):
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
    like = PROGRAMS.train_state(gan_lib.build(config, 10, 1), config, jax.random.key(0))
    saved = ckpts.restore(reached, like)
    ckpts.close()

    standin = Standin(PROGRAMS)
    unbroken = train.train_and_evaluate(digits_config(reached), str(tmp_path / "unbroken"),
                                        programs=standin)
    for x, y in zip(leaves(saved), leaves(unbroken)):
        np.testing.assert_array_equal(x, y)  # The state of exactly `reached` steps.
    resumed = train.train_and_evaluate(config, workdir, programs=standin)
    unbroken = train.train_and_evaluate(config, str(tmp_path / "unbroken"), programs=standin)
    assert int(resumed.step) == reached + 3
    for x, y in zip(leaves(resumed), leaves(unbroken)):
        np.testing.assert_array_equal(x, y)


def test_sigterm_is_caught_once_and_only_while_the_loop_watches(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    # Checkpoints, read or written, leave the process's settings alone.
    checkpointing.Checkpoints(str(tmp_path), 2).close()
    checkpointing.Checkpoints(str(tmp_path), 2, read_only=True).close()
    assert signal.getsignal(signal.SIGTERM) == before
    assert ocp.type_handlers.get_type_handler(jax.Array) is handler
    with preemption.Watcher() as sigterm:
        caught = sigterm._on_sigterm  # pylint: disable=protected-access
        assert signal.getsignal(signal.SIGTERM) == caught
        assert not sigterm.reached(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert sigterm.reached(1) and sigterm.reached(2)
        assert signal.getsignal(signal.SIGTERM) == before  # A second one ends the process.
    assert signal.getsignal(signal.SIGTERM) == before
    with preemption.Watcher() as sigterm:  # A new run starts unsignalled.
        assert not sigterm.reached(0)
    assert signal.getsignal(signal.SIGTERM) == before
