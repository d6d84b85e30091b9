"""Reference statistics of a dataset's real images, computed once and cached.

FID needs the mean and covariance of the real images' features, KID a sample of those
features. Both depend on the dataset, the resolution it is read at and the feature
network, so the cache file name says all of that; the folder is `eval.stats_dir`
(default `~/.cache/sagan_jax`). Delete a file to recompute it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from sagan_jax.evaluation import scores

DEFAULT_STATS_DIR = os.path.join("~", ".cache", "sagan_jax")
# KID draws its subsets from at most this many real features (a fixed random sample),
# which keeps the cache small (80 MB for Inception); the estimator stays unbiased.
KID_POOL_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of the real images.

    Attributes:
      mu: (D,) float64 mean.
      sigma: (D, D) float64 covariance (ddof=1).
      kid_features: (min(N, KID_POOL_SIZE), D) float32 real features for KID.
      num_examples: N, the number of real images.
    """

    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray
    num_examples: int

    @classmethod
    def from_features(cls, features: np.ndarray, seed: int = 0) -> "ReferenceStats":
        """Statistics of (N, D) real features."""
        mu, sigma = scores.gaussian_stats(features)
        n = len(features)
        pool = np.sort(np.random.RandomState(seed).permutation(n)[:KID_POOL_SIZE])
        return cls(mu, sigma, np.asarray(features[pool], np.float32), n)

    def save(self, path: str) -> None:
        """Write to `path` atomically (a partial file never looks like a cache hit)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, mu=self.mu, sigma=self.sigma, kid_features=self.kid_features,
                 num_examples=np.int64(self.num_examples))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "ReferenceStats":
        """Read a file written by `save`."""
        with np.load(path) as f:
            return cls(f["mu"], f["sigma"], f["kid_features"], int(f["num_examples"]))


def cache_path(stats_dir: str, feature_net: str, data_cfg) -> str:
    """Cache file for the real images that `data_cfg` describes, seen by `feature_net`.

    Args:
      stats_dir: folder ('' = `DEFAULT_STATS_DIR`).
      feature_net: 'inception' or 'digits'.
      data_cfg: the config's `data` section (name, image_size, channels, and where they
        apply path, variant, resize).
    """
    get = lambda k: data_cfg.get(k, "") or ""
    parts = [feature_net, get("name"), f"{get('image_size')}px", f"{get('channels')}ch"]
    parts += [str(get(k)) for k in ("variant", "resize") if get(k)]
    if get("path"):  # folder datasets: the folder is part of the identity
        parts.append(hashlib.sha256(os.path.abspath(get("path")).encode()).hexdigest()[:10])
    folder = os.path.expanduser(stats_dir or DEFAULT_STATS_DIR)
    return os.path.join(folder, "_".join(parts) + ".npz")
