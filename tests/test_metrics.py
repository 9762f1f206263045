"""Metric core vs an independent brute-force reference of evaluate's `mean_iou`, plus the offline
`evaluate` module, the Trainer-side accumulation and the confusion-matrix figure."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before evaluate is imported anywhere

import json
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_segformer import logits as logits_module
from hf_segformer.evaluation import metrics
from hf_segformer.evaluation.metrics import (
    MEAN_IOU_MODULE_PATH,
    SegmentationMetrics,
    confusion_from_arrays,
    confusion_matrices,
    flatten_metrics,
    metrics_from_confusion,
)
from hf_segformer.logits import LABEL_PAD, upsampled_argmax

MEAN_IOU_KEYS = ["mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"]
EXTRA_KEYS = ["mean_dice", "per_category_dice", "frequency_weighted_iou"]
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------------
# Brute-force reference, written from evaluate's description (not from our code)
# ---------------------------------------------------------------------------------------------------------------

def reference_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
                       reduce_labels=False):
    total_intersect = np.zeros(num_labels, dtype=np.float64)
    total_union = np.zeros(num_labels, dtype=np.float64)
    total_pred = np.zeros(num_labels, dtype=np.float64)
    total_label = np.zeros(num_labels, dtype=np.float64)
    for pred, label in zip(predictions, references):
        pred = np.array(pred)
        label = np.array(label, dtype=np.int64)
        if label_map is not None:
            for old_id, new_id in label_map.items():
                label[label == old_id] = new_id
        if reduce_labels:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        mask = label != ignore_index
        pred = pred[mask]
        label = label[mask]
        intersect = pred[pred == label]
        area_intersect = np.histogram(intersect, bins=num_labels, range=(0, num_labels - 1))[0]
        area_pred = np.histogram(pred, bins=num_labels, range=(0, num_labels - 1))[0]
        area_label = np.histogram(label, bins=num_labels, range=(0, num_labels - 1))[0]
        total_intersect += area_intersect
        total_union += area_pred + area_label - area_intersect
        total_pred += area_pred
        total_label += area_label
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        iou = total_intersect / total_union
        acc = total_intersect / total_label
        dice = 2 * total_intersect / (total_pred + total_label)
        results = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": total_intersect.sum() / total_label.sum(),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
            "mean_dice": np.nanmean(dice),
            "per_category_dice": dice,
        }
        fwiou = 0.0
        present = False
        for c in range(num_labels):
            if not np.isnan(iou[c]):
                present = True
                fwiou += total_label[c] / total_label.sum() * iou[c]
        results["frequency_weighted_iou"] = fwiou if present else np.nan
    if nan_to_num is not None:
        results = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in results.items()}
    return results


def assert_same(ours, expected, keys=MEAN_IOU_KEYS + EXTRA_KEYS):
    for key in keys:
        np.testing.assert_allclose(np.asarray(ours[key], dtype=np.float64), np.asarray(expected[key], dtype=np.float64),
                                   rtol=0, atol=1e-9, equal_nan=True, err_msg=key)


def pad_labels(labels):
    height = max(label.shape[0] for label in labels)
    width = max(label.shape[1] for label in labels)
    padded = torch.full((len(labels), height, width), LABEL_PAD, dtype=torch.long)
    for i, label in enumerate(labels):
        padded[i, : label.shape[0], : label.shape[1]] = torch.as_tensor(label)
    return padded


def plain_predictions(logits, labels):
    """interpolate + argmax per sample, at each label's own size (what the metric must be computed on)."""
    return [F.interpolate(logits[i : i + 1].float(), size=label.shape, mode="bilinear", align_corners=False)[0]
            .argmax(0).numpy() for i, label in enumerate(labels)]


def one_hot_logits(predictions, num_labels):
    """Logits at the label size whose argmax is exactly `predictions` (same-size bilinear is the identity)."""
    predictions = [torch.as_tensor(np.asarray(p), dtype=torch.long) for p in predictions]
    height = max(p.shape[0] for p in predictions)
    width = max(p.shape[1] for p in predictions)
    assert all(p.shape == (height, width) for p in predictions)
    return torch.stack([F.one_hot(p, num_labels).permute(2, 0, 1).float() * 5 for p in predictions])


