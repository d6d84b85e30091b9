"""The class-wise collapse check, on cases with known answers.

Reference: scipy's pdist for the diversity; ratios, names and the warning worked out by
hand.
"""
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from sagan_jax.evaluation import conditional, diversity
from sagan_jax.evaluation.diversity import ClassDiversity

SEEDS = range(5)

def reference_diversity(features, labels, num_classes):
    return np.array([pdist(features[labels == c].astype(np.float64)).mean()
                     if (labels == c).sum() >= 2 else np.nan for c in range(num_classes)])


def class_features(rng, num_classes, per_class, dim=64):
    """Gaussian clusters with class-dependent centres and spreads, labels shuffled."""
    centres = rng.normal(0, 3, (num_classes, dim))
    scales = rng.uniform(0.5, 2.0, num_classes)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    features = centres[labels] + scales[labels, None] * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels


@pytest.mark.parametrize("seed", SEEDS)
def test_diversity_matches_pdist(seed):
    rng = np.random.default_rng(seed)
    features, labels = class_features(rng, 5, 300)
    features += 100.0  # Far from the origin: the Gram identity must not lose digits.
    got = diversity.class_diversity(features, labels, 6)
    want = reference_diversity(features, labels, 6)
    np.testing.assert_allclose(got[:5], want[:5], rtol=1e-12)
    assert np.isnan(got[5]) and np.isnan(want[5])


def test_diversity_spans_several_blocks(monkeypatch):
    monkeypatch.setattr(diversity, "BLOCK", 7)
    rng = np.random.default_rng(0)
    features, labels = class_features(rng, 3, 40)
    np.testing.assert_allclose(diversity.class_diversity(features, labels, 3),
                               reference_diversity(features, labels, 3), rtol=1e-12)


def test_diversity_of_near_copies_keeps_its_digits():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 10, 2048)
    copies = base + 1e-6 * rng.normal(size=(50, 2048))
    got = diversity.class_diversity(copies, np.zeros(50, int), 1)
    np.testing.assert_allclose(got, reference_diversity(copies, np.zeros(50, int), 1),
                               rtol=1e-9)


def test_diversity_invariant_to_order_and_batching():
    rng = np.random.default_rng(3)
    features, labels = class_features(rng, 4, 200)
    want = diversity.class_diversity(features, labels, 4)
    perm = rng.permutation(len(labels))
    np.testing.assert_allclose(diversity.class_diversity(features[perm], labels[perm], 4),
                               want, rtol=1e-13)
    for batch in (1, 7, 64, 500):  # Features gathered batch by batch, as the evaluator does.
        chunks = [(features[i:i + batch], labels[i:i + batch])
                  for i in range(0, len(labels), batch)]
        gathered = np.concatenate([f for f, _ in chunks]), np.concatenate([l for _, l in chunks])
        np.testing.assert_array_equal(diversity.class_diversity(*gathered, 4), want)


@pytest.mark.parametrize("seed", SEEDS)
def test_collapse_names_exactly_the_classes_that_ignore_z(seed):
    rng = np.random.default_rng(seed)
    num_classes = 8
    real, real_labels = class_features(rng, num_classes, 200)
    collapsed = np.sort(rng.choice(num_classes, 3, replace=False))
    # The "generator": samples of the same distribution, except that in the collapsed
    # classes it ignores z and emits one image (tiny noise from the feature net's numerics).
    fake, fake_labels = class_features(np.random.default_rng(seed), num_classes, 150)
    fake = fake + rng.normal(0, 1e-3, fake.shape)  # A different draw than `real`.
    for c in collapsed:
        rows = fake_labels == c
        fake[rows] = fake[rows][0] + rng.normal(0, 1e-3, (rows.sum(), fake.shape[1]))
    check = ClassDiversity.compare(diversity.class_diversity(fake, fake_labels, num_classes),
                                   diversity.class_diversity(real, real_labels, num_classes),
                                   0.6, conditional=True)
    np.testing.assert_array_equal(check.collapsed, collapsed)
    assert check.collapsed_classes == [str(c) for c in collapsed]
    assert np.all(check.ratios[collapsed] < 0.01)


