"""Segmentation losses, computed in float32 at each label's own resolution.

Every loss here:

* upsamples the logits bilinearly to the label size (as SegFormer's own loss does), once per call: training
  batches share one crop size (one upsample for the batch); evaluation batches carry labels of different
  native sizes padded with LABEL_PAD by the collator, so each sample is upsampled to its own size;
* runs in float32 with autocast disabled, whatever the logits' dtype (bf16/fp16 log-sum-exp and Dice sums
  lose too many digits over ~10^6 pixels);
* excludes `ignore_index` and LABEL_PAD pixels from both the numerator and the denominator;
* returns a mean over labelled pixels, class-weighted as torch's weighted cross-entropy mean is
  (sum of w[y]·loss / sum of w[y]), so a recipe's loss scale stays comparable to plain cross-entropy;
  a batch without a labelled pixel gives 0 (with a graph), not NaN.

With `resolution="logits"` the labels come down to the logits' size instead (each logit cell takes the
most frequent label value of the label pixels it covers; nearest-neighbour where the sizes are not an
integer multiple), so no [B, C, H, W] tensor is made at all.

`num_labels == 1` (logits [B, 1, h, w], labels 0/1) is the binary case: cross-entropy becomes sigmoid BCE,
focal, OHEM and boundary use the sigmoid probability of the true class, and Dice is the foreground Dice. Class
weights then have two entries, [background, foreground].

The boundary term is boundary-weighted cross-entropy: each labelled pixel's CE is weighted by
w[y]·(1 + boundary_weight·b), b = 1 for a pixel within `boundary_width` label pixels (a square window) of a pixel
of another labelled class, so edges and thin structures (a 1–2 px line is all boundary) weigh more; see
`boundary_mask`.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_segformer.config.values import check_ignore_index
from hf_segformer.data.preflight import DataReport
from hf_segformer.errors import RecipeError
from hf_segformer.logits import LABEL_PAD, label_size, upsample_logits

logger = logging.getLogger("hf_segformer")

WEIGHT_METHODS = ("inverse_frequency", "median_frequency", "effective_number")
LOSS_RESOLUTIONS = ("labels", "logits")
CLASS_WEIGHTS_FILE = "class_weights.json"  # the weights computed from the data, written in output_dir

_TINY = torch.finfo(torch.float32).tiny  # denominator floor: 0/_TINY = 0 for a batch with nothing labelled


# --------------------------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------------------------


def class_weights(pixel_counts: Sequence[int], method: str | Sequence[float], *, beta: float = 0.9999,
                  clip: float | None = 10.0, normalise: bool = True) -> list[float]:
    """Per-class loss weights from the training split's pixel histogram (one count per class, no ignore count).

    `method`:

    * "inverse_frequency": w_c = N / n_c — rare classes are pulled up in proportion to their rarity;
    * "median_frequency": w_c = median(f) / f_c with f_c = n_c / N (SegNet). SegNet divides by the pixels of
      the images where c is present; the data check keeps split totals only, so N is the split's labelled
      pixels (the same weights up to how often each class co-occurs);
    * "effective_number": w_c = (1 - beta) / (1 - beta^n_c) (Cui et al. 2019) — saturates for frequent
      classes, so it is milder than inverse frequency; beta → 1 approaches inverse frequency;
    * a list of floats: explicit weights, only validated (length, non-negative, finite) and returned as given.

    Classes with zero training pixels get the largest weight of the others (after clipping), not 0: they never
    occur as a training target, so their weight cannot change the training loss, but a zero would silently
    drop them from the evaluation loss if they appear in the validation split, and as the rarest class
    the maximum is the consistent value. All-zero histograms raise.

    `clip` bounds max(w) / min(w) (rare-class weights are cut to clip × the smallest weight) so that a class
    with a handful of pixels cannot dominate the gradient. `normalise` rescales so that the pixel-weighted
    mean weight, sum(n_c·w_c) / sum(n_c), is 1: the expected loss scale (and so the learning rate) stays that
    of plain cross-entropy.
    """
    counts = [int(c) for c in pixel_counts]
    if not counts:
        raise ValueError("class_weights needs at least one class count.")
    if any(c < 0 for c in counts):
        raise ValueError(f"Pixel counts must be non-negative, got {counts}.")
    if not isinstance(method, str):
        return validate_class_weights(method, len(counts))
    if method not in WEIGHT_METHODS:
        raise ValueError(f"Unknown class-weight method '{method}'; use one of {WEIGHT_METHODS} or a list of weights.")
    if clip is not None and not clip >= 1:
        raise ValueError(f"clip is a max/min weight ratio and must be >= 1 (or None), got {clip}.")
    total = sum(counts)
    if total == 0:
        raise ValueError("Every class has zero pixels: there is no histogram to weight by.")
    present = [c for c in counts if c > 0]
    if method == "inverse_frequency":
        raw = [total / c if c else 0.0 for c in counts]
    elif method == "median_frequency":
        median = statistics.median([c / total for c in present])
        raw = [median / (c / total) if c else 0.0 for c in counts]
    else:
        if not 0 < beta < 1:
            raise ValueError(f"effective_number needs 0 < beta < 1, got {beta}.")
        # 1 - beta^n computed as -expm1(n·log beta): exact for beta close to 1, where 1 - beta^n cancels.
        raw = [(1 - beta) / -math.expm1(c * math.log(beta)) if c else 0.0 for c in counts]
    if clip is not None:
        ceiling = clip * min(w for w, c in zip(raw, counts) if c)
        raw = [min(w, ceiling) for w in raw]
    largest = max(raw)
    weights = [w if c else largest for w, c in zip(raw, counts)]
    if normalise:
        mean = sum(w * c for w, c in zip(weights, counts)) / total
        weights = [w / mean for w in weights]
    return weights


def class_weights_from_report(report: DataReport, method: str | Sequence[float], split: str = "train",
                              **kwargs) -> list[float]:
    """`class_weights` from the data check's `DataReport` (its per-split `pixel_counts` end with the ignore count,
    which is dropped: ignored pixels carry no loss)."""
    if split not in report.splits:
        raise ValueError(f"The data report has no '{split}' split (it has {sorted(report.splits)}).")
    return class_weights(report.splits[split].pixel_counts[: report.num_labels], method, **kwargs)


def validate_class_weights(weights: Sequence[float], num_labels: int) -> list[float]:
    """Explicit weights: one finite, non-negative float per class, not all zero (a zero drops a class)."""
    values = [float(w) for w in weights]
    if len(values) != num_labels:
        raise RecipeError(f"class_weights: {len(values)} weights for {num_labels} classes; give one per class id.")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise RecipeError(f"class_weights must be finite and non-negative, got {values}.")
    if not any(values):
        raise RecipeError("class_weights are all zero: no pixel would carry any loss.")
    return values


# --------------------------------------------------------------------------------------------------------------
# Shared per-call preparation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Upsampled float32 logits per piece (the whole batch, or one sample per native size) and the labelled
    pixels flattened across pieces: the log-probability of the true class and the class id."""

    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (logits [n,C,h,w], target [n,h,w], valid)
    log_prob: torch.Tensor  # [P] float32
    target: torch.Tensor  # [P] int64
    batch_size: int  # samples in the batch (OHEM keeps at least ohem_min_kept pixels per sample)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Labels [B, H, W] → [B, h, w]: the most frequent value (ignore and padding included) of each cell when
    H, W are multiples of h, w (ties: the smallest value, as torch.mode breaks them on the CPU);
    nearest-neighbour otherwise."""
    (height, width), (h, w) = labels.shape[-2:], size
    if (height, width) == (h, w):
        return labels
    if height % h or width % w:
        return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)
    fh, fw = height // h, width // w
    cells = labels.reshape(labels.shape[0], h, fh, w, fw).permute(0, 1, 3, 2, 4).reshape(labels.shape[0], h, w, fh * fw)
    return cells.mode(dim=-1).values


def _prepare(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, resolution: str = "labels") -> _Prepared:
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected logits [B, C, h, w] and labels [B, H, W] of one batch size; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}.")
    labels = labels.to(logits.device).long()
    if resolution == "logits":
        raw = [(logits.float(), downsample_labels(labels, tuple(logits.shape[-2:])))]
    elif not (labels == LABEL_PAD).any():
        raw = [(upsample_logits(logits, tuple(labels.shape[-2:])), labels)]
    else:
        raw = []
        for i in range(labels.shape[0]):
            height, width = label_size(labels[i])
            raw.append((upsample_logits(logits[i : i + 1], (height, width)), labels[i : i + 1, :height, :width]))
    pieces, log_probs, targets = [], [], []
    for upsampled, label in raw:
        valid = (label != ignore_index) & (label != LABEL_PAD)
        target = torch.where(valid, label, torch.zeros_like(label))  # a safe index where not labelled
        if upsampled.shape[1] == 1:  # binary: log sigmoid(x) for foreground, log sigmoid(-x) for background
            x = upsampled[:, 0]
            log_prob = -F.binary_cross_entropy_with_logits(x, target.float(), reduction="none")
        else:  # the fused log-softmax + NLL kernel: it keeps one [n, C, h, w] tensor for the backward pass
            log_prob = -F.cross_entropy(upsampled, target, reduction="none")
        pieces.append((upsampled, target, valid))
        log_probs.append(log_prob[valid])
        targets.append(target[valid])
    return _Prepared(pieces, torch.cat(log_probs), torch.cat(targets), labels.shape[0])


def _weight_tensor(weight: torch.Tensor | Sequence[float] | None, num_channels: int,
                   device: torch.device) -> torch.Tensor | None:
    if weight is None:
        return None
    expected = 2 if num_channels == 1 else num_channels
    weight = torch.as_tensor(weight, dtype=torch.float32, device=device)
    if weight.shape != (expected,):
        what = "[background, foreground] weights for binary logits" if num_channels == 1 else "class weights"
        raise ValueError(f"Expected {expected} {what}, got shape {tuple(weight.shape)}.")
    return weight


def _weighted_mean(values: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                   pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w[y]·s·v) / sum(w[y]·s) with s a per-pixel weight (the plain mean without either); 0 when nothing is
    labelled."""
    if weight is None and pixel_weight is None:
        return values.sum() / max(values.numel(), 1)
    w = weight[target] if weight is not None else None
    if pixel_weight is not None:
        w = pixel_weight if w is None else w * pixel_weight
    return (w * values).sum() / w.sum().clamp_min(_TINY)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