# ---------------------------------------------------------------------------------------------------------------
# Torch path (Trainer): confusion_matrices → metrics_from_confusion
# ---------------------------------------------------------------------------------------------------------------

@st.composite
def batches(draw):
    num_labels = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 3))
    ignore_index = draw(st.sampled_from([255, -1, 0, num_labels - 1]))
    values = list(range(num_labels)) + [ignore_index]
    labels = []
    for _ in range(batch):
        height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        ignore_share = draw(st.sampled_from([0.0, 0.3, 1.0]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        label = rng.choice(values, size=(height, width)).astype(np.int64)
        label[rng.random((height, width)) < ignore_share] = ignore_index
        labels.append(label)
    logit_size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = torch.from_numpy(rng.normal(size=(batch, num_labels, *logit_size)).astype(np.float32))
    nan_to_num = draw(st.sampled_from([None, 0, -1]))
    return logits, labels, num_labels, ignore_index, nan_to_num


@HYPOTHESIS
@given(batches())
def test_confusion_metrics_match_reference(case):
    logits, labels, num_labels, ignore_index, nan_to_num = case
    confusion = confusion_matrices(logits, pad_labels(labels), num_labels, ignore_index)
    assert confusion.shape == (len(labels), num_labels, num_labels) and confusion.dtype == torch.int64
    ours = metrics_from_confusion(confusion.sum(0).numpy(), nan_to_num)
    expected = reference_mean_iou(plain_predictions(logits, labels), labels, num_labels, ignore_index, nan_to_num)
    assert_same(ours, expected)
    # The per-sample matrices: each one counts exactly that sample's labelled pixels.
    for i, label in enumerate(labels):
        assert int(confusion[i].sum()) == int((label != ignore_index).sum())


EDGE_CASES = {
    # name: (predictions, references, num_labels, ignore_index)
    "empty classes": ([np.array([[0, 0, 2], [2, 2, 0]]), np.array([[4, 0], [0, 4]])],
                      [np.array([[0, 2, 2], [2, 2, 0]]), np.array([[4, 4], [0, 0]])], 6, 255),
    "one all-ignore image": ([np.array([[1, 0], [1, 1]]), np.array([[0, 1, 1]])],
                             [np.array([[1, 0], [0, 1]]), np.array([[255, 255, 255]])], 2, 255),
    "all images all-ignore": ([np.array([[1, 0], [1, 1]]), np.array([[0]])],
                              [np.full((2, 2), 255), np.full((1, 1), 255)], 3, 255),
    "num_labels 1": ([np.zeros((3, 4), dtype=np.int64)], [np.array([[0, 0, 255, 0]] * 3)], 1, 255),
    "num_labels 1 all ignore": ([np.zeros((2, 2), dtype=np.int64)], [np.full((2, 2), 255)], 1, 255),
    "num_labels 2": ([np.array([[0, 1, 1], [0, 0, 1]])], [np.array([[0, 1, 0], [1, 0, -1]])], 2, -1),
    "ignore_index is a class id": ([np.array([[0, 1, 2], [2, 1, 0]])], [np.array([[0, 1, 2], [0, 0, 0]])], 3, 0),
    "prediction-only class": ([np.array([[2, 2], [2, 2]])], [np.array([[0, 1], [1, 1]])], 3, 255),
}


@pytest.mark.parametrize("nan_to_num", [None, 0])
@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_torch_and_numpy_paths(name, nan_to_num):
    predictions, references, num_labels, ignore_index = EDGE_CASES[name]
    expected = reference_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num)
    # numpy core (what the evaluate module uses)
    confusion = sum(confusion_from_arrays(p, r, num_labels, ignore_index) for p, r in zip(predictions, references))
    assert_same(metrics_from_confusion(confusion, nan_to_num, outside_bin=True), expected)
    # torch core (what the Trainer uses): logits whose argmax is the prediction, padded label batch
    same_size = len({np.shape(p) for p in predictions}) == 1
    groups = [list(range(len(predictions)))] if same_size else [[i] for i in range(len(predictions))]
    total = np.zeros((num_labels, num_labels), dtype=np.int64)
    for group in groups:
        logits = one_hot_logits([predictions[i] for i in group], num_labels)
        labels = pad_labels([references[i] for i in group])
        total += confusion_matrices(logits, labels, num_labels, ignore_index).sum(0).numpy()
    assert_same(metrics_from_confusion(total, nan_to_num), expected)


def test_edge_case_values():
    predictions, references, num_labels, ignore_index = EDGE_CASES["empty classes"]
    confusion = sum(confusion_from_arrays(p, r, num_labels, ignore_index) for p, r in zip(predictions, references))
    results = metrics_from_confusion(confusion, outside_bin=True)
    iou = results["per_category_iou"]
    assert np.isnan(iou[[1, 3, 5]]).all() and not np.isnan(iou[[0, 2, 4]]).any()
    assert results["mean_iou"] == pytest.approx(iou[[0, 2, 4]].mean())
    all_ignored = metrics_from_confusion(np.zeros((3, 3)))
    assert all(np.isnan(v).all() for v in all_ignored.values())
    zeroed = metrics_from_confusion(np.zeros((3, 3)), nan_to_num=0)
    assert all((np.asarray(v) == 0).all() for v in zeroed.values())


def test_labels_only_ignore_index():
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.full((2, 5, 7), 255)
    confusion = confusion_matrices(logits, labels, 4, 255)
    assert confusion.sum() == 0
    results = metrics_from_confusion(confusion.sum(0).numpy())
    expected = reference_mean_iou(plain_predictions(logits, [l.numpy() for l in labels]), labels.numpy(), 4, 255)
    assert_same(results, expected)
    assert np.isnan(results["mean_iou"]) and np.isnan(results["overall_accuracy"])


# ---------------------------------------------------------------------------------------------------------------
# upsampled_argmax, padding, bad input
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_classes", [1, 2, 3])
def test_upsampled_argmax_chunked_equals_plain(monkeypatch, chunk_classes):
    torch.manual_seed(0)
    logits = torch.randn(7, 5, 6)
    logits[5] = logits[1]  # exact ties across chunks: argmax keeps the lower index
    logits[3] = logits[0]
    logits[:, 0, 0] = 1.0  # a pixel where every class ties
    size = (13, 11)
    plain = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    monkeypatch.setattr(logits_module, "UPSAMPLE_CHUNK_ELEMENTS", size[0] * size[1] * chunk_classes)
    chunked = upsampled_argmax(logits, size)
    assert torch.equal(chunked, plain)
    assert chunked[0, 0] == 0


def test_upsampled_argmax_half_precision_logits():
    logits = torch.randn(4, 3, 3).to(torch.bfloat16)
    expected = F.interpolate(logits[None].float(), size=(6, 5), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(upsampled_argmax(logits, (6, 5)), expected)


def test_padded_labels_equal_per_image():
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 4, size=shape) for shape in [(5, 9), (8, 3), (2, 2)]]
    labels[1][0, :] = 255
    labels[2][:, 0] = 255  # ignore pixels on the first row/column must not be mistaken for padding
    logits = torch.randn(3, 4, 4, 4)
    batch = confusion_matrices(logits, pad_labels(labels), 4, 255)
    for i, label in enumerate(labels):
        alone = confusion_matrices(logits[i : i + 1], torch.as_tensor(label)[None], 4, 255)
        assert torch.equal(batch[i], alone[0])


