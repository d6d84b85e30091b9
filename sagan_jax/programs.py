"""The compiled programs of a run, made through one object that their users take.

`train.train_and_evaluate`, `score.evaluate_workdir` and `render.render` build the
initial state, the train step and the sharded generator through a `Programs` (by
default this one). Tests pass one that hands every run of an architecture the same
compiled programs (`tests/compiled_once.py`), since each compilation takes tens of
seconds on a small CPU.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import Mesh

from sagan_jax import sampling, train_step
from sagan_jax.gan import GAN


class Programs:
    """Builds a run's programs; each method is the module function it names."""

    def train_state(self, gan: GAN, config: Any, key: jax.Array) -> train_step.TrainState:
        """`train_step.create_train_state`."""
        return train_step.create_train_state(gan, config, key)

    def train_step(self, gan: GAN, config: Any, mesh: Mesh, **kwargs) -> train_step.TrainStep:
        """`train_step.make_train_step`."""
        return train_step.make_train_step(gan, config, mesh, **kwargs)

    def generate_fn(self, gan: GAN, mesh: Mesh) -> Callable:
        """`sampling.make_generate_fn`."""
        return sampling.make_generate_fn(gan, mesh)
