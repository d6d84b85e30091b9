"""The training driver: `train_and_evaluate(config, workdir)`.

Builds the data pipeline, the state and the compiled step, resumes from the workdir's
latest checkpoint (continuing the same data order and noise), and runs the loop with its
periodic actions: TensorBoard scalars and progress (steps/s, ETA), PNG sample grids with
one column per class, async checkpoints, the IS/FID hook, and a guard that stops the run
at the first non-finite loss without touching the last good checkpoint.

TensorFlow (clu's writers, the input pipeline) is imported inside `train_and_evaluate`,
so importing this module does not import it.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sagan_jax import checkpointing, data_sources, parallel, train_step, visualize
from sagan_jax.models import build_models

GUARDED_LOSSES = ("d_loss", "g_loss")
G_STEP_METRICS = ("g_loss", "g_grad_norm")


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class _NanGuard:
    """Stops the run at the first non-finite loss, naming the step and the last good checkpoint."""

    def __init__(self, directory: str, last_saved: int | None):
        self.directory = directory
        self.last_saved = last_saved

    def _fail(self, what: str) -> None:
        good = (f"the last good checkpoint is step {self.last_saved} in {self.directory}"
                if self.last_saved else "no checkpoint was saved")
        raise FloatingPointError(
            f"{what}; training stopped and {good}: lower the learning rates or check the data.")

    def check_losses(self, step: int, metrics: dict) -> None:
        losses = {k: float(v) for k, v in jax.device_get(
            {k: metrics[k] for k in GUARDED_LOSSES}).items()}
        if not all(np.isfinite(v) for v in losses.values()):
            self._fail(f"non-finite loss at step {step} ({', '.join(f'{k}={v}' for k, v in losses.items())})")

    def check_state(self, step: int, state: Any) -> None:
        if not bool(_all_finite(state)):
            self._fail(f"non-finite parameters or statistics after step {step}")


def window_means(history: list[dict]) -> dict[str, float]:
    """Means of the metrics since the last write.

    G's loss and gradient norm exist only on iterations with a G step (the step reports
    0 otherwise), so they are averaged over those iterations alone (and left out of a
    window without one); with n_dis > 1 or the D-loss limit a plain mean would shrink
    them by the share of skipped G steps.
    """
    columns = {k: np.asarray([m[k] for m in history], np.float64) for k in history[0]}
    g_steps = columns["g_updated"] > 0
    means = {k: float(v.mean()) for k, v in columns.items() if k not in G_STEP_METRICS}
    if g_steps.any():
        means.update({k: float(columns[k][g_steps].mean()) for k in G_STEP_METRICS if k in columns})
    return means


def _sampler(state, config: ml_collections.ConfigDict) -> tuple[Any, Any, str]:
    """G's weights used for grids and scores: the EMA copy or the raw ones."""
    if config.train.sample_with_ema:
        return state.ema_params, state.ema_state, "ema"
    return state.g_params, state.g_state, "raw"


def _create_evaluator(config: ml_collections.ConfigDict, ds, mesh):
    """The IS/FID evaluator, or None (with one warning) when it is unavailable."""
    if not config.eval.every_steps:
        return None
    try:
        from sagan_jax.evaluation.evaluator import Evaluator  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        logging.warning("evaluation is not available (%s); training without it.", e)
        return None
    return Evaluator.create(
        config.eval, config.data, mesh,
        real_batches=lambda: ds.eval_iterator(config.eval.batch_size))