def test_label_pad_as_ignore_index_is_refused():
    with pytest.raises(ValueError, match="reserved for padding"):
        confusion_matrices(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 2, LABEL_PAD)


def test_label_out_of_range_names_sample():
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[1, 2, 2] = 5
    with pytest.raises(ValueError, match=r"Sample 1 of the batch has label values \[5\] outside \[0, 3\)"):
        confusion_matrices(torch.randn(3, 3, 2, 2), labels, 3, 255)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 0, 1] = -3
    with pytest.raises(ValueError, match=r"Sample 0 .*\[-3\].*ignore_index=255"):
        confusion_matrices(torch.randn(2, 3, 2, 2), labels, 3, 255)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_name_sample(bad):
    logits = torch.randn(3, 2, 2, 2)
    logits[2, 1, 0, 1] = bad
    with pytest.raises(ValueError, match="Sample 2 of the batch has NaN or infinite logits"):
        confusion_matrices(logits, torch.zeros(3, 4, 4, dtype=torch.long), 2, 255)


def test_mismatched_shapes_are_explained():
    with pytest.raises(ValueError, match="3 logits but 2 labels"):
        confusion_matrices(torch.randn(3, 2, 2, 2), torch.zeros(2, 4, 4, dtype=torch.long), 2, 255)
    with pytest.raises(ValueError, match="4 classes but num_labels=3"):
        confusion_matrices(torch.randn(1, 4, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long), 3, 255)
    with pytest.raises(ValueError, match=r"labels \[B, H, W\]"):
        confusion_matrices(torch.randn(1, 2, 2, 2), torch.zeros(4, 4, dtype=torch.long), 2, 255)
    with pytest.raises(ValueError, match="Prediction 1 has shape"):
        confusion_from_arrays(np.zeros((2, 3)), np.zeros((3, 2)), 2, 255, index=1)


