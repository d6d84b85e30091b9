"""Evaluator end to end on the 4 host devices: digits feature net and a random Inception."""
import logging
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.spatial.distance import pdist

from configs import common
from sagan_jax import actions, parallel
from sagan_jax.evaluation import conditional, digits_net, inception, manifold, reference, scores
from sagan_jax.evaluation.evaluator import Evaluator


def _configs(tmp_path, feature_net="digits", batch_size=200, weights="", **eval_overrides):
    """The base config's `eval` and `data` sections (16 px grey digits) with overrides."""
    c = common.get_base_config()
    c.eval.update(dict(feature_net=feature_net, batch_size=batch_size, splits=10,
                       inception_weights=weights, stats_dir=str(tmp_path / "stats"),
                       num_samples=400, **eval_overrides))
    c.data.update(dict(name="digits", image_size=16, channels=1))
    return c.eval, c.data


@pytest.fixture(scope="module")
def digits16():
    images, labels = digits_net.real_digits()
    return images.repeat(2, axis=1).repeat(2, axis=2), labels  # 16 px, as the quick start


def _batches(images, labels=None, size=100):  # 1797 = 17 x 100 + 97: the last is short
    labels = np.zeros(len(images), np.int32) if labels is None else labels
    return lambda: ({"image": images[i:i + size], "label": labels[i:i + size]}
                    for i in range(0, len(images), size))


def test_reference_stats_cached_and_equal_to_direct_features(tmp_path, digits16):
    images, labels = digits16
    eval_cfg, data_cfg = _configs(tmp_path)
    ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches(images, labels))
    feats, _ = digits_net.extract(digits_net.load_variables(), images)
    mu, sigma = scores.gaussian_stats(np.asarray(feats))
    assert ev.reference.num_examples == 1797
    # Measured: 0 and 0 (the sharded, re-batched features are bit-identical here).
    assert np.max(np.abs(ev.reference.mu - mu)) <= 1e-5 * np.max(np.abs(mu))
    assert np.max(np.abs(ev.reference.sigma - sigma)) <= 1e-5 * np.max(np.abs(sigma))

    def no_data():
        raise AssertionError("the cached statistics should have been used")

    again = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), no_data)
    np.testing.assert_array_equal(again.reference.sigma, ev.reference.sigma)
    # Per-class statistics for intra-FID, cached too; against NumPy's mean and covariance.
    feats = np.asarray(feats, np.float64)
    for c in range(10):
        np.testing.assert_allclose(again.reference.class_mu[c], feats[labels == c].mean(0),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(again.reference.class_sigma[c], np.cov(feats[labels == c].T),
                                   rtol=1e-5, atol=1e-6)


def test_no_per_class_statistics_above_the_cap_and_no_intra_fid(tmp_path, digits16,
                                                                 monkeypatch, caplog):
    images, labels = digits16
    eval_cfg, data_cfg = _configs(tmp_path)
    monkeypatch.setattr(reference, "CLASS_STATS_MAX_BYTES", 10 * 64 * 64 * 8 - 1)
    with caplog.at_level(logging.INFO):
        ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(),
                              _batches(images, labels))
        got = ev.score(*ev.features([images]), labels, 10)
    assert ev.reference.class_mu.shape == (0, 64) and ev.reference.class_sigma.shape == (0, 64, 64)
    assert not any(k.startswith("intra_fid") for k in got) and "sample_accuracy" in got
    messages = [r.getMessage() for r in caplog.records]
    assert any("intra-FID is skipped" in m for m in messages)
    assert any(m.startswith("No intra-FID") for m in messages)


def test_in_training_evaluation_writes_every_score_under_eval_g(tmp_path, digits16):
    images, labels = digits16
    eval_cfg, data_cfg = _configs(tmp_path)
    ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches(images, labels))
    by_class = jnp.asarray(np.stack([images[labels == c][:170] for c in range(10)]))
    generate = lambda params, model_state, key, y: by_class[
        y, jax.random.randint(key, y.shape, 0, 170)]
    written = {}
    writer = types.SimpleNamespace(write_scalars=lambda step, s: written.update({step: s}))
    config = types.SimpleNamespace(train=types.SimpleNamespace(sample_with_ema=True))
    plan = types.SimpleNamespace(eval_due=lambda step: True)
    measure = lambda state, generate, key: ("", *ev.evaluate(generate, 10, 400, key, 0.6))
    action = actions.Evaluation(config, plan, measure, generate, writer, jax.random.key(3))
    action(5, types.SimpleNamespace(ema_params={}, ema_state={}))
    want, diversity = ev.evaluate(lambda k, y: generate(None, None, k, y), 10, 400,
                                  jax.random.key(3), 0.6)
    assert written[5] == {f"eval/ema/{k}": v
                          for k, v in {**want, **diversity.to_scalars()}.items()}
    for name in ("precision", "recall", "density", "coverage", "intra_fid", "intra_fid/0",
                 "sample_accuracy", "sample_accuracy/9"):
        assert f"eval/ema/{name}" in written[5], name


