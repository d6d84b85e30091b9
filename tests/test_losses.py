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
