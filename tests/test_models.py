"""Generator and Discriminator: every table, the original's parameter counts, bf16."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import get_base_config
from sagan_jax.models import (
    ARCHITECTURES, SN_COLLECTION, Discriminator, Generator, build_models, get_architecture,
)


def _param_count(tree):
    return sum(x.size for x in jax.tree_util.tree_leaves(tree))


# docs/original.md: trainable parameters of the original (resolution, classes, attention, G, D).
ORIGINAL_COUNTS = [
    (32, 10, True, 4_391_364, 1_075_810),
    (32, 0, True, 4_359_108, 1_074_530),
    (32, 10, False, 4_308_995, 1_055_105),
    (48, 10, True, 4_985_796, 19_573_666),
    (96, 176, True, 33_055_684, 38_620_066),
    (96, 102, True, 32_316_868, 38_544_290),
]


@pytest.mark.parametrize("resolution,classes,attention,g_count,d_count", ORIGINAL_COUNTS)
def test_parameter_counts_equal_the_original(resolution, classes, attention, g_count, d_count):
    arch = get_architecture(resolution)
    g = Generator(resolution=resolution, num_classes=classes, attention=arch.g_attention if attention else ())
    d = Discriminator(resolution=resolution, num_classes=classes, attention=arch.d_attention if attention else ())
    labels = jnp.zeros((2,), jnp.int32) if classes else None
    g_vars = jax.eval_shape(lambda: g.init({"params": jax.random.key(0)}, jnp.zeros((2, 128)), labels))
    images = jnp.zeros((2, resolution, resolution, 3))
    d_vars = jax.eval_shape(lambda: d.init({"params": jax.random.key(0)}, images, labels))
    assert _param_count(g_vars["params"]) == g_count
    assert _param_count(d_vars["params"]) == d_count


# The tables above 32 px take the longest to build and run here: slow.
@pytest.mark.parametrize("resolution", [
    pytest.param(r, marks=pytest.mark.slow) if r > 32 else r for r in sorted(ARCHITECTURES)])
@pytest.mark.parametrize("classes", [0, 5])
def test_shapes_and_range_of_every_table(resolution, classes):
    arch = get_architecture(resolution)
    g = Generator(resolution=resolution, num_classes=classes, attention=arch.g_attention, width=1 / 32, z_dim=16)
    d = Discriminator(resolution=resolution, num_classes=classes, attention=arch.d_attention, width=1 / 32)
    z = 3.0 * jax.random.normal(jax.random.key(1), (4, 16))
    labels = jnp.array([0, 1, 2, 3]) if classes else None

    # Eager on purpose: op-by-op executables are cached across the parametrized cases,
    # which compiles far less on CPU than one whole-network program per case.
    g_vars = g.init({"params": jax.random.key(0)}, z, labels)
    images, _ = g.apply(g_vars, z, labels, train=True, mutable=["batch_stats", SN_COLLECTION])
    d_vars = d.init({"params": jax.random.key(2)}, images, labels)
    logits = d.apply(d_vars, images, labels)
    assert images.shape == (4, resolution, resolution, 3) and images.dtype == jnp.float32
    assert float(jnp.abs(images).max()) <= 1.0
    assert float(jnp.std(images)) > 1e-3
    assert logits.shape == (4,) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    # Attention blocks sit at the table's resolutions.
    g_att = [k for k in g_vars["params"] if k.startswith("attention")]
    d_att = [k for k in d_vars["params"] if k.startswith("attention")]
    assert len(g_att) == len(arch.g_attention) and len(d_att) == len(arch.d_attention)


def _model_config(**fields):
    cfg = get_base_config().model
    cfg.update(dict(resolution=16, width=1 / 16, g_attention=(8,), d_attention=(8,), **fields))
    return cfg


def test_build_models_reads_the_switches():
    g, d = build_models(_model_config(sn_mode="original", init="original", cbn_init="xavier"), 3, 3)
    assert (g.sn_settings.mode, g.param_init, g.cbn_init) == ("original", "original", "xavier")
    assert (d.sn_settings.mode, d.param_init) == ("original", "original")
    z, labels = jnp.zeros((2, g.z_dim)), jnp.array([0, 2])
    g_vars = jax.eval_shape(lambda: g.init({"params": jax.random.key(0)}, z, labels))
    d_vars = jax.eval_shape(lambda: d.init({"params": jax.random.key(0)}, jnp.zeros((2, 16, 16, 3)), labels))
    # The original SN keeps only u0; the embedding's runs over D's 8 channels (the
    # original's SNLinear(K -> C) weight has C rows).
    assert set(d_vars[SN_COLLECTION]["embed"]) == {"u"} and d_vars[SN_COLLECTION]["embed"]["u"].shape == (8,)
    assert set(g_vars[SN_COLLECTION]["dense"]) == {"u"}
    g_std, d_std = build_models(_model_config(sn_mode="standard", init="xavier", cbn_init="zeros"), 3, 3)
    std_vars = jax.eval_shape(lambda: g_std.init({"params": jax.random.key(0)}, z, labels))
    assert set(std_vars[SN_COLLECTION]["dense"]) == {"u", "v"}
    # Same parameters whatever the switches.
    assert jax.tree_util.tree_map(jnp.shape, std_vars["params"]) == jax.tree_util.tree_map(jnp.shape, g_vars["params"])


@pytest.mark.parametrize("field,value,message", [
    ("sn_mode", "clipped", "model.sn_mode"),
    ("init", "he", "model.init"),
    ("cbn_init", "ones", "model.cbn_init"),
    ("sn_iters", 2, "sn_iters=1"),
    ("dtype", "float16", "model.dtype"),
    ("g_out_bn", "none", "model.g_out_bn"),
    ("attention_bias", "no", "model.attention_bias"),
])
def test_build_models_rejects_unknown_switches(field, value, message):
    cfg = _model_config(sn_mode="original", init="xavier", cbn_init="zeros")
    del cfg[field]  # Past ConfigDict's type check, as a config read back from JSON.
    cfg[field] = value
    with pytest.raises(ValueError, match=message) as e:
        build_models(cfg, 3, 3)
    assert "\n" not in str(e.value)


def test_the_official_codes_attention_and_last_bn():
    """attention_bias=False drops the four 1x1 convs' biases and nothing else;
    g_out_bn='plain' makes G's last BN one with its own affine, whatever the classes."""
    z, labels = jnp.zeros((2, 128)), jnp.array([0, 2])
    x = jnp.zeros((2, 16, 16, 3))

    def params(**fields):
        g, d = build_models(_model_config(**fields), 3, 3)
        return (jax.eval_shape(lambda: g.init({"params": jax.random.key(0)}, z, labels))["params"],
                jax.eval_shape(lambda: d.init({"params": jax.random.key(0)}, x, labels))["params"])

    (g, d), (g_official, d_official) = params(), params(attention_bias=False, g_out_bn="plain")
    for ours, official in ((g, g_official), (d, d_official)):  # Attention after the 8x8 block.
        assert {k: set(v) for k, v in ours["attention0"].items() if k != "gamma"} == {
            k: {"kernel", "bias"} for k in ("theta", "phi", "g", "o")}
        assert {k: set(v) for k, v in official["attention0"].items() if k != "gamma"} == {
            k: {"kernel"} for k in ("theta", "phi", "g", "o")}
    # Biases of C/8 + C/8 + C/2 + C: C = 16 in G (after its 8x8 block), 8 in D.
    assert _param_count(g["attention0"]) - _param_count(g_official["attention0"]) == 2 + 2 + 8 + 16
    assert _param_count(d["attention0"]) - _param_count(d_official["attention0"]) == 1 + 1 + 4 + 8
    assert jax.tree_util.tree_map(jnp.shape, g["bn_out"]) == {
        "gamma": {"embedding": (3, 8)}, "beta": {"embedding": (3, 8)}}
    assert jax.tree_util.tree_map(jnp.shape, g_official["bn_out"]) == {"bn": {"scale": (8,), "bias": (8,)}}
    assert {k: v for k, v in g.items() if k not in ("bn_out", "attention0")} == {
        k: v for k, v in g_official.items() if k not in ("bn_out", "attention0")}
    assert {k: v for k, v in d.items() if k != "attention0"} == {
        k: v for k, v in d_official.items() if k != "attention0"}


