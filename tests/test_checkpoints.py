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


@pytest.mark.parametrize("load_best", [False, True])
def test_the_final_weights_are_evaluated_once(tmp_path, train_tiny, monkeypatch, load_best):
    """The Trainer evaluates after the last step; the run's final report reuses those numbers for the same weights
    and evaluates again only when load_best_model_at_end has swapped the weights in."""
    from hf_segformer.training.trainer import SegformerTrainer

    calls = []
    evaluate = SegformerTrainer.evaluate
    monkeypatch.setattr(SegformerTrainer, "evaluate", lambda self, *a, **k: calls.append(1) or evaluate(self, *a, **k))
    results = train_tiny(tmp_path, "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
                         "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end", str(load_best),
                         "--metric_for_best_model", "mean_iou")
    assert len(calls) == (3 if load_best else 2)  # steps 2 and 4 (+ the best checkpoint's weights)
    run = tmp_path / "run"
    final = json.loads((run / "eval_results.json").read_text())
    in_loop = [entry for entry in json.loads((run / "checkpoint-4/trainer_state.json").read_text())["log_history"]
               if entry.get("step") == 4 and "eval_mean_iou" in entry]
    assert len(in_loop) == 1 and final["eval_mean_iou"] == results["eval_mean_iou"]
    if not load_best:
        assert final["eval_mean_iou"] == in_loop[0]["eval_mean_iou"]
    assert (run / "eval_per_class.csv").is_file()  # the per-class report still comes with the reused numbers
