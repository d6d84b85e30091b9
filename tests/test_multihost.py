"""Several processes: when `jax.distributed` starts (and what JAX finds without flags),
and a run of two processes against one.

Two processes on this machine (a localhost coordinator, 2 CPU devices each, collectives
over gloo) train the digits test config through `train.train_and_evaluate`; this process
(4 devices) trains the same global batches as reference. Then the networks are
compared, the two-process checkpoint is restored here, its latest step is truncated, and
the two processes resume: they move the corrupt step aside together and retrain from the
one before. Last, SIGTERM to process 1 alone stops both at one step, which they save.
"""
import importlib
import json
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
from compiled_once import PROGRAMS
from two_processes import PROCESSES, REPO, start_workers

from sagan_jax import checkpointing, data, gan as gan_lib, parallel, startup, train
from sagan_jax.data import sources

LAPTOP = {"HOME": "/home/me", "PATH": "/usr/bin"}
SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "1",
         "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}
# What JAX reads to find a cluster by itself, kept out of the process that finds none.
CLUSTER_VARIABLES = ("SLURM_", "OMPI_", "KUBERNETES_", "TPU_", "JAX_COORDINATOR_",
                     "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")


@pytest.mark.parametrize("flags,environ,expected", [
    ({}, LAPTOP, {}),  # JAX looks for a cluster (a TPU slice, SLURM, Open MPI, Kubernetes).
    ({}, SLURM, {}),
    ({}, {**SLURM, "SLURM_NTASKS": "1"}, None),  # An interactive srun shell.
    ({}, {"OMPI_MCA_orte_hnp_uri": "1;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    (dict(coordinator_address="h:1234", num_processes=2, process_id=1), LAPTOP,
     dict(coordinator_address="h:1234", num_processes=2, process_id=1)),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "2"},
     dict(coordinator_address="h:1", num_processes=3, process_id=2)),
    (dict(num_processes=1), SLURM, None),
    (dict(coordinator_address="h:1"), SLURM, dict(coordinator_address="h:1")),
])
def test_when_jax_distributed_starts(flags, environ, expected):
    assert startup.distributed_args(**flags, environ=environ) == expected


@pytest.mark.parametrize("flags,environ,message", [
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {},
     "--process_id=2 must be one of 0..1"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"},
     "JAX_NUM_PROCESSES='two' is not a whole number"),
])
def test_inconsistent_multiprocess_flags_are_one_line(flags, environ, message):
    with pytest.raises(ValueError, match=message) as e:
        startup.distributed_args(**flags, environ=environ)
    assert "\n" not in str(e.value)


# A fresh process, as JAX must start before anything uses a device: where JAX finds no
# cluster, flags that leave some of the three out are one line each, and no flags at all
# are a run of one process (`python -m sagan_jax.main` on this machine: test_start.py).
NO_CLUSTER = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[1]]
    import jax
    from sagan_jax import startup
    for args in ({"coordinator_address": "h:1"}, {"num_processes": 2, "process_id": 1}, {}):
        try:
            startup._initialize(args)
        except ValueError as e:
            print(e)
    print(jax.distributed.is_initialized(), jax.process_count())