# --------------------------------------------------------------------------------------------------------------
# Loss terms on prepared pixels: each takes the prepared batch, the class weights (on the logits' device) and the
# loss whose settings it reads (focal_gamma, ohem_thresh, ohem_min_kept, dice_smooth, boundary_weight/_width)
# --------------------------------------------------------------------------------------------------------------


def _ce(prep: _Prepared, weight: torch.Tensor | None, loss: SegmentationLoss) -> torch.Tensor:
    return _weighted_mean(-prep.log_prob, prep.target, weight)


def _focal(prep: _Prepared, weight: torch.Tensor | None, loss: SegmentationLoss) -> torch.Tensor:
    # (1 - p)^gamma down-weights pixels already classified confidently; the class weights play alpha's role
    # and are normalised like weighted CE, so gamma = 0 is exactly (weighted) cross-entropy.
    gamma = loss.focal_gamma
    modulation = (-torch.expm1(prep.log_prob)).clamp_min(0) ** gamma if gamma else 1.0
    return _weighted_mean(-modulation * prep.log_prob, prep.target, weight)


def _ohem(prep: _Prepared, weight: torch.Tensor | None, loss: SegmentationLoss) -> torch.Tensor:
    # MMSegmentation's OHEMPixelSampler: keep the pixels whose true-class probability is below `thresh`, and at
    # least the `min_kept × batch size` hardest ones (lowest probability). The selection takes no gradient.
    # A probability never exceeds 1, so thresh >= 1 keeps every labelled pixel (a float32 probability that
    # rounds to exactly 1.0 is kept too, so the loss is then plain CE).
    thresh = loss.ohem_thresh
    if thresh >= 1:
        return _ce(prep, weight, loss)
    with torch.no_grad():
        prob = prep.log_prob.exp()
        keep = prob < thresh
        kept_min = min(loss.ohem_min_kept * prep.batch_size, prob.numel())
        if kept_min > 0:
            hardest = torch.topk(prob, kept_min, largest=False).indices
            keep[hardest] = True
    return _weighted_mean(-prep.log_prob[keep], prep.target[keep], weight)


