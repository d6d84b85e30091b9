"""The class-wise collapse check: each class's diversity, generated over real.

On AnimeFace and Flowers the original SAGAN collapsed per class (clean images, but every
`z` of a class gave the same image; docs/original.md, "Findings"). The diversity of a
class is the mean pairwise distance of its samples' feature vectors (`class_diversity`);
a class whose generated diversity is a small fraction of its real images' is collapsed
(`ClassDiversity`). The evaluator measures it in the feature network's space, and
`d_diversity` in D's when there is no feature network.

NumPy only: no JAX, no TensorFlow.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Rows of the Gram matrix computed at once: bounds memory at 8 * BLOCK * n bytes per class.
BLOCK = 1024


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


def class_names(num_classes: int) -> list[str]:
    """Class indices zero-padded to one width, so that the names sort as the classes."""
    width = len(str(num_classes - 1))
    return [f"{c:0{width}d}" for c in range(num_classes)]


@dataclasses.dataclass(frozen=True, eq=False)
class ClassDiversity:
    """Per-class ratios of generated to real diversity, and the classes below a threshold.

    A healthy run keeps every class at about the real images' diversity (the quick start's
    target is a ratio >= 0.85). What the ratio does, measured on scikit-learn's digits in
    the digits net's feature space: two random halves of the real images (about 90 per
    class) give ratios of 0.90 to 1.17 (20 splits, all classes); samples that are copies of
    k distinct real images of the class give about 1 - 1/k (k=1: 0.001, k=2: 0.52,
    k=3: 0.67, k=5: 0.81, means over the classes), since a pair of copies of one image is
    at distance 0. So the config's threshold of 0.6 is far below sampling noise and names
    a class whose samples are near copies of one or two images, the original's per-class
    collapse (every `z` of a class gives the same image); it does not see a G that keeps a
    handful of distinct modes per class (FID does). It leaves a band [0.6, 0.85) of runs
    below target without being called collapsed. Calibrate it on real runs
    (monitor.collapse_threshold).

    Build it with `compare`. Unconditional models have one ratio, of all samples, named
    'all'; a conditional model's classes are named by their index, zero-padded to the
    width of the largest (so that the names sort as the classes).

    Attributes:
      ratios: float64 (C,), generated over real diversity per class; NaN where there is
        no usable ratio (NaN diversity, or real diversity 0).
      threshold: classes whose ratio is below it are collapsed.
      conditional: whether the ratios are per class (else C = 1, all samples).
    """

    ratios: np.ndarray
    threshold: float
    conditional: bool

    @classmethod
    def compare(cls, generated: np.ndarray, real: np.ndarray, threshold: float,
                conditional: bool) -> "ClassDiversity":
        """The ratios of two `class_diversity` results of the same feature net.

        Raises:
          ValueError: the two arrays differ in shape.
        """
        generated = np.asarray(generated, np.float64)
        real = np.asarray(real, np.float64)
        if generated.shape != real.shape:
            raise ValueError(f"generated and real diversity must have one value per class, "
                             f"got shapes {generated.shape} and {real.shape}.")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(real > 0, generated / real, np.nan)
        return cls(ratios, float(threshold), conditional)

    @property
    def classes(self) -> list[str]:
        """The name of each ratio: 'all', or the class index zero-padded."""
        return class_names(len(self.ratios)) if self.conditional else ["all"]

    @property
    def collapsed(self) -> np.ndarray:
        """Indices of the collapsed classes, ascending (a NaN ratio is never collapsed)."""
        return np.flatnonzero(self.ratios < self.threshold)

    @property
    def collapsed_classes(self) -> list[str]:
        """Names of the collapsed classes (see `classes`), ascending."""
        names = self.classes
        return [names[c] for c in self.collapsed]

    @property
    def minimum(self) -> float:
        """The smallest ratio, NaN ones ignored (NaN when all are)."""
        return float(np.fmin.reduce(self.ratios))

    def by_class(self) -> dict[str, float]:
        """{class name: ratio}, in class order."""
        return {name: float(r) for name, r in zip(self.classes, self.ratios)}

    def to_scalars(self) -> dict[str, float]:
        """'diversity_ratio/<class>' per class and their minimum 'diversity_ratio_min'."""
        per_class = {f"diversity_ratio/{name}": r for name, r in self.by_class().items()}
        return {**per_class, "diversity_ratio_min": self.minimum}

    def warning(self) -> str | None:
        """The one log line naming the collapsed classes (None when there are none)."""
        collapsed = self.collapsed
        if len(collapsed) == 0:
            return None
        names = self.classes
        named = ", ".join(f"{names[c]} ({self.ratios[c]:.2f})" for c in collapsed)
        return (f"class-wise collapse: {len(collapsed)} of {len(self.ratios)} classes have "
                f"less than {self.threshold:g} of the real images' diversity (class (ratio)): "
                f"{named}")