def test_scores_of_real_digits_and_independent_recomputation(tmp_path, digits16):
    images, labels = digits16
    eval_cfg, data_cfg = _configs(tmp_path, kid_subsets=10, kid_subset_size=200)
    ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches(images, labels))
    by_class = jnp.asarray(np.stack([images[labels == c][:170] for c in range(10)]))
    seen = []

    def generate(key, y):  # a "perfect" conditional G: a random real scan of class y
        out = by_class[y, jax.random.randint(key, y.shape, 0, 170)]
        seen.append((np.asarray(y), np.asarray(out)))
        return out

    got, diversity = ev.evaluate(generate, 10, 390, jax.random.key(0), 0.6)
    per_class = {f"{name}/{c}" for name in ("intra_fid", "sample_accuracy") for c in range(10)}
    assert set(got) == {"IS", "IS_std", "FID", "KID", "precision", "recall", "density",
                        "coverage", "intra_fid", "sample_accuracy"} | per_class
    ys = np.concatenate([y for y, _ in seen])
    assert ys.dtype == np.int32 and len(ys) == 400 and set(ys) == set(range(10))
    gen = np.concatenate([x for _, x in seen])[:390]
    feats, logits = digits_net.extract(digits_net.load_variables(), gen)
    mu, sigma = scores.gaussian_stats(np.asarray(feats))
    want_fid = scores.frechet_distance(mu, sigma, ev.reference.mu, ev.reference.sigma)
    want_is = scores.inception_score(np.asarray(logits), 10)
    want_kid = scores.kernel_inception_distance(np.asarray(feats), ev.reference.kid_features,
                                                10, 200, eval_cfg.kid_seed)[0]
    # Measured: IS 8.32 +- 0.41 (39 samples a split; all 1797 real scans: 9.33), FID 3.70,
    # KID 5.2 (the digits features are ~2.5, so the kernel is ~700: KID is on its own
    # scale); each within 1e-6 relative of the unsharded recomputation.
    for name, want in [("IS", want_is[0]), ("IS_std", want_is[1]), ("FID", want_fid),
                       ("KID", want_kid)]:
        assert got[name] == pytest.approx(want, rel=1e-5, abs=1e-7), name
    assert got["IS"] > 8.0 and got["FID"] < 5.0
    _check_new_scores(got, ev, np.asarray(feats), np.asarray(logits), ys[:390], images, labels)
    # Real scans as samples: every class as diverse as the real ones (no collapse).
    assert diversity.minimum == diversity.ratios.min() > 0.85 and diversity.ratios.max() < 1.2
    assert diversity.collapsed_classes == [] and diversity.threshold == 0.6


def _check_new_scores(got, ev, feats, logits, ys, images, labels):
    """Precision... against the core functions and prdc, intra-FID against the real
    features' own per-class statistics, sample accuracy against argmax by hand."""
    real, _ = digits_net.extract(digits_net.load_variables(), images)
    real = np.asarray(real)
    # 1797 real scans < the pool's cap: the pool is all of them, in order; 390 samples
    # against 390 of them (a fixed random choice).
    np.testing.assert_array_equal(ev.reference.kid_features, real)
    rows = np.sort(np.random.RandomState(ev.kid_seed).permutation(len(real))[:len(feats)])
    want = manifold.manifold_metrics(real[rows], feats, k=3).to_scalars()
    prdc = pytest.importorskip("prdc")
    independent = prdc.compute_prdc(real[rows], feats, nearest_k=3)
    for name in want:
        assert got[name] == want[name], name
        assert got[name] == pytest.approx(independent[name], rel=1e-12), name
    # Measured: precision 0.915, recall 0.936, density 0.913, coverage 0.918, intra-FID
    # 7.72 (39 samples a class in 64-d: biased upwards), sample accuracy 0.987.
    assert min(got[n] for n in ("precision", "recall", "coverage")) > 0.8
    intra = conditional.intra_fid(feats, ys, real, labels, 10).to_scalars()
    for name, value in intra.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name
    hits = np.argmax(logits, 1) == ys
    assert got["sample_accuracy"] == pytest.approx(hits.mean(), rel=1e-12)
    for c in range(10):
        assert got[f"sample_accuracy/{c}"] == pytest.approx(hits[ys == c].mean(), rel=1e-12)


