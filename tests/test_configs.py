"""The experiment configs equal the original's tables (docs/original.md), copied here by hand;
lengths in epochs resolve at run time; the `original` and `test` arguments."""
import importlib
import math
import pathlib

import pytest

from configs import common
from sagan_jax import gan as gan_lib, periods

INF = math.inf


def load(name, arg=None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


# docs/original.md, CIFAR-10: case -> (D loss limit, conditional, TTUR, attention).
CIFAR10_CASES = {
    0: (INF, True, False, False),
    1: (INF, True, True, False),
    2: (INF, True, True, True),
    3: (0.5, True, False, False),
    4: (0.5, True, True, False),
    5: (0.5, True, True, True),
    6: (INF, False, True, True),
    7: (0.5, False, True, True),
}
# docs/original.md, CIFAR-10 batch/LR scaling: lrscale -> (batch, effective G lr, effective D lr).
CIFAR10_LRSCALE = {0: (64, 2.5e-5, 1e-4), 1: (128, 5e-5, 2e-4), 2: (64, 1e-4, 4e-4), 3: (128, 1e-4, 4e-4)}
# docs/original.md, STL-10: case -> (TTUR, attention).
STL10_CASES = {0: (False, False), 1: (True, False), 2: (True, True)}


def lrs(ttur):
    return (1e-4, 4e-4) if ttur else (2e-4, 2e-4)


@pytest.mark.parametrize("case", sorted(CIFAR10_CASES))
def test_cifar10_cases(case):
    limit, conditional, ttur, attention = CIFAR10_CASES[case]
    c = load("cifar10", f"case={case}")
    assert c.update_rule.d_loss_limit == limit
    assert c.model.conditional is conditional
    assert (c.optim.g_lr, c.optim.d_lr) == lrs(ttur)
    assert c.model.g_attention == c.model.d_attention == ((8,) if attention else ())
    assert c.update_rule.n_dis == 1 and c.update_rule.window == 5 and c.update_rule.d_only_steps == 4
    assert (c.optim.b1, c.optim.b2, c.train.loss) == (0.0, 0.9, "hinge")
    assert (c.train.batch_size, c.model.resolution, c.data.name) == (256, 32, "cifar10")
    # 100 epochs of 50,000 // 256 = 195 steps, 200 with the rule.
    assert periods.resolve(c, 50_000 // 256).num_steps == (200 if limit < INF else 100) * 195
    assert gan_lib.scaled_learning_rates(c) == pytest.approx(lrs(ttur), rel=1e-12)


@pytest.mark.parametrize("row", sorted(CIFAR10_LRSCALE))
def test_cifar10_lrscale(row):
    batch, g_lr, d_lr = CIFAR10_LRSCALE[row]
    c = load("cifar10", f"lrscale={row}")
    assert c.train.batch_size == batch
    assert c.optim.lr_scaling == ("linear" if row in (0, 1) else "none")
    assert gan_lib.scaled_learning_rates(c) == pytest.approx((g_lr, d_lr), rel=1e-12)
    assert c.model.conditional and c.model.g_attention == c.model.d_attention == (8,)
    assert c.update_rule.d_loss_limit == INF and c.update_rule.n_dis == 1
    assert periods.resolve(c, 50_000 // batch).num_steps == 100 * (50_000 // batch)


@pytest.mark.parametrize("case", sorted(STL10_CASES))
def test_stl10_cases(case):
    ttur, attention = STL10_CASES[case]
    c = load("stl10", f"case={case}")
    assert (c.data.name, c.data.variant, c.data.image_size, c.model.resolution) == (
        "stl10", "labelled", 48, 48)
    assert c.model.conditional and c.update_rule.d_loss_limit == INF
    assert (c.optim.g_lr, c.optim.d_lr) == lrs(ttur)
    assert c.model.g_attention == c.model.d_attention == ((12,) if attention else ())
    assert c.train.batch_size == 256
    assert periods.resolve(c, 13_000 // 256).num_steps == 400 * (13_000 // 256)


@pytest.mark.parametrize("name,data,epochs,num_train", [
    ("animeface", "animeface", 250, 14_490),
    ("flowers", "oxford_flowers102", 400, 8_189),
])
def test_96px_configs(name, data, epochs, num_train):
    c = load(name)
    assert (c.data.name, c.data.image_size, c.model.resolution) == (data, 96, 96)
    assert (c.optim.g_lr, c.optim.d_lr, c.optim.lr_scaling) == (5e-5, 2e-4, "none")
    assert gan_lib.scaled_learning_rates(c) == pytest.approx((5e-5, 2e-4), rel=1e-12)
    assert c.train.batch_size == 128 and c.model.conditional
    assert c.model.g_attention == c.model.d_attention == (24,)
    assert periods.resolve(c, num_train // 128).num_steps == epochs * (num_train // 128)
    assert c.train.bn_sync is False  # The original's DataParallel: statistics per device.
    sngan = load(name, "sngan")
    assert sngan.update_rule.n_dis == 5 and sngan.model.g_attention == ()


def test_every_file_is_a_config_or_one_of_the_helpers():
    """`--config=configs/<file>.py` takes every file but the two helpers, which have no
    `get_config`."""
    names = {p.stem for p in (pathlib.Path(common.__file__).parent).glob("*.py")}
    helpers = {n for n in names if not hasattr(importlib.import_module(f"configs.{n}"), "get_config")}
    assert helpers == {"common", "common96"}
    assert names - helpers == {"animeface", "cifar10", "digits", "flowers", "imagenet128", "stl10"}


def test_digits_quick_start_is_conditional_and_offline():
    c = load("digits")
    assert (c.data.name, c.data.channels, c.model.resolution) == ("digits", 1, 16)
    assert c.model.conditional and c.eval.feature_net == "digits"
    assert load("digits", "size=32").model.resolution == 32


@pytest.mark.parametrize("name,arg", [
    ("cifar10", "case=8"), ("cifar10", "case=1,lrscale=1"), ("cifar10", "cas=1"),
    ("stl10", "case=3"), ("digits", "size=24"),
])
def test_bad_arguments_raise_one_line(name, arg):
    with pytest.raises(ValueError) as e:
        load(name, arg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "stl10", "animeface", "flowers", "digits"])
def test_test_variants_are_tiny(name):
    full, tiny = load(name), load(name, "test")
    assert tiny.model.resolution == full.model.resolution
    assert tiny.model.g_attention == full.model.g_attention
    assert tiny.model.width <= 1 / 8 and tiny.train.num_steps <= 3
    assert tiny.train.batch_size % 4 == 0


def test_another_batch_size_keeps_the_epochs_and_the_rhythm():
    """`--config.train.batch_size=128` on CIFAR-10 case 2: still 100 epochs, a grid every
    epoch, checkpoints and scores every 5 epochs, all in steps of the new batch size."""
    c = load("cifar10", "case=2")
    c.train.batch_size = 128
    plan = periods.resolve(c, 50_000 // 128)
    assert (plan.num_steps, plan.sample_every, plan.checkpoint_every, plan.eval_every) == (
        100 * 390, 390, 5 * 390, 5 * 390)
    default = periods.resolve(load("cifar10", "case=2"), 50_000 // 256)
    assert (default.num_steps, default.sample_every, default.checkpoint_every) == (
        19_500, 195, 975)


def test_steps_override_epochs_and_zero_means_never():
    c = load("cifar10", "case=2")
    c.train.num_steps, c.checkpoint.every_steps, c.log.sample_every_epochs = 2400, 600, 0
    plan = periods.resolve(c, 195)
    assert (plan.num_steps, plan.checkpoint_every, plan.sample_every) == (2400, 600, 0)
    assert [s for s in range(1, 2401) if plan.checkpoint_due(s)] == [600, 1200, 1800, 2400]
    assert not any(plan.due(s, plan.sample_every) for s in range(1, 2401))


@pytest.mark.parametrize("field,value,match", [
    ("train.num_epochs", 0, "the run has no steps; set --config.train.num_epochs"),
    ("train.num_epochs", -3, "cannot be negative"),
    ("checkpoint.every_steps", -1, "cannot be negative"),
])
def test_bad_lengths_are_one_line(field, value, match):
    c = load("cifar10", "case=2")
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match) as e:
        periods.resolve(c, 195)
    assert "\n" not in str(e.value)


def test_image_size_and_resolution_are_one_value():
    """Setting either name sets both, so the data always fits the networks."""
    c = load("digits")
    c.data.image_size = 32
    assert c.model.resolution == 32
    c.model.resolution = 16
    assert c.data.image_size == 16


@pytest.mark.parametrize("arg,expected", [
    ("test", True), ("test=true", True), ("test=1", True), ("test=False", False),
    ("test=0", False), ("test=no", False),
])
def test_flag_arguments_read_their_value(arg, expected):
    assert common.parse_arg(arg, {"test": bool}) == {"test": expected}
    assert (load("digits", arg).train.num_steps == 3) is expected


# The original's loops (docs/original.md, "Training"): epochs looped and steps per epoch.
ORIGINAL_LENGTHS = [
    ("cifar10", "case=2,original", 101, 50_000 // 256),
    ("cifar10", "case=5,original", 201, 50_000 // 256),
    ("stl10", "case=2,original", 401, 13_000 // 256),
    ("animeface", "original", 251, 14_490 // 128),
    ("flowers", "original", 401, 8_189 // 128),
]


@pytest.mark.parametrize("name,arg,epochs,steps_per_epoch", ORIGINAL_LENGTHS)
def test_original_sets_every_switch_and_the_original_iteration_counts(
        name, arg, epochs, steps_per_epoch):
    c = load(name, arg)
    assert (c.model.sn_mode, c.model.init, c.model.cbn_init) == ("original", "original", "xavier")
    assert c.update_rule.limit_mode == "original"
    assert c.train.sample_with_ema is False
    assert c.checkpoint.keep == 0  # all kept
    assert c.eval.num_samples == 10_000 and c.eval.splits == 1
    assert c.data.center_crop is (name != "flowers")
    assert c.train.bn_sync is (name in ("cifar10", "stl10"))
    plan = periods.resolve(c, steps_per_epoch)
    assert plan.num_steps == epochs * steps_per_epoch
    # Checkpoints after epochs 1, 6, 11, ... up to the last (`epoch % 5 == 0` from 0).
    saved = [s for s in range(1, plan.num_steps + 1) if plan.checkpoint_due(s)]
    assert saved == [e * steps_per_epoch for e in range(1, epochs + 1, 5)]
    default = load(name, arg.replace("original", "").strip(","))
    assert periods.resolve(default, steps_per_epoch).num_steps == (epochs - 1) * steps_per_epoch
    assert (default.model.sn_mode, default.update_rule.limit_mode) == ("standard", "capped")
