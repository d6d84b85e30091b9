"""Checkpoints of a run: orbax async saves, resume with fallback, and the run's config.

Layout of a workdir: `config.json` (the config of the latest start), `checkpoints/<step>/`
(orbax: the `state` pytree and a `config` copy), `corrupt_checkpoints/` (unreadable
checkpoints moved out of the way on resume, never deleted).

orbax writes each step into a temporary directory and renames it when complete, so a
process killed while saving leaves no step directory, only a temporary one that the next
start removes; the previous complete checkpoint is then the latest.
"""
from __future__ import annotations

import json
import logging as pylogging
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"


class _OrbaxInfoFilter(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_orbax_logs() -> None:
    """Drops orbax's INFO lines (dozens per save) from the log; its warnings stay."""
    logging.get_absl_logger().addFilter(_OrbaxInfoFilter())


def prepare_workdir(workdir: str) -> str:
    """Creates `workdir` if needed and checks that it can be written; returns its absolute path."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"cannot write to workdir {workdir} ({e.strerror}); choose a --workdir you can write to."
        ) from None
    return workdir


def _jsonable(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists, inf stays a float)."""
    return json.loads(config.to_json())


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json` beside the checkpoints (process 0 only)."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True))


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with (lists read back as tuples)."""
    path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; give the --workdir of a training run.")
    with open(path) as f:
        return ml_collections.ConfigDict(_tuples(json.load(f)))


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shapes(tree) -> dict[str, tuple]:
    """Leaf path ('g_params/Dense_0/kernel') -> shape, for dataclass or dict trees alike."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _differences(saved: dict, current: dict, prefix: str) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<none>"), current.get(key, "<none>")
        if a != b:
            diffs.append(f"{prefix}{key} {a} in the checkpoint, {b} now")
    return diffs


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


class Checkpoints:
    """The orbax `CheckpointManager` of one workdir.

    Args:
      workdir: the run's directory (see `prepare_workdir`).
      keep: how many of the latest checkpoints to keep.
      async_saves: save in a background thread (training goes on while it writes).
      read_only: only read (evaluation): never save, delete or clean up, so a training
        run writing to the same workdir is left alone.
    """

    def __init__(self, workdir: str, keep: int, async_saves: bool = True,
                 read_only: bool = False):
        self.workdir = workdir
        self.read_only = read_only
        self.directory = os.path.join(workdir, CHECKPOINT_DIR)
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"no checkpoints in {self.directory}; give the --workdir of a training run.")
        if not read_only:
            self._warn_half_written()
        # Replica-parallel saving splits each replicated array over the devices that hold
        # it; on one host that only costs slicing programs (~6 s to compile at a 96 px
        # model's first save), so it is kept for multi-host runs (process-wide setting).
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(
                use_replica_parallel=jax.process_count() > 1), override=True)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_saves,
            # Half-written saves of a killed run; a reader must not touch a live run's.
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()},
        )

    def _warn_half_written(self) -> None:
        """Names the saves a killed run left unfinished (the manager then removes them)."""
        if not os.path.isdir(self.directory):
            return
        partial = sorted(n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n)
        if partial:
            logging.warning(
                "%s holds half-written checkpoints (%s) of an interrupted save; removing them "
                "and resuming from the latest complete checkpoint.", self.directory,
                ", ".join(partial))

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        """Starts an async save of `state` (with a copy of `config`) as `step`."""
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(_jsonable(config)),
        ))

    def _check_architecture(self, step: int, saved_state: Any, state_like: Any,
                            config: ml_collections.ConfigDict) -> None:
        """Raises ValueError when checkpoint `step` holds different networks than `state_like`."""
        saved_shapes, shapes = _shapes(saved_state), _shapes(state_like)
        if saved_shapes == shapes:
            return
        saved = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
        diffs = _differences(saved.get("model", {}), _jsonable(config)["model"], "model.")
        diffs = diffs or _differences(saved_shapes, shapes, "")[:2]
        raise ValueError(
            f"workdir {self.workdir} holds checkpoints of a different architecture "
            f"({'; '.join(diffs)}); nothing was overwritten: use a new --workdir, or "
            f"resume with the config in {os.path.join(self.workdir, CONFIG_FILE)}."
        )

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable checkpoint out of the manager's way (keeping its files)."""
        if self.read_only:
            logging.warning("checkpoint step %d is unreadable (%s); trying an earlier one.",
                            step, type(error).__name__)
            return
        target = os.path.join(self.workdir, CORRUPT_DIR, f"{step}.{int(time.time())}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        logging.warning(
            "checkpoint step %d is unreadable (%s: %s); moved it to %s and resuming from an "
            "earlier one.", step, type(error).__name__, str(error).splitlines()[0][:200], target)

    def restore_latest(self, state_like: Any, config: ml_collections.ConfigDict):
        """Restores the newest readable checkpoint into the structure and shardings of `state_like`.

        An unreadable (corrupt or truncated) latest checkpoint is moved aside with a
        warning and the one before it is used.

        Args:
          state_like: a state (or `jax.ShapeDtypeStruct` tree) giving the structure,
            shapes, dtypes and shardings to restore into.
          config: the current config (for the architecture check).

        Returns:
          (state, step), or (None, 0) when the workdir has no checkpoint.

        Raises:
          ValueError: the checkpoints hold different networks (nothing is changed).
        """
        abstract = _abstract(state_like)
        for step in reversed(self.all_steps()):
            try:
                saved_state = self.manager.item_metadata(step)["state"]
                if saved_state is None:
                    raise FileNotFoundError("no state metadata")
            except Exception as e:  # noqa: BLE001 -- any read failure means "unusable".
                self._set_aside(step, e)
                continue
            self._check_architecture(step, saved_state, abstract, config)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))
            except Exception as e:  # noqa: BLE001
                self._set_aside(step, e)
                continue
            return restored["state"], step
        return None, 0

    def restore(self, step: int, state_like: Any) -> Any:
        """Restores checkpoint `step` into the structure and shardings of `state_like`."""
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory}; it has {self.all_steps()}.")
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like))))["state"]

    def close(self) -> None:
        """Waits for the pending save to be complete on disk, then releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
