"""Renders a checkpoint: `python -m sagan_jax.render --workdir=DIR [--step=N|best|last]`.

Writes three PNGs into `DIR/render/step_<N>_<generator>/`:
- `samples.png`: one column per class (at most `--classes`), `--rows` samples each;
- `latent_interpolation.png`: one row per class, G along a path between two `z`
  (`--interpolation` slerp or linear, `--points` images);
- `class_interpolation.png` (conditional G): one row per pair of consecutive classes,
  one fixed `z`, the class weights going from one class to the next.

A class whose latent row shows one image throughout has collapsed (the original's
finding on AnimeFace and Flowers; see README, "Catching collapse"). `--step=best` picks
the checkpoint with the best score of the chosen generator in the scores that
`sagan_jax.score` wrote in `DIR/eval/scores.csv`: `--best_by=FID` the lowest FID (the
highest IS when no FID was computed), `--best_by=IS` the highest IS, as the original
chose; the default is the run's `eval.best_by` (IS under `,original`). `--bn=train`
renders with batch statistics, as the original's sampling script did (`--generator=raw
--bn=train --interpolation=linear --points=5` is its protocol). Only reads the run.
"""
from __future__ import annotations

import inspect

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath

from sagan_jax import checkpointing, gan as gan_lib, parallel, sampling, startup
from sagan_jax import visualize, workdir as workdir_lib
from sagan_jax.programs import Programs

FLAGS = flags.FLAGS
BEST_BY = ("FID", "IS")


def define_flags() -> None:
    """The CLI's flags, one per argument of `render` and with its default (defined when
    run, so that importing this module beside `sagan_jax.main`, which also has
    --workdir, does not clash)."""
    default = {name: p.default for name, p in inspect.signature(render).parameters.items()}
    flags.DEFINE_string("workdir", None, "The training run's directory.")
    flags.DEFINE_string("step", default["step"],
                        "A checkpoint step, 'last', or 'best' (see --best_by).")
    flags.DEFINE_enum("best_by", default["best_by"], list(BEST_BY),
                      "--step=best: the lowest FID or the highest IS (default: the run's "
                      "eval.best_by).")
    flags.DEFINE_enum("generator", default["generator"], list(sampling.GENERATORS),
                      "G's EMA or raw weights.")
    flags.DEFINE_enum("bn", default["bn"], ["eval", "train"],
                      "BatchNorm with running ('eval') or batch ('train') statistics.")
    flags.DEFINE_enum("interpolation", default["interpolation"], list(visualize.INTERPOLATIONS),
                      "Path between two z.")
    flags.DEFINE_integer("points", default["points"], "Images per interpolation row.")
    flags.DEFINE_integer("rows", default["rows"], "Samples per class in samples.png.")
    flags.DEFINE_integer("classes", default["classes"],
                         "At most this many classes (the first ones).")
    flags.DEFINE_integer("seed", default["seed"], "Seed of the z.")
    flags.DEFINE_string("out", default["out"],
                        "Output folder (default DIR/render/step_N_GENERATOR).")
    flags.mark_flag_as_required("workdir")
    startup.define_flags(processes=False)


def best_step(workdir: str, generator: str, by: str = "FID") -> tuple[int, str, float]:
    """(step, metric, value) of the best-scored checkpoint of `generator` in scores.csv
    (see `workdir.Scores.best`).

    Raises:
      FileNotFoundError: no scores to choose from.
    """
    scores = workdir_lib.read_scores(workdir)
    if generator not in scores:
        raise FileNotFoundError(
            f"{workdir_lib.scores_file(workdir)} has no scores of the {generator} G; score "
            f"it with `python -m sagan_jax.score --generators={generator}`.")
    return scores[generator].best(by)


