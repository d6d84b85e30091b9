"""The compiled train step on the real (tiny) networks: semantics, data parallelism, EMA.

Compiles are the cost on a 2-core CPU, so a few module-scoped runs feed several tests:
- `run_1dev`: 1-device mesh, synced BN, TTUR with linear scaling, n_dis 2, the
  mode-seeking term, 3 iterations (G+D, D, G+D), G steps skipped by masking (the CPU
  default).
- `run_4dev`: the same on 4 devices.
- `run_dis`: 4 devices, bfloat16 compute, per-replica BN, D-loss limit 0 and n_dis 2,
  no mode-seeking term, G steps skipped with `lax.cond` (the accelerator default).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from sagan_jax import gan as gan_lib, parallel, sampling, train_step, visualize

NUM_CLASSES, CHANNELS, BATCH = 10, 3, 8
MODE_SEEKING = 0.5
STEPS_PER_EPOCH = 100  # Longer than any run here: the capped rule ignores epochs anyway.
BASE = {
    "model.resolution": 16, "model.width": 1 / 16, "model.z_dim": 16,
    "model.g_attention": (8,), "model.d_attention": (8,),
    "optim.lr_scaling": "linear", "optim.base_batch": 16,
    "update_rule.n_dis": 2,
    "train.batch_size": BATCH, "train.ema_decay": 0.9, "train.ema_start": 1,
    "train.mode_seeking": MODE_SEEKING,
}


def _config(**overrides):
    cfg = common.get_base_config()
    for key, value in {**BASE, **overrides}.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


def _gan(cfg=None):
    return gan_lib.build(cfg or _config(), NUM_CLASSES, CHANNELS)


def mu(opt_state):
    """Adam's first moment (b1 = 0: the last gradient), through optax's public tree API."""
    return optax.tree.get(opt_state, "mu")


def _batch():
    image = jax.random.uniform(jax.random.key(1), (BATCH, 16, 16, CHANNELS), minval=-1.0, maxval=1.0)
    return {"image": image, "label": jnp.arange(BATCH, dtype=jnp.int32) % NUM_CLASSES}


RNG = jax.random.key(7)
STEPS = 3


def _compile(fn, *args):
    """Compiles once for these arguments (with conftest's cheap LLVM settings)."""
    return fn.lower(*args).compile()


@pytest.fixture(scope="module")
def init_state():
    return jax.device_get(train_step.create_train_state(_gan(), _config(), jax.random.key(0)))


def _stacked(batch, mesh, k=1):
    """`batch` as the step's input: K copies stacked, sharded on the batch axis."""
    return jax.device_put(jax.tree.map(lambda x: np.stack([np.asarray(x)] * k), batch),
                          parallel.stacked_batch_sharding(mesh))


def _run(cfg, state, mesh, steps, skip_with_cond=None):
    """`steps` iterations; returns the host copies of every state and the metrics."""
    device_state = jax.device_put(state, parallel.replicated_sharding(mesh))
    batch = _stacked(_batch(), mesh)
    # One executable serves every iteration: the update rule cannot ask for a recompile.
    step = train_step.make_train_step(_gan(cfg), cfg, mesh, steps_per_epoch=STEPS_PER_EPOCH,
                                      skip_with_cond=skip_with_cond)
    fn = _compile(step, device_state, batch, RNG, 1)
    states, metrics = [state], []
    for _ in range(steps):
        device_state, m = fn(device_state, batch, RNG, np.int32(1))
        states.append(jax.device_get(device_state))
        metrics.append(jax.tree.map(lambda v: v[0], jax.device_get(m)))  # K = 1: one entry.
    return states, metrics, device_state


@pytest.fixture(scope="module")
def run_1dev(init_state):
    return _run(_config(), init_state, parallel.create_mesh(jax.devices()[:1]), STEPS)


@pytest.fixture(scope="module")
def run_4dev(init_state):
    return _run(_config(), init_state, parallel.create_mesh(), STEPS)


def _adam_first_step(params, grads, lr, b1=0.0, b2=0.9, eps=1e-8):
    """Adam's first update written out: bias-corrected m and v after one gradient."""
    def one(p, g):
        m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
        return p - lr * m_hat / (jnp.sqrt(v_hat) + eps)
    return jax.tree.map(one, params, grads)


def _reference_iteration(cfg, state, batch, rng):
    """Iteration 0 written plainly on one device: G step, then D step (docs/original.md),
    G's loss with MSGAN's mode-seeking term over pairs of examples (2k, 2k + 1) drawn
    with the label of example 2k."""
    gan = _gan(cfg)
    # One device, outside shard_map: BN over the whole batch needs no axis to sync over.
    g, d = gan.generator.clone(bn_axis_name=None), gan.discriminator
    key_g, key_d = jax.random.split(jax.random.fold_in(rng, 0))
    idx = jnp.arange(BATCH)
    z, y = gan.noise(key_g, idx)
    y = y.at[1::2].set(y[0::2])
    z2, y2 = gan.noise(key_d, idx)
    mut = ["batch_stats", "spectral_norm"]

    def g_loss(gp):
        fake, gs = g.apply({"params": gp, **state.g_state}, z, y, train=True, mutable=mut)
        logits, ds = d.apply({"params": state.d_params, **state.d_state}, fake, y, train=True, mutable=mut)
        pair_ratios = [jnp.mean(jnp.abs(fake[k] - fake[k + 1])) / jnp.mean(jnp.abs(z[k] - z[k + 1]))
                       for k in range(0, BATCH, 2)]
        seeking = sum(1 / (r + 1e-5) for r in pair_ratios) / len(pair_ratios)
        return -jnp.mean(logits) + MODE_SEEKING * seeking, (gs, ds, -jnp.mean(logits), seeking)

    (_, (gs, ds, gl, seeking)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.g_params)
    gp = _adam_first_step(state.g_params, g_grads, 1e-4 * BATCH / 16)
    fake, gs = g.apply({"params": gp, **gs}, z2, y2, train=True, mutable=mut)

    def d_loss(dp):
        real, ds1 = d.apply({"params": dp, **ds}, batch["image"], batch["label"], train=True, mutable=mut)
        fk, ds2 = d.apply({"params": dp, **ds1}, fake, y2, train=True, mutable=mut)
        return jnp.mean(jax.nn.relu(1 - real)) + jnp.mean(jax.nn.relu(1 + fk)), (ds2, real, fk)

    (dl, (ds, real, fk)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state.d_params)
    dp = _adam_first_step(state.d_params, d_grads, 4e-4 * BATCH / 16)
    metrics = dict(g_loss=gl, g_mode_seeking=seeking, d_loss=dl, d_real=jnp.mean(real), d_fake=jnp.mean(fk),
                   g_grad_norm=jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g_grads))),
                   d_grad_norm=jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(d_grads))))
    return dict(g_params=gp, d_params=dp, g_state=gs, d_state=ds, g_grads=g_grads, d_grads=d_grads), metrics


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_same_params(a, b, grads, lr, steps):
    """Weights with a real gradient agree to 1e-6.

    The biases of layers followed by BN (G's convs) have an exact gradient of 0, so
    theirs is float noise of ~1e-8, the size of Adam's eps: Adam turns it into steps
    of up to lr in either direction. Those leaves may differ by 2 * lr per step.
    """
    for x, y, g in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(grads)):
        tol = 1e-6 if np.max(np.abs(g)) > 1e-4 else 2 * lr * steps
        assert np.max(np.abs(x - y)) <= tol, (np.max(np.abs(x - y)), tol)