def _dice(prep: _Prepared, weight: torch.Tensor | None, loss: SegmentationLoss) -> torch.Tensor:
    """Soft Dice on probabilities, over labelled pixels only (ignored/padded pixels count in neither the
    intersection nor the sums), with sums over the whole batch (per-image Dice is noisy on small crops).

    Multi-class: 1 - dice_c averaged over the classes present in the labels or in the arg-max predictions of
    the batch: a class absent from both has dice (0 + s)/(0 + s) = 1 only by the smoothing term and would
    just dilute the mean, while a class predicted but absent must still be penalised (false positives).
    Binary: the foreground Dice. Class weights do not apply to Dice (it is already frequency-balanced).
    """
    intersection = cardinality = present = None
    for upsampled, target, valid in prep.pieces:
        if upsampled.shape[1] == 1:
            prob = torch.sigmoid(upsampled[:, 0])[valid]
            truth = target[valid].float()
            inter = (prob * truth).sum()[None]
            card = (prob.sum() + truth.sum())[None]
            here = torch.ones(1, dtype=torch.bool, device=prob.device)
        else:
            num_classes = upsampled.shape[1]
            prob = torch.softmax(upsampled, dim=1)
            inter = torch.zeros(num_classes, device=prob.device).index_add(
                0, target[valid], prob.gather(1, target[:, None])[:, 0][valid])
            label_count = torch.bincount(target[valid], minlength=num_classes)
            card = (prob * valid[:, None]).sum(dim=(0, 2, 3)) + label_count
            with torch.no_grad():
                predicted = torch.bincount(upsampled.argmax(dim=1)[valid], minlength=num_classes)
            here = (label_count > 0) | (predicted > 0)
        intersection = inter if intersection is None else intersection + inter
        cardinality = card if cardinality is None else cardinality + card
        present = here if present is None else present | here
    smooth = loss.dice_smooth
    dice = (2 * intersection + smooth) / (cardinality + smooth)
    if not present.any():  # nothing labelled in the batch
        return intersection.sum() * 0
    return (1 - dice)[present].mean()


