"""Reference statistics of a dataset's real images, computed once and cached.

FID needs the mean and covariance of the real images' features, KID a sample of those
features (also the real set of precision, recall, density and coverage), the class-wise
collapse check (`diversity.py`) each class's diversity, and intra-FID each class's
mean and covariance. All depend on the dataset, the resolution it is read at and the feature
network, so the cache file name says all of that; the folder is `eval.stats_dir`
(default `~/.cache/sagan_jax`; a bucket, gs://..., for the hosts of a TPU slice).
Delete a file to recompute it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import numpy as np
from etils import epath

from absl import logging

from sagan_jax.evaluation import conditional, diversity, scores

DEFAULT_STATS_DIR = os.path.join("~", ".cache", "sagan_jax")
# KID draws its subsets from at most this many real features (a fixed random sample),
# which keeps the cache small (80 MB for Inception); the estimator stays unbiased.
KID_POOL_SIZE = 10_000
# Class diversity (a mean over pairs) is estimated from at most this many samples per
# class, real or generated: unbiased, and O(n^2) stays cheap for 2048-d features.
DIVERSITY_SAMPLES = 1000
# Per-class means and covariances (intra-FID) are kept only while C * D^2 float64 values
# stay under this size: 10 classes of 2048-d Inception features take 336 MB, ImageNet's
# 1000 classes would take 34 GB (intra-FID is then skipped, with a log line).
CLASS_STATS_MAX_BYTES = 1 << 30
# Part of the cache file's name: bump it when the file's contents change.
FORMAT = "v3"


def per_class_sample(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Indices of at most `DIVERSITY_SAMPLES` rows per class, a fixed random choice, sorted."""
    rng = np.random.RandomState(seed)
    keep = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) > DIVERSITY_SAMPLES:
            rows = np.sort(rng.choice(rows, DIVERSITY_SAMPLES, replace=False))
        keep.append(rows)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def class_diversity(features: np.ndarray, labels: np.ndarray, num_classes: int,
                    seed: int) -> np.ndarray:
    """`diversity.class_diversity` of (at most `DIVERSITY_SAMPLES` per class of) the rows.

    `num_classes` 0 (an unconditional model) measures all rows as one class.
    """
    if not num_classes:
        labels, num_classes = np.zeros(len(features), np.int64), 1
    keep = per_class_sample(np.asarray(labels), num_classes, seed)
    return diversity.class_diversity(np.asarray(features)[keep], np.asarray(labels)[keep],
                                     num_classes)


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of the real images.

    Attributes:
      mu: (D,) float64 mean.
      sigma: (D, D) float64 covariance (ddof=1).
      kid_features: (min(N, KID_POOL_SIZE), D) float32 real features for KID.
      num_examples: N, the number of real images.
      diversity: float64 mean pairwise feature distance of all the real images.
      class_diversity: float64 (C,) the same within each of the C classes of the labels.
      class_mu: float64 (C, D) each class's mean, or (0, D) when C * D^2 float64 values
        exceed `CLASS_STATS_MAX_BYTES` (no intra-FID).
      class_sigma: float64 (C, D, D) each class's covariance, or (0, D, D) likewise.
    """

    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray
    num_examples: int
    diversity: float
    class_diversity: np.ndarray
    class_mu: np.ndarray
    class_sigma: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, labels: np.ndarray,
                      seed: int) -> "ReferenceStats":
        """Statistics of (N, D) real features and their (N,) int labels (all 0 when
        unlabelled); `seed` picks the KID pool and the diversity samples."""
        mu, sigma = scores.gaussian_stats(features)
        n = len(features)
        pool = np.sort(np.random.RandomState(seed).permutation(n)[:KID_POOL_SIZE])
        labels = np.asarray(labels)
        num_classes = int(labels.max()) + 1
        dim = features.shape[1]
        if num_classes * dim * dim * 8 <= CLASS_STATS_MAX_BYTES:
            class_mu, class_sigma = conditional.class_statistics(features, labels, num_classes)
        else:
            logging.info("Per-class statistics of %d classes of %d-d features would exceed "
                         "%d MiB; intra-FID is skipped.", num_classes, dim,
                         CLASS_STATS_MAX_BYTES >> 20)
            class_mu, class_sigma = np.zeros((0, dim)), np.zeros((0, dim, dim))
        return cls(mu, sigma, np.asarray(features[pool], np.float32), n,
                   float(class_diversity(features, labels, 0, seed)[0]),
                   class_diversity(features, labels, num_classes, seed), class_mu, class_sigma)

    def save(self, path: epath.PathLike) -> None:
        """Write to `path` atomically (a partial file never looks like a cache hit)."""
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mu, sigma=self.sigma, kid_features=self.kid_features,
                 num_examples=np.int64(self.num_examples), diversity=np.float64(self.diversity),
                 class_diversity=self.class_diversity, class_mu=self.class_mu,
                 class_sigma=self.class_sigma)
        tmp = path.parent / f"{path.name}.{os.getpid()}.tmp.npz"
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)

    @classmethod
    def load(cls, path: epath.PathLike) -> "ReferenceStats":
        """Read a file written by `save`."""
        with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
            return cls(f["mu"], f["sigma"], f["kid_features"], int(f["num_examples"]),
                       float(f["diversity"]), f["class_diversity"], f["class_mu"],
                       f["class_sigma"])


def cache_path(stats_dir: str, feature_net: str, data_cfg) -> epath.Path:
    """Cache file for the real images that `data_cfg` describes, seen by `feature_net`.

    Args:
      stats_dir: folder ('' = `DEFAULT_STATS_DIR`), local or gs://.
      feature_net: 'inception' or 'digits'.
      data_cfg: the config's `data` section (name, image_size, channels, variant, resize,
        center_crop, and for folder datasets path).
    """
    parts = [FORMAT, feature_net, data_cfg.name, f"{data_cfg.image_size}px", f"{data_cfg.channels}ch",
             data_cfg.variant, data_cfg.resize]
    if not data_cfg.center_crop:
        parts.append("stretched")
    if data_cfg.path:  # folder datasets: the folder is part of the identity
        parts.append(hashlib.sha256(os.path.abspath(data_cfg.path).encode()).hexdigest()[:10])
    return epath.Path(stats_dir or DEFAULT_STATS_DIR).expanduser() / ("_".join(parts) + ".npz")