def test_real_digits_sample_accuracy_through_the_evaluator(tmp_path, digits16):
    """All 1797 real scans (16 px, as the quick start) with their true labels, scored as
    samples: the classifier reads 98.1% of them as their class."""
    images, labels = digits16
    eval_cfg, data_cfg = _configs(tmp_path)
    ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches(images, labels))
    features, logits = ev.features([images])
    got = ev.score(features, logits, labels, 10)
    # Measured: 1762 of 1797, 98.1%.
    assert got["sample_accuracy"] == pytest.approx(1762 / 1797, rel=1e-12)
    # The real scans against themselves: each ball holds its centre and the k - 1 nearest
    # others (the k-th lies on its edge, not inside), so density is exactly 1 too.
    assert got["precision"] == got["recall"] == got["coverage"] == got["density"] == 1.0
    # Measured: -6.8e-7 (sqrtm's round-off).
    assert got["intra_fid"] == pytest.approx(0.0, abs=1e-5)


def test_collapse_check_names_exactly_the_classes_that_ignore_z(tmp_path, digits16):
    """Classes 2 and 7 always give the same image; the others give random real scans."""
    images, labels = digits16
    eval_cfg, data_cfg = _configs(tmp_path)
    ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches(images, labels))
    by_class = jnp.asarray(np.stack([images[labels == c][:170] for c in range(10)]))
    collapsed = jnp.asarray([c in (2, 7) for c in range(10)])

    def generate(key, y):
        index = jax.random.randint(key, y.shape, 0, 170)
        return by_class[y, jnp.where(collapsed[y], 0, index)]

    _, got = ev.evaluate(generate, 10, 600, jax.random.key(0), 0.6)
    assert got.collapsed_classes == ["2", "7"]
    assert got.ratios[[2, 7]].max() < 1e-6 and np.delete(got.ratios, [2, 7]).min() > 0.85
    # Independent recomputation: scipy's pairwise distances of the real features.
    feats, _ = digits_net.extract(digits_net.load_variables(), images)
    real = [pdist(np.asarray(feats, np.float64)[labels == c]).mean() for c in range(10)]
    np.testing.assert_allclose(ev.reference.class_diversity, real, rtol=1e-6)


def test_scores_do_not_depend_on_eval_batch_size(tmp_path, digits16):
    images, labels = digits16
    templates = jnp.asarray(np.stack([images[labels == c][0] for c in range(10)]))
    generate = lambda key, y: templates[y] * 0.9  # depends on the per-sample labels only
    results = []
    for batch_size in (40, 200):
        eval_cfg, data_cfg = _configs(tmp_path, batch_size=batch_size, kid_subsets=5,
                                      kid_subset_size=100)
        ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(),
                              _batches(images, labels))
        scores, diversity = ev.evaluate(generate, 10, 390, jax.random.key(1), 0.6)
        results.append({**scores, **diversity.to_scalars()})
    # Measured: identical to the last bit.
    for name in results[0]:
        assert results[0][name] == pytest.approx(results[1][name], rel=1e-6, abs=1e-12), name


def test_missing_inception_weights_warn_once_and_return_none(tmp_path, caplog):
    eval_cfg, data_cfg = _configs(tmp_path, "inception", weights=str(tmp_path / "none.npz"))
    with caplog.at_level(logging.WARNING):
        assert Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches([])) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pt_inception-2015-12-05-6726825d.pth" in warnings[0].getMessage()
    with pytest.raises(FileNotFoundError, match="sagan_jax.evaluation.convert"):
        Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches([]), required=True)


