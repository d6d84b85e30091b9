"""The 2015-12-05 TensorFlow Inception network (the FID/IS variant) in Flax.

Published SAGAN/SNGAN/BigGAN scores come from TensorFlow's `inception-2015-12-05` graph,
not from torchvision's Inception-v3. That graph differs from torchvision's network in
three places, which pytorch-fid and torch-fidelity patch and which this port follows:

* the average pools inside the A, C and first E blocks ignore the zero padding
  (`count_include_pad=False`, TF's `avg_pool` with SAME padding);
* the last E block (`Mixed_7c`) pools its branch with a 3x3 MAX pool, not an average;
* the classifier has 1008 outputs (1000 ImageNet classes plus 8 unused ones).

BatchNorm runs with the frozen statistics of the graph and epsilon 1e-3.

Input convention. `InceptionV3.__call__` takes what the graph's first convolution sees:
(B, 299, 299, 3) float32 equal to `(pixel - 128) / 128` for pixels in [0, 255]. The graph
computes exactly that from its `ExpandDims` input: TF1 bilinear resize to 299 x 299, then
`Sub 128`, `Mul 1/128`. `preprocess` does the same for our images, which are float32 in
[-1, 1] of any size with 1 or 3 channels: it maps them to pixels `(x + 1) * 127.5`,
rounds to integers (generated images are scored as the 8-bit images they stand for, and
real images in [-1, 1] round-trip to their exact original pixels), replicates a single
channel to RGB, then resizes and normalises as the graph does. Note that pytorch-fid
instead feeds `2 * x - 1` for x in [0, 1], i.e. `(pixel - 127.5) / 127.5`; torch-fidelity
follows the graph, as we do.

Scores use two outputs: `pool3` (2048, the mean-pooled `Mixed_7c`, for FID and KID) and
`logits_unbiased` (pool3 times the classifier matrix WITHOUT its bias, for IS). The
latter is what OpenAI's reference Inception Score code computes (it rebuilds the
`softmax/logits/MatMul` op without the bias add) and what torch-fidelity uses for IS;
`logits` (with the bias) is returned too.

Weights. Download pytorch-fid's port of the graph's weights,
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(95,628,359 bytes), and convert it once (needs PyTorch, checks the SHA-256):

    python -m sagan_jax.evaluation.convert --src=pt_inception-2015-12-05-6726825d.pth

which writes `DEFAULT_WEIGHTS` (or `--dst=PATH`, then set `--config.eval.inception_weights`).
This module imports neither TensorFlow nor PyTorch.
"""
from __future__ import annotations

import functools
import io
import os
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from sagan_jax.evaluation.resize import resize_bilinear_tf1

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
DEFAULT_WEIGHTS = os.path.join("~", ".cache", "sagan_jax", "inception-2015-12-05.npz")
INPUT_SIZE = 299
NUM_LOGITS = 1008
_BN_EPS = 1e-3  # TF graph's BatchNorm epsilon (pytorch-fid: BatchNorm2d(eps=0.001)).


def missing_weights_message(path: str) -> str:
    """One line telling the user how to get the Inception weights for `path`."""
    return (
        f"Inception weights not found at {path}: download {WEIGHTS_URL} and run "
        f"`python -m sagan_jax.evaluation.convert --src=pt_inception-2015-12-05-6726825d.pth "
        f"--dst={path}`."
    )


