"""Scores of a class-conditional generator, class by class: intra-FID and sample accuracy.

* Intra-FID (Miyato & Koyama 2018, the projection discriminator's measure): the FID of
  each class's generated features against the same class's real features, and the mean
  over classes. The FID of all samples together does not see a G that draws good images
  of the wrong class; intra-FID does. The statistics and the distance are `scores.py`'s
  (float64, `gaussian_stats` and `frechet_distance`). A class's FID needs at least 2
  samples on each side and is biased upwards when a class has few samples compared with
  the feature dimension (2,048 for Inception), so compare intra-FIDs at equal sample
  counts only.
* Sample accuracy: the share of samples that a classifier (the digits net) labels as
  their conditioning class, overall and per class. The label is the argmax of the
  classifier's logits or probabilities (the first class on a tie, as `np.argmax`).

Classes are named by their index, zero-padded to the width of the largest, as in
`diversity.class_names`. NumPy only: no JAX, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from sagan_jax.evaluation import scores
from sagan_jax.evaluation.diversity import class_names


def _check_labels(what: str, rows: int, labels: np.ndarray, num_classes: int) -> None:
    """Raise a one-line ValueError unless `labels` is (rows,) ints in [0, num_classes)."""
    if labels.shape != (rows,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected {what} labels of shape ({rows},) and integer dtype, got "
                         f"{labels.shape} {labels.dtype}.")
    if rows and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} labels must lie in [0, {num_classes}), got "
                         f"{labels.min()}..{labels.max()}; pass the dataset's class count.")


class _PerClassScore:
    """A score with a value per class and one over all: its names and scalars.

    Subclasses set `NAME` and give `_values()` (one per class) and `_overall()`.
    """

    NAME: ClassVar[str]

    def _values(self) -> np.ndarray:
        raise NotImplementedError

    def _overall(self) -> float:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        """The name of each class: its index, zero-padded."""
        return class_names(len(self._values()))

    def by_class(self) -> dict[str, float]:
        """{class name: value}, in class order."""
        return {name: float(v) for name, v in zip(self.classes, self._values())}

    def to_scalars(self) -> dict[str, float]:
        """'<NAME>/<class>' per class and 'NAME' over all."""
        per_class = {f"{self.NAME}/{name}": v for name, v in self.by_class().items()}
        return {**per_class, self.NAME: self._overall()}


@dataclasses.dataclass(frozen=True, eq=False)
class IntraFID(_PerClassScore):
    """The FID of each class's generated samples against the class's real images.

    Build it with `intra_fid`.

    Attributes:
      values: float64 (C,), the FID of each class.
    """

    NAME = "intra_fid"

    values: np.ndarray

    @property
    def mean(self) -> float:
        """Intra-FID: the mean of the classes' FIDs."""
        return float(np.mean(self.values))

    def _values(self) -> np.ndarray:
        return self.values

    def _overall(self) -> float:
        return self.mean


