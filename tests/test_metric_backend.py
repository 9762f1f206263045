"""`metric_backend: evaluate_hub`: evaluate's Hub `mean_iou` on every logit, as transformers' example does.

A user relies on: an offline machine failing before any data or training work with an error that says to
use `metric_backend: confusion`, and the classic path (all logits, upsampled per image to the label's own
size) giving the numbers of the default streaming confusion matrices. The Hub module cannot be downloaded
here, so our offline module, which has its arguments and semantics, is injected in its place.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before evaluate is imported anywhere

import importlib
import sys
import types

import evaluate
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from torch.utils.data import Dataset

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.data.transforms import SegmentationCollator
from hf_segformer.errors import RecipeError
from hf_segformer.evaluation.metrics import (
    MEAN_IOU_MODULE_PATH,
    LogitsMeanIoU,
    SegmentationMetrics,
    confusion_matrices,
    load_hub_mean_iou,
)
from hf_segformer.logits import LABEL_PAD, pack_labels, unpack_label
from hf_segformer.training import run as train
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.trainer import SegformerTrainer

ID2LABEL = {0: "road", 1: "sky", 2: "car", 3: "tree", 4: "sign"}
RUNTIME_KEYS = ("runtime", "samples_per_second", "steps_per_second", "preparation_time")


@pytest.fixture(scope="module")
def offline_mean_iou():
    return evaluate.load(MEAN_IOU_MODULE_PATH, keep_in_memory=True)


@pytest.fixture
def no_cached_hub_module(monkeypatch, tmp_path):
    """Offline, with an empty evaluate module cache (no copy of the Hub's mean_iou) and no ./mean_iou folder.

    evaluate imports its dynamic-modules package from that cache: the real one is put back afterwards."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "evaluate_modules"}
    yield
    for name in [name for name in sys.modules if name.split(".")[0] == "evaluate_modules"]:
        del sys.modules[name]
    sys.modules.update(saved)
    importlib.invalidate_caches()


def test_hub_module_offline_is_a_clear_error(no_cached_hub_module):
    with pytest.raises(RecipeError, match=r"evaluate_hub.*'mean_iou'.*cannot be loaded offline.*HF_HUB_OFFLINE") as err:
        load_hub_mean_iou()
    assert "Use metric_backend: confusion" in str(err.value)


def test_evaluate_hub_recipe_fails_before_data_or_training(no_cached_hub_module, monkeypatch, tmp_path):
    def no_data_yet(*args, **kwargs):
        raise AssertionError("the data was prepared before the Hub module was loaded")

    monkeypatch.setattr(train, "setup_logging", lambda args: None)
    monkeypatch.setattr(train, "load_checked_data", no_data_yet)
    training_args = SegformerTrainingArguments(output_dir=str(tmp_path / "run"), metric_backend="evaluate_hub",
                                               report_to="none", use_cpu=True)
    assert training_args.batch_eval_metrics is False  # every logit is kept for the Hub module
    with pytest.raises(RecipeError, match="metric_backend: confusion"):
        train.main(DataArguments(data_dir=str(tmp_path / "data")), ModelArguments(), training_args)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_keep_ratio_evaluation_with_the_hub_module_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(train, "setup_logging", lambda args: None)
    monkeypatch.setattr(train, "load_hub_mean_iou", lambda: pytest.fail("the Hub module was loaded first"))
    training_args = SegformerTrainingArguments(output_dir=str(tmp_path / "run"), metric_backend="evaluate_hub",
                                               report_to="none", use_cpu=True)
    with pytest.raises(RecipeError, match="eval_scale.*metric_backend: confusion"):
        train.main(DataArguments(data_dir=str(tmp_path / "data"), eval_scale=[1024, 512]), ModelArguments(),
                   training_args)
    with pytest.raises(RecipeError, match="eval_scale takes two positive numbers"):
        DataArguments(data_dir=str(tmp_path / "data"), eval_scale=[512])


def test_unknown_metric_backend_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="metric_backend must be one of confusion, evaluate_hub"):
        SegformerTrainingArguments(output_dir=str(tmp_path), metric_backend="hub", report_to="none")
    assert SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none").batch_eval_metrics is True


def padded_labels(sizes, num_present, rng):
    """Labels of different sizes, padded bottom/right with LABEL_PAD as the collator does; ~10 % ignore (255)."""
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    labels = torch.full((len(sizes), height, width), LABEL_PAD, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, num_present, (h, w))
        label[rng.random((h, w)) < 0.1] = 255
        labels[i, :h, :w] = torch.from_numpy(label)
    return labels


