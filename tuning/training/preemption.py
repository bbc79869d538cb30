"""Graceful preemption: SIGTERM/SIGINT during training -> finish the step, checkpoint, exit 143.

Kubernetes (pod eviction, spot reclaim), SLURM (`scancel`, time limit with `--signal`) and a
user's Ctrl-C all send SIGTERM or SIGINT. While the training stage runs, the first such signal
only raises a flag. At the end of the optimizer step in progress, `PreemptionCallback` asks the
Trainer for its normal checkpoint (`control.should_save`) and to stop (`should_training_stop`);
the stage then raises `Preempted`, which the entry point turns into the termination log line
"Preempted: preempted at step N ..., checkpoint saved at ..." and exit code 143 (128 + SIGTERM),
which Kubernetes/PyTorchJob treat as retryable. Rerunning the same job resumes from that
checkpoint. A second signal exits at once (143), without a checkpoint.

Under a multi-process launch torchrun hands the signal to every rank, but not necessarily
between the same two steps: at every step end the ranks take the maximum of their flags, so all
of them stop, and save collectively, at the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from tuning.errors import PREEMPTED_EXIT_CODE, PREEMPTED_PREFIX, write_termination_log

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
    """Owns the signal handlers for the training stage; use as a context manager.

    The first signal sets `signum`; a second one writes the termination log and ends the
    process at once with `os._exit` (no checkpoint: a rerun resumes from the newest complete
    one). On exit the handlers in place before are restored."""

    def __init__(self, signals: Iterable[int] = SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self.installed = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            # print, not logging: a handler may interrupt a logging call holding its lock
            print(
                f"tuneforge: got {name}; finishing the current optimizer step, then saving a "
                "checkpoint and stopping (send it again to stop at once, without a checkpoint)",
                file=sys.stderr,
                flush=True,
            )
            return
        self.exit_now(name)

    @staticmethod
    def exit_now(name: str) -> None:
        message = (
            f"{PREEMPTED_PREFIX} a second {name} stopped training at once, without saving a "
            "checkpoint; rerunning the job resumes from the newest complete checkpoint."
        )
        print(message, file=sys.stderr, flush=True)
        write_termination_log(message)
        from tuning.training.lock import release_all

        release_all()  # os._exit skips finally and atexit: free output_dir's run lock first
        os._exit(PREEMPTED_EXIT_CODE)

    def install(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: SIGTERM/SIGINT will not stop training cleanly")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self.handle)
        self.installed = True
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def __enter__(self) -> PreemptionGuard:
        return self.install()

    def __exit__(self, *_exc: object) -> None:
        self.restore()


def agreed_flag(local: bool, device: Any = None) -> bool:
    """True when any rank's flag is up (max over ranks); the local flag without a process group.
    Every rank must call this at the same point (every step end), as it is a collective."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return local
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    import torch

    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class PreemptionCallback(TrainerCallback):
    """At each optimizer step's end: when a signal came (on any rank), save and stop."""

    def __init__(self, guard: PreemptionGuard):
        self.guard = guard
        self.stopped_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stopped_at is not None:
            return control
        if agreed_flag(self.guard.requested, getattr(args, "device", None)):
            self.stopped_at = int(state.global_step)
            control.should_save = True
            control.should_training_stop = True
            logger.warning(
                "Preempted: saving a checkpoint at step %d and stopping", self.stopped_at
            )
        return control


def preempted_message(step: int, checkpoint: str, signum: int | None) -> str:
    """The termination log line for a clean stop."""
    how = signal.Signals(signum).name if signum is not None else "a signal to another rank"
    return (
        f"preempted at step {step} ({how}), checkpoint saved at {checkpoint}; rerun the same "
        "job to resume from it."
    )
