"""What the two-process tests share: a free port for the coordinator, and the environment
of a worker process (2 CPU devices, the test session's cheap XLA compilation, TF quiet)."""
import os
import socket


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