def _write_grids(writer, workdir: str, step: int, grid: np.ndarray, image_size: int) -> None:
    scale = max(1, 64 // image_size)  # Small digits stay legible in an image viewer.
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    if jax.process_index() == 0:
        visualize.save_png(path, grid, scale=scale)
    writer.write_images(step, {"samples": grid[None]})
    logging.info("sample grid of step %d: %s", step, path)


def _write_interpolations(config, workdir, sample, num_classes, key) -> None:
    """Slerp rows within each class (the per-class collapse check of SEED.md's findings).

    One row per class of the sample grid, `log.grid_rows` points per row: the same
    number of images as a grid, so `sample` runs without another compilation.
    """
    rows = min(num_classes, config.log.grid_classes) if num_classes else config.log.grid_rows
    classes = np.arange(rows) if num_classes else np.zeros(rows, np.int32)
    grid = visualize.interpolation_grid(sample, key, classes, config.log.grid_rows,
                                        config.model.z_dim)
    if jax.process_index() == 0:
        visualize.save_png(os.path.join(workdir, "interpolations.png"), grid,
                           scale=max(1, 64 // config.model.resolution))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains (resuming from `workdir` when it holds checkpoints) and evaluates periodically.

    Args:
      config: the experiment (see configs/common.py for the vocabulary).
      workdir: where checkpoints, `config.json`, TensorBoard logs and sample grids go.

    Returns:
      The final train state.

    Raises:
      ValueError: a batch that the devices cannot split, or a workdir holding checkpoints
        of a different architecture.
      PermissionError: an unwritable workdir.
      FloatingPointError: a non-finite loss (the last good checkpoint is kept).
    """
    workdir = checkpointing.prepare_workdir(workdir)
    mesh = parallel.create_mesh()
    parallel.check_divisible(config.train.batch_size, mesh)
    data_sources.import_tf()  # TF only reads data and writes logs: it is kept off the GPUs.
    from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
    from sagan_jax import input_pipeline  # pylint: disable=g-import-not-at-top

    ds = input_pipeline.create_dataset(config.data, config.train.batch_size,
                                       config.train.seed, mesh)
    num_classes = ds.num_classes if config.model.conditional else 0
    init_key, train_key, sample_key, eval_key = jax.random.split(
        jax.random.key(config.train.seed), 4)
    state = jax.device_put(
        train_step.create_train_state(config, num_classes, ds.channels, init_key),
        parallel.replicated_sharding(mesh))
    ckpts = checkpointing.Checkpoints(workdir, config.checkpoint.keep)
    restored, start = ckpts.restore_latest(state, config)
    if restored is not None:
        state = restored
        logging.info("resuming from the checkpoint of step %d in %s", start, ckpts.directory)
    checkpointing.write_config(workdir, config)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    g_lr, d_lr = train_step.scaled_learning_rates(config)
    logging.info("%d classes, %d devices, learning rates G %g D %g, steps %d..%d",
                 num_classes, mesh.size, g_lr, d_lr, start, config.train.num_steps)

    step_fn = train_step.make_train_step(config, num_classes, ds.channels, mesh)
    # Grids and interpolations: a few images, from G on one device with explicit z.
    generator, _ = build_models(config.model, num_classes, ds.channels)
    apply_g = jax.jit(lambda v, z, y: generator.apply(v, z, y if num_classes else None))
    evaluator = _create_evaluator(config, ds, mesh)
    if evaluator is not None:  # Many images: compiled, batched and sharded over the mesh.
        gen_fn = train_step.make_generate_fn(config, num_classes, ds.channels, mesh)
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.train.num_steps, writer=writer,
        every_steps=config.log.every_steps)
    guard = _NanGuard(ckpts.directory, start or None)
    num_steps = config.train.num_steps
    batches = ds.iterator(start_step=start)
    history = []  # Metrics since the last write, averaged when written.
    previous = None
    try:
        for step in range(start + 1, num_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                # The step folds `state.step` into the run's key, and the iterator started at
                # `start`: a resumed run sees the same batches and noise as an unbroken one.
                batch = next(batches)
                state, metrics = step_fn(state, batch, train_key)
            if previous is not None:
                # Checks the previous step while the device runs this one.
                guard.check_losses(step - 1, previous)
            previous = metrics
            history.append(metrics)
            progress(step)
            last = step == num_steps
            if step % config.log.every_steps == 0 or last:
                guard.check_losses(step, metrics)
                writer.write_scalars(step, {f"train/{k}": v for k, v in window_means(
                    jax.device_get(history)).items()})
                history = []
            params, model_state, which = _sampler(state, config)
            if step % config.log.sample_every_steps == 0 or last:
                sample = functools.partial(apply_g, {"params": params, **model_state})
                grid = visualize.class_grid(sample, sample_key, num_classes,
                                            config.log.grid_rows, config.log.grid_classes,
                                            config.model.z_dim)
                _write_grids(writer, workdir, step, grid, config.model.resolution)
            if evaluator is not None and (step % config.eval.every_steps == 0 or last):
                # The same key at every step: score changes come from G, not from new z.
                scores = evaluator.evaluate(
                    lambda key, labels: gen_fn(params, model_state, key, labels),
                    num_classes, config.eval.num_samples, eval_key)
                writer.write_scalars(step, {f"eval/{which}/{k}": v for k, v in scores.items()})
                logging.info("step %d scores (%s G): %s", step, which, scores)
            if step % config.checkpoint.every_steps == 0 or last:
                guard.check_losses(step, metrics)
                guard.check_state(step, state)
                ckpts.save(step, state, config)
                guard.last_saved = step
        if num_steps > start:
            params, model_state, _ = _sampler(state, config)
            _write_interpolations(config, workdir, functools.partial(
                apply_g, {"params": params, **model_state}), num_classes,
                jax.random.fold_in(sample_key, 1))
    finally:
        batches.close()
        ckpts.close()
        writer.flush()
    return state
