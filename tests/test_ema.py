"""ema_decay: the average of the weights is evaluated and saved; checkpoints keep raw weights and the average."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hf_segformer.errors import RecipeError
from hf_segformer.training.ema import WeightAverage


def test_average_by_hand_and_swap_restores():
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = WeightAverage(layer, decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average.update()  # decay min(0.9, 2/11): 0 · 2/11 + 1 · 9/11
    assert average.shadow["weight"].item() == pytest.approx(9 / 11)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    average.update()  # decay min(0.9, 3/12) = 0.25
    assert average.shadow["weight"].item() == pytest.approx(0.25 * 9 / 11 + 0.75 * 2)
    with average.swapped():
        assert layer.weight.item() == pytest.approx(0.25 * 9 / 11 + 0.75 * 2)
    assert layer.weight.item() == 2.0


def test_bad_decay_is_a_recipe_error(tmp_path, train_tiny):
    with pytest.raises(RecipeError, match="ema_decay"):
        train_tiny(tmp_path, "--ema_decay", "1.5")


def test_saved_model_is_the_average_and_checkpoints_keep_both(tmp_path, train_tiny):
    train_tiny(tmp_path, "--max_steps", "4", "--save_steps", "2", "--ema_decay", "0.9", "--eval_strategy", "no")
    run = tmp_path / "run"
    saved = load_file(run / "model.safetensors")
    average = load_file(run / "checkpoint-4" / "ema.safetensors")
    raw = load_file(run / "checkpoint-4" / "model.safetensors")
    common = sorted(set(saved) & set(average) & set(raw))
    assert len(common) >= 5  # the head tensors saved under the same names (the encoder is saved renamed)
    assert all(torch.equal(saved[name], average[name]) for name in common)
    assert any(not torch.equal(saved[name], raw[name]) for name in common)
