"""Sampling G: which of its weights (EMA or raw), and the compiled generator on the mesh.

The train step keeps two copies of G's weights (`TrainState`): the trained ones ('raw')
and their exponential moving average ('ema'). Grids and in-training scores use the one
that `train.sample_with_ema` names; `sagan_jax.score` and `sagan_jax.render` take either.
Example i's `z` is `GAN.noise(key, i)`'s whatever the number of devices, in the step and
in the generator alike (`example_indices`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sagan_jax import parallel
from sagan_jax.gan import GAN

GENERATORS = ("ema", "raw")


def g_weights(state: Any, generator: str) -> tuple[Any, Any]:
    """(params, model state) of G's EMA ('ema') or raw ('raw') weights in a `TrainState`."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; use one of {GENERATORS}.")
    if generator == "ema":
        return state.ema_params, state.ema_state
    return state.g_params, state.g_state


def training_generator(config: Any) -> str:
    """The weights a training run samples and scores with: 'ema' or 'raw'
    (`train.sample_with_ema`)."""
    return GENERATORS[0] if config.train.sample_with_ema else GENERATORS[1]


def example_indices(local_batch: int) -> jax.Array:
    """The global indices of this replica's examples (inside a map over `DATA_AXIS`)."""
    return lax.axis_index(parallel.DATA_AXIS) * local_batch + jnp.arange(local_batch)


def make_generate_fn(gan: GAN, mesh: Mesh) -> Callable:
    """Eval-mode G on the mesh (BN running statistics, SN state read, not advanced).

    Returns:
      `generate(g_params, g_state, key, labels) -> images` float32 [-1, 1] NHWC, one per
      label (their number a multiple of the mesh size); pass `g_weights(state, ...)`.
      Example i's `z` is `gan.noise(key, i)`'s, whatever the number of devices (the
      sample grids draw theirs the same way). Unconditional models ignore labels.
    """
    def per_replica(g_params, g_state, key, labels):
        z, _ = gan.noise(key, example_indices(labels.shape[0]))
        return gan.generator.apply({"params": g_params, **g_state}, z, gan.labels_or_none(labels))

    fn = parallel.data_parallel(
        per_replica, mesh, in_specs=(P(), P(), P(), P(parallel.DATA_AXIS)), out_specs=P(parallel.DATA_AXIS)
    )

    def generate(g_params, g_state, key, labels):
        n, devices = labels.shape[0], mesh.devices.size
        if n % devices:
            raise ValueError(f"{n} labels cannot be split over {devices} devices; pass a multiple of {devices}.")
        return fn(g_params, g_state, key, jnp.asarray(labels, jnp.int32))

    return generate
