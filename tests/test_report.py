"""`python -m sagan_jax.report`: known numbers written into fake workdirs come out in the table.

Three runs, each with another source of scores: scores.csv (which must win over the
training log's scores), clu's tensor summaries, and classic TensorBoard scalars of the raw
G only (the fallback generator).
"""
import math
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from clu import metric_writers
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from sagan_jax import report, startup
from sagan_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Matplotlib's first three cycle colours: runs 0, 1, 2 of the report.
RUN_COLOURS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)]


def config(attention, limit, path, extra=None):
    c = {"data": {"name": "cifar10", "path": path, "image_size": 32},
         "model": {"g_attention": attention, "width": 1.0, "conditional": True},
         "optim": {"g_lr": 1e-4, "d_lr": 4e-4},
         "update_rule": {"d_loss_limit": limit, "n_dis": 1},
         "eval": {"num_samples": 10000, "stats_dir": path + "/stats"}}
    c.update(extra or {})
    return c


def write_workdir(root, name, cfg):
    workdir = root / name
    (workdir / "eval").mkdir(parents=True)
    workdir_lib.write_config(workdir, ml_collections.ConfigDict(cfg), run={})
    return workdir


def write_clu(workdir, scalars):
    """{step: {tag: value}} through clu's default writer (tensor summaries)."""
    writer = metric_writers.create_default_writer(str(workdir), asynchronous=False)
    for step, values in sorted(scalars.items()):
        writer.write_scalars(step, values)
    writer.flush()
    writer.close()


def write_classic(workdir, scalars):
    """{step: {tag: value}} as classic `simple_value` scalar summaries."""
    writer = EventFileWriter(str(workdir))
    for step, values in sorted(scalars.items()):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v)
                                             for t, v in values.items()])
        writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
    writer.close()


def losses(d0, g0):
    return {s: {"train/d_loss": d0 + 0.001 * s, "train/g_loss": g0 - 0.001 * s}
            for s in range(100, 3001, 100)}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # case_a: scores.csv; its training log's scores differ and must be ignored.
    a = write_workdir(root, "case_a", config([8], math.inf, "/data/a"))
    # A column the report does not know ("extra"), which it must ignore; the new scores
    # at step 3000 only (empty cells elsewhere), and other values at the 2000 samples.
    new = {(3000, 10000): dict(precision=0.75, recall=0.5, density=1.125, coverage=0.625,
                               intra_fid=40.25, sample_accuracy=0.875),
           (3000, 2000): dict(precision=0.0, recall=0.0, density=0.0, coverage=0.0,
                              intra_fid=1.0, sample_accuracy=0.0)}
    rows = [dict(step=s, generator=g, num_samples=n, feature_net="inception", protocol="tf",
                 IS=i, IS_std=0.1, FID=f, KID=0.01, extra="",
                 **(new.get((s, n), {}) if g == "ema" else {}))
            for s, g, n, i, f in [
                (1000, "ema", 10000, 5.125, 40.0), (2000, "ema", 10000, 6.5, 30.25),
                (3000, "ema", 10000, 6.25, 25.5),
                (3000, "ema", 2000, 9.0, 1.0),  # Fewer samples: not comparable, left out.
                (1000, "raw", 10000, 7.0, 2.0), (3000, "raw", 10000, 8.0, 3.0)]]
    workdir_lib.write_scores_csv(a, rows)
    train_a = losses(1.0, 0.5)
    train_a[2000].update({"eval/ema/IS": 99.0, "eval/ema/FID": 99.0, "eval/ema/recall": 0.0})
    write_clu(a, train_a)
    # case_b: in-training scores of the EMA G (clu tensors), no scores.csv; precision and
    # recall, none of the other new scores.
    b = write_workdir(root, "case_b", config([], 0.5, "/data/b"))
    train_b = losses(1.5, 0.25)
    for step, is_, fid, p, r in [(500, 4.0, 60.0, 0.25, 0.125), (1000, 5.875, 35.0, 0.5, 0.25),
                                 (1500, 5.5, 37.75, 0.375, 0.75)]:
        train_b[step] = {**train_b.get(step, {}), "eval/ema/IS": is_, "eval/ema/FID": fid,
                         "eval/ema/precision": p, "eval/ema/recall": r}
    write_clu(b, train_b)
    # case_c: classic scalars, only the raw G scored; a config section the others lack.
    c = write_workdir(root, "case_c", config([8], math.inf, "/data/c",
                                             {"monitor": {"d_jump_threshold": 4.0}}))
    train_c = losses(2.0, 0.0)
    for step, is_, fid in [(1000, 3.0, 80.0), (2000, 3.5, 70.5)]:
        train_c[step].update({"eval/raw/IS": is_, "eval/raw/FID": fid})
    write_classic(c, train_c)
    return [str(a), str(b), str(c)]


def table(markdown):
    """The first Markdown table as {case: {column: cell}}, columns in order."""
    lines = [l for l in markdown.splitlines() if l.startswith("|")]
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    return head, {r[0]: r for r in rows}