# ---------------------------------------------------------------------------------------------------------------
# Trainer accumulation and flattened keys
# ---------------------------------------------------------------------------------------------------------------

def test_segmentation_metrics_accumulates_batches():
    rng = np.random.default_rng(2)
    id2label = {0: "background", 1: "road", 2: "sky"}
    batches = [torch.from_numpy(rng.integers(0, 50, size=(n, 3, 3))) for n in (2, 3, 1)]
    metric = SegmentationMetrics(3, id2label)
    for batch in batches[:-1]:
        assert metric(types.SimpleNamespace(predictions=batch), compute_result=False) == {}
    per_batch = metric(types.SimpleNamespace(predictions=batches[-1]), compute_result=True)
    per_batch_confusion = metric.last_confusion
    once = SegmentationMetrics(3, id2label)(types.SimpleNamespace(predictions=torch.cat(batches).numpy()))
    assert per_batch == pytest.approx(once, nan_ok=True)
    np.testing.assert_array_equal(per_batch_confusion, torch.cat(batches).sum(0).numpy())
    # state is reset after compute_result: a second evaluation starts from zero
    again = metric(types.SimpleNamespace(predictions=torch.cat(batches)), compute_result=True)
    assert again == pytest.approx(once, nan_ok=True)
    assert {"mean_iou", "iou_road", "accuracy_sky", "dice_background"} <= set(once)


def test_flatten_metrics_keys():
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    results = metrics_from_confusion(confusion)
    flat = flatten_metrics(results, {0: "Road", 1: "road", 2: "traffic sign"})
    assert {"iou_road", "iou_road_1", "iou_traffic_sign", "accuracy_road_1", "dice_traffic_sign"} <= set(flat)
    assert not any(k.startswith("precision_") for k in flat)
    assert all(isinstance(v, float) for v in flat.values())
    json.dumps(flat)
    with_precision = flatten_metrics(results, {0: "a", 1: "b", 2: "c"}, per_class=("iou", "precision"))
    assert with_precision["precision_a"] == pytest.approx(5 / 7) and "dice_a" not in with_precision
    # evaluate's own mean_iou results have no Dice/precision arrays: those families are skipped
    plain = {k: results[k] for k in MEAN_IOU_KEYS}
    assert set(flatten_metrics(plain, {0: "a", 1: "b", 2: "c"}, per_class=("iou", "dice", "precision"))) == {
        "mean_iou", "mean_accuracy", "overall_accuracy", "iou_a", "iou_b", "iou_c"}
    with pytest.raises(ValueError, match="Unknown per-class"):
        flatten_metrics(results, {}, per_class=("f1",))


