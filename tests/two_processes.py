"""What the two-process tests share: a free port for the coordinator, the environment of
a worker process (2 CPU devices, the test session's cheap XLA compilation, TF quiet), and
the start of the two workers of a test."""
import os
import pathlib
import socket
import subprocess
import sys

PROCESSES = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on localhost that is free now (for `jax.distributed`'s coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """This process's environment, for one of two worker processes with 2 CPU devices."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": (
        "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true")}


def start_workers(tmp_path: pathlib.Path, source: str, out: pathlib.Path,
                  extra) -> tuple[list[subprocess.Popen], pathlib.Path]:
    """Writes `source` to a script and starts it as processes 0 and 1 of one JAX run.

    Each gets the arguments REPO, `out`, the coordinator's address, its process index and
    `extra(index)` (a list of strings); both write to one log.

    Returns:
      (the two processes, the log's path).
    """
    script = tmp_path / "worker.py"
    script.write_text(source)
    log = tmp_path / "workers.log"
    coordinator = f"localhost:{free_port()}"
    with log.open("w") as log_file:
        workers = [subprocess.Popen(
            [sys.executable, str(script), REPO, str(out), coordinator, str(p), *extra(p)],
            env=worker_env(), cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
            for p in range(PROCESSES)]
    return workers, log
