"""max_time: the budget fixes max_steps, the schedule ends there, the run stops and saves within the budget."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_segformer.config.values import parse_duration
from hf_segformer.errors import RecipeError
from hf_segformer.training.budget import periodic_count, rebuild_scheduler, steps_that_fit


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("25m", 1500), ("2h", 7200), ("1.5d", 129600),
                                           ("1h30m", 5400), (" 2H ", 7200)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["25", "m", "25 minutes", "0s", "-5m", ""])
def test_bad_durations_name_the_field(text):
    with pytest.raises(RecipeError, match="max_time"):
        parse_duration(text)


def test_steps_that_fit_counts_evaluations():
    args = SimpleNamespace(eval_strategy="steps", eval_steps=3, save_strategy="no", save_steps=0)
    # n steps of 1 s plus 2 s per evaluation at steps 3, 6, ...: n=6 costs 6 + 4 = 10, n=7 costs 7 + 4 = 11.
    assert steps_that_fit(10.0, 0, 1.0, 2.0, 0.0, args, float("inf"), None) == 6
    assert steps_that_fit(10.0, 0, 1.0, 2.0, 0.0, args, float("inf"), cap=4) == 4
    # from step 5: steps 6 and 9 evaluate; 4 steps cost 4 + 4 = 8 ≤ 8.5, 5 steps 5 + 4 = 9.
    assert steps_that_fit(8.5, 5, 1.0, 2.0, 0.0, args, float("inf"), None) == 4
    assert periodic_count("epoch", None, 3, 10, 4.0) == 2  # epochs end at steps 4 and 8


def test_rebuilt_scheduler_is_the_fresh_schedule_at_that_step():
    weight, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [head], "lr": 1.0}], lr=0.1)
    args = SimpleNamespace(lr_scheduler_type="polynomial", lr_scheduler_kwargs={"lr_end": 0.001, "power": 1.0},
                           get_warmup_steps=lambda total: 2)
    from transformers import Trainer

    trainer = SimpleNamespace(args=args, optimizer=optimizer, lr_scheduler=None)
    trainer.create_scheduler = lambda num_training_steps, optimizer=None: Trainer.create_scheduler(
        trainer, num_training_steps, optimizer)
    rebuild_scheduler(trainer, 1000, 0)
    for _ in range(4):
        optimizer.step()
        trainer.lr_scheduler.step()
    rebuild_scheduler(trainer, 10, 4)  # polynomial from 0.1 after 2 warm-up steps to 0.001 at step 10
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001 + (0.1 - 0.001) * 6 / 8)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(10 * (0.001 + (0.1 - 0.001) * 6 / 8))  # 10× kept
    for _ in range(6):
        optimizer.step()
        trainer.lr_scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


BUDGET = ["--lr_scheduler_type", "polynomial", "--lr_scheduler_kwargs", '{"lr_end": 0.0001, "power": 1.0}',
          "--warmup_steps", "0.5", "--logging_steps", "1", "--num_train_epochs", "1"]


@pytest.mark.whole_machine
def test_budget_decides_the_length_the_schedule_ends_and_a_resume_counts_only_the_budget_left(tmp_path, train_tiny,
                                                                                          capfd):
    """One budgeted run, then a resume of it from checkpoint-10 (a 20 s budget is this test's cost: one run serves
    both parts). The run: the budget, not num_train_epochs, decides the length; the progress bar shows it; every
    step is logged; the warm-up reaches the peak rate and the decay ends on the last step; evaluation and save fit
    in the budget. The resume: it starts with the time spent before the checkpoint and stays within the one
    budget."""
    budget = 20.0
    length = ("--max_time", "20s", "--eval_strategy", "steps", "--eval_steps", "15", "--save_strategy", "steps",
              "--save_steps", "10")
    results = train_tiny(tmp_path, *BUDGET, *length)
    progress = capfd.readouterr().err
    run = tmp_path / "run"
    train = json.loads((run / "train_results.json").read_text())
    state = json.loads((run / "trainer_state.json").read_text())
    assert train["budget_max_time_s"] == budget
    assert train["budget_steps"] == state["global_step"] == state["max_steps"]
    assert train["budget_steps"] > 4  # more than two epochs: the budget, not num_train_epochs, set the length
    # The progress bar shows the decided length, not the provisional one (an ETA of thousands of hours).
    assert f"{train['budget_steps']}/{train['budget_steps']} [" in progress and "/10000000 [" not in progress.split(
        "\r")[-1]
    total = state["max_steps"]
    learning_rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # Every step logged, the one whose end the budget's timing evaluation ran in too.
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, total + 1))
    # The Trainer logs the rate each step used: the last step used the decay's last value before lr_end.
    warmup = train["budget_warmup_steps"]  # half the first decision's length, kept through every re-fit
    assert 0 < warmup < total
    if not train["budget_stopped_early"]:  # steps that slowed down late (a loaded machine) end the run before its
        # decay, and the run says so; otherwise the decay ends on the last step
        assert learning_rates[-1] == pytest.approx(0.0001 + (0.01 - 0.0001) / (total - warmup), rel=1e-4)
    assert max(learning_rates) == pytest.approx(0.01, rel=0.1)  # the warm-up (half the steps here: the first five are
    # timed at a provisional schedule) reached the peak learning rate
    # Stopped within the budget with evaluation and save inside it, and used most of it.
    assert 0.6 * budget <= results["budget_spent_s"] <= 1.1 * budget
    assert (run / "model.safetensors").is_file() and "eval_mean_iou" in results

    checkpoint = run / "checkpoint-10"  # the first, after the budget's decision at step 5
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["TimeBudgetCallback"]
    spent = stored["attributes"]["spent_s"]
    assert 0 < spent < budget and stored["attributes"]["budget_steps"] >= 5
    resumed = train_tiny(tmp_path, *BUDGET, *length, "--resume_from_checkpoint", str(checkpoint),
                         "--overwrite_output_dir", "true")
    # The resumed run starts with the time spent before the checkpoint and stays within the one budget.
    assert resumed["budget_spent_s"] <= 1.1 * budget
    assert resumed["train_runtime"] < budget - spent + 2.0


@pytest.mark.whole_machine
def test_a_cold_first_evaluation_does_not_stop_the_run_untrained(tmp_path, train_tiny, monkeypatch):
    """The first evaluation ever pays one-time costs (seconds of kernel set-up on a CPU whose steps take
    milliseconds): timed alone, it left no room in the budget, and the run stopped at the budget's decision
    having trained only at the provisional schedule's first rates (peak 6e-09 instead of 0.01)."""
    from hf_segformer.training.budget import TimeBudgetCallback

    timings = iter([60.0, 0.5])  # cold, then warm
    monkeypatch.setattr(TimeBudgetCallback, "_measure_eval_s", lambda self: next(timings, 0.5))
    # max_steps 12 caps the length the budget decides (12 steps, unless a loaded machine fits fewer in 40 s), so the
    # run need not spend its 40 s; stopped at the decision, it would end at step 5
    train_tiny(tmp_path, *BUDGET, "--max_time", "40s", "--max_steps", "12", "--eval_strategy", "no")
    train = json.loads((tmp_path / "run" / "train_results.json").read_text())
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    # the warm timing (0.5 s, of two of the four evaluation images), not the cold one
    assert train["budget_eval_time_s"] == 1.0 and train["budget_steps"] == state["global_step"] > 5
    learning_rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # Trained on the decided schedule (its warm-up is half the run), not only at the provisional one's ~1e-09.
    assert max(learning_rates) > 1e-4


