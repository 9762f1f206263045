"""Checkpoints reload completely: `load_best_model_at_end` and `resume_from_checkpoint`.

transformers saves SegFormer under legacy parameter names and the plain Trainer reloads checkpoints with a
non-strict `load_state_dict`, restoring only 8 of 208 tensors without an error. A user relies on the
saved "best" model being the best checkpoint, and on a resumed run starting from the checkpoint's weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_load_best_model_at_end_restores_every_tensor(tmp_path, train_tiny):
    train_tiny(tmp_path, "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps",
        "--save_steps", "1", "--load_best_model_at_end", "true", "--metric_for_best_model", "loss",
        "--greater_is_better", "false")
    state = json.loads((tmp_path / "run/trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best is not None and not best.endswith("checkpoint-4"), "the test needs a best step before the last"
    assert_same_weights(weights(tmp_path / "run"), weights(tmp_path / "run" / best.split("/")[-1]))


@pytest.mark.slow
def test_resume_starts_from_the_checkpoint_weights(tmp_path, train_tiny):
    train_tiny(tmp_path, "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "2")
    checkpoint = tmp_path / "run/checkpoint-2"
    # Resuming at the checkpoint's own step trains no further: the saved model must be the checkpoint.
    train_tiny(tmp_path, "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--seed", "7",
        "--resume_from_checkpoint", "last")
    assert_same_weights(weights(tmp_path / "run"), weights(checkpoint))
