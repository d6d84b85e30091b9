"""The D/G update rule: fixed `n_dis` and the original's "D loss limit" rule, in two modes.

One training iteration is a G step (when the rule allows it) followed by a D step, as
in the original (docs/original.md, "Training"). Iterations are numbered by the state's
`step` before the iteration (0, 1, 2, ...); epoch `e` is iterations
`e * steps_per_epoch .. (e + 1) * steps_per_epoch - 1`, as the data pipeline drops the
incomplete last batch.

- Fixed `n_dis` (D steps per G step, as in SNGAN's 5 or BigGAN's 2): iteration `step`
  has a G step only when `step % n_dis == 0` (the global step, in both modes) and no
  D-only countdown is running. Every iteration has exactly one D step, so n_dis = 5
  runs G+D, D, D, D, D, G+D, ... With n_dis = 1 and no limit, every iteration has a G
  step.
- "D loss limit" (`d_loss_limit`, the original's 0.5; inf switches it off): a countdown
  `d_only_left` of D-only iterations (no G step, whatever `n_dis` says). An iteration
  that starts with a countdown > 0 skips G and counts it down by one. After the D step,
  if the mean of the last `window` (5) D losses is >= `d_loss_limit` and the countdown
  allows it, the countdown becomes `d_only_steps` (4). `limit_mode` says how:

  - 'capped' (the default; the write-up's reading, "while D's loss is >= 0.5, D:G is
    5:1"): the losses and the countdown carry across epochs, and only an iteration that
    *started* with no countdown can start one. A D-only iteration, the last one
    included, never starts a new countdown, so a G step follows every countdown and,
    while the loss stays above the limit, D:G is exactly (d_only_steps + 1):1 = 5:1.
  - 'original' (what the original code does, docs/original.md, "Training"): at the start
    of every epoch the list of D losses is empty and the countdown is 0, so the mean
    covers only this epoch's losses and the epoch's first iteration always has a G step
    (if `n_dis` allows). A new countdown starts when the countdown is 0 *after* this
    iteration's decrement, so the last D-only iteration can start the next countdown at
    once: while the loss stays above the limit, only the first iteration of each epoch
    updates G.

Window: the original took the mean of the last 5 *recorded* losses, so before 5 D steps
have happened (in this epoch, in 'original' mode) the mean is over the ones there are.
The window array holds the latest losses oldest first; which entries are real follows
from `step` (and `steps_per_epoch`), as exactly one D loss is recorded per iteration, so
the state holds no sentinel values and the epoch reset clears nothing.

Everything here works on jax arrays inside the compiled step (`steps_per_epoch` is a
static Python int) and on Python numbers in tests.
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

LIMIT_MODES = ("capped", "original")


def _original(cfg: Any, steps_per_epoch: int) -> bool:
    """Whether `cfg` selects the original's per-epoch rule (then `steps_per_epoch` is used)."""
    if cfg.limit_mode != "original":
        return False
    if int(steps_per_epoch) < 1:
        raise ValueError(f"steps_per_epoch must be >= 1 in 'original' limit_mode (got {steps_per_epoch}).")
    return True


def _countdown_at_start(step: Any, d_only_left: Any, cfg: Any, steps_per_epoch: int) -> Any:
    """The countdown that iteration `step` starts with: reset to 0 at each epoch in 'original' mode."""
    if _original(cfg, steps_per_epoch):
        return jnp.where(step % steps_per_epoch == 0, 0, d_only_left)
    return d_only_left


def g_step_now(step: Any, d_only_left: Any, cfg: Any, steps_per_epoch: int) -> Any:
    """Whether iteration `step` has a G step.

    Args:
      step: the iteration's index (the train state's step before the iteration).
      d_only_left: the state's countdown before this iteration.
      cfg: the `update_rule` config section (uses `n_dis`, `limit_mode`).
      steps_per_epoch: iterations per epoch (static); used in 'original' mode only.

    Returns:
      A boolean (array): no countdown is running and `step` is a multiple of `n_dis`.
    """
    d_only_left = _countdown_at_start(step, d_only_left, cfg, steps_per_epoch)
    return jnp.logical_and(d_only_left == 0, step % cfg.n_dis == 0)


