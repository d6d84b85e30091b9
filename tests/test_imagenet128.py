"""configs/imagenet128.py: the SAGAN paper's ImageNet 128 setup, against its official code.

The OFFICIAL_* constants are those of brain-research/self-attention-gan (commit ad9612e):
`generator_test` / `discriminator_test` (its README's `--generator_type test
--discriminator_type test`, attention at 32x32) and `generator_test_64` /
`discriminator_test_64` (attention at 64x64), with gf_dim = df_dim = 64, z of 128 and
1,000 classes. They were derived twice, without sagan_jax: (1) by building that code's
graph, unchanged, under TF 2's `tf.compat.v1` (with `tf.contrib`'s xavier_initializer and
batch_norm and `tf.layers.max_pooling2d` shimmed) and summing the variables that its
`model.py` `get_vars()` trains ('model/g_*', 'model/d_*', trainable); (2) by hand,
walking the variable shapes of its `ops.py` (`snconv2d`, `snlinear`, `sn_embedding`,
`ConditionalBatchNorm`, `batch_norm`) and `non_local.py` (`sn_non_local_block_sim`).
Both gave the counts below. Not trainable there, so not in them: the SN `u` vectors (one
per SN'd weight, of its output length; D's embedding's over the 1,000 classes) and the
BN moving statistics.

Two layers of the official code differ from sagan_jax's defaults, and the config sets
the switches that match them: its attention's four 1x1 convs have no biases
(`model.attention_bias=False`; with them, C/8 + C/8 + C/2 + C more values: at 32x32, 448
in G and 224 in D), and its G's last BN is plain, with its own affine
(`model.g_out_bn='plain'`: 128 parameters; conditional, 2 x 1,000 x 64 = 128,000).
"""
import math

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from configs import imagenet128
from sagan_jax import gan as gan_lib, periods
from sagan_jax.models import SN_COLLECTION, build_models, get_architecture

NUM_CLASSES = 1_000
IMAGENET_TRAIN = 1_281_167  # TFDS imagenet2012 'train'.

# attention= -> net -> trainable parameters of the official code: `generator_test` /
# `discriminator_test` (32) and `generator_test_64` / `discriminator_test_64` (64).
OFFICIAL = {32: {"G": 42_078_852, "D": 39_463_618}, 64: {"G": 42_017_412, "D": 39_448_258}}
OFFICIAL_SN_U = {32: {"G": 22_787, "D": 9_225}, 64: {"G": 22_563, "D": 9_113}}
OFFICIAL_G_BN_STATS = 9_984  # CBN mean/var of every block's two BNs, and g_bn's.

# Official layer -> its trainable parameters, under sagan_jax's module name; attention apart.
OFFICIAL_LAYERS = {
    "G": {
        "dense": 2_113_536,  # g_snh0: 128 x 16,384 + 16,384.
        "block0": 24_022_016,  # g_block1 (two CBNs of 2 x 1,000 x C each, three SN convs).
        "block1": 10_675_712,  # g_block2
        "block2": 3_437_312,  # g_block3
        "block3": 1_243_520,  # g_block4
        "block4": 502_976,  # g_block5
        "bn_out": 128,  # g_bn: gamma, beta of 64.
        "conv_out": 1_731,  # g_snconv_last: 3 x 3 x 64 x 3 + 3.
    },
    "D": {
        "block0": 38_976,  # d_optimized_block1
        "block1": 229_760,  # d_block2
        "block2": 918_272,  # d_block3
        "block3": 3_671_552,  # d_block4
        "block4": 14_683_136,  # d_block5
        "block5": 18_876_416,  # d_block6: no shortcut conv (1024 -> 1024, no downsampling).
        "dense_out": 1_025,  # d_sn_linear
        "embed": 1_024_000,  # d_embedding: 1,000 x 1,024.
    },
}
# attention= -> net -> (our attention module, the block that it follows, its channels C,
# the official g_non_local / d_non_local's parameters: 1x1 convs C -> C/8, C -> C/8,
# C -> C/2, C/2 -> C, and sigma).
ATTENTION = {
    32: {"G": ("attention2", "block2", 256, 81_921), "D": ("attention1", "block1", 128, 20_481)},
    64: {"G": ("attention3", "block3", 128, 20_481), "D": ("attention0", "block0", 64, 5_121)},
}
# The official code's blocks: (output size, output channels).
OFFICIAL_BLOCKS = {
    "G": [(8, 1024), (16, 512), (32, 256), (64, 128), (128, 64)],
    "D": [(64, 64), (32, 128), (16, 256), (8, 512), (4, 1024), (4, 1024)],
}

@pytest.fixture(scope="module", params=sorted(ATTENTION))
def model(request):
    """(attention=, net -> (variables, module name -> output shape)) of the full-size G
    and D, traced only."""
    g, d = build_models(imagenet128.get_config(f"attention={request.param}").model, NUM_CLASSES, 3)
    z, labels = jnp.zeros((2, 128)), jnp.zeros((2,), jnp.int32)
    images = jnp.zeros((2, 128, 128, 3))

    def trace(net, x):
        variables = net.init({"params": jax.random.key(0)}, x, labels)
        _, state = net.apply(variables, x, labels, capture_intermediates=True, mutable=["intermediates"])
        return variables, state["intermediates"]

    def shapes_of(variables, intermediates):
        return variables, {k: v["__call__"][0].shape for k, v in intermediates.items() if "__call__" in v}

    return request.param, {"G": shapes_of(*jax.eval_shape(lambda: trace(g, z))),
                           "D": shapes_of(*jax.eval_shape(lambda: trace(d, images)))}


