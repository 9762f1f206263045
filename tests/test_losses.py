"""Losses against brute-force per-pixel references on tiny inputs (ignore pixels and padded labels included)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.data.preflight import DataReport, SplitReport
from hf_segformer.errors import RecipeError
from hf_segformer.logits import LABEL_PAD
from hf_segformer.training import losses
from hf_segformer.training import run as train
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.losses import (
    SegmentationLoss,
    boundary_mask,
    build_loss,
    class_weights,
    class_weights_from_report,
    cross_entropy_loss,
    dice_loss,
    downsample_labels,
    focal_loss,
    ohem_cross_entropy_loss,
    validate_class_weights,
)
from hf_segformer.training.run_checks import check_field_combinations

IGNORE = 255
C = 3


def pad_labels(labels):
    height = max(label.shape[0] for label in labels)
    width = max(label.shape[1] for label in labels)
    padded = torch.full((len(labels), height, width), LABEL_PAD, dtype=torch.long)
    for i, label in enumerate(labels):
        padded[i, : label.shape[0], : label.shape[1]] = label
    return padded


def make_batch(padded: bool, num_classes: int = C, seed: int = 0):
    """Logits [3, C, 4, 5] and labels (different native sizes, padded, or one crop size), with ignore pixels."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(6, 7), (5, 9), (8, 5)] if padded else [(6, 7)] * 3
    top = max(num_classes, 2)
    labels = [torch.randint(0, top, s, generator=g) for s in sizes]
    labels[0][0, :3] = IGNORE
    labels[2][1:3, 1] = IGNORE
    logits = torch.randn(3, num_classes, 4, 5, generator=g) * 2
    return logits, pad_labels(labels), labels


def ref_pixels(logits, labels):
    """(logit vector, class) for every labelled pixel, each sample upsampled to its own size, float64."""
    out = []
    for i, label in enumerate(labels):
        up = F.interpolate(logits[i : i + 1].double(), size=tuple(label.shape), mode="bilinear", align_corners=False)[0]
        for r in range(label.shape[0]):
            for c in range(label.shape[1]):
                y = int(label[r, c])
                if y != IGNORE:
                    out.append(([float(v) for v in up[:, r, c]], y))
    return out


def true_prob(z, y):
    if len(z) == 1:  # binary
        p1 = 1 / (1 + math.exp(-z[0]))
        return p1 if y == 1 else 1 - p1
    m = max(z)
    return math.exp(z[y] - m) / sum(math.exp(v - m) for v in z)


def ref_weighted_mean(items, weight):
    w = [weight[y] if weight is not None else 1.0 for _, y, *_ in items]
    return sum(wi * v for wi, (v, *_) in zip(w, items)) / sum(w)


def ref_ce(pixels, weight=None):
    return ref_weighted_mean([(-math.log(true_prob(z, y)), y) for z, y in pixels], weight)


def ref_focal(pixels, gamma, weight=None):
    items = []
    for z, y in pixels:
        p = true_prob(z, y)
        items.append((-((1 - p) ** gamma) * math.log(p), y))
    return ref_weighted_mean(items, weight)


def ref_ohem(pixels, thresh, min_kept_total, weight=None):
    probs = [true_prob(z, y) for z, y in pixels]
    order = sorted(range(len(probs)), key=lambda k: probs[k])
    keep = {k for k, p in enumerate(probs) if p < thresh} | set(order[:min_kept_total])
    return ref_ce([pixels[k] for k in sorted(keep)], weight)