@pytest.mark.whole_machine
def test_a_run_that_ends_before_the_budget_decides_still_writes_its_results(tmp_path, train_tiny):
    """max_steps 2 ends the run before the budget has timed a step: the results are written and say so."""
    results = train_tiny(tmp_path, "--max_time", "25m", "--max_steps", "2", "--eval_strategy", "no")
    run = tmp_path / "run"
    train = json.loads((run / "train_results.json").read_text())
    assert train["budget_decided"] is False and train["budget_max_time_s"] == 1500.0
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2
    assert (run / "eval_results.json").is_file() and "eval_mean_iou" in results
    assert (run / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.whole_machine
def test_two_processes_agree_on_the_budget(tmp_path):
    """Two DDP processes (gloo) with the budget, rare-class sampling and the weight average: one step count (a
    disagreement would hang the collective calls), within the budget."""
    import yaml
    from support.processes import ACCELERATE, free_port, run_offline

    from hf_segformer.data.synthetic import write_synthetic_dataset

    root = Path(__file__).resolve().parents[1]
    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=12, num_validation=4, size=32)
    recipe = yaml.safe_load((root / "recipes/quickstart.yaml").read_text())
    recipe.update({"data_dir": str(data_dir), "synthetic_data": False, "crop_size": 32, "eval_size": 32,
                   "train_scale": [64, 32], "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 2,
                   "per_device_eval_batch_size": 2, "dataloader_num_workers": 0, "dataloader_persistent_workers": False,
                   "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "report_to": "none",
                   "max_time": "30s", "rare_class_sampling": True, "check_data": True, "ema_decay": 0.9,
                   "lr_scheduler_type": "polynomial", "lr_scheduler_kwargs": {"lr_end": 0.0001, "power": 1.0}})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    command = [str(ACCELERATE), "launch", "--config_file", str(root / "accelerate_configs/cpu_2proc.yaml"),
               "--main_process_port", str(free_port()), str(root / "recipes/finetune.py"),
               "--config", str(tmp_path / "tiny.yaml")]
    result = run_offline(command, tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    train = json.loads((tmp_path / "run" / "train_results.json").read_text())
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert train["budget_steps"] == state["global_step"] == state["max_steps"] > 5
    assert train["budget_spent_s"] <= 1.1 * 30
