"""A small digits classifier: the feature network of the offline quick start.

Inception cannot judge 8x8 handwritten digits, and its weights need a download, so the
digits quick start (`eval.feature_net='digits'`) scores samples in the feature space of
this classifier instead: IS from its 10 logits, FID/KID from its 64 penultimate features.
The numbers are of the same kind as Inception's but on their own scale (IS is at most
10); compare them only with each other.

The classifier works at the digits' native 8x8: inputs of 16 or 32 px are box-averaged
back to 8x8 (exact for any integer upsampling of the scans), RGB is averaged to grey.
It is trained once, deterministically (fixed seeds, CPU), on 1,497 of scikit-learn's
1,797 scans (the other 300 are held out), with +-1 px shifts and a bilinear up/down
round trip as augmentations, so generated digits that are a little off-centre or
blurred are still read. The weights ship as `assets/digits_classifier.npz` (~95 kB),
so everybody's scores are computed with the same network; this module's `main`
rebuilds it deterministically (two runs on one machine give identical bytes; another
CPU or JAX version may differ in the last bits):

    python -m sagan_jax.evaluation.digits_net --out=sagan_jax/evaluation/assets/digits_classifier.npz
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import traverse_util

ASSET = os.path.join(os.path.dirname(__file__), "assets", "digits_classifier.npz")
NATIVE_SIZE = 8
NUM_HELD_OUT = 300


class DigitsNet(nn.Module):
    """(B, 8, 8, 1) in [-1, 1] -> (features (B, 64), logits (B, 10))."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(10)(features)


def to_native(images: jnp.ndarray) -> jnp.ndarray:
    """Images (B, H, W, C) in [-1, 1], H and W multiples of 8 -> (B, 8, 8, 1) grey."""
    b, h, w, _ = images.shape
    if h % NATIVE_SIZE or w % NATIVE_SIZE:
        raise ValueError(f"the digits feature net needs image sizes that are multiples of "
                         f"{NATIVE_SIZE}, got {h}x{w}; use eval.feature_net='inception'.")
    grey = jnp.mean(images.astype(jnp.float32), axis=-1)
    fh, fw = h // NATIVE_SIZE, w // NATIVE_SIZE
    return grey.reshape(b, NATIVE_SIZE, fh, NATIVE_SIZE, fw).mean(axis=(2, 4))[..., None]


def extract(variables: dict, images: jnp.ndarray):
    """(features (B, 64), logits (B, 10)) of images in [-1, 1] of 8, 16, 32... px."""
    return DigitsNet().apply(variables, to_native(images))


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (1797, 8, 8, 1) float32 in [-1, 1] and int32 labels."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    data = load_digits()
    images = (data.images / 8.0 - 1.0).astype(np.float32)[..., None]  # 0..16 -> [-1, 1]
    return images, data.target.astype(np.int32)


def split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training scans and of the held-out scans (fixed permutation)."""
    order = np.random.RandomState(seed).permutation(1797)
    return order[NUM_HELD_OUT:], order[:NUM_HELD_OUT]


def _augment(key, x):
    """Random +-1 px shift (zero = background filled) and, for half, a 2x bilinear round trip."""
    k_shift, k_blur = jax.random.split(key)
    shift = jax.random.randint(k_shift, (2,), -1, 2)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    x = jax.lax.dynamic_slice(padded, (0, 1 + shift[0], 1 + shift[1], 0), x.shape)
    up = jax.image.resize(x, (x.shape[0], 16, 16, 1), "bilinear")
    blurred = to_native(up)
    return jnp.where(jax.random.bernoulli(k_blur, 0.5), blurred, x)


def train(seed: int = 0, steps: int = 1500, batch_size: int = 128) -> tuple[dict, float]:
    """Train the classifier; returns (variables, held-out accuracy)."""
    images, labels = real_digits()
    train_idx, test_idx = split(seed)
    x, y = jnp.asarray(images[train_idx]), jnp.asarray(labels[train_idx])
    model = DigitsNet()
    variables = model.init(jax.random.key(seed), x[:1])
    tx = optax.adam(1e-3)
    opt_state = tx.init(variables)

    @jax.jit
    def step(variables, opt_state, key):
        k_batch, k_aug = jax.random.split(key)
        idx = jax.random.choice(k_batch, len(x), (batch_size,), replace=False)
        xb = _augment(k_aug, x[idx])

        def loss_fn(v):
            _, logits = model.apply(v, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        grads = jax.grad(loss_fn)(variables)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(variables, updates), opt_state

    key = jax.random.key(seed + 1)
    for i in range(steps):
        variables, opt_state = step(variables, opt_state, jax.random.fold_in(key, i))
    _, logits = model.apply(variables, jnp.asarray(images[test_idx]))
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == labels[test_idx]))
    return variables, accuracy


def save_variables(variables: dict, path: str, accuracy: float) -> None:
    """Write the variables as a flat .npz (plus the held-out accuracy)."""
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    np.savez(path, held_out_accuracy=np.float32(accuracy),
             **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_variables(path: str = ASSET) -> dict:
    """The shipped (or a rebuilt) classifier's variables."""
    with np.load(path) as f:
        flat = {k: jnp.asarray(f[k]) for k in f.files if k != "held_out_accuracy"}
    return traverse_util.unflatten_dict(flat, sep="/")


_OUT = flags.DEFINE_string("out", ASSET, "Where to write the classifier's .npz.")


def main(argv):
    del argv
    jax.config.update("jax_platforms", "cpu")  # the shipped file was built on a CPU
    variables, accuracy = train()
    save_variables(variables, _OUT.value, accuracy)
    logging.info("held-out accuracy %.4f; wrote %s", accuracy, _OUT.value)


if __name__ == "__main__":
    app.run(main)
