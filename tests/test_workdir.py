"""`sagan_jax.workdir`: the files of a run directory, written and read back by hand-known values."""
import json
import math

import ml_collections
import numpy as np
import pytest
from etils import epath

from sagan_jax import workdir as workdir_lib


def score_row(step, generator, num_samples, is_, fid, **extra):
    return dict(step=step, generator=generator, num_samples=num_samples, IS=is_, FID=fid, **extra)


def test_step_scores_rebuild_the_csv_and_a_rescored_step_replaces_its_rows(tmp_path):
    ratios = {"0": 0.75, "3": 0.125}
    workdir_lib.write_step_scores(tmp_path, 10, [score_row(10, "ema", 64, 6.5, 12.25)])
    workdir_lib.write_step_scores(tmp_path, 2, [
        score_row(2, "ema", 64, 5.5, 20.0, collapsed_classes="3", diversity_ratio=ratios),
        score_row(2, "raw", 64, 5.0, math.nan, collapsed_classes="")])
    step_2 = tmp_path / "eval" / "step_0000002.json"
    assert json.loads(step_2.read_text())[0]["diversity_ratio"] == ratios  # Kept in the JSON.
    # Steps in order whatever the order scored; the ratios' dict is not a column; a value
    # a row lacks stays empty; csv's line ends.
    assert (tmp_path / "eval" / "scores.csv").read_bytes() == (
        b"step,generator,num_samples,IS,FID,collapsed_classes\r\n"
        b"2,ema,64,5.5,20.0,3\r\n"
        b"2,raw,64,5.0,nan,\r\n"
        b"10,ema,64,6.5,12.25,\r\n")
    workdir_lib.write_step_scores(tmp_path, 2, [score_row(2, "raw", 64, 4.0, 30.0)])
    assert (tmp_path / "eval" / "scores.csv").read_text().splitlines() == [
        "step,generator,num_samples,IS,FID", "2,raw,64,4.0,30.0", "10,ema,64,6.5,12.25"]


def test_scores_are_read_per_generator_at_the_largest_sample_count(tmp_path):
    workdir_lib.write_scores_csv(tmp_path, [
        score_row(1, "ema", 100, 9.0, 1.0),  # Fewer samples: not comparable, left out.
        score_row(2, "ema", 1000, 6.0, 40.0),
        score_row(3, "ema", 1000, 7.0, ""),  # FID not computed.
        score_row(4, "ema", 1000, 6.5, 45.0),
        score_row(2, "raw", 1000, "", "")])
    scores = workdir_lib.read_scores(tmp_path)
    assert sorted(scores) == ["ema", "raw"]
    ema = scores["ema"]
    assert (ema.generator, ema.num_samples) == ("ema", 1000)
    np.testing.assert_array_equal(ema.curves["IS"][0], [2, 3, 4])
    np.testing.assert_array_equal(ema.curves["IS"][1], [6.0, 7.0, 6.5])
    np.testing.assert_array_equal(ema.curves["FID"][1], [40.0, np.nan, 45.0])
    assert ema.best("FID") == (2, "FID", 40.0)
    assert ema.best("IS") == (3, "IS", 7.0)
    with pytest.raises(FileNotFoundError, match="no IS of the raw G; score it with sagan_jax"):
        scores["raw"].best("FID")  # No FID, so IS; and no IS either.
    with pytest.raises(FileNotFoundError, match="no IS of the raw G; choose by FID"):
        scores["raw"].best("IS")


def test_new_scores_are_columns_and_curves_and_their_classes_stay_in_the_json(tmp_path):
    new = dict(precision=0.75, recall=0.5, density=1.125, coverage=0.625, intra_fid=12.5,
               sample_accuracy=0.875)
    by_class = dict(intra_fid_by_class={"0": 10.0, "1": 15.0},
                    sample_accuracy_by_class={"0": 1.0, "1": 0.75})
    workdir_lib.write_step_scores(tmp_path, 4, [score_row(4, "ema", 64, 6.5, 2.0, **new,
                                                          **by_class)])
    workdir_lib.write_step_scores(tmp_path, 2, [score_row(2, "ema", 64, 6.0, 3.0,
                                                          precision=0.25)])
    step_4 = json.loads((tmp_path / "eval" / "step_0000004.json").read_text())[0]
    assert {k: step_4[k] for k in by_class} == by_class
    assert (tmp_path / "eval" / "scores.csv").read_text().splitlines() == [
        "step,generator,num_samples,IS,FID,precision,recall,density,coverage,intra_fid,"
        "sample_accuracy", "2,ema,64,6.0,3.0,0.25,,,,,", "4,ema,64,6.5,2.0,0.75,0.5,1.125,"
        "0.625,12.5,0.875"]
    curves = workdir_lib.read_scores(tmp_path)["ema"].curves
    assert list(curves) == list(workdir_lib.SCORED)
    np.testing.assert_array_equal(curves["precision"][1], [0.25, 0.75])
    for name, value in new.items():
        np.testing.assert_array_equal(curves[name][0], [2, 4])
        assert curves[name][1][1] == value, name


