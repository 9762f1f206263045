"""The loss is chosen in the recipe: terms and weights, class weights from the data check's histogram."""

from __future__ import annotations

import json

import pytest

from hf_segformer.errors import RecipeError
from hf_segformer.training.arguments import SegformerTrainingArguments, parse_recipe
from hf_segformer.training.losses import LOSS_FUNCTIONS, SegmentationLoss
from hf_segformer.training.trainer import SegformerTrainer


def test_recipe_loss_and_histogram_class_weights_are_used_and_saved(tmp_path, train_tiny, monkeypatch):
    used = []
    original = SegformerTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        used.append(self.loss_fn)
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SegformerTrainer, "compute_loss", spy)
    results = train_tiny(tmp_path, "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                         "--check_data", "true", "--loss", '{"ce": 1.0, "dice": 0.5}',
                         "--class_weights", "median_frequency")
    loss_fn = used[0]
    assert isinstance(loss_fn, SegmentationLoss) and results["train_loss"] > 0
    assert loss_fn.terms == {"ce": 1.0, "dice": 0.5}
    saved = json.loads((tmp_path / "run/class_weights.json").read_text())
    assert len(saved) == 4 and saved[0] < min(saved[1:]), "background, the most frequent class, weighs least"


def test_histogram_weights_need_the_data_check(tmp_path, train_tiny):
    with pytest.raises(RecipeError, match="check_data"):
        train_tiny(tmp_path, "--max_steps", "1", "--class_weights", "inverse_frequency")


@pytest.mark.parametrize("field, value", [("loss", '{"cross_entropy": 1}'), ("loss", '{"ce": -1}'),
                                          ("loss", "ce"), ("class_weights", "inverse"), ("boundary_weight", -1.0),
                                          ("boundary_width", 0)])
def test_bad_loss_fields_are_recipe_errors(tmp_path, field, value):
    with pytest.raises(RecipeError, match=field):
        SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_the_loss_field_takes_exactly_the_names_of_the_loss_table(tmp_path):
    for name in LOSS_FUNCTIONS:  # every loss function is a term the recipe can name
        args = SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none", loss=f"{{{name}: 1.0}}")
        assert args.loss_terms == {name: 1.0}
    with pytest.raises(RecipeError) as error:  # and no other name: refused before any work, naming the field
        SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none", loss="{hinge: 1.0}")
    message = str(error.value)
    assert message.startswith("loss: ") and f"among {', '.join(LOSS_FUNCTIONS)} with" in message and "hinge" in message


def test_the_boundary_loss_is_taken_from_a_recipe_and_the_command_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("loss: {ce: 1.0, boundary: 1.0}\nboundary_width: 1\n")
    run = ["--output_dir", str(tmp_path / "run"), "--report_to", "none", "--precision", "fp32"]
    _, _, args = parse_recipe(["--config", str(recipe), *run, "--boundary_weight", "2.5"])
    assert (args.loss_terms, args.boundary_weight, args.boundary_width) == ({"ce": 1.0, "boundary": 1.0}, 2.5, 1)
    _, _, args = parse_recipe([*run, "--loss", "{ce: 1.0, boundary: 1.0}"])
    assert (args.loss_terms, args.boundary_weight, args.boundary_width) == ({"ce": 1.0, "boundary": 1.0}, 4.0, 2)
    with pytest.raises(RecipeError, match=r"boundary_weight must be a finite number ≥ 0.*got -1\.0"):
        parse_recipe([*run, "--loss", "{ce: 1.0, boundary: 1.0}", "--boundary_weight", "-1"])


def test_explicit_class_weights_of_the_wrong_length_stop_before_training(tmp_path, train_tiny):
    with pytest.raises(RecipeError, match="class_weights: 3 weights for 4 classes"):
        train_tiny(tmp_path, "--max_steps", "1", "--class_weights", "[1.0, 2.0, 3.0]")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_single_class_is_refused_with_the_binary_recipe(tmp_path, train_tiny):
    from hf_segformer.errors import DataError

    with pytest.raises(DataError, match="binary task needs both classes named"):
        train_tiny(tmp_path, "--max_steps", "1", "--id2label", '{"0": "membrane"}')
