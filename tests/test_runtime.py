"""Fast by default: threads, loader workers and precision chosen for the machine, in every launch form."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import ACCELERATE, free_port

from hf_segformer import runtime
from hf_segformer.errors import RecipeError
from hf_segformer.runtime import choose_loader_workers, choose_precision, choose_threads
from hf_segformer.training.arguments import SegformerTrainingArguments

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def machine(monkeypatch):
    """Pretend the CPU has (or lacks) native bf16 and the GPU has (or lacks) bf16."""
    def set_machine(cpu_bf16: bool | None = False, gpu_bf16: bool = True) -> None:
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: cpu_bf16)
        monkeypatch.setattr(runtime, "accelerator_has_bf16", lambda: gpu_bf16)
    return set_machine


# ---- precision ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpu_bf16, expected", [(True, "bf16"), (False, "fp32"), (None, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_where_it_is_native(machine, cpu_bf16, expected):
    machine(cpu_bf16=cpu_bf16)
    choice = choose_precision("auto", False, False, on_cpu=True, launcher=None)
    assert choice.value == expected and choice.why.startswith("auto:")


@pytest.mark.parametrize("gpu_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_else_fp16(machine, gpu_bf16, expected):
    machine(gpu_bf16=gpu_bf16)
    assert choose_precision("auto", False, False, on_cpu=False, launcher="no").value == expected


@pytest.mark.parametrize("launcher", [None, "no"])
def test_the_recipe_decides_when_the_launcher_sets_nothing(machine, launcher):
    machine(cpu_bf16=False)
    assert choose_precision("auto", False, True, on_cpu=True, launcher=launcher).value == "bf16"
    assert choose_precision("fp32", False, False, on_cpu=True, launcher=launcher).value == "fp32"
    machine(cpu_bf16=True)
    assert choose_precision("fp32", False, False, on_cpu=True, launcher=launcher).value == "fp32"


def test_the_accelerate_config_decides_when_the_recipe_is_silent(machine):
    machine(cpu_bf16=False)
    choice = choose_precision("auto", False, False, on_cpu=True, launcher="bf16")
    assert choice.value == "bf16" and "Accelerate config" in choice.why


@pytest.mark.parametrize("config, recipe", [("fp16", {"bf16": True}), ("bf16", {"fp16": True}),
                                            ("bf16", {"requested": "fp32"}), ("fp16", {"requested": "bf16"})])
def test_a_contradiction_is_refused_naming_both(config, recipe):
    with pytest.raises(ValueError) as error:
        choose_precision(recipe.get("requested", "auto"), recipe.get("fp16", False), recipe.get("bf16", False),
                         on_cpu=False, launcher=config)
    message = str(error.value)
    assert f"mixed_precision: {config}" in message and "ACCELERATE_MIXED_PRECISION" in message


def test_precision_and_flag_disagreeing_in_the_recipe_is_refused():
    with pytest.raises(ValueError, match="precision: fp32 and bf16: true"):
        choose_precision("fp32", False, True, on_cpu=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("half", False, False, on_cpu=True)


def test_training_arguments_settle_the_flags_and_say_why(tmp_path, machine, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    machine(cpu_bf16=True)
    args = SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert (args.precision, args.bf16, args.fp16, args.use_cpu) == ("bf16", True, False, True)
    assert args.mixed_precision == "bf16" and "AVX-512 BF16" in args.precision_reason
    machine(cpu_bf16=False)
    args = SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert (args.precision, args.bf16, args.mixed_precision) == ("fp32", False, "no")
    with pytest.raises(RecipeError, match="precision: fp32 and bf16: true"):
        SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none", precision="fp32", bf16=True)


# ---- threads and loader workers -----------------------------------------------------------------------

def test_threads_fair_share_of_usable_cores(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_threads().value == 4
    assert choose_threads(3).value == 3  # the recipe's torch_threads wins


def test_the_users_omp_num_threads_is_kept_but_a_launchers_default_is_not(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in runtime.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    assert choose_threads().value == 1  # a plain `python` run: the user set it
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setattr(runtime, "_parent_environment", lambda: {"PATH": "/bin"})
    choice = choose_threads()
    assert choice.value == 4 and "launcher" in choice.why
    monkeypatch.setattr(runtime, "_parent_environment", lambda: {"OMP_NUM_THREADS": "1"})
    assert choose_threads().value == 1  # the user exported it before launching


def test_loader_workers_auto_and_explicit(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert choose_loader_workers("auto", on_accelerator=False).value == 1
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)  # a worker would take a core from the model's 2 threads
    assert choose_loader_workers("auto", on_accelerator=False).value == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    assert choose_loader_workers("auto", on_accelerator=False).value == 1  # 4 cores per process
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(runtime, "usable_cores", lambda: 16)
    assert choose_loader_workers("auto", on_accelerator=True).value == 8
    assert choose_loader_workers("3", on_accelerator=True).value == 3
    with pytest.raises(ValueError, match="dataloader_num_workers"):
        choose_loader_workers("many", on_accelerator=False)


# ---- freed memory kept for reuse on a CPU ----------------------------------------------------------

GLIBC = sys.platform == "linux" and __import__("platform").libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only (Linux)")
@pytest.mark.parametrize("enabled, expected", [(True, "kept for reuse"), (False, "released")])
def test_freed_memory_is_kept_unless_the_recipe_says_not(enabled, expected):
    # In a fresh process: the setting lasts for the process. Its speed is shown by bench_train_speed.py
    # (system-malloc case), not here.
    code = ("import sys; from hf_segformer.runtime import keep_freed_memory; "
            f"print(keep_freed_memory({enabled}).value)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


# ---- every launch form, for real ----------------------------------------------------------------------

def launch_forms() -> dict[str, list[str]]:
    script = str(ROOT / "recipes/finetune.py")
    port = ["--main_process_port", str(free_port())]
    return {
        "python": [sys.executable, script],
        "accelerate launch (no config)": [str(ACCELERATE), "launch", *port, script],
        "accelerate launch cpu.yaml": [str(ACCELERATE), "launch", "--config_file",
                                       str(ROOT / "accelerate_configs/cpu.yaml"), *port, script],
        "hf-segformer train": [str(Path(sys.executable).with_name("hf-segformer")), "train"],
        "torchrun": [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "1",
                     "--master_port", str(free_port()), script],
    }


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """The launch forms this session tests, all started at once (each mostly waits on one core for its Python
    start with torch): form → (exit code, output)."""
    from hf_segformer.data.synthetic import write_synthetic_dataset

    forms = {item.callspec.params["form"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_every_launch_form_uses_all_cores_and_says_so"}
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("ACCELERATE_")}
    processes = {}
    for form, command in launch_forms().items():
        if form not in forms:
            continue
        folder = tmp_path_factory.mktemp("launch")
        data_dir = write_synthetic_dataset(folder / "data", num_train=4, num_validation=2, size=32)
        recipe = ["--data_dir", str(data_dir), "--output_dir", str(folder / "run"), "--crop_size", "32",
                  "--eval_size", "32", "--train_scale", "64", "32", "--per_device_train_batch_size", "2",
                  "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
                  "--check_data", "false", "--warmup_steps", "0"]
        processes[form] = subprocess.Popen([*command, *recipe], env={**env, "HF_HUB_OFFLINE": "1"}, cwd=folder,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = {}
    try:
        for form, process in processes.items():
            output = process.communicate(timeout=300)[0]
            results[form] = (process.returncode, output)
        return results
    finally:
        for process in processes.values():
            process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("form", list(launch_forms()))
def test_every_launch_form_uses_all_cores_and_says_so(form, launched):
    returncode, log = launched[form]
    assert returncode == 0, log[-3000:]
    line = re.search(r"Device: (\S+); torch threads: (\d+) .*precision: (\w+)", log)
    assert line, log[-3000:]
    threads, precision = int(line.group(2)), line.group(3)
    assert threads == runtime.usable_cores()
    assert precision == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")
    if GLIBC:
        assert "freed memory: kept for reuse" in log
