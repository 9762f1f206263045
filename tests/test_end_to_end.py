"""End-to-end: `accelerate launch recipes/finetune.py` on a tiny generated dataset, then reload the result.

A user relies on: the launch command working from a YAML recipe with overrides, the Trainer's result
files with mean_iou-style keys, a saved model + image processor that `from_pretrained` and
`pipeline("image-segmentation")` load, the class histogram and per-class report, TensorBoard logs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.commands import train_here
from support.processes import ACCELERATE, run_offline

from hf_segformer.data.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def launch(recipe: Path, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs/cpu.yaml"),
               str(ROOT / "recipes/finetune.py"), "--config", str(recipe), *overrides]
    return run_offline(command, cwd, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data_dir = write_synthetic_dataset(tmp / "data", num_train=12, num_validation=6, size=32)
    recipe = tmp / "tiny.yaml"
    quickstart = yaml.safe_load((ROOT / "recipes/quickstart.yaml").read_text())
    quickstart.update({"data_dir": str(data_dir), "synthetic_data": False, "crop_size": 32, "eval_size": 32,
                       "train_scale": [64, 32], "output_dir": str(tmp / "run"), "num_train_epochs": 1,
                       "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                       "dataloader_num_workers": 0, "dataloader_persistent_workers": False, "eval_strategy": "epoch"})
    recipe.write_text(yaml.safe_dump(quickstart))
    result = launch(recipe, "--max_steps", "3", "--logging_steps", "1", cwd=tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return tmp / "run", result


def test_result_files_and_metric_keys(trained_run):
    run, _ = trained_run
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json",
                 "class_histogram.json", "class_histogram.md", "eval_per_class.md", "eval_per_class.csv",
                 "eval_confusion_matrix.npy", "model.safetensors", "config.json", "preprocessor_config.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "eval_results.json").read_text())
    for key in ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_loss",
                "eval_iou_background", "eval_iou_disc", "eval_accuracy_square", "eval_accuracy_triangle"):
        assert key in metrics, key
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0
    confusion = np.load(run / "eval_confusion_matrix.npy")
    assert confusion.shape == (4, 4)
    assert confusion.sum() == 6 * 32 * 32  # every validation pixel counted once, at native resolution
    assert json.loads((run / "train_results.json").read_text())["train_loss"] > 0
    assert list((run / "runs").rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_saved_model_reloads_and_runs_in_pipeline(trained_run):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    run, _ = trained_run
    model = AutoModelForSemanticSegmentation.from_pretrained(run)
    assert model.config.id2label == {0: "background", 1: "disc", 2: "square", 3: "triangle"}
    assert model.config.semantic_loss_ignore_index == 255
    processor = AutoImageProcessor.from_pretrained(run)
    assert processor.size == {"height": 32, "width": 32} and not processor.do_reduce_labels
    segmenter = pipeline("image-segmentation", model=str(run))
    image = Image.open(next((run.parent / "data/images/validation").iterdir()))
    outputs = segmenter(image)
    assert outputs and all(o["label"] in model.config.id2label.values() for o in outputs)
    assert outputs[0]["mask"].size == image.size


def test_histogram_is_printed_and_saved(trained_run):
    run, result = trained_run
    assert "Pixels per class" in result.stdout
    histogram = json.loads((run / "class_histogram.json").read_text())
    train = histogram["splits"]["train"]
    assert train["num_samples"] == 12 and sum(train["pixel_counts"]) == 12 * 32 * 32


def test_bad_data_fails_before_training(tmp_path):
    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=4, num_validation=2, size=32)
    (data_dir / "masks/train/00001.png").unlink()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data_dir": str(data_dir), "output_dir": str(tmp_path / "run"),
                                      "report_to": "none", "max_steps": 1}))
    result = launch(recipe, cwd=tmp_path)
    assert result.returncode != 0
    assert "00001.png: no mask with stem '00001'" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_unknown_recipe_key_is_an_error(tmp_path, capfd):
    """The train command in this process: an error through the launch is test_bad_data_fails_before_training's."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data_dir: x\nlearnig_rate: 0.1\n")
    train_here("--config", recipe, expect_code=2)
    stderr = capfd.readouterr().err
    assert "learnig_rate" in stderr and "learning_rate" in stderr
