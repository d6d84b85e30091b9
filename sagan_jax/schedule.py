"""The D/G update schedule: fixed `n_dis` and the original's "D loss limit" rule.

One training iteration is a G step (when the schedule allows it) followed by a D step,
as in the original (shared/SEED.md, Training). Iterations are numbered by the state's
`step` before the iteration (0, 1, 2, ...).

- Fixed `n_dis` (D steps per G step, as in SNGAN's 5 or BigGAN's 2): iteration `step`
  has a G step only when `step % n_dis == 0`. Every iteration has exactly one D step,
  so n_dis = 5 runs G+D, D, D, D, D, G+D, ... With n_dis = 1 and no limit, every
  iteration has a G step.
- "D loss limit": after the D step of an iteration, if the mean of the last `window`
  (5) D losses is >= `d_loss_limit` and no D-only countdown is running, the next
  `d_only_steps` (4) iterations are D-only (no G step, whatever `n_dis` says). The
  countdown `d_only_left` is the number of upcoming D-only iterations, counted down in
  each iteration it skips. An iteration that was D-only counts as one with a countdown
  running, so it never starts a new countdown: a G step follows every countdown and,
  while the D loss stays above the limit, D:G is 5:1 as SEED.md says.
  `d_loss_limit = inf` disables the rule.

Window: the original took the mean of the last 5 *recorded* losses, so before 5 D
steps have happened the mean is over the ones there are. The window array holds the
latest losses oldest first; which entries are real follows from `step`, as exactly one
D loss is recorded per iteration (so no sentinel values sit in the state).

Everything here works on jax arrays inside the compiled step and on Python numbers in
tests.
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp


def g_step_now(step: Any, d_only_left: Any, cfg: Any) -> Any:
    """Whether iteration `step` has a G step.

    Args:
      step: the iteration's index (the train state's step before the iteration).
      d_only_left: D-only iterations still to run, at the start of this iteration.
      cfg: the `schedule` config section (uses `n_dis`).

    Returns:
      A boolean (array): no countdown is running and `step` is a multiple of `n_dis`.
    """
    return jnp.logical_and(d_only_left == 0, step % cfg.n_dis == 0)


def window_mean(window: Any, step: Any) -> Any:
    """Mean of the real entries of `window` after the D loss of iteration `step`.

    Args:
      window: float array [W], the latest D losses, oldest first.
      step: the iteration whose loss was just recorded (so `step + 1` losses exist).
    """
    size = window.shape[0]
    count = jnp.minimum(step + 1, size)
    real = jnp.arange(size) >= size - count
    return jnp.sum(jnp.where(real, window, 0.0)) / count


def update(window: Any, d_only_left: Any, d_loss: Any, step: Any, cfg: Any) -> tuple[Any, Any]:
    """Records the D loss of iteration `step` and applies the "D loss limit" rule.

    Args:
      window: float32 [cfg.window], the latest D losses, oldest first.
      d_only_left: int32, D-only iterations still to run at the start of this iteration.
      d_loss: this iteration's (cross-replica mean) D loss.
      step: this iteration's index (the state's step before it).
      cfg: the `schedule` config section (`d_loss_limit`, `d_only_steps`).

    Returns:
      `(window, d_only_left)` for the next iteration.
    """
    window = jnp.asarray(window, jnp.float32)
    window = jnp.concatenate([window[1:], jnp.asarray(d_loss, jnp.float32)[None]])
    d_only_left = jnp.asarray(d_only_left, jnp.int32)
    counted_down = jnp.maximum(d_only_left - 1, 0)
    if math.isinf(cfg.d_loss_limit):
        return window, counted_down
    # "No countdown running" is judged on this iteration: a D-only iteration, the last
    # one included, cannot start a new countdown, so a G step always follows (D:G 5:1).
    start = jnp.logical_and(d_only_left == 0, window_mean(window, step) >= cfg.d_loss_limit)
    return window, jnp.where(start, jnp.int32(cfg.d_only_steps), counted_down)


def check_config(cfg: Any) -> None:
    """Raises one clear ValueError for a schedule section that cannot run."""
    if int(cfg.n_dis) < 1:
        raise ValueError(f"schedule.n_dis must be >= 1 (got {cfg.n_dis}); set --config.schedule.n_dis=1.")
    if int(cfg.window) < 1:
        raise ValueError(f"schedule.window must be >= 1 (got {cfg.window}); set --config.schedule.window=5.")
    if int(cfg.d_only_steps) < 0:
        raise ValueError(
            f"schedule.d_only_steps must be >= 0 (got {cfg.d_only_steps}); "
            "set --config.schedule.d_only_steps=4."
        )