def test_module_defaults_are_the_configs():
    """G and D built without arguments are those of `configs/common.py`'s model section
    (for 3-channel data without classes): no module default contradicts the config."""
    assert build_models(get_base_config().model, 0, 3) == (Generator(), Discriminator())
    assert Generator().attention == Discriminator().attention == ()


def test_attention_placement_follows_seed():
    """32 px: after G's first block (8x8) and after the D block that follows the optimized one."""
    g = Generator(resolution=32, num_classes=0, attention=(8,), width=1 / 16)
    d = Discriminator(resolution=32, num_classes=0, attention=(8,), width=1 / 16)
    g_vars = jax.eval_shape(lambda: g.init({"params": jax.random.key(0)}, jnp.zeros((1, 128))))
    d_vars = jax.eval_shape(lambda: d.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3))))
    assert "attention0" in g_vars["params"] and "attention1" in d_vars["params"]
    assert g_vars["params"]["attention0"]["theta"]["kernel"].shape == (1, 1, 16, 2)


def test_conditional_projection_term():
    """D(x, y) = dense(features) + <features, E(y)>: labels act only through E's rows."""
    d = Discriminator(resolution=16, num_classes=3, attention=(), width=1 / 16)
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    variables = d.init({"params": jax.random.key(1)}, x, jnp.zeros(3, jnp.int32))
    table = variables["params"]["embed"]["embedding"]
    params = {**variables["params"], "embed": {"embedding": table.at[1].set(table[0])}}
    same_rows = {**variables, "params": params}
    a = d.apply(same_rows, x, jnp.array([0, 0, 0]))
    np.testing.assert_allclose(a, d.apply(same_rows, x, jnp.array([1, 1, 1])), atol=1e-6)
    assert np.abs(np.asarray(d.apply(same_rows, x, jnp.array([2, 2, 2]))) - np.asarray(a)).max() > 1e-4