def boundary_mask(target: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """Labels [n, h, w] (with their labelled-pixel mask) → bool [n, h, w]: labelled pixels within `width` pixels
    (Chebyshev distance: a (2·width+1)² window) of a labelled pixel of another class.

    Computed as a max-pool and a min-pool of the label map over the window: a pixel is on a boundary when the
    largest or the smallest labelled class around it is not its own. Unlabelled (ignored, padded) pixels enter the
    max as -inf and the min as +inf, so they never make a boundary, and the image border is padded the same way.
    """
    with torch.no_grad():
        labels = target.float()[:, None]  # class ids are exact in float32 (< 2^24)
        mask = valid[:, None]
        window = {"kernel_size": 2 * width + 1, "stride": 1, "padding": width}
        largest = F.max_pool2d(torch.where(mask, labels, -math.inf), **window)
        smallest = -F.max_pool2d(torch.where(mask, -labels, -math.inf), **window)
        return valid & ((largest != labels) | (smallest != labels))[:, 0]


def check_boundary_settings(boundary_weight: float, boundary_width: int) -> None:
    """The boundary term's settings, refused naming the field (a RecipeError is a ValueError)."""
    if isinstance(boundary_weight, bool) or not isinstance(boundary_weight, numbers.Real) \
            or not math.isfinite(boundary_weight) or boundary_weight < 0:
        raise RecipeError(f"boundary_weight must be a finite number ≥ 0 (the extra weight of a boundary pixel, "
                          f"e.g. 4.0; 0 is plain cross-entropy); got {boundary_weight!r}.")
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, numbers.Integral) or boundary_width < 1:
        raise RecipeError(f"boundary_width must be a whole number of label pixels ≥ 1 (e.g. 2); "
                          f"got {boundary_width!r}.")


