"""A run's directory: created and checked once, and the config it ran with.

Layout: `config.json` (the config of the latest start, plus a `run` section with what
was derived from the data: classes, steps per epoch, the resolved run length and
rhythms), `checkpoints/` and `corrupt_checkpoints/` (`sagan_jax.checkpointing`),
`samples/` and `interpolations.png` (grids), `eval/` (scores), TensorBoard event files.

Paths are `etils.epath.Path`s, so a workdir may be local or in a cloud bucket
(`gs://bucket/run`: what every host of a TPU slice can share); every file of a run is
read and written through them, never through `open` or `os.path`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

CONFIG_FILE = "config.json"


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


def read_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with, with its `run` section (lists as tuples)."""
    path = resolve(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; give the --workdir of a training run.")
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
