"""Losses against values computed by hand."""
import math

import jax.numpy as jnp
import pytest

from sagan_jax import losses

REAL = jnp.array([2.0, 0.5, -1.0])
FAKE = jnp.array([-2.0, 0.0, 1.5])


def test_hinge_values():
    d_loss, g_loss = losses.get("hinge")
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3; relu(1 + fake) = [0, 1, 2.5] -> 3.5/3.
    assert float(d_loss(REAL, FAKE)) == pytest.approx(2.5 / 3 + 3.5 / 3, rel=1e-6)
    assert float(g_loss(FAKE)) == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3, rel=1e-6)


def test_non_saturating_values():
    d_loss, g_loss = losses.get("non_saturating")
    def sp(t):  # softplus
        return math.log1p(math.exp(t))

    expected_d = (sp(-2.0) + sp(-0.5) + sp(1.0)) / 3 + (sp(-2.0) + sp(0.0) + sp(1.5)) / 3
    expected_g = (sp(2.0) + sp(0.0) + sp(-1.5)) / 3
    assert float(d_loss(REAL, FAKE)) == pytest.approx(expected_d, rel=1e-6)
    assert float(g_loss(FAKE)) == pytest.approx(expected_g, rel=1e-6)
    # -log(sigmoid(t)) == softplus(-t): the textbook form.
    assert float(g_loss(jnp.array([0.3]))) == pytest.approx(-math.log(1 / (1 + math.exp(-0.3))), rel=1e-6)


def test_unknown_loss_is_one_clear_error():
    with pytest.raises(ValueError, match="train.loss"):
        losses.get("wasserstein")


def test_mode_seeking_values():
    """Pair (0, 1): images 1 apart everywhere, noise 2 apart -> ratio 0.5; pair (2, 3):
    images 0.5 apart in half the pixels (mean 0.25), noise 0.5 apart -> ratio 0.5 too;
    a collapsed pair (same image) costs 1 / eps."""
    z = jnp.array([[0.0, 0.0], [2.0, -2.0], [1.0, 1.0], [1.5, 0.5]])
    images = jnp.zeros((4, 2, 2, 1)).at[1].set(1.0).at[3, 0].set(0.5)
    assert float(losses.mode_seeking_loss(images, z)) == pytest.approx(1 / (0.5 + 1e-5), rel=1e-6)
    collapsed = images.at[1].set(0.0)
    expected = (1 / 1e-5 + 1 / (0.5 + 1e-5)) / 2
    assert float(losses.mode_seeking_loss(collapsed, z)) == pytest.approx(expected, rel=1e-6)
    # Each pair's term is its own: any split into whole pairs averages to the same value.
    halves = [losses.mode_seeking_loss(collapsed[i:i + 2], z[i:i + 2]) for i in (0, 2)]
    assert float(sum(halves) / 2) == pytest.approx(expected, rel=1e-6)
