"""Early warning of the original's sudden fall (docs/original.md, "Findings").

`DLossJumpDetector`: with D:G = 1:1 the original's IS rose, then fell, and the fall came
with a sudden jump of D's loss. The detector is fed D's loss of every training step on the
host and fires once per jump. (The other failure, per-class collapse, is measured with
every evaluation: `sagan_jax.evaluation.diversity`.)

NumPy only: no JAX, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# 1.4826 * MAD estimates the standard deviation of normally distributed values.
MAD_TO_SIGMA = 1.4826


@dataclasses.dataclass(frozen=True)
class JumpReading:
    """What `DLossJumpDetector.update` returns for one step.

    Attributes:
      step: the training step that was fed.
      statistic: the jump statistic after this step (NaN during the warm-up); log it.
      fired: True on the one step where a jump is declared; warn (and checkpoint) then.
    """
    step: int
    statistic: float
    fired: bool


class DLossJumpDetector:
    """Online detector of a sudden rise of D's loss against its own recent level.

    The statistic at step t, over the last `short + long` finite losses fed:

        recent   = mean of the latest `short` losses (steps t-short+1 .. t)
        baseline = the `long` losses just before them (t-short-long+1 .. t-short)
        level    = median(baseline)
        spread   = max(1.4826 * median(|baseline - level|), min_spread)
        statistic = (recent - level) / spread

    So it counts by how many robust standard deviations of a single step's loss the mean of
    the last `short` steps sits above the median of the `long` steps before them. Median
    and MAD ignore the spikes that a GAN's D loss has now and then; the short mean needs a
    sustained rise, not one bad batch; the windows do not overlap, so a jump does not raise
    its own baseline. Only rises count (a falling D loss is not this failure).
    `min_spread` (loss units) keeps the statistic finite when the baseline is flat, e.g. a
    D whose hinge loss sits at 0.

    Warm-up: the statistic is NaN until `short + long` losses have been fed (also after a
    resume: the detector keeps no state in checkpoints).

    Firing: the detector fires on the first step whose statistic exceeds `threshold`, then
    stays quiet until the statistic falls below `rearm` (the loss settled back, or the
    baseline caught up with a new level once more than half of `long` holds it), so one
    jump gives one warning. A `threshold` of inf switches firing off.

    Defaults: the mean of 20 independent steps scatters by about 1/sqrt(20) = 0.22 of one
    step's spread, so a threshold of 3 leaves a wide margin for the step-to-step
    correlation and slow drifts of a real D loss. A `long` of 500 steps spans a few of
    the original's epochs on the small datasets. Calibrated on two real traces of the
    digits quick start (tests/data): with its mode-seeking term (1,600 steps) the
    statistic peaks at 1.27, without it (1,200 steps, collapsing) at 1.83. Raised by 0.5
    from step 900 on (the size of the original's jump, about 3 spreads of one step
    there), they reach 3.72 and 4.75 and fire within `short` steps; a threshold of 4
    would miss the first (monitor.d_jump_threshold).

    Cost: O(long) per step in preallocated ring buffers; no allocation grows with steps.
    """

    def __init__(self, short: int = 20, long: int = 500, threshold: float = 3.0,
                 rearm: float | None = None, min_spread: float = 0.01):
        """Creates a detector.

        Args:
          short: steps in the recent mean.
          long: steps of the baseline, just before the recent ones.
          threshold: fire when the statistic exceeds it; inf = never fire.
          rearm: fire again only after the statistic fell below this (default threshold/2).
          min_spread: smallest spread, in loss units.

        Raises:
          ValueError: a window below 1, or `rearm` not below `threshold`.
        """
        if short < 1 or long < 2:
            raise ValueError(f"D-loss jump windows must be short >= 1 and long >= 2, got "
                             f"short={short}, long={long}; fix monitor.d_jump_short/_long.")
        rearm = threshold / 2 if rearm is None else rearm
        if math.isfinite(threshold) and not rearm < threshold:
            raise ValueError(f"the re-arm level {rearm} must be below the threshold "
                             f"{threshold}; fix monitor.d_jump_threshold.")
        self.short, self.long = short, long
        self.threshold, self.rearm, self.min_spread = threshold, rearm, min_spread
        self._recent = np.zeros(short)
        self._baseline = np.zeros(long)
        self._scratch = np.zeros(long)
        self._count = 0  # Finite losses fed so far.
        self._armed = True
        self.fired_steps: list[int] = []

    @classmethod
    def from_config(cls, monitor_cfg) -> "DLossJumpDetector":
        """A detector from the config's `monitor` section (fields `d_jump_*`)."""
        return cls(short=monitor_cfg.d_jump_short, long=monitor_cfg.d_jump_long,
                   threshold=monitor_cfg.d_jump_threshold)

    def _median_in_scratch(self) -> float:
        """Median of `self._scratch`, reordering it in place (no copy)."""
        n = self.long
        mid = n // 2
        if n % 2:
            self._scratch.partition(mid)
            return float(self._scratch[mid])
        self._scratch.partition((mid - 1, mid))
        return 0.5 * float(self._scratch[mid - 1] + self._scratch[mid])

    def statistic(self) -> float:
        """The statistic of the losses fed so far (NaN during the warm-up)."""
        if self._count < self.short + self.long:
            return math.nan
        np.copyto(self._scratch, self._baseline)
        level = self._median_in_scratch()
        np.subtract(self._baseline, level, out=self._scratch)
        np.abs(self._scratch, out=self._scratch)
        spread = max(MAD_TO_SIGMA * self._median_in_scratch(), self.min_spread)
        return (float(self._recent.mean()) - level) / spread

    def update(self, step: int, d_loss: float) -> JumpReading:
        """Feeds D's loss of `step`; returns the statistic and whether a jump fired now.

        A non-finite loss is not fed (the run's NaN guard stops such a run); the reading
        then repeats the last statistic and does not fire.
        """
        d_loss = float(d_loss)
        if not math.isfinite(d_loss):
            return JumpReading(step, self.statistic(), False)
        slot = self._count % self.short
        if self._count >= self.short:  # The oldest recent loss moves into the baseline.
            self._baseline[(self._count - self.short) % self.long] = self._recent[slot]
        self._recent[slot] = d_loss
        self._count += 1
        value = self.statistic()
        fired = False
        if self._armed and value > self.threshold:
            fired, self._armed = True, False
            self.fired_steps.append(step)
        elif not self._armed and value < self.rearm:
            self._armed = True
        return JumpReading(step, value, fired)

