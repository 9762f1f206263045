"""A newcomer's first hour: the README's launch is quiet and right and writes nothing outside the project, each
command's --help shows only what it uses, and an evaluation of the test split says so in its keys and files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.processes import ACCELERATE

from hf_segformer.cli import main as cli_main
from hf_segformer.config.data import TRAINING_ONLY_DATA_FIELDS, DataArguments
from hf_segformer.evaluation.run import metric_prefix, write_results
from hf_segformer.runtime import cpu_has_native_bf16, has_accelerator, usable_cores

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "accelerate_configs/default.yaml"


def test_readme_launch_is_quiet_uses_every_core_and_leaves_home_untouched(tmp_path):
    """The README's command (default.yaml, the quickstart recipe, a short run) with HOME an empty folder and
    no OMP_NUM_THREADS, HF_HOME, XDG_CACHE_HOME or MPLCONFIGDIR set, as on a newcomer's machine."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "HF_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "HF_DATASETS_CACHE")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [str(ACCELERATE), "launch", "--config_file", str(DEFAULT_CONFIG), str(ROOT / "recipes/finetune.py"),
               "--data_dir", str(tmp_path / "data"), "--synthetic_num_train", "8", "--synthetic_num_validation", "4",
               "--synthetic_image_size", "32", "--crop_size", "32", "--train_scale", "64", "32", "--eval_size", "32",
               "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
               "--dataloader_num_workers", "0", "--dataloader_persistent_workers", "false",
               "--max_steps", "2", "--eval_steps", "2", "--logging_steps", "1", "--output_dir", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "were not passed to `accelerate launch`" not in log
    first = next(line for line in log.splitlines() if "Device:" in line)
    assert f"torch threads: {usable_cores()} " in first, first
    if not has_accelerator():
        assert "Device: cpu" in first
        assert f"precision: {'bf16' if cpu_has_native_bf16() else 'fp32'} (auto" in first, first
    assert (tmp_path / "run/eval_results.json").is_file()
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def test_default_accelerate_config_leaves_device_and_precision_to_the_run():
    import yaml

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert config["num_processes"] == 1 and config["distributed_type"] == "NO"
    assert config["mixed_precision"] == "no" and "use_cpu" not in config


def test_setup_touches_nothing_system_wide():
    setup = (ROOT / ".ci/setup-env").read_text()
    code = "\n".join(line for line in setup.splitlines() if not line.lstrip().startswith("#"))
    assert "apt-get" not in code and "PIP_CACHE_DIR" in code
    assert "install-browser" in (ROOT / ".ci/run").read_text()
    assert ".cache/" in (ROOT / ".gitignore").read_text().split()


def command_help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def options(help_text: str) -> set[str]:
    return {word.rstrip(",").split("=")[0] for word in help_text.split() if word.startswith("--")}


def test_training_only_fields_are_data_fields():
    names = {f for f in DataArguments.__dataclass_fields__}
    assert TRAINING_ONLY_DATA_FIELDS <= names
    assert {"data_dir", "eval_split", "eval_size", "ignore_index"}.isdisjoint(TRAINING_ONLY_DATA_FIELDS)


def test_evaluate_help_shows_its_options_grouped_and_no_training_fields(capsys):
    text = command_help(capsys, "evaluate")
    shown = options(text)
    assert not {f"--{name}" for name in TRAINING_ONLY_DATA_FIELDS} & shown
    assert {"--config", "--data_dir", "--eval_split", "--eval_size", "--model", "--mode", "--eval_output_dir"} <= shown
    body = text[text.index("options:"):]  # below the usage line
    data, inference, output = (body.index(title) for title in ("Data (", "Model and inference (", "Evaluation output:"))
    assert data < body.index("--eval_split") < inference < body.index("--tta_scales") < output
    assert output < body.index("--eval_output_dir")


def test_predict_help_has_no_data_or_training_fields(capsys):
    shown = options(command_help(capsys, "predict"))
    assert {"--config", "--model", "--inputs", "--predictions_dir", "--overlays"} <= shown
    assert not {"--crop_size", "--data_dir", "--eval_split", "--learning_rate", "--hflip_prob"} & shown