""")


def test_where_jax_finds_no_cluster_the_run_is_one_process():
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}
    result = subprocess.run([sys.executable, "-c", NO_CLUSTER, REPO], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    needs = ("a run of several processes needs {} as well (or JAX_COORDINATOR_ADDRESS, "
             "JAX_NUM_PROCESSES, JAX_PROCESS_ID): give all three, the same coordinator and "
             "count on every process.")
    assert result.stdout.splitlines() == [needs.format("--num_processes, --process_id"),
                                          needs.format("--coordinator_address"), "False 1"]


def test_processes_that_cannot_join_are_one_line(monkeypatch):
    def unreachable(**kwargs):  # What JAX raises when the coordinator never answers.
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out.\nAdditional details...")

    monkeypatch.setattr(jax.distributed, "initialize", unreachable)
    for args in ({}, dict(coordinator_address="h:1", num_processes=2, process_id=1)):
        with pytest.raises(ValueError) as e:
            startup._initialize(args)  # pylint: disable=protected-access
        assert str(e.value) == (
            "could not join the run's processes (RuntimeError: DEADLINE_EXCEEDED: Barrier "
            "timed out.); check that every process has the same coordinator address and "
            "count, or run alone with --num_processes=1.")


# One process of the pair: trains to step 4 (checkpoints 2 and 4), saves its copy of the
# state, waits for the test's go, trains again to step 4 (resuming), saves its state;
# then starts a long run, says so once it trains, and notes the step at which SIGTERM
# (sent by the test to process 1 alone) stopped it. It records every file it opens for
# writing through epath, outside the checkpoints.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    start = time.time()
    repo, out, coordinator, process_id, workdir = sys.argv[1:]
    sys.path[:0] = [repo, os.path.join(repo, "tests")]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from sagan_jax import startup
    startup.init(coordinator, 2, int(process_id))
    import numpy as np
    import pytest
    from etils import epath
    from compiled_once import PROGRAMS
    from sagan_jax import checkpointing, programs, train
    from configs import digits

    def save_state(state, name):
        leaves = [np.asarray(x.addressable_shards[0].data) for x in jax.tree.leaves(state)]
        np.savez(os.path.join(out, f"p{process_id}_{name}.tmp.npz"), *leaves)
        os.replace(os.path.join(out, f"p{process_id}_{name}.tmp.npz"),
                   os.path.join(out, f"p{process_id}_{name}.npz"))

    writes, epath_open = [], epath.gpath._GPath.open
    def recording_open(self, mode="r", *args, **kwargs):
        if ("w" in mode or "a" in mode) and "/checkpoints/" not in os.fspath(self):
            writes.append(os.path.relpath(os.fspath(self), workdir))
        return epath_open(self, mode, *args, **kwargs)

    config = digits.get_config("test")
    config.train.num_steps, config.checkpoint.keep = 4, 3
    times = {"start_s": time.time() - start}
    class Announcing(programs.Programs):  # PROGRAMS' programs; a file as the step runs.
        def train_state(self, *args):
            return PROGRAMS.train_state(*args)

        def train_step(self, *args, **kwargs):
            step = PROGRAMS.train_step(*args, **kwargs)
            def run(*step_args):
                open(os.path.join(out, f"p{process_id}_training"), "w").close()
                return step(*step_args)
            return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(epath.gpath._GPath, "open", recording_open)
        t = time.time()
        save_state(train.train_and_evaluate(config, workdir, programs=PROGRAMS), "first")
        times["first_s"] = time.time() - t
        while not os.path.exists(os.path.join(out, "go")):
            time.sleep(0.2)
        t = time.time()
        save_state(train.train_and_evaluate(config, workdir, programs=PROGRAMS), "resumed")
        times["resumed_s"] = time.time() - t

        config.train.num_steps = 1_000_000
        config.checkpoint.every_steps = config.log.sample_every_steps = 1000
        try:
            train.train_and_evaluate(config, workdir, programs=Announcing())
        except checkpointing.Preempted as e:
            times["preempted_at"] = e.step
    with open(os.path.join(out, f"p{process_id}.json"), "w") as f:
        json.dump({"writes": writes, "pid": os.getpid(), **times}, f)
""")



def config4():
    config = importlib.import_module("configs.digits").get_config("test")
    config.train.num_steps, config.checkpoint.keep = 4, 3
    return config


