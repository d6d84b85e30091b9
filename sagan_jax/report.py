"""Compares runs: `python -m sagan_jax.report --workdirs DIR [DIR ...] --out FILE.md`.

Writes a Markdown table in the shape of the original's tables (docs/original.md,
"Experiments"): one row per run (case = the workdir's name), a column for each config
setting that differs between the runs, the best IS and FID with their steps, and the final
scores: IS, FID and, where any run has them, precision, recall, density, coverage,
intra-FID and sample accuracy. Beside it, `FILE_scores.png` (IS and FID over training)
and `FILE_losses.png` (D and G loss), all runs overlaid. It reads only what runs wrote
(see `sagan_jax.workdir`): `config.json`, `eval/scores.csv` (from `sagan_jax.score`) at
the largest sample count scored when present, else the in-training scores
`eval/<G>/IS|FID|precision|...` (`workdir.SCORED`) of the run's TensorBoard events, and
`train/d_loss`, `train/g_loss` from those events. Workdirs and the output may be buckets (gs://...).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
from typing import Any

from absl import app, flags
from etils import epath

from sagan_jax import sampling, startup
from sagan_jax import workdir as workdir_lib

FLAGS = flags.FLAGS

LOSSES = ("d_loss", "g_loss")
# The final scores shown beside IS and FID when a run has them: (name, header, decimals).
EXTRA_SCORES = (("precision", "precision", 3), ("recall", "recall", 3),
                ("density", "density", 3), ("coverage", "coverage", 3),
                ("intra_fid", "intra-FID", 2), ("sample_accuracy", "sample accuracy", 3))
# Settings that name places on disk, not experiments: never a column.
_PLACE = re.compile(r"(^|\.)(workdir|path|[a-z_]*_(dir|path)|inception_weights)$")


def define_flags() -> None:
    """The CLI's flags (defined when run, so that importing this module next to other
    CLIs of the package does not clash)."""
    flags.DEFINE_list("workdirs", None, "Training runs to compare (comma-separated, or "
                      "space-separated after the flag).")
    flags.DEFINE_string("out", None, "The Markdown file to write; plots go beside it.")
    flags.DEFINE_enum("generator", inspect.signature(write_report).parameters["generator"].default,
                      list(sampling.GENERATORS),
                      "Whose scores to report; a run without them falls back to the other.")
    flags.mark_flags_as_required(["workdirs", "out"])


@dataclasses.dataclass
class Run:
    """What one workdir holds, as the report needs it.

    Attributes:
      name: the case, i.e. the workdir's name.
      workdir: the directory as given.
      settings: the run's config as dotted keys -> values.
      scores: a name of `workdir.SCORED` ('IS', 'FID', 'precision'...) -> curve of the
        reported generator (absent when never scored).
      scored: where the scores come from, e.g. 'ema, 2000 samples, scores.csv'.
      losses: 'd_loss' / 'g_loss' -> curve (absent when not logged).
    """
    name: str
    workdir: str
    settings: dict[str, Any]
    scores: dict[str, workdir_lib.Curve]
    scored: str
    losses: dict[str, workdir_lib.Curve]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config sections -> {'section.key': value}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_settings(runs: list[Run]) -> list[str]:
    """Dotted keys whose values differ between the runs (or that some runs lack), sorted;
    paths and directories left out."""
    keys = sorted(set().union(*(r.settings for r in runs)))
    missing = object()
    return [k for k in keys if not _PLACE.search(k)
            and len({json.dumps(r.settings.get(k, missing), default=str) for r in runs}) > 1]


def read_scalars(directory: str) -> dict[str, workdir_lib.Curve]:
    """Every scalar tag of the TensorBoard event files directly in `directory`.

    Reads clu's tensor summaries and classic scalar summaries. When steps repeat (a resumed
    run re-logs the steps after its last checkpoint), the value written last wins.
    """
    # TensorBoard is imported here: the rest of the report does not need it.
    # pylint: disable=g-import-not-at-top
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util
    # pylint: enable=g-import-not-at-top

    acc = event_accumulator.EventAccumulator(
        directory, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    points: dict[str, dict[int, float]] = {}
    for tag in tags.get(event_accumulator.SCALARS, []):
        for event in acc.Scalars(tag):
            points.setdefault(tag, {})[event.step] = float(event.value)
    for tag in tags.get(event_accumulator.TENSORS, []):
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue  # Images (the sample grids) and text.
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            points.setdefault(tag, {})[event.step] = float(value.reshape(()))
    return {tag: workdir_lib.curve(p) for tag, p in points.items()}


def load_run(workdir: str, generator: str = "ema", name: str | None = None) -> Run:
    """Reads one workdir (see the module docstring for what it reads).

    `generator`'s scores, else the other G's: from scores.csv, else from the training log.

    Raises:
      FileNotFoundError: `workdir` has no config.json.
    """
    settings = flatten(workdir_lib.read_settings(workdir))
    events = read_scalars(workdir)
    order = [generator] + [g for g in sampling.GENERATORS if g != generator]
    try:
        table = workdir_lib.read_scores(workdir)
    except FileNotFoundError:  # Never scored by sagan_jax.score.
        table = {}
    found = next((table[g] for g in order if g in table), None)
    scores, scored = {}, ""
    if found is not None and found.curves:
        samples = f"{found.num_samples} samples, " if found.num_samples else ""
        scores, scored = found.curves, f"{found.generator}, {samples}scores.csv"
    else:
        for gen in order:
            scores = {s: events[f"eval/{gen}/{s}"]
                      for s in workdir_lib.SCORED if f"eval/{gen}/{s}" in events}
            if scores:
                samples = settings.get("eval.num_samples")
                scored = f"{gen}, {f'{samples} samples, ' if samples else ''}training log"
                break
    losses = {k: events[f"train/{k}"] for k in LOSSES if f"train/{k}" in events}
    return Run(name or epath.Path(workdir).name, workdir, settings,
               scores, scored, losses)


def summarize(run: Run) -> dict[str, Any]:
    """Best IS and FID with their steps, and the scores of the last scored step
    ('final_<score>' for each of `workdir.SCORED`, NaN where not scored then)."""
    is_curve, fid_curve = run.scores.get("IS"), run.scores.get("FID")
    out = {}
    out["best_IS"], out["best_IS_step"] = workdir_lib.best_point(is_curve, lower_is_better=False)
    out["best_FID"], out["best_FID_step"] = workdir_lib.best_point(fid_curve, lower_is_better=True)
    last = max((int(c[0][-1]) for c in run.scores.values() if len(c[0])), default=None)
    for name in workdir_lib.SCORED:
        curve = run.scores.get(name)
        at_last = curve[1][curve[0] == last] if curve is not None else []
        out[f"final_{name}"] = float(at_last[0]) if len(at_last) else math.nan
    out["final_step"] = last
    return out


def _cell(value: Any) -> str:
    """A setting or score as a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|")