def test_evaluate_still_takes_a_training_recipe_and_its_hidden_fields(tmp_path):
    from hf_segformer.commands.inference_options import InferenceArguments
    from hf_segformer.config.parser import parse_command
    from hf_segformer.training.arguments import RECIPE_DATACLASSES

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data_dir: d\ncrop_size: 64\nlearning_rate: 0.001\n")
    data_args, inference_args, rest = parse_command(["--config", str(recipe), "--hflip_prob", "0.0"],
                                                    (DataArguments, InferenceArguments), RECIPE_DATACLASSES)
    assert (data_args.data_dir, data_args.crop_size, data_args.hflip_prob) == ("d", 64, 0.0)
    assert rest == {"learning_rate": 0.001}


def test_metric_prefix_follows_the_trainer():
    assert [metric_prefix(s) for s in ("validation", "val", "test", "train")] == ["eval", "eval", "test", "train"]


@pytest.mark.parametrize(("prefix", "other"), [("test", "eval"), ("eval", "test")])
def test_results_of_a_split_carry_its_prefix(tmp_path, prefix, other):
    # 2 classes; class 0: 3 right, 1 predicted as 1; class 1: 2 right → IoU 3/4 and 2/3, accuracy 3/4 and 1.
    confusion = np.array([[3, 1], [0, 2]], dtype=np.int64)
    metrics = write_results(tmp_path, confusion, {0: "a", 1: "b"}, [], np.array([[0, 0, 0], [255, 0, 0]]), 255,
                            {f"{prefix}_samples": 1}, prefix)
    saved = json.loads((tmp_path / f"{prefix}_results.json").read_text())
    assert saved == pytest.approx(metrics)
    assert saved[f"{prefix}_mean_iou"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert saved[f"{prefix}_iou_b"] == pytest.approx(2 / 3)
    assert saved[f"{prefix}_mean_accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert not any(key.startswith(f"{other}_") for key in saved)
    assert (tmp_path / f"{prefix}_per_class.md").is_file() and (tmp_path / f"{prefix}_confusion_matrix.npy").is_file()
    assert not (tmp_path / f"{other}_results.json").exists()


def readme_first_hour() -> tuple[str, str, list[str]]:
    """The README's own first hour: its make-synthetic line, its recipe and its commands, as the README shows them."""
    readme = (ROOT / "README.md").read_text()
    make_data = re.search(r"`(hf-segformer make-synthetic [^`]+)`", readme).group(1)
    recipe = re.search(r"<!-- first-hour recipe -->\n```yaml\n(.*?)```", readme, re.S).group(1)
    commands = [" ".join(shlex.split(block, comments=True))
                for block in re.findall(r"<!-- first-hour -->\n```bash\n(.*?)```", readme, re.S)]
    return make_data, recipe, commands


def test_readme_first_hour_has_the_four_steps_and_a_push():
    make_data, recipe, commands = readme_first_hour()
    assert [command.split()[1] for command in commands] == ["check-data", "train", "evaluate", "predict",
                                                             "push-dataset"]
    assert "--max_steps" in commands[1] and "--dry_run" in commands[4]
    assert recipe.startswith("# my-data.yaml") and all("--config my-data.yaml" in c for c in commands)


@pytest.mark.slow
def test_readme_first_hour_runs_as_shown(tmp_path):
    """check-data → train → evaluate → predict → push-dataset --dry_run, the README's commands verbatim in a fresh
    folder; the evaluation of the saved model reads the metrics training reported. (The model push is
    tests/test_hub.py's, against a local Hub.)"""
    make_data, recipe, commands = readme_first_hour()
    (tmp_path / "my-data.yaml").write_text(recipe)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    logs = {}
    for command in [make_data, *commands]:
        result = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        logs[command.split()[1]] = log = result.stdout + result.stderr
        assert result.returncode == 0, f"$ {command}\n{log[-3000:]}"
    assert "Data check passed: train 32 pairs, validation 8 pairs" in logs["check-data"]
    run = tmp_path / "outputs/my-run"
    trained = json.loads((run / "eval_results.json").read_text())
    evaluated = json.loads((run / "evaluation_validation_whole/eval_results.json").read_text())
    assert evaluated["eval_mean_iou"] == pytest.approx(trained["eval_mean_iou"], abs=1e-4)
    assert f"mIoU {trained['eval_mean_iou']:.4f}" in logs["evaluate"]
    images = sorted(p.stem for p in (tmp_path / "my_data/images/validation").iterdir())
    assert sorted(p.stem for p in (tmp_path / "outputs/masks").glob("*.png")) == images
    assert sorted(p.stem for p in (tmp_path / "outputs/masks/overlays").iterdir()) == images
    assert {p.name for p in (tmp_path / "card_preview").iterdir()} == {"README.md", "id2label.json"}