def _boundary(prep: _Prepared, weight: torch.Tensor | None, loss: SegmentationLoss) -> torch.Tensor:
    # Boundary-weighted CE: w[y]·(1 + boundary_weight·b)·CE, normalised by sum(w[y]·(1 + boundary_weight·b)), b
    # from the labels at the resolution the loss runs at, in the order _prepare flattened the labelled pixels.
    near = torch.cat([boundary_mask(target, valid, loss.boundary_width)[valid] for _, target, valid in prep.pieces])
    pixel_weight = 1 + loss.boundary_weight * near.float()
    return _weighted_mean(-prep.log_prob, prep.target, weight, pixel_weight)


LossTerm = Callable[[_Prepared, torch.Tensor | None, "SegmentationLoss"], torch.Tensor]

# The loss terms a recipe may combine (`loss: {ce: 1.0, dice: 0.5}`), by name: the recipe's `loss` field takes
# exactly these names.
LOSS_FUNCTIONS: dict[str, LossTerm] = {"ce": _ce, "focal": _focal, "dice": _dice, "ohem": _ohem,
                                       "boundary": _boundary}
LOSS_TERMS = tuple(LOSS_FUNCTIONS)


# --------------------------------------------------------------------------------------------------------------
# Public losses
# --------------------------------------------------------------------------------------------------------------