def _assert_same_g_state(a, b, mean_tol):
    """SN vectors and BN variances agree to 1e-6; BN means carry the bias noise above."""
    def check(path, x, y):
        tol = mean_tol if path[-1].key == "mean" else 1e-6
        assert np.max(np.abs(x - y)) <= tol, (jax.tree_util.keystr(path), np.max(np.abs(x - y)))
    jax.tree_util.tree_map_with_path(check, a, b)


def test_learning_rate_scaling_matches_lrscale_table():
    """docs/original.md's CIFAR-10 lrscale cases, from base rates 1e-4 / 4e-4 at batch 256."""
    def rates(batch, scaling):
        return gan_lib.scaled_learning_rates(
            _config(**{"train.batch_size": batch, "optim.lr_scaling": scaling, "optim.base_batch": 256}))
    assert rates(64, "linear") == (2.5e-5, 1e-4)      # case 0
    assert rates(128, "linear") == (5e-5, 2e-4)       # case 1
    assert rates(64, "none") == (1e-4, 4e-4)          # case 2
    assert rates(128, "none") == (1e-4, 4e-4)         # case 3
    assert rates(256, "linear") == (1e-4, 4e-4)       # reference
    with pytest.raises(ValueError, match="optim.lr_scaling"):
        rates(64, "sqrt")