def ref_dice(pixels, smooth):
    if len(pixels[0][0]) == 1:  # binary foreground Dice
        inter = card = 0.0
        for z, y in pixels:
            p = 1 / (1 + math.exp(-z[0]))
            inter += p * y
            card += p + y
        return 1 - (2 * inter + smooth) / (card + smooth)
    n = len(pixels[0][0])
    inter, card, present = [0.0] * n, [0.0] * n, [False] * n
    for z, y in pixels:
        probs = [true_prob(z, c) for c in range(n)]
        for c in range(n):
            card[c] += probs[c] + (c == y)
        inter[y] += probs[y]
        present[y] = True
        present[max(range(n), key=lambda c: z[c])] = True
    values = [1 - (2 * inter[c] + smooth) / (card[c] + smooth) for c in range(n) if present[c]]
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------ brute-force references


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.25]])
def test_cross_entropy_matches_reference(padded, weight):
    logits, batch, labels = make_batch(padded)
    expected = ref_ce(ref_pixels(logits, labels), weight)
    assert cross_entropy_loss(logits, batch, IGNORE, weight).item() == pytest.approx(expected, rel=1e-5)


def test_weighted_cross_entropy_is_torch_weighted_mean():
    logits, batch, _ = make_batch(padded=False)
    weight = torch.tensor([0.5, 2.0, 1.25])
    up = F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, batch, weight=weight, ignore_index=IGNORE)
    assert cross_entropy_loss(logits, batch, IGNORE, weight).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_focal_matches_reference(padded):
    logits, batch, labels = make_batch(padded, seed=1)
    weight = [1.0, 3.0, 0.5]
    expected = ref_focal(ref_pixels(logits, labels), 2.0, weight)
    assert focal_loss(logits, batch, IGNORE, gamma=2.0, weight=weight).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_dice_matches_reference(padded):
    logits, batch, labels = make_batch(padded, seed=2)
    expected = ref_dice(ref_pixels(logits, labels), smooth=1.0)
    assert dice_loss(logits, batch, IGNORE, smooth=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_dice_excludes_classes_absent_from_labels_and_predictions():
    logits = torch.zeros(1, 4, 2, 2)
    logits[:, 0] = 5.0  # predicts class 0 everywhere; class 3 is nowhere
    labels = torch.tensor([[[0, 1], [0, IGNORE]]])
    pixels = ref_pixels(logits, [labels[0]])
    assert dice_loss(logits, labels, IGNORE).item() == pytest.approx(ref_dice(pixels, 1.0), rel=1e-5)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("thresh,min_kept", [(0.5, 4), (0.2, 30), (0.9, 0)])
def test_ohem_matches_reference(padded, thresh, min_kept):
    logits, batch, labels = make_batch(padded, seed=3)
    weight = [1.0, 2.0, 0.5]
    expected = ref_ohem(ref_pixels(logits, labels), thresh, min_kept * 3, weight)
    got = ohem_cross_entropy_loss(logits, batch, IGNORE, thresh=thresh, min_kept=min_kept, weight=weight)
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ identities


def test_equal_weights_equal_plain_cross_entropy():
    logits, batch, _ = make_batch(padded=True)
    plain = cross_entropy_loss(logits, batch, IGNORE)
    assert cross_entropy_loss(logits, batch, IGNORE, [2.5] * C).item() == pytest.approx(plain.item(), rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, batch, _ = make_batch(padded=True)
    weight = [1.0, 3.0, 0.5]
    assert focal_loss(logits, batch, IGNORE, 0.0, weight).item() == pytest.approx(
        cross_entropy_loss(logits, batch, IGNORE, weight).item(), rel=1e-6)


def test_ohem_with_threshold_one_is_cross_entropy():
    logits, batch, _ = make_batch(padded=True)
    logits[0, 0] = 100.0  # saturated pixels (probability rounds to 1.0) are kept too
    assert ohem_cross_entropy_loss(logits, batch, IGNORE, thresh=1.0, min_kept=0).item() == pytest.approx(
        cross_entropy_loss(logits, batch, IGNORE).item(), rel=1e-6)


def test_ohem_that_would_keep_every_pixel_of_a_crop_is_refused_before_any_work(monkeypatch, tmp_path):
    # MMSegmentation's min_kept (100 000 per image) is below a 512² crop but not a 256² one: OHEM would be CE.
    monkeypatch.setattr(train, "setup_logging", lambda args: None)
    monkeypatch.setattr(train, "load_checked_data", lambda *args, **kwargs: pytest.fail("data work started"))
    run = tmp_path / "run"
    with pytest.raises(RecipeError, match=r"ohem_min_kept 100000 is not below the 65536 pixels of a 256² crop.*16384"):
        train.main(DataArguments(data_dir=str(tmp_path / "data"), crop_size=256), ModelArguments(),
                   SegformerTrainingArguments(output_dir=str(run), loss="{ohem: 1.0}", report_to="none", use_cpu=True))
    assert list(run.iterdir()) == []  # made writable-checked, nothing written
    for crop_size, min_kept, loss in ((512, 100_000, "{ohem: 1.0}"), (256, 16_384, "{ohem: 1.0}"),
                                      (256, 100_000, "{ce: 1.0, ohem: 0.0}")):
        check_field_combinations(
            DataArguments(data_dir=str(tmp_path / "data"), crop_size=crop_size),
            SegformerTrainingArguments(output_dir=str(run), loss=loss, ohem_min_kept=min_kept, report_to="none"))


def test_dice_of_perfect_and_wrong_predictions():
    labels = torch.randint(0, C, (2, 8, 8), generator=torch.Generator().manual_seed(4))
    labels[0, 0, :4] = IGNORE
    perfect = F.one_hot(labels.clamp_max(C - 1), C).permute(0, 3, 1, 2).float() * 30
    # logits at label resolution: bilinear upsampling to the same size is the identity
    assert dice_loss(perfect, labels, IGNORE).item() == pytest.approx(0.0, abs=1e-3)
    wrong = F.one_hot((labels.clamp_max(C - 1) + 1) % C, C).permute(0, 3, 1, 2).float() * 30
    assert dice_loss(wrong, labels, IGNORE).item() == pytest.approx(1.0, abs=0.02)


def test_nothing_labelled_gives_zero_not_nan():
    logits, batch, _ = make_batch(padded=True)
    batch[batch != LABEL_PAD] = IGNORE
    loss = SegmentationLoss({"ce": 1, "focal": 1, "dice": 1, "ohem": 1, "boundary": 1}, class_weights=[1.0, 2.0, 3.0])
    value = loss(logits.requires_grad_(), batch)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------ combined loss


def test_combined_loss_is_the_weighted_sum_and_upsamples_once(monkeypatch):
    logits, batch, _ = make_batch(padded=False, seed=5)
    weight = [1.0, 2.0, 0.5]
    loss = SegmentationLoss({"ce": 1.0, "dice": 0.5, "focal": 0.25, "ohem": 2.0}, class_weights=weight,
                            ignore_index=IGNORE, focal_gamma=1.5, ohem_thresh=0.6, ohem_min_kept=3)
    calls = []
    original = losses.upsample_logits
    monkeypatch.setattr(losses, "upsample_logits", lambda *a: calls.append(1) or original(*a))
    value = loss(logits, batch)
    assert len(calls) == 1  # one crop size: one upsampling for the batch, shared by all four terms
    monkeypatch.undo()
    expected = (cross_entropy_loss(logits, batch, IGNORE, weight) + 0.5 * dice_loss(logits, batch, IGNORE)
                + 0.25 * focal_loss(logits, batch, IGNORE, 1.5, weight)
                + 2.0 * ohem_cross_entropy_loss(logits, batch, IGNORE, 0.6, 3, weight))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(loss.last_terms) == {"ce", "dice", "focal", "ohem"}


def test_combined_loss_validates_its_arguments():
    with pytest.raises(ValueError, match="Unknown loss terms"):
        SegmentationLoss({"lovasz": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        SegmentationLoss({"ce": 0.0})
    logits, batch, _ = make_batch(padded=False)
    with pytest.raises(ValueError, match="class weights"):
        SegmentationLoss(class_weights=[1.0, 2.0])(logits, batch)


@pytest.mark.parametrize("term", ["ce", "focal", "dice", "ohem", "boundary"])
def test_bf16_logits_give_a_float32_loss_and_gradients_flow(term):
    logits, batch, _ = make_batch(padded=True, seed=6)
    logits = logits.bfloat16().requires_grad_()
    loss = SegmentationLoss({term: 1.0}, class_weights=[1.0, 2.0, 0.5], ohem_thresh=0.7, ohem_min_kept=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, batch)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ binary (num_labels = 1)


@pytest.mark.parametrize("padded", [True, False])
def test_binary_losses_match_references(padded):
    logits, batch, labels = make_batch(padded, num_classes=1, seed=7)
    pixels = ref_pixels(logits, labels)
    weight = [0.5, 2.0]  # [background, foreground]
    assert cross_entropy_loss(logits, batch, IGNORE).item() == pytest.approx(ref_ce(pixels), rel=1e-5)
    assert cross_entropy_loss(logits, batch, IGNORE, weight).item() == pytest.approx(ref_ce(pixels, weight), rel=1e-5)
    assert dice_loss(logits, batch, IGNORE).item() == pytest.approx(ref_dice(pixels, 1.0), rel=1e-5)
    assert focal_loss(logits, batch, IGNORE, 2.0, weight).item() == pytest.approx(ref_focal(pixels, 2.0, weight), rel=1e-5)
    assert ohem_cross_entropy_loss(logits, batch, IGNORE, 0.6, 2).item() == pytest.approx(
        ref_ohem(pixels, 0.6, 6), rel=1e-5)
    if not padded:  # the same as torch's BCE on the labelled pixels
        up = F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        valid = batch != IGNORE
        bce = F.binary_cross_entropy_with_logits(up[valid], batch[valid].float())
        assert cross_entropy_loss(logits, batch, IGNORE).item() == pytest.approx(bce.item(), rel=1e-5)
    logits.requires_grad_()
    SegmentationLoss({"ce": 1.0, "dice": 1.0})(logits, batch).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_binary_weights_need_two_entries():
    logits, batch, _ = make_batch(padded=False, num_classes=1)
    with pytest.raises(ValueError, match="background, foreground"):
        cross_entropy_loss(logits, batch, IGNORE, [1.0])


# ------------------------------------------------------------------------------------------ boundary-weighted CE


def ref_boundary(label, width):
    """Brute force: a labelled pixel with a labelled pixel of another class in its (2·width+1)² window."""
    height, wide = label.shape
    mask = torch.zeros(height, wide, dtype=torch.bool)
    for r in range(height):
        for c in range(wide):
            y = int(label[r, c])
            if y in (IGNORE, LABEL_PAD):
                continue
            window = label[max(r - width, 0): r + width + 1, max(c - width, 0): c + width + 1]
            mask[r, c] = any(int(v) not in (IGNORE, LABEL_PAD, y) for v in window.flatten())
    return mask


def ref_boundary_ce(logits, labels, weight, boundary_weight, width):
    """sum(w[y]·(1 + k·b)·CE) / sum(w[y]·(1 + k·b)) over the labelled pixels, float64."""
    near = [bool(b) for label in labels for b, y in zip(ref_boundary(label, width).flatten(), label.flatten())
            if int(y) != IGNORE]
    pixels = ref_pixels(logits, labels)
    scale = [(weight[y] if weight is not None else 1.0) * (1 + boundary_weight * b) for (_, y), b in zip(pixels, near)]
    ce = [-math.log(true_prob(z, y)) for z, y in pixels]
    return sum(s * v for s, v in zip(scale, ce)) / sum(scale)


def blocky_batch(padded: bool, num_classes: int = C, seed: int = 8):
    """make_batch's shapes with labels in blocks (so some pixels are far from any boundary) and ignore blocks."""
    logits, _, labels = make_batch(padded, num_classes, seed)
    top = max(num_classes, 2)
    for i, label in enumerate(labels):
        rows, cols = torch.meshgrid(torch.arange(label.shape[0]), torch.arange(label.shape[1]), indexing="ij")
        label.copy_((rows // 4 + cols // 5 + i) % top)
        label[-2:, -2:] = IGNORE
    return logits, pad_labels(labels), labels


def thin_line_map():
    """8×8: class 0 with a 1-px vertical line of class 1 (column 3) and an ignore block at the bottom right."""
    label = torch.zeros(8, 8, dtype=torch.long)
    label[:, 3] = 1
    label[5:, 5:] = IGNORE
    return label


@pytest.mark.parametrize("width", [1, 2])
def test_boundary_mask_is_the_pixels_near_another_labelled_class(width):
    label = thin_line_map()
    valid = label != IGNORE
    mask = boundary_mask(label.where(valid, 0)[None], valid[None], width)[0]
    assert torch.equal(mask, ref_boundary(label, width))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, 3 - width: 4 + width] = True  # the line and `width` columns each side of it
    expected[5:, 5:] = False  # ignored pixels are never boundary pixels
    assert torch.equal(mask, expected)  # the class-0 pixels beside the ignore block (e.g. row 4) are not either


def test_ignored_and_padded_pixels_make_no_boundary():
    label = torch.zeros(6, 6, dtype=torch.long)
    label[2:4, 2:4] = IGNORE
    label[:, 5] = LABEL_PAD
    valid = (label != IGNORE) & (label != LABEL_PAD)
    assert not boundary_mask(label.where(valid, 0)[None], valid[None], 2).any()


@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.25]])
def test_boundary_weight_zero_is_plain_cross_entropy(weight):
    logits, batch, _ = blocky_batch(padded=True)
    boundary = SegmentationLoss({"boundary": 1.0}, class_weights=weight, ignore_index=IGNORE, boundary_weight=0.0)
    assert boundary(logits, batch).item() == cross_entropy_loss(logits, batch, IGNORE, weight).item()


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("num_classes, weight", [(C, [0.5, 2.0, 1.25]), (C, None), (1, [0.5, 2.0])])
@pytest.mark.parametrize("width", [1, 2])
def test_boundary_cross_entropy_matches_reference(padded, num_classes, weight, width):
    logits, batch, labels = blocky_batch(padded, num_classes)
    loss = SegmentationLoss({"boundary": 1.0}, class_weights=weight, ignore_index=IGNORE, boundary_weight=3.0,
                            boundary_width=width)
    expected = ref_boundary_ce(logits, labels, weight, 3.0, width)
    assert loss(logits, batch).item() == pytest.approx(expected, rel=1e-5)
    near = torch.cat([ref_boundary(label, width)[label != IGNORE] for label in labels])
    assert near.any() and not near.all()  # boundary and interior pixels both weigh in


def test_boundary_at_the_logits_resolution_uses_the_downsampled_labels():
    logits, _, _ = make_batch(padded=False, seed=9)
    labels = blocky_batch(padded=False)[1].repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :8, :10]
    small = downsample_labels(labels, tuple(logits.shape[-2:]))
    weight = [1.0, 2.0, 0.5]
    on_logits = SegmentationLoss({"boundary": 1.0}, class_weights=weight, resolution="logits", boundary_width=1)
    assert on_logits(logits, labels).item() == pytest.approx(
        ref_boundary_ce(logits, list(small), weight, 4.0, 1), rel=1e-5)


def test_boundary_settings_are_validated_and_reach_the_loss(tmp_path):
    for bad in ({"boundary_weight": -1.0}, {"boundary_weight": math.nan}, {"boundary_width": 0},
                {"boundary_width": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SegmentationLoss({"boundary": 1.0}, **bad)
    args = SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none", loss="{ce: 1.0, boundary: 1.0}",
                                      boundary_weight=2.5, boundary_width=3)
    loss = build_loss(args, IGNORE, C, "train", None)
    assert (loss.terms, loss.boundary_weight, loss.boundary_width) == ({"ce": 1.0, "boundary": 1.0}, 2.5, 3)


# ------------------------------------------------------------------------------------------ class weights

COUNTS = [10, 30, 60, 0]  # N = 100 labelled pixels; class 3 has none


def pixel_mean(weights, counts=COUNTS):
    return sum(w * c for w, c in zip(weights, counts)) / sum(counts)


def test_inverse_frequency():
    raw = class_weights(COUNTS, "inverse_frequency", clip=None, normalise=False)
    assert raw == pytest.approx([10.0, 10 / 3, 5 / 3, 10.0])  # N / n_c; the empty class gets the largest
    normalised = class_weights(COUNTS, "inverse_frequency", clip=None)
    assert normalised == pytest.approx([10 / 3, 10 / 9, 5 / 9, 10 / 3])  # divided by the pixel mean, 3
    assert pixel_mean(normalised) == pytest.approx(1.0)


def test_median_frequency():
    # frequencies 0.1, 0.3, 0.6; median 0.3
    assert class_weights(COUNTS, "median_frequency", clip=None, normalise=False) == pytest.approx([3.0, 1.0, 0.5, 3.0])
    assert pixel_mean(class_weights(COUNTS, "median_frequency", clip=None)) == pytest.approx(1.0)


def test_effective_number():
    beta = 0.9
    expected = [(1 - beta) / (1 - beta**n) for n in COUNTS[:3]]
    raw = class_weights(COUNTS, "effective_number", beta=beta, clip=None, normalise=False)
    assert raw == pytest.approx([*expected, max(expected)])
    assert raw[0] > raw[1] > raw[2]
    # numerically exact for beta close to 1 and huge counts (no 1 - beta^n cancellation)
    big = class_weights([10**9, 10**3], "effective_number", beta=0.9999, clip=None, normalise=False)
    assert big == pytest.approx([1e-4 / 1.0, 1e-4 / (1 - 0.9999**1000)], rel=1e-9)


@pytest.mark.parametrize("method", ["inverse_frequency", "median_frequency", "effective_number"])
def test_clip_bounds_the_ratio_and_normalisation_holds(method):
    counts = [1, 1000, 100_000, 0]
    weights = class_weights(counts, method, clip=5.0, beta=0.999)
    assert max(weights) / min(weights) == pytest.approx(5.0)
    assert weights[3] == max(weights)  # zero-pixel class: the largest weight
    assert pixel_mean(weights, counts) == pytest.approx(1.0)


def test_clip_example():
    # raw 10, 10/3, 5/3: the ceiling is 2 × 5/3
    assert class_weights(COUNTS, "inverse_frequency", clip=2.0, normalise=False) == pytest.approx(
        [10 / 3, 10 / 3, 5 / 3, 10 / 3])


def test_class_weight_validation():
    assert class_weights(COUNTS, [1, 2, 0, 4]) == [1.0, 2.0, 0.0, 4.0]  # explicit weights pass through
    with pytest.raises(RecipeError, match="3 weights for 4 classes"):
        class_weights(COUNTS, [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        validate_class_weights([1, -1], 2)
    with pytest.raises(ValueError, match="all zero"):
        validate_class_weights([0, 0], 2)
    with pytest.raises(ValueError, match="zero pixels"):
        class_weights([0, 0], "inverse_frequency")
    with pytest.raises(ValueError, match="Unknown class-weight method"):
        class_weights(COUNTS, "sqrt")
    with pytest.raises(ValueError, match="clip"):
        class_weights(COUNTS, "inverse_frequency", clip=0.5)


def test_class_weights_from_report_drop_the_ignore_count():
    report = DataReport(4, IGNORE, {i: str(i) for i in range(4)},
                        {"train": SplitReport(2, [*COUNTS, 999]), "validation": SplitReport(1, [1, 1, 1, 1, 0])})
    assert class_weights_from_report(report, "median_frequency", clip=None) == pytest.approx(
        class_weights(COUNTS, "median_frequency", clip=None))
    with pytest.raises(ValueError, match="no 'test' split"):
        class_weights_from_report(report, "inverse_frequency", split="test")
