"""`SegformerTrainer`: the HF Trainer with a segmentation loss and streaming confusion-matrix evaluation."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from .losses import cross_entropy_loss
from .metrics import confusion_matrices


class SegformerTrainer(Trainer):
    """Trainer whose evaluation keeps one C×C confusion matrix per sample instead of every logit.

    `prediction_step` returns per-sample confusion matrices as the "predictions" (the Trainer then gathers
    them across processes without double-counting the samples that distributed samplers repeat) and the
    number of labelled pixels per sample as the "labels"; `SegmentationMetrics` sums them.
    """

    def __init__(self, *args: Any, ignore_index: int = 255, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ignore_index = ignore_index
        # Our loss is already a mean over pixels: the Trainer must divide by the accumulation steps itself
        # and must not rescale by the world size (it would if it believed the model used num_items_in_batch).
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels", None)
        outputs = model(**inputs)
        if labels is None:
            raise ValueError("SegformerTrainer needs 'labels' in every batch.")
        loss = cross_entropy_loss(outputs.logits, labels, self.ignore_index)
        outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if prediction_loss_only or logits is None or labels is None:
            return loss, logits, labels
        num_labels = logits.shape[1]
        confusion = confusion_matrices(logits, labels, num_labels, self.ignore_index)
        return loss, confusion, confusion.sum(dim=(1, 2))