def test_pack_labels_round_trip():
    sizes = [(3, 5), (4, 2), (1, 1)]
    labels = padded_labels(sizes, num_present=3, rng=np.random.default_rng(3))
    rows = pack_labels(labels)
    assert rows.shape == (3, 2 + 4 * 5)
    for row, padded, size in zip(rows, labels, sizes):
        assert tuple(unpack_label(row).shape) == size
        assert torch.equal(unpack_label(row), padded[: size[0], : size[1]])
        assert torch.equal(unpack_label(padded), padded[: size[0], : size[1]])


class SpyModule:
    """Records what `compute` receives, then delegates to the real module."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def compute(self, **kwargs):
        self.calls.append(kwargs)
        return self.module.compute(**kwargs)


def test_classic_path_equals_streaming_confusion(offline_mean_iou):
    rng = np.random.default_rng(0)
    sizes = [(20, 28), (32, 32), (17, 40), (25, 25)]
    labels = padded_labels(sizes, num_present=4, rng=rng)  # class 4 ('sign') absent from the labels...
    logits = torch.from_numpy(rng.normal(size=(len(sizes), 5, 8, 8)).astype(np.float32))
    logits[:, 4] -= 100.0  # ... and from the predictions: NaN IoU, left out of the means by both paths

    confusion = confusion_matrices(logits, labels, 5, 255)
    streaming = SegmentationMetrics(5, ID2LABEL)(types.SimpleNamespace(predictions=confusion.numpy()))
    spy = SpyModule(offline_mean_iou)
    classic = LogitsMeanIoU(spy, ID2LABEL, ignore_index=255)(
        types.SimpleNamespace(predictions=logits.numpy(), label_ids=labels.numpy()))

    assert classic == pytest.approx(streaming, nan_ok=True)
    assert np.isnan(classic["iou_sign"]) and 0.0 < classic["mean_iou"] < 1.0
    (call,) = spy.calls
    assert call["num_labels"] == 5 and call["ignore_index"] == 255 and call["reduce_labels"] is False
    assert [r.shape for r in call["references"]] == sizes == [p.shape for p in call["predictions"]]
    assert all((r != LABEL_PAD).all() for r in call["references"])  # each label cropped to its own size


class TinyEvalSet(Dataset):
    """Five uint8 images of 32×32 with labels at different native sizes (padded within and across batches)."""

    SIZES = [(32, 32), (24, 40), (40, 28), (20, 20), (36, 36)]

    def __init__(self):
        rng = np.random.default_rng(1)
        self.items = [{"pixel_values": torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)),
                       "labels": padded_labels([size], num_present=5, rng=rng)[0]} for size in self.SIZES]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_trainer_classic_path_equals_default(offline_mean_iou, tiny_segformer, tmp_path):
    """Through `Trainer.evaluate()`, with labels of different heights and widths within and across batches."""
    model, dataset = tiny_segformer(ID2LABEL), TinyEvalSet()
    results = {}
    for backend in ("confusion", "evaluate_hub"):
        args = SegformerTrainingArguments(output_dir=str(tmp_path / backend), metric_backend=backend,
                                          per_device_eval_batch_size=2, report_to="none", use_cpu=True,
                                          dataloader_num_workers=0)
        metrics = (SegmentationMetrics(5, ID2LABEL) if backend == "confusion"
                   else LogitsMeanIoU(offline_mean_iou, ID2LABEL, ignore_index=255))
        trainer = SegformerTrainer(model=model, args=args, eval_dataset=dataset, data_collator=SegmentationCollator(),
                                   compute_metrics=metrics, ignore_index=255, eval_confusion=backend == "confusion")
        results[backend] = {k: v for k, v in trainer.evaluate().items() if not k.endswith(RUNTIME_KEYS)}
        if backend == "confusion":
            valid = sum(int((item["labels"] != 255).sum()) for item in dataset.items)
            assert metrics.last_confusion.sum() == valid
    assert results["evaluate_hub"] == pytest.approx(results["confusion"], nan_ok=True)
    assert 0.0 < results["confusion"]["eval_mean_iou"] < 1.0
    assert {"eval_mean_iou", "eval_iou_road", "eval_accuracy_sign", "eval_loss"} <= set(results["evaluate_hub"])