def intra_fid(features: np.ndarray, labels: np.ndarray, real_features: np.ndarray,
              real_labels: np.ndarray, num_classes: int) -> IntraFID:
    """The FID of every class, generated against real.

    Args:
      features, labels: (N, D) generated features and (N,) their conditioning classes.
      real_features, real_labels: (M, D) real features and (M,) their classes.
      num_classes: the number of classes C; every class needs 2 samples on each side.

    Returns:
      `IntraFID` with the C per-class values.

    Raises:
      ValueError: mismatched shapes, labels outside [0, num_classes), or a class with
        fewer than 2 generated or real samples.
    """
    features = np.asarray(features)
    real_features = np.asarray(real_features)
    labels, real_labels = np.asarray(labels), np.asarray(real_labels)
    if (features.ndim != 2 or real_features.ndim != 2
            or features.shape[1] != real_features.shape[1]):
        raise ValueError(f"expected generated and real features (N, D) with one D, got "
                         f"shapes {features.shape} and {real_features.shape}.")
    if num_classes < 1:
        raise ValueError(f"intra-FID needs a conditional model, got num_classes={num_classes}.")
    _check_labels("generated", len(features), labels, num_classes)
    _check_labels("real", len(real_features), real_labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    real_counts = np.bincount(real_labels, minlength=num_classes)
    for c in range(num_classes):
        if counts[c] < 2 or real_counts[c] < 2:
            raise ValueError(f"intra-FID needs at least 2 generated and 2 real samples of "
                             f"each class; class {c} has {counts[c]} generated and "
                             f"{real_counts[c]} real; generate more samples.")
    real_mu, real_sigma = class_statistics(real_features, real_labels, num_classes)
    return intra_fid_from_stats(features, labels, real_mu, real_sigma)


def class_statistics(features: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's feature mean (C, D) and covariance (C, D, D), float64, ddof=1, as
    `scores.gaussian_stats` (NaN for a class with fewer than 2 rows)."""
    features, labels = np.asarray(features), np.asarray(labels)
    dim = features.shape[1]
    mu, sigma = np.full((num_classes, dim), np.nan), np.full((num_classes, dim, dim), np.nan)
    for c in range(num_classes):
        rows = features[labels == c]
        if len(rows) >= 2:
            mu[c], sigma[c] = scores.gaussian_stats(rows)
    return mu, sigma


def intra_fid_from_stats(features: np.ndarray, labels: np.ndarray, real_mu: np.ndarray,
                         real_sigma: np.ndarray) -> IntraFID:
    """`intra_fid` against real per-class statistics (`class_statistics`, e.g. cached).

    Args:
      features, labels: (N, D) generated features and (N,) their classes in [0, C).
      real_mu, real_sigma: (C, D) and (C, D, D) the real classes' means and covariances.

    Raises:
      ValueError: labels outside [0, C), or a class with fewer than 2 generated samples
        or without real statistics.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    num_classes = len(real_mu)
    _check_labels("generated", len(features), labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    values = np.empty(num_classes)
    for c in range(num_classes):
        if counts[c] < 2 or not np.isfinite(real_mu[c]).all():
            raise ValueError(f"intra-FID needs at least 2 generated samples and the real "
                             f"statistics of each class; class {c} has {counts[c]} generated "
                             f"samples; generate more samples.")
        mu, sigma = scores.gaussian_stats(features[labels == c])
        values[c] = scores.frechet_distance(mu, sigma, real_mu[c], real_sigma[c])
    return IntraFID(values)


@dataclasses.dataclass(frozen=True, eq=False)
class SampleAccuracy(_PerClassScore):
    """How many samples of each class a classifier labels as their conditioning class.

    Build it with `from_predictions`.

    Attributes:
      correct: int64 (C,), samples of each class labelled as that class.
      counts: int64 (C,), samples of each class.
    """

    NAME = "sample_accuracy"

    correct: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_predictions(cls, logits: np.ndarray, labels: np.ndarray,
                         num_classes: int) -> "SampleAccuracy":
        """Count the samples whose argmax of `logits` equals their label.

        Args:
          logits: (N, K) classifier logits or probabilities, K >= num_classes.
          labels: (N,) int conditioning class of each sample, in [0, num_classes).
          num_classes: the number of conditioning classes C.

        Raises:
          ValueError: mismatched shapes, no samples, a classifier with fewer outputs than
            classes, or labels outside [0, num_classes).
        """
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.ndim != 2 or len(logits) == 0:
            raise ValueError(f"expected classifier logits (N, K) with N >= 1, got shape "
                             f"{logits.shape}.")
        if logits.shape[1] < num_classes or num_classes < 1:
            raise ValueError(f"sample accuracy needs a classifier of the {num_classes} "
                             f"conditioning classes, got {logits.shape[1]} outputs.")
        _check_labels("sample", len(logits), labels, num_classes)
        hits = np.argmax(logits, axis=1) == labels
        return cls(np.bincount(labels[hits], minlength=num_classes),
                   np.bincount(labels, minlength=num_classes))

    @property
    def overall(self) -> float:
        """The share of all samples labelled as their class."""
        return float(self.correct.sum() / self.counts.sum())

    @property
    def per_class(self) -> np.ndarray:
        """float64 (C,), the share within each class; NaN for a class without samples."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.counts > 0, self.correct / self.counts, np.nan)

    def _values(self) -> np.ndarray:
        return self.per_class

    def _overall(self) -> float:
        return self.overall
