"""The D-loss jump detector and the class-wise collapse detector, on cases with known answers.

References: scipy's pdist for the diversity; a plain-Python transcription of the jump
statistic from its docstring (statistics.median, no ring buffers).
"""
import math
import pathlib
import statistics

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from sagan_jax import monitors

SEEDS = range(5)


def reference_statistic(losses, short, long, min_spread=0.01):
    """The docstring's definition over a plain list of the losses fed so far."""
    if len(losses) < short + long:
        return math.nan
    recent = losses[-short:]
    baseline = losses[-short - long:-short]
    level = statistics.median(baseline)
    mad = statistics.median(abs(v - level) for v in baseline)
    return (sum(recent) / short - level) / max(1.4826 * mad, min_spread)


def noisy_trace(seed, n, level=1.2, noise=0.1):
    """A stationary D loss: AR(1) noise (GAN losses are correlated step to step) plus spikes."""
    rng = np.random.default_rng(seed)
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = 0.5 * e[i - 1] + rng.normal(0, noise)
    spikes = rng.random(n) < 0.01  # One bad batch now and then must not fire.
    return level + e + spikes * rng.uniform(0.5, 1.0, n)


def feed(detector, trace):
    return [detector.update(step, v) for step, v in enumerate(trace)]


@pytest.mark.parametrize("short,long", [(1, 2), (3, 7), (20, 500), (5, 8)])
def test_statistic_matches_its_definition(short, long):
    trace = noisy_trace(0, 700)
    detector = monitors.DLossJumpDetector(short=short, long=long)
    for i, reading in enumerate(feed(detector, trace)):
        want = reference_statistic(list(trace[:i + 1]), short, long)
        if math.isnan(want):
            assert math.isnan(reading.statistic), i
        else:
            assert reading.statistic == pytest.approx(want, rel=1e-12, abs=1e-12), i


def test_warm_up_is_short_plus_long_steps():
    detector = monitors.DLossJumpDetector(short=4, long=10)
    readings = feed(detector, np.full(20, 1.0))
    assert all(math.isnan(r.statistic) for r in readings[:13])
    assert [r.statistic for r in readings[13:]] == [0.0] * 7


@pytest.mark.parametrize("seed", SEEDS)
def test_jump_fires_once_at_its_step_and_never_without_it(seed):
    short, long, jump_at = 20, 500, 1500
    trace = noisy_trace(seed, 3000)
    detector = monitors.DLossJumpDetector(short=short, long=long)
    readings = feed(detector, trace)
    assert detector.fired_steps == []
    assert max(r.statistic for r in readings[short + long:]) < detector.threshold

    jumped = trace.copy()
    jumped[jump_at:] += 0.6  # About 5 standard deviations of the stationary loss.
    detector = monitors.DLossJumpDetector(short=short, long=long)
    readings = feed(detector, jumped)
    assert len(detector.fired_steps) == 1
    assert jump_at <= detector.fired_steps[0] < jump_at + short
    assert [r.step for r in readings if r.fired] == detector.fired_steps


def test_rearms_after_the_loss_settles_and_warns_again():
    trace = noisy_trace(7, 3000)
    trace[1000:1100] += 1.0  # A jump that settles back ...
    trace[2000:] += 1.0  # ... and a second one.
    detector = monitors.DLossJumpDetector(short=20, long=500)
    feed(detector, trace)
    assert len(detector.fired_steps) == 2
    assert 1000 <= detector.fired_steps[0] < 1020
    assert 2000 <= detector.fired_steps[1] < 2020


def test_threshold_inf_never_fires_and_nan_losses_are_skipped():
    trace = noisy_trace(1, 1000)
    trace[700:] += 5.0
    detector = monitors.DLossJumpDetector(short=10, long=100, threshold=math.inf)
    assert not any(r.fired for r in feed(detector, trace))

    detector = monitors.DLossJumpDetector(short=3, long=5)
    clean = feed(detector, trace[:20])[-1].statistic
    reading = detector.update(20, math.nan)
    assert reading.statistic == clean and not reading.fired


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="d_jump_short"):
        monitors.DLossJumpDetector(short=0)
    with pytest.raises(ValueError, match="re-arm"):
        monitors.DLossJumpDetector(threshold=2.0, rearm=3.0)


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
    got = monitors.class_diversity(features, labels, 6)
    want = reference_diversity(features, labels, 6)
    np.testing.assert_allclose(got[:5], want[:5], rtol=1e-12)
    assert np.isnan(got[5]) and np.isnan(want[5])


def test_diversity_spans_several_blocks(monkeypatch):
    monkeypatch.setattr(monitors, "BLOCK", 7)
    rng = np.random.default_rng(0)
    features, labels = class_features(rng, 3, 40)
    np.testing.assert_allclose(monitors.class_diversity(features, labels, 3),
                               reference_diversity(features, labels, 3), rtol=1e-12)