def test_first_iteration_matches_plain_reference(init_state, run_1dev):
    states, metrics, _ = run_1dev
    cfg = _config()
    args = (init_state, _batch(), RNG)
    ref, ref_metrics = _compile(jax.jit(lambda *a: _reference_iteration(cfg, *a)), *args)(*args)
    new = states[1]
    g_lr, d_lr = gan_lib.scaled_learning_rates(cfg)
    # Adam's state holds the averaged gradients (b1 = 0: mu is the gradient itself).
    assert _max_diff(mu(new.g_opt), ref["g_grads"]) < 1e-5
    assert _max_diff(mu(new.d_opt), ref["d_grads"]) < 1e-5
    _assert_same_params(new.g_params, ref["g_params"], ref["g_grads"], g_lr, 1)
    _assert_same_params(new.d_params, ref["d_params"], ref["d_grads"], d_lr, 1)
    # D's u advanced three times (G step, real pass, fake pass), G's twice, BN twice.
    _assert_same_g_state(new.g_state, ref["g_state"], mean_tol=1e-4)
    assert _max_diff(new.d_state, ref["d_state"]) < 1e-6
    for name, value in ref_metrics.items():
        np.testing.assert_allclose(metrics[0][name], value, rtol=1e-5, err_msg=name)
    assert metrics[0]["g_updated"] == 1.0 and int(new.step) == 1
    np.testing.assert_array_equal(new.d_loss_window, [0, 0, 0, 0, metrics[0]["d_loss"]])


def test_ttur_rates_reach_the_right_optimizer(init_state, run_1dev):
    """Adam's first step moves every weight with a real gradient by its lr (b1 = 0)."""
    g_lr, d_lr = gan_lib.scaled_learning_rates(_config())
    assert (g_lr, d_lr) == (5e-5, 2e-4)
    new = run_1dev[0][1]
    for lr, old, now in ((g_lr, init_state.g_params, new.g_params), (d_lr, init_state.d_params, new.d_params)):
        delta = np.concatenate([np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(now), jax.tree.leaves(old))])
        assert abs(delta.max() - lr) < 1e-3 * lr and np.median(delta) > 0.9 * lr


def test_ema_arithmetic(run_1dev):
    """ema_start = 1: a copy after iteration 0, untouched by the D-only iteration 1, then
    0.9 * ema + 0.1 * params after iteration 2 (BN statistics alike, SN vectors copied)."""
    s1, s2, s3 = run_1dev[0][1:]
    assert _max_diff(s1.ema_params, s1.g_params) == 0
    assert _max_diff(s1.ema_state, s1.g_state) == 0
    assert _max_diff(s2.ema_params, s1.ema_params) == 0 and _max_diff(s2.g_params, s1.g_params) == 0
    assert _max_diff(s2.ema_state, s1.ema_state) == 0
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, s2.ema_params, s3.g_params)
    assert _max_diff(s3.ema_params, expected) < 1e-7
    assert _max_diff(s3.ema_params, s3.g_params) > 1e-6
    expected_bn = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, s2.ema_state["batch_stats"], s3.g_state["batch_stats"])
    assert _max_diff(s3.ema_state["batch_stats"], expected_bn) < 1e-6
    assert _max_diff(s3.ema_state["spectral_norm"], s3.g_state["spectral_norm"]) == 0
    tree = {"w": np.array([1.0, 2.0])}
    out = train_step.ema_update(tree, {"w": np.array([3.0, 6.0])}, jnp.int32(5), 0.75, 5)
    np.testing.assert_allclose(out["w"], [1.5, 3.0])
    out = train_step.ema_update(tree, {"w": np.array([3.0, 6.0])}, jnp.int32(4), 0.75, 5)
    np.testing.assert_allclose(out["w"], [3.0, 6.0])


