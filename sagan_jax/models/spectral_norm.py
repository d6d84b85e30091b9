"""Spectral normalization (Miyato et al. 2018): the standard form and the original's.

A weight is divided by an estimate `sigma` of its top singular value. As in PyTorch,
the weight is seen as a matrix `A` of shape (out, -1): a dense kernel (in, out) as its
transpose, a conv kernel (kh, kw, in, out) as the transpose of (kh * kw * in, out) (the
same singular values as PyTorch's (out, in * kh * kw) view; only the order of `v`'s
entries differs), and a class-embedding table (num, features) as it is, like PyTorch's
`nn.Embedding`, whose first axis is the one spectral norm treats as `out` (in 'original'
mode the embedding is the original's linear map, read as a dense kernel: see
`layers.SNEmbed`). The state lives in the `spectral_norm` collection, separate from
BatchNorm's `batch_stats`, so that each can be made mutable, synced or checkpointed on
its own.

Two modes (`SNSettings.mode`):

- 'standard' is exactly `torch.nn.utils.spectral_norm`. The collection holds `u`
  (length out) and `v` (A's other dimension, entries in our memory order), both
  l2-normalised random vectors at initialisation. A training pass runs `n_iters`
  power steps with the weight held constant,

      v = normalize(A^T u);  u = normalize(A v);   normalize(x) = x / max(||x||, eps)

  stores the new `u` and `v`, and uses sigma = u^T A v, with `u`, `v` constants for the
  gradient (which flows through `A`). Outside training the stored `u`, `v` give
  sigma = u^T A v with no iteration (so before the first training pass sigma comes
  from two unrelated random vectors, as in PyTorch). Initialisation does not advance
  the state.
- 'original' is the SN of the original code (a PyTorch port of TF-Hub's BigGAN, see
  docs/original.md). The collection holds one random unit vector `u` (length out)
  that is never written back. Every pass, training and eval alike, runs one power step
  from it, with gradients flowing through the step:

      v = n(A^T u0);  u = n(A v);  sigma = u^T A v;   n(x) = x / (||x|| + 1e-8)

  i.e. sigma = ||A A^T u0|| / ||A^T u0|| up to the 1e-8, which is at most the top
  singular value (a single step from a random vector underestimates it, so the
  normalised weight keeps a spectral norm above 1). `n_iters` must be 1; `eps` does
  not apply.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

SN_COLLECTION = "spectral_norm"
SN_MODES = ("standard", "original")
# The original's l2-normalisation guard, added to the norm (not a lower bound on it).
ORIGINAL_EPS = 1e-8
# Mat-vec products in full float32, as PyTorch's (accelerators may otherwise use TF32).
_dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass(frozen=True)
class SNSettings:
    """How a layer's spectral norm is computed.

    Attributes:
      mode: 'standard' (`torch.nn.utils.spectral_norm`) or 'original' (the original
        code's, see the module docstring).
      n_iters: power steps per training pass ('standard' only).
      eps: lower bound on the norms in `normalize` ('standard' only).
    """

    mode: str = "standard"
    n_iters: int = 1
    eps: float = 1e-12

    def __post_init__(self):
        if self.mode not in SN_MODES:
            raise ValueError(f"unknown sn_mode {self.mode!r}; set model.sn_mode to one of {SN_MODES}.")
        if self.n_iters < 1:
            raise ValueError(f"sn_iters is {self.n_iters}; set model.sn_iters to 1 or more.")
        if self.mode == "original" and self.n_iters != 1:
            raise ValueError("sn_mode='original' runs the original's single power step; "
                             "set model.sn_iters=1.")


def as_matrix(weight: jax.Array, out_axis: int = -1) -> jax.Array:
    """The weight as PyTorch's spectral norm sees it, a float32 (out, -1) matrix.

    Args:
      weight: a kernel whose last axis is the output axis (`out_axis=-1`), or an
        embedding table (num, features) (`out_axis=0`, PyTorch's `nn.Embedding`).
      out_axis: 0 or -1.
    """
    weight = weight.astype(jnp.float32)
    if out_axis == 0:
        return weight.reshape(weight.shape[0], -1)
    return weight.reshape(-1, weight.shape[-1]).T


def torch_normalize(x: jax.Array, eps: float) -> jax.Array:
    """`torch.nn.functional.normalize` of a vector: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def original_normalize(x: jax.Array) -> jax.Array:
    """The original's `l2normalize`: x / (||x|| + 1e-8)."""
    return x / (jnp.linalg.norm(x) + ORIGINAL_EPS)


def power_iteration(
    a: jax.Array, u: jax.Array, n_iters: int = 1, eps: float = 1e-12
) -> tuple[jax.Array, jax.Array]:
    """`n_iters` power steps of `torch.nn.utils.spectral_norm`, without gradient.

    Args:
      a: the weight as an (out, -1) matrix (see `as_matrix`).
      u: the current left singular vector estimate, shape (out,).
      n_iters: steps to run (at least 1).
      eps: lower bound on the norms.

    Returns:
      `(u, v)` after the last step `v = normalize(A^T u); u = normalize(A v)`.
    """
    if n_iters < 1:
        raise ValueError(f"power_iteration needs n_iters >= 1, got {n_iters}.")
    a = jax.lax.stop_gradient(a)
    u = jax.lax.stop_gradient(u)
    for _ in range(n_iters):
        v = torch_normalize(_dot(a.T, u), eps)
        u = torch_normalize(_dot(a, v), eps)
    return u, v


def original_sigma(a: jax.Array, u0: jax.Array) -> jax.Array:
    """The original's sigma: one power step from `u0`, differentiable in `a`."""
    v = original_normalize(_dot(a.T, u0))
    u = original_normalize(_dot(a, v))
    return _dot(u, _dot(a, v))


def spectral_normalize(
    weight: jax.Array,
    state: dict[str, jax.Array],
    settings: SNSettings = SNSettings(),
    *,
    update: bool,
    out_axis: int = -1,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """Divides `weight` by its spectral norm estimate.

    Args:
      weight: the raw weight (see `as_matrix` for `out_axis`).
      state: the layer's `spectral_norm` variables: {'u', 'v'} ('standard') or
        {'u'} ('original').
      settings: mode and, for 'standard', the power steps and eps.
      update: a training pass ('standard' iterates and returns the new state).
      out_axis: 0 for an embedding table, -1 for a kernel.

    Returns:
      `(weight / sigma, new_state, sigma)`, in float32; `new_state` is `state` unless
      'standard' iterated.
    """
    a = as_matrix(weight, out_axis)
    if settings.mode == "original":
        sigma = original_sigma(a, state["u"])
    else:
        u, v = state["u"], state["v"]
        if update:
            u, v = power_iteration(a, u, settings.n_iters, settings.eps)
            state = {"u": u, "v": v}
        sigma = _dot(u, _dot(a, v))
    return weight.astype(jnp.float32) / sigma, state, sigma


def _random_unit_vector(module: nn.Module, length: int, settings: SNSettings) -> jax.Array:
    """A normal vector normalised as the mode's code does (PyTorch's way of drawing it)."""
    x = jax.random.normal(module.make_rng("params"), (length,))
    return original_normalize(x) if settings.mode == "original" else torch_normalize(x, settings.eps)


def normalized_param(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    init: Callable[..., Any],
    *,
    enabled: bool,
    update: bool,
    settings: SNSettings = SNSettings(),
    out_axis: int = -1,
) -> jax.Array:
    """Creates parameter `name` in `module` and returns it spectrally normalized.

    Call from inside a compact `module`. The module gets its SN state (`u`, and `v` in
    'standard' mode) in the `spectral_norm` collection; none when `enabled` is False,
    in which case the raw weight comes back.

    Args:
      module: the Flax module that owns the parameter.
      name: the parameter's name.
      shape: its shape.
      init: its initializer.
      enabled: whether to normalize.
      update: a training pass (advances the 'standard' state).
      settings: the SN mode and its parameters.
      out_axis: the weight's output axis as PyTorch's SN sees it (0: embedding table).
    """
    weight = module.param(name, init, shape, jnp.float32)
    if not enabled:
        return weight
    out = shape[out_axis]
    lengths = {"u": out, "v": weight.size // out} if settings.mode == "standard" else {"u": out}
    variables = {
        key: module.variable(SN_COLLECTION, key, _random_unit_vector, module, length, settings)
        for key, length in lengths.items()
    }
    # Initialisation must not advance the state: the first training pass does.
    advance = update and not module.is_initializing()
    w_sn, state, _ = spectral_normalize(
        weight, {k: var.value for k, var in variables.items()}, settings, update=advance,
        out_axis=out_axis,
    )
    if advance and settings.mode == "standard":
        for key, var in variables.items():
            var.value = state[key]
    return w_sn
