"""Early stopping (early_stopping_patience): a run whose metric cannot improve stops after `patience` evaluations
and says so in train_results.json and the model card; combinations that cannot work are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_segformer.errors import RecipeError
from hf_segformer.hub.model_card import RunFacts, build_model_card
from hf_segformer.training.arguments import parse_recipe

# The metric's change can never exceed 1 (mean IoU is in [0, 1]): no evaluation counts as an improvement.
CANNOT_IMPROVE = ("--early_stopping_threshold", "1.0")
EVERY_STEP = ("--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1")


def test_a_run_that_cannot_improve_stops_after_patience_evaluations(tmp_path: Path, train_tiny) -> None:
    results = train_tiny(tmp_path, "--max_steps", "12", "--early_stopping_patience", "2", *CANNOT_IMPROVE,
                         *EVERY_STEP)
    run = tmp_path / "run"
    recorded = json.loads((run / "train_results.json").read_text())
    # evaluation 1 sets the best; evaluations 2 and 3 do not improve on it: patience 2 is used up at step 3
    assert recorded["early_stopped"] is True
    assert recorded["early_stopping_step"] == 3
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 3
    assert recorded["best_step"] == 1 and recorded["early_stopping_metric"] == "mean_iou"
    first_eval = next(e for e in json.loads((run / "trainer_state.json").read_text())["log_history"]
                      if "eval_mean_iou" in e)
    assert recorded["best_metric"] == pytest.approx(first_eval["eval_mean_iou"], abs=1e-6)
    assert recorded["early_stopping_planned_steps"] == 12  # stopped before the schedule's end: recorded
    assert results["early_stopped"] is True
    # the saved model is the best evaluation's, and the final evaluation is of it
    assert results["eval_mean_iou"] == pytest.approx(first_eval["eval_mean_iou"], abs=1e-6)
    card = str(build_model_card(run, RunFacts(repo_id="user/tiny")))
    assert "Training stopped early at step 3" in card and "step 1" in card


def test_a_patient_run_that_is_not_stopped_says_so(tmp_path: Path, train_tiny) -> None:
    train_tiny(tmp_path, "--max_steps", "3", "--early_stopping_patience", "5", *EVERY_STEP)
    recorded = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert recorded["early_stopped"] is False and "early_stopping_step" not in recorded
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 3


@pytest.mark.slow
def test_early_stopping_ending_a_time_budget_is_recorded(tmp_path: Path, train_tiny, caplog) -> None:
    # The budget fixes the run's length after its first 5 steps (capped by max_steps 40); patience 6 ends it at 7.
    with caplog.at_level("WARNING", logger="hf_segformer"):
        train_tiny(tmp_path, "--max_time", "10m", "--max_steps", "40", "--early_stopping_patience", "6",
                   *CANNOT_IMPROVE, *EVERY_STEP)
    recorded = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert recorded["early_stopped"] is True and recorded["early_stopping_step"] == 7
    assert recorded["early_stopping_planned_steps"] == recorded["budget_steps"] > 7
    assert recorded["early_stopping_learning_rate"] > 0  # the schedule had not decayed to its end
    assert any("time budget planned" in r.message for r in caplog.records)
    card = str(build_model_card(tmp_path / "run", RunFacts(repo_id="user/tiny")))
    assert "(its time budget)" in card and "had not finished decaying" in card


@pytest.mark.parametrize("overrides, named", [
    (("--early_stopping_patience", "2"), "eval_strategy"),  # no evaluations to count
    (("--early_stopping_patience", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "epoch"),
     "save_strategy"),
    (("--early_stopping_patience", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "3"),
     "save_steps (3) must be a multiple of eval_steps (2)"),
    (("--early_stopping_patience", "0", *EVERY_STEP), "early_stopping_patience must be ≥ 1"),
    (("--early_stopping_threshold", "0.01", *EVERY_STEP), "early_stopping_patience"),
    (("--early_stopping_patience", "2", "--early_stopping_threshold", "-1", *EVERY_STEP), "early_stopping_threshold"),
])
def test_combinations_that_cannot_work_are_refused_when_read(tmp_path: Path, overrides, named) -> None:
    with pytest.raises(RecipeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(["--output_dir", str(tmp_path / "run"), "--precision", "fp32", *overrides])
    assert not (tmp_path / "run").exists()


def test_early_stopping_keeps_the_best_model_on_the_mean_iou_by_default(tmp_path: Path) -> None:
    _, _, args = parse_recipe(["--output_dir", str(tmp_path), "--precision", "fp32",
                               "--early_stopping_patience", "3", *EVERY_STEP])
    assert args.load_best_model_at_end and args.metric_for_best_model == "mean_iou" and args.greater_is_better
    _, _, args = parse_recipe(["--output_dir", str(tmp_path), "--precision", "fp32", "--early_stopping_patience",
                               "3", "--metric_for_best_model", "loss", *EVERY_STEP])
    assert args.metric_for_best_model == "loss" and not args.greater_is_better
