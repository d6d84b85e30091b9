"""What every command-line entry point does first, before any work.

- Several processes (the hosts of a Cloud TPU slice, the nodes of a GPU cluster) are
  joined into one JAX run with `jax.distributed.initialize`, before anything touches a
  device. JAX finds the processes of the clusters it knows (a Cloud TPU slice, SLURM,
  Open MPI, Kubernetes); elsewhere the multi-process flags say them (`distributed_args`).
  Where neither finds any (a laptop, a GPU machine, Colab), the run is one process.
- TensorFlow only decodes data and writes TensorBoard logs: it is kept off the GPUs,
  which belong to JAX (TF would otherwise reserve their memory), before anything
  imports it.
- One line says what runs: the versions of JAX and Flax, the backend, its devices and
  the processes. A machine whose GPU or TPU JAX cannot use (a CPU-only or mismatched JAX
  install) stops with the install that fixes it, unless `--allow_cpu`.
- JAX's persistent compilation cache is switched on (`compilation_cache_dir`), so a
  repeated or resumed run loads its compiled programs instead of compiling them again.
- The start is quiet: what TensorFlow's runtime prints on every start (its oneDNN banner,
  its CUDA probe failing on a machine without a GPU) and the INFO lines of orbax (dozens
  per save) and of JAX's backend search are dropped; warnings and errors stay.
"""
from __future__ import annotations

import contextlib
import logging as pylogging
import os
import re
import sys
import tempfile
import warnings
from typing import Mapping, NoReturn, Sequence

from absl import flags, logging

from sagan_jax import backend

# Environment variables that stand for the three flags (JAX itself reads the first).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def define_flags(processes: bool = True) -> None:
    """The flags of the CLIs: --allow_cpu, and, with `processes`, the multi-process flags
    that `sagan_jax.main` and `sagan_jax.score` share."""
    flags.DEFINE_bool("allow_cpu", False,
                      "Run on the CPU although this machine has a GPU or TPU that JAX cannot use.")
    if not processes:
        return
    flags.DEFINE_string(
        "coordinator_address", None,
        f"HOST:PORT of process 0, for a run of several processes (GPU nodes); or "
        f"${ENV_COORDINATOR}. Not needed on Cloud TPU slices, SLURM (srun), Open MPI "
        "(mpirun) or Kubernetes jobs, where JAX finds it.")
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


def _one_task(environ: Mapping[str, str]) -> bool:
    """Whether a scheduler started this process as the only task of its job (an
    interactive `srun` shell, `mpirun -n 1`): JAX would make it a run of one process that
    sees only one of the machine's GPUs, and it is left a plain process with all of them."""
    return environ.get("SLURM_NTASKS") == "1" or environ.get("OMPI_COMM_WORLD_SIZE") == "1"


def distributed_args(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None,
                     environ: Mapping[str, str] | None = None) -> dict | None:
    """The arguments of `jax.distributed.initialize` for this process, or None for one process.

    The flags, or the environment variables named like JAX's own (`JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), are passed on; JAX finds those not given (all
    three where none is) in the environment of a cluster it knows (see `_initialize`).
    None where the run is one process whatever the environment says: `--num_processes=1`,
    or the only task of a scheduler's job.

    Args:
      coordinator_address: HOST:PORT of process 0.
      num_processes: processes in the run.
      process_id: this process's index.
      environ: the environment (default `os.environ`).

    Raises:
      ValueError: a process index out of range, or a variable that is not a whole number
        (one line saying what to set).
    """
    environ = os.environ if environ is None else environ
    coordinator_address = coordinator_address or environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(environ, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(environ, ENV_PROCESS_ID)
    given = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                 process_id=process_id)
    if num_processes == 1 and process_id in (None, 0):
        return None
    if all(v is None for v in given.values()) and _one_task(environ):
        return None
    if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be one of 0..{num_processes - 1} "
                         f"for --num_processes={num_processes}.")
    return {name: v for name, v in given.items() if v is not None}


