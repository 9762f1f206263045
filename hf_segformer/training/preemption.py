"""Pre-emption (a SLURM job's time limit or pre-emption, a spot instance reclaimed): SIGTERM saves a checkpoint at
the next step boundary and ends the run with exit code 143, saying how to resume. A save under way when the signal
arrives is finished, never cut short."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger("hf_segformer")

PREEMPTED_EXIT = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM, so `&&` stops


class Preempted(Exception):
    """The run stopped on SIGTERM after saving a checkpoint; the message says how to resume."""


class StopOnSignal(TrainerCallback):
    """SIGTERM during `train()` only sets a flag; at the next step end (or evaluation) every process agrees to save
    and stop. Outside `train()` the previous handler is in place."""

    def __init__(self) -> None:
        self.received = False
        self.training = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        logger.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping.")

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        self._stop_if_asked(args, control)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.training:
            self._stop_if_asked(args, control)

    def _stop_if_asked(self, args: Any, control: Any) -> None:
        received = self.received
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if received else 0.0], device=args.device)  # one process's signal stops all
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = self.received = bool(flag.item())
        if received:
            control.should_save = True
            control.should_training_stop = True
