"""Improved precision and recall, density and coverage: fidelity and diversity apart.

FID folds two failures into one number: samples unlike any real image (fidelity) and real
images that no sample resembles (diversity). These four scores keep them apart. Each point
of a set has a ball, centred on it, whose radius is the distance to its k-th nearest
other point of the same set (k = 3, as in Kynkaanniemi et al.):

* precision (Kynkaanniemi et al. 2019): the share of generated samples inside the ball of
  at least one real sample;
* recall (same paper): the share of real samples inside the ball of at least one
  generated sample;
* density (Naeem et al. 2020): the number of real balls that contain a generated sample,
  averaged over the generated samples and divided by k (about 1 when the two sets come
  from one distribution; above 1 for samples crowded where the real images are dense);
* coverage (same paper): the share of real samples whose ball contains at least one
  generated sample.

"Inside" is strict (distance < radius) and a point's radius counts duplicates of it as
neighbours, as in the `prdc` package (Naeem et al.'s code), which the tests compare with.
torch-fidelity and NVlabs' code test distance <= radius; the two differ only where a
distance equals a radius exactly (duplicated or lattice-valued features).

The distances are computed in JAX (float32, `Precision.HIGHEST`) as
|a|^2 + |b|^2 - 2 a.b, for one block of `BLOCK` rows of both sets stacked against all of
them at a time, so a distance matrix is never held whole (100,000 x 100,000 would be
40 GB); from each row of distances come its own radius and its comparisons with the other
set's points, so an exact tie (a memorised copy of a real image) is decided on numbers
from one product, whatever the shapes. Per block only what the scores need is kept. The
features are first centred (`_centre`), which keeps the identity's cancellation to
float32 rounding of the distances themselves. Against prdc, which uses float64
distances, on 10,000 real and 10,000 generated Inception-like 2048-d features
(non-negative and correlated: ReLU of mixed Gaussians): precision, recall and coverage
are equal, and density differs in one of its 31,347 ball memberships (1.0449 against
1.04487), a distance within float32 rounding of a radius. Cost (benchmarks/metrics_benchmark.py, 2-core CPU):
50,000 x 50,000 in 2048-d take 248 s and 2.9 GiB of host memory beyond the inputs.
No TensorFlow.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Neighbours that define a point's ball (Kynkaanniemi et al. 2019; Naeem et al. use 5).
NEAREST_K = 3
# Rows compared at once with both sets: memory is about 4 * BLOCK * N bytes per
# (BLOCK, N) distance block, N real and generated samples together (200 MB at 100,000).
BLOCK = 512
# Rows of the real features whose spread sets the grid of the centre (`_centre`).
_SPREAD_ROWS = 1000


@dataclasses.dataclass(frozen=True)
class ManifoldMetrics:
    """Improved precision and recall, density and coverage of generated features.

    Attributes:
      precision: share of generated samples inside some real sample's k-NN ball.
      recall: share of real samples inside some generated sample's k-NN ball.
      density: real balls containing a generated sample, per generated sample, over k.
      coverage: share of real samples whose ball contains a generated sample.
      k: the neighbour that sets each ball's radius.
      num_real, num_fake: the number of real and generated samples.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    num_real: int
    num_fake: int

    def to_scalars(self) -> dict[str, float]:
        """'precision', 'recall', 'density' and 'coverage'."""
        return {"precision": self.precision, "recall": self.recall,
                "density": self.density, "coverage": self.coverage}


def _centre(real: np.ndarray) -> np.ndarray:
    """The vector subtracted from all features: their mean, rounded to a coarse grid.

    Distances do not change under a shift, and centring makes the norms in
    |a|^2 + |b|^2 - 2 a.b as small as the spread itself. The mean is rounded per dimension
    to a power of two below 1/64 of that dimension's spread (estimated on the first
    `_SPREAD_ROWS` rows), which costs nothing in accuracy but keeps features on a coarse
    lattice (small integers) exact in float32, so their exactly tied distances stay tied
    as in float64. A dimension constant on those rows is shifted by its first value.
    """
    spread = real[:_SPREAD_ROWS].std(axis=0, dtype=np.float64)
    mean = real.mean(axis=0, dtype=np.float64)
    positive = spread > 0
    step = np.exp2(np.floor(np.log2(np.where(positive, spread, 1.0))) - 6)
    return np.where(positive, np.round(mean / step) * step, real[0])


def _sq_distances(a, a_sq, b, b_sq):
    """(len(a), len(b)) squared distances from rows and squared norms (negatives -> 0)."""
    ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * ab, 0.0)


