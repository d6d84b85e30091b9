"""Intra-FID against scipy, and sample accuracy on cases worked out by hand.

Reference for intra-FID: per class, the mean and covariance written out with NumPy and
the Frechet distance with `scipy.linalg.sqrtm` (the pytorch-fid formula).
"""
import numpy as np
import pytest
from scipy import linalg

from sagan_jax.evaluation import conditional
from sagan_jax.evaluation.conditional import SampleAccuracy


def reference_fid(x, y):
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    cov_x = (x - mu_x).T @ (x - mu_x) / (len(x) - 1)
    cov_y = (y - mu_y).T @ (y - mu_y) / (len(y) - 1)
    covmean = linalg.sqrtm(cov_x @ cov_y).real
    return np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(covmean)


def class_features(rng, num_classes, sizes, dim=8):
    """Gaussian clusters per class (class-dependent centres and correlations), shuffled."""
    centres = rng.normal(0, 2, (num_classes, dim))
    mixing = rng.normal(0, 1, (num_classes, dim, dim)) / np.sqrt(dim)
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    noise = rng.normal(size=(len(labels), dim))
    features = centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels])
    return features.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(3))
def test_intra_fid_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    fake, fake_labels = class_features(rng, 4, [60, 200, 35, 120])
    real, real_labels = class_features(rng, 4, [150, 90, 300, 40])
    got = conditional.intra_fid(fake, fake_labels, real, real_labels, 4)
    x, y = fake.astype(np.float64), real.astype(np.float64)
    want = [reference_fid(x[fake_labels == c], y[real_labels == c]) for c in range(4)]
    assert min(want) > 1.0  # Different clusters per class: far from 0.
    np.testing.assert_allclose(got.values, want, rtol=1e-8)
    assert got.mean == pytest.approx(np.mean(want), rel=1e-8)


def test_intra_fid_from_cached_class_statistics_matches_scipy():
    rng = np.random.default_rng(6)
    fake, fake_labels = class_features(rng, 3, [40, 70, 55])
    real, real_labels = class_features(rng, 4, [80, 1, 60, 30])  # Class 1: 1 real row.
    mu, sigma = conditional.class_statistics(real, real_labels, 4)
    assert np.isnan(mu[1]).all() and np.isnan(sigma[1]).all()
    x, y = fake.astype(np.float64), real.astype(np.float64)
    np.testing.assert_allclose(mu[2], y[real_labels == 2].mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma[2], np.cov(y[real_labels == 2].T), rtol=1e-10)
    keep = [0, 2, 3]  # The classes with real statistics, as classes 0..2 of G.
    got = conditional.intra_fid_from_stats(fake, fake_labels, mu[keep], sigma[keep])
    want = [reference_fid(x[fake_labels == c], y[real_labels == k]) for c, k in enumerate(keep)]
    np.testing.assert_allclose(got.values, want, rtol=1e-8)
    with pytest.raises(ValueError, match="class 1 has 40 generated samples"):
        conditional.intra_fid_from_stats(fake, np.where(fake_labels == 0, 1, 0), mu[:2],
                                         sigma[:2])


def test_intra_fid_of_the_same_samples_is_zero():
    fake, labels = class_features(np.random.default_rng(3), 3, 50)
    got = conditional.intra_fid(fake, labels, fake[::-1], labels[::-1], 3)
    np.testing.assert_allclose(got.values, 0.0, atol=1e-9)


def test_intra_fid_sees_swapped_classes():
    # The same images with the classes' labels swapped: FID of all samples is unchanged,
    # intra-FID is not.
    real, labels = class_features(np.random.default_rng(4), 2, 100)
    swapped = conditional.intra_fid(real, 1 - labels, real, labels, 2)
    assert swapped.mean > 10.0


def test_intra_fid_scalars():
    fake, labels = class_features(np.random.default_rng(5), 11, 10, dim=3)
    got = conditional.intra_fid(fake, labels, fake, labels, 11)
    scalars = got.to_scalars()
    assert list(scalars)[:2] == ["intra_fid/00", "intra_fid/01"]
    assert list(scalars)[-2:] == ["intra_fid/10", "intra_fid"]
    assert got.by_class()["03"] == got.values[3]


