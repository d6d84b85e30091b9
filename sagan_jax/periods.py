"""Run length and the rhythm of periodic actions, in steps, resolved at run time.

A config gives each length in epochs or in steps (`train.num_epochs` / `num_steps`,
`log.sample_every_epochs` / `sample_every_steps`, `checkpoint.every_epochs` /
`every_steps`, `eval.every_epochs` / `every_steps`, and the first checkpoint's and
score's `offset_epochs` / `offset_steps`). Epochs are converted with the
dataset's real steps per epoch when the run starts, so a run at another batch size
keeps its number of epochs and its rhythm. A setting in steps, when not 0, overrides
the one in epochs; 0 in both means "never" (for the run length: a config error).
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Periods:
    """Lengths in steps (0 = never).

    Attributes:
      num_steps: the run's last step.
      steps_per_epoch: global batches per epoch (the incomplete last one dropped).
      sample_every: sample grids.
      checkpoint_every: checkpoints (the last step always gets one).
      checkpoint_offset: the first checkpoint's step when not 0; then every
        `checkpoint_every` (the original saved after epochs 1, 6, 11, ...).
      eval_every: in-training scores.
      log_every: averaged training metrics.
      eval_offset: the first in-training score's step when not 0; then every
        `eval_every` (the original scored the checkpoints of epochs 1, 6, 11, ...).
    """

    num_steps: int
    steps_per_epoch: int
    sample_every: int
    checkpoint_every: int
    checkpoint_offset: int
    eval_every: int
    log_every: int
    eval_offset: int = 0

    @staticmethod
    def due(step: int, every: int, offset: int = 0) -> bool:
        """Whether a period of `every` steps starting at `offset` (or `every`) ends at `step`."""
        if every <= 0:
            return False
        return step >= offset and (step - offset) % every == 0 if offset else step % every == 0

    def log_due(self, step: int) -> bool:
        """Averaged training metrics: every `log_every` steps, and the last step."""
        return step == self.num_steps or self.due(step, self.log_every)

    def sample_due(self, step: int) -> bool:
        """Sample grids: every `sample_every` steps, and the last step."""
        return step == self.num_steps or self.due(step, self.sample_every)

    def checkpoint_due(self, step: int) -> bool:
        return step == self.num_steps or self.due(step, self.checkpoint_every, self.checkpoint_offset)

    def eval_due(self, step: int) -> bool:
        """In-training scores: every `eval_every` steps from `eval_offset`, and the last step."""
        return self.eval_every > 0 and (
            step == self.num_steps or self.due(step, self.eval_every, self.eval_offset))

    def boundaries(self) -> tuple[tuple[int, int], ...]:
        """(every, offset) of each periodic action (those that are on)."""
        periods = ((self.log_every, 0), (self.sample_every, 0), (self.eval_every, self.eval_offset),
                   (self.checkpoint_every, self.checkpoint_offset))
        return tuple((e, o) for e, o in periods if e > 0)

    def next_boundary(self, step: int) -> int:
        """The first step after `step` at which a periodic action is due (or the last)."""
        following = [self.num_steps]
        for every, offset in self.boundaries():
            if offset and step < offset:
                following.append(offset)
            else:
                base = offset or 0
                following.append(base + ((step - base) // every + 1) * every)
        return min(following)

    def chunks(self, start: int, steps_per_dispatch: int):
        """(first step, count) of the dispatches from `start` to the end of the run.

        Each dispatch runs up to `steps_per_dispatch` steps in one call and ends where a
        periodic action is due, so every action happens at its exact step. The plan from
        a checkpoint's step is the unbroken run's plan from there.
        """
        step = start
        while step < self.num_steps:
            count = min(steps_per_dispatch, self.next_boundary(step) - step)
            yield step, count
            step += count

    def describe(self) -> dict[str, int]:
        """The resolved values, for the log and the run's `config.json`."""
        return dataclasses.asdict(self)


def _steps(section: Any, steps_key: str, epochs_key: str, steps_per_epoch: int) -> int:
    steps, epochs = section[steps_key], section[epochs_key]
    if steps < 0 or epochs < 0:
        raise ValueError(f"{steps_key}={steps} / {epochs_key}={epochs}: lengths cannot be "
                         "negative; use 0 for 'never'.")
    return int(steps) if steps else int(round(epochs * steps_per_epoch))


def resolve(config: Any, steps_per_epoch: int) -> Periods:
    """The run's lengths in steps for a dataset of `steps_per_epoch` global batches.

    Raises:
      ValueError: a run of no steps, or negative lengths; one line.
    """
    num_steps = _steps(config.train, "num_steps", "num_epochs", steps_per_epoch)
    if num_steps <= 0:
        raise ValueError("the run has no steps; set --config.train.num_epochs or "
                         "--config.train.num_steps.")
    return Periods(
        num_steps=num_steps,
        steps_per_epoch=steps_per_epoch,
        sample_every=_steps(config.log, "sample_every_steps", "sample_every_epochs",
                            steps_per_epoch),
        checkpoint_every=_steps(config.checkpoint, "every_steps", "every_epochs",
                                steps_per_epoch),
        checkpoint_offset=_steps(config.checkpoint, "offset_steps", "offset_epochs",
                                 steps_per_epoch),
        eval_every=_steps(config.eval, "every_steps", "every_epochs", steps_per_epoch),
        log_every=int(config.log.every_steps),
        eval_offset=_steps(config.eval, "offset_steps", "offset_epochs", steps_per_epoch),
    )
