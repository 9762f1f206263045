"""DDP correctness of evaluation: a real two-process CPU run (gloo) through `accelerate launch`.

A user relies on: evaluating on several processes giving exactly the metrics of one process. With an odd
number of validation images the distributed sampler repeats a sample to even out the processes; the
Trainer's `gather_for_metrics` must drop it, so that every validation pixel is counted exactly once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from support.processes import ACCELERATE, free_port, run_offline

ROOT = Path(__file__).resolve().parents[1]
ID2LABEL = {0: "background", 1: "road", 2: "car", 3: "sky"}
# Five validation images (an odd number, batch 2 per process) whose masks have different native sizes.
MASK_SIZES = [(32, 32), (24, 40), (40, 28), (20, 20), (36, 36)]
RUNTIME_KEYS = ("runtime", "samples_per_second", "steps_per_second", "preparation_time")


def evaluate_with(config: str, model_dir: Path, data_dir: Path, output_dir: Path) -> dict:
    command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs" / config),
               "--mixed_precision", "no", "--main_process_port", str(free_port()), str(ROOT / "tests/scripts/ddp_eval_script.py"),
               "--model_dir", str(model_dir), "--data_dir", str(data_dir), "--output_dir", str(output_dir)]
    result = run_offline(command, output_dir.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return read_run(output_dir)


def evaluate_here(monkeypatch, model_dir: Path, data_dir: Path, output_dir: Path) -> dict:
    """The one-process reference: the same script's `main` in this process (a launch of one process would add
    two Python starts with torch and test nothing the two-process launch does not)."""
    from scripts.ddp_eval_script import main

    monkeypatch.setattr(sys, "argv", ["ddp_eval_script.py", "--model_dir", str(model_dir), "--data_dir",
                                      str(data_dir), "--output_dir", str(output_dir)])
    main()
    return read_run(output_dir)


def read_run(output_dir: Path) -> dict:
    """What the script wrote: the main process's result and every process's count of samples."""
    run = json.loads((output_dir / "result.json").read_text())
    run["seen"] = [json.loads(p.read_text())["seen"] for p in sorted(output_dir.glob("samples_rank*.json"))]
    return run


@pytest.mark.slow
def test_two_processes_evaluate_like_one(tmp_path, write_image, write_mask, tiny_segformer, monkeypatch):
    rng = np.random.default_rng(0)
    valid_pixels = 0
    for i, (height, width) in enumerate(MASK_SIZES):
        mask = rng.integers(0, len(ID2LABEL), (height, width))
        mask[rng.random((height, width)) < 0.1] = 255
        valid_pixels += int((mask != 255).sum())
        write_image(tmp_path / f"data/images/validation/{i:03d}.png", size=(width, height), seed=i)
        write_mask(tmp_path / f"data/masks/validation/{i:03d}.png", mask)
    write_image(tmp_path / "data/images/train/000.png", size=(32, 32))
    write_mask(tmp_path / "data/masks/train/000.png", np.zeros((32, 32), dtype=np.int64))
    tiny_segformer(ID2LABEL).save_pretrained(tmp_path / "model")

    one = evaluate_here(monkeypatch, tmp_path / "model", tmp_path / "data", tmp_path / "one")
    two = evaluate_with("cpu_2proc.yaml", tmp_path / "model", tmp_path / "data", tmp_path / "two")

    assert one["world_size"] == 1 and one["seen"] == [5]
    assert two["world_size"] == 2 and two["distributed_type"] == "DistributedType.MULTI_CPU"
    assert len(two["seen"]) == 2 and sum(two["seen"]) > 5  # the sampler padded with a repeated sample
    confusion_one, confusion_two = np.array(one["confusion"]), np.array(two["confusion"])
    assert confusion_one.sum() == valid_pixels  # every labelled pixel once, at the mask's native size
    np.testing.assert_array_equal(confusion_two, confusion_one)  # ... and the repeat was dropped
    # eval_loss is left out: the Trainer averages per-batch mean losses, and on two processes the last batch
    # holds the repeated sample as well (its loss is a mean over both), so it is not exactly the 1-process loss.
    metrics_one = {k: v for k, v in one["metrics"].items() if not k.endswith(RUNTIME_KEYS + ("loss",))}
    metrics_two = {k: v for k, v in two["metrics"].items() if not k.endswith(RUNTIME_KEYS + ("loss",))}
    assert metrics_two == pytest.approx(metrics_one, nan_ok=True)
    assert 0.0 < metrics_one["eval_mean_iou"] < 1.0 and "eval_iou_road" in metrics_one