def use_the_two_processes_batches(monkeypatch):
    """Makes this process's global batch `k` the two processes' batches `k`, concatenated:
    each process shuffles its own share of the data, so a one-process run of the same
    config would see other batches."""
    create = data.create_dataset

    def create_dataset(data_cfg, global_batch_size, seed, mesh=None):
        ds = create(data_cfg, global_batch_size, seed, mesh)
        half = parallel.create_mesh(jax.devices()[:jax.device_count() // PROCESSES])
        shares = []
        for p in range(PROCESSES):
            ex = sources.load_examples(data_cfg, p, PROCESSES)
            shares.append(data.Dataset(ex.images, ex.labels, ex.num_classes,
                                       global_batch_size // PROCESSES, seed, half, prefetch=0,
                                       process_count=PROCESSES))
        ds.host_batch = lambda step: {k: np.concatenate([s.host_batch(step)[k] for s in shares])
                                      for k in ("image", "label")}
        return ds

    monkeypatch.setattr(data, "create_dataset", create_dataset)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def load(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def wait_for(paths, workers, log, timeout=900):
    deadline = time.time() + timeout
    while not all(os.path.exists(p) for p in paths):
        failed = [w for w in workers if w.poll() not in (None, 0)]
        assert not failed and time.time() < deadline, (
            "a worker failed or hung:\n" + log.read_text()[-4000:])
        time.sleep(0.5)


def network_changes(gan, initial, state, reference):
    """For G, EMA G and D: (max |state's output - reference's|, max |reference's - initial's|).

    The outputs are those of training mode (batch statistics), on fixed noise and on
    G's initial images. Parameters are not compared one by one: the cross-device means
    run over gloo between processes and in memory in one process, so their sums round
    differently, and where a gradient is zero in exact arithmetic (biases followed by a
    batch norm, attention biases that a softmax cancels) Adam scales that rounding up to
    a full step of the learning rate. Those parameters do not change the outputs."""
    z, _ = gan.noise(jax.random.key(1), jnp.arange(32))
    labels = jnp.arange(32) % gan.num_classes

    def train_mode(module, variables, *inputs):
        apply = lambda *a: module.apply(variables, *a, train=True, mutable=True)[0]
        # A mapped axis of one, named as the step's, for BN's cross-replica mean.
        mapped = jax.vmap(apply, axis_name=parallel.DATA_AXIS)(*[x[None] for x in inputs])
        return np.asarray(mapped[0], np.float64)

    nets = {"G": lambda s: train_mode(gan.generator, {"params": s.g_params, **s.g_state},
                                      z, labels),
            "EMA G": lambda s: train_mode(gan.generator, {"params": s.ema_params, **s.ema_state},
                                          z, labels)}
    images = jnp.asarray(nets["G"](initial), jnp.float32)
    nets["D"] = lambda s: train_mode(gan.discriminator, {"params": s.d_params, **s.d_state},
                                     images, labels)
    changes = {}
    for name, net in nets.items():
        out, ref = net(jax.device_get(state)), net(reference)
        changes[name] = (float(np.abs(out - ref).max()), float(np.abs(ref - net(initial)).max()))
    return changes


def max_abs_difference(a, b):
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
               for x, y in zip(a, b))


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path, monkeypatch):
    out, workdir = tmp_path / "out", tmp_path / "two"
    out.mkdir()
    started = time.time()
    workers, log = start_workers(tmp_path, WORKER, out, lambda p: [str(workdir)])
    try:
        # Meanwhile, the reference: one process, 4 devices, the same global batches.
        use_the_two_processes_batches(monkeypatch)
        t = time.time()
        reference = jax.device_get(train.train_and_evaluate(config4(), str(tmp_path / "one"),
                                                            programs=PROGRAMS))
        reference_s = time.time() - t

        wait_for([out / f"p{p}_first.npz" for p in range(PROCESSES)], workers, log)
        first_s = time.time() - started
        first = [load(out / f"p{p}_first.npz") for p in range(PROCESSES)]
        for x, y in zip(*first):
            np.testing.assert_array_equal(x, y)  # The processes hold the same state.

        # Their checkpoint restores in one process, bit for bit.
        config = config4()
        gan = gan_lib.build(config, 10, 1)
        initial = PROGRAMS.train_state(
            gan, config, jax.random.split(jax.random.key(config.train.seed), 4)[0])
        like = jax.device_put(initial, parallel.replicated_sharding(parallel.create_mesh()))
        ckpts = checkpointing.Checkpoints(str(workdir), 3, read_only=True)
        assert ckpts.all_steps() == [2, 4]
        two = ckpts.restore(4, like)
        ckpts.close()
        for x, y in zip(leaves(two), first[0]):
            np.testing.assert_array_equal(x, y)
        # The same networks as the one-process run's (see `network_changes`).
        changes = network_changes(gan, initial, two, reference)
        for name, (difference, change) in changes.items():
            assert difference <= 1e-4 * change, (name, difference, change)
        vs_one = max_abs_difference(first[0], leaves(reference))

        # Step 4 truncated: the resumed pair sets it aside together and retrains 3 and 4.
        state_dir = workdir / "checkpoints" / "4" / "state"
        for path in state_dir.glob("**/d/*"):
            path.write_bytes(path.read_bytes()[:3])
        (out / "go").write_text("")
        wait_for([out / f"p{p}_training" for p in range(PROCESSES)], workers, log)
        workers[1].send_signal(signal.SIGTERM)
        wait_for([out / f"p{p}.json" for p in range(PROCESSES)], workers, log, timeout=180)
        assert [w.wait(timeout=120) for w in workers] == [0, 0], log.read_text()[-4000:]
        total_s = time.time() - started
    finally:
        for w in workers:
            w.kill()
    resumed = [load(out / f"p{p}_resumed.npz") for p in range(PROCESSES)]
    for x, y, z in zip(*resumed, first[0]):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)  # Resumed from step 2: the unbroken run's state.
    assert len(list((workdir / checkpointing.CORRUPT_DIR).iterdir())) == 1
    assert "checkpoint step 4 is unreadable" in log.read_text()

    # One set of outputs: process 0 wrote them (at each start), process 1 none; each
    # process checked that it can write to the workdir.
    records = [json.loads((out / f"p{p}.json").read_text()) for p in range(PROCESSES)]
    written = [sorted(f for f in r["writes"] if not f.startswith(".write_test_"))
               for r in records]
    assert written[0] == sorted(["config.json", "samples/step_0000002.png",
                                 "samples/step_0000004.png", "interpolations.png"]  # 1st run
                                + ["config.json", "samples/step_0000004.png",
                                   "interpolations.png"]  # resumed from step 2
                                + ["config.json"])  # the long run, stopped before a grid
    assert written[1] == []
    events = [f.name for f in workdir.iterdir() if f.name.startswith("events.out.tfevents")]
    assert len(events) == 3 and all(f".{records[0]['pid']}." in name for name in events)

    # SIGTERM to process 1 alone: JAX's preemption service stopped both at one step,
    # which they saved together.
    preempted = [r["preempted_at"] for r in records]
    assert preempted[0] == preempted[1] > 4
    ckpts = checkpointing.Checkpoints(str(workdir), 3, read_only=True)
    assert ckpts.all_steps()[-1] == preempted[0]
    ckpts.close()
    print(f"\ntwo processes vs one (4 devices): parameters max |difference| {vs_one:.3g}; "
          + "; ".join(f"{k} outputs {d:.3g} (training changed them by {c:.3g})"
                      for k, (d, c) in changes.items())
          + "; "
          f"reference run {reference_s:.1f} s, two-process first run {first_s:.1f} s "
          f"(worker 0: start {records[0]['start_s']:.1f} s, train {records[0]['first_s']:.1f} s, "
          f"resume {records[0]['resumed_s']:.1f} s), SIGTERM: both saved step {preempted[0]}; "
          f"whole test {total_s:.1f} s")

