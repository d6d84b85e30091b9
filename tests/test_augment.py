"""DiffAugment of D's inputs, against NumPy shifts and squares found independently."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import augment

N, H, W, C = 12, 16, 16, 2


def images():
    return jax.random.uniform(jax.random.key(0), (N, H, W, C), minval=0.1, maxval=1.0)


def np_shift(x, dy, dx):
    """x shifted by (dy, dx), the uncovered border 0."""
    out = np.zeros_like(x)
    src = x[max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def np_cut(x, top, left):
    out = x.copy()
    out[top:top + H // 2, left:left + W // 2] = 0
    return out


def test_policy_parsing():
    assert augment.parse("") == ()
    assert augment.parse("translation, cutout") == ("translation", "cutout")
    with pytest.raises(ValueError, match="unknown augmentation 'flip'") as e:
        augment.parse("translation,flip")
    assert "\n" not in str(e.value)


def test_empty_policy_is_the_identity():
    x = images()
    assert augment.augment(x, jax.random.key(1), jnp.arange(N), ()) is x


def test_translation_is_a_zero_filled_shift_of_at_most_an_eighth():
    x = np.asarray(images())
    out = np.asarray(augment.augment(jnp.asarray(x), jax.random.key(1), jnp.arange(N),
                                     ("translation",)))
    shifts = []
    for a, b in zip(x, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(np_shift(a, dy, dx), b)]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 3  # each image draws its own shift


def test_cutout_zeroes_one_half_size_square():
    x = np.asarray(images())
    out = np.asarray(augment.augment(jnp.asarray(x), jax.random.key(2), jnp.arange(N),
                                     ("cutout",)))
    places = []
    for a, b in zip(x, out):
        found = [(t, l) for t in range(H // 2 + 1) for l in range(W // 2 + 1)
                 if np.array_equal(np_cut(a, t, l), b)]
        assert len(found) == 1
        places.append(found[0])
    assert len(set(places)) > 3


def test_draws_depend_on_the_global_index_not_the_split():
    x = images()
    key, policy = jax.random.key(3), ("translation", "cutout")
    whole = augment.augment(x, key, jnp.arange(N), policy)
    halves = [augment.augment(x[i:i + N // 2], key, jnp.arange(i, i + N // 2), policy)
              for i in (0, N // 2)]
    np.testing.assert_array_equal(whole, jnp.concatenate(halves))


def test_gradient_flows_back_through_the_shift():
    """G learns through the augmentation: the gradient is the cotangent shifted back."""
    x = np.asarray(images())
    key, idx = jax.random.key(1), jnp.arange(N)
    w = np.asarray(jax.random.normal(jax.random.key(4), x.shape))
    out, vjp = jax.vjp(lambda v: augment.augment(v, key, idx, ("translation",)), jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(w))
    for a, b, g_img, w_img in zip(x, np.asarray(out), np.asarray(grad), w):
        dy, dx = next((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                      if np.array_equal(np_shift(a, dy, dx), b))
        np.testing.assert_allclose(g_img, np_shift(w_img, -dy, -dx), atol=1e-6)