def _score(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(runs: list[Run]) -> str:
    """The runs' table: case, differing settings, best and final scores (IS 3 decimals as
    in the original's tables, FID 2; the `EXTRA_SCORES` that any run has), and where the
    scores come from."""
    keys = differing_settings(runs)
    extra = [e for e in EXTRA_SCORES if any(e[0] in r.scores for r in runs)]
    head = (["case"] + keys + ["best IS", "step", "best FID", "step", "final IS", "final FID"]
            + [f"final {header}" for _, header, _ in extra] + ["final step", "scored"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        s = summarize(run)
        cells = ([run.name] + [_cell(run.settings.get(k)) for k in keys] + [
            _score(s["best_IS"], 3), _cell(s["best_IS_step"]),
            _score(s["best_FID"], 2), _cell(s["best_FID_step"]),
            _score(s["final_IS"], 3), _score(s["final_FID"], 2)] + [
            _score(s[f"final_{name}"], digits) for name, _, digits in extra] + [
            _cell(s["final_step"]), run.scored or "not scored"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[Run], panels: list[tuple[str, str, str]],
                path: epath.PathLike) -> bool:
    """One figure, a panel per (group, key, title), every run overlaid; False if no data.

    `group` is 'scores' or 'losses', the Run attribute that holds the curve `key`.
    """
    if not any(key in getattr(r, group) for r in runs for group, key, _ in panels):
        return False
    # The object API draws off-screen (Agg) without pyplot's global state.
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(5 * len(panels), 3.8), layout="constrained")
    for ax, (group, key, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for i, run in enumerate(runs):
            curve = getattr(run, group).get(key)
            if curve is not None:
                ax.plot(*curve, color=f"C{i % 10}", label=run.name,
                        marker="o" if group == "scores" else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def _case_names(workdirs: list[str]) -> list[str]:
    """Workdir names; the paths as given where two runs share a name."""
    names = [epath.Path(w).name for w in workdirs]
    return [w if names.count(n) > 1 else n for w, n in zip(workdirs, names)]


def write_report(workdirs: list[str], out: str, generator: str = "ema") -> str:
    """Reads the runs, writes `out` (Markdown) and its PNGs beside it; returns the Markdown.

    Raises:
      FileNotFoundError: a workdir without config.json.
      ValueError: no workdirs.
    """
    if not workdirs:
        raise ValueError("no runs to compare; pass --workdirs DIR [DIR ...].")
    runs = [load_run(w, generator, n) for w, n in zip(workdirs, _case_names(workdirs))]
    out = epath.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# Runs compared", "", markdown_table(runs)]
    parts += [f"- {r.name}: `{r.workdir}`" for r in runs] + [""]
    figures = [
        ("scores", [("scores", "IS", "IS (higher is better)"),
                    ("scores", "FID", "FID (lower is better)")], "IS and FID"),
        ("losses", [("losses", "d_loss", "D loss"), ("losses", "g_loss", "G loss")],
         "D and G loss"),
    ]
    for suffix, panels, caption in figures:
        path = out.parent / f"{out.stem}_{suffix}.png"
        if plot_curves(runs, panels, path):
            parts += [f"![{caption} over training]({path.name})", ""]
    text = "\n".join(parts)
    out.write_text(text)
    return text


def main(argv):
    workdirs = FLAGS.workdirs + argv[1:]  # `--workdirs A B C`: B and C arrive as arguments.
    try:
        write_report(workdirs, FLAGS.out, FLAGS.generator)
    except (ValueError, OSError) as e:
        startup.exit_with_error(e)
    print(FLAGS.out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
