"""Segmentation metrics from a confusion matrix, with the semantics of evaluate's `mean_iou`.

Per batch, logits are upsampled to each label's own size, arg-maxed, and counted into a C×C matrix
(rows: label, columns: prediction) on the model's device; only that matrix is kept. The results carry
the keys of evaluate's `mean_iou` (classes absent from both label and prediction are NaN and skipped
by the means) plus Dice, precision/recall and frequency-weighted IoU.

The same core (in numpy) backs the offline `evaluate` module in `hf_segformer/evaluation/mean_iou/`:
`evaluate.load(MEAN_IOU_MODULE_PATH)` is a drop-in for `evaluate.load("mean_iou")`.

`metric_backend: evaluate_hub` instead keeps every logit and calls the Hub's own `mean_iou` module, as
transformers' example does (`load_hub_mean_iou` + `LogitsMeanIoU`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hf_segformer.config.values import check_ignore_index
from hf_segformer.errors import RecipeError
from hf_segformer.logits import (
    UPSAMPLE_CHUNK_ELEMENTS,
    label_size,
    unpack_label,
    upsample_logits,
    upsampled_argmax,
)

# Folder of the `evaluate` module: `evaluate.load(MEAN_IOU_MODULE_PATH)` works offline (no Hub access).
MEAN_IOU_MODULE_PATH = str(Path(__file__).resolve().parent / "mean_iou")
# evaluate's reference module on the Hugging Face Hub (evaluate-metric/mean_iou), for metric_backend: evaluate_hub.
HUB_MEAN_IOU = "mean_iou"


def confusion_matrices(logits: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int) -> torch.Tensor:
    """Per-sample confusion matrices [B, C, C] (int64, on the logits' device) at each label's native size.

    logits: [B, C, h, w]; labels: [B, H, W] (padded bottom/right with LABEL_PAD when sizes differ).
    Raises ValueError naming the sample for non-finite logits or label values that are neither a
    class id in [0, num_labels) nor ignore_index.
    """
    return _evaluate_batch(logits, labels, num_labels, ignore_index, with_loss=False)[0]


def confusion_and_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int,
                       ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`confusion_matrices` and the batch's mean cross-entropy over labelled pixels (float32), from one
    upsampling per sample: evaluation needs both, and the upsampled logits are its largest tensor."""
    confusion, loss_sum = _evaluate_batch(logits, labels, num_labels, ignore_index, with_loss=True)
    pixels = confusion.sum()
    return confusion, loss_sum / pixels.clamp_min(1)


def _evaluate_batch(logits: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int,
                    with_loss: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim != 4 or labels.ndim != 3:
        raise ValueError(f"Expected logits [B, C, h, w] and labels [B, H, W]; got logits of shape "
                         f"{tuple(logits.shape)} and labels of shape {tuple(labels.shape)}.")
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits but {labels.shape[0]} labels in the batch.")
    if logits.shape[1] != num_labels:
        raise ValueError(f"The logits have {logits.shape[1]} classes but num_labels={num_labels}.")
    check_ignore_index(ignore_index)
    labels = labels.to(logits.device)
    out = torch.zeros(labels.shape[0], num_labels * num_labels, dtype=torch.int64, device=logits.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=logits.device)
    for i in range(labels.shape[0]):
        if not torch.isfinite(logits[i]).all():
            raise ValueError(f"Sample {i} of the batch has NaN or infinite logits; the model diverged "
                             "(lower the learning rate, or use bf16 instead of fp16).")
        height, width = label_size(labels[i])
        label = labels[i, :height, :width].long()
        valid = label != ignore_index
        out_of_range = valid & ((label < 0) | (label >= num_labels))
        if out_of_range.any():
            bad = label[out_of_range].unique()[:10].tolist()
            raise ValueError(f"Sample {i} of the batch has label values {bad} outside [0, {num_labels}) "
                             f"that are not ignore_index={ignore_index}.")
        upsampled = None
        if with_loss:
            upsampled = upsample_logits(logits[i : i + 1], (height, width))
            loss_sum += F.cross_entropy(upsampled, label[None], ignore_index=ignore_index, reduction="sum")
        if upsampled is not None and num_labels * height * width <= UPSAMPLE_CHUNK_ELEMENTS:
            prediction = upsampled[0].max(0).indices
        else:
            upsampled = None  # free it before the chunked arg-max
            prediction = upsampled_argmax(logits[i], (height, width))
        # ignored pixels go to one extra bin (cheaper than boolean indexing), which is then dropped
        index = torch.where(valid, label * num_labels + prediction, num_labels * num_labels)
        out[i] = torch.bincount(index.view(-1), minlength=num_labels * num_labels + 1)[:-1]
    return out.view(-1, num_labels, num_labels), loss_sum


def prepare_reference(reference: Any, label_map: Mapping[int, int] | None = None,
                      reduce_labels: bool = False) -> np.ndarray:
    """A reference map as evaluate's `mean_iou` sees it: label_map applied, then reduce_labels.

    `label_map` {old: new} is applied entry by entry in place, exactly as evaluate does (so {1: 2, 2: 3}
    sends 1 to 3); `reduce_labels` then maps 0 → 255 and k → k - 1 (255 stays 255).
    """
    reference = np.array(reference, dtype=np.int64)  # a copy: the caller's array is never modified
    if label_map:
        for old, new in label_map.items():
            reference[reference == int(old)] = int(new)
    if reduce_labels:
        reference[reference == 0] = 255
        reference = reference - 1
        reference[reference == 254] = 255
    return reference


def _as_int_array(values: Any, what: str, index: int) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(f"{what} {index} is not a rectangular 2-D array (rows of different lengths?).")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if array.size and not np.array_equal(array, np.round(array)):
            raise ValueError(f"{what} {index} holds non-integer values; class ids must be integers.")
    return array.astype(np.int64)


def confusion_from_arrays(prediction: Any, reference: Any, num_labels: int, ignore_index: int,
                          label_map: Mapping[int, int] | None = None, reduce_labels: bool = False,
                          index: int = 0) -> np.ndarray:
    """Confusion matrix (numpy, int64) of one prediction/reference pair with evaluate `mean_iou` semantics.

    Shape (C + 1) × (C + 1), rows reference and columns prediction; the last row/column counts values
    outside [0, C), which evaluate's histograms drop one area at a time (use
    `metrics_from_confusion(..., outside_bin=True)`). Pixels whose (prepared) reference is ignore_index
    are skipped.
    """
    prediction = _as_int_array(prediction, "Prediction", index)
    reference = prepare_reference(_as_int_array(reference, "Reference", index), label_map, reduce_labels)
    if prediction.shape != reference.shape:
        raise ValueError(f"Prediction {index} has shape {prediction.shape} but its reference has shape "
                         f"{reference.shape}; they must match pixel for pixel.")
    valid = reference != ignore_index
    reference, prediction = reference[valid], prediction[valid]
    size = num_labels + 1
    reference = np.where((reference >= 0) & (reference < num_labels), reference, num_labels)
    prediction = np.where((prediction >= 0) & (prediction < num_labels), prediction, num_labels)
    return np.bincount(reference * size + prediction, minlength=size * size).reshape(size, size)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def _nanmean(values: np.ndarray) -> np.float64:
    """np.nanmean without the all-NaN warning (the result is NaN then too)."""
    return np.nanmean(values) if (~np.isnan(values)).any() else np.float64(np.nan)


def metrics_from_confusion(confusion: np.ndarray, nan_to_num: float | None = None, *,
                           outside_bin: bool = False) -> dict[str, Any]:
    """evaluate `mean_iou` results (and more) from a C×C confusion matrix (rows label, columns prediction).

    With `outside_bin=True` the matrix is (C + 1) × (C + 1) and its last row/column count label/prediction
    values outside [0, C) (see `confusion_from_arrays`): they count toward no class area, as in evaluate.
    Classes absent from both label and prediction get NaN (or `nan_to_num`) and are left out of the means.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"A confusion matrix must be square; got shape {confusion.shape}.")
    num_labels = confusion.shape[0] - 1 if outside_bin else confusion.shape[0]
    intersect = np.diag(confusion)[:num_labels]
    area_label = confusion[:num_labels].sum(axis=1)
    area_prediction = confusion[:, :num_labels].sum(axis=0)
    union = area_label + area_prediction - intersect
    iou = _divide(intersect, union)
    accuracy = _divide(intersect, area_label)
    dice = _divide(2 * intersect, area_label + area_prediction)
    precision = _divide(intersect, area_prediction)
    frequency = _divide(area_label, area_label.sum())
    present = ~np.isnan(iou)
    results: dict[str, Any] = {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": _divide(intersect.sum(), area_label.sum()),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
        "mean_dice": _nanmean(dice),
        "per_category_dice": dice,
        "per_category_precision": precision,
        "per_category_recall": accuracy.copy(),
        "frequency_weighted_iou": (frequency[present] * iou[present]).sum() if present.any() else np.float64(np.nan),
    }
    if nan_to_num is not None:
        results = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in results.items()}
    return results


def metric_key(name: str) -> str:
    """A class name as a metric-key suffix: `iou_<name>` (spaces and punctuation → '_')."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() or "class"


PER_CLASS_KEYS = {"iou": "per_category_iou", "accuracy": "per_category_accuracy", "dice": "per_category_dice",
                  "precision": "per_category_precision"}


def class_keys(id2label: Mapping[int, str], num_classes: int) -> list[str]:
    """One metric-key suffix per class id, made unique (a clash gets `_<id>` appended)."""
    keys: list[str] = []
    for class_id in range(num_classes):
        name = id2label.get(class_id, id2label.get(str(class_id), str(class_id)))  # type: ignore[call-overload]
        key = metric_key(str(name))
        if key in keys:
            key = f"{key}_{class_id}"
        keys.append(key)
    return keys


def flatten_metrics(results: dict[str, Any], id2label: Mapping[int, str],
                    per_class: tuple[str, ...] = ("iou", "accuracy", "dice")) -> dict[str, float]:
    """Scalar metrics plus `iou_<class>`, `accuracy_<class>`, `dice_<class>` for loggers and JSON.

    `per_class` picks the per-class families (add "precision" for `precision_<class>`); a family whose
    array the results lack (evaluate's own `mean_iou` has no Dice or precision) is skipped.
    """
    unknown = set(per_class) - set(PER_CLASS_KEYS)
    if unknown:
        raise ValueError(f"Unknown per-class metric(s) {sorted(unknown)}; choose from {sorted(PER_CLASS_KEYS)}.")
    flat = {k: float(v) for k, v in results.items() if np.ndim(v) == 0}
    present = [prefix for prefix in per_class if PER_CLASS_KEYS[prefix] in results]
    if not present:
        return flat
    names = class_keys(id2label, len(results[PER_CLASS_KEYS[present[0]]]))
    for prefix in present:
        for name, value in zip(names, results[PER_CLASS_KEYS[prefix]]):
            flat[f"{prefix}_{name}"] = float(value)
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


def load_mean_iou(**kwargs: Any):
    """`evaluate.load` of this package's `mean_iou` module (offline); kwargs go to `evaluate.load`."""
    import evaluate

    return evaluate.load(MEAN_IOU_MODULE_PATH, **kwargs)


def load_hub_mean_iou(**kwargs: Any):
    """`evaluate.load("mean_iou")`: the Hub's reference module, for `metric_backend: evaluate_hub`.

    Called before any data or training work, so that a machine that cannot fetch it fails at once with a
    RecipeError that says what to do. HF_HUB_OFFLINE is honoured (evaluate itself only reads
    HF_EVALUATE_OFFLINE): offline, only a copy already in evaluate's module cache is used.
    """
    import evaluate
    from huggingface_hub import constants

    evaluate_offline = evaluate.config.HF_EVALUATE_OFFLINE
    offline = bool(constants.HF_HUB_OFFLINE or evaluate_offline)
    evaluate.config.HF_EVALUATE_OFFLINE = offline
    try:
        return evaluate.load(HUB_MEAN_IOU, **kwargs)
    except OSError as err:  # FileNotFoundError or ConnectionError: neither cached nor reachable
        where = ("HF_HUB_OFFLINE is set and it is not in evaluate's module cache" if offline
                 else "the Hugging Face Hub could not be reached and it is not in evaluate's module cache")
        raise RecipeError(
            f"metric_backend: evaluate_hub needs evaluate's 'mean_iou' module from the Hugging Face Hub, which "
            f"cannot be loaded offline ({where}; evaluate said: {err}). Use metric_backend: confusion (the "
            "default): the same mean_iou numbers, computed without the Hub."
        ) from err
    finally:
        evaluate.config.HF_EVALUATE_OFFLINE = evaluate_offline


class LogitsMeanIoU:
    """`compute_metrics` of transformers' `run_semantic_segmentation.py`, for `metric_backend: evaluate_hub`.

    Gets every logit of the evaluation set at once (`batch_eval_metrics` off; `SegformerTrainer` with
    `eval_confusion=False`, which passes the labels as `pack_labels` rows; LABEL_PAD-padded maps work too).
    Each label is taken at its own size, its logits are bilinearly upsampled to that size and arg-maxed,
    and `module.compute` (evaluate's `mean_iou`, or any module with its arguments) gets them with
    `reduce_labels=False`: the labels are already reduced by the data pipeline.
    """

    last_confusion = None  # the per-class report needs a confusion matrix, which evaluate's results lack

    def __init__(self, module: Any, id2label: dict[int, str], ignore_index: int):
        self.module = module
        self.id2label = id2label
        self.num_labels = len(id2label)
        self.ignore_index = ignore_index

    @torch.no_grad()
    def __call__(self, eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions, references = [], []
        for logit, label in zip(logits, labels):
            label = unpack_label(label)
            references.append(label.numpy())
            predictions.append(upsampled_argmax(torch.as_tensor(logit), tuple(label.shape)).numpy())
        results = self.module.compute(predictions=predictions, references=references, num_labels=self.num_labels,
                                      ignore_index=self.ignore_index, reduce_labels=False)
        return flatten_metrics(results, self.id2label)
