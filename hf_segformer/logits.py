"""Logits and label maps between the model's 1/4 resolution and the labels' own size: the one upsampling
used by losses, metrics and inference, and how label maps of different sizes travel in one batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hf_segformer.config.values import LABEL_PAD

# Upsampled-logit elements processed at once (about 256 MB of float32); larger outputs go in channel chunks.
UPSAMPLE_CHUNK_ELEMENTS = 64 * 1024 * 1024


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B, C, h, w] logits to the label size, as SegFormer's own loss does, in float32."""
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """argmax over classes of bilinearly upsampled logits [C, h, w] → [H, W], in bounded memory.

    Identical to `interpolate(...).argmax(0)`; for large C×H×W the classes are processed in chunks
    with a running maximum (ties keep the lower class index, as argmax does).
    """
    num_classes = logits.shape[0]
    chunk = max(1, UPSAMPLE_CHUNK_ELEMENTS // max(1, size[0] * size[1]))
    if chunk >= num_classes:
        # max(0).indices, not argmax(0): same first-maximum indices, several times faster on the CPU
        return upsample_logits(logits[None], size)[0].max(0).indices
    best_value = best_index = None
    for start in range(0, num_classes, chunk):
        part = upsample_logits(logits[None, start : start + chunk], size)[0]
        value, index = part.max(0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    return best_index


def label_size(label: torch.Tensor) -> tuple[int, int]:
    """Height and width of a label padded (bottom/right) with LABEL_PAD by the collator."""
    rows = int((label[:, 0] != LABEL_PAD).sum())
    cols = int((label[0, :] != LABEL_PAD).sum())
    return rows, cols


def pack_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels [B, H, W] (padded with LABEL_PAD) → rows [B, 2 + H·W]: height, width, then that label's pixels.

    For the classic evaluation path: the Trainer concatenates batches (and gathers processes) padding only
    dimension 1, so label maps of different widths cannot be stacked, while rows of any length can.
    """
    rows = torch.full((labels.shape[0], 2 + labels.shape[1] * labels.shape[2]), LABEL_PAD, dtype=labels.dtype,
                      device=labels.device)
    for i in range(labels.shape[0]):
        height, width = label_size(labels[i])
        rows[i, :2] = torch.tensor([height, width])
        rows[i, 2 : 2 + height * width] = labels[i, :height, :width].reshape(-1)
    return rows


def unpack_label(label: Any) -> torch.Tensor:
    """One label [H, W] at its own size, from a `pack_labels` row or a LABEL_PAD-padded map."""
    label = torch.as_tensor(label)
    if label.ndim == 1:
        height, width = int(label[0]), int(label[1])
        return label[2 : 2 + height * width].reshape(height, width)
    height, width = label_size(label)
    return label[:height, :width]