def test_scores_without_sample_counts_keep_every_row(tmp_path):
    workdir_lib.write_scores_csv(tmp_path, [dict(step=5, generator="raw", IS=3.0),
                                            dict(step=7, generator="raw", IS=3.5)])
    (raw,) = workdir_lib.read_scores(tmp_path).values()
    assert raw.num_samples == 0 and list(raw.curves) == ["IS"]
    assert raw.best("FID") == (7, "IS", 3.5)  # No FID column: the highest IS.


def test_missing_scores_name_the_command_that_writes_them(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        workdir_lib.read_scores(tmp_path)
    assert str(e.value) == (f"{tmp_path}/eval/scores.csv not found; score the checkpoints "
                            f"first with `python -m sagan_jax.score --workdir={tmp_path}`.")


def test_best_point_ignores_values_that_are_not_finite():
    steps = np.array([1, 2, 3, 4])
    values = np.array([np.nan, 3.0, np.inf, 3.0])
    assert workdir_lib.best_point((steps, values), lower_is_better=True) == (3.0, 2)
    assert workdir_lib.best_point((steps, values), lower_is_better=False) == (3.0, 2)
    assert workdir_lib.best_point((steps, np.full(4, np.nan)), True)[1] is None
    assert workdir_lib.best_point(None, True)[1] is None


def test_config_round_trip_and_the_run_section(tmp_path):
    config = ml_collections.ConfigDict({"model": {"attention": (8,), "width": 1.0},
                                        "update_rule": {"d_loss_limit": math.inf}})
    workdir_lib.write_config(tmp_path, config, {"num_classes": 10, "channels": 1})
    settings = workdir_lib.read_settings(tmp_path)
    assert settings == {"model": {"attention": [8], "width": 1.0},
                        "update_rule": {"d_loss_limit": math.inf},
                        "run": {"num_classes": 10, "channels": 1}}
    read = workdir_lib.read_config(tmp_path, require_run=True)
    assert read.model.attention == (8,) and read.run.num_classes == 10

    # An older sagan_jax wrote the config without its `run` section.
    (tmp_path / "config.json").write_text(json.dumps(workdir_lib.jsonable(config)))
    assert "run" not in workdir_lib.read_config(tmp_path)
    with pytest.raises(ValueError) as e:
        workdir_lib.read_config(tmp_path, require_run=True)
    assert str(e.value) == (
        f"{tmp_path}/config.json has no 'run' section (written by an older sagan_jax); "
        "resume the run once with this version to rewrite it.")


def test_a_missing_config_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        workdir_lib.read_settings(tmp_path / "nothing")
    assert str(e.value) == (
        f"{tmp_path}/nothing/config.json not found; give the --workdir of a training run.")


def test_render_folders():
    assert workdir_lib.render_dir("gs://bucket/run", 40, "ema") == epath.Path(
        "gs://bucket/run/render/step_40_ema")
    local = workdir_lib.render_dir("run", 7, "raw")
    assert local.is_absolute() and local.parts[-3:] == ("run", "render", "step_7_raw")


def test_kept_steps_outlive_the_rotation_and_a_restart(tmp_path):
    # The D-loss jump's checkpoint (keep_forever) stays when `keep` rotates the others
    # out, in this manager and in the next one, which reads kept_steps.json back.
    from sagan_jax import checkpointing  # pylint: disable=g-import-not-at-top

    assert workdir_lib.read_kept_steps(tmp_path) == set()
    config = ml_collections.ConfigDict({"model": {"ch": 1}})
    ckpts = checkpointing.Checkpoints(tmp_path, keep=2)
    for step in range(1, 6):
        ckpts.save(step, {"w": np.full(3, step, np.float32)}, config, keep_forever=step == 2)
    ckpts.close()
    assert json.loads((tmp_path / "kept_steps.json").read_text()) == [2]
    ckpts = checkpointing.Checkpoints(tmp_path, keep=2)
    assert ckpts.all_steps() == [2, 4, 5]
    ckpts.save(6, {"w": np.full(3, 6, np.float32)}, config)
    ckpts.close()
    assert checkpointing.Checkpoints(tmp_path, 2, read_only=True).all_steps() == [2, 5, 6]
    workdir_lib.write_kept_steps(tmp_path, {9, 2})
    assert workdir_lib.read_kept_steps(tmp_path) == {2, 9}
