"""What every command-line entry point does first, before any work.

- Several processes (the hosts of a Cloud TPU slice, the nodes of a GPU cluster) are
  joined into one JAX run with `jax.distributed.initialize`, before anything touches a
  device; `distributed_args` says when. A laptop, a GPU machine or Colab's GPU runtime
  never calls it; on a Cloud TPU VM (Colab's TPU runtime too) JAX finds the slice's
  hosts itself, and a single-host VM is a run of one process.
- TensorFlow only decodes data and writes TensorBoard logs: it is kept off the GPUs,
  which belong to JAX (TF would otherwise reserve their memory), before anything
  imports it.
- orbax's INFO lines (dozens per save) are dropped from the log; its warnings stay.
"""
from __future__ import annotations

import logging as pylogging
import os
from typing import Mapping

from absl import flags, logging

# Environment variables that stand for the three flags (JAX itself reads the first).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def define_flags() -> None:
    """The multi-process flags that `sagan_jax.main` and `sagan_jax.score` share."""
    flags.DEFINE_string(
        "coordinator_address", None,
        f"HOST:PORT of process 0, for a run of several processes (GPU nodes); or "
        f"${ENV_COORDINATOR}. Not needed on Cloud TPU slices, SLURM (srun) or Open MPI "
        "(mpirun), where JAX finds it.")
    flags.DEFINE_integer("num_processes", None,
                         f"Processes in the run (one per node); or ${ENV_NUM_PROCESSES}.")
    flags.DEFINE_integer("process_id", None,
                         f"This process, 0..num_processes-1; or ${ENV_PROCESS_ID}.")


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number; fix or unset it.") from None


def _managed_cluster(environ: Mapping[str, str]) -> str | None:
    """The scheduler that started several processes of this job, by its environment.

    The variables are those JAX's own detection reads; a job of one task (an
    interactive SLURM shell, `mpirun -n 1`) is a single process and is left alone.
    """
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in environ for v in slurm) and (_int(environ, "SLURM_NTASKS") or 1) > 1:
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in environ and (_int(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "Open MPI"
    return None


def on_cloud_tpu_vm() -> bool:
    """Whether this host is a Cloud TPU VM: libtpu installed and TPU chips on the PCI bus.

    JAX makes this check when it is imported (without touching the devices) and keeps
    the answer in a module of its own; it is read from there so that the two agree.
    """
    try:
        from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def distributed_args(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None,
                     environ: Mapping[str, str] | None = None,
                     tpu_vm: bool | None = None) -> dict | None:
    """The arguments of `jax.distributed.initialize` for this process, or None for one process.

    In order of precedence:
      1. The flags, or the environment variables named like JAX's own
         (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`): all three
         for more than one process (under a scheduler of 2. or 3., those not given are
         the scheduler's); `--num_processes=1` is a single process.
      2. A SLURM step (`srun`) or an Open MPI job (`mpirun`) of several tasks: `{}`, and
         JAX reads the coordinator, count and rank from the scheduler's environment.
      3. A Cloud TPU VM: `{}`, and JAX reads the slice's hosts from the TPU metadata
         (one host: a run of one process).
    Anything else (a laptop, a GPU machine, Colab's GPU runtime) is a single process.

    Args:
      coordinator_address: HOST:PORT of process 0.
      num_processes: processes in the run.
      process_id: this process's index.
      environ: the environment (default `os.environ`).
      tpu_vm: whether this is a Cloud TPU VM (default: `on_cloud_tpu_vm()`).

    Raises:
      ValueError: an incomplete or inconsistent set of flags (one line saying what to set).
    """
    environ = os.environ if environ is None else environ
    coordinator_address = coordinator_address or environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(environ, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(environ, ENV_PROCESS_ID)
    given = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                 process_id=process_id)
    if num_processes == 1 and process_id in (None, 0):
        return None
    detected = _managed_cluster(environ) or (on_cloud_tpu_vm() if tpu_vm is None else tpu_vm)
    if all(v is None for v in given.values()):
        return {} if detected else None
    missing = [f"--{name}" for name, v in given.items() if v is None]
    if missing and not detected:
        raise ValueError(
            f"a run of several processes needs {', '.join(missing)} as well (or "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}): give all three, "
            "the same coordinator and count on every process.")
    if not missing and (num_processes < 1 or not 0 <= process_id < num_processes):
        raise ValueError(f"--process_id={process_id} must be one of 0..{num_processes - 1} "
                         f"for --num_processes={num_processes}.")
    # What was not given, JAX reads from the scheduler's environment.
    return {name: v for name, v in given.items() if v is not None}


class _OrbaxInfoFilter(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        return (record.levelno >= pylogging.WARNING
                or f"{os.sep}orbax{os.sep}" not in record.pathname)


def hide_gpus_from_tensorflow() -> None:
    """Makes TensorFlow (when installed) see no GPU; a no-op once TF has started its devices."""
    try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TF's devices were initialised already; the setting can no longer change.
        pass


def _initialize(args: dict, may_run_alone: bool) -> None:
    """`jax.distributed.initialize(**args)`; a failure is one line, or, where a single
    process is a working fallback (a TPU VM found by its chips, not by a scheduler or
    flags), a warning."""
    import jax  # pylint: disable=g-import-not-at-top

    try:
        jax.distributed.initialize(**args)
    except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        if not may_run_alone:
            raise ValueError(f"could not join the run's processes ({reason}); check that every "
                             "process has the same coordinator address and count.") from e
        # A TPU VM without slice metadata is one host; on a slice, the TPU runtime still
        # connects the hosts, and only preemption notices stay local to each.
        logging.warning("jax.distributed.initialize() found no TPU slice (%s); going on as "
                        "one process.", reason)
        return
    logging.info("process %d of %d (jax.distributed)", jax.process_index(), jax.process_count())


def init(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None) -> None:
    """The start-up of `sagan_jax.main`, `sagan_jax.score` and the other CLIs.

    Call it before anything uses a device. Arguments as `distributed_args`.

    Raises:
      ValueError: incomplete multi-process flags, or processes that could not connect.
    """
    args = distributed_args(coordinator_address, num_processes, process_id)
    if args is not None:
        _initialize(args, may_run_alone=not args and not _managed_cluster(os.environ))
    hide_gpus_from_tensorflow()
    logging.get_absl_logger().addFilter(_OrbaxInfoFilter())
