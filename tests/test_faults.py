"""Runs that survive faults, and runs that can be trusted: kill-and-resume, determinism, DDP training,
NaN/Inf losses and out-of-memory errors.

A user relies on: a run killed mid-epoch and resumed with `--resume_from_checkpoint last` ending exactly where
the uninterrupted run ends; the same recipe and seed giving the same metrics; a 2-process run training like
one process with the whole batch; a diverging or out-of-memory run stopping with a message that names the step
and what to change instead of training on NaNs or dumping a CUDA trace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support.processes import ACCELERATE, run_offline

import hf_segformer.modeling.prepare
from hf_segformer.data.synthetic import write_synthetic_dataset
from hf_segformer.errors import TrainingError

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("runtime", "per_second")


def tiny_recipe(tmp_path: Path, **fields) -> Path:
    """A CI-sized recipe: 8 + 4 synthetic 32×32 images, B0 from config, deterministic crops (crop = image)."""
    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
    recipe = {"data_dir": str(data_dir), "model_variant": "b0", "crop_size": 32, "eval_size": 32,
              "train_scale": [64, 32], "ratio_range": [1.0, 1.0], "cat_max_ratio": 1.0, "hflip_prob": 0.0,
              "photometric_distortion": False, "check_data": False, "per_device_train_batch_size": 2,
              "per_device_eval_batch_size": 4, "learning_rate": 0.003, "num_train_epochs": 3, "logging_steps": 1,
              "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "dataloader_num_workers": 0,
              "seed": 7, **fields}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(command: list[str], cwd: Path, expect_code: int = 0) -> subprocess.CompletedProcess:
    result = run_offline(command, cwd)
    assert result.returncode == expect_code, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def finetune(recipe: Path, output_dir: Path, *extra: str, script: str = "recipes/finetune.py",
             expect_code: int = 0) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ROOT / script), "--config", str(recipe), "--output_dir", str(output_dir), *extra],
               recipe.parent, expect_code)


def eval_metrics(output_dir: Path) -> dict:
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return {k: v for k, v in metrics.items() if not k.endswith(RUNTIME)}


def step_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_ends_like_the_uninterrupted_run(tmp_path):
    recipe = tiny_recipe(tmp_path, save_strategy="steps", save_steps=3)  # 4 steps per epoch, 12 in all
    finetune(recipe, tmp_path / "straight")
    killed = tmp_path / "killed"
    finetune(recipe, killed, "--kill_at_step", "7", script="tests/scripts/killed_run_script.py", expect_code=-9)
    assert (killed / "checkpoint-6").is_dir() and not (killed / "checkpoint-9").exists()
    assert not (killed / "eval_results.json").exists()
    finetune(recipe, killed, "--resume_from_checkpoint", "last")

    straight_losses, resumed_losses = step_losses(tmp_path / "straight"), step_losses(killed)
    assert sorted(resumed_losses) == list(range(1, 13))
    for step in range(7, 13):  # the steps redone after the kill: same batches, same augmentation, same weights
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-4), step
    assert eval_metrics(killed) == pytest.approx(eval_metrics(tmp_path / "straight"), rel=1e-5, nan_ok=True)


def test_same_recipe_and_seed_give_the_same_metrics(tmp_path, train_tiny):
    first = train_tiny(tmp_path / "a", "--seed", "3", "--max_steps", "4", "--hflip_prob", "0.5")
    second = train_tiny(tmp_path / "b", "--seed", "3", "--max_steps", "4", "--hflip_prob", "0.5")
    other = train_tiny(tmp_path / "c", "--seed", "4", "--max_steps", "4", "--hflip_prob", "0.5")
    strip = lambda metrics: {k: v for k, v in metrics.items() if not k.endswith(RUNTIME)}  # noqa: E731
    assert strip(first) == strip(second)
    assert strip(first) != strip(other)


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    """A real DDP run (2 CPU processes, gloo) of the recipe, per-device batch 2, against 1 process × batch 4."""
    recipe = tiny_recipe(tmp_path, sync_batchnorm=True, drop_path_rate=0.0, classifier_dropout_prob=0.0,
                         num_train_epochs=2)
    finetune(recipe, tmp_path / "one", "--per_device_train_batch_size", "4")
    result = run([str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs/cpu_2proc.yaml"),
                  "--main_process_port", "0", str(ROOT / "recipes/finetune.py"), "--config", str(recipe),
                  "--output_dir", str(tmp_path / "two")], tmp_path)
    log = result.stdout + result.stderr
    assert "2 process(es) (DistributedType.MULTI_CPU), per-device train batch 2" in log, log[-3000:]
    assert "→ 4 images per optimizer step; decode-head BatchNorm synchronised" in log
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    assert [two[s] for s in two] == pytest.approx([one[s] for s in one], rel=1e-3)
    assert eval_metrics(tmp_path / "two") == pytest.approx(eval_metrics(tmp_path / "one"), rel=1e-3, abs=1e-3,
                                                           nan_ok=True)


def test_diverging_run_stops_naming_the_step(tmp_path, train_tiny):
    with pytest.raises(TrainingError) as error:
        train_tiny(tmp_path, "--learning_rate", "1e12", "--max_grad_norm", "0", "--max_steps", "6")
    message = str(error.value)
    assert "Training loss is nan at step" in message or "Training loss is inf at step" in message
    assert "learning rate too high" in message and "max_nonfinite_losses" in message
    assert not (tmp_path / "run" / "model.safetensors").exists()  # nothing trained on NaNs is saved


def with_forward_hook(monkeypatch, hook) -> None:
    """Make `hf_segformer.training.run.main` build its model with `hook` on the decode head's forward."""
    build_model = hf_segformer.modeling.prepare.build_model

    def build_hooked(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.decode_head.register_forward_hook(hook)
        return model

    monkeypatch.setattr(hf_segformer.modeling.prepare, "build_model", build_hooked)


def test_a_nonfinite_batch_can_be_skipped(tmp_path, train_tiny, monkeypatch, caplog):
    calls = []

    def overflow_once(module, inputs, logits):  # one training batch overflows, as fp16 activations can
        calls.append(module.training)
        return logits * float("inf") if module.training and len(calls) == 2 else logits

    with_forward_hook(monkeypatch, overflow_once)
    results = train_tiny(tmp_path, "--max_steps", "4", "--max_nonfinite_losses", "1")
    assert "batch skipped (1 of 1 allowed)" in caplog.text and "at step 2 " in caplog.text
    assert 0.0 <= results["eval_mean_iou"] <= 1.0  # the model was not poisoned by the skipped batch
    with pytest.raises(TrainingError, match="at step 2 "):  # the default: stop at the first
        calls.clear()
        train_tiny(tmp_path / "again", "--max_steps", "4")


def test_out_of_memory_names_the_knobs(tmp_path, train_tiny, monkeypatch):
    def out_of_memory(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with_forward_hook(monkeypatch, out_of_memory)
    with pytest.raises(TrainingError) as error:
        train_tiny(tmp_path, "--max_steps", "2")
    message = str(error.value)
    assert message.startswith("Out of memory during training (per-device train batch 4, crop_size 32")
    for knob in ("gradient_accumulation_steps", "activation_checkpointing: true", "crop_size", "bf16"):
        assert knob in message