def test_diversity_of_near_copies_keeps_its_digits():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 10, 2048)
    copies = base + 1e-6 * rng.normal(size=(50, 2048))
    got = monitors.class_diversity(copies, np.zeros(50, int), 1)
    np.testing.assert_allclose(got, reference_diversity(copies, np.zeros(50, int), 1),
                               rtol=1e-9)


def test_diversity_invariant_to_order_and_batching():
    rng = np.random.default_rng(3)
    features, labels = class_features(rng, 4, 200)
    want = monitors.class_diversity(features, labels, 4)
    perm = rng.permutation(len(labels))
    np.testing.assert_allclose(monitors.class_diversity(features[perm], labels[perm], 4),
                               want, rtol=1e-13)
    for batch in (1, 7, 64, 500):  # Features gathered batch by batch, as the evaluator does.
        chunks = [(features[i:i + batch], labels[i:i + batch])
                  for i in range(0, len(labels), batch)]
        gathered = np.concatenate([f for f, _ in chunks]), np.concatenate([l for _, l in chunks])
        np.testing.assert_array_equal(monitors.class_diversity(*gathered, 4), want)


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
    ratios, named = monitors.collapse_check(
        monitors.class_diversity(fake, fake_labels, num_classes),
        monitors.class_diversity(real, real_labels, num_classes))
    np.testing.assert_array_equal(named, collapsed)
    assert np.all(ratios[collapsed] < 0.01)


@pytest.mark.parametrize("seed", SEEDS)
def test_two_real_draws_raise_nothing(seed):
    rng = np.random.default_rng(seed)
    features, labels = class_features(rng, 10, 200)
    half = np.arange(len(labels)) % 2 == 0  # Two disjoint draws of the same distribution.
    ratios, named = monitors.collapse_check(
        monitors.class_diversity(features[half], labels[half], 10),
        monitors.class_diversity(features[~half], labels[~half], 10))
    assert named.size == 0
    np.testing.assert_allclose(ratios, 1.0, atol=0.05)


def test_collapse_check_skips_unusable_classes():
    ratios, named = monitors.collapse_check(np.array([0.1, np.nan, 0.5, 1.0]),
                                            np.array([1.0, 1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(ratios, [0.1, np.nan, np.nan, 1.0])
    np.testing.assert_array_equal(named, [0])
    with pytest.raises(ValueError, match="one value per class"):
        monitors.collapse_check(np.ones(3), np.ones(4))


def test_bad_labels_raise():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        monitors.class_diversity(np.zeros((4, 2)), np.array([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="expected features"):
        monitors.class_diversity(np.zeros((4, 2)), np.zeros(3, int), 3)


def test_diversity_of_three_points_on_a_line():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # Pair distances 5, 5 and 10.
    assert monitors.class_diversity(x, np.zeros(3, int), 1)[0] == pytest.approx(20 / 3, rel=1e-15)


def test_collapse_warning_names_the_classes():
    ratios = np.array([0.9, 0.12, 1.0, 0.5])
    assert monitors.collapse_warning(ratios, np.array([], int), 0.6) is None
    assert monitors.collapse_warning(ratios, np.array([1, 3]), 0.6) == (
        "class-wise collapse: 2 of 4 classes have less than 0.6 of the real images' "
        "diversity (class (ratio)): 1 (0.12), 3 (0.50)")


# D's loss at every step of real runs of the digits quick start (`configs/digits.py`,
# logged with --config.log.every_steps=1; see the headers of the files): as shipped, and
# without its mode-seeking term (the classes collapse from about step 1,000).
REAL_TRACES = [pathlib.Path(__file__).parent / "data" / name
               for name in ("digits_quick_start_d_loss.txt", "digits_collapsing_d_loss.txt")]


@pytest.mark.parametrize("trace", REAL_TRACES, ids=lambda p: p.stem)
def test_no_false_alarm_on_the_real_quick_start_and_a_jump_added_to_it_fires(trace):
    losses = np.loadtxt(trace)
    detector = monitors.DLossJumpDetector()
    readings = [detector.update(step, loss) for step, loss in enumerate(losses, 1)]
    assert not any(r.fired for r in readings)
    level = np.nanmax([r.statistic for r in readings])
    assert level < detector.threshold
    # The same trace with D's loss raised by 0.5 from step 900 on (the size of the jump
    # that the original saw): one warning, within `short` steps of 900.
    jumped = losses + np.where(np.arange(1, len(losses) + 1) >= 900, 0.5, 0.0)
    detector = monitors.DLossJumpDetector()
    fired = [s for s, loss in enumerate(jumped, 1) if detector.update(s, loss).fired]
    assert len(fired) == 1 and 900 <= fired[0] < 900 + detector.short
