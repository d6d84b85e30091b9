"""The training loop's periodic outputs, each an `Action` that knows when it is due.

After each dispatch the loop (`sagan_jax.train`) calls every action with the step
reached and the state: the averaged training scalars (`LogScalars`), the sample grids
(`Grids`), the in-training scores or collapse check (`eval_actions`) and, at the last
step, the interpolations (`Interpolations`). Their steps come from `periods.Periods`,
and the loop's dispatches end exactly there. Grids and scores use the generator that
`train.sample_with_ema` names.
"""
from __future__ import annotations

import abc
import functools
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sagan_jax import periods, sampling, visualize
from sagan_jax.evaluation.d_diversity import DFeatureDiversity
from sagan_jax.evaluation.diversity import ClassDiversity
from sagan_jax.evaluation.evaluator import Evaluator
from sagan_jax.gan import GAN
from sagan_jax.programs import Programs


class Action(abc.ABC):
    """A periodic action: `run(step, state)` after each step where `due(step)`."""

    def __init__(self, due: Callable[[int], bool]):
        self.due = due

    def __call__(self, step: int, state: Any) -> None:
        if self.due(step):
            self.run(step, state)

    @abc.abstractmethod
    def run(self, step: int, state: Any) -> None:
        """The action at `step`, where it is due."""


class LogScalars(Action):
    """The training metrics' means since the last write, and the D-loss jump statistic.

    `records.means()` gives the means; `jumps.statistic` the detector's latest reading.
    """

    def __init__(self, plan: periods.Periods, writer, records, jumps):
        super().__init__(plan.log_due)
        self.writer, self.records, self.jumps = writer, records, jumps

    def run(self, step: int, state: Any) -> None:
        scalars = self.records.means()
        if np.isfinite(self.jumps.statistic):
            scalars["d_jump"] = self.jumps.statistic
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})


def grid_sampler(config: ml_collections.ConfigDict, gan: GAN) -> Callable:
    """`sampler(state) -> sample(z, labels) -> images`: the training generator of `state`,
    compiled for one device (grids are a few images, drawn with explicit z)."""
    which = sampling.training_generator(config)
    apply_g = jax.jit(lambda v, z, y: gan.generator.apply(v, z, gan.labels_or_none(y)))

    def sampler(state):
        params, model_state = sampling.g_weights(state, which)
        return functools.partial(apply_g, {"params": params, **model_state})

    return sampler


def _png_scale(config: ml_collections.ConfigDict) -> int:
    return max(1, 64 // config.model.resolution)  # Small digits stay legible in a viewer.


class Grids(Action):
    """A PNG sample grid (one column per class) and its TensorBoard image."""

    def __init__(self, config, plan: periods.Periods, gan: GAN, sampler: Callable, writer,
                 workdir: epath.Path, key: jax.Array):
        super().__init__(plan.sample_due)
        self.config, self.gan, self.sampler = config, gan, sampler
        self.writer, self.workdir, self.key = writer, workdir, key

    def run(self, step: int, state: Any) -> None:
        log = self.config.log
        grid = visualize.class_grid(self.sampler(state), self.gan, self.key, log.grid_rows,
                                    log.grid_classes)
        path = self.workdir / "samples" / f"step_{step:07d}.png"
        if jax.process_index() == 0:
            visualize.save_png(path, grid, scale=_png_scale(self.config))
        self.writer.write_images(step, {"samples": grid[None]})
        logging.info("sample grid of step %d: %s", step, path)


class Interpolations(Action):
    """At the last step: slerp rows within each class (the per-class collapse check of
    docs/original.md's findings).

    One row per class of the sample grid, `log.grid_rows` points per row: the same
    number of images as a grid, so the grids' sampler runs without another compilation.
    """

    def __init__(self, config, plan: periods.Periods, gan: GAN, sampler: Callable,
                 workdir: epath.Path, key: jax.Array):
        super().__init__(lambda step: step == plan.num_steps)
        self.config, self.gan, self.sampler = config, gan, sampler
        self.workdir, self.key = workdir, key

    def run(self, step: int, state: Any) -> None:
        n, log = self.gan.num_classes, self.config.log
        rows = min(n, log.grid_classes) if n else log.grid_rows
        classes = np.arange(rows) if n else np.zeros(rows, np.int32)
        grid = visualize.interpolation_grid(self.sampler(state), self.gan, self.key, classes,
                                            log.grid_rows)
        if jax.process_index() == 0:
            visualize.save_png(self.workdir / "interpolations.png", grid,
                               scale=_png_scale(self.config))


def warn_collapse(step: int, which: str, diversity: ClassDiversity) -> None:
    """One warning naming the collapsed classes, if any."""
    line = diversity.warning()
    if line:
        logging.warning("step %d (%s G): %s", step, which, line)


class Evaluation(Action):
    """In-training scores of the training generator, with the same key every time (score
    changes come from G, not from new z): `measure(state, generate, key)` gives the
    TensorBoard tags' prefix, the scores and the class-wise collapse check. Every score is
    written as `eval/<G>/<prefix><score>`, per-class ones as `.../<score>/<class>` (see
    `Evaluator.evaluate`)."""

    def __init__(self, config, plan: periods.Periods, measure: Callable, generate: Callable,
                 writer, key: jax.Array):
        super().__init__(plan.eval_due)
        self.measure, self.generate, self.writer, self.key = measure, generate, writer, key
        self.which = sampling.training_generator(config)

    def run(self, step: int, state: Any) -> None:
        which = self.which
        generate = functools.partial(self.generate, *sampling.g_weights(state, which))
        prefix, scores, diversity = self.measure(state, generate, self.key)
        self.writer.write_scalars(step, {f"eval/{which}/{prefix}{k}": v for k, v in
                                         {**scores, **diversity.to_scalars()}.items()})
        if scores:  # The log line leaves out the per-class values ('<score>/<class>').
            logging.info("step %d scores (%s G): %s", step, which,
                         {**{k: v for k, v in scores.items() if "/" not in k},
                          "diversity_ratio_min": diversity.minimum})
        warn_collapse(step, which, diversity)


def eval_actions(config, plan: periods.Periods, ds, gan: GAN, mesh, programs: Programs,
                 writer, key: jax.Array) -> list[Action]:
    """The feature network's scores and collapse check or, without a feature network (the
    evaluator warns once), the collapse check in D's features; none without `eval.every_*`.

    Args:
      config, plan, gan, mesh: the run's.
      ds: the dataset (its `eval_iterator` gives the real images).
      programs: makes the compiled, batched, sharded generator.
      writer, key: TensorBoard's writer, the key of the generated images.
    """
    if not plan.eval_every:
        return []
    generate = programs.generate_fn(gan, mesh)
    threshold = config.monitor.collapse_threshold
    evaluator = Evaluator.create(config.eval, config.data, mesh,
                                 real_batches=lambda: ds.eval_iterator(config.eval.batch_size))
    if evaluator is not None:
        def scores(state, generate, key):
            return ("", *evaluator.evaluate(generate, gan.num_classes, config.eval.num_samples,
                                            key, threshold))
        return [Evaluation(config, plan, scores, generate, writer, key)]

    probe = DFeatureDiversity(gan, mesh, ds.eval_iterator(config.eval.batch_size))

    def d_features(state, generate, key):
        d_variables = {"params": state.d_params, **state.d_state}
        return "d_features/", {}, probe.check(d_variables, generate, key, threshold)

    return [Evaluation(config, plan, d_features, generate, writer, key)]