def test_metrics_are_scalars_with_attention_gammas(run_1dev):
    states, metrics, _ = run_1dev
    expected = {"d_loss", "g_loss", "g_mode_seeking", "d_real", "d_fake", "g_updated",
                "d_only_left", "g_grad_norm", "d_grad_norm", "gamma/g_attention0",
                "gamma/d_attention0"}
    assert set(metrics[2]) == expected
    assert all(np.shape(v) == () for m in metrics for v in m.values())
    assert [m["g_updated"] for m in metrics] == [1, 0, 1]   # n_dis 2
    assert metrics[1]["g_loss"] == metrics[1]["g_grad_norm"] == 0 < metrics[2]["g_grad_norm"]
    assert metrics[2]["gamma/g_attention0"] == states[3].g_params["attention0"]["gamma"] != 0
    assert metrics[2]["gamma/d_attention0"] == states[3].d_params["attention0"]["gamma"] != 0


def _assert_same_state(a, b):
    """Two runs of `STEPS` iterations from the same start reached the same state."""
    g_lr, d_lr = gan_lib.scaled_learning_rates(_config())
    assert _max_diff(mu(a.g_opt), mu(b.g_opt)) < 1e-5
    assert _max_diff(mu(a.d_opt), mu(b.d_opt)) < 1e-5
    _assert_same_params(a.g_params, b.g_params, mu(a.g_opt), g_lr, STEPS)
    _assert_same_params(a.ema_params, b.ema_params, mu(a.g_opt), g_lr, STEPS)
    _assert_same_params(a.d_params, b.d_params, mu(a.d_opt), d_lr, STEPS)
    _assert_same_g_state(a.g_state, b.g_state, mean_tol=5e-4)
    _assert_same_g_state(a.ema_state, b.ema_state, mean_tol=5e-4)
    assert _max_diff(a.d_state, b.d_state) < 1e-6
    assert int(a.step) == int(b.step) == STEPS
    np.testing.assert_allclose(a.d_loss_window, b.d_loss_window, rtol=1e-5)


def _assert_same_metrics(a, b):
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for name in x:
            np.testing.assert_allclose(x[name], y[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_one_and_four_devices_give_the_same_update(run_1dev, run_4dev):
    """Same global batch and noise, synced BN: 4 replicas reproduce the 1-device run.

    Adam's steps are nearly sign(gradient), blind to its scale, so the gradients
    (Adam's mu, b1 = 0) and their norms are compared too: N x gradients would show.
    """
    _assert_same_state(run_1dev[0][-1], run_4dev[0][-1])
    _assert_same_metrics(run_1dev[1], run_4dev[1])


def _stack(tree, n):
    return jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), tree)


