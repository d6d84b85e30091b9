"""The experiment configs equal the original's tables (../shared/SEED.md), copied here by hand."""
import importlib
import math

import pytest

from sagan_jax import train_step

INF = math.inf


def load(name, arg=None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


# SEED.md, CIFAR-10: case -> (D loss limit, conditional, TTUR, attention).
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
# SEED.md, CIFAR-10 batch/LR scaling: lrscale -> (batch, effective G lr, effective D lr).
CIFAR10_LRSCALE = {0: (64, 2.5e-5, 1e-4), 1: (128, 5e-5, 2e-4), 2: (64, 1e-4, 4e-4), 3: (128, 1e-4, 4e-4)}
# SEED.md, STL-10: case -> (TTUR, attention).
STL10_CASES = {0: (False, False), 1: (True, False), 2: (True, True)}


def lrs(ttur):
    return (1e-4, 4e-4) if ttur else (2e-4, 2e-4)


@pytest.mark.parametrize("case", sorted(CIFAR10_CASES))
def test_cifar10_cases(case):
    limit, conditional, ttur, attention = CIFAR10_CASES[case]
    c = load("cifar10", f"case={case}")
    assert c.schedule.d_loss_limit == limit
    assert c.model.conditional is conditional
    assert (c.optim.g_lr, c.optim.d_lr) == lrs(ttur)
    assert c.model.g_attention == c.model.d_attention == ((8,) if attention else ())
    assert c.schedule.n_dis == 1 and c.schedule.window == 5 and c.schedule.d_only_steps == 4
    assert (c.optim.b1, c.optim.b2, c.train.loss) == (0.0, 0.9, "hinge")
    assert (c.train.batch_size, c.model.resolution, c.data.name) == (256, 32, "cifar10")
    # 100 epochs of 50,000 // 256 = 195 steps, 200 with the rule.
    assert c.train.num_steps == (200 if limit < INF else 100) * 195
    assert train_step.scaled_learning_rates(c) == pytest.approx(lrs(ttur), rel=1e-12)


@pytest.mark.parametrize("row", sorted(CIFAR10_LRSCALE))
def test_cifar10_lrscale(row):
    batch, g_lr, d_lr = CIFAR10_LRSCALE[row]
    c = load("cifar10", f"lrscale={row}")
    assert c.train.batch_size == batch
    assert c.optim.lr_scaling == ("linear" if row in (0, 1) else "none")
    assert train_step.scaled_learning_rates(c) == pytest.approx((g_lr, d_lr), rel=1e-12)
    assert c.model.conditional and c.model.g_attention == c.model.d_attention == (8,)
    assert c.schedule.d_loss_limit == INF and c.schedule.n_dis == 1
    assert c.train.num_steps == 100 * (50_000 // batch)


@pytest.mark.parametrize("case", sorted(STL10_CASES))
def test_stl10_cases(case):
    ttur, attention = STL10_CASES[case]
    c = load("stl10", f"case={case}")
    assert (c.data.name, c.data.variant, c.data.image_size, c.model.resolution) == (
        "stl10", "labelled", 48, 48)
    assert c.model.conditional and c.schedule.d_loss_limit == INF
    assert (c.optim.g_lr, c.optim.d_lr) == lrs(ttur)
    assert c.model.g_attention == c.model.d_attention == ((12,) if attention else ())
    assert c.train.batch_size == 256
    assert c.train.num_steps == 400 * (13_000 // 256)


@pytest.mark.parametrize("name,data,epochs,num_train", [
    ("animeface", "animeface", 250, 14_490),
    ("flowers", "oxford_flowers102", 400, 8_189),
])
def test_96px_configs(name, data, epochs, num_train):
    c = load(name)
    assert (c.data.name, c.data.image_size, c.model.resolution) == (data, 96, 96)
    assert (c.optim.g_lr, c.optim.d_lr, c.optim.lr_scaling) == (5e-5, 2e-4, "none")
    assert train_step.scaled_learning_rates(c) == pytest.approx((5e-5, 2e-4), rel=1e-12)
    assert c.train.batch_size == 128 and c.model.conditional
    assert c.model.g_attention == c.model.d_attention == (24,)
    assert c.train.num_steps == epochs * (num_train // 128)
    sngan = load(name, "sngan")
    assert sngan.schedule.n_dis == 5 and sngan.model.g_attention == ()


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
