"""Segmentation metrics from a confusion matrix, with the semantics of evaluate's `mean_iou`.

Per batch, logits are upsampled to each label's own size, arg-maxed, and counted into a C×C matrix
(rows: label, columns: prediction) on the model's device; only that matrix is kept. The results carry
the keys of evaluate's `mean_iou` (classes absent from both label and prediction are NaN and skipped
by the means) plus Dice, precision/recall and frequency-weighted IoU.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import LABEL_PAD

# Upsampled-logit elements processed at once (about 256 MB of float32); larger outputs go in channel chunks.
UPSAMPLE_CHUNK_ELEMENTS = 64 * 1024 * 1024


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """argmax over classes of bilinearly upsampled logits [C, h, w] → [H, W], in bounded memory.

    Identical to `interpolate(...).argmax(0)`; for large C×H×W the classes are processed in chunks
    with a running maximum (ties keep the lower class index, as argmax does).
    """
    num_classes = logits.shape[0]
    chunk = max(1, UPSAMPLE_CHUNK_ELEMENTS // max(1, size[0] * size[1]))
    if chunk >= num_classes:
        return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    best_value = best_index = None
    for start in range(0, num_classes, chunk):
        part = F.interpolate(logits[None, start : start + chunk].float(), size=size, mode="bilinear", align_corners=False)[0]
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


def confusion_matrices(logits: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int) -> torch.Tensor:
    """Per-sample confusion matrices [B, C, C] (int64, on the logits' device) at each label's native size."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits but {labels.shape[0]} labels in the batch.")
    out = torch.zeros(labels.shape[0], num_labels * num_labels, dtype=torch.int64, device=logits.device)
    for i in range(labels.shape[0]):
        if not torch.isfinite(logits[i]).all():
            raise ValueError(f"Sample {i} of the batch has NaN or infinite logits; the model diverged "
                             "(lower the learning rate, or use bf16 instead of fp16).")
        height, width = label_size(labels[i])
        label = labels[i, :height, :width]
        prediction = upsampled_argmax(logits[i], (height, width))
        valid = label != ignore_index
        label, prediction = label[valid], prediction[valid]
        if label.numel() and (label.min() < 0 or label.max() >= num_labels):
            bad = label[(label < 0) | (label >= num_labels)].unique()[:10].tolist()
            raise ValueError(f"Sample {i} of the batch has label values {bad} outside [0, {num_labels}) "
                             f"that are not ignore_index={ignore_index}.")
        out[i] = torch.bincount(label * num_labels + prediction, minlength=num_labels * num_labels)
    return out.view(-1, num_labels, num_labels)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def metrics_from_confusion(confusion: np.ndarray, nan_to_num: float | None = None) -> dict[str, Any]:
    """evaluate `mean_iou` results (and more) from a C×C confusion matrix (rows label, columns prediction)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersect = np.diag(confusion)
    area_label = confusion.sum(axis=1)
    area_prediction = confusion.sum(axis=0)
    union = area_label + area_prediction - intersect
    iou = _divide(intersect, union)
    accuracy = _divide(intersect, area_label)
    dice = _divide(2 * intersect, area_label + area_prediction)
    precision = _divide(intersect, area_prediction)
    frequency = _divide(area_label, area_label.sum())
    present = ~np.isnan(iou)
    results: dict[str, Any] = {
        "mean_iou": np.nanmean(iou) if present.any() else np.nan,
        "mean_accuracy": np.nanmean(accuracy) if (~np.isnan(accuracy)).any() else np.nan,
        "overall_accuracy": _divide(intersect.sum(), area_label.sum()),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
        "mean_dice": np.nanmean(dice) if (~np.isnan(dice)).any() else np.nan,
        "per_category_dice": dice,
        "per_category_precision": precision,
        "per_category_recall": accuracy,
        "frequency_weighted_iou": float((frequency[present] * iou[present]).sum()) if present.any() else np.nan,
    }
    if nan_to_num is not None:
        results = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in results.items()}
    return results


def metric_key(name: str) -> str:
    """A class name as a metric-key suffix: `iou_<name>` (spaces and punctuation → '_')."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() or "class"


def flatten_metrics(results: dict[str, Any], id2label: dict[int, str]) -> dict[str, float]:
    """Scalar metrics plus `iou_<class>`, `accuracy_<class>`, `dice_<class>` for loggers and JSON."""
    flat = {k: float(v) for k, v in results.items() if np.ndim(v) == 0}
    for prefix, key in (("iou", "per_category_iou"), ("accuracy", "per_category_accuracy"), ("dice", "per_category_dice")):
        for class_id, value in enumerate(results[key]):
            flat[f"{prefix}_{metric_key(id2label.get(class_id, str(class_id)))}"] = float(value)
    return flat


class SegmentationMetrics:
    """`compute_metrics` for the Trainer: sums per-sample confusion matrices, batch by batch.

    Works with `batch_eval_metrics=True` (called per batch with `compute_result`) and without it
    (called once with all matrices). The last full matrix stays available as `self.last_confusion`.
    """

    def __init__(self, num_labels: int, id2label: dict[int, str]):
        self.num_labels = num_labels
        self.id2label = id2label
        self.confusion: torch.Tensor | None = None
        self.last_confusion: np.ndarray | None = None

    def __call__(self, eval_pred, compute_result: bool = True) -> dict[str, float]:
        batch = torch.as_tensor(eval_pred.predictions).reshape(-1, self.num_labels, self.num_labels).sum(0)
        self.confusion = batch if self.confusion is None else self.confusion + batch.to(self.confusion.device)
        if not compute_result:
            return {}
        self.last_confusion = self.confusion.cpu().numpy()
        self.confusion = None
        return flatten_metrics(metrics_from_confusion(self.last_confusion), self.id2label)