def choose_best_by(config, best_by: str | None) -> str:
    """`best_by`, or the run's `eval.best_by` (FID in runs configured before it existed)."""
    best_by = best_by or config.eval.get("best_by", "FID")
    if best_by not in BEST_BY:
        raise ValueError(f"best_by {best_by!r}: use --best_by=FID or --best_by=IS.")
    return best_by


def _resolve_step(workdir: str, step: str, generator: str, available: list[int],
                  best_by: str) -> int:
    if step == "best":
        chosen, metric, value = best_step(workdir, generator, best_by)
        logging.info("best checkpoint of the %s G: step %d (%s %.4g)", generator, chosen,
                     metric, value)
        return chosen
    if step == "last":
        if not available:
            raise FileNotFoundError(f"no checkpoints in {workdir}/checkpoints yet.")
        return available[-1]
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"--step={step!r}: give a step number, 'last' or 'best'.") from None


def render(workdir: str, step: str = "last", generator: str = "ema", bn: str = "eval",
           interpolation: str = "slerp", points: int = 8, rows: int = 8, classes: int = 16,
           seed: int = 0, out: str | None = None, best_by: str | None = None,
           programs: Programs = Programs()) -> dict[str, str]:
    """Writes the PNGs of one checkpoint (see the module docstring); returns name -> path.

    `best_by` (with `step='best'`): 'FID' or 'IS'; None takes the run's `eval.best_by`
    (FID in runs configured before it existed). `programs` builds the state (tests pass
    one that reuses compilations).
    """
    config = workdir_lib.read_config(workdir, require_run=True)
    best_by = choose_best_by(config, best_by)
    gan = gan_lib.build(config, config.run.num_classes, config.run.channels)
    ckpts = checkpointing.Checkpoints(workdir, config.checkpoint.keep, read_only=True)
    try:
        chosen = _resolve_step(workdir, step, generator, ckpts.all_steps(), best_by)
        like = programs.train_state(gan, config, jax.random.key(0))
        state = ckpts.restore(chosen, jax.device_put(like, parallel.replicated_sharding(
            parallel.create_mesh(jax.devices()[:1]))))
    finally:
        ckpts.close()
    params, model_state = sampling.g_weights(state, generator)
    variables = {"params": params, **model_state}
    # One device, outside any mesh: batch statistics need no axis to sync over.
    g = gan.generator.clone(bn_axis_name=None)

    @jax.jit
    def apply(z, labels):
        y = gan.labels_or_none(labels)
        if bn == "eval":
            return g.apply(variables, z, y)
        images, _ = g.apply(variables, z, y, train=True, mutable=["batch_stats", "spectral_norm"])
        return images

    out = epath.Path(out or workdir_lib.render_dir(workdir, chosen, generator))
    scale = max(1, 64 // config.model.resolution)
    key = jax.random.key(seed)
    n = gan.num_classes
    shown = np.arange(min(n, classes)) if n else np.zeros(rows, np.int32)
    grids = {
        "samples": visualize.class_grid(apply, gan, key, rows, classes),
        "latent_interpolation": visualize.interpolation_grid(
            apply, gan, jax.random.fold_in(key, 1), shown, points, interpolation),
    }
    if n > 1:
        pairs = np.stack([shown, (shown + 1) % n], axis=1)
        grids["class_interpolation"] = visualize.class_interpolation_grid(
            apply, gan, jax.random.fold_in(key, 2), pairs, points)
    paths = {}
    for name, grid in grids.items():
        paths[name] = str(out / f"{name}.png")
        visualize.save_png(paths[name], grid, scale=scale)
    logging.info("rendered step %d (%s G, %s BN) into %s", chosen, generator, bn, out)
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        startup.init(allow_cpu=FLAGS.allow_cpu,
                     compile_cache=startup.compile_cache_setting(FLAGS.workdir))
        paths = render(**{name: getattr(FLAGS, name)
                          for name in inspect.signature(render).parameters
                          if name != "programs"})
    except (ValueError, OSError) as e:
        startup.exit_with_error(e)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    define_flags()
    app.run(main)
