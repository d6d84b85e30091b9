"""Early warnings of the original's two failure modes (docs/original.md, "Findings").

- `DLossJumpDetector`: with D:G = 1:1 the original's IS rose, then fell, and the fall came
  with a sudden jump of D's loss. The detector is fed D's loss of every training step on the
  host and fires once per jump.
- `class_diversity` and `collapse_check`: on AnimeFace and Flowers SAGAN collapsed per
  class (clean images, but every `z` of a class gave the same image). The diversity of a
  class is the mean pairwise distance of its samples' feature vectors; a class whose
  generated diversity is a small fraction of its real images' diversity is collapsed.

NumPy only: no JAX, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# 1.4826 * MAD estimates the standard deviation of normally distributed values.
MAD_TO_SIGMA = 1.4826
# Rows of the Gram matrix computed at once: bounds memory at 8 * BLOCK * n bytes per class.
BLOCK = 1024


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


def _mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over the n(n-1)/2 distinct pairs of rows of float64 `x`.

    Uses |a - b|^2 = |a|^2 + |b|^2 - 2 a.b (one matrix product per block of rows, fast for
    2048-d features) on centred rows: distances do not change under a shift, and centring
    makes the norms as small as the spread itself, so the subtraction loses no more than
    float64 rounding of the distances even when the class is collapsed to near copies.
    The diagonal (a sample with itself) is excluded exactly.
    """
    x = x - x.mean(axis=0)
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    total = 0.0
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        np.maximum(d2, 0.0, out=d2)  # Rounding can leave tiny negatives.
        rows = np.arange(stop - start)
        d2[rows, start + rows] = 0.0
        total += float(np.sqrt(d2).sum())
    return total / (n * (n - 1))  # Every distinct pair was counted twice.


def class_diversity(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean pairwise Euclidean distance of the feature vectors within each class.

    Over distinct pairs, this is an unbiased estimate of E|f(x) - f(x')| for two
    independent samples of the class, whatever the number of samples, so generated and
    real sets of different sizes compare. Computed in float64; the value depends on the
    set of samples only, not on their order or on how they were batched.

    Args:
      features: (N, D) feature vectors (Inception pool3, the digits net, or D's features).
      labels: (N,) integer class of each row, in [0, num_classes).
      num_classes: length of the result (an unconditional G: 1, with all labels 0).

    Returns:
      float64 (num_classes,); NaN for a class with fewer than 2 samples.

    Raises:
      ValueError: mismatched shapes or a label outside [0, num_classes).
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, D) and labels (N,), got {features.shape} "
                         f"and {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"{labels.min()}..{labels.max()}; pass the dataset's class count.")
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        rows = features[labels == c]
        if len(rows) >= 2:
            out[c] = _mean_pairwise_distance(rows)
    return out


def collapse_check(generated_div: np.ndarray, real_div: np.ndarray,
                   threshold: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ratio of generated to real diversity, and the classes below `threshold`.

    A healthy run keeps every class at about the real images' diversity (the quick start's
    target is a ratio >= 0.85). What the ratio does, measured on scikit-learn's digits in
    the digits net's feature space: two random halves of the real images (about 90 per
    class) give ratios of 0.90 to 1.17 (20 splits, all classes); samples that are copies of
    k distinct real images of the class give about 1 - 1/k (k=1: 0.001, k=2: 0.52,
    k=3: 0.67, k=5: 0.81, means over the classes), since a pair of copies of one image is
    at distance 0. So the default 0.6 is far below sampling noise and names a class whose
    samples are near copies of one or two images, the original's per-class collapse
    (every `z` of a class gives the same image); it does not see a G that keeps a handful
    of distinct modes per class (FID does). It leaves a band [0.6, 0.85) of runs below
    target without being called collapsed. Calibrate it on real runs
    (monitor.collapse_threshold).

    Args:
      generated_div: (C,) `class_diversity` of generated samples.
      real_div: (C,) `class_diversity` of real images, same feature net.
      threshold: ratios below it are collapsed.

    Returns:
      (ratios float64 (C,), indices of the collapsed classes, ascending). A class with
      no usable ratio (NaN diversity, or real diversity 0) gets NaN and is not named.

    Raises:
      ValueError: the two arrays differ in shape.
    """
    generated_div = np.asarray(generated_div, np.float64)
    real_div = np.asarray(real_div, np.float64)
    if generated_div.shape != real_div.shape:
        raise ValueError(f"generated and real diversity must have one value per class, got "
                         f"shapes {generated_div.shape} and {real_div.shape}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(real_div > 0, generated_div / real_div, np.nan)
    collapsed = np.flatnonzero(ratios < threshold)  # NaN compares False: never named.
    return ratios, collapsed


def collapse_warning(ratios: np.ndarray, collapsed: np.ndarray, threshold: float) -> str | None:
    """The one log line naming the collapsed classes (None when there are none)."""
    if len(collapsed) == 0:
        return None
    named = ", ".join(f"{c} ({ratios[c]:.2f})" for c in collapsed)
    return (f"class-wise collapse: {len(collapsed)} of {len(ratios)} classes have less than "
            f"{threshold:g} of the real images' diversity (class (ratio)): {named}")
