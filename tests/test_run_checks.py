"""Run checks (hf_segformer.training.run_checks) and the Accelerate config files (accelerate_configs/)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hf_segformer.errors import RecipeError
from hf_segformer.outputs import check_output_dir
from hf_segformer.runtime import ENV_MIXED_PRECISION, cpu_has_native_bf16
from hf_segformer.training import run_checks as runchecks
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.run_checks import check_cpu_bf16, check_fp16_device, check_run

CONFIG_DIR = Path(__file__).resolve().parent.parent / "accelerate_configs"
REQUIRED_KEYS = ("compute_environment", "distributed_type", "mixed_precision", "num_processes", "num_machines")


def args(tmp_path: Path, **kwargs) -> SimpleNamespace:
    fields = {"output_dir": str(tmp_path / "out"), "fp16": False, "bf16": False, "use_cpu": False}
    return SimpleNamespace(**{**fields, **kwargs})


@pytest.fixture
def launcher(monkeypatch):
    """Set ACCELERATE_MIXED_PRECISION as `accelerate launch --config_file ...` does (None: not launched)."""
    def set_precision(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(ENV_MIXED_PRECISION, raising=False)
        else:
            monkeypatch.setenv(ENV_MIXED_PRECISION, value)
    return set_precision


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA device is (True) or is not (False) there."""
    def set_gpu(present: bool) -> None:
        monkeypatch.setattr(runchecks, "_on_accelerator", lambda a: present and not a.use_cpu)
    return set_gpu


# ---- mixed precision: one source of truth (choose_precision itself: tests/test_runtime.py) ---------------

def test_real_training_arguments_contradiction(tmp_path, launcher):
    launcher("fp16")
    with pytest.raises(RecipeError, match="bf16: true") as error:
        SegformerTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", bf16=True)
    assert "mixed_precision: fp16" in str(error.value) and "ACCELERATE_MIXED_PRECISION" in str(error.value)


def test_config_precision_alone_decides(tmp_path, launcher):
    launcher("bf16")
    training_args = SegformerTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    assert training_args.bf16 and training_args.precision == "bf16"
    assert "Accelerate config" in training_args.precision_reason


# ---- fp16 needs a GPU ---------------------------------------------------------------------------------

def test_fp16_on_cpu_is_an_error(tmp_path, launcher, gpu):
    launcher(None)
    gpu(False)
    with pytest.raises(RecipeError, match="fp16 autocast does nothing on a CPU") as error:
        check_fp16_device(args(tmp_path, fp16=True))
    assert "precision: bf16" in str(error.value).split("CPU", 1)[1]


def test_fp16_from_config_on_cpu_is_an_error(tmp_path, launcher, gpu):
    launcher("fp16")
    gpu(False)
    with pytest.raises(RecipeError, match=r"mixed_precision: fp16"):
        check_run(args(tmp_path, fp16=True))


def test_fp16_with_use_cpu_is_an_error_even_with_a_gpu(tmp_path, launcher, gpu):
    launcher(None)
    gpu(True)
    with pytest.raises(RecipeError, match="use_cpu is true"):
        check_fp16_device(args(tmp_path, fp16=True, use_cpu=True))


def test_fp16_on_gpu_and_bf16_on_cpu_pass(tmp_path, launcher, gpu):
    launcher(None)
    gpu(True)
    check_fp16_device(args(tmp_path, fp16=True))
    gpu(False)
    check_fp16_device(args(tmp_path, bf16=True))


# ---- output_dir ---------------------------------------------------------------------------------------

def test_output_dir_is_created_and_left_clean(tmp_path):
    out = tmp_path / "a" / "b"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("user file")
    check_output_dir(out, min_free_gb=0)
    assert out.is_dir() and list(out.iterdir()) == []
    assert (tmp_path / "a" / "keep.txt").read_text() == "user file"


def test_output_dir_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "out"  # never creatable, even as root
    with pytest.raises(RecipeError, match="cannot be created") as error:
        check_output_dir(out, min_free_gb=0)
    assert str(out) in str(error.value)
    assert (tmp_path / "file.txt").read_text() == "x"


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(RecipeError, match="not a folder"):
        check_output_dir(tmp_path / "out", min_free_gb=0)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permission bits")
def test_output_dir_in_read_only_parent(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(RecipeError) as error:
            check_output_dir(parent / "out", min_free_gb=0)
        assert str(parent / "out") in str(error.value)
    finally:
        parent.chmod(0o700)


def test_not_enough_free_space_gives_free_space_and_path(tmp_path):
    with pytest.raises(RecipeError, match=r"has [0-9.]+ GB free, less than the 1e\+09 GB") as error:
        check_output_dir(tmp_path, min_free_gb=10**9)
    assert str(tmp_path) in str(error.value)


def test_check_run_passes_on_good_setup(tmp_path, launcher, gpu):
    launcher("bf16")
    gpu(False)
    check_run(args(tmp_path, bf16=True), min_free_gb=0)
    assert (tmp_path / "out").is_dir()


# ---- accelerate_configs/ ------------------------------------------------------------------------------

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"cpu.yaml", "cpu_2proc.yaml", "single_gpu_fp16.yaml", "single_gpu_bf16.yaml", "multi_gpu_fp16.yaml",
            "multi_gpu_bf16.yaml", "multi_node.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_with_required_keys(path):
    config = yaml.safe_load(path.read_text())
    missing = [key for key in REQUIRED_KEYS if key not in config]
    assert not missing, f"{path.name} lacks {missing}"
    assert config["mixed_precision"] in ("no", "fp16", "bf16")
    assert path.read_text().lstrip().startswith("#"), f"{path.name} needs a comment saying what it is for"
    from accelerate.commands.config.config_args import load_config_from_file
    loaded = load_config_from_file(str(path))  # accelerate's own loader: no unknown keys, valid enums
    assert loaded.num_processes == config["num_processes"]


def test_multi_node_config_fields():
    config = yaml.safe_load((CONFIG_DIR / "multi_node.yaml").read_text())
    assert config["num_machines"] == 2 and config["num_processes"] == 16 and config["machine_rank"] == 0
    assert config["main_process_ip"] and isinstance(config["main_process_port"], int)


def test_slurm_script_syntax_and_launch_line():
    script = CONFIG_DIR / "slurm" / "finetune.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in ("accelerate launch --config_file", '--machine_rank "$SLURM_NODEID"', "--main_process_ip",
                   "--main_process_port", 'recipes/finetune.py --config "$RECIPE"', "SLURM_JOB_NODELIST"):
        assert needle in text


def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    without.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(with_bf16) is True and cpu_has_native_bf16(without) is False
    assert cpu_has_native_bf16(tmp_path / "absent") is None


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, caplog):
    import hf_segformer.training.run_checks as runchecks

    monkeypatch.setattr(runchecks, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="hf_segformer"):
        check_cpu_bf16(args(tmp_path, bf16=True, use_cpu=True))
    assert "emulated (several times slower than fp32)" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runchecks, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="hf_segformer"):
        check_cpu_bf16(args(tmp_path, bf16=True, use_cpu=True))
    assert caplog.text == ""