def _kth_smallest(d, k: int):
    """The k-th smallest value of each row, equal values counted one by one (as a sort).

    k passes of min, count and mask: for k = 3 about 28x faster on XLA:CPU than
    `lax.top_k` (measured on a (1024, 50000) block, 2-core CPU: 0.30 s vs 8.5 s).
    """
    kth = jnp.full(d.shape[:1], jnp.inf, d.dtype)
    remaining = jnp.full(d.shape[:1], k)  # Values still to pass before the k-th.
    for _ in range(k):
        low = d.min(axis=1)
        equal = d == low[:, None]
        count = equal.sum(axis=1)
        kth = jnp.where((remaining > 0) & (count >= remaining), low, kth)
        remaining = remaining - count
        d = jnp.where(equal, jnp.inf, d)
    return kth


def _row_blocks(x, x_sq, block: int):
    """(rows, squared norms, row indices) of `x`, padded and split into blocks."""
    n = x.shape[0]
    num_blocks = -(-n // block)
    pad = num_blocks * block - n
    split = lambda v: jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)).reshape(
        (num_blocks, block) + v.shape[1:])
    return split(x), split(x_sq), jnp.arange(num_blocks * block).reshape(num_blocks, block)


@functools.partial(jax.jit, static_argnames=("num_real", "k", "block"))
def _counts(points, num_real: int, k: int, block: int):
    """(real balls containing each generated sample, recalled reals, covered reals).

    `points` holds the real rows, then the generated rows. Each block of rows meets all
    of `points` in one product, and each row's radius and the comparisons with it come
    from that one row of distances: a distance that equals a radius exactly (a generated
    copy of a real image and that image's k-th neighbour) is then computed by the same
    arithmetic on both sides and stays equal, whatever the set sizes or the block.
    """
    n = points.shape[0]
    points_sq = jnp.sum(points * points, axis=1)
    columns = jnp.arange(n)
    real_column = columns < num_real

    def one_block(carry, blocks):
        in_balls, recalled = carry
        rows, rows_sq, index = blocks
        real_row = index < num_real
        same_set = real_row[:, None] == real_column[None, :]
        d2 = _sq_distances(rows, rows_sq, points, points_sq)
        own = jnp.where(same_set & (index[:, None] != columns[None, :]), d2, jnp.inf)
        radii = _kth_smallest(own, k)
        # A row's ball over the other set; padded rows (index >= n) have no ball.
        inside = (d2 < radii[:, None]) & ~same_set & (index < n)[:, None]
        in_balls = in_balls + jnp.sum(inside & real_row[:, None], axis=0, dtype=jnp.int32)
        recalled = recalled | jnp.any(inside & ~real_row[:, None], axis=0)
        return (in_balls, recalled), jnp.any(inside, axis=1) & real_row

    (in_balls, recalled), covered = jax.lax.scan(
        one_block, (jnp.zeros(n, jnp.int32), jnp.zeros(n, bool)),
        _row_blocks(points, points_sq, block))
    return in_balls[num_real:], recalled.sum(), covered.sum()


def manifold_metrics(real_features: np.ndarray, fake_features: np.ndarray,
                     k: int = NEAREST_K) -> ManifoldMetrics:
    """Improved precision and recall, density and coverage of generated features.

    Args:
      real_features: (N_real, D) features of real images.
      fake_features: (N_fake, D) features of generated images, from the same network.
      k: the neighbour whose distance is a point's ball radius.

    Returns:
      `ManifoldMetrics`; the values depend on the sets only, not on the rows' order.

    Raises:
      ValueError: shapes that do not match, fewer than k + 1 samples on a side, or
        non-finite features.
    """
    real = np.asarray(real_features)
    fake = np.asarray(fake_features)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected real and generated features (N, D) with one D, got "
                         f"shapes {real.shape} and {fake.shape}.")
    if k < 1 or min(len(real), len(fake)) <= k:
        raise ValueError(f"precision and recall with k={k} need at least {k + 1} real and "
                         f"{k + 1} generated samples, got {len(real)} and {len(fake)}.")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise ValueError("the features contain NaN or infinity; check the feature network.")
    dtype = np.result_type(real.dtype, np.float32)  # float64 input is centred in float64.
    centre = _centre(real).astype(dtype)
    points = np.concatenate([real - centre, fake - centre]).astype(np.float32, copy=False)
    in_balls, recalled, covered = _counts(
        jnp.asarray(points), num_real=len(real), k=k, block=BLOCK)
    in_balls = np.asarray(in_balls, np.int64)
    return ManifoldMetrics(
        precision=float(np.mean(in_balls > 0)), recall=int(recalled) / len(real),
        density=float(in_balls.sum()) / (k * len(fake)), coverage=int(covered) / len(real),
        k=k, num_real=len(real), num_fake=len(fake))
