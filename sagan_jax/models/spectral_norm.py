"""Spectral normalization (Miyato et al. 2018) with its own power-iteration state.

A weight is viewed as a matrix `W` of shape (-1, out): a dense kernel (in, out) as it
is, a conv kernel (kh, kw, in, out) as (kh * kw * in, out), an embedding table
(num, features) as it is. One vector `u` (length `out`) per weight persists in the
`spectral_norm` collection, separate from BatchNorm's `batch_stats`, so that each can be
made mutable, synced or checkpointed on its own.

The power iteration (as in the original SNGAN/SAGAN code, one step per training forward
pass) refines `u` towards the top right singular vector of `W`:

    v = normalize(W u);  u = normalize(W^T v);  sigma = v^T W u

and the layer uses W / sigma. `u` and `v` are constants for the gradient. Outside
training `u` is read, never advanced, and sigma comes from the stored `u`.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

SN_COLLECTION = "spectral_norm"


def _normalize(x: jax.Array, eps: float) -> jax.Array:
    return x / (jnp.linalg.norm(x) + eps)


def power_iteration(
    w_mat: jax.Array, u: jax.Array, n_iters: int = 1, eps: float = 1e-12
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Runs `n_iters` power-iteration steps on a (rows, out) matrix.

    Args:
      w_mat: the weight as a matrix, shape (rows, out).
      u: the current estimate of the top right singular vector, shape (out,).
      n_iters: iterations to run (0 keeps `u` and only evaluates sigma).
      eps: added to norms to avoid dividing by zero.

    Returns:
      `(sigma, u, v)`: the estimate of the top singular value and the new singular
      vectors, all without gradient.
    """
    w_mat = jax.lax.stop_gradient(w_mat)
    u = jax.lax.stop_gradient(u)
    for _ in range(n_iters):
        v = _normalize(w_mat @ u, eps)
        u = _normalize(w_mat.T @ v, eps)
    v = _normalize(w_mat @ u, eps)
    return v @ w_mat @ u, u, v


def spectral_normalize(
    weight: jax.Array, u: jax.Array, n_iters: int = 1, eps: float = 1e-12
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Divides `weight` by its spectral norm estimated from `u`.

    Args:
      weight: any array whose last axis is the output axis.
      u: persistent vector of length `weight.shape[-1]`.
      n_iters: power-iteration steps to run now (0 outside training).
      eps: numerical guard for the normalizations.

    Returns:
      `(weight / sigma, new_u, sigma)`. The gradient flows through `weight` in both
      numerator and `sigma = v^T W u` (with `u`, `v` constant), as in
      `torch.nn.utils.spectral_norm`.
    """
    w_mat = weight.reshape(-1, weight.shape[-1]).astype(jnp.float32)
    _, u, v = power_iteration(w_mat, u, n_iters, eps)
    sigma = v @ w_mat @ u
    return (w_mat / sigma).reshape(weight.shape), u, sigma


def normalized_param(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    init: Callable[..., Any],
    *,
    enabled: bool,
    update: bool,
    n_iters: int = 1,
    eps: float = 1e-12,
) -> jax.Array:
    """Creates parameter `name` in `module` and returns it spectrally normalized.

    Call from inside a compact `module`. The module gets a `u` variable in the
    `spectral_norm` collection (none when `enabled` is False, in which case the raw
    weight comes back).

    Args:
      module: the Flax module that owns the parameter.
      name: the parameter's name.
      shape: its shape; the last axis is the output axis.
      init: its initializer.
      enabled: whether to normalize.
      update: advance `u` by `n_iters` steps (training) or only read it.
      n_iters: power-iteration steps per training forward pass.
      eps: numerical guard.
    """
    weight = module.param(name, init, shape, jnp.float32)
    if not enabled:
        return weight
    u_var = module.variable(
        SN_COLLECTION,
        "u",
        lambda: _normalize(jax.random.normal(module.make_rng("params"), (shape[-1],)), eps),
    )
    # Initialisation must not advance u: the first training step does.
    advance = update and not module.is_initializing()
    w_sn, u, _ = spectral_normalize(weight, u_var.value, n_iters if advance else 0, eps)
    if advance:
        u_var.value = u
    return w_sn