def count(tree):
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def test_config_is_the_papers_setup():
    c = imagenet128.get_config()
    assert (c.data.name, c.data.image_size, c.model.resolution, c.model.width) == (
        "imagenet2012", 128, 128, 1.0)
    assert c.model.conditional and c.model.g_sn and c.model.z_dim == 128
    assert c.model.g_attention == c.model.d_attention == (64,)  # The paper's feat64.
    assert imagenet128.get_config("attention=32").model.d_attention == (32,)
    assert (c.model.attention_bias, c.model.g_out_bn) == (False, "plain")
    # The official initialisation: Xavier kernels, zero biases, CBN gamma 1 and beta 0.
    assert (c.model.init, c.model.cbn_init, c.model.sn_mode) == ("xavier", "zeros", "standard")
    assert (c.train.loss, c.optim.b1, c.optim.b2) == ("hinge", 0.0, 0.9)
    assert gan_lib.scaled_learning_rates(c) == pytest.approx((1e-4, 4e-4), rel=1e-12)
    assert c.update_rule.n_dis == 1 and c.update_rule.d_loss_limit == math.inf
    assert c.train.batch_size == 256 and not c.train.sample_with_ema
    assert periods.resolve(c, IMAGENET_TRAIN // 256).num_steps == 1_000_000
    assert (c.eval.num_samples, c.eval.splits, c.eval.feature_net) == (50_000, 1, "inception")


@pytest.mark.parametrize("arg", ["attention=16", "case=1"])
def test_bad_arguments_raise_one_line(arg):
    with pytest.raises(ValueError) as e:
        imagenet128.get_config(arg)
    assert "\n" not in str(e.value)


def test_test_variant_is_tiny_and_keeps_the_architecture():
    full, tiny = imagenet128.get_config(), imagenet128.get_config("test")
    assert tiny.model.resolution == full.model.resolution
    assert tiny.model.g_attention == full.model.g_attention == tiny.model.d_attention
    assert tiny.model.width <= 1 / 8 and tiny.train.num_steps <= 3 and tiny.train.batch_size % 4 == 0


def test_the_128px_table_is_the_official_architecture():
    arch = get_architecture(128)
    assert (arch.g_base, arch.g_base_channels) == (4, 1024)
    assert arch.g_blocks == tuple(ch for _, ch in OFFICIAL_BLOCKS["G"])
    assert [ch for ch, _ in arch.d_blocks] == [ch for _, ch in OFFICIAL_BLOCKS["D"]]
    assert [down for _, down in arch.d_blocks] == [True] * 5 + [False]
    assert arch.g_out_sn and arch.d_out_sn


@pytest.mark.parametrize("net", ["G", "D"])
def test_block_outputs_and_attention_position(model, net):
    attention, nets = model
    variables, outputs = nets[net]
    for i, (size, channels) in enumerate(OFFICIAL_BLOCKS[net]):
        assert outputs[f"block{i}"] == (2, size, size, channels), i
    name, follows, channels, _ = ATTENTION[attention][net]
    # One attention block, named after the block that it follows.
    assert [k for k in variables["params"] if k.startswith("attention")] == [name]
    assert outputs[name] == outputs[follows] == (2, attention, attention, channels)


@pytest.mark.parametrize("net", ["G", "D"])
def test_attention_is_the_official_one(model, net):
    """sn_non_local_block_sim: 1x1 convs C -> C/8 (theta, phi), C -> C/2 (g), C/2 -> C
    (attn, our `o`), no biases, and the scalar sigma (our `gamma`)."""
    attention, nets = model
    name, _, c, _ = ATTENTION[attention][net]
    params = nets[net][0]["params"][name]
    kernels = {k: params[k]["kernel"].shape for k in ("theta", "phi", "g", "o")}
    assert kernels == {"theta": (1, 1, c, c // 8), "phi": (1, 1, c, c // 8), "g": (1, 1, c, c // 2),
                       "o": (1, 1, c // 2, c)}
    assert params["gamma"].shape == ()
    assert [k for k in flatten_dict(params) if k[-1] == "bias"] == []  # model.attention_bias=False.


@pytest.mark.parametrize("net", ["G", "D"])
def test_attention_counts_as_the_official_code(model, net):
    attention, nets = model
    module, _, _, official = ATTENTION[attention][net]
    assert count(nets[net][0]["params"][module]) == official


@pytest.mark.parametrize("net,name", [(net, name) for net in OFFICIAL_LAYERS for name in OFFICIAL_LAYERS[net]])
def test_layers_count_as_the_official_code(model, net, name):
    _, nets = model
    assert count(nets[net][0]["params"][name]) == OFFICIAL_LAYERS[net][name]


@pytest.mark.parametrize("net", ["G", "D"])
def test_every_layer_is_one_of_the_official_code(model, net):
    attention, nets = model
    name, _, _, official = ATTENTION[attention][net]
    assert sum(OFFICIAL_LAYERS[net].values()) + official == OFFICIAL[attention][net]
    assert set(nets[net][0]["params"]) == set(OFFICIAL_LAYERS[net]) | {name}


@pytest.mark.parametrize("net", ["G", "D"])
def test_trainable_parameters_equal_the_official_code(model, net):
    attention, nets = model
    assert count(nets[net][0]["params"]) == OFFICIAL[attention][net]


def test_non_trainable_state_matches_the_official_code(model):
    """Every SN'd weight of the official code is SN'd here, with `u` of the same length
    (our standard SN also keeps `v`), and BN keeps the same running statistics."""
    attention, nets = model
    for net in ("G", "D"):
        sn = flatten_dict(nets[net][0][SN_COLLECTION])
        assert sum(math.prod(x.shape) for k, x in sn.items() if k[-1] == "u") == OFFICIAL_SN_U[attention][net]
    assert count(nets["G"][0]["batch_stats"]) == OFFICIAL_G_BN_STATS
    assert "batch_stats" not in nets["D"][0]
