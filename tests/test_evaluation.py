"""`hf-segformer evaluate` and the training sample grid.

A user relies on: the metrics being those of the predictions at each mask's native size (every labelled pixel
counted once, also on two processes), the report, confusion matrix and sample grid being written (and the grid
reaching TensorBoard), bad masks and unwritable output folders being one clear error, and training runs
logging a sample grid at each evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.processes import ACCELERATE, free_port, run_offline

from hf_segformer.cli import main
from hf_segformer.evaluation.metrics import confusion_from_arrays, metrics_from_confusion
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter

ROOT = Path(__file__).resolve().parents[1]
ID2LABEL = {0: "background", 1: "road", 2: "car", 3: "sky"}
MASK_SIZES = [(32, 32), (24, 40), (40, 28), (20, 44), (36, 36)]  # (height, width), a validation split only


@pytest.fixture
def validation_data(tmp_path, write_image, write_mask):
    """Five image/mask pairs of different sizes, ~10 % of the pixels ignored (255); returns the data folder."""
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(MASK_SIZES):
        mask = rng.integers(0, len(ID2LABEL), (height, width))
        mask[rng.random((height, width)) < 0.1] = 255
        write_image(tmp_path / f"data/images/validation/{i:03d}.png", size=(width, height), seed=i)
        write_mask(tmp_path / f"data/masks/validation/{i:03d}.png", mask)
    return tmp_path / "data"


def expected_confusion(model: Path, data: Path, settings: InferenceSettings) -> np.ndarray:
    """The confusion matrix of the Segmenter's masks against the mask files, counted in numpy."""
    segmenter = Segmenter.from_pretrained(model, settings)
    total = np.zeros((5, 5), dtype=np.int64)
    for image_path in sorted((data / "images/validation").glob("*.png")):
        label = np.asarray(Image.open(data / "masks/validation" / image_path.name))
        total += confusion_from_arrays(segmenter(str(image_path)), label, len(ID2LABEL), 255)
    return total[:4, :4]


def test_evaluate_writes_native_resolution_metrics_report_and_pictures(tmp_path, validation_data, saved_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, out = saved_model(ID2LABEL), tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--data_dir", str(validation_data), "--eval_output_dir", str(out),
                 "--mode", "slide", "--slide_crop", "32", "--slide_stride", "24", "--grid_samples", "3"]) == 0

    confusion = np.load(out / "eval_confusion_matrix.npy")
    labelled = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in (validation_data / "masks").rglob("*.png"))
    assert confusion.sum() == labelled  # every labelled pixel once, at its mask's own size
    settings = InferenceSettings(mode="slide", slide_crop=[32], slide_stride=[24])
    np.testing.assert_array_equal(confusion, expected_confusion(model, validation_data, settings))
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_mean_iou"] == pytest.approx(metrics_from_confusion(confusion)["mean_iou"])
    assert {"eval_iou_road", "eval_dice_sky", "eval_overall_accuracy"} <= metrics.keys()
    assert metrics["eval_samples"] == 5 and metrics["eval_precision"] == "fp32"
    assert "| 1 | road |" in (out / "eval_per_class.md").read_text()
    assert json.loads((out / "eval_settings.json").read_text())["mode"] == "slide"
    assert Image.open(out / "eval_confusion_matrix.png").size[0] > 100
    grid = Image.open(out / "eval_samples.png")
    assert grid.height == 22 + 3 * (256 + 4)  # title row + three samples

    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    assert "eval/samples" in events.Tags()["images"] and "eval/mean_iou" in events.Tags()["scalars"]


@pytest.mark.slow
def test_two_processes_evaluate_like_one(tmp_path, validation_data, saved_model):
    model = saved_model(ID2LABEL)
    assert main(["evaluate", "--model", str(model), "--data_dir", str(validation_data),
                 "--eval_output_dir", str(tmp_path / "one"), "--batch_size", "2"]) == 0
    command = [str(ACCELERATE), "launch", "--config_file",
               str(ROOT / "accelerate_configs/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
               str(ROOT / "recipes/evaluate.py"),
               "--model", str(model), "--data_dir", str(validation_data), "--eval_output_dir", str(tmp_path / "two"),
               "--batch_size", "2"]
    result = run_offline(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "two/eval_settings.json").read_text())["processes"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "two/eval_confusion_matrix.npy"),
                                  np.load(tmp_path / "one/eval_confusion_matrix.npy"))
    one, two = (json.loads((tmp_path / name / "eval_results.json").read_text()) for name in ("one", "two"))
    assert {k: v for k, v in two.items() if "runtime" not in k and "per_second" not in k} == pytest.approx(
        {k: v for k, v in one.items() if "runtime" not in k and "per_second" not in k}, nan_ok=True)
    assert Image.open(tmp_path / "two/eval_samples.png").height == Image.open(tmp_path / "one/eval_samples.png").height


