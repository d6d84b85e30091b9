"""`python -m sagan_jax.score`: every checkpoint, EMA and raw G, JSON/CSV/TensorBoard outputs.

Scores of a tiny digits run (digits feature net, so no Inception weights are needed) are
compared with the evaluator called directly on the restored checkpoint's weights.
"""
import csv
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest
from compiled_once import PROGRAMS

from sagan_jax import checkpointing, data, gan as gan_lib, parallel, report, score, train
from sagan_jax import workdir as workdir_lib
from sagan_jax.evaluation.evaluator import Evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 64
# The new scores' scalars (CSV columns, TensorBoard tags) and their per-class JSON values.
NEW_SCALARS = ("precision", "recall", "density", "coverage", "intra_fid", "sample_accuracy")
PER_CLASS = ("intra_fid", "sample_accuracy")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step digits run with checkpoints 2 and 3 (its EMA of G already differs from G)."""
    config = importlib.import_module("configs.digits").get_config("test")
    config.eval.stats_dir = str(tmp_path_factory.mktemp("stats"))
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir, programs=PROGRAMS)
    return workdir, config


def direct_scores(workdir, config, step, weights):
    """The evaluator called on the checkpoint's weights without the CLI's plumbing."""
    mesh = parallel.create_mesh()
    ds = data.create_dataset(config.data, 4, config.train.seed, mesh)
    gan = gan_lib.build(config, 10, 1)
    like = jax.device_put(PROGRAMS.train_state(gan, config, jax.random.key(1)),
                          parallel.replicated_sharding(mesh))
    ckpts = checkpointing.Checkpoints(workdir, 3, read_only=True)
    state = ckpts.restore(step, like)
    ckpts.close()
    params, model_state = (state.ema_params, state.ema_state) if weights == "ema" else (
        state.g_params, state.g_state)
    gen = PROGRAMS.generate_fn(gan, mesh)
    ev = Evaluator.create(config.eval, config.data, mesh,
                          real_batches=lambda: ds.eval_iterator(config.eval.batch_size))
    scores, diversity = ev.evaluate(lambda k, y: gen(params, model_state, k, y), 10,
                                    NUM_SAMPLES, jax.random.key(0),
                                    config.monitor.collapse_threshold)
    return {**scores, **diversity.to_scalars()}


@pytest.mark.smoke
def test_scores_every_checkpoint_with_both_generators(run):
    workdir, config = run
    rows = score.evaluate_workdir(workdir, num_samples=NUM_SAMPLES, programs=PROGRAMS)
    assert [(r["step"], r["generator"]) for r in rows] == [
        (2, "ema"), (2, "raw"), (3, "ema"), (3, "raw")]
    by = {(r["step"], r["generator"]): r for r in rows}
    for weights in ("ema", "raw"):
        expected = direct_scores(workdir, config, 3, weights)
        for name in ("IS", "IS_std", "FID", "KID", "diversity_ratio_min"):
            assert by[3, weights][name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9)
        assert list(by[3, weights]["diversity_ratio"]) == [str(c) for c in range(10)]
        for c, ratio in by[3, weights]["diversity_ratio"].items():
            assert ratio == pytest.approx(expected[f"diversity_ratio/{c}"], rel=1e-6, abs=1e-9)
        for name in NEW_SCALARS:
            assert by[3, weights][name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9)
        for name in PER_CLASS:
            values = by[3, weights][f"{name}_by_class"]
            assert list(values) == [str(c) for c in range(10)]
            for c, value in values.items():
                assert value == pytest.approx(expected[f"{name}/{c}"], rel=1e-6, abs=1e-9)
    assert by[3, "ema"]["FID"] != by[3, "raw"]["FID"]
    assert {r["protocol"] for r in rows} == {
        "64 samples, IS over 10 splits, FID/KID vs 1797 real images"}

    out = os.path.join(workdir, "eval")
    with open(os.path.join(out, "step_0000003.json")) as f:
        assert json.load(f) == rows[2:]
    with open(os.path.join(out, "scores.csv")) as f:
        table = list(csv.DictReader(f))
    assert [(int(r["step"]), r["generator"], float(r["FID"])) for r in table] == [
        (r["step"], r["generator"], r["FID"]) for r in rows]
    for name in NEW_SCALARS:  # Scalars in the CSV; the per-class values stay in the JSON.
        assert [float(r[name]) for r in table] == [r[name] for r in rows], name
    assert not any("/" in column or "by_class" in column for column in table[0])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out))
    events = report.read_scalars(out)
    for r in rows:
        for name in NEW_SCALARS + tuple(f"{n}/{c}" for n in PER_CLASS for c in range(10)):
            score_name, _, c = name.partition("/")
            value = r[f"{score_name}_by_class"][c] if c else r[name]
            steps, values = events[f"{r['generator']}/{name}"]
            assert values[list(steps).index(r["step"])] == pytest.approx(value, rel=1e-6), name

    # One step only: the same numbers (same key), and the CSV keeps every step once.
    again = score.evaluate_workdir(workdir, step=3, num_samples=NUM_SAMPLES,
                                      generators=("raw",), programs=PROGRAMS)
    assert again == [by[3, "raw"]]
    with open(os.path.join(out, "scores.csv")) as f:
        assert len(list(csv.DictReader(f))) == 3  # step 3 now holds only the raw row


@pytest.mark.slow
@pytest.mark.smoke
def test_missing_step_and_missing_run_are_one_line(run, tmp_path):
    workdir, _ = run
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7") as e:
        score.evaluate_workdir(workdir, step=7, num_samples=NUM_SAMPLES)
    assert "\n" not in str(e.value)
    result = subprocess.run(
        [sys.executable, "-m", "sagan_jax.score", f"--workdir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/config.json not found; give the --workdir of a training run.")


def test_missing_inception_weights_are_one_line(run, tmp_path):
    workdir, _ = run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    config = workdir_lib.read_config(copy)
    config.eval.feature_net = "inception"
    config.eval.inception_weights = str(tmp_path / "missing.npz")
    run = config.run.to_dict()
    del config.run
    workdir_lib.write_config(copy, config, run)
    with pytest.raises(FileNotFoundError) as e:
        score.evaluate_workdir(copy, num_samples=NUM_SAMPLES, programs=PROGRAMS)
    assert "\n" not in str(e.value)


def test_scores_use_the_papers_protocol_whatever_the_run_used(run, tmp_path):
    """A run that scored itself with 1 split (the original's protocol) is scored by the
    CLI over 10 splits unless asked otherwise, and each row says so."""
    workdir, _ = run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    config = workdir_lib.read_config(copy)
    config.eval.splits = 1
    run_facts = config.run.to_dict()
    del config.run
    workdir_lib.write_config(copy, config, run_facts)
    (row,) = score.evaluate_workdir(copy, step=3, num_samples=NUM_SAMPLES, generators=("ema",),
                                    programs=PROGRAMS)
    assert row["splits"] == 10 and "IS over 10 splits" in row["protocol"]
    (one,) = score.evaluate_workdir(copy, step=3, num_samples=NUM_SAMPLES, splits=1,
                                    generators=("ema",), programs=PROGRAMS)
    assert one["splits"] == 1 and "IS over 1 splits" in one["protocol"]
    assert one["FID"] == row["FID"] and one["IS"] != row["IS"]
