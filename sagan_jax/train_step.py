"""The compiled, data-parallel GAN train step: state, update rule, EMA, metrics.

One iteration follows the original (docs/original.md, Training): a G step (unless the
update rule in `sagan_jax.update_rule` skips it), then a D step, all inside one compiled
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
statistics of the replica's own slice (`train.bn_sync = False`, like the original's
`DataParallel` runs at 96 px) or of the global batch (True, like its one-GPU CIFAR-10
and STL-10 runs); per-replica running averages are averaged across replicas so the
state stays replicated. SN's `u` needs no collective:
every replica runs the same power iteration on the same weights.

Noise: each example's `z` and fake label come from `GAN.noise` with the step's key and
the example's *global* index (`sampling.example_indices`), so every replica
draws its own noise, and a run gives the same numbers on 1 or N devices for the same
global batch (which the tests check) at a cost proportional to the local batch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct, traverse_util
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sagan_jax import augment, losses, parallel, sampling, update_rule
from sagan_jax.gan import GAN

_G_COLLECTIONS = ["batch_stats", "spectral_norm"]
_D_COLLECTIONS = ["spectral_norm"]
# XLA:CPU's cheap settings for the initialisation (see `create_train_state`).
_CHEAP_CPU_COMPILE = {"xla_backend_optimization_level": 0,
                      "xla_llvm_disable_expensive_passes": True}
# `train.cpu_convolutions`'s choices. XLA:CPU's option lists the fusion kinds it hands to
# YNNPACK (convolutions among them in jaxlib 0.10-0.12); empty, it hands none, and its
# convolutions run through Eigen.
CPU_CONVOLUTIONS = ("default", "eigen")
_YNNPACK_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"


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
      d_loss_window: float32 [update_rule.window], the latest D losses, oldest first.
      d_only_left: int32, D-only iterations still to run (see `sagan_jax.update_rule`).
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


def create_train_state(gan: GAN, config: Any, key: jax.Array) -> TrainState:
    """A fresh state: initialised G and D, Adam states, EMA = a copy of G, empty update rule.

    Args:
      gan: the networks and optimizers (`gan.build`).
      config: the full config (its `update_rule.window`).
      key: PRNG key for the parameters and the initial SN vectors.

    Returns:
      A `TrainState` of ordinary arrays; put it on the mesh with
      `jax.device_put(state, parallel.replicated_sharding(mesh))`.
    """
    z = jnp.zeros((2, gan.z_dim), jnp.float32)
    x = jnp.zeros((2, *gan.image_shape), jnp.float32)
    y = gan.labels_or_none(jnp.zeros((2,), jnp.int32))

    def init(key):
        g_key, d_key = jax.random.split(key)
        return (gan.generator.init({"params": g_key}, z, y),
                gan.discriminator.init({"params": d_key}, x, y))

    # Runs once, so its speed is irrelevant, while XLA:CPU's full LLVM optimisation of
    # the many initialisers (threefry each) compiles ~2.5x longer (the digits quick
    # start on a 2-core CPU: 16-35 s instead of 7-14 s). Other backends compile as usual.
    options = _CHEAP_CPU_COMPILE if jax.default_backend() == "cpu" else None
    g_vars, d_vars = jax.jit(init).lower(key).compile(compiler_options=options)(key)
    g_params = g_vars.pop("params")
    d_params = d_vars.pop("params")
    copy = functools.partial(jax.tree.map, jnp.copy)
    return TrainState(
        step=jnp.int32(0),
        g_params=g_params,
        d_params=d_params,
        g_opt=gan.g_tx.init(g_params),
        d_opt=gan.d_tx.init(d_params),
        g_state=dict(g_vars),
        d_state=dict(d_vars),
        ema_params=copy(g_params),
        ema_state=copy(dict(g_vars)),
        d_loss_window=jnp.zeros((config.update_rule.window,), jnp.float32),
        d_only_left=jnp.int32(0),
    )


def ema_update(ema: Any, new: Any, step: jax.Array, decay: float, start: int) -> Any:
    """`decay * ema + (1 - decay) * new` once `step >= start`; before that a copy of `new`."""
    return jax.tree.map(
        lambda e, p: jnp.where(step >= start, decay * e + (1.0 - decay) * p, p), ema, new
    )


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


def make_per_replica_step(gan: GAN, config: Any, *, steps_per_epoch: int,
                          skip_with_cond: bool | None = None) -> Callable:
    """The step of one replica, with collectives over `parallel.DATA_AXIS`.

    Run it with `make_train_step` (shard_map) or under `jax.pmap(axis_name=DATA_AXIS)`.

    Args:
      gan: the networks and optimizers (`gan.build`).
      config: the full config (update_rule, train sections).
      steps_per_epoch: global batches per epoch (the original's D-loss rule starts
        afresh each epoch).
      skip_with_cond: skip G steps with `lax.cond` (True) or by masking (False); None
        chooses by backend (see `_use_cond`).

    Returns:
      `step(state, batch, rng) -> (state, metrics)`. `batch` is this replica's
      {'image' float32 [b, H, W, C] in [-1, 1], 'label' int32 [b]}; `rng` is the run's
      key, the same every step (the step folds in `state.step` and the example index).
    """
    update_rule.check_config(config.update_rule)
    rule = config.update_rule
    bn_sync = config.train.bn_sync
    g, d = gan.generator, gan.discriminator
    d_loss_fn, g_loss_fn = losses.get(config.train.loss)
    decay, ema_start = config.train.ema_decay, config.train.ema_start
    mode_seeking = config.train.mode_seeking
    policy = augment.parse(config.train.augment)
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

    def d_view(images, key):
        """What D sees: `images` through the DiffAugment policy (unchanged without one)."""
        return augment.augment(images, key, sampling.example_indices(images.shape[0]), policy)

    def g_step(state, z, y, aug_key):
        def loss_fn(g_params):
            fake, g_state = run_g(g_params, state.g_state, z, y)
            logits, d_state = run_d(state.d_params, state.d_state, d_view(fake, aug_key), y)
            adversarial = g_loss_fn(logits)
            seeking = losses.mode_seeking_loss(fake, z) if mode_seeking else jnp.float32(0.0)
            return adversarial + mode_seeking * seeking, (g_state, d_state, adversarial, seeking)

        (_, (g_state, d_state, loss, seeking)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.g_params)
        grads = pmean(grads)
        updates, g_opt = gan.g_tx.update(grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)
        state = state.replace(g_params=g_params, g_opt=g_opt, g_state=g_state, d_state=d_state)
        return state, pmean(loss), pmean(seeking), optax.tree.norm(grads)

    def skip_g_step(state, z, y, aug_key):
        return state, jnp.float32(0.0), jnp.float32(0.0), jnp.float32(0.0)

    def d_step(state, batch, z, y_fake, aug_key):
        fake, g_state = run_g(state.g_params, state.g_state, z, y_fake)
        fake = d_view(lax.stop_gradient(fake), jax.random.fold_in(aug_key, 1))
        real = d_view(batch["image"], aug_key)
        y_real = gan.labels_or_none(batch["label"])

        def loss_fn(d_params):
            real_logits, d_state = run_d(d_params, state.d_state, real, y_real)
            fake_logits, d_state = run_d(d_params, lax.stop_gradient(d_state), fake, y_fake)
            loss = d_loss_fn(real_logits, fake_logits)
            return loss, (d_state, jnp.mean(real_logits), jnp.mean(fake_logits))

        (loss, (d_state, d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
        grads = pmean(grads)
        updates, d_opt = gan.d_tx.update(grads, state.d_opt, state.d_params)
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
        step_key = jax.random.fold_in(rng, state.step)
        key_g, key_d = jax.random.split(step_key)
        aug_g, aug_d = jax.random.split(jax.random.fold_in(step_key, 1))
        local_batch = batch["image"].shape[0]
        indices = sampling.example_indices(local_batch)
        z_g, y_g = gan.noise(key_g, indices)
        if mode_seeking:
            if local_batch % 2:
                raise ValueError(
                    f"train.mode_seeking pairs the examples on each device, but a device "
                    f"gets {local_batch}; set --config.train.batch_size to an even "
                    f"multiple of the device count.")
            if y_g is not None:  # G's pairs (2k, 2k + 1) share a label.
                y_g = jnp.repeat(y_g[0::2], 2)
        z_d, y_d = gan.noise(key_d, indices)

        g_now = update_rule.g_step_now(state.step, state.d_only_left, rule, steps_per_epoch)
        state, g_loss, g_seeking, g_grad_norm = cond(g_now, g_step, skip_g_step, state, z_g, y_g,
                                                     aug_g)
        state, stats = d_step(state, batch, z_d, y_d, aug_d)
        # The EMA follows G's updates (as BigGAN's), so its horizon counts G steps.
        state = cond(g_now, update_ema, lambda s: s, state)

        window, d_only_left = update_rule.update(
            state.d_loss_window, state.d_only_left, stats["d_loss"], state.step, rule,
            steps_per_epoch)
        state = state.replace(step=state.step + 1, d_loss_window=window, d_only_left=d_only_left)
        metrics = dict(
            stats, g_loss=g_loss, g_grad_norm=g_grad_norm, g_updated=g_now.astype(jnp.float32),
            d_only_left=d_only_left.astype(jnp.float32),
            **_attention_gammas(state.g_params, state.d_params),
        )
        if mode_seeking:
            metrics["g_mode_seeking"] = g_seeking
        return state, metrics

    return step_fn


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """`make_train_step`'s step: `count` becomes an int32 array whatever its Python
    type, so a Python int and an array run the same executable (no retracing)."""

    compiled: Callable

    def __call__(self, state: TrainState, batches: dict, rng: jax.Array, count) -> tuple:
        return self.compiled(state, batches, rng, np.int32(count))

    def lower(self, state: TrainState, batches: dict, rng: jax.Array, count):
        """`jax.jit`'s `lower` for these arguments."""
        return self.compiled.lower(state, batches, rng, np.int32(count))