def test_a_mask_value_outside_the_classes_is_an_error_naming_the_file(tmp_path, validation_data, saved_model,
                                                                      write_mask, capsys):
    write_mask(validation_data / "masks/validation/002.png", np.full((40, 28), 7))  # image 002 is 40 high, 28 wide
    assert main(["evaluate", "--model", str(saved_model(ID2LABEL)), "--data_dir", str(validation_data),
                 "--eval_output_dir", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err
    assert "masks/validation/002.png" in error and "[7]" in error


def test_an_unwritable_output_folder_is_an_error_before_any_work(tmp_path, validation_data, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["evaluate", "--model", str(tmp_path / "no-model-here"), "--data_dir", str(validation_data),
                 "--eval_output_dir", str(tmp_path / "file/eval")]) == 2
    assert "file/eval" in capsys.readouterr().err  # the folder is named, the model was never loaded


def test_training_logs_a_sample_grid_to_tensorboard_at_each_evaluation(tmp_path, validation_data, tiny_segformer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hf_segformer.config.data import DataArguments
    from hf_segformer.data.loading import load_split
    from hf_segformer.data.prepare import build_label_decoder
    from hf_segformer.data.transforms import EvalTransform, SegmentationCollator, TrainTransform
    from hf_segformer.evaluation.metrics import SegmentationMetrics
    from hf_segformer.modeling.build import build_image_processor
    from hf_segformer.training.arguments import SegformerTrainingArguments
    from hf_segformer.training.callbacks import SampleGridCallback
    from hf_segformer.training.trainer import SegformerTrainer

    data_args = DataArguments(data_dir=str(validation_data), id2label=json.dumps(ID2LABEL), eval_size=32)
    split, decoder = load_split(data_args), build_label_decoder(data_args)
    args = SegformerTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=2,
        eval_strategy="steps", eval_steps=1, save_strategy="no", use_cpu=True, report_to="tensorboard",
        dataloader_num_workers=0)
    trainer = SegformerTrainer(
        model=tiny_segformer(ID2LABEL), args=args, eval_dataset=split.with_transform(EvalTransform(decoder, 32)),
        train_dataset=split.with_transform(TrainTransform(decoder, 32, (64, 32), cat_max_ratio=1.0)),
        data_collator=SegmentationCollator(), processing_class=build_image_processor(32),
        compute_metrics=SegmentationMetrics(len(ID2LABEL), ID2LABEL), ignore_index=255,
        callbacks=[SampleGridCallback(split, decoder, num_samples=2)])
    trainer.train()

    assert Image.open(tmp_path / "run/eval_samples.png").height == 22 + 2 * (256 + 4)
    events = EventAccumulator(str(next((tmp_path / "run/runs").iterdir())))
    events.Reload()
    assert [event.step for event in events.Images("eval/samples")] == [1, 2]


def test_keep_ratio_evaluation_in_training_matches_the_saved_model_on_any_batch(tmp_path, validation_data,
                                                                                 tiny_segformer):
    """eval_scale: training evaluates each image at its own shape (a padded batch is run image by image), and the
    model saved with it predicts the same way: the training figures are what `hf-segformer evaluate` reproduces."""
    from hf_segformer.config.data import DataArguments
    from hf_segformer.data.loading import load_split
    from hf_segformer.data.prepare import build_label_decoder
    from hf_segformer.data.transforms import EvalTransform, SegmentationCollator
    from hf_segformer.evaluation.metrics import SegmentationMetrics
    from hf_segformer.modeling.build import build_image_processor
    from hf_segformer.training.arguments import SegformerTrainingArguments
    from hf_segformer.training.trainer import SegformerTrainer

    data_args = DataArguments(data_dir=str(validation_data), id2label=json.dumps(ID2LABEL), eval_scale=[64, 48])
    split, decoder = load_split(data_args), build_label_decoder(data_args)
    model, processor = tiny_segformer(ID2LABEL), build_image_processor(32, [64, 48])
    transform = EvalTransform(decoder, 32, (64, 48))
    assert transform.input_size(44, 20) == (64, 29)  # long side 44 → 64 binds, not the short side 20 → 48

    results = {}
    for batch in (1, 3):  # 3: mixed sizes padded into one batch
        args = SegformerTrainingArguments(output_dir=str(tmp_path / f"run{batch}"), per_device_eval_batch_size=batch,
                                          use_cpu=True, report_to="none", dataloader_num_workers=0,
                                          precision="fp32")  # compared with the saved model's fp32 evaluation
        trainer = SegformerTrainer(model=model, args=args, eval_dataset=split.with_transform(transform),
                                   data_collator=SegmentationCollator(), processing_class=processor,
                                   compute_metrics=SegmentationMetrics(len(ID2LABEL), ID2LABEL), ignore_index=255)
        results[batch] = trainer.evaluate()
    assert results[3]["eval_mean_iou"] == pytest.approx(results[1]["eval_mean_iou"], abs=1e-9)
    assert results[3]["eval_loss"] == pytest.approx(results[1]["eval_loss"], rel=1e-5)

    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    expected = metrics_from_confusion(expected_confusion(tmp_path / "model", validation_data, InferenceSettings()))
    assert results[3]["eval_mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-9)
    other = metrics_from_confusion(expected_confusion(tmp_path / "model", validation_data,
                                                      InferenceSettings(scale=[96, 64])))
    assert other["mean_iou"] != pytest.approx(expected["mean_iou"], abs=1e-9)  # the saved scale was the one used


def test_a_keep_ratio_batch_is_padded_and_its_sizes_kept():
    import torch

    from hf_segformer.data.transforms import SegmentationCollator

    image = lambda h, w: {"pixel_values": torch.full((3, h, w), 255, dtype=torch.uint8),  # noqa: E731
                          "labels": torch.zeros((h, w), dtype=torch.long)}
    batch = SegmentationCollator()([image(4, 6), image(5, 3)])
    assert batch["pixel_values"].shape == (2, 3, 5, 6)
    assert batch["pixel_sizes"].tolist() == [[4, 6], [5, 3]]
    assert "pixel_sizes" not in SegmentationCollator()([image(4, 6), image(4, 6)])  # training crops: plain batch
