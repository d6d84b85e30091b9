"""The D/G schedule against a plain-Python simulation of the original's rule."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sagan_jax import schedule


def _cfg(n_dis=1, limit=float("inf"), window=5, d_only_steps=4):
    return ml_collections.ConfigDict(
        dict(n_dis=n_dis, d_loss_limit=limit, window=window, d_only_steps=d_only_steps)
    )


def _reference_pattern(d_losses, n_dis, limit, window=5, d_only_steps=4):
    """The rule of shared/SEED.md written as the original's loop, with a Python list."""
    recorded, d_only, pattern = [], 0, []
    for step, loss in enumerate(d_losses):
        pattern.append(d_only == 0 and step % n_dis == 0)   # the G step
        recorded.append(loss)                               # the D step
        last = recorded[-window:]
        if d_only > 0:
            d_only -= 1
        elif sum(last) / len(last) >= limit:
            d_only = d_only_steps
    return pattern


def _eager_pattern(d_losses, cfg):
    window, d_only, pattern = np.zeros(cfg.window, np.float32), 0, []
    for step, loss in enumerate(d_losses):
        pattern.append(bool(schedule.g_step_now(step, d_only, cfg)))
        window, d_only = schedule.update(window, d_only, loss, step, cfg)
    return pattern


def _compiled_pattern(d_losses, cfg):
    """The same functions traced once inside `lax.scan`, as in the train step."""
    def body(carry, loss):
        step, window, d_only = carry
        g = schedule.g_step_now(step, d_only, cfg)
        window, d_only = schedule.update(window, d_only, loss, step, cfg)
        return (step + 1, window, d_only), g

    init = (jnp.int32(0), jnp.zeros(cfg.window, jnp.float32), jnp.int32(0))
    _, pattern = jax.jit(lambda xs: jax.lax.scan(body, init, xs))(jnp.asarray(d_losses, jnp.float32))
    return [bool(g) for g in pattern]


def _mixed_losses(seed, n=60):
    """D losses that wander across 0.5, so countdowns start, run and restart."""
    rng = np.random.default_rng(seed)
    return list((0.5 + 0.3 * np.sin(np.arange(n) / 4.0) + 0.15 * rng.standard_normal(n)).astype(np.float32))


@pytest.mark.parametrize("n_dis,limit,seed", [(1, 0.5, 0), (1, 0.5, 1), (2, 0.5, 2), (5, 0.45, 3), (1, 0.7, 4)])
def test_pattern_matches_reference_rule(n_dis, limit, seed):
    losses = _mixed_losses(seed)
    cfg = _cfg(n_dis, limit)
    expected = _reference_pattern(losses, n_dis, limit)
    assert 0 < sum(expected) < len(expected)
    assert _eager_pattern(losses, cfg) == expected
    assert _compiled_pattern(losses, cfg) == expected


def test_high_d_loss_gives_five_d_steps_per_g_step():
    """Loss always above the limit: G+D then 4 D-only iterations, over and over."""
    cfg = _cfg(limit=0.5)
    pattern = _compiled_pattern([1.0] * 20, cfg)
    assert pattern == [i % 5 == 0 for i in range(20)]


def test_window_averages_only_recorded_losses():
    """Before 5 D steps exist the mean is over the recorded ones (no zeros averaged in)."""
    cfg = _cfg(limit=0.5)
    # Step 0 records 0.6 alone: mean 0.6 >= 0.5 starts a countdown (zeros would give 0.12).
    assert _eager_pattern([0.6, 0.0, 0.0, 0.0, 0.0, 0.0], cfg) == [True, False, False, False, False, True]
    # Mean of four is 0.375 < 0.5 at step 3; mean of five is exactly 0.5 at step 4.
    assert _eager_pattern([0.25, 0.25, 0.25, 0.75, 1.0, 0.0], cfg) == [True] * 5 + [False]
    # Only the last 5 count: one huge old loss drops out of the window.
    losses = [0.1, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert _eager_pattern(losses, cfg) == _reference_pattern(losses, 1, 0.5)
    window = np.zeros(5, np.float32)
    for step, loss in enumerate([1.0, 2.0, 3.0]):
        window, _ = schedule.update(window, 0, loss, step, _cfg())
    np.testing.assert_array_equal(window, [0, 0, 1, 2, 3])
    assert float(schedule.window_mean(window, 2)) == 2.0


@pytest.mark.parametrize("n_dis", [1, 2, 5])
def test_fixed_n_dis_counts(n_dis):
    pattern = _compiled_pattern([10.0] * 50, _cfg(n_dis))   # no limit: losses do not matter
    assert sum(pattern) == 50 // n_dis
    assert [i for i, g in enumerate(pattern) if g] == list(range(0, 50, n_dis))


def test_countdown_values():
    cfg = _cfg(limit=0.5)
    d_only, seen = 0, []
    window = np.zeros(5, np.float32)
    for step in range(7):
        window, d_only = schedule.update(window, d_only, 1.0, step, cfg)
        seen.append(int(d_only))
    assert seen == [4, 3, 2, 1, 0, 4, 3]
    assert schedule.update(window, 0, 1.0, 7, _cfg())[1] == 0   # limit inf: never starts


@pytest.mark.parametrize("field,value", [("n_dis", 0), ("window", 0), ("d_only_steps", -1)])
def test_bad_schedule_config_is_one_clear_error(field, value):
    cfg = _cfg()
    cfg[field] = value
    with pytest.raises(ValueError, match=f"schedule.{field}"):
        schedule.check_config(cfg)
