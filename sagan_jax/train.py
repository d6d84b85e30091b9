"""The training driver: `train_and_evaluate(config, workdir)`.

Builds the data pipeline, the GAN (`gan.build`), the state and the compiled step,
resumes from the workdir's latest checkpoint (continuing the same data order and noise),
and runs the loop with its periodic actions (in steps resolved from the config's epochs
or steps by `periods.resolve`): TensorBoard scalars and progress (steps/s, ETA), PNG sample grids with
one column per class, async checkpoints, the IS/FID hook, and a guard that stops the run
at the first non-finite loss without touching the last good checkpoint.

The workdir may be local or a bucket (`gs://...`, see `sagan_jax.workdir`). With several
processes (`sagan_jax.startup`) every process runs this function on its share of the
data; process 0 alone writes `config.json`, TensorBoard logs and grids, and all save
their parts of each checkpoint. SIGTERM (a preempted VM) saves the step reached and
raises `checkpointing.Preempted`.

TensorFlow (clu's writers, the input pipeline) is imported inside `train_and_evaluate`,
so importing this module does not import it.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sagan_jax import checkpointing, gan as gan_lib, monitors, parallel, periods, train_step
from sagan_jax import visualize
from sagan_jax import workdir as workdir_lib
from sagan_jax.evaluation.d_diversity import DFeatureDiversity
from sagan_jax.evaluation.evaluator import Evaluator

GUARDED_LOSSES = ("d_loss", "g_loss")
G_STEP_METRICS = ("g_loss", "g_grad_norm", "g_mode_seeking")
MATMUL_PRECISIONS = ("", "default", "high", "highest")


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

    def check_losses(self, step: int, metrics: dict) -> dict[str, float]:
        """The step's losses (host values); raises FloatingPointError if one is not finite."""
        losses = {k: float(metrics[k]) for k in GUARDED_LOSSES}
        if not all(np.isfinite(v) for v in losses.values()):
            self._fail(f"non-finite loss at step {step} ({', '.join(f'{k}={v}' for k, v in losses.items())})")
        return losses

    def check_state(self, step: int, state: Any) -> None:
        if not bool(_all_finite(state)):
            self._fail(f"non-finite parameters or statistics after step {step}")


class _Records:
    """The per-step metrics of the dispatches, brought to the host one dispatch behind.

    Each step's losses go through the NaN guard and D's loss into the jump detector, in
    step order; the means since the last write are taken from them.
    """

    def __init__(self, guard: _NanGuard, jumps: "_JumpWatch"):
        self.guard, self.jumps = guard, jumps
        self.pending = None  # (first step, count, device metrics) of the last dispatch.
        self.history: list[dict] = []

    def add(self, first: int, count: int, metrics: dict) -> None:
        """Records a dispatch and settles the one before (while the device runs this)."""
        self.settle()
        self.pending = (first, count, metrics)

    def settle(self) -> None:
        """Brings the last dispatch's metrics to the host and checks them, step by step."""
        if self.pending is None:
            return
        first, count, metrics = self.pending
        self.pending = None
        host = jax.device_get(metrics)
        stacked = np.ndim(host["d_loss"]) > 0  # From a step of several iterations per call.
        for i in range(count):
            step_metrics = {k: v[i] for k, v in host.items()} if stacked else host
            losses = self.guard.check_losses(first + 1 + i, step_metrics)
            self.jumps.feed(first + 1 + i, losses["d_loss"])
            self.history.append(step_metrics)

    def means(self) -> dict[str, float]:
        """`window_means` of the steps since the last call."""
        self.settle()
        means, self.history = window_means(self.history), []
        return means


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
    which = "ema" if config.train.sample_with_ema else "raw"
    return (*train_step.g_weights(state, which), which)


def _create_evaluator(config: ml_collections.ConfigDict, ds, mesh) -> Evaluator | None:
    """The IS/FID evaluator, or None (with one warning) without Inception weights."""
    return Evaluator.create(
        config.eval, config.data, mesh,
        real_batches=lambda: ds.eval_iterator(config.eval.batch_size))


class _JumpWatch:
    """The D-loss jump detector in the loop: fed every step's D loss, it warns once per
    jump (naming the step), logs its statistic, and asks for a kept checkpoint."""

    def __init__(self, monitor_cfg: ml_collections.ConfigDict):
        self.detector = monitors.DLossJumpDetector.from_config(monitor_cfg)
        self.checkpoint = monitor_cfg.checkpoint_on_jump
        self.statistic = float("nan")
        self.pending = False  # A jump fired and its checkpoint is not saved yet.

    def feed(self, step: int, d_loss: float) -> None:
        reading = self.detector.update(step, d_loss)
        self.statistic = reading.statistic
        if reading.fired:
            logging.warning(
                "D-loss jump at step %d: the mean of the last %d D losses is %.1f robust "
                "standard deviations above the median of the %d before (the original saw IS "
                "fall from such a jump on); %s", step, self.detector.short, reading.statistic,
                self.detector.long, "saving a kept checkpoint." if self.checkpoint else
                "monitor.checkpoint_on_jump is off.")
            self.pending = self.checkpoint


