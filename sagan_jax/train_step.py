"""The compiled, data-parallel GAN train step: state, schedule, EMA, metrics.

One iteration follows the original (shared/SEED.md, Training): a G step (unless the
schedule in `sagan_jax.schedule` skips it), then a D step, all inside one compiled
function with no host round trip. Every training-mode forward pass advances the SN
power iteration and uses batch BN statistics, as in the original:

- G step: G(z, y') in training mode (G's BN statistics and `u`s advance), then
  D(G(z, y'), y') in training mode (D's `u`s advance once); only G is updated.
- D step: G(z2, y2') in training mode again (G's statistics advance again), then two
  separate D passes, on the real batch and then on the fakes, as the original did, so
  D's `u`s advance twice (three times per iteration with the G step); only D is updated.

A skipped G step (n_dis, D-only countdown) is a `lax.cond` branch not taken, except on
CPU, where it is computed and masked (see `_use_cond`); both give the same numbers.
The EMA of G's weights is updated on the device after each G update.

Data parallelism has pmap semantics: the step of `make_per_replica_step` sees its own
slice of the batch and averages gradients and losses with explicit `lax.pmean` over
`parallel.DATA_AXIS`. It runs as `jax.jit(jax.shard_map(...))` (replication checks off,
see `parallel.data_parallel`) and, unchanged, under `jax.pmap`. BN normalises with the
statistics of the replica's own slice (`train.bn_sync = False`, like the original's one
GPU at batch / N) or of the global batch (True); per-replica running averages are
averaged across replicas so the state stays replicated. SN's `u` needs no collective:
every replica runs the same power iteration on the same weights.

Noise: each example's `z` and fake label come from the step's key folded with the
example's *global* index (replica index x local batch + position), so every replica
draws its own noise, and a run gives the same numbers on 1 or N devices for the same
global batch (which the tests check) at a cost proportional to the local batch.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sagan_jax import losses, parallel, schedule
from sagan_jax.models import build_models

_DTYPES = ("float32", "bfloat16")
_G_COLLECTIONS = ["batch_stats", "spectral_norm"]
_D_COLLECTIONS = ["spectral_norm"]
_CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@struct.dataclass
class TrainState:
    """Everything that changes during training; replicated on the data mesh.

    Attributes:
      step: int32, iterations done (one D step each).
      g_params, d_params: float32 parameters of G and D.
      g_opt, d_opt: their Adam states (float32).
      g_state: G's {'batch_stats', 'spectral_norm'} (the latter only with SN in G).
      d_state: D's {'spectral_norm'}.
      ema_params: exponential moving average of `g_params` (its own buffers).
      ema_state: G's state for sampling with `ema_params`: BN running statistics
        averaged like the weights (as BigGAN's EMA averages buffers), SN `u`s copied.
      d_loss_window: float32 [schedule.window], the latest D losses, oldest first.
      d_only_left: int32, D-only iterations still to run (see `sagan_jax.schedule`).
    """

    step: jax.Array
    g_params: Any
    d_params: Any
    g_opt: Any
    d_opt: Any
    g_state: Any
    d_state: Any
    ema_params: Any
    ema_state: Any
    d_loss_window: jax.Array
    d_only_left: jax.Array


def scaled_learning_rates(config: Any) -> tuple[float, float]:
    """G and D learning rates after batch-size scaling.

    With `optim.lr_scaling == 'linear'` both rates are multiplied by
    `train.batch_size / optim.base_batch` (reference batch 256: x0.25 at 64, x0.5 at
    128, SEED.md's lrscale table); with 'none' they are used as given.
    """
    scaling = config.optim.lr_scaling
    if scaling == "none":
        factor = 1.0
    elif scaling == "linear":
        factor = config.train.batch_size / config.optim.base_batch
    else:
        raise ValueError(f"unknown optim.lr_scaling {scaling!r}; set it to 'none' or 'linear'.")
    return config.optim.g_lr * factor, config.optim.d_lr * factor


def _optimizers(config: Any) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    g_lr, d_lr = scaled_learning_rates(config)
    adam = functools.partial(optax.adam, b1=config.optim.b1, b2=config.optim.b2)
    return adam(g_lr), adam(d_lr)


def _models(config: Any, num_classes: int, channels: int, bn_axis_name: str | None = None):
    if config.model.dtype not in _DTYPES:
        raise ValueError(f"unknown model.dtype {config.model.dtype!r}; set it to one of {_DTYPES}.")
    return build_models(config.model, num_classes, channels, bn_axis_name)


def _num_label_classes(config: Any, num_classes: int) -> int:
    return num_classes if config.model.conditional else 0


def create_train_state(config: Any, num_classes: int, channels: int, key: jax.Array) -> TrainState:
    """A fresh state: initialised G and D, Adam states, EMA = a copy of G, empty schedule.

    Args:
      config: the full config (model, optim, schedule sections).
      num_classes: classes of the dataset (ignored when the model is unconditional).
      channels: image channels.
      key: PRNG key for the parameters and the initial SN vectors.

    Returns:
      A `TrainState` of ordinary arrays; put it on the mesh with
      `jax.device_put(state, parallel.replicated_sharding(mesh))`.
    """
    g, d = _models(config, num_classes, channels)
    n = _num_label_classes(config, num_classes)
    res = config.model.resolution
    z = jnp.zeros((2, config.model.z_dim), jnp.float32)
    x = jnp.zeros((2, res, res, channels), jnp.float32)
    y = jnp.zeros((2,), jnp.int32) if n else None

    def init(key):
        g_key, d_key = jax.random.split(key)
        return g.init({"params": g_key}, z, y), d.init({"params": d_key}, x, y)

    # Runs once, so its speed is irrelevant, while XLA's full LLVM optimisation of the
    # many initialisers (threefry each) took ~4x longer to compile on a 2-core CPU.
    g_vars, d_vars = jax.jit(init).lower(key).compile(compiler_options=_CHEAP_COMPILE)(key)
    g_params = g_vars.pop("params")
    d_params = d_vars.pop("params")
    g_tx, d_tx = _optimizers(config)
    copy = functools.partial(jax.tree.map, jnp.copy)
    return TrainState(
        step=jnp.int32(0),
        g_params=g_params,
        d_params=d_params,
        g_opt=g_tx.init(g_params),
        d_opt=d_tx.init(d_params),
        g_state=dict(g_vars),
        d_state=dict(d_vars),
        ema_params=copy(g_params),
        ema_state=copy(dict(g_vars)),
        d_loss_window=jnp.zeros((config.schedule.window,), jnp.float32),
        d_only_left=jnp.int32(0),
    )


def ema_update(ema: Any, new: Any, step: jax.Array, decay: float, start: int) -> Any:
    """`decay * ema + (1 - decay) * new` once `step >= start`; before that a copy of `new`."""
    return jax.tree.map(
        lambda e, p: jnp.where(step >= start, decay * e + (1.0 - decay) * p, p), ema, new
    )


def example_noise(key: jax.Array, indices: jax.Array, z_dim: int, num_classes: int):
    """`z ~ N(0, I)` and uniform fake labels, one draw per (global) example index.

    Args:
      key: the key of this draw (shared by all replicas).
      indices: int32 [n], global indices of this replica's examples.
      z_dim: latent size.
      num_classes: classes for the labels; 0 gives labels None.

    Returns:
      `(z float32 [n, z_dim], labels int32 [n] or None)`.
    """
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(indices)
    z = jax.vmap(lambda k: jax.random.normal(k, (z_dim,), jnp.float32))(keys[:, 0])
    if not num_classes:
        return z, None
    return z, jax.vmap(lambda k: jax.random.randint(k, (), 0, num_classes, jnp.int32))(keys[:, 1])


def _replica_indices(local_batch: int) -> jax.Array:
    return lax.axis_index(parallel.DATA_AXIS) * local_batch + jnp.arange(local_batch)


def _attention_gammas(g_params: Any, d_params: Any) -> dict[str, jax.Array]:
    """Each attention block's gamma, named 'gamma/g_<block>' or 'gamma/d_<block>'."""
    out = {}
    for net, params in (("g", g_params), ("d", d_params)):
        for path, value in traverse_util.flatten_dict(params).items():
            if path[-1] == "gamma" and len(path) == 2:
                out[f"gamma/{net}_{path[0]}"] = value
    return out


def _masked_cond(pred: jax.Array, true_fn: Callable, false_fn: Callable, *operands):
    """`lax.cond`'s result computed without a conditional: both branches run, `pred` selects."""
    taken, skipped = true_fn(*operands), false_fn(*operands)
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), taken, skipped)


