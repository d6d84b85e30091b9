"""Data parallelism: the 1-D device mesh, its shardings and the `jit(shard_map)` wrapper.

The train step is written per replica with explicit collectives over `DATA_AXIS`
(`lax.pmean`), i.e. with pmap semantics, and is run as `jax.jit(jax.shard_map(...))`
over a 1-D mesh of all devices of all processes. The same per-replica function also
runs under `jax.pmap(..., axis_name=DATA_AXIS)`, which the tests use as a reference.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def data_parallel(fn: Callable, mesh: Mesh, in_specs, out_specs, donate_argnums=()) -> Callable:
    """`jax.jit(jax.shard_map(fn))` over the data axis.

    `fn` is a per-replica function that uses collectives over `DATA_AXIS`. Replication
    checks are off (`check_vma=False`): the step takes its cross-replica means
    explicitly, so gradients of replicated parameters are per-replica values and the
    explicit `pmean` is what averages them (with the checks on, JAX would already have
    summed them and the `pmean` would silently train with N x gradients).
    """
    mapped = jax.shard_map(
        fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )
    return jax.jit(mapped, donate_argnums=donate_argnums)
