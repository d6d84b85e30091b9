"""Sample grids (class per column) and slerp, against hand-computed values."""
import types

import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax import visualize


def test_grid_labels_put_one_class_per_column():
    np.testing.assert_array_equal(visualize.grid_labels(10, 2, 4), [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(visualize.grid_labels(3, 2, 16), [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(visualize.grid_labels(0, 3, 16), np.zeros(9))


def test_to_grid_places_and_scales_pixels():
    images = np.stack([np.full((2, 2, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = visualize.to_grid(images, cols=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 1) and grid.dtype == np.uint8
    assert (grid[1:3, 1:3] == 0).all()  # -1 -> 0, row 0 col 0
    assert (grid[1:3, 4:6] == 128).all()  # 0 -> 127.5 rounds to 128, row 0 col 1
    assert (grid[4:6, 1:3] == 255).all()  # 1 -> 255, row 1 col 0
    assert (grid[4:6, 4:6] == 255).all() and (grid[0] == 255).all()  # padding is white


def test_class_grid_gives_each_class_a_column():
    def apply_fn(z, labels):
        assert z.shape == (6, 8)
        return jnp.broadcast_to((labels[:, None, None, None] / 4.0) - 1.0, (len(labels), 2, 2, 1))

    gan = types.SimpleNamespace(num_classes=3, noise=lambda key, i: (jnp.zeros((len(i), 8)), None))
    grid = visualize.class_grid(apply_fn, gan, jax.random.key(0), 2, 10)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    for row in (1, 4):
        np.testing.assert_array_equal(grid[row, [1, 4, 7], 0], [0, 32, 64])  # classes 0, 1, 2


def test_slerp_keeps_endpoints_and_norm():
    z0, z1 = jax.random.normal(jax.random.key(0), (2, 128))
    path = visualize.interpolate(z0, z1, 5)
    np.testing.assert_allclose(path[0], z0, atol=1e-5)
    np.testing.assert_allclose(path[-1], z1, atol=1e-5)
    # Slerp between equal-norm vectors stays on their sphere.
    u0, u1 = z0 / jnp.linalg.norm(z0), z1 / jnp.linalg.norm(z1)
    np.testing.assert_allclose(jnp.linalg.norm(visualize.interpolate(u0, u1, 7), axis=1), 1.0,
                               atol=1e-5)