def _warn_collapse(step: int, which: str, scores: dict, threshold: float) -> None:
    """One warning naming the classes whose diversity ratio is below `threshold`."""
    names = sorted(k for k in scores if k.startswith("diversity_ratio/"))
    ratios = np.asarray([scores[k] for k in names])
    collapsed = np.flatnonzero(ratios < threshold)
    line = monitors.collapse_warning(ratios, collapsed, threshold)
    if line:
        classes = ", ".join(names[c].split("/")[1] for c in collapsed)
        logging.warning("step %d (%s G): %s [classes %s]", step, which, line, classes)


def _write_grids(writer, workdir: epath.Path, step: int, grid: np.ndarray,
                 image_size: int) -> None:
    scale = max(1, 64 // image_size)  # Small digits stay legible in an image viewer.
    path = workdir / "samples" / f"step_{step:07d}.png"
    if jax.process_index() == 0:
        visualize.save_png(path, grid, scale=scale)
    writer.write_images(step, {"samples": grid[None]})
    logging.info("sample grid of step %d: %s", step, path)


def _write_interpolations(config, workdir, gan, sample, key) -> None:
    """Slerp rows within each class (the per-class collapse check of docs/original.md's findings).

    One row per class of the sample grid, `log.grid_rows` points per row: the same
    number of images as a grid, so `sample` runs without another compilation.
    """
    n = gan.num_classes
    rows = min(n, config.log.grid_classes) if n else config.log.grid_rows
    classes = np.arange(rows) if n else np.zeros(rows, np.int32)
    grid = visualize.interpolation_grid(sample, gan, key, classes, config.log.grid_rows)
    if jax.process_index() == 0:
        visualize.save_png(workdir / "interpolations.png", grid,
                           scale=max(1, 64 // config.model.resolution))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike):
    """Trains (resuming from `workdir` when it holds checkpoints) and evaluates periodically.

    Args:
      config: the experiment (see configs/common.py for the vocabulary).
      workdir: where checkpoints, `config.json`, TensorBoard logs and sample grids go
        (a local path or gs://...).

    Returns:
      The final train state.

    Raises:
      ValueError: a batch that the devices cannot split, a config that cannot run, or a
        workdir holding checkpoints of a different architecture.
      PermissionError: an unwritable workdir.
      FloatingPointError: a non-finite loss (the last good checkpoint is kept).
      checkpointing.Preempted: SIGTERM; the step reached is saved.
    """
    precision = config.train.get("matmul_precision", "")
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown train.matmul_precision {precision!r}; set it to one of "
                         f"{MATMUL_PRECISIONS} ('' = JAX's default).")
    # The programs are traced inside, so the precision is part of each compiled one.
    with jax.default_matmul_precision(precision or None):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike):
    """`train_and_evaluate` at the matmul precision it chose."""
    workdir = workdir_lib.prepare(workdir)
    mesh = parallel.create_mesh()
    parallel.check_divisible(config.train.batch_size, mesh)
    from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
    from sagan_jax import data  # pylint: disable=g-import-not-at-top

    ds = data.create_dataset(config.data, config.train.batch_size, config.train.seed, mesh)
    plan = periods.resolve(config, ds.steps_per_epoch)
    gan = gan_lib.build(config, ds.num_classes, ds.channels)
    init_key, train_key, sample_key, eval_key = jax.random.split(
        jax.random.key(config.train.seed), 4)
    state = jax.device_put(train_step.create_train_state(gan, config, init_key),
                           parallel.replicated_sharding(mesh))
    ckpts = checkpointing.Checkpoints(workdir, config.checkpoint.keep)
    restored, start = ckpts.restore_latest(state, config)
    if restored is not None:
        state = restored
        logging.info("resuming from the checkpoint of step %d in %s", start, ckpts.directory)
    workdir_lib.write_config(workdir, config, dict(
        num_classes=gan.num_classes, channels=ds.channels, num_examples=ds.num_examples,
        **plan.describe()))
    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0)
    num_steps = plan.num_steps
    logging.info("%d classes, %d devices, learning rates G %g D %g, steps %d..%d "
                 "(%d per epoch, %.4g epochs)", gan.num_classes, mesh.size, gan.g_lr, gan.d_lr,
                 start, num_steps, plan.steps_per_epoch, num_steps / plan.steps_per_epoch)

    # `train.steps_per_dispatch` > 1: up to that many steps per call, in a loop on the
    # device, each call ending where something periodic is due.
    k = config.train.steps_per_dispatch
    if k > 1 and jax.default_backend() == "cpu":
        logging.warning("train.steps_per_dispatch=%d on CPU: XLA:CPU runs the convolutions "
                        "inside the device-side loop about 18x slower (benchmarks/RESULTS.md); "
                        "set it to 1 on CPU.", k)
    step_fn = train_step.make_train_step(gan, config, mesh, steps_per_epoch=plan.steps_per_epoch,
                                         steps_per_call=k)
    # Grids and interpolations: a few images, from G on one device with explicit z.
    apply_g = jax.jit(lambda v, z, y: gan.generator.apply(v, z, gan.labels_or_none(y)))
    evaluator = _create_evaluator(config, ds, mesh) if plan.eval_every else None
    # Without a feature network, the class-wise collapse check runs in D's features.
    probe = (DFeatureDiversity(gan, mesh, ds.eval_iterator(config.eval.batch_size))
             if plan.eval_every and evaluator is None else None)
    if evaluator is not None or probe is not None:  # Compiled, batched, sharded.
        gen_fn = train_step.make_generate_fn(gan, mesh)
    progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=plan.log_every)
    guard = _NanGuard(ckpts.directory, start or None)
    jumps = _JumpWatch(config.monitor)
    records = _Records(guard, jumps)
    # The iterator follows the same plan of dispatches from `start`, and the step folds
    # `state.step` into the run's key: a resumed run sees the batches and noise of an
    # unbroken one.
    batches = ds.iterator(start_step=start, chunks=plan.chunks(start, k), size=k)
    try:
        for dispatch, (first, count) in enumerate(plan.chunks(start, k)):
            step = first + count
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                if k == 1:
                    state, metrics = step_fn(state, next(batches), train_key)
                else:
                    state, metrics = step_fn(state, next(batches), train_key, jnp.int32(count))
            records.add(first, count, metrics)
            for done in range(first + 1, step + 1):
                progress(done)
            last = step == num_steps
            if plan.due(step, plan.log_every) or last:
                scalars = records.means()
                if np.isfinite(jumps.statistic):
                    scalars["d_jump"] = jumps.statistic
                writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
            params, model_state, which = _sampler(state, config)
            if plan.due(step, plan.sample_every) or last:
                sample = functools.partial(apply_g, {"params": params, **model_state})
                grid = visualize.class_grid(sample, gan, sample_key, config.log.grid_rows,
                                            config.log.grid_classes)
                _write_grids(writer, workdir, step, grid, config.model.resolution)
            if evaluator is not None and plan.eval_due(step):
                # The same key at every step: score changes come from G, not from new z.
                scores = evaluator.evaluate(
                    lambda key, labels: gen_fn(params, model_state, key, labels),
                    gan.num_classes, config.eval.num_samples, eval_key)
                writer.write_scalars(step, {f"eval/{which}/{k}": v for k, v in scores.items()})
                logging.info("step %d scores (%s G): %s", step, which, {
                    k: v for k, v in scores.items() if not k.startswith("diversity_ratio/")})
                _warn_collapse(step, which, scores, config.monitor.collapse_threshold)
            if probe is not None and plan.eval_due(step):
                ratios = probe.ratios({"params": state.d_params, **state.d_state},
                                      lambda key, labels: gen_fn(params, model_state, key, labels),
                                      eval_key)
                writer.write_scalars(step, {f"eval/{which}/d_features/{k}": v
                                            for k, v in ratios.items()})
                _warn_collapse(step, which, ratios, config.monitor.collapse_threshold)
            # SIGTERM: every process saves this step, then the run stops.
            preempted = ckpts.reached_preemption(dispatch)
            if plan.checkpoint_due(step) or jumps.pending or preempted:
                records.settle()  # No checkpoint of a state that a non-finite loss made.
                guard.check_state(step, state)
                ckpts.save(step, state, config, keep_forever=jumps.pending)
                jumps.pending = False
                guard.last_saved = step
            if preempted:
                raise checkpointing.Preempted(step, ckpts.directory)
        records.settle()
        if num_steps > start:
            params, model_state, _ = _sampler(state, config)
            _write_interpolations(config, workdir, gan, functools.partial(
                apply_g, {"params": params, **model_state}), jax.random.fold_in(sample_key, 1))
    finally:
        batches.close()
        ckpts.close()
        writer.flush()
    return state
