"""Checkpoints of a run: orbax async saves, resume with fallback, architecture check.

In a workdir (see `sagan_jax.workdir`): `checkpoints/<step>/` (orbax: the `state` pytree
and a copy of the config), `corrupt_checkpoints/` (unreadable checkpoints moved out of
the way on resume, never deleted).

orbax writes each step into a temporary directory and renames it when complete (in a
cloud bucket, where renames are copies: in place, then a `commit_success.txt`), so a
process killed while saving leaves only a temporary step that the next start removes;
the previous complete checkpoint is then the latest.

Several processes: every process saves its part of the global arrays; process 0 alone
writes the small files and moves corrupt checkpoints, and the others wait for it.
orbax's handler of `jax.Array` is chosen for the run's processes once, at start-up
(`register_array_handler`, called by `sagan_jax.startup.init`). A run stopped by SIGTERM
(`sagan_jax.preemption`) saves its step and raises `Preempted`.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from sagan_jax import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"


class _KeptSteps(ocp.checkpoint_managers.PreservationPolicy):
    """Preserves the steps saved with `keep_forever` (e.g. at a D-loss jump), whatever
    `keep` says: those of the workdir's kept-steps file (read at start, extended by `add`)."""

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir
        self.steps = workdir_lib.read_kept_steps(workdir)

    def add(self, step: int) -> None:
        self.steps.add(step)
        workdir_lib.write_kept_steps(self.workdir, self.steps)

    def should_preserve(self, checkpoints, *, context):
        return [c.step in self.steps for c in checkpoints]


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


def _any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (so that all take the same branch)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def register_array_handler() -> None:
    """Makes orbax save `jax.Array`s as suits this run's processes (a process-wide setting).

    Call it once at start-up, after `jax.distributed.initialize` (`sagan_jax.startup.init`
    does); calling it again changes nothing. Replica-parallel saving splits each replicated
    array over the devices that hold it; on one host that only costs slicing programs
    (~6 s to compile at a 96 px model's first save), so it is kept for multi-host runs.
    """
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1),
        override=True)


class Preempted(Exception):
    """The run was asked to stop (SIGTERM) and saved a checkpoint of the step it reached."""

    def __init__(self, step: int, directory: epath.Path):
        super().__init__(f"SIGTERM received; saved the checkpoint of step {step} in "
                         f"{directory}; run the same command again to resume.")
        self.step = step


class Checkpoints:
    """The orbax `CheckpointManager` of one workdir; saves run in the background.

    Args:
      workdir: the run's directory (see `sagan_jax.workdir`), local or gs://.
      keep: how many of the latest checkpoints to keep (0: all); steps saved with
        `keep_forever` are kept as well.
      read_only: only read (evaluation): never save, delete or clean up, so a training
        run writing to the same workdir is left alone.
    """

    def __init__(self, workdir: epath.PathLike, keep: int, read_only: bool = False):
        self.workdir = workdir_lib.resolve(workdir)
        self.read_only = read_only
        self.directory = self.workdir / CHECKPOINT_DIR
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(
                f"no checkpoints in {self.directory}; give the --workdir of a training run.")
        if not read_only:
            self._warn_half_written()
        self._kept = _KeptSteps(self.workdir)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                [ocp.checkpoint_managers.LatestN(keep or None), self._kept]),
            enable_async_checkpointing=True,  # Training goes on while a save writes.
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
        partial = sorted(ocp.step.tmp_checkpoints(self.directory))
        if partial:
            logging.warning(
                "%s holds half-written checkpoints (%s) of an interrupted save; removing them "
                "and resuming from the latest complete checkpoint.", self.directory,
                ", ".join(partial))

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
             keep_forever: bool = False) -> None:
        """Starts an async save of `state` (with a copy of `config`) as `step`.

        `keep_forever`: never delete this step, whatever `keep` says.
        """
        if keep_forever:
            self._kept.add(step)
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(workdir_lib.jsonable(config)),
        ))

    def _check_architecture(self, step: int, saved_state: Any, state_like: Any,
                            config: ml_collections.ConfigDict) -> None:
        """Raises ValueError when checkpoint `step` holds different networks than `state_like`."""
        saved_shapes, shapes = _shapes(saved_state), _shapes(state_like)
        if saved_shapes == shapes:
            return
        saved = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
        diffs = _differences(saved.get("model", {}), workdir_lib.jsonable(config)["model"], "model.")
        diffs = diffs or _differences(saved_shapes, shapes, "")[:2]
        raise ValueError(
            f"workdir {self.workdir} holds checkpoints of a different architecture "
            f"({'; '.join(diffs)}); nothing was overwritten: use a new --workdir, or "
            f"resume with the config in {self.workdir / workdir_lib.CONFIG_FILE}."
        )

    def _set_aside(self, step: int, error: Exception | None) -> None:
        """Moves an unreadable checkpoint out of the manager's way (keeping its files).

        Every process calls it (`error` is None where the step read well but another
        process failed); process 0 moves the files, and all wait for it before reading on.
        """
        why = (f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
               if error is not None else "unreadable on another process")
        if self.read_only:
            logging.warning("checkpoint step %d is unreadable (%s); trying an earlier one.",
                            step, why)
            return
        corrupt = self.workdir / CORRUPT_DIR
        if jax.process_index() == 0:
            corrupt.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(corrupt / f"{step}.{int(time.time())}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"sagan_jax: checkpoint {step} set aside")
        self.manager.reload()
        logging.warning("checkpoint step %d is unreadable (%s); moved it to %s and resuming from "
                        "an earlier one.", step, why, corrupt)

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
            saved_state, error = None, None
            try:
                saved_state = self.manager.item_metadata(step)["state"]
                if saved_state is None:
                    raise FileNotFoundError("no state metadata")
            except Exception as e:  # noqa: BLE001 -- any read failure means "unusable".
                error = e
            if _any_process(error is not None):
                self._set_aside(step, error)
                continue
            self._check_architecture(step, saved_state, abstract, config)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
            except Exception as e:  # noqa: BLE001
                restored, error = None, e
            if _any_process(error is not None):
                self._set_aside(step, error)
                continue
            return restored, step
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