@pytest.mark.slow
def test_bfloat16_forward_keeps_float32_parameters():
    kwargs = dict(resolution=16, num_classes=4, attention=(8,), width=1 / 8, z_dim=32)
    z = jax.random.normal(jax.random.key(1), (4, 32))
    labels = jnp.arange(4)
    g32 = Generator(**kwargs)
    g16 = Generator(dtype=jnp.bfloat16, **kwargs)
    variables = g16.init({"params": jax.random.key(0)}, z, labels)
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    out16, new_state = g16.apply(variables, z, labels, train=True, mutable=["batch_stats", SN_COLLECTION])
    out32, _ = g32.apply(variables, z, labels, train=True, mutable=["batch_stats", SN_COLLECTION])
    assert out16.dtype == jnp.float32
    assert {x.dtype for x in jax.tree_util.tree_leaves(new_state)} == {jnp.dtype(jnp.float32)}
    # Same function up to bf16 rounding (8 bits of mantissa).
    assert float(jnp.abs(out16 - out32).max()) < 0.1
    assert float(jnp.abs(out16 - out32).mean()) < 0.02
    d16 = Discriminator(dtype=jnp.bfloat16, resolution=16, num_classes=4, attention=(8,), width=1 / 8)
    d_vars = d16.init({"params": jax.random.key(2)}, out16, labels)
    assert {x.dtype for x in jax.tree_util.tree_leaves(d_vars)} == {jnp.dtype(jnp.float32)}
    assert d16.apply(d_vars, out16, labels).dtype == jnp.float32


def test_models_and_step_import_without_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
        "import sagan_jax.models, sagan_jax.losses, sagan_jax.parallel, sagan_jax.train_step\n"
        "import sagan_jax.train, sagan_jax.checkpointing\n"
        "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