# ---------------------------------------------------------------------------------------------------------------
# The numpy core and the offline evaluate module
# ---------------------------------------------------------------------------------------------------------------

@st.composite
def image_sets(draw, max_images=4):
    num_labels = draw(st.integers(1, 6))
    ignore_index = draw(st.sampled_from([255, -1, 0]))
    reduce_labels = draw(st.booleans())
    # label_map: keys and values disjoint here; chained maps are pinned in test_evaluate_module_batches_and_label_map_details
    keys = draw(st.lists(st.integers(0, num_labels + 2), max_size=3, unique=True))
    label_map = {k: draw(st.integers(-1, num_labels + 3).filter(lambda v: v not in keys)) for k in keys} or None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    predictions, references = [], []
    for _ in range(draw(st.integers(1, max_images))):
        shape = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
        # values outside [0, num_labels) too: evaluate's histograms drop them, area by area
        predictions.append(rng.integers(-1, num_labels + 1, size=shape))
        references.append(rng.choice(list(range(-1, num_labels + 2)) + [255, ignore_index], size=shape))
    nan_to_num = draw(st.sampled_from([None, 0, -1]))
    return predictions, references, num_labels, ignore_index, nan_to_num, label_map, reduce_labels


@HYPOTHESIS
@given(image_sets())
def test_numpy_core_matches_reference(case):
    predictions, references, num_labels, ignore_index, nan_to_num, label_map, reduce_labels = case
    originals = [r.copy() for r in references]
    confusion = sum(confusion_from_arrays(p, r, num_labels, ignore_index, label_map, reduce_labels)
                    for p, r in zip(predictions, references))
    ours = metrics_from_confusion(confusion, nan_to_num, outside_bin=True)
    expected = reference_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num, label_map,
                                  reduce_labels)
    assert_same(ours, expected)
    assert all(np.array_equal(a, b) for a, b in zip(originals, references))  # inputs untouched


@pytest.fixture(scope="module")
def mean_iou_module():
    import evaluate

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return evaluate.load(MEAN_IOU_MODULE_PATH, keep_in_memory=True)


def test_module_folder_layout():
    folder = Path(MEAN_IOU_MODULE_PATH)
    assert folder.name == "mean_iou" and (folder / "mean_iou.py").is_file() and (folder / "README.md").is_file()
    assert folder.parent == Path(metrics.__file__).resolve().parent


def test_evaluate_module_loads_offline_and_matches_docs_example(mean_iou_module):
    predicted = np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])
    ground_truth = np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])
    results = mean_iou_module.compute(predictions=[predicted], references=[ground_truth], num_labels=10,
                                      ignore_index=255)
    assert list(results) == MEAN_IOU_KEYS + EXTRA_KEYS
    assert_same(results, reference_mean_iou([predicted], [ground_truth], 10, 255))
    assert results["mean_iou"] == pytest.approx(0.38) and results["overall_accuracy"] == pytest.approx(0.5)
    assert metrics.load_mean_iou(keep_in_memory=True).name == mean_iou_module.name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=image_sets(max_images=3))
def test_evaluate_module_matches_reference(mean_iou_module, case):
    predictions, references, num_labels, ignore_index, nan_to_num, label_map, reduce_labels = case
    # evaluate's arrow features need values ≥ -2**31; ours are int32, so -1 works (mean_iou's uint16 would not)
    results = mean_iou_module.compute(predictions=predictions, references=references, num_labels=num_labels,
                                      ignore_index=ignore_index, nan_to_num=nan_to_num, label_map=label_map,
                                      reduce_labels=reduce_labels)
    expected = reference_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num, label_map,
                                  reduce_labels)
    assert_same(results, expected)


