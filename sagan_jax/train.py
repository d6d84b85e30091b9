"""The training driver: `train_and_evaluate(config, workdir)`.

Builds the data pipeline, the GAN (`gan.build`), the state and the compiled step,
resumes from the workdir's latest checkpoint (continuing the same data order and noise),
and runs the loop over the run's plan of dispatches (`Dataset.plan_iterator`), each
followed by the periodic actions due at its last step (in steps resolved from the
config's epochs or steps by `periods.resolve`): progress (steps/s, ETA) and the outputs
of `sagan_jax.actions` (TensorBoard scalars, PNG sample grids with one column per class,
the IS/FID hook), async checkpoints, and a guard that stops the run at the first
non-finite loss without touching the last good checkpoint.

The workdir may be local or a bucket (`gs://...`, see `sagan_jax.workdir`). With several
processes (`sagan_jax.startup`) every process runs this function on its share of the
data; process 0 alone writes `config.json`, TensorBoard logs and grids, and all save
their parts of each checkpoint. SIGTERM (a preempted VM) saves the step reached and
raises `checkpointing.Preempted`.

TensorFlow (clu's writers, the input pipeline) is imported inside `train_and_evaluate`,
so importing this module does not import it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sagan_jax import actions, checkpointing, gan as gan_lib, monitors, parallel, periods
from sagan_jax import preemption
from sagan_jax import workdir as workdir_lib
from sagan_jax.programs import Programs

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
        for i in range(count):
            step_metrics = {k: v[i] for k, v in host.items()}
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


class _Checkpointer:
    """Saves at the planned steps, after a D-loss jump (a kept one), and on SIGTERM,
    after which it stops the run."""

    def __init__(self, ckpts: checkpointing.Checkpoints, config, plan: periods.Periods,
                 records: _Records, guard: _NanGuard, jumps: _JumpWatch):
        self.ckpts, self.config, self.plan = ckpts, config, plan
        self.records, self.guard, self.jumps = records, guard, jumps

    def __call__(self, step: int, state: Any, preempted: bool) -> None:
        if self.plan.checkpoint_due(step) or self.jumps.pending or preempted:
            self.records.settle()  # No checkpoint of a state that a non-finite loss made.
            self.guard.check_state(step, state)
            self.ckpts.save(step, state, self.config, keep_forever=self.jumps.pending)
            self.jumps.pending = False
            self.guard.last_saved = step
        if preempted:
            raise checkpointing.Preempted(step, self.ckpts.directory)


def _matmul_precision(config: ml_collections.ConfigDict) -> str | None:
    """`train.matmul_precision` for `jax.default_matmul_precision` (None: JAX's default)."""
    precision = config.train.get("matmul_precision", "")
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown train.matmul_precision {precision!r}; set it to one of "
                         f"{MATMUL_PRECISIONS} ('' = JAX's default).")
    return precision or None


def _steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
    """`train.steps_per_dispatch`, with a warning where it slows the run down."""
    k = config.train.steps_per_dispatch
    if k > 1 and jax.default_backend() == "cpu":
        logging.warning("train.steps_per_dispatch=%d on CPU: XLA:CPU runs the convolutions "
                        "inside the device-side loop about 18x slower (benchmarks/RESULTS.md); "
                        "set it to 1 on CPU.", k)
    return k


def _restore(ckpts: checkpointing.Checkpoints, state: Any, config) -> tuple[Any, int]:
    """The latest readable checkpoint's state and step, or `state` and 0."""
    restored, start = ckpts.restore_latest(state, config)
    if restored is None:
        return state, start
    logging.info("resuming from the checkpoint of step %d in %s", start, ckpts.directory)
    return restored, start


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                       programs: Programs = Programs()):
    """Trains (resuming from `workdir` when it holds checkpoints) and evaluates periodically.

    Args:
      config: the experiment (see configs/common.py for the vocabulary).
      workdir: where checkpoints, `config.json`, TensorBoard logs and sample grids go
        (a local path or gs://...).
      programs: builds the state, the step and the generator (tests pass one that
        reuses compilations).

    Returns:
      The final train state.

    Raises:
      ValueError: a batch that the devices cannot split, a config that cannot run, or a
        workdir holding checkpoints of a different architecture.
      PermissionError: an unwritable workdir.
      FloatingPointError: a non-finite loss (the last good checkpoint is kept).
      checkpointing.Preempted: SIGTERM; the step reached is saved.
    """
    # The programs are traced inside, so the precision is part of each compiled one.
    with jax.default_matmul_precision(_matmul_precision(config)):
        return _train_and_evaluate(config, workdir, programs)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                        programs: Programs):
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
    state = jax.device_put(programs.train_state(gan, config, init_key),
                           parallel.replicated_sharding(mesh))
    ckpts = checkpointing.Checkpoints(workdir, config.checkpoint.keep)
    state, start = _restore(ckpts, state, config)
    workdir_lib.write_config(workdir, config, dict(
        num_classes=gan.num_classes, channels=ds.channels, num_examples=ds.num_examples,
        **plan.describe()))
    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0)
    num_steps = plan.num_steps
    logging.info("%d classes, %d devices, learning rates G %g D %g, steps %d..%d "
                 "(%d per epoch, %.4g epochs)", gan.num_classes, mesh.size, gan.g_lr, gan.d_lr,
                 start, num_steps, plan.steps_per_epoch, num_steps / plan.steps_per_epoch)

    # Up to `train.steps_per_dispatch` steps per call, each call ending where something
    # periodic is due.
    k = _steps_per_dispatch(config)
    step_fn = programs.train_step(gan, config, mesh, steps_per_epoch=plan.steps_per_epoch,
                                  steps_per_call=k)
    sampler = actions.grid_sampler(config, gan)
    progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=plan.log_every)
    guard = _NanGuard(ckpts.directory, start or None)
    jumps = _JumpWatch(config.monitor)
    records = _Records(guard, jumps)
    periodic = [actions.LogScalars(plan, writer, records, jumps),
                actions.Grids(config, plan, gan, sampler, writer, workdir, sample_key),
                *actions.eval_actions(config, plan, ds, gan, mesh, programs, writer, eval_key)]
    checkpoint = _Checkpointer(ckpts, config, plan, records, guard, jumps)
    finish = actions.Interpolations(config, plan, gan, sampler, workdir,
                                    jax.random.fold_in(sample_key, 1))
    # The plan of dispatches from `start` is the unbroken run's, and the step folds
    # `state.step` into the run's key: a resumed run sees the batches and noise of an
    # unbroken one.
    batches = ds.plan_iterator(plan.chunks(start, k), k)
    try:
        with preemption.Watcher() as sigterm:
            for dispatch, (first, count, batch) in enumerate(batches):
                step = first + count
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    state, metrics = step_fn(state, batch, train_key, count)
                records.add(first, count, metrics)
                for done in range(first + 1, step + 1):
                    progress(done)
                for action in periodic:
                    action(step, state)
                # SIGTERM: every process saves this step, then the run stops.
                checkpoint(step, state, preempted=sigterm.reached(dispatch))
                finish(step, state)
    finally:
        batches.close()
        ckpts.close()
        writer.flush()
    return state