def compiler_options(config: Any, mesh: Mesh) -> dict[str, str] | None:
    """XLA options of the step's compilation for `train.cpu_convolutions` (None: XLA's).

    'eigen' on a CPU mesh turns YNNPACK off, so the convolutions run through Eigen: the
    faster choice for small ones (the digits quick start's step), the slower for large
    ones (benchmarks/RESULTS.md). Elsewhere, or where this jaxlib has no such option
    (a warning says so), the step compiles with XLA's defaults.

    Raises:
      ValueError: an unknown `train.cpu_convolutions`.
    """
    choice = config.train.cpu_convolutions
    if choice not in CPU_CONVOLUTIONS:
        raise ValueError(f"unknown train.cpu_convolutions {choice!r}; set it to one of "
                         f"{list(CPU_CONVOLUTIONS)}.")
    device = mesh.devices.flat[0]
    if choice == "default" or device.platform != "cpu":
        return None
    if not _accepted(device, _YNNPACK_FUSIONS, ""):
        logging.warning("train.cpu_convolutions='eigen': jax %s has no XLA option %s, so "
                        "the step keeps XLA's default convolutions.", jax.__version__,
                        _YNNPACK_FUSIONS)
        return None
    return {_YNNPACK_FUSIONS: ""}


@functools.cache
def _accepted(device: jax.Device, option: str, value: str) -> bool:
    """Whether XLA compiles a trivial program for `device` with `option=value`."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(
            jax.device_put(np.float32(0), device)).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def make_train_step(gan: GAN, config: Any, mesh: Mesh, *, steps_per_epoch: int,
                    steps_per_call: int = 1, skip_with_cond: bool | None = None) -> TrainStep:
    """The compiled data-parallel step over `mesh`; it donates the state.

    Args:
      gan: the networks and optimizers (`gan.build`).
      config: the full config.
      mesh: the 1-D data mesh (`parallel.create_mesh()`).
      steps_per_epoch: global batches per epoch (see `make_per_replica_step`).
      steps_per_call: K, the most iterations one call runs. K > 1 runs them in a loop
        on the device (as TPU trainers do, saving the host a dispatch and a round trip
        per step); the number run is an argument of the call, not of the compilation,
        so one executable serves every count, and K iterations in one call equal K
        calls of one iteration bit for bit. K = 1 runs its one iteration without a loop.
      skip_with_cond: see `make_per_replica_step` (None: by backend).

    Returns:
      `step(state, batches, rng, count) -> (state, metrics)` for every K: `state`
      replicated; `batches` K global batches stacked (K, B, ...), sharded on the batch
      axis (`parallel.stacked_batch_sharding`), of which the first `count` (1 to K) are
      trained on in order; `rng` the run's key (the same every step). `metrics` are
      stacked (K,), zero beyond `count` (`g_loss`, G's adversarial loss, and
      `g_grad_norm` are 0 where `g_updated` is 0; with `train.mode_seeking`,
      `g_mode_seeking` is the unweighted mode-seeking term).
    """
    parallel.check_divisible(config.train.batch_size, mesh)
    single = make_per_replica_step(gan, config, steps_per_epoch=steps_per_epoch,
                                   skip_with_cond=skip_with_cond)
    per_call = _one_step(single) if steps_per_call == 1 else _step_loop(single, steps_per_call)
    return TrainStep(parallel.data_parallel(
        per_call, mesh, in_specs=(P(), P(None, parallel.DATA_AXIS), P(), P()),
        out_specs=(P(), P()), donate_argnums=(0,),
        compiler_options=compiler_options(config, mesh)))


def _one_step(single: Callable) -> Callable:
    """Steps of one iteration (K = 1): the stacked batch's only entry, no loop (XLA:CPU
    runs a loop's convolutions much slower), the count ignored (it is always 1)."""
    def one(state, batches, rng, count):
        del count
        state, metrics = single(state, jax.tree.map(lambda x: x[0], batches), rng)
        return state, jax.tree.map(lambda m: m[None], metrics)
    return one


def _step_loop(single: Callable, steps_per_call: int) -> Callable:
    """Steps of up to `steps_per_call` iterations, in a loop on the device."""
    def several(state, batches, rng, count):
        def body(i, carry):
            state, metrics = carry
            batch = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False),
                                 batches)
            state, step_metrics = single(state, batch, rng)
            return state, jax.tree.map(lambda m, v: m.at[i].set(v), metrics, step_metrics)

        first = jax.tree.map(lambda x: x[0], batches)
        shapes = jax.eval_shape(single, state, first, rng)[1]
        metrics = jax.tree.map(lambda s: jnp.zeros((steps_per_call,), s.dtype), shapes)
        # A trip count known only at run time: XLA keeps the loop (and its body's
        # compilation) whatever the count.
        return lax.fori_loop(0, count, body, (state, metrics))
    return several
