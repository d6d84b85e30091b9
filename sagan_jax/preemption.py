"""SIGTERM (a preempted TPU VM or spot GPU) turned into "save the step reached, then stop".

The training loop holds a `Watcher` for as long as it runs and asks it after every
dispatch; what it does then (save, raise `checkpointing.Preempted`) is the loop's.
"""
from __future__ import annotations

import signal
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging


class Watcher:
    """Catches SIGTERM while entered (`with Watcher() as sigterm:`); `reached` reports it.

    In a single process the signal only sets a flag, and the handler it replaced is put
    back on exit. With `jax.distributed`, JAX's preemption service catches the signal on
    every process and agrees on the step at which all of them stop, so no handler is
    installed; nor outside the main thread, where Python cannot install one.
    """

    def __init__(self):
        self._caught = False
        self._previous = None

    def __enter__(self) -> Watcher:
        if (not jax.distributed.is_initialized()
                and threading.current_thread() is threading.main_thread()):
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            # None: a handler installed outside Python; the default stands in for it.
            self._previous = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        del frame
        self._caught = True
        logging.warning("SIGTERM received: saving a checkpoint after this step, then stopping.")
        # A second SIGTERM ends the process at once, as it would have without us.
        signal.signal(signum, self._previous)

    def reached(self, call: int) -> bool:
        """Whether the run must save its current step and stop.

        Call it after every dispatch, on every process, with `call` = 0, 1, 2, ...: with
        several processes JAX's preemption service agrees on the first call that all of
        them reach after the signal (the highest `call` any had made, plus one), so the
        numbers must be consecutive, which steps are not when a dispatch runs several.
        """
        return self._caught or ocp.multihost.reached_preemption(call)
