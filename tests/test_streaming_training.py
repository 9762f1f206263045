"""Training from a stream, end to end, through the patched project (`recipes/finetune.py` of main-copy/).

A user relies on: `streaming: true` training from Parquet or WebDataset shards by max_steps, with the pre-flight
check on the first pairs and evaluation on the bounded validation set; a streaming run killed (SIGKILL) and
resumed with `--resume_from_checkpoint last` logging the loss of the uninterrupted run at every step after the
kill and ending with its metrics, with the shuffle buffer and augmentation on and another number of decoding
workers; a bad shard or a recipe that cannot stream stopping the run with one clear error before any step.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from support.commands import train_here
from support.processes import eval_metrics, finetune, step_losses
from support.streams import synthetic_pairs, tiny_streaming_recipe

from hf_segformer.data.shards import write_parquet_shards


@pytest.mark.slow
def test_killed_streaming_run_resumes_like_the_uninterrupted_run(tmp_path, caplog):
    # 10 training pairs, batch 2, 8 steps: the stream wraps into a second pass; blocks of 5 shuffled; random
    # resize, flip and colour distortion on; dropout on (the encoder's drop path and the head's dropout).
    recipe = tiny_streaming_recipe(tmp_path, num_train=10, max_steps=8, save_strategy="steps", save_steps=3,
                                   shuffle_buffer_size=5, hflip_prob=0.5, ratio_range=[0.75, 1.5],
                                   photometric_distortion=True)
    killed = tmp_path / "killed"
    with ThreadPoolExecutor(1) as pool:  # the killed process runs while the uninterrupted run trains here
        killing = pool.submit(finetune, recipe, killed, "--kill_at_step", "5", "--dataloader_num_workers", "1",
                              script="tests/scripts/killed_run_script.py", expect_code=-9)
        # one torch thread, as the launched run has: the losses are compared with its
        train_here("--config", recipe, "--output_dir", tmp_path / "straight", threads=1)
        killing.result()
    assert (killed / "checkpoint-3" / "stream_state" / "rank00000.json").is_file()
    assert not (killed / "checkpoint-6").exists() and not (killed / "eval_results.json").exists()
    position = json.loads((killed / "checkpoint-3" / "stream_state" / "rank00000.json").read_text())
    assert (position["consumed"], position["pass_index"], position["block_index"], position["offset"]) == (6, 0, 1, 1)
    caplog.clear()
    train_here("--config", recipe, "--output_dir", killed, "--resume_from_checkpoint", "last",
               "--dataloader_num_workers", "1", threads=1)
    assert "Training stream resumes at example 6 (pass 0)" in caplog.text

    straight, resumed = step_losses(tmp_path / "straight"), step_losses(killed)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(4, 9):  # redone after the kill: same examples, augmentation, dropout and weights
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step
    assert eval_metrics(killed) == pytest.approx(eval_metrics(tmp_path / "straight"), rel=1e-6, nan_ok=True)
    assert step_epochs(killed) == step_epochs(tmp_path / "straight")  # the fraction of max_steps, resume or not


def step_epochs(output_dir) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["epoch"] for entry in state["log_history"] if "loss" in entry}


@pytest.mark.slow
def test_webdataset_run_checks_the_first_pairs_and_evaluates_on_the_bounded_set(tmp_path, caplog):
    recipe = tiny_streaming_recipe(tmp_path, "webdataset", num_train=10, num_validation=4, max_steps=3,
                                   check_data=True, streaming_check_samples=6, max_eval_samples=3)
    train_here("--config", recipe, "--output_dir", tmp_path / "run")  # the launch through the script: the test above
    assert "Evaluating on the first 3 examples of the 'validation' stream (max_eval_samples 3)" in caplog.text
    histogram = json.loads((tmp_path / "run" / "class_histogram.json").read_text())
    assert histogram["splits"]["train"]["num_samples"] == 6 and histogram["splits"]["validation"]["num_samples"] == 3
    assert sum(histogram["splits"]["train"]["pixel_counts"]) == 6 * 32 * 32
    assert sorted(step_losses(tmp_path / "run")) == [1, 2, 3]
    assert 0.0 <= eval_metrics(tmp_path / "run")["eval_mean_iou"] <= 1.0


def refused_here(recipe, output_dir, capfd, *extra: str) -> str:
    """The run in this process, refused before any step: exit code 2; the error it printed (the launch through
    the script is the other tests')."""
    capfd.readouterr()
    train_here("--config", recipe, "--output_dir", output_dir, *extra, expect_code=2)
    return capfd.readouterr().err


def test_bad_input_stops_the_run_before_any_step(tmp_path, capfd):
    recipe = tiny_streaming_recipe(tmp_path, check_data=True, streaming_check_samples=4)
    refused = refused_here(recipe, tmp_path / "no-steps", capfd, "--max_steps", "-1")
    assert "error: streaming: true trains by steps" in refused

    (tmp_path / "shards" / "train-00004-of-00005.parquet").write_bytes(b"not parquet")
    corrupt = refused_here(recipe, tmp_path / "corrupt", capfd)
    assert "error: Some shards cannot be read (1 problem):" in corrupt
    assert "train-00004-of-00005.parquet (split 'train'): not a readable Parquet file" in corrupt
    (tmp_path / "shards" / "train-00004-of-00005.parquet").unlink()

    mask = tmp_path / "data" / "masks" / "train" / "00002.png"  # the third pair in file order: checked
    Image.fromarray(np.full((32, 32), 9, dtype=np.uint8)).save(mask)
    write_parquet_shards(synthetic_pairs(tmp_path / "data", "train"), tmp_path / "shards", "train", 4, overwrite=True)
    checked = refused_here(recipe, tmp_path / "checked", capfd)
    assert "error: The 'train (first 4 of the stream)' data failed the pre-flight check (1 problem):" in checked
    assert "00002.png: values 9 are outside the 4 classes" in checked
    assert not (tmp_path / "checked" / "model.safetensors").exists()