def test_evaluate_module_batches_and_label_map_details(mean_iou_module):
    rng = np.random.default_rng(3)
    predictions = [rng.integers(0, 5, size=s).astype(np.uint8) for s in [(6, 4), (3, 9), (5, 5)]]
    references = [rng.integers(0, 6, size=s).astype(np.uint8) for s in [(6, 4), (3, 9), (5, 5)]]
    expected = reference_mean_iou(predictions, references, 5, 255, reduce_labels=True)
    for p, r in zip(predictions[:2], references[:2]):
        mean_iou_module.add(predictions=p, references=r)
    mean_iou_module.add_batch(predictions=predictions[2:], references=references[2:])
    assert_same(mean_iou_module.compute(num_labels=5, ignore_index=255, reduce_labels=True), expected)
    # label_map entries apply one after another in place, as evaluate's loop does: {1: 2, 2: 1} merges 1 and 2 into 1
    merged = [np.where(r == 2, 1, r) for r in references]
    results = mean_iou_module.compute(predictions=predictions, references=references, num_labels=6,
                                      ignore_index=255, label_map={1: 2, 2: 1})
    assert_same(results, reference_mean_iou(predictions, merged, 6, 255))


def test_evaluate_module_bad_input(mean_iou_module):
    with pytest.raises(ValueError, match="Prediction 1 has shape"):
        mean_iou_module.compute(predictions=[np.zeros((2, 2)), np.zeros((2, 3))],
                                references=[np.zeros((2, 2)), np.zeros((3, 2))], num_labels=2, ignore_index=255)


# ---------------------------------------------------------------------------------------------------------------
# Confusion-matrix figure
# ---------------------------------------------------------------------------------------------------------------

def _assert_png(path: Path):
    from PIL import Image

    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
        return image.size


def test_class_report_writes_confusion_png(tmp_path):
    from hf_segformer.evaluation.reports import write_class_report

    confusion = np.array([[50, 3, 0], [4, 20, 1], [0, 0, 0]])
    write_class_report(tmp_path, confusion, {0: "background", 1: "a rather long class name here", 2: "$5 bill $"},
                       prefix="eval")
    for suffix in ("per_class.md", "per_class.csv", "confusion_matrix.npy"):
        assert (tmp_path / f"eval_{suffix}").is_file()
    _assert_png(tmp_path / "eval_confusion_matrix.png")


def test_confusion_png_for_150_classes(tmp_path):
    from hf_segformer.evaluation.reports import plot_confusion_matrix

    rng = np.random.default_rng(4)
    confusion = rng.integers(0, 5, size=(150, 150)) + np.diag(rng.integers(10, 100, size=150))
    width, height = _assert_png(plot_confusion_matrix(confusion, {i: f"class {i}" for i in range(150)},
                                                      tmp_path / "big.png"))
    assert max(width, height) < 6000


@pytest.mark.parametrize("chunk", [None, 1000])
def test_confusion_and_loss_equal_the_separate_computations(monkeypatch, chunk):
    """Evaluation shares one upsampling between the loss and the confusion matrices: same numbers as apart."""
    from hf_segformer.evaluation.metrics import confusion_and_loss
    from hf_segformer.training.losses import cross_entropy_loss

    if chunk is not None:  # force the chunked arg-max path for the large sample
        monkeypatch.setattr(metrics, "UPSAMPLE_CHUNK_ELEMENTS", chunk)
        monkeypatch.setattr(logits_module, "UPSAMPLE_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(5)
    sizes = [(13, 17), (9, 21), (16, 8)]
    labels = [torch.from_numpy(rng.integers(0, 4, size=s)) for s in sizes]
    labels[1][0, :5] = 255
    padded = pad_labels(labels)
    logits = torch.from_numpy(rng.normal(size=(3, 4, 5, 6))).float()
    confusion, loss = confusion_and_loss(logits, padded, 4, 255)
    assert torch.equal(confusion, confusion_matrices(logits, padded, 4, 255))
    assert loss.item() == pytest.approx(cross_entropy_loss(logits, padded, 255).item(), rel=1e-6)
    assert confusion.sum().item() == sum(int((label != 255).sum()) for label in labels)
