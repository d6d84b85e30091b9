"""Scores a run's checkpoints: `python -m sagan_jax.score --workdir=DIR [--step=N]`.

By default with the papers' protocol, whatever the run used while training: 50k
generated images, IS over 10 splits, FID and KID against the whole training set (the
cached reference statistics), precision, recall, density and coverage against the
reference's real pool, and for a conditional run intra-FID (and, with the digits net,
sample accuracy); `Evaluator.evaluate` says which apply when. For each checkpoint (all
of them, or `--step`), both the EMA and the raw generator make the images (compiled,
batched and sharded over all devices by `sampling.make_generate_fn`) that the run's
feature network (Inception, or the digits net for the quick start: `eval.feature_net` in
the run's config) scores.
Writes `DIR/eval/step_<N>.json` per step, `DIR/eval/scores.csv` (all steps scored so
far) and TensorBoard scalars under `DIR/eval`; every row names its protocol. Only
reads the checkpoints, so it can run beside the training run. DIR may be a bucket
(gs://...); on several processes (the flags of `sagan_jax.main`) all generate and
score, and process 0 writes.
"""
from __future__ import annotations

import inspect
import json

import jax
import ml_collections
from absl import app, flags, logging
from etils import epath

from sagan_jax import checkpointing, gan as gan_lib, parallel, sampling, startup
from sagan_jax import workdir as workdir_lib
from sagan_jax.evaluation.diversity import ClassDiversity
from sagan_jax.evaluation.evaluator import Evaluator
from sagan_jax.programs import Programs

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags, one per argument of `evaluate_workdir` and with its default
    (defined when run, so that importing this module next to `sagan_jax.main`, which
    also has --workdir, does not clash)."""
    default = {name: p.default
               for name, p in inspect.signature(evaluate_workdir).parameters.items()}
    flags.DEFINE_string("workdir", None, "The training run's directory.")
    flags.DEFINE_integer("step", default["step"], "Score only this checkpoint (default: all).")
    flags.DEFINE_integer("num_samples", default["num_samples"],
                         "Generated images per score (50k as in the papers).")
    flags.DEFINE_integer("splits", default["splits"], "IS splits (10 as in the papers).")
    flags.DEFINE_list("generators", list(default["generators"]),
                      f"Which weights of G to score: {', '.join(sampling.GENERATORS)}.")
    flags.DEFINE_integer("seed", default["seed"],
                         "Seed of the generated z (the same for every checkpoint).")
    flags.mark_flag_as_required("workdir")
    startup.define_flags()


def protocol(num_samples: int, splits: int, num_real: int) -> str:
    """How a score was computed, written beside it (scores of different protocols differ)."""
    return f"{num_samples} samples, IS over {splits} splits, FID/KID vs {num_real} real images"


def _row(step: int, name: str, scores: dict[str, float], diversity: ClassDiversity,
         **facts) -> dict:
    """One scored (step, generator): the scores (a per-class score '<score>/<class>' as
    '<score>_by_class': {class: value}) and the class-wise collapse check (the minimum
    ratio, the collapsed classes and each class's ratio)."""
    line = diversity.warning()
    if line:
        logging.warning("step %d, %s G: %s", step, name, line)
    overall, by_class = {}, {}
    for key, value in scores.items():
        score, _, cls = key.partition("/")
        if cls:
            by_class.setdefault(f"{score}_by_class", {})[cls] = value
        else:
            overall[key] = value
    return dict(step=step, generator=name, **facts, **overall, **by_class,
                diversity_ratio_min=diversity.minimum,
                collapsed_classes=" ".join(diversity.collapsed_classes),
                diversity_ratio=diversity.by_class())


def evaluate_workdir(workdir: epath.PathLike, step: int | None = None, num_samples: int = 50_000,
                     splits: int = 10, generators=sampling.GENERATORS,
                     seed: int = 0, programs: Programs = Programs()) -> list[dict]:
    """Scores checkpoints of the run in `workdir` and writes JSON, CSV and TensorBoard.

    Args:
      workdir: a training run's directory (with `config.json` and `checkpoints/`),
        local or gs://.
      step: one checkpoint step, or None for all of them.
      num_samples: generated images per score.
      splits: IS splits.
      generators: subset of ('ema', 'raw').
      seed: seed of the generation key, shared by all checkpoints.
      programs: builds the state and the generator (tests pass one that reuses
        compilations).

    Returns:
      One row per (step, generator): step, generator, num_samples, splits, feature_net,
      protocol, the scores ('IS', 'IS_std', 'FID', 'KID', 'precision', 'recall',
      'density', 'coverage', and where they apply 'intra_fid' and 'sample_accuracy' with
      their per-class 'intra_fid_by_class' and 'sample_accuracy_by_class'), the
      class-wise collapse check ('diversity_ratio_min', 'collapsed_classes' and the
      per-class 'diversity_ratio').

    Raises:
      FileNotFoundError: no run, no such step, or missing Inception weights.
      ValueError: an unknown generator name.
    """
    unknown = set(generators) - set(sampling.GENERATORS)
    if unknown:
        raise ValueError(f"unknown --generators {sorted(unknown)}; use "
                         f"{' and/or '.join(sampling.GENERATORS)}.")
    config = workdir_lib.read_config(workdir, require_run=True)
    ckpts = checkpointing.Checkpoints(workdir, config.checkpoint.keep, read_only=True)
    steps = ckpts.all_steps() if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {ckpts.directory} yet.")

    from clu import metric_writers  # pylint: disable=g-import-not-at-top

    mesh = parallel.create_mesh()
    eval_cfg = ml_collections.ConfigDict(config.eval.to_dict())
    eval_cfg.splits = splits

    def real_batches():  # Decoded only when the reference statistics are not cached.
        from sagan_jax import data  # pylint: disable=g-import-not-at-top
        ds = data.create_dataset(config.data, mesh.size, config.train.seed, mesh)
        return ds.eval_iterator(config.eval.batch_size)

    evaluator = Evaluator.create(eval_cfg, config.data, mesh, required=True,
                                 real_batches=real_batches)
    how = protocol(num_samples, splits, evaluator.reference.num_examples)
    gan = gan_lib.build(config, config.run.num_classes, config.run.channels)
    state_like = jax.device_put(programs.train_state(gan, config, jax.random.key(0)),
                                parallel.replicated_sharding(mesh))
    gen_fn = programs.generate_fn(gan, mesh)
    key = jax.random.key(seed)
    out_dir = workdir_lib.eval_dir(workdir)
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    writer = metric_writers.create_default_writer(str(out_dir),
                                                  just_logging=jax.process_index() > 0)
    rows = []
    try:
        for s in steps:
            state = ckpts.restore(s, state_like)
            step_rows = []
            for name in generators:
                params, model_state = sampling.g_weights(state, name)
                scores, diversity = evaluator.evaluate(
                    lambda k, y, p=params, m=model_state: gen_fn(p, m, k, y),
                    gan.num_classes, num_samples, key, config.monitor.collapse_threshold)
                row = _row(s, name, scores, diversity,
                           num_samples=num_samples, splits=splits,
                           feature_net=config.eval.feature_net, protocol=how)
                step_rows.append(row)
                writer.write_scalars(s, {f"{name}/{k}": v for k, v in
                                         {**scores, **diversity.to_scalars()}.items()})
                logging.info("step %d, %s G (%s): IS %.4g, FID %.4g, KID %.4g, precision "
                             "%.3g, recall %.3g, min diversity ratio %.3g", s, name, how,
                             row["IS"], row["FID"], row["KID"], row["precision"],
                             row["recall"], row["diversity_ratio_min"])
            workdir_lib.write_step_scores(workdir, s, step_rows)
            rows.extend(step_rows)
        writer.write_texts(steps[-1], {"protocol": how})
    finally:
        writer.flush()
        ckpts.close()
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        startup.init(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                     FLAGS.allow_cpu, startup.compile_cache_setting(FLAGS.workdir))
        rows = evaluate_workdir(**{name: getattr(FLAGS, name)
                                   for name in inspect.signature(evaluate_workdir).parameters
                                   if name != "programs"})
    except (ValueError, OSError) as e:
        startup.exit_with_error(e)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    define_flags()
    app.run(main)
