"""IS / FID / KID against the reference formulas on identical features."""
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from sagan_jax.evaluation import scores


def _features(n, d, seed, shift=0.0):
    """Correlated, non-Gaussian, non-negative features (like pool3 after a ReLU)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.maximum(rng.normal(size=(n, d)) @ mix + shift + 0.3, 0.0).astype(np.float32)


def _rel(a, b):
    return abs(a - b) / abs(b)


def test_inception_score_matches_per_sample_kl():
    logits = np.random.default_rng(0).normal(0, 3, (1003, 1008)).astype(np.float32)
    got_mean, got_std = scores.inception_score(logits, splits=10)
    p = scipy.special.softmax(logits.astype(np.float64), axis=1)
    per_split = []
    for i in range(10):  # torch-fidelity's contiguous chunks [i * N // 10, (i + 1) * N // 10)
        chunk = range(i * 1003 // 10, (i + 1) * 1003 // 10)
        q = p[chunk].mean(axis=0)
        per_split.append(np.exp(np.mean([scipy.stats.entropy(p[i], q) for i in chunk])))
    # Measured: 1.6e-16 (mean) and 2.1e-15 (std) relative.
    assert _rel(got_mean, np.mean(per_split)) <= 1e-5
    assert _rel(got_std, np.std(per_split)) <= 1e-5


def test_inception_score_matches_torch_fidelity():
    torch = pytest.importorskip("torch")
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = np.random.default_rng(1).normal(0, 3, (500, 1008)).astype(np.float32)
    want = metric_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    got_mean, got_std = scores.inception_score(logits, splits=10)
    # Measured: 2.0e-16 (mean) and 1.3e-15 (std) relative.
    assert _rel(got_mean, want["inception_score_mean"]) <= 1e-5
    assert _rel(got_std, want["inception_score_std"]) <= 1e-5


def test_inception_score_extremes():
    one_hot = np.full((100, 10), -1e4, np.float32)
    one_hot[np.arange(100), np.arange(100) % 10] = 0.0
    assert scores.inception_score(one_hot, splits=1)[0] == pytest.approx(10.0, rel=1e-9)
    assert scores.inception_score(np.zeros((100, 10)), splits=1)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_samples"):
        scores.inception_score(np.zeros((5, 10)), splits=10)


def test_frechet_distance_matches_scipy_sqrtm():
    a, b = _features(2000, 128, 0), _features(1500, 128, 1, shift=0.1)
    mu1, s1 = scores.gaussian_stats(a)
    mu2, s2 = scores.gaussian_stats(b)
    np.testing.assert_allclose(s1, np.cov(a.astype(np.float64), rowvar=False), rtol=1e-12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    got = scores.frechet_distance(mu1, s1, mu2, s2)
    # Measured: 4.5e-15 relative (FID = 22.06).
    assert _rel(got, want) <= 1e-5
    again = scores.frechet_distance(mu1, s1, mu2, s2, scores.sqrt_psd(s2))
    assert again == got
    assert abs(scores.frechet_distance(mu2, s2, mu2, s2)) < 1e-9


def test_frechet_distance_rank_deficient_covariance():
    # Fewer samples than dimensions: scipy's sqrtm warns/returns complex round-off here,
    # the eigen route stays real and agrees.
    a, b = _features(40, 64, 2), _features(300, 64, 3)
    mu1, s1 = scores.gaussian_stats(a)
    mu2, s2 = scores.gaussian_stats(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    # Measured: 1.1e-9 relative (FID = 21.64).
    assert _rel(scores.frechet_distance(mu1, s1, mu2, s2), want) <= 1e-5


def _kid_reference(x, y, num_subsets, subset_size, seed):
    """Direct computation: three kernel matrices, explicit off-diagonal means."""
    rng = np.random.RandomState(seed)
    x, y = x.astype(np.float64), y.astype(np.float64)
    kernel = lambda u, v: (u @ v.T / u.shape[1] + 1.0) ** 3
    m, values = subset_size, []
    off = ~np.eye(m, dtype=bool)
    for _ in range(num_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        values.append(kernel(xs, xs)[off].mean() + kernel(ys, ys)[off].mean()
                      - 2 * kernel(xs, ys).mean())
    return np.mean(values), np.std(values)


def test_kid_matches_direct_computation():
    a, b = _features(700, 96, 4), _features(600, 96, 5, shift=0.05)
    got = scores.kernel_inception_distance(a, b, num_subsets=20, subset_size=200, seed=7)
    want = _kid_reference(a, b, 20, 200, 7)
    # Measured: 5.3e-15 (mean), 3.6e-14 (std) relative.
    assert _rel(got[0], want[0]) <= 1e-5 and _rel(got[1], want[1]) <= 1e-5


def test_kid_matches_torch_fidelity():
    torch = pytest.importorskip("torch")
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    a, b = _features(500, 64, 6), _features(400, 64, 7, shift=0.05)
    want = metric_kid.kid_features_to_metric(
        torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
        kid_subsets=10, kid_subset_size=100, rng_seed=2020, verbose=False)
    got = scores.kernel_inception_distance(a, b, num_subsets=10, subset_size=100, seed=2020)
    # Measured: 0 (mean), 2.1e-14 (std) relative.
    assert _rel(got[0], want["kernel_inception_distance_mean"]) <= 1e-5
    assert _rel(got[1], want["kernel_inception_distance_std"]) <= 1e-5