def _random_inception_weights(path):
    """He-initialised convolutions, identity BatchNorm: features of O(1), in seconds
    (Flax's `init` would trace and run the whole network once)."""
    rng = np.random.default_rng(0)
    flat = {}
    for name, leaf in traverse_util.flatten_dict(inception.variable_shapes(), sep="/").items():
        if name.endswith("kernel"):
            fan_in = np.prod(leaf.shape[:-1])
            flat[name] = rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        else:  # BN scale and var 1, BN bias and mean 0, classifier bias 0
            one = name.endswith(("scale", "var"))
            flat[name] = np.full(leaf.shape, 1.0 if one else 0.0, np.float32)
    np.savez(path, **flat)


@pytest.mark.slow
def test_random_inception_path_scores_reals_against_themselves(tmp_path):
    weights = tmp_path / "random_inception.npz"
    _random_inception_weights(weights)
    reals = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    eval_cfg, data_cfg = _configs(tmp_path, "inception", batch_size=4, weights=str(weights),
                                  kid_subsets=3)
    eval_cfg.splits = 2
    data_cfg.update(name="noise", image_size=32, channels=3)
    ev = Evaluator.create(eval_cfg, data_cfg, parallel.create_mesh(), _batches(reals, size=8))
    assert ev.reference.mu.shape == (2048,) and ev.reference.num_examples == 8
    batches = iter([reals[:4], reals[4:]])
    got, diversity = ev.evaluate(lambda key, y: jnp.asarray(next(batches)), 0, 8,
                                 jax.random.key(0), 0.6)
    trace = np.trace(ev.reference.sigma)
    # The generator returns the reference images themselves, so FID = 0 up to round-off
    # (8 samples in 2048-D: the square roots of ~2040 round-off eigenvalues add up to
    # ~1e-6 tr(sigma)). Measured: tr(sigma) 0.35, FID -4.3e-7, IS 1.0001.
    assert trace > 1e-3
    assert abs(got["FID"]) <= 1e-5 * trace
    # Unconditional: one ratio, of all samples, and the same images are as diverse.
    assert list(diversity.to_scalars()) == ["diversity_ratio/all", "diversity_ratio_min"]
    assert diversity.ratios.tolist() == pytest.approx([1.0], rel=1e-6)
    # KID's subsets are all 8 images on both sides: with X = Y the unbiased estimator is
    # 2 S_off / (m (m - 1)) - 2 (S_off + S_diag) / m^2 for every subset.
    f = ev.reference.kid_features.astype(np.float64)
    k = (f @ f.T / f.shape[1] + 1) ** 3
    s_diag, m = np.trace(k), len(f)
    s_off = k.sum() - s_diag
    assert got["KID"] == pytest.approx(2 * s_off / (m * (m - 1)) - 2 * k.sum() / m**2, rel=1e-6)
    assert 1.0 <= got["IS"] <= 1008


def test_digits_classifier_reads_held_out_scans():
    images, labels = digits_net.real_digits()
    _, held_out = digits_net.split()
    x, y = images[held_out], labels[held_out]
    variables = digits_net.load_variables()
    up = lambda method: jax.image.resize(x, (len(x), 16, 16, 1), method)
    accuracy = {}
    for name, batch in [("8px", x), ("16px nearest", up("nearest")),
                        ("16px bilinear", up("bilinear"))]:
        _, logits = digits_net.extract(variables, batch)
        accuracy[name] = float(np.mean(np.argmax(logits, -1) == y))
    # Measured: 0.977, 0.977, 0.960 on the 300 held-out scans.
    assert min(accuracy.values()) >= 0.95, accuracy
    with np.load(digits_net.ASSET) as f:
        assert float(f["held_out_accuracy"]) == pytest.approx(accuracy["8px"], abs=1e-6)


def test_evaluation_imports_without_tensorflow_or_torch():
    code = ("import sys\n"
            "for name in ('tensorflow', 'tensorflow_datasets', 'torch'): sys.modules[name] = None\n"
            "from sagan_jax.evaluation import conditional, convert, digits_net, evaluator, "
            "inception, manifold, reference, resize, scores\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_convert_cli_rejects_a_wrong_file_in_one_line(tmp_path):
    bogus = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bogus.write_bytes(b"\0" * 1000)
    result = subprocess.run(
        [sys.executable, "-m", "sagan_jax.evaluation.convert", f"--src={bogus}",
         f"--dst={tmp_path / 'out.npz'}"], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated download" in lines[0] and "re-download" in lines[0]
    assert not (tmp_path / "out.npz").exists()
