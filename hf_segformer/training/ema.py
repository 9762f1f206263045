"""An exponential moving average of the weights (`ema_decay`): evaluated and saved as the run's model.

The shadow copy follows every optimizer step with decay min(ema_decay, (1 + t) / (10 + t)) (the usual warm-up,
so that a short run is not dominated by its random start). Checkpoints keep the raw weights, which the optimizer
state belongs to, and the shadow next to them in `ema.safetensors`, so a resume continues both.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

logger = logging.getLogger("hf_segformer")

EMA_FILE = "ema.safetensors"


class WeightAverage(TrainerCallback):
    """Keeps the shadow weights of `model` (floating-point parameters and buffers, e.g. BatchNorm statistics)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1); got {decay}")
        self.model = model
        self.decay = decay
        self.updates = 0
        self.resume_folder: str | None = None  # set by the trainer when it reloads a checkpoint
        self.shadow = {name: value.detach().clone() for name, value in self._tensors().items()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self.model.state_dict(keep_vars=True).items()
                if value.dtype.is_floating_point}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in self._tensors().items():
            self.shadow[name].lerp_(value.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        tensors = self._tensors()
        backup = {name: value.detach().clone() for name, value in tensors.items()}
        with torch.no_grad():
            for name, value in tensors.items():
                value.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in tensors.items():
                    value.copy_(backup[name])

    def save(self, folder: str) -> None:
        save_file({name: value.contiguous() for name, value in self.shadow.items()}, os.path.join(folder, EMA_FILE),
                  metadata={"updates": str(self.updates), "decay": str(self.decay)})

    def load(self, folder: str | None) -> bool:
        path = os.path.join(folder, EMA_FILE) if folder else None
        if path is None or not os.path.isfile(path):
            return False
        from safetensors import safe_open

        stored = load_file(path)
        for name, value in stored.items():
            self.shadow[name].copy_(value)
        with safe_open(path, framework="pt") as handle:
            self.updates = int((handle.metadata() or {}).get("updates", 0))
        return True

    def on_train_begin(self, args, state, control, **kwargs):
        # The weights are final now (a resume has reloaded them): the average starts here, or continues the
        # checkpoint's.
        self.shadow = {name: value.detach().clone() for name, value in self._tensors().items()}
        if self.resume_folder is not None and not self.load(self.resume_folder):
            logger.warning("ema_decay: %s has no %s; the average restarts from the resumed weights.",
                           self.resume_folder, EMA_FILE)

    def on_step_end(self, args, state, control, **kwargs):
        self.update()

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            self.save(folder)
