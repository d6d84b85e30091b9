"""Precision, recall, density and coverage against the `prdc` package on identical inputs.

References: `prdc.compute_prdc` (Naeem et al.'s code; float64 distances from scikit-learn)
for all four scores, and torch-fidelity's precision and recall fed the same features
(`metric_prc.prc_features_to_metric`), which count distance <= radius where prdc and we
count distance < radius.
"""
import sys

import numpy as np
import prdc
import pytest

from sagan_jax.evaluation import manifold

SCORES = ("precision", "recall", "density", "coverage")


def reference(real, fake, k=3):
    return {name: float(v) for name, v in prdc.compute_prdc(real, fake, k).items()}


def assert_matches_prdc(real, fake, k=3):
    got = manifold.manifold_metrics(real, fake, k)
    want = reference(real, fake, k)
    for name in SCORES:  # Counts over sets: equal, up to the last bit of the divisions.
        np.testing.assert_allclose(getattr(got, name), want[name], rtol=1e-12, err_msg=name)
    assert (got.k, got.num_real, got.num_fake) == (k, len(real), len(fake))
    return got


def shifted_sets(rng, num_real, num_fake, dim, offset=0.0, shift=0.1, scale=1.1):
    """Real ~ N(0, I), generated ~ N(shift, scale^2 I), both moved by `offset`."""
    real = rng.normal(size=(num_real, dim)) + offset
    fake = scale * rng.normal(size=(num_fake, dim)) + shift + offset
    return real.astype(np.float32), fake.astype(np.float32)


@pytest.mark.parametrize("seed, num_real, num_fake, dim, shift, scale", [
    (0, 200, 150, 16, 0.1, 1.1), (1, 97, 203, 64, 0.1, 1.1), (2, 300, 300, 2048, 0.0, 1.0),
    (3, 64, 64, 8, 0.1, 1.1)])
def test_matches_prdc(seed, num_real, num_fake, dim, shift, scale):
    rng = np.random.default_rng(seed)
    real, fake = shifted_sets(rng, num_real, num_fake, dim, shift=shift, scale=scale)
    got = assert_matches_prdc(real, fake)
    assert 0.05 < min(got.precision, got.recall, got.coverage)  # Not a trivial case.
    assert max(got.precision, got.recall, got.coverage) < 0.99


@pytest.mark.parametrize("block", [1, 7, 50, 64, 65])
def test_blocks_do_not_change_the_scores(monkeypatch, block):
    monkeypatch.setattr(manifold, "BLOCK", block)  # 64 = a whole set, 65 > both sets.
    real, fake = shifted_sets(np.random.default_rng(4), 64, 50, 12)
    assert_matches_prdc(real, fake)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_other_k(k):
    real, fake = shifted_sets(np.random.default_rng(5), 120, 90, 10)
    assert_matches_prdc(real, fake, k)


def test_kth_smallest_counts_equal_values_one_by_one():
    d = np.random.default_rng(12).integers(0, 4, (50, 9)).astype(np.float32)  # Many ties.
    for k in (1, 2, 3, 5):
        np.testing.assert_array_equal(manifold._kth_smallest(d, k), np.sort(d)[:, k - 1])


@pytest.mark.parametrize("seed", range(3))
def test_exact_ties_on_a_lattice(monkeypatch, seed):
    # Features in {0, 1, 2}^6: many distances equal a radius exactly, and many points are
    # duplicates (radius 0 where more than k copies), so < and <= differ.
    monkeypatch.setattr(manifold, "BLOCK", 16)
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 3, (150, 6)).astype(np.float32)
    fake = rng.integers(0, 3, (120, 6)).astype(np.float32)
    assert_matches_prdc(real, fake)


def test_copies_of_real_samples():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(100, 32)).astype(np.float32)
    fake = real[rng.choice(100, 80)]  # Memorised samples, some of them twice.
    got = assert_matches_prdc(real, fake)
    assert got.precision == 1.0


def test_far_from_the_origin_keeps_its_digits():
    # Uncentred float32 |a|^2 + |b|^2 - 2ab would lose every digit of these distances.
    real, fake = shifted_sets(np.random.default_rng(7), 150, 120, 64, offset=1000.0)
    assert_matches_prdc(real, fake)


def test_order_of_rows_does_not_matter():
    rng = np.random.default_rng(8)
    real, fake = shifted_sets(rng, 90, 70, 16)
    want = manifold.manifold_metrics(real, fake)
    assert manifold.manifold_metrics(real[rng.permutation(90)], fake[rng.permutation(70)]) == want


def test_float64_input():
    real, fake = shifted_sets(np.random.default_rng(9), 80, 60, 16)
    assert_matches_prdc(real.astype(np.float64), fake.astype(np.float64))


def test_to_scalars():
    real, fake = shifted_sets(np.random.default_rng(10), 40, 30, 4)
    got = manifold.manifold_metrics(real, fake)
    assert got.to_scalars() == {name: getattr(got, name) for name in SCORES}


def test_torch_fidelity_precision_recall():
    sys.modules.setdefault("triton", None)  # As in conftest: CPU tests never need it.
    torch = pytest.importorskip("torch")
    metric_prc = pytest.importorskip("torch_fidelity.metric_prc")

    def torch_fidelity(real, fake):
        return metric_prc.prc_features_to_metric(  # Generated first, then real.
            torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
            prc_batch_size=64, save_cpu_ram=False, verbose=False)

    rng = np.random.default_rng(11)
    real, fake = shifted_sets(rng, 150, 120, 6)  # The lattice's shapes: one compilation.
    got, want = manifold.manifold_metrics(real, fake), torch_fidelity(real, fake)
    assert 0.05 < got.precision < 0.99 and 0.05 < got.recall < 0.99
    assert got.precision == pytest.approx(want["precision"], rel=1e-6)  # float32 results.
    assert got.recall == pytest.approx(want["recall"], rel=1e-6)
    # On the lattice, <= puts every sample inside the balls of its copies.
    real = rng.integers(0, 3, (150, 6)).astype(np.float32)
    fake = rng.integers(0, 3, (120, 6)).astype(np.float32)
    got, want = manifold.manifold_metrics(real, fake), torch_fidelity(real, fake)
    assert got.precision < want["precision"] and got.recall < want["recall"]


@pytest.mark.parametrize("real_shape, fake_shape, k, match", [
    ((10, 4), (10, 5), 3, "one D"),
    ((10,), (10, 4), 3, "one D"),
    ((3, 4), (10, 4), 3, "at least 4 real and 4 generated samples, got 3 and 10"),
    ((10, 4), (10, 4), 0, "k=0"),
])
def test_errors(real_shape, fake_shape, k, match):
    with pytest.raises(ValueError, match=match):
        manifold.manifold_metrics(np.zeros(real_shape), np.zeros(fake_shape), k)


def test_non_finite_features():
    real = np.zeros((10, 4))
    real[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        manifold.manifold_metrics(real, np.zeros((10, 4)))