class BasicConv(nn.Module):
    """Conv (no bias) -> frozen BatchNorm (eps 1e-3) -> ReLU, as in the graph."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: str = "SAME"
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                    padding=self.padding, use_bias=False, precision=self.precision,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # TF's SAME average pool divides by the number of real pixels in the window.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (35 x 35)."""

    pool_features: int
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: 35 x 35 -> 17 x 17."""

    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b3 = conv(384, (3, 3), strides=2, padding="VALID", name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=2, padding="VALID", name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e (17 x 17, factorised 7x7 convolutions)."""

    channels_7x7: int
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        c7 = self.channels_7x7
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: 17 x 17 -> 8 x 8."""

    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=2, padding="VALID", name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=2, padding="VALID", name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average-pool branch) and Mixed_7c (the graph's max-pool branch)."""

    max_pool: bool
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), name="branch3x3_2a")(b3),
                              conv(384, (3, 1), name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, (1, 3), name="branch3x3dbl_3a")(bd),
                              conv(384, (3, 1), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """The 2048 -> 1008 classifier, returning logits without and with its bias."""

    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], NUM_LOGITS))
        bias = self.param("bias", nn.initializers.zeros, (NUM_LOGITS,))
        unbiased = jnp.dot(x, kernel, precision=self.precision)
        return unbiased, unbiased + bias


class InceptionV3(nn.Module):
    """FID Inception; input (B, 299, 299, 3) = (pixel - 128) / 128 (see module doc).

    Returns a dict with `pool3` (B, 2048), `logits_unbiased` and `logits` (B, 1008).
    Module names follow pytorch-fid/torchvision, so the converter maps names 1:1.
    """

    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        conv = functools.partial(BasicConv, precision=p)
        x = conv(32, (3, 3), strides=2, padding="VALID", name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), padding="VALID", name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = conv(80, (1, 1), padding="VALID", name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), padding="VALID", name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)
        x = InceptionC(128, precision=p, name="Mixed_6b")(x)
        x = InceptionC(160, precision=p, name="Mixed_6c")(x)
        x = InceptionC(160, precision=p, name="Mixed_6d")(x)
        x = InceptionC(192, precision=p, name="Mixed_6e")(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, precision=p, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        unbiased, logits = Classifier(precision=p, name="fc")(pool3)
        return {"pool3": pool3, "logits_unbiased": unbiased, "logits": logits}


def preprocess(images: jnp.ndarray) -> jnp.ndarray:
    """Images float in [-1, 1], (B, H, W, 1 or 3) -> the graph's normalised 299 px input."""
    pixels = jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0)
    if pixels.shape[-1] == 1:
        pixels = jnp.repeat(pixels, 3, axis=-1)
    pixels = resize_bilinear_tf1(pixels, (INPUT_SIZE, INPUT_SIZE))
    return (pixels - 128.0) / 128.0


def variable_shapes() -> dict:
    """Shape/dtype tree of the network's variables (`params`, `batch_stats`)."""
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)


def load_variables(path: str) -> dict:
    """Load converted weights (see `convert.py`) as a Flax variables dict.

    Raises:
      FileNotFoundError: the file is missing (the message says how to get it).
      ValueError: the file is not a complete converted Inception weight file.
    """
    path = epath.Path(path).expanduser()  # A local path or a bucket (gs://...).
    if not path.exists():
        raise FileNotFoundError(missing_weights_message(str(path)))
    reconvert = "re-run `python -m sagan_jax.evaluation.convert`"
    try:
        with np.load(io.BytesIO(path.read_bytes())) as f:
            flat = {k: f[k] for k in f.files if k != "source_sha256"}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable converted Inception weight file "
                         f"({type(e).__name__}); {reconvert}.") from None
    expected = traverse_util.flatten_dict(variable_shapes(), sep="/")
    got = {k: v.shape for k, v in flat.items()}
    if got != {k: v.shape for k, v in expected.items()}:
        raise ValueError(f"{path} does not hold the FID Inception variables "
                         f"({len(got)} arrays, expected {len(expected)}); {reconvert}.")
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")


def extract(variables: dict, images: jnp.ndarray,
            precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST):
    """(pool3 features (B, 2048), IS logits (B, 1008, bias-free)) of images in [-1, 1]."""
    out = InceptionV3(precision=precision).apply(variables, preprocess(images))
    return out["pool3"], out["logits_unbiased"]
