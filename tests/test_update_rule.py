"""The D/G update rule against plain-Python transcriptions of both readings of the original."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from sagan_jax import update_rule

# 'capped' mode ignores the epoch length: any value must give the same pattern.
UNUSED_EPOCH = 1000


def _cfg(n_dis=1, limit=float("inf"), mode="capped", window=5, d_only_steps=4):
    cfg = common.get_base_config().update_rule
    cfg.n_dis, cfg.d_loss_limit, cfg.limit_mode = n_dis, limit, mode
    cfg.window, cfg.d_only_steps = window, d_only_steps
    return cfg


def _capped_reference(d_losses, n_dis, limit, window=5, d_only_steps=4):
    """The write-up's reading, with a Python list carried over the whole run."""
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


def _original_loop(d_losses, steps_per_epoch, limit, n_dis=1):
    """The original training loop (train_cifar.py) as written; `n_dis` = 1 there.

    The last epoch may be cut short (the run stops at a step count).
    """
    pattern, step = [], 0
    for epoch_start in range(0, len(d_losses), steps_per_epoch):
        d_loss_list = []
        count = 0
        for d_loss in d_losses[epoch_start:epoch_start + steps_per_epoch]:
            if count == 0:
                pattern.append(step % n_dis == 0)   # G step
            else:
                count -= 1
                pattern.append(False)
            d_loss_list.append(d_loss)              # D step
            recent = d_loss_list[-5:]
            if sum(recent) / len(recent) >= limit and count == 0:
                count = 4
            step += 1
    return pattern


def _eager(d_losses, cfg, steps_per_epoch):
    """(G-update pattern, countdown after each iteration), calling the functions one by one."""
    window, d_only, pattern, countdowns = np.zeros(cfg.window, np.float32), 0, [], []
    for step, loss in enumerate(d_losses):
        pattern.append(bool(update_rule.g_step_now(step, d_only, cfg, steps_per_epoch)))
        window, d_only = update_rule.update(window, d_only, loss, step, cfg, steps_per_epoch)
        countdowns.append(int(d_only))
    return pattern, countdowns


def _eager_pattern(d_losses, cfg, steps_per_epoch=UNUSED_EPOCH):
    return _eager(d_losses, cfg, steps_per_epoch)[0]


def _compiled_pattern(d_losses, cfg, steps_per_epoch=UNUSED_EPOCH):
    """The same functions traced once inside a jitted `lax.scan`, as in the train step."""
    def body(carry, loss):
        step, window, d_only = carry
        g = update_rule.g_step_now(step, d_only, cfg, steps_per_epoch)
        window, d_only = update_rule.update(window, d_only, loss, step, cfg, steps_per_epoch)
        return (step + 1, window, d_only), g

    init = (jnp.int32(0), jnp.zeros(cfg.window, jnp.float32), jnp.int32(0))
    _, pattern = jax.jit(lambda xs: jax.lax.scan(body, init, xs))(jnp.asarray(d_losses, jnp.float32))
    return [bool(g) for g in pattern]


def _mixed_losses(seed, n=60):
    """D losses that wander across 0.5, so countdowns start, run and restart."""
    rng = np.random.default_rng(seed)
    return list((0.5 + 0.3 * np.sin(np.arange(n) / 4.0) + 0.15 * rng.standard_normal(n)).astype(np.float32))


SEQUENCES = {
    "random": _mixed_losses(10, 64),
    "uniform": list(np.random.default_rng(11).uniform(0.0, 1.0, 64).astype(np.float32)),
    "constant_high": [1.0] * 64,
    "constant_low": [0.1] * 64,
    "alternating": [0.0, 1.0] * 32,   # means of 0.4/0.6 over 5, 0.5 over an even count
    "high_then_low": [0.9] * 20 + [0.2] * 20 + [0.9] * 24,
}


@pytest.mark.parametrize("steps_per_epoch", [3, 7, 10, 16])
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_original_mode_matches_the_original_loop(name, steps_per_epoch):
    losses = SEQUENCES[name]
    cfg = _cfg(limit=0.5, mode="original")
    expected = _original_loop(losses, steps_per_epoch, 0.5)
    assert _eager_pattern(losses, cfg, steps_per_epoch) == expected
    assert _compiled_pattern(losses, cfg, steps_per_epoch) == expected


@pytest.mark.parametrize(
    "n_dis,limit,seed,steps_per_epoch", [(2, 0.5, 5, 7), (3, 0.45, 6, 10), (1, 0.7, 7, 9)]
)
def test_original_mode_composes_with_n_dis(n_dis, limit, seed, steps_per_epoch):
    losses = _mixed_losses(seed)
    cfg = _cfg(n_dis, limit, mode="original")
    expected = _original_loop(losses, steps_per_epoch, limit, n_dis)
    assert 0 < sum(expected) < len(expected)
    assert _eager_pattern(losses, cfg, steps_per_epoch) == expected
    assert _compiled_pattern(losses, cfg, steps_per_epoch) == expected


def test_modes_differ_on_mixed_losses():
    """The references themselves disagree, so the tests above tell the modes apart."""
    differing = [
        name for name, losses in SEQUENCES.items()
        if _original_loop(losses, 10, 0.5) != _capped_reference(losses, 1, 0.5)
    ]
    assert sorted(differing) == ["alternating", "constant_high", "high_then_low", "random", "uniform"]