class SegmentationLoss:
    """A weighted sum of named loss terms, each a mean over labelled pixels; the Trainer calls it as
    `loss_fn(logits, labels)` with the model's low-resolution logits and the (possibly padded) labels.

    terms: {"ce" | "focal" | "dice" | "ohem" | "boundary": coefficient}, e.g. {"ce": 1.0, "dice": 0.5}.
    "boundary" is boundary-weighted cross-entropy: w[y]·(1 + boundary_weight·b)·CE over sum(w[y]·(1 +
    boundary_weight·b)), b = 1 within boundary_width label pixels of another labelled class (`boundary_mask`);
    boundary_weight 0 is plain (weighted) cross-entropy.
    class_weights: per-class weights for ce, focal (its alpha), ohem and boundary ([background, foreground] for
    binary logits); see `class_weights`. The logits are upsampled once per call and every term reuses them.
    After a call, `last_terms` holds each term's detached value (for logging).
    """

    def __init__(self, terms: Mapping[str, float] | None = None, *,
                 class_weights: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255,
                 focal_gamma: float = 2.0, ohem_thresh: float = 0.7, ohem_min_kept: int = 100_000,
                 dice_smooth: float = 1.0, boundary_weight: float = 4.0, boundary_width: int = 2,
                 resolution: str = "labels"):
        terms = dict(terms) if terms is not None else {"ce": 1.0}
        unknown = sorted(set(terms) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"Unknown loss terms {unknown}; use {LOSS_TERMS}.")
        if any(not math.isfinite(c) or c < 0 for c in terms.values()) or not any(terms.values()):
            raise ValueError(f"Loss coefficients must be finite, non-negative and not all zero, got {terms}.")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}.")
        if not 0 < ohem_thresh or ohem_min_kept < 0:
            raise ValueError(f"ohem_thresh must be > 0 and ohem_min_kept >= 0, got {ohem_thresh}, {ohem_min_kept}.")
        if dice_smooth < 0:
            raise ValueError(f"dice_smooth must be >= 0, got {dice_smooth}.")
        check_boundary_settings(boundary_weight, boundary_width)
        if resolution not in LOSS_RESOLUTIONS:
            raise ValueError(f"resolution must be one of {LOSS_RESOLUTIONS}, got {resolution!r}.")
        check_ignore_index(ignore_index)
        self.resolution = resolution
        self.terms = {name: float(c) for name, c in terms.items() if c}
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.ignore_index = ignore_index
        self.focal_gamma = focal_gamma
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.dice_smooth = dice_smooth
        self.boundary_weight = float(boundary_weight)
        self.boundary_width = int(boundary_width)
        self.last_terms: dict[str, torch.Tensor] = {}
        self._device_weights: dict[torch.device, torch.Tensor] = {}

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits.device):
            prep = _prepare(logits, labels, self.ignore_index, self.resolution)
            weight = self._device_weights.get(logits.device)
            if weight is None and self.class_weights is not None:  # one host-to-device copy, not one per step
                weight = _weight_tensor(self.class_weights, logits.shape[1], logits.device)
                self._device_weights[logits.device] = weight
            values = {name: LOSS_FUNCTIONS[name](prep, weight, self) for name in self.terms}
            self.last_terms = {name: value.detach() for name, value in values.items()}
            return sum(self.terms[name] * value for name, value in values.items())

    def __repr__(self) -> str:
        return (f"SegmentationLoss(terms={self.terms}, class_weights={self.class_weights is not None}, "
                f"ignore_index={self.ignore_index}, resolution={self.resolution!r})")


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                       weight: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Mean (class-weighted: sum w[y]·CE / sum w[y]) cross-entropy over the labelled pixels of the batch;
    sigmoid BCE for binary logits."""
    return SegmentationLoss({"ce": 1.0}, class_weights=weight, ignore_index=ignore_index)(logits, labels)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, gamma: float = 2.0,
               weight: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), -w[y]·(1 - p_y)^gamma·log p_y, normalised like weighted CE."""
    return SegmentationLoss({"focal": 1.0}, class_weights=weight, ignore_index=ignore_index,
                            focal_gamma=gamma)(logits, labels)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, ignore-aware; see `_dice`."""
    return SegmentationLoss({"dice": 1.0}, ignore_index=ignore_index, dice_smooth=smooth)(logits, labels)


def ohem_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, thresh: float = 0.7,
                            min_kept: int = 100_000,
                            weight: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (MMSegmentation's OHEMPixelSampler); see `_ohem`."""
    return SegmentationLoss({"ohem": 1.0}, class_weights=weight, ignore_index=ignore_index, ohem_thresh=thresh,
                            ohem_min_kept=min_kept)(logits, labels)


# --------------------------------------------------------------------------------------------------------------
# The recipe's loss
# --------------------------------------------------------------------------------------------------------------


def build_loss(training_args: Any, ignore_index: int, num_labels: int, train_split: str,
               report: DataReport | None) -> SegmentationLoss:
    """The recipe's loss (`training_args`: its SegformerTrainingArguments, which import this module for the loss
    names); class weights computed from the data check's training histogram are saved with the run."""
    weights = training_args.class_weights
    if isinstance(weights, list):
        weights = validate_class_weights(weights, num_labels)
    elif weights is not None:
        if report is None:
            raise RecipeError(f"class_weights: {weights} is computed from the data check's pixel histogram; "
                              "keep check_data: true (or give the weights as a list).")
        weights = class_weights_from_report(report, weights, split=train_split,
                                            clip=training_args.class_weight_clip, beta=training_args.class_weight_beta)
        if training_args.process_index == 0:
            (Path(training_args.output_dir) / CLASS_WEIGHTS_FILE).write_text(json.dumps(weights))
    if weights is not None:
        logger.info("Class weights: %s", ", ".join(f"{w:.3f}" for w in weights))
    return SegmentationLoss(training_args.loss_terms, class_weights=weights, ignore_index=ignore_index,
                            focal_gamma=training_args.focal_gamma, ohem_thresh=training_args.ohem_thresh,
                            ohem_min_kept=training_args.ohem_min_kept, dice_smooth=training_args.dice_smooth,
                            boundary_weight=training_args.boundary_weight,
                            boundary_width=training_args.boundary_width, resolution=training_args.loss_resolution)