@pytest.mark.parametrize("fake_shape, real_shape, fake_labels, real_labels, num_classes, match", [
    ((6, 3), (6, 4), [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], 2, "with one D"),
    ((6, 3), (6, 3), [0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1], 2, r"generated labels of shape \(6,\)"),
    ((6, 3), (6, 3), [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 2], 2,
     r"real labels must lie in \[0, 2\)"),
    ((6, 3), (6, 3), [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1], 2,
     "class 1 has 3 generated and 1 real; generate more samples"),
    ((6, 3), (6, 3), [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], 3, "class 2 has 0 generated"),
    ((6, 3), (6, 3), [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], 0, "conditional model"),
])
def test_intra_fid_errors(fake_shape, real_shape, fake_labels, real_labels, num_classes,
                          match):
    with pytest.raises(ValueError, match=match):
        conditional.intra_fid(np.zeros(fake_shape), np.array(fake_labels), np.zeros(real_shape),
                              np.array(real_labels), num_classes)


def test_intra_fid_rejects_float_labels():
    with pytest.raises(ValueError, match="integer dtype"):
        conditional.intra_fid(np.zeros((4, 2)), np.zeros(4), np.zeros((4, 2)),
                              np.zeros(4, int), 1)


# Six samples of 4 classes: argmax 0, 1, 0, 2, 0, 1 against labels 0, 1, 2, 2, 1, 1.
LOGITS = np.array([[2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0],
                   [0.0, 0.0, 5.0, 0.0], [0.2, 0.1, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
LABELS = np.array([0, 1, 2, 2, 1, 1])


def test_sample_accuracy_by_hand():
    got = SampleAccuracy.from_predictions(LOGITS, LABELS, 4)
    assert got.overall == 4 / 6
    np.testing.assert_array_equal(got.correct, [1, 2, 1, 0])
    np.testing.assert_array_equal(got.counts, [1, 3, 2, 0])
    np.testing.assert_array_equal(got.per_class, [1.0, 2 / 3, 0.5, np.nan])
    assert got.to_scalars() == pytest.approx(
        {"sample_accuracy/0": 1.0, "sample_accuracy/1": 2 / 3, "sample_accuracy/2": 0.5,
         "sample_accuracy/3": np.nan, "sample_accuracy": 4 / 6}, nan_ok=True)


def test_sample_accuracy_from_probabilities_and_ties():
    probabilities = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    got = SampleAccuracy.from_predictions(probabilities, LABELS, 4)
    np.testing.assert_array_equal(got.correct, [1, 2, 1, 0])
    # A tie goes to the first class; a classifier output beyond the classes is a miss.
    tied = SampleAccuracy.from_predictions([[1.0, 1.0, 0.0], [0.0, 0.0, 9.0]], [1, 0], 2)
    np.testing.assert_array_equal(tied.correct, [0, 0])


def test_sample_accuracy_names_classes_zero_padded():
    labels = np.arange(12)
    got = SampleAccuracy.from_predictions(np.eye(12), labels, 12)
    assert got.classes[:2] == ["00", "01"] and got.overall == 1.0
    assert got.by_class()["11"] == 1.0


@pytest.mark.parametrize("logits, labels, num_classes, match", [
    (np.zeros((3, 4)), [0, 1], 4, r"sample labels of shape \(3,\)"),
    (np.zeros((0, 4)), np.zeros(0, int), 4, "N >= 1"),
    (np.zeros(4), [0, 1, 2, 3], 4, r"logits \(N, K\)"),
    (np.zeros((2, 3)), [0, 1], 4, "classifier of the 4 conditioning classes, got 3 outputs"),
    (np.zeros((2, 4)), [0, 4], 4, r"labels must lie in \[0, 4\)"),
])
def test_sample_accuracy_errors(logits, labels, num_classes, match):
    with pytest.raises(ValueError, match=match):
        SampleAccuracy.from_predictions(logits, np.array(labels), num_classes)