@pytest.mark.parametrize("seed", SEEDS)
def test_two_real_draws_raise_nothing(seed):
    rng = np.random.default_rng(seed)
    features, labels = class_features(rng, 10, 200)
    half = np.arange(len(labels)) % 2 == 0  # Two disjoint draws of the same distribution.
    check = ClassDiversity.compare(diversity.class_diversity(features[half], labels[half], 10),
                                   diversity.class_diversity(features[~half], labels[~half], 10),
                                   0.6, conditional=True)
    assert check.collapsed.size == 0 and check.warning() is None
    np.testing.assert_allclose(check.ratios, 1.0, atol=0.05)


def test_collapse_check_skips_unusable_classes():
    check = ClassDiversity.compare(np.array([0.1, np.nan, 0.5, 1.0]),
                                   np.array([1.0, 1.0, 0.0, 1.0]), 0.6, conditional=True)
    np.testing.assert_array_equal(check.ratios, [0.1, np.nan, np.nan, 1.0])
    np.testing.assert_array_equal(check.collapsed, [0])
    assert check.minimum == 0.1
    with pytest.raises(ValueError, match="one value per class"):
        ClassDiversity.compare(np.ones(3), np.ones(4), 0.6, conditional=True)
    unusable = ClassDiversity.compare(np.array([np.nan]), np.array([1.0]), 0.6, conditional=False)
    assert np.isnan(unusable.minimum) and unusable.warning() is None


def test_bad_labels_raise():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        diversity.class_diversity(np.zeros((4, 2)), np.array([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="expected features"):
        diversity.class_diversity(np.zeros((4, 2)), np.zeros(3, int), 3)


def test_diversity_of_three_points_on_a_line():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # Pair distances 5, 5 and 10.
    assert diversity.class_diversity(x, np.zeros(3, int), 1)[0] == pytest.approx(20 / 3, rel=1e-15)


def test_collapse_warning_names_the_classes():
    check = ClassDiversity.compare(np.array([1.8, 0.24, 2.0, 1.0]), np.full(4, 2.0), 0.6,
                                   conditional=True)
    assert check.warning() == (
        "class-wise collapse: 2 of 4 classes have less than 0.6 of the real images' "
        "diversity (class (ratio)): 1 (0.12), 3 (0.50)")
    assert ClassDiversity(check.ratios, 0.1, conditional=True).warning() is None


def test_scalars_keep_the_tensorboard_tags():
    """Eleven classes: names zero-padded to two digits; an unconditional G: 'all'."""
    generated = np.array([1.0, 2.0, 3.0, 0.5, np.nan, 4.0, 4.0, 4.0, 4.0, 4.0, 0.2])
    check = ClassDiversity.compare(generated, np.array([2.0] * 10 + [0.4]), 0.6,
                                   conditional=True)
    want = {"00": 0.5, "01": 1.0, "02": 1.5, "03": 0.25, "04": np.nan, "05": 2.0, "06": 2.0,
            "07": 2.0, "08": 2.0, "09": 2.0, "10": 0.5}
    np.testing.assert_equal(check.by_class(), want)
    np.testing.assert_equal(check.to_scalars(), {
        **{f"diversity_ratio/{c}": r for c, r in want.items()}, "diversity_ratio_min": 0.25})
    assert list(check.to_scalars()) == [f"diversity_ratio/{c}" for c in want] + [
        "diversity_ratio_min"]
    assert check.collapsed_classes == ["00", "03", "10"] and check.threshold == 0.6
    assert check.warning().endswith("3 of 11 classes have less than 0.6 of the real images' "
                                    "diversity (class (ratio)): 00 (0.50), 03 (0.25), 10 (0.50)")
    single = ClassDiversity.compare(np.array([0.9]), np.array([3.0]), 0.5, conditional=False)
    assert single.to_scalars() == {"diversity_ratio/all": 0.3, "diversity_ratio_min": 0.3}
    assert single.collapsed_classes == ["all"]
    assert single.warning() == ("class-wise collapse: 1 of 1 classes have less than 0.5 of the "
                                "real images' diversity (class (ratio)): all (0.30)")




def test_class_names_are_padded_to_the_widest_index_and_shared():
    assert diversity.class_names(1) == ["0"] and diversity.class_names(10)[-1] == "9"
    assert diversity.class_names(11)[:2] == ["00", "01"] and diversity.class_names(1000)[7] == "007"
    names = diversity.class_names(12)
    assert sorted(names) == names
    # The collapse check and the conditional scores name classes alike.
    assert ClassDiversity.compare(np.ones(12), np.ones(12), 0.5, True).classes == names
    assert conditional.IntraFID(np.zeros(12)).classes == names