def test_table_has_the_known_numbers_and_only_differing_settings(workdirs, tmp_path):
    out = tmp_path / "out" / "report.md"
    markdown = report.write_report(workdirs, str(out))
    assert out.read_text() == markdown
    head, rows = table(markdown)
    assert head == ["case", "model.g_attention", "monitor.d_jump_threshold",
                    "update_rule.d_loss_limit", "best IS", "step", "best FID", "step",
                    "final IS", "final FID", "final precision", "final recall",
                    "final density", "final coverage", "final intra-FID",
                    "final sample accuracy", "final step", "scored"]
    assert rows["case_a"] == ["case_a", "[8]", "–", "inf", "6.500", "2000", "25.50", "3000",
                              "6.250", "25.50", "0.750", "0.500", "1.125", "0.625", "40.25",
                              "0.875", "3000", "ema, 10000 samples, scores.csv"]
    assert rows["case_b"] == ["case_b", "[]", "–", "0.5", "5.875", "1000", "35.00", "1000",
                              "5.500", "37.75", "0.375", "0.750", "–", "–", "–", "–", "1500",
                              "ema, 10000 samples, training log"]
    assert rows["case_c"] == ["case_c", "[8]", "4", "inf", "3.500", "2000", "70.50", "2000",
                              "3.500", "70.50", "–", "–", "–", "–", "–", "–", "2000",
                              "raw, 10000 samples, training log"]
    assert "![IS and FID over training](report_scores.png)" in markdown
    assert "![D and G loss over training](report_losses.png)" in markdown


def test_table_leaves_out_scores_that_no_run_has(workdirs, tmp_path):
    head, _ = table(report.write_report(workdirs[2:], str(tmp_path / "c.md")))
    assert head[-4:] == ["final IS", "final FID", "final step", "scored"]
    head, _ = table(report.write_report(workdirs[1:], str(tmp_path / "bc.md")))
    assert head[-6:] == ["final IS", "final FID", "final precision", "final recall",
                         "final step", "scored"]


def test_plots_overlay_every_run(workdirs, tmp_path):
    out = tmp_path / "report.md"
    report.write_report(workdirs, str(out))
    for name in ("report_scores.png", "report_losses.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert image.shape[0] >= 300 and image.shape[1] >= 800, name
        colours = {tuple(p) for p in image.reshape(-1, 3)}
        assert len(colours) > 20, name
        for colour in RUN_COLOURS:  # Each run's line is drawn in its own colour.
            assert colour in colours, (name, colour)


def test_losses_and_scores_read_back_exactly(workdirs):
    run = report.load_run(workdirs[1])
    steps, d_loss = run.losses["d_loss"]
    np.testing.assert_array_equal(steps, np.arange(100, 3001, 100))
    np.testing.assert_allclose(d_loss, 1.5 + 0.001 * steps, rtol=1e-6)  # float32 on disk.
    np.testing.assert_array_equal(run.scores["FID"][0], [500, 1000, 1500])
    np.testing.assert_allclose(run.scores["FID"][1], [60.0, 35.0, 37.75])


def test_a_resumed_run_keeps_the_values_written_last(tmp_path):
    write_clu(tmp_path, {1: {"train/d_loss": 1.0}, 2: {"train/d_loss": 2.0}})
    # The resumed run restarts from the checkpoint of step 1 and logs step 2 again.
    write_clu(tmp_path, {2: {"train/d_loss": 5.0}, 3: {"train/d_loss": 6.0}})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    steps, values = report.read_scalars(str(tmp_path))["train/d_loss"]
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(values, [1.0, 5.0, 6.0])


def test_no_plots_without_curves(tmp_path):
    empty = write_workdir(tmp_path, "empty", config([], 0.5, "/d"))
    markdown = report.write_report([str(empty)], str(tmp_path / "r.md"))
    _, rows = table(markdown)
    assert rows["empty"][-1] == "not scored"
    assert ".png" not in markdown and not list(tmp_path.glob("*.png"))


def test_flatten_and_place_settings():
    flat = report.flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x"})
    assert flat == {"a.b": 1, "a.c.d": [2], "e": "x"}
    runs = [report.Run(n, n, {"data.path": n, "data.data_dir": n, "eval.inception_weights": n,
                              "workdir": n, "model.width": w, "train.seed": 0}, {}, "", {})
            for n, w in (("x", 1.0), ("y", 0.5))]
    assert report.differing_settings(runs) == ["model.width"]


@pytest.mark.slow
def test_cli_writes_the_report_and_names_a_bad_workdir(workdirs, tmp_path):
    out = tmp_path / "cli.md"
    done = subprocess.run([sys.executable, "-m", "sagan_jax.report", "--workdirs", *workdirs,
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert table(out.read_text())[1].keys() == {"case_a", "case_b", "case_c"}

    done = subprocess.run([sys.executable, "-m", "sagan_jax.report", "--workdirs",
                           f"{workdirs[0]},{tmp_path}", "--out", str(tmp_path / "x.md")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/config.json not found; give the --workdir of a training run.")


@pytest.mark.parametrize("error,line", [
    (ValueError("bad value;\n  choose   another."), "bad value; choose another."),
    (KeyError("'x' is no field"), "'x' is no field"),  # Only KeyError's own quotes go.
    (FileNotFoundError(2, "No such file or directory", "/r/x"),
     "[Errno 2] No such file or directory: '/r/x'"),
    (ValueError("flag --config: Error:\\n\\nTraceback (most recent call last):\\n  File x\\n"
                "ValueError: no row 9."), "ValueError: no row 9."),  # A wrapped traceback.
])
def test_every_cli_error_is_one_line(error, line):
    assert startup.one_line(error) == line
    with pytest.raises(SystemExit) as e:
        startup.exit_with_error(error)
    assert e.value.code == f"error: {line}"
