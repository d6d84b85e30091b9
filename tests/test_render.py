"""`python -m sagan_jax.render`: the three PNGs of a checkpoint, and `--step=best`."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiled_once import PROGRAMS
from PIL import Image

from sagan_jax import checkpointing, gan as gan_lib, parallel, render, train
from sagan_jax import workdir as workdir_lib


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step digits run with checkpoints 2 and 3."""
    config = importlib.import_module("configs.digits").get_config("test")
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir, programs=PROGRAMS)
    return workdir, config


def test_best_step_is_the_lowest_fid_of_the_most_samples(tmp_path):
    row = lambda step, gen, n, fid, is_: dict(step=step, generator=gen, num_samples=n,
                                              FID=fid, IS=is_)
    workdir_lib.write_scores_csv(tmp_path, [
        row(2, "ema", 50000, 30.0, 7.0), row(4, "ema", 50000, 20.0, 6.0),
        row(6, "ema", 50000, 25.0, 8.0), row(6, "ema", 1000, 5.0, 9.0),  # fewer samples
        row(8, "raw", 50000, 1.0, 1.0)])
    assert render.best_step(str(tmp_path), "ema") == (4, "FID", 20.0)
    assert render.best_step(str(tmp_path), "raw") == (8, "FID", 1.0)
    workdir_lib.write_scores_csv(tmp_path, [row(2, "ema", 100, "", 7.5),
                                            row(4, "ema", 100, "", 7.0)])
    assert render.best_step(str(tmp_path), "ema") == (2, "IS", 7.5)
    with pytest.raises(FileNotFoundError, match="sagan_jax.score --generators=raw"):
        render.best_step(str(tmp_path), "raw")


@pytest.mark.slow
def test_renders_have_the_documented_layout(run, tmp_path):
    workdir, config = run
    paths = render.render(workdir, step="last", generator="ema", points=5, rows=3,
                          classes=4, out=str(tmp_path / "out"), programs=PROGRAMS)
    assert sorted(paths) == ["class_interpolation", "latent_interpolation", "samples"]
    res, scale = 16, 4  # 16 px digits, shown 4x
    size = lambda cols, rows: ((cols * (res + 1) + 1) * scale, (rows * (res + 1) + 1) * scale)
    images = {k: Image.open(v) for k, v in paths.items()}
    assert images["samples"].size == size(4, 3)  # one column per class
    assert images["latent_interpolation"].size == size(5, 4)  # one row per class
    assert images["class_interpolation"].size == size(5, 4)
    for image in images.values():
        pixels = np.asarray(image)
        assert image.mode == "L" and pixels.dtype == np.uint8
        assert (pixels[0] == 255).all() and pixels.std() > 1  # white padding, real content

    # Independently: the class interpolation's ends are G at the one-hot classes.
    gan = gan_lib.build(config, 10, 1)
    like = PROGRAMS.train_state(gan, config, jax.random.key(0))
    ckpts = checkpointing.Checkpoints(workdir, 2, read_only=True)
    state = ckpts.restore(3, jax.device_put(like, parallel.replicated_sharding(
        parallel.create_mesh(jax.devices()[:1]))))
    ckpts.close()
    z, _ = gan.noise(jax.random.fold_in(jax.random.key(0), 2), jnp.arange(4))
    ends = gan.generator.apply({"params": state.ema_params, **state.ema_state},
                               jnp.concatenate([z, z]), jnp.asarray([0, 1, 2, 3, 1, 2, 3, 4]))
    cells = np.asarray(images["class_interpolation"])[::scale, ::scale]
    for r in range(4):
        top = 1 + r * (res + 1)
        for col, image in ((0, ends[r]), (4, ends[4 + r])):
            left = 1 + col * (res + 1)
            want = np.clip(np.rint((np.asarray(image[..., 0]) + 1) * 127.5), 0, 255)
            assert np.abs(cells[top:top + res, left:left + res] - want).max() <= 1


@pytest.mark.slow
def test_cli_best_without_scores_is_one_line(run):
    workdir, _ = run
    with pytest.raises(FileNotFoundError, match="score the checkpoints first") as e:
        render.render(workdir, step="best")
    assert "\n" not in str(e.value)