# Lines that TensorFlow's runtime writes on every start, whatever the machine: its oneDNN
# and CPU-instruction banners, and its CUDA probe failing where no NVIDIA driver is
# installed (TF never uses a GPU here). Its other lines, errors included, are kept.
_TF_NOISE = re.compile(
    r"oneDNN custom operations are on|All log messages before absl::InitializeLog|"
    r"Could not find cuda drivers|cpu_feature_guard\.cc|rebuild TensorFlow with the appropriate "
    r"compiler flags|failed call to cuInit")


class _QuietFilter(pylogging.Filter):
    """Drops the INFO lines of orbax (dozens per save) and of JAX's backend search (which
    the start-up line replaces), and orbax's notice that it registered a type twice."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        if record.levelno >= pylogging.WARNING:
            return not (from_orbax and str(record.msg).startswith("Type handler registry"))
        return not (from_orbax or record.name.startswith("jax._src.xla_bridge"))


@contextlib.contextmanager
def _filtered_stderr(noise: re.Pattern):
    """Holds back what is written to file descriptor 2 (C++ libraries' logs too), then
    writes it out without the lines that match `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(True)
                    if not noise.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def hide_gpus_from_tensorflow() -> None:
    """Imports TensorFlow (when installed) without its start-up noise, and makes it see
    no GPU; a no-op once TF has started its devices.

    TF's own INFO lines are switched off unless `TF_CPP_MIN_LOG_LEVEL` says otherwise.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with _filtered_stderr(_TF_NOISE), warnings.catch_warnings():
        # TF 2.20's compiled protos under protobuf 6, one warning per file (dozens): a
        # combination that protobuf supports, and nothing the user can act on.
        warnings.filterwarnings("ignore", "Protobuf gencode version .* exactly one major "
                                "version older", UserWarning)
        try:
            import tensorflow as tf  # pylint: disable=g-import-not-at-top
        except ImportError:
            return
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            # TF's devices were initialised already; the setting can no longer change.
            pass


def compilation_cache_dir(setting: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Where JAX's persistent compilation cache lives, or None for no cache.

    Args:
      setting: the config's `train.compile_cache_dir`: a folder (gs://... too), 'off',
        or '' for `$JAX_COMPILATION_CACHE_DIR` when set (empty: no cache), else
        `$XDG_CACHE_HOME/sagan_jax/jax_compilation_cache` (`~/.cache` by default).
      environ: the environment (default `os.environ`).
    """
    environ = os.environ if environ is None else environ
    if setting == "off":
        return None
    if setting:
        return setting if "://" in setting else os.path.expanduser(setting)
    if "JAX_COMPILATION_CACHE_DIR" in environ:  # JAX's own variable, read by JAX itself.
        return environ["JAX_COMPILATION_CACHE_DIR"] or None
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "sagan_jax", "jax_compilation_cache")


def use_compilation_cache(directory: str | None) -> None:
    """Makes JAX keep every compiled program in `directory` (None: no cache); call it
    before anything is compiled.

    Every program is kept, however small or quick to compile: on a CPU the many small
    ones (an initialisation, an eager op) add up to seconds at each start.
    """
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_compilation_cache_dir", directory)
    if directory:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def compile_cache_setting(workdir: str) -> str:
    """The `train.compile_cache_dir` of the run in `workdir` ('' where it has none)."""
    from sagan_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

    return workdir_lib.read_config(workdir).train.get("compile_cache_dir", "")


def describe(devices: Sequence, process_count: int, compile_cache: str | None) -> str:
    """The start-up line: versions, backend, devices, processes and compilation cache."""
    import flax  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top

    kinds = sorted({d.device_kind for d in devices})
    return (f"jax {jax.__version__}, flax {flax.__version__}; backend {devices[0].platform}: "
            f"{len(devices)} device(s) ({', '.join(kinds)}), {process_count} process(es); "
            f"compilation cache: {compile_cache or 'off'}")


def _initialize(args: dict) -> None:
    """`jax.distributed.initialize(**args)`, JAX filling in what `args` lacks; where it
    lacks everything and JAX finds no cluster, the run is one process. Any other failure
    is one line saying what to set."""
    import jax  # pylint: disable=g-import-not-at-top

    try:
        jax.distributed.initialize(**args)
    except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        # JAX raises ValueError, before it connects anywhere, when no cluster it knows gave
        # it the coordinator, count or rank that were not passed.
        missing = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
                   if name not in args]
        if isinstance(e, ValueError) and not args:
            logging.debug("jax.distributed found no cluster (%s): one process.", reason)
            return
        if isinstance(e, ValueError) and missing:
            raise ValueError(
                f"a run of several processes needs {', '.join(missing)} as well (or "
                f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}): give all three, "
                "the same coordinator and count on every process.") from e
        raise ValueError(f"could not join the run's processes ({reason}); check that every "
                         "process has the same coordinator address and count, or run alone "
                         "with --num_processes=1.") from e
    logging.info("process %d of %d (jax.distributed)", jax.process_index(), jax.process_count())


def init(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, allow_cpu: bool = False,
         compile_cache: str | None = None) -> None:
    """The start-up of `sagan_jax.main`, `sagan_jax.score` and `sagan_jax.render`.

    Call it before anything uses a device. The first three arguments as
    `distributed_args`. Also chooses orbax's array handler for the run's processes
    (`checkpointing.register_array_handler`).

    Args:
      coordinator_address: HOST:PORT of process 0.
      num_processes: processes in the run.
      process_id: this process's index.
      allow_cpu: run on the CPU of a machine whose accelerator JAX cannot use.
      compile_cache: the config's `train.compile_cache_dir` (see
        `compilation_cache_dir`); None leaves JAX's cache setting as it is.

    Raises:
      ValueError: incomplete multi-process flags, processes that could not connect, or
        JAX on the CPU of a machine with an accelerator.
    """
    quiet = _QuietFilter()
    logging.get_absl_logger().addFilter(quiet)  # orbax logs through absl.
    pylogging.getLogger("jax._src.xla_bridge").addFilter(quiet)
    hide_gpus_from_tensorflow()
    import jax  # pylint: disable=g-import-not-at-top

    args = distributed_args(coordinator_address, num_processes, process_id)
    if args is not None:
        _initialize(args)
    if compile_cache is not None:
        use_compilation_cache(compilation_cache_dir(compile_cache))
    from sagan_jax import checkpointing  # pylint: disable=g-import-not-at-top

    checkpointing.register_array_handler()  # As suits the processes just joined.
    logging.info("%s", describe(jax.devices(), jax.process_count(),
                                jax.config.jax_compilation_cache_dir))
    # JAX_PLATFORMS=cpu is a choice, not a broken install.
    backend.check(jax.default_backend(), allow_cpu or jax.config.jax_platforms == "cpu")


class OtherProcessFailed(RuntimeError):
    """Raised on every other process where one process of a run failed at a step that
    they take together (`parallel.together`)."""


def one_line(error: BaseException | str) -> str:
    """The message of `error` on one line; for a wrapped traceback, its last line.

    Whitespace runs become one space, and the quotes that `KeyError` puts around its
    message are dropped.
    """
    lines = [line.strip() for line in str(error).replace("\\n", "\n").splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        lines = lines[-1:]
    text = " ".join(" ".join(lines).split())
    quoted = len(text) > 1 and text[0] == text[-1] and text[0] in "'\""
    return text[1:-1] if quoted else text


def exit_with_error(error: BaseException | str) -> NoReturn:
    """Ends a command-line program with `error: <one line>` on stderr and status 1."""
    sys.exit(f"error: {one_line(error)}")
