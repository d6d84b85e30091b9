"""Scores a run's checkpoints: `python -m sagan_jax.evaluate --workdir=DIR [--step=N]`.

For each checkpoint (all of them, or `--step`), both the EMA and the raw generator make
`--num_samples` images (compiled, batched and sharded over all devices by
`train_step.make_generate_fn`) that the run's evaluator (Inception IS/FID/KID, or the
digits feature net for the quick start; `eval.feature_net` in the run's config) scores.
Writes `DIR/eval/step_<N>.json` per step, `DIR/eval/scores.csv` (all steps scored so
far) and TensorBoard scalars under `DIR/eval`. Only reads the checkpoints, so it can run
beside the training run.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import sys

import jax
import ml_collections
from absl import app, flags, logging

from sagan_jax import checkpointing, data_sources, parallel, train_step

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags (defined when run, so that importing this module next to
    `sagan_jax.main`, which also has --workdir, does not clash)."""
    flags.DEFINE_string("workdir", None, "The training run's directory.")
    flags.DEFINE_integer("step", None, "Score only this checkpoint (default: all).")
    flags.DEFINE_integer("num_samples", 50_000,
                         "Generated images per score (50k as in the papers).")
    flags.DEFINE_list("generators", ["ema", "raw"], "Which weights of G to score: ema, raw.")
    flags.DEFINE_integer("seed", 0, "Seed of the generated z (the same for every checkpoint).")
    flags.mark_flag_as_required("workdir")

EVAL_DIR = "eval"
_WEIGHTS = {"ema": ("ema_params", "ema_state"), "raw": ("g_params", "g_state")}


def _write_step(out_dir: str, step: int, rows: list[dict]) -> str:
    path = os.path.join(out_dir, f"step_{step:07d}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)
    return path


def _write_csv(out_dir: str) -> str:
    """Rebuilds scores.csv from every step's JSON, so reruns never duplicate rows."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, "step_*.json"))):
        with open(path) as f:
            rows.extend(json.load(f))
    path = os.path.join(out_dir, "scores.csv")
    with open(path, "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate_workdir(workdir: str, step: int | None = None, num_samples: int = 50_000,
                     generators=("ema", "raw"), seed: int = 0) -> list[dict]:
    """Scores checkpoints of the run in `workdir` and writes JSON, CSV and TensorBoard.

    Args:
      workdir: a training run's directory (with `config.json` and `checkpoints/`).
      step: one checkpoint step, or None for all of them.
      num_samples: generated images per score.
      generators: subset of ('ema', 'raw').
      seed: seed of the generation key, shared by all checkpoints.

    Returns:
      One row per (step, generator): step, generator, num_samples, feature_net and the
      scores ('IS', 'IS_std', 'FID', 'KID').

    Raises:
      FileNotFoundError: no run, no such step, or missing Inception weights.
      ValueError: an unknown generator name.
    """
    unknown = set(generators) - set(_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown --generators {sorted(unknown)}; use ema and/or raw.")
    config = checkpointing.read_config(workdir)
    ckpts = checkpointing.Checkpoints(workdir, config.checkpoint.keep, read_only=True)
    steps = ckpts.all_steps() if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {ckpts.directory} yet.")

    data_sources.import_tf()  # TF only writes logs here: it is kept off the GPUs.
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    from sagan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    from sagan_jax.evaluation.evaluator import Evaluator  # pylint: disable=g-import-not-at-top

    mesh = parallel.create_mesh()
    ds = input_pipeline.create_dataset(config.data, mesh.size, config.train.seed, mesh)
    num_classes = ds.num_classes if config.model.conditional else 0
    eval_cfg = ml_collections.ConfigDict(config.eval.to_dict())
    eval_cfg.num_samples = num_samples
    evaluator = Evaluator.create(
        eval_cfg, config.data, mesh, required=True,
        real_batches=lambda: ds.eval_iterator(config.eval.batch_size))
    state_like = jax.device_put(
        train_step.create_train_state(config, num_classes, ds.channels, jax.random.key(0)),
        parallel.replicated_sharding(mesh))
    gen_fn = train_step.make_generate_fn(config, num_classes, ds.channels, mesh)
    key = jax.random.key(seed)
    out_dir = os.path.join(workdir, EVAL_DIR)
    os.makedirs(out_dir, exist_ok=True)
    writer = metric_writers.create_default_writer(out_dir, just_logging=jax.process_index() > 0)
    rows = []
    try:
        for s in steps:
            state = ckpts.restore(s, state_like)
            step_rows = []
            for name in generators:
                params, model_state = (getattr(state, a) for a in _WEIGHTS[name])
                scores = evaluator.evaluate(
                    lambda k, y, p=params, m=model_state: gen_fn(p, m, k, y),
                    num_classes, num_samples, key)
                scores = {k: float(v) for k, v in scores.items()}
                step_rows.append(dict(step=s, generator=name, num_samples=num_samples,
                                      feature_net=config.eval.feature_net, **scores))
                writer.write_scalars(s, {f"{name}/{k}": v for k, v in scores.items()})
                logging.info("step %d, %s G: %s", s, name, scores)
            if jax.process_index() == 0:
                _write_step(out_dir, s, step_rows)
                _write_csv(out_dir)
            rows.extend(step_rows)
    finally:
        writer.flush()
        ckpts.close()
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    checkpointing.quiet_orbax_logs()
    try:
        rows = evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.num_samples,
                                tuple(FLAGS.generators), FLAGS.seed)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {' '.join(str(e).split())}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    define_flags()
    app.run(main)