def test_constant_high_loss_capped_is_five_to_one_original_is_one_per_epoch():
    losses, steps_per_epoch = [1.0] * 50, 10   # five epochs
    capped = _compiled_pattern(losses, _cfg(limit=0.5), steps_per_epoch)
    original = _compiled_pattern(losses, _cfg(limit=0.5, mode="original"), steps_per_epoch)
    assert [i for i, g in enumerate(capped) if g] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert sum(capped) == 10   # 50 D steps : 10 G steps = 5:1
    assert [i for i, g in enumerate(original) if g] == [0, 10, 20, 30, 40]
    assert sum(original) == 5  # one G step per epoch


def test_original_countdown_values():
    """Decrement before the check restarts the countdown at once; each epoch resets it."""
    _, countdowns = _eager([1.0] * 10, _cfg(limit=0.5, mode="original"), 7)
    assert countdowns == [4, 3, 2, 1, 4, 3, 2, 4, 3, 2]
    _, countdowns = _eager([1.0] * 7, _cfg(limit=0.5), 7)
    assert countdowns == [4, 3, 2, 1, 0, 4, 3]


def test_original_window_and_countdown_are_per_epoch():
    original, capped = _cfg(limit=0.5, mode="original"), _cfg(limit=0.5)
    # Epoch 1 starts with 0.6 alone: mean 0.6 starts a countdown (capped mode averages
    # in epoch 0's zeros, 0.15, and does not).
    losses = [0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0]
    assert _eager_pattern(losses, original, 3) == [True, True, True, True, False, False, True]
    assert _eager_pattern(losses, original, 3) == _original_loop(losses, 3, 0.5)
    assert _eager_pattern(losses, capped, 3) == [True] * 7
    # Epoch 0 ends by starting a countdown (mean of 0, 0, 0, 2 is 0.5); epoch 1 resets it,
    # so its first iteration has a G step, where capped mode skips G.
    losses = [0.0, 0.0, 0.0, 2.0, 0.1, 0.1]
    assert _eager_pattern(losses, original, 4) == [True] * 6
    assert _eager_pattern(losses, original, 4) == _original_loop(losses, 4, 0.5)
    assert _eager_pattern(losses, capped, 4) == [True] * 4 + [False] * 2


@pytest.mark.parametrize("n_dis,limit,seed", [(1, 0.5, 0), (1, 0.5, 1), (2, 0.5, 2), (5, 0.45, 3), (1, 0.7, 4)])
def test_capped_pattern_matches_reference_rule(n_dis, limit, seed):
    losses = _mixed_losses(seed)
    cfg = _cfg(n_dis, limit)
    expected = _capped_reference(losses, n_dis, limit)
    assert 0 < sum(expected) < len(expected)
    assert _eager_pattern(losses, cfg) == expected
    assert _compiled_pattern(losses, cfg) == expected
    # Epoch boundaries play no part in 'capped' mode.
    assert _compiled_pattern(losses, cfg, 3) == expected


def test_capped_high_d_loss_gives_five_d_steps_per_g_step():
    """Loss always above the limit: G+D then 4 D-only iterations, over and over."""
    pattern = _compiled_pattern([1.0] * 20, _cfg(limit=0.5))
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
    assert _eager_pattern(losses, cfg) == _capped_reference(losses, 1, 0.5)
    window = np.zeros(5, np.float32)
    for step, loss in enumerate([1.0, 2.0, 3.0]):
        window, _ = update_rule.update(window, 0, loss, step, _cfg(), UNUSED_EPOCH)
    np.testing.assert_array_equal(window, [0, 0, 1, 2, 3])
    assert float(update_rule.window_mean(window, 2)) == 2.0


@pytest.mark.parametrize("mode", update_rule.LIMIT_MODES)
@pytest.mark.parametrize("n_dis", [1, 2, 5])
def test_fixed_n_dis_counts(n_dis, mode):
    # No limit: the losses do not matter, nor do the 7-step epochs.
    pattern = _compiled_pattern([10.0] * 50, _cfg(n_dis, mode=mode), 7)
    assert sum(pattern) == 50 // n_dis
    assert [i for i, g in enumerate(pattern) if g] == list(range(0, 50, n_dis))


def test_capped_countdown_values():
    cfg = _cfg(limit=0.5)
    d_only, seen = 0, []
    window = np.zeros(5, np.float32)
    for step in range(7):
        window, d_only = update_rule.update(window, d_only, 1.0, step, cfg, UNUSED_EPOCH)
        seen.append(int(d_only))
    assert seen == [4, 3, 2, 1, 0, 4, 3]
    assert update_rule.update(window, 0, 1.0, 7, _cfg(), UNUSED_EPOCH)[1] == 0   # limit inf: never starts


@pytest.mark.parametrize(
    "field,value", [("n_dis", 0), ("window", 0), ("d_only_steps", -1), ("limit_mode", "5:1")]
)
def test_bad_update_rule_config_is_one_clear_error(field, value):
    cfg = _cfg()
    update_rule.check_config(cfg)
    cfg[field] = value
    with pytest.raises(ValueError, match=f"update_rule.{field}"):
        update_rule.check_config(cfg)
