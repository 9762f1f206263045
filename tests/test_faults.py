"""Runs that survive faults, and runs that can be trusted: kill-and-resume, determinism, DDP training,
NaN/Inf losses and out-of-memory errors.

A user relies on: a run killed mid-epoch and resumed with `--resume_from_checkpoint last` ending exactly where
the uninterrupted run ends; the same recipe and seed giving the same metrics; a 2-process run stopped by SIGTERM
saving and resuming (that 2-process runs train like one process with the whole batch is test_multi_node.py's and
test_optimisation.py's); a diverging or out-of-memory run stopping with a message that names the step and what to
change instead of training on NaNs or dumping a CUDA trace.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers.modeling_utils
import yaml
from support.commands import train_here
from support.processes import RUNTIME, eval_metrics, finetune, offline_env, step_losses

import hf_segformer.modeling.prepare
from hf_segformer import runtime
from hf_segformer.data.synthetic import write_synthetic_dataset
from hf_segformer.errors import RecipeError, TrainingError
from hf_segformer.training.checkpoints import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, **fields) -> Path:
    """A CI-sized recipe: 8 + 4 synthetic 32×32 images, B0 from config, deterministic crops (crop = image)."""
    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
    recipe = {"data_dir": str(data_dir), "model_variant": "b0", "crop_size": 32, "eval_size": 32,
              "train_scale": [64, 32], "ratio_range": [1.0, 1.0], "cat_max_ratio": 1.0, "hflip_prob": 0.0,
              "photometric_distortion": False, "check_data": False, "per_device_train_batch_size": 2,
              "per_device_eval_batch_size": 4, "learning_rate": 0.003, "num_train_epochs": 3, "logging_steps": 1,
              "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "dataloader_num_workers": 0,
              "seed": 7, "precision": "fp32", **fields}  # fp32: compared exactly (auto is bf16 on some CPUs)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def here(recipe: Path, output_dir: Path, *extra: str) -> None:
    """A run of `recipe` in this process (the uninterrupted and the resumed runs: only the interrupted ones need a
    process of their own), with one torch thread as the launched runs have: losses are compared exactly."""
    train_here("--config", recipe, "--output_dir", output_dir, *extra, threads=1)


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_ends_like_the_uninterrupted_run(tmp_path):
    recipe = tiny_recipe(tmp_path, save_strategy="steps", save_steps=3)  # 4 steps per epoch, 12 in all
    killed = tmp_path / "killed"
    with ThreadPoolExecutor(1) as pool:  # the killed process runs while the uninterrupted run trains here
        killing = pool.submit(finetune, recipe, killed, "--kill_at_step", "7",
                              script="tests/scripts/killed_run_script.py", expect_code=-9)
        here(recipe, tmp_path / "straight")
        killing.result()
    assert (killed / "checkpoint-6").is_dir() and not (killed / "checkpoint-9").exists()
    assert not (killed / "eval_results.json").exists()
    here(recipe, killed, "--resume_from_checkpoint", "last")

    straight_losses, resumed_losses = step_losses(tmp_path / "straight"), step_losses(killed)
    assert sorted(resumed_losses) == list(range(1, 13))
    for step in range(7, 13):  # the steps redone after the kill: same batches, same augmentation, same weights
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-4), step
    assert eval_metrics(killed) == pytest.approx(eval_metrics(tmp_path / "straight"), rel=1e-5, nan_ok=True)


RANDOM_AUGMENTATION = {"crop_size": 32, "ratio_range": [0.5, 2.0], "cat_max_ratio": 0.75, "hflip_prob": 0.5,
                       "photometric_distortion": True, "precision": "fp32", "max_steps": 9, "num_train_epochs": 100,
                       "save_strategy": "steps", "save_steps": 4}


@pytest.mark.slow
def test_killed_or_terminated_mid_save_resumes_with_the_same_losses_under_random_augmentation(tmp_path, caplog, capfd):
    """SIGKILL while checkpoint-8 is being written, and SIGTERM (a pre-emption) while checkpoint-4 is: `last` never
    picks a partial checkpoint, SIGTERM saves one more and exits 143 saying how to resume, and the resumed runs draw
    the same random crops, flips and colours: the same loss at every step (9 steps, 4 per epoch)."""
    recipe = tiny_recipe(tmp_path, **RANDOM_AUGMENTATION)
    killed, terminated = tmp_path / "killed", tmp_path / "terminated"
    with ThreadPoolExecutor(2) as pool:  # both interrupted processes run while the uninterrupted run trains here
        killing = pool.submit(finetune, recipe, killed, "--kill_at_step", "8", "--during_save",
                              script="tests/scripts/killed_run_script.py", expect_code=-9)
        terminating = pool.submit(finetune, recipe, terminated, "--term_at_step", "4", "--during_save",
                                  script="tests/scripts/killed_run_script.py", expect_code=143)
        here(recipe, tmp_path / "straight")
        killing.result()
        stopped = terminating.result()
    straight = step_losses(tmp_path / "straight")
    assert sorted(straight) == list(range(1, 10))

    assert (killed / "checkpoint-partial-8").is_dir() and not (killed / "checkpoint-8").exists()
    caplog.clear()
    capfd.readouterr()
    here(recipe, killed, "--resume_from_checkpoint", "last")
    output = capfd.readouterr()
    assert "checkpoint-4" in caplog.text + output.out + output.err, caplog.text + output.out + output.err
    assert not (killed / "checkpoint-partial-8").exists() and (killed / "checkpoint-8" / "optimizer.pt").is_file()
    losses = step_losses(killed)
    assert sorted(losses) == list(range(1, 10))
    assert [losses[step] for step in range(5, 10)] == [straight[step] for step in range(5, 10)]

    assert "Stopped on SIGTERM at step 5" in stopped.stderr and "--resume_from_checkpoint last" in stopped.stderr
    assert (terminated / "checkpoint-4" / "optimizer.pt").is_file() and (terminated / "checkpoint-5").is_dir()
    assert not (terminated / "model.safetensors").exists()  # not a finished run
    here(recipe, terminated, "--resume_from_checkpoint", "last")
    losses = step_losses(terminated)
    assert [losses[step] for step in range(6, 10)] == [straight[step] for step in range(6, 10)]
    assert eval_metrics(terminated) == eval_metrics(tmp_path / "straight")


def test_same_recipe_and_seed_give_the_same_metrics(tmp_path, train_tiny):
    first = train_tiny(tmp_path / "a", "--seed", "3", "--max_steps", "4", "--hflip_prob", "0.5")
    second = train_tiny(tmp_path / "b", "--seed", "3", "--max_steps", "4", "--hflip_prob", "0.5")
    other = train_tiny(tmp_path / "c", "--seed", "4", "--max_steps", "4", "--hflip_prob", "0.5")
    strip = lambda metrics: {k: v for k, v in metrics.items() if not k.endswith(RUNTIME)}  # noqa: E731
    assert strip(first) == strip(second)
    assert strip(first) != strip(other)


@pytest.mark.slow
def test_a_terminated_two_process_run_saves_exits_143_and_resumes_past_a_cut_short_checkpoint(tmp_path):
    """SIGTERM to `hf-segformer train --num_processes 2` (a pre-emption signals the launcher, which passes it on):
    both processes save one complete checkpoint at the next step end and the run exits 143 saying how to resume;
    the resumed 2-process run passes over a checkpoint cut short (a partial folder, one without trainer_state.json)
    and finishes."""
    recipe = tiny_recipe(tmp_path, max_steps=30, num_train_epochs=100, save_strategy="steps", save_steps=1000)
    run_dir = tmp_path / "run"
    train = [str(Path(sys.executable).with_name("hf-segformer")), "train", "--num_processes", "2", "--config",
             str(recipe), "--output_dir", str(run_dir)]
    process = subprocess.Popen(train, cwd=tmp_path, env=offline_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:  # the first logged loss: both processes are training
        lines.append(line)
        if "'loss'" in line:
            process.send_signal(signal.SIGTERM)
            break
    log = "".join(lines) + process.communicate(timeout=300)[0]
    assert process.returncode == 143, log[-3000:]
    assert "Stopped on SIGTERM at step" in log and "--resume_from_checkpoint last" in log, log[-3000:]
    (saved,) = run_dir.glob("checkpoint-*")
    step = int(saved.name.split("-")[1])
    assert 1 <= step < 30 and not (run_dir / "model.safetensors").exists()
    for name in ("optimizer.pt", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"):
        assert (saved / name).is_file(), name  # every process's files

    (run_dir / f"checkpoint-partial-{step + 1}").mkdir()  # a save killed mid-way
    (run_dir / f"checkpoint-{step + 2}").mkdir()  # copied in part: no trainer_state.json
    (run_dir / f"checkpoint-{step + 2}" / "config.json").write_text("{}")
    # The resume as a user's shell starts it (no OMP_NUM_THREADS, no ACCELERATE_* variables): quiet, a fair share
    # of the cores per process.
    user_env = {k: v for k, v in offline_env().items() if k != "OMP_NUM_THREADS" and not k.startswith("ACCELERATE_")}
    result = subprocess.run([*train, "--resume_from_checkpoint", "last"], cwd=tmp_path, env=user_env,
                            capture_output=True, text=True, timeout=600, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f"checkpoint-{step + 2} has no trainer_state.json" in log, log[-3000:]
    assert sorted(step_losses(run_dir)) == list(range(1, 31)) and (run_dir / "model.safetensors").is_file()
    assert "2 process(es) (DistributedType.MULTI_CPU), per-device train batch 2" in log, log[-3000:]
    fair = max(1, runtime.usable_cores() // 2)
    assert f"torch threads: {fair} ({runtime.usable_cores()} usable core(s) / 2 local process(es)" in log
    assert "were not passed to `accelerate launch`" not in log and "Setting OMP_NUM_THREADS" not in log


def test_diverging_run_stops_naming_the_step(tmp_path, train_tiny):
    with pytest.raises(TrainingError) as error:
        train_tiny(tmp_path, "--learning_rate", "1e12", "--max_grad_norm", "0", "--max_steps", "6")
    message = str(error.value)
    assert "Training loss is nan at step" in message or "Training loss is inf at step" in message
    assert "learning rate too high" in message and "max_nonfinite_losses" in message
    assert not (tmp_path / "run" / "model.safetensors").exists()  # nothing trained on NaNs is saved


def test_a_full_disk_says_so_and_keeps_what_was_saved(tmp_path, train_tiny, monkeypatch):
    """torch's zip writer fails on checkpoint-4 as on a full disk, then safetensors on the final model: each time
    one error saying the disk is full, with the folder; no partial checkpoint or model is left for `last` to pick."""
    real_save = torch.save

    def full_at_checkpoint_4(obj, path, *args, **kwargs):
        if "checkpoint-partial-4" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:659] . unexpected pos 2176 vs 2070")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_checkpoint_4)
    run_dir = tmp_path / "run"
    args = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no")
    with pytest.raises(TrainingError, match=r"^The disk is full: saving checkpoint-4 into .*run failed \(.* GB free\)"):
        train_tiny(tmp_path, *args)
    assert sorted(path.name for path in run_dir.glob("checkpoint*")) == ["checkpoint-2"]
    assert resolve_checkpoint(SimpleNamespace(output_dir=str(run_dir), resume_from_checkpoint="last",
                                              overwrite_output_dir=False)) == str(run_dir / "checkpoint-2")

    monkeypatch.setattr(torch, "save", real_save)
    real_safe_save = transformers.modeling_utils.safe_save_file

    def full_at_the_final_model(tensors, path, *args, **kwargs):
        if "partial-model" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_safe_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_at_the_final_model)
    with pytest.raises(TrainingError, match="^The disk is full: saving the final model into"):
        train_tiny(tmp_path, *args, "--resume_from_checkpoint", "last")
    assert (run_dir / "checkpoint-4" / "optimizer.pt").is_file()
    assert not (run_dir / "model.safetensors").exists() and not list(run_dir.glob("*partial*"))


def test_last_skips_a_cut_short_checkpoint_and_a_truncated_optimizer_is_named(tmp_path):
    """`last` passes over a checkpoint without trainer_state.json (cut short before this project renamed
    checkpoints into place); a truncated optimizer.pt (torch: `OSError: [Errno 22]` on load) is one error."""
    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-partial-6").mkdir()
    args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint="last", overwrite_output_dir=False)
    assert resolve_checkpoint(args) == str(tmp_path / "checkpoint-2")

    optimizer = tmp_path / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-40])
    with pytest.raises(RecipeError, match=r"checkpoint-2/optimizer.pt is damaged .*resume from an earlier"):
        resolve_checkpoint(args)


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
