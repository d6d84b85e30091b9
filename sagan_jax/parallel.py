"""Data parallelism: the 1-D device mesh, its shardings and the `jit(shard_map)` wrapper.

The train step is written per replica with explicit collectives over `DATA_AXIS`
(`lax.pmean`), i.e. with pmap semantics, and is run as `jax.jit(jax.shard_map(...))`
over a 1-D mesh of all devices of all processes. The same per-replica function also
runs under `jax.pmap(..., axis_name=DATA_AXIS)`, which the tests use as a reference.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sagan_jax import startup

T = TypeVar("T")

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the data axis, the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Several steps' batches stacked (steps, batch, ...): the batch axis split."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_divisible(global_batch: int, mesh: Mesh) -> None:
    """Raise one clear error when the batch cannot be split evenly over the devices."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f"batch size {global_batch} is not divisible by the {n} devices of the mesh; "
            f"set --config.train.batch_size to a multiple of {n}."
        )


def together(fn: Callable[[], T], what: str) -> T:
    """`fn()` on every process, which then agree: where it raised anywhere, all stop.

    Without this, a process whose data is missing would stop while the others wait for
    it in their first collective, for as long as the cluster's timeout. Every process
    must call it, at the same point.

    Args:
      fn: the work of this process.
      what: what it does, for the other processes' error ('opening the dataset').

    Returns:
      `fn()`'s result, where it succeeded on every process.

    Raises:
      The error of `fn` on the processes where it raised; `startup.OtherProcessFailed`, naming
      them, on the others.
    """
    if jax.process_count() == 1:
        return fn()
    error, result = None, None
    try:
        result = fn()
    except Exception as e:  # pylint: disable=broad-except
        error = e
    failed = np.flatnonzero(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is not None:
        raise error
    if len(failed):
        raise startup.OtherProcessFailed(
            f"{what} failed on process(es) {', '.join(map(str, failed))} (its own log says "
            "why); every process stops.")
    return result


def on_any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def data_parallel(fn: Callable, mesh: Mesh, in_specs, out_specs, donate_argnums=(),
                  compiler_options: dict | None = None) -> Callable:
    """`jax.jit(jax.shard_map(fn))` over the data axis.

    `fn` is a per-replica function that uses collectives over `DATA_AXIS`. Replication
    checks are off (`check_vma=False`): the step takes its cross-replica means
    explicitly, so gradients of replicated parameters are per-replica values and the
    explicit `pmean` is what averages them (with the checks on, JAX would already have
    summed them and the `pmean` would silently train with N x gradients).
    `compiler_options` are XLA's, for the compilation (`jax.jit`'s).
    """
    mapped = jax.shard_map(
        fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )
    return jax.jit(mapped, donate_argnums=donate_argnums, compiler_options=compiler_options)