def test_pmap_matches_shard_map(init_state, run_4dev):
    """The same per-replica step under jax.pmap gives the shard_map run's numbers.

    The pmap run skips its G step with `lax.cond`, the shard_map run by masking, so
    the two ways of skipping are compared as well.
    """
    n = 4
    per_replica = train_step.make_per_replica_step(
        _gan(), _config(), steps_per_epoch=STEPS_PER_EPOCH, skip_with_cond=True)
    step = jax.pmap(per_replica, axis_name=parallel.DATA_AXIS, in_axes=(0, 0, None))
    # On the devices as pmap leaves its outputs, so every call runs one executable.
    state = jax.pmap(lambda x: x)(_stack(init_state, n))
    batch = jax.tree.map(lambda x: np.asarray(x).reshape(n, BATCH // n, *x.shape[1:]), _batch())
    step = _compile(step, state, batch, RNG)
    metrics = []
    for _ in range(STEPS):
        state, m = step(state, batch, RNG)
        metrics.append(jax.device_get(m))
    state = jax.device_get(state)
    for replica in range(n):
        _assert_same_state(jax.tree.map(lambda x: x[replica], state), run_4dev[0][-1])
        _assert_same_metrics([jax.tree.map(lambda x: x[replica], m) for m in metrics], run_4dev[1])


@pytest.fixture(scope="module")
def run_dis(init_state):
    """bfloat16, per-replica BN, n_dis 2 and a D-loss limit of 0 (hinge D loss >= 0)."""
    cfg = _config(**{"model.dtype": "bfloat16", "train.bn_sync": False,
                     "update_rule.d_loss_limit": 0.0, "update_rule.n_dis": 2,
                     "train.mode_seeking": 0.0})
    return (*_run(cfg, init_state, parallel.create_mesh(), 11, skip_with_cond=True), cfg)


def test_update_rule_runs_inside_the_step(run_dis):
    """Iteration 0 starts a countdown (steps 1-4 D-only); 5 is odd (n_dis 2) and starts
    another (6-9 D-only); 10 has the next G step."""
    states, metrics, _, _ = run_dis
    g_updated = [int(m["g_updated"]) for m in metrics]
    assert g_updated == [1] + [0] * 9 + [1]
    assert [int(m["d_only_left"]) for m in metrics] == [4, 3, 2, 1, 0, 4, 3, 2, 1, 0, 4]
    assert [int(s.d_only_left) for s in states[1:]] == [4, 3, 2, 1, 0, 4, 3, 2, 1, 0, 4]
    for i, updated in enumerate(g_updated):
        before, after = states[i], states[i + 1]
        g_moved = _max_diff(before.g_params, after.g_params) > 0
        assert g_moved == bool(updated) and (_max_diff(before.ema_params, after.ema_params) > 0) == bool(updated)
        assert _max_diff(before.d_params, after.d_params) > 0
        assert int(optax.tree.get(after.g_opt, "count")) == sum(g_updated[: i + 1])
        assert int(optax.tree.get(after.d_opt, "count")) == i + 1
        assert metrics[i]["g_loss"] == 0 or updated
        assert "g_mode_seeking" not in metrics[i]
    np.testing.assert_allclose(states[-1].d_loss_window, [m["d_loss"] for m in metrics[-5:]])


def test_bfloat16_compute_keeps_float32_params_and_optimizer(run_dis):
    state = run_dis[0][-1]
    for tree in (state.g_params, state.d_params, state.ema_params, state.g_opt, state.d_opt,
                 state.g_state, state.d_state, state.ema_state):
        for leaf in jax.tree.leaves(tree):
            assert leaf.dtype in (np.float32, np.int32), leaf.dtype
    assert all(np.isfinite(v) for m in run_dis[1] for v in m.values())


def test_per_replica_bn_keeps_the_replicated_state_identical(run_dis):
    """Per-replica BN statistics are averaged, so every device holds the same state."""
    for leaf in jax.tree.leaves(run_dis[2]):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 4 and all(np.array_equal(shards[0], s) for s in shards[1:])


def test_generate_is_eval_mode_g_with_per_example_noise(run_1dev):
    """4 devices reproduce eval-mode G fed the noise of each example's global index."""
    cfg = _config()
    state = run_1dev[0][-1]
    labels = np.arange(BATCH) % NUM_CLASSES
    key = jax.random.key(3)
    gan = _gan(cfg)
    z, _ = gan.noise(key, jnp.arange(BATCH))
    variables = {"params": state.ema_params, **state.ema_state}
    g = gan.generator
    expected = _compile(jax.jit(g.apply), variables, z, labels)(variables, z, labels)
    generate = sampling.make_generate_fn(gan, parallel.create_mesh())
    images = generate(state.ema_params, state.ema_state, key, labels)
    assert images.shape == (BATCH, 16, 16, CHANNELS) and images.dtype == jnp.float32
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert np.abs(expected).max() <= 1.0 and np.std(expected) > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        generate(state.ema_params, state.ema_state, key, labels[:6])


def test_grids_and_scores_draw_the_same_z_for_the_same_key(run_1dev):
    """A sample grid (one device, explicit z) shows the images that the scoring generator
    (sharded over 4 devices) makes for the same key and labels."""
    gan, state, key = _gan(), run_1dev[0][-1], jax.random.key(5)
    labels = visualize.grid_labels(NUM_CLASSES, 2, 4)
    scored = sampling.make_generate_fn(gan, parallel.create_mesh())(
        state.ema_params, state.ema_state, key, labels)
    variables = {"params": state.ema_params, **state.ema_state}
    grid = visualize.class_grid(jax.jit(lambda z, y: gan.generator.apply(variables, z, y)),
                                gan, key, 2, 4)
    expected = visualize.to_grid(np.asarray(scored), cols=4)
    assert np.abs(grid.astype(int) - expected).max() <= 1  # uint8 rounding of ~1e-6 noise
    assert np.mean(grid != expected) < 0.01


@pytest.mark.slow
def test_several_steps_per_call_are_bit_identical_to_single_steps(init_state, run_dis):
    """`steps_per_call` 4: one call of 4 iterations equals 4 calls of 1 iteration of the
    same executable bit for bit (the run_dis setting, whose D-only countdown and skipped
    G steps all happen inside the loop), and both stay within float32 round-off of the
    plain step (XLA compiles the body of the loop with other fusions)."""
    cfg = run_dis[3]
    mesh = parallel.create_mesh()
    stacked = _stacked(_batch(), mesh, 4)
    four = train_step.make_train_step(_gan(cfg), cfg, mesh, steps_per_epoch=STEPS_PER_EPOCH,
                                      steps_per_call=4, skip_with_cond=True)
    place = lambda: jax.device_put(init_state, parallel.replicated_sharding(mesh))
    at_once, metrics = four(place(), stacked, RNG, 4)
    one_by_one, ones = place(), []
    for _ in range(4):  # Python ints and int32 arrays: one executable (checked below).
        one_by_one, m = four(one_by_one, stacked, RNG, 1 if ones else jnp.int32(1))
        ones.append(jax.device_get(m))
    assert four.compiled._cache_size() == 1  # pylint: disable=protected-access
    for got, want in zip(jax.tree.leaves(jax.device_get(at_once)),
                         jax.tree.leaves(jax.device_get(one_by_one))):
        np.testing.assert_array_equal(got, want)
    metrics = jax.device_get(metrics)
    for name, values in metrics.items():
        np.testing.assert_array_equal(values, [m[name][0] for m in ones], err_msg=name)
        assert all(m[name][1:].tolist() == [0, 0, 0] for m in ones)  # count 1: one slot
    plain = run_dis[0][4]
    for got, want in zip(jax.tree.leaves(jax.device_get(at_once)), jax.tree.leaves(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(metrics["g_updated"], [m["g_updated"] for m in run_dis[1][:4]])


def test_mode_seeking_needs_pairs_on_every_device(init_state):
    """A per-device batch of 1 cannot hold a pair: one clear error when the step is traced."""
    cfg = _config(**{"train.batch_size": 4})
    mesh = parallel.create_mesh()
    step = train_step.make_train_step(_gan(cfg), cfg, mesh, steps_per_epoch=STEPS_PER_EPOCH)
    batch = jax.tree.map(lambda x: x[:4], _batch())
    with pytest.raises(ValueError, match="even multiple of the device count"):
        step.lower(jax.device_put(init_state, parallel.replicated_sharding(mesh)),
                   _stacked(batch, mesh), RNG, 1)
