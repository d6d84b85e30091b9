"""The D-loss jump detector, on cases with known answers.

Reference: a plain-Python transcription of the jump statistic from its docstring
(statistics.median, no ring buffers).
"""
import math
import pathlib
import statistics

import numpy as np
import pytest

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


# D's loss at every step of real runs of the digits quick start (`configs/digits.py`,
# logged with --config.log.every_steps=1; see the headers of the files): as shipped, and
# without its mode-seeking term (three classes named by the collapse detector at steps
# 1,000 and 2,000).
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
