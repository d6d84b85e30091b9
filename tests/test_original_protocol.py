"""The original's IS protocol under `,original`: in-training scores at the checkpoint
epochs 1, 6, 11, ..., eval-mode BN with the unbiased running variance, float32 matmuls,
and the best checkpoint picked by IS."""
import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from sagan_jax import periods, render, train
from sagan_jax import workdir as workdir_lib
from sagan_jax.models import build_models

CIFAR10_STEPS_PER_EPOCH = 50_000 // 256  # 195


def load(arg):
    return importlib.import_module("configs.cifar10").get_config(arg)


def test_in_training_scores_fall_on_the_checkpoint_epochs():
    """cifar10 case=2,original: 101 epochs of 195 steps; the original saved G after epochs
    1, 6, ..., 101 and scored each of those; so do we, at the same steps."""
    plan = periods.resolve(load("case=2,original"), CIFAR10_STEPS_PER_EPOCH)
    steps = range(1, plan.num_steps + 1)
    scored = [s for s in steps if plan.eval_due(s)]
    assert scored == [195 * (1 + 5 * k) for k in range(21)]
    assert scored[:3] == [195, 1170, 2145] and scored[-1] == plan.num_steps == 19_695
    assert scored == [s for s in steps if plan.checkpoint_due(s)]
    # Dispatches of many steps still stop at each of them.
    ends = {first + count for first, count in plan.chunks(0, 10_000)}
    assert set(scored) <= ends
    # Our default rhythm: epochs 5, 10, ..., 100.
    default = periods.resolve(load("case=2"), CIFAR10_STEPS_PER_EPOCH)
    assert [s for s in range(1, default.num_steps + 1) if default.eval_due(s)] == [
        975 * k for k in range(1, 21)]


def test_original_switches_the_protocol_on():
    original, ours = load("case=2,original"), load("case=2")
    assert (original.model.bn_unbiased_var, original.train.matmul_precision,
            original.eval.best_by, original.eval.num_samples, original.eval.splits) == (
        True, "highest", "IS", 10_000, 1)
    assert (ours.model.bn_unbiased_var, ours.train.matmul_precision, ours.eval.best_by) == (
        False, "", "FID")
    g, _ = build_models(original.model, 10, 3)
    assert g.bn_unbiased_var
    # Configs written before the field existed keep Flax's running variance.
    old = ml_collections.ConfigDict(ours.model.to_dict())
    del old["bn_unbiased_var"]
    assert not build_models(old, 10, 3)[0].bn_unbiased_var


def _products(jaxpr):
    """The matmuls and convolutions of `jaxpr`, those of nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _products(sub)


def test_highest_precision_reaches_every_matmul_and_conv_of_g():
    """`train.matmul_precision='highest'` is applied as JAX's default precision; no layer
    of G overrides it with a lower one."""
    g, _ = build_models(load("case=2,original,test").model, 10, 3)
    z, labels = jnp.zeros((2, 128)), jnp.array([0, 1])
    variables = g.init({"params": jax.random.key(0)}, z, labels)
    with jax.default_matmul_precision("highest"):
        jaxpr = jax.make_jaxpr(lambda v: g.apply(v, z, labels, train=True,
                                                 mutable=["batch_stats"]))(variables)
    ops = list(_products(jaxpr.jaxpr))
    assert len(ops) > 20
    assert all(str(e.params["precision"]) == "(Precision.HIGHEST, Precision.HIGHEST)" for e in ops)


def test_unknown_matmul_precision_is_one_line(tmp_path):
    config = load("case=2,test")
    config.train.matmul_precision = "fast"
    with pytest.raises(ValueError, match="unknown train.matmul_precision 'fast'; set it to one of"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_best_checkpoint_by_is_or_by_fid(tmp_path):
    workdir_lib.write_scores_csv(tmp_path, [
        dict(step=195, generator="raw", num_samples=10000, FID=40.0, IS=6.1),
        dict(step=1170, generator="raw", num_samples=10000, FID=35.0, IS=5.9)])
    assert render.best_step(str(tmp_path), "raw", "IS") == (195, "IS", 6.1)
    assert render.best_step(str(tmp_path), "raw", "FID") == (1170, "FID", 35.0)
    assert render.choose_best_by(load("case=2,original"), None) == "IS"
    assert render.choose_best_by(load("case=2"), None) == "FID"
    assert render.choose_best_by(load("case=2,original"), "FID") == "FID"
    old = load("case=2")
    del old.eval["best_by"]  # A run configured before the field existed.
    assert render.choose_best_by(old, None) == "FID"
    with pytest.raises(ValueError, match="use --best_by=FID or --best_by=IS"):
        render.choose_best_by(old, "KID")


@pytest.mark.slow
def test_original_run_scores_at_the_offset_steps(tmp_path):
    """A tiny `,original` run end to end (the digits test config with every original
    switch: unbiased synced BN statistics, 'highest' precision, ...): in-training scores
    at the offset step 1, then every 2, and running variances that moved off their 1."""
    from tensorboard.backend.event_processing import event_accumulator

    config = importlib.import_module("configs.digits").get_config("test")
    common.make_original(config)
    common.make_test_variant(config)
    config.eval.every_steps, config.eval.offset_steps = 2, 1
    config.eval.stats_dir = str(tmp_path / "stats")
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("eval/raw/IS")] == [1, 3]
    variances = [np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(state.g_state)
                 if "var" in jax.tree_util.keystr(path)]
    assert variances and all(np.all(np.isfinite(v)) and np.any(v != 1) for v in variances)
