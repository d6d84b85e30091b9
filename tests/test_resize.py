"""TF1 bilinear resize in JAX against `tf.compat.v1.image.resize_bilinear` itself."""
import numpy as np
import pytest

from sagan_jax.evaluation.resize import resize_bilinear_tf1

tf = pytest.importorskip("tensorflow")


@pytest.mark.parametrize("in_size,out_size", [(32, 299), (48, 299), (96, 299), (16, 299),
                                              ((40, 24), (7, 13)), (500, 299)])
def test_matches_tf1_resize_bilinear(in_size, out_size):
    in_hw = in_size if isinstance(in_size, tuple) else (in_size, in_size)
    out_hw = out_size if isinstance(out_size, tuple) else (out_size, out_size)
    rng = np.random.default_rng(0)
    for low, high in [(-1.0, 1.0), (0.0, 255.0)]:
        x = rng.uniform(low, high, (2,) + in_hw + (3,)).astype(np.float32)
        expected = tf.compat.v1.image.resize_bilinear(x, out_hw, align_corners=False).numpy()
        got = np.asarray(resize_bilinear_tf1(x, out_hw))
        assert got.shape == expected.shape
        # Measured: 0 (bit-identical) for every size here, both ranges.
        assert np.max(np.abs(got - expected)) <= 1e-5 * high


def test_differs_from_half_pixel_resize():
    # Guard against a silent switch to jax.image.resize (half-pixel centres).
    import jax
    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    half_pixel = np.asarray(jax.image.resize(x, (1, 299, 299, 3), "bilinear", antialias=False))
    assert np.max(np.abs(np.asarray(resize_bilinear_tf1(x, (299, 299))) - half_pixel)) > 0.1
