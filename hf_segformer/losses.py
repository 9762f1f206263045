"""Segmentation losses, computed in float32 at each label's own resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import label_size
from .transforms import LABEL_PAD


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling to the label size, as SegFormer's own loss does, in float32."""
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels of the batch.

    Training batches share one crop size (one upsample for the batch); evaluation batches carry labels of
    different native sizes padded with LABEL_PAD, so each sample is upsampled to its own size.
    """
    if not (labels == LABEL_PAD).any():
        return F.cross_entropy(upsample_logits(logits, labels.shape[-2:]), labels, weight=weight, ignore_index=ignore_index)
    total = logits.new_zeros((), dtype=torch.float32)
    count = logits.new_zeros((), dtype=torch.float32)
    for i in range(labels.shape[0]):
        height, width = label_size(labels[i])
        label = labels[i : i + 1, :height, :width]
        upsampled = upsample_logits(logits[i : i + 1], (height, width))
        total = total + F.cross_entropy(upsampled, label, weight=weight, ignore_index=ignore_index, reduction="sum")
        valid = label != ignore_index
        count = count + (weight[label[valid]].sum() if weight is not None else valid.sum())
    return total / count.clamp_min(1)