def _use_cond(skip_with_cond: bool | None) -> bool:
    """Whether a skipped G step is skipped with `lax.cond` (None: everywhere but CPU).

    `lax.cond` costs nothing for a skipped G step, but on CPU XLA runs convolutions
    inside a conditional's branch ~20x slower (the digits quick start's step: 6.4 s
    with `lax.cond`, 0.32 s masked, measured on a 2-core CPU), so there both branches
    run and the result is selected: the same values at the cost of the G step.
    """
    return jax.default_backend() != "cpu" if skip_with_cond is None else skip_with_cond


def make_per_replica_step(config: Any, num_classes: int, channels: int,
                          skip_with_cond: bool | None = None) -> Callable:
    """The step of one replica, with collectives over `parallel.DATA_AXIS`.

    Run it with `make_train_step` (shard_map) or under `jax.pmap(axis_name=DATA_AXIS)`.
    `skip_with_cond`: skip G steps with `lax.cond` (True) or by masking (False); None
    chooses by backend (see `_use_cond`).

    Returns:
      `step(state, batch, rng) -> (state, metrics)`. `batch` is this replica's
      {'image' float32 [b, H, W, C] in [-1, 1], 'label' int32 [b]}; `rng` is the run's
      key, the same every step (the step folds in `state.step` and the example index).
    """
    schedule.check_config(config.schedule)
    bn_sync = config.train.bn_sync
    g, d = _models(config, num_classes, channels, parallel.DATA_AXIS if bn_sync else None)
    g_tx, d_tx = _optimizers(config)
    d_loss_fn, g_loss_fn = losses.get(config.train.loss)
    n_labels = _num_label_classes(config, num_classes)
    z_dim = config.model.z_dim
    decay, ema_start = config.train.ema_decay, config.train.ema_start
    pmean = functools.partial(lax.pmean, axis_name=parallel.DATA_AXIS)
    cond = lax.cond if _use_cond(skip_with_cond) else _masked_cond

    def run_g(g_params, g_state, z, y):
        fake, upd = g.apply({"params": g_params, **g_state}, z, y, train=True, mutable=_G_COLLECTIONS)
        if not bn_sync and "batch_stats" in upd:
            # Per-replica batch statistics give per-replica running averages; their mean
            # keeps the replicated state identical on every device.
            upd = {**upd, "batch_stats": pmean(upd["batch_stats"])}
        return fake, {**g_state, **upd}

    def run_d(d_params, d_state, x, y):
        logits, upd = d.apply({"params": d_params, **d_state}, x, y, train=True, mutable=_D_COLLECTIONS)
        return logits, {**d_state, **upd}

    def g_step(state, z, y):
        def loss_fn(g_params):
            fake, g_state = run_g(g_params, state.g_state, z, y)
            logits, d_state = run_d(state.d_params, state.d_state, fake, y)
            return g_loss_fn(logits), (g_state, d_state)

        (loss, (g_state, d_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
        grads = pmean(grads)
        updates, g_opt = g_tx.update(grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)
        state = state.replace(g_params=g_params, g_opt=g_opt, g_state=g_state, d_state=d_state)
        return state, pmean(loss), optax.tree.norm(grads)

    def skip_g_step(state, z, y):
        return state, jnp.float32(0.0), jnp.float32(0.0)

    def d_step(state, batch, z, y_fake):
        fake, g_state = run_g(state.g_params, state.g_state, z, y_fake)
        fake = lax.stop_gradient(fake)
        y_real = batch["label"] if n_labels else None

        def loss_fn(d_params):
            real_logits, d_state = run_d(d_params, state.d_state, batch["image"], y_real)
            fake_logits, d_state = run_d(d_params, lax.stop_gradient(d_state), fake, y_fake)
            loss = d_loss_fn(real_logits, fake_logits)
            return loss, (d_state, jnp.mean(real_logits), jnp.mean(fake_logits))

        (loss, (d_state, d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
        grads = pmean(grads)
        updates, d_opt = d_tx.update(grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)
        state = state.replace(d_params=d_params, d_opt=d_opt, g_state=g_state, d_state=d_state)
        stats = dict(d_loss=loss, d_real=d_real, d_fake=d_fake, d_grad_norm=optax.tree.norm(grads))
        return state, pmean(stats)

    def update_ema(state):
        ema_state = {**state.g_state}
        ema_state["batch_stats"] = ema_update(
            state.ema_state["batch_stats"], state.g_state["batch_stats"], state.step, decay, ema_start
        )
        ema_params = ema_update(state.ema_params, state.g_params, state.step, decay, ema_start)
        return state.replace(ema_params=ema_params, ema_state=ema_state)

    def step_fn(state: TrainState, batch: dict, rng: jax.Array):
        key_g, key_d = jax.random.split(jax.random.fold_in(rng, state.step))
        indices = _replica_indices(batch["image"].shape[0])
        z_g, y_g = example_noise(key_g, indices, z_dim, n_labels)
        z_d, y_d = example_noise(key_d, indices, z_dim, n_labels)

        g_now = schedule.g_step_now(state.step, state.d_only_left, config.schedule)
        state, g_loss, g_grad_norm = cond(g_now, g_step, skip_g_step, state, z_g, y_g)
        state, stats = d_step(state, batch, z_d, y_d)
        # The EMA follows G's updates (as BigGAN's), so its horizon counts G steps.
        state = cond(g_now, update_ema, lambda s: s, state)

        window, d_only_left = schedule.update(
            state.d_loss_window, state.d_only_left, stats["d_loss"], state.step, config.schedule
        )
        state = state.replace(step=state.step + 1, d_loss_window=window, d_only_left=d_only_left)
        metrics = dict(
            stats, g_loss=g_loss, g_grad_norm=g_grad_norm, g_updated=g_now.astype(jnp.float32),
            d_only_left=d_only_left.astype(jnp.float32),
            **_attention_gammas(state.g_params, state.d_params),
        )
        return state, metrics

    return step_fn


def make_train_step(config: Any, num_classes: int, channels: int, mesh: Mesh,
                    skip_with_cond: bool | None = None) -> Callable:
    """The compiled data-parallel step over `mesh`; it donates the state.

    Args:
      config: the full config.
      num_classes: classes of the dataset.
      channels: image channels.
      mesh: the 1-D data mesh (`parallel.create_mesh()`).
      skip_with_cond: see `make_per_replica_step` (None: by backend).

    Returns:
      `step(state, batch, rng) -> (state, metrics)`: `state` replicated, `batch` the
      global batch sharded on its first axis, `rng` the run's key (the same every
      step); `metrics` are scalars (`g_loss` and `g_grad_norm` are 0 where
      `g_updated` is 0).
    """
    parallel.check_divisible(config.train.batch_size, mesh)
    fn = make_per_replica_step(config, num_classes, channels, skip_with_cond)
    return parallel.data_parallel(
        fn, mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()), out_specs=(P(), P()), donate_argnums=(0,)
    )


def make_generate_fn(config: Any, num_classes: int, channels: int, mesh: Mesh) -> Callable:
    """Eval-mode G on the mesh (BN running statistics, SN `u`s read, not advanced).

    Returns:
      `generate(g_params, g_state, key, labels) -> images` float32 [-1, 1] NHWC, one per
      label (their number a multiple of the mesh size). Pass `state.ema_params,
      state.ema_state` or `state.g_params, state.g_state`. Example i's `z` depends only
      on `key` and i, not on the number of devices. Unconditional models ignore labels.
    """
    g, _ = _models(config, num_classes, channels)
    n_labels = _num_label_classes(config, num_classes)

    def per_replica(g_params, g_state, key, labels):
        z, _ = example_noise(key, _replica_indices(labels.shape[0]), config.model.z_dim, 0)
        return g.apply({"params": g_params, **g_state}, z, labels if n_labels else None)

    fn = parallel.data_parallel(
        per_replica, mesh, in_specs=(P(), P(), P(), P(parallel.DATA_AXIS)), out_specs=P(parallel.DATA_AXIS)
    )

    def generate(g_params, g_state, key, labels):
        n, devices = labels.shape[0], mesh.devices.size
        if n % devices:
            raise ValueError(f"{n} labels cannot be split over {devices} devices; pass a multiple of {devices}.")
        return fn(g_params, g_state, key, jnp.asarray(labels, jnp.int32))

    return generate