def window_mean(window: Any, step: Any) -> Any:
    """Mean of the real entries of `window` after the D loss of iteration `step`.

    Args:
      window: float array [W], the latest D losses, oldest first.
      step: the iteration whose loss was just recorded, counted from where recording
        started (so `step + 1` losses exist): the global step in 'capped' mode, the step
        within the epoch in 'original' mode.
    """
    size = window.shape[0]
    count = jnp.minimum(step + 1, size)
    real = jnp.arange(size) >= size - count
    return jnp.sum(jnp.where(real, window, 0.0)) / count


def update(window: Any, d_only_left: Any, d_loss: Any, step: Any, cfg: Any,
           steps_per_epoch: int) -> tuple[Any, Any]:
    """Records the D loss of iteration `step` and applies the "D loss limit" rule.

    Args:
      window: float32 [cfg.window], the latest D losses, oldest first.
      d_only_left: int32, the state's countdown before this iteration.
      d_loss: this iteration's (cross-replica mean) D loss.
      step: this iteration's index (the state's step before it).
      cfg: the `update_rule` config section (`d_loss_limit`, `d_only_steps`, `limit_mode`).
      steps_per_epoch: iterations per epoch (static); used in 'original' mode only.

    Returns:
      `(window, d_only_left)` for the next iteration.
    """
    window = jnp.asarray(window, jnp.float32)
    window = jnp.concatenate([window[1:], jnp.asarray(d_loss, jnp.float32)[None]])
    d_only_left = jnp.asarray(d_only_left, jnp.int32)
    if _original(cfg, steps_per_epoch):
        counted_down = jnp.maximum(_countdown_at_start(step, d_only_left, cfg, steps_per_epoch) - 1, 0)
        if math.isinf(cfg.d_loss_limit):
            return window, counted_down
        # The original checks the countdown after this iteration's decrement, and its
        # mean covers this epoch's losses only.
        mean = window_mean(window, step % steps_per_epoch)
        start = jnp.logical_and(counted_down == 0, mean >= cfg.d_loss_limit)
        return window, jnp.where(start, jnp.int32(cfg.d_only_steps), counted_down)
    counted_down = jnp.maximum(d_only_left - 1, 0)
    if math.isinf(cfg.d_loss_limit):
        return window, counted_down
    # "No countdown running" is judged on this iteration: a D-only iteration, the last
    # one included, cannot start a new countdown, so a G step always follows (D:G 5:1).
    start = jnp.logical_and(d_only_left == 0, window_mean(window, step) >= cfg.d_loss_limit)
    return window, jnp.where(start, jnp.int32(cfg.d_only_steps), counted_down)


def check_config(cfg: Any) -> None:
    """Raises one clear ValueError for an `update_rule` section that cannot run."""
    if int(cfg.n_dis) < 1:
        raise ValueError(f"update_rule.n_dis must be >= 1 (got {cfg.n_dis}); set --config.update_rule.n_dis=1.")
    if int(cfg.window) < 1:
        raise ValueError(f"update_rule.window must be >= 1 (got {cfg.window}); set --config.update_rule.window=5.")
    if int(cfg.d_only_steps) < 0:
        raise ValueError(
            f"update_rule.d_only_steps must be >= 0 (got {cfg.d_only_steps}); "
            "set --config.update_rule.d_only_steps=4."
        )
    if cfg.limit_mode not in LIMIT_MODES:
        raise ValueError(
            f"update_rule.limit_mode must be one of {LIMIT_MODES} (got {cfg.limit_mode!r}); "
            "set --config.update_rule.limit_mode=capped."
        )
