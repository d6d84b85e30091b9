"""A run's directory: created and checked once, and the files that its tools share.

Layout: `config.json` (the config of the latest start, plus a `run` section with what
was derived from the data: classes, steps per epoch, the resolved run length and
rhythms), `checkpoints/` and `corrupt_checkpoints/` (`sagan_jax.checkpointing`),
`kept_steps.json` (the checkpoints kept whatever `checkpoint.keep` says), `samples/`
and `interpolations.png` (grids), `eval/` (`sagan_jax.score`: `step_<N>.json` per
scored step, `scores.csv` for all of them),
`render/step_<N>_<generator>/` (`sagan_jax.render`), TensorBoard event files. This
module reads and writes `config.json`, `kept_steps.json` and `eval/`, and names the
render folders.

Paths are `etils.epath.Path`s, so a workdir may be local or in a cloud bucket
(`gs://bucket/run`: what every host of a TPU slice can share); every file of a run is
read and written through them, never through `open` or `os.path`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

CONFIG_FILE = "config.json"
EVAL_DIR = "eval"
SCORES_FILE = "scores.csv"
KEPT_STEPS_FILE = "kept_steps.json"
RENDER_DIR = "render"
# The columns of scores.csv that `read_scores` returns as curves (FID: lower is better),
# and the `eval/<G>/<score>` tags that `report` reads without it; intra-FID and sample
# accuracy only for conditional runs (and sample accuracy only with the digits net).
SCORED = ("IS", "FID", "precision", "recall", "density", "coverage", "intra_fid",
          "sample_accuracy")

Curve = tuple[np.ndarray, np.ndarray]  # (steps int64, values float64), steps ascending.


def is_cloud(path: epath.PathLike) -> bool:
    """Whether `path` is a URL of a storage service (gs://, s3://, ...), not a local path."""
    return "://" in os.fspath(path)


def resolve(path: epath.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a local path absolute with `~` expanded, a URL as given."""
    path = epath.Path(path)
    return path if is_cloud(path) else path.expanduser().absolute()


def _reason(error: Exception) -> str:
    """The cause of an I/O error in a few words (local: the OS's; cloud: the first line)."""
    return getattr(error, "strerror", None) or (str(error).splitlines() or [""])[0][:200]


def prepare(workdir: epath.PathLike) -> epath.Path:
    """Creates `workdir` if needed and checks that it can be written; returns its `resolve`d path.

    Raises:
      PermissionError: the directory cannot be created or written (one line).
    """
    workdir = resolve(workdir)
    probe = workdir / f".write_test_{jax.process_index()}_{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except Exception as e:  # pylint: disable=broad-except -- cloud clients raise their own types.
        raise PermissionError(
            f"cannot write to workdir {workdir} ({_reason(e)}); choose a --workdir you can "
            "write to.") from None
    return workdir


def jsonable(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists, inf stays a float)."""
    return json.loads(config.to_json())


def write_config(workdir: epath.PathLike, config: ml_collections.ConfigDict,
                 run: dict[str, Any]) -> None:
    """Writes `config.json`: the config and its derived `run` section (process 0 only)."""
    if jax.process_index() == 0:
        (resolve(workdir) / CONFIG_FILE).write_text(
            json.dumps({**jsonable(config), "run": run}, indent=2, sort_keys=True))


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def read_settings(workdir: epath.PathLike) -> dict[str, Any]:
    """`config.json` as written: the config and its `run` section in plain JSON types.

    Raises:
      FileNotFoundError: `workdir` has no config.json (one line).
    """
    path = resolve(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; give the --workdir of a training run.")
    return json.loads(path.read_text())


def read_config(workdir: epath.PathLike, require_run: bool = False) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with, with its `run` section (lists as tuples).

    Args:
      workdir: the run's directory.
      require_run: fail without the `run` section (what a model is built from).

    Raises:
      FileNotFoundError: `workdir` has no config.json.
      ValueError: `require_run`, and an older sagan_jax wrote the config without it.
    """
    config = ml_collections.ConfigDict(_tuples(read_settings(workdir)))
    if require_run and "run" not in config:
        raise ValueError(f"{resolve(workdir) / CONFIG_FILE} has no 'run' section (written by "
                         "an older sagan_jax); resume the run once with this version to "
                         "rewrite it.")
    return config


def read_kept_steps(workdir: epath.PathLike) -> set[int]:
    """The steps in `kept_steps.json` (none where the file does not exist)."""
    path = resolve(workdir) / KEPT_STEPS_FILE
    return set(json.loads(path.read_text())) if path.exists() else set()


def write_kept_steps(workdir: epath.PathLike, steps: set[int]) -> None:
    """Writes `kept_steps.json`: `steps`, ascending (process 0 only)."""
    if jax.process_index() == 0:
        (resolve(workdir) / KEPT_STEPS_FILE).write_text(json.dumps(sorted(steps)))


def eval_dir(workdir: epath.PathLike) -> epath.Path:
    """`eval/`: the scores of `sagan_jax.score` and their TensorBoard events."""
    return resolve(workdir) / EVAL_DIR


def scores_file(workdir: epath.PathLike) -> epath.Path:
    """`eval/scores.csv`: every scored (step, generator), one row each."""
    return eval_dir(workdir) / SCORES_FILE


def write_scores_csv(workdir: epath.PathLike, rows: list[dict[str, Any]]) -> None:
    """Writes `eval/scores.csv`: a row per dict, a column per key in the order keys first
    appear (a value a row lacks stays empty). Nested values (the per-class diversity
    ratios, intra-FIDs and sample accuracies) are left out: the step JSONs keep them, the
    CSV has their minimum or mean."""
    rows = [{k: v for k, v in row.items() if not isinstance(v, dict)} for row in rows]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    path = scores_file(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table.getvalue())


def write_step_scores(workdir: epath.PathLike, step: int, rows: list[dict[str, Any]]) -> None:
    """Writes `eval/step_<step>.json` (the rows as they are) and rebuilds `eval/scores.csv`
    from every step's JSON, so that a step scored again replaces its rows (process 0 only)."""
    if jax.process_index() != 0:
        return
    out = eval_dir(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_{step:07d}.json").write_text(json.dumps(rows, indent=2))
    write_scores_csv(workdir, [row for path in sorted(out.glob("step_*.json"))
                               for row in json.loads(path.read_text())])


def curve(points: dict[int, float]) -> Curve:
    """{step: value} as a `Curve`."""
    steps = np.array(sorted(points), np.int64)
    return steps, np.array([points[s] for s in steps], np.float64)


def best_point(scores: Curve | None, lower_is_better: bool) -> tuple[float, int | None]:
    """(best value, its first step), non-finite values ignored; (nan, None) without any."""
    if scores is None or not np.isfinite(scores[1]).any():
        return math.nan, None
    steps, values = scores
    values = np.where(np.isfinite(values), values, np.inf if lower_is_better else -np.inf)
    i = int(np.argmin(values) if lower_is_better else np.argmax(values))
    return float(values[i]), int(steps[i])


@dataclasses.dataclass(frozen=True)
class Scores:
    """One G's scores in `eval/scores.csv`, at the largest sample count it was scored with
    (the most precise, and one count for every step, so that steps compare like with like).

    Attributes:
      path: the scores.csv read.
      generator: whose scores, 'ema' or 'raw'.
      num_samples: the sample count of these scores (0 where the file does not say).
      curves: a name of `SCORED` ('IS', 'FID', 'precision'...) -> the scores over the
        steps (NaN where not computed), for the columns the file has.
    """
    path: epath.Path
    generator: str
    num_samples: int
    curves: dict[str, Curve]

    def best(self, by: str = "FID") -> tuple[int, str, float]:
        """(step, metric, value) of the best score: `by='FID'` the lowest FID (the highest
        IS where no FID was computed), `by='IS'` the highest IS.

        Raises:
          FileNotFoundError: no IS to choose by.
        """
        if by == "FID":
            value, step = best_point(self.curves.get("FID"), lower_is_better=True)
            if step is not None:
                return step, "FID", value
        value, step = best_point(self.curves.get("IS"), lower_is_better=False)
        if step is None:
            fix = ("choose by FID with --best_by=FID" if by == "IS"
                   else "score it with sagan_jax.score")
            raise FileNotFoundError(f"{self.path} has no IS of the {self.generator} G; {fix}.")
        return step, "IS", value


def _float(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _scores(path: epath.Path, generator: str, rows: list[dict[str, str]]) -> Scores:
    counts = np.array([_float(r.get("num_samples")) for r in rows])
    num_samples = int(counts[np.isfinite(counts)].max()) if np.isfinite(counts).any() else 0
    rows = [r for r, n in zip(rows, counts) if not num_samples or n == num_samples]
    curves = {name: curve({int(_float(r["step"])): _float(r[name]) for r in rows})
              for name in SCORED if name in rows[0]}
    return Scores(path, generator, num_samples, curves)


def read_scores(workdir: epath.PathLike) -> dict[str, Scores]:
    """The scores in `eval/scores.csv` by generator (sorted by name).

    Raises:
      FileNotFoundError: no scores.csv (one line, with the command that writes it).
    """
    path = scores_file(workdir)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; score the checkpoints first with "
                                f"`python -m sagan_jax.score --workdir={workdir}`.")
    by_generator: dict[str, list[dict[str, str]]] = {}
    for row in csv.DictReader(io.StringIO(path.read_text())):
        if row.get("generator"):
            by_generator.setdefault(row["generator"], []).append(row)
    return {g: _scores(path, g, rows) for g, rows in sorted(by_generator.items())}


def render_dir(workdir: epath.PathLike, step: int, generator: str) -> epath.Path:
    """`render/step_<step>_<generator>/`: where `sagan_jax.render` writes a checkpoint's PNGs."""
    return resolve(workdir) / RENDER_DIR / f"step_{step}_{generator}"
