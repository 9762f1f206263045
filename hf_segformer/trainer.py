"""`SegformerTrainer`: the HF Trainer with a segmentation loss and streaming confusion-matrix evaluation."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer

from .losses import SegmentationLoss
from .metrics import confusion_and_loss, confusion_matrices, pack_labels

logger = logging.getLogger(__name__)


class SegformerTrainer(Trainer):
    """Trainer whose evaluation keeps one C×C confusion matrix per sample instead of every logit.

    `prediction_step` returns per-sample confusion matrices as the "predictions" (the Trainer then gathers
    them across processes without double-counting the samples that distributed samplers repeat) and the
    number of labelled pixels per sample as the "labels"; `SegmentationMetrics` sums them.
    With `eval_confusion=False` it returns the logits as the plain Trainer does, and the labels as
    `pack_labels` rows (the Trainer pads only dimension 1 when it concatenates batches, so label maps of
    different widths would not stack): the classic path of `metric_backend: evaluate_hub`, where
    `compute_metrics` (`LogitsMeanIoU`) gets every logit at once.
    """

    def __init__(self, *args: Any, ignore_index: int = 255, eval_confusion: bool = True,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ignore_index = ignore_index
        self.loss_fn = loss_fn or SegmentationLoss(ignore_index=ignore_index)
        self.eval_confusion = eval_confusion
        self._batch_confusion: torch.Tensor | None = None  # set by compute_loss during evaluation
        # Our loss is already a mean over pixels: the Trainer must divide by the accumulation steps itself
        # and must not rescale by the world size (it would if it believed the model used num_items_in_batch).
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels", None)
        outputs = model(**inputs)
        if labels is None:
            raise ValueError("SegformerTrainer needs 'labels' in every batch.")
        if model.training or not self.eval_confusion:
            loss = self.loss_fn(outputs.logits, labels)
        else:  # evaluation: plain cross-entropy and the confusion matrices share one upsampling per sample
            self._batch_confusion, loss = confusion_and_loss(outputs.logits, labels, outputs.logits.shape[1],
                                                             self.ignore_index)
        outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self._batch_confusion = None
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if prediction_loss_only or logits is None or labels is None:
            return loss, logits, labels
        if not self.eval_confusion:
            return loss, logits, pack_labels(labels)
        confusion = self._batch_confusion
        if confusion is None:
            confusion = confusion_matrices(logits, labels, logits.shape[1], self.ignore_index)
        return loss, confusion, confusion.sum(dim=(1, 2))

    # transformers 5 saves SegFormer under its legacy parameter names (`segformer.encoder.block…`) and renames
    # them on `from_pretrained`, but the Trainer reloads checkpoints (resume, load_best_model_at_end) with a
    # raw, non-strict `load_state_dict`: only the 8 decode-head tensors whose names did not change are
    # restored, silently. Plain checkpoints are therefore reloaded through `from_pretrained`, strictly.

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if model is None and self._is_plain_checkpoint(resume_from_checkpoint):
            self._load_weights_strictly(resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self._is_plain_checkpoint(self.state.best_model_checkpoint):
            self._load_weights_strictly(self.state.best_model_checkpoint)
        else:
            super()._load_best_model()

    def _is_plain_checkpoint(self, folder: str | None) -> bool:
        return (folder is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
                and os.path.isfile(os.path.join(folder, "config.json"))
                and any(os.path.isfile(os.path.join(folder, name))
                        for name in ("model.safetensors", "model.safetensors.index.json")))

    def _load_weights_strictly(self, folder: str) -> None:
        reloaded = type(self.model).from_pretrained(folder)
        self.model.load_state_dict(reloaded.state_dict(), strict=True)
        logger.info("Loaded all %d tensors from %s", len(reloaded.state_dict()), folder)
