"""The command line as a user meets it: `hf-segformer train --num_processes N` launching the processes itself,
`hf-segformer env` for bug reports, one option style with the old spellings still accepted (and said to be
deprecated), and light commands that start without importing torch or transformers.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
from accelerate.commands.launch import launch_command_parser
from support.processes import REPO, offline_env

from hf_segformer import cli, runtime
from hf_segformer.commands.launch import LaunchRequest, launch, launcher_arguments, split_launch_options
from hf_segformer.commands.option_style import leading_positionals, renamed_options
from hf_segformer.errors import RecipeError

CONFIGS = REPO / "accelerate_configs"


def launched_with(request: LaunchRequest, threads: int = 3):
    """The launcher's own parse of the arguments train builds: what `accelerate launch` would be given."""
    return launch_command_parser().parse_args(launcher_arguments(request, threads))


# ---- train --num_processes --------------------------------------------------------------------------------

def test_launch_options_are_taken_out_and_the_rest_goes_to_every_process():
    request = split_launch_options(["--config", "r.yaml", "--num_processes", "4", "--learning_rate", "1e-4"])
    assert request.num_processes == 4 and request.accelerate_config is None and not request.in_process
    assert request.train_argv == ["--config", "r.yaml", "--learning_rate", "1e-4"]
    assert split_launch_options(["--config", "r.yaml"]).in_process
    assert split_launch_options(["--num_processes=1"]).in_process


@pytest.mark.parametrize("argv", [["--num_processes", "0"], ["--num_processes", "two"],
                                  ["--accelerate_config", "no/such.yaml"]])
def test_bad_launch_options_are_one_error(argv):
    with pytest.raises(RecipeError, match="--num_processes must be|--accelerate_config no/such.yaml does not exist"):
        split_launch_options(argv)


def test_without_a_config_every_launcher_default_is_given_and_precision_left_to_the_run():
    args = launched_with(LaunchRequest(2, None, ["--config", "r.yaml", "--max_steps", "5"]))
    assert args.num_processes == 2 and args.num_machines == 1 and args.multi_gpu
    assert args.mixed_precision == "no" and args.dynamo_backend == "no"  # the run's precision: auto decides
    assert args.num_cpu_threads_per_process == 3 and args.main_process_port == 0  # a free port, not 29500
    assert args.module and args.training_script == "hf_segformer.cli"
    assert args.training_script_args == ["train", "--config", "r.yaml", "--max_steps", "5"]


def test_a_config_file_decides_and_num_processes_overrides_it():
    one = launched_with(LaunchRequest(None, str(CONFIGS / "cpu.yaml"), ["--config", "r.yaml"]))
    assert one.config_file == str(CONFIGS / "cpu.yaml") and one.num_processes is None and not one.multi_gpu
    assert one.mixed_precision is None  # the config file's, not forced
    more = launched_with(LaunchRequest(3, str(CONFIGS / "cpu.yaml"), []))
    assert more.num_processes == 3 and more.multi_gpu  # a one-process config given more processes: DDP
    ddp = launched_with(LaunchRequest(None, str(CONFIGS / "cpu_2proc.yaml"), []))
    assert not ddp.multi_gpu and ddp.main_process_port == 0  # its distributed_type already says MULTI_GPU


def test_a_process_started_by_a_launcher_does_not_launch_again(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RecipeError, match="itself started by a launcher"):
        launch(LaunchRequest(2, None, []))


def test_a_bad_recipe_is_refused_once_before_any_process_starts(capsys):
    assert cli.main(["train", "--num_processes", "2", "--config", str(REPO / "recipes/quickstart.yaml"),
                     "--no_such_field", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: Unknown command-line option(s) '--no_such_field'") == 1


# ---- env ----------------------------------------------------------------------------------------------------

def test_env_prints_versions_devices_cpu_and_what_auto_picks(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for package in ("torch", "transformers", "datasets", "accelerate", "evaluate", "huggingface_hub"):
        assert f"- {package}: {metadata.version(package)}\n" in out
    assert f"- python: {sys.version.split()[0]} " in out
    assert "- CUDA devices: " in out and "- MPS: " in out
    flags = runtime.cpu_flags() or set()
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"):
        assert f"{flag} {'yes' if flag in flags else 'no'}" in out
    assert f"- usable cores: {runtime.usable_cores()} " in out
    precision = runtime.choose_precision("auto", False, False, on_cpu=not runtime.has_accelerator())
    assert f"- precision: auto: {precision.value} ({precision.why})" in out
    workers = runtime.choose_loader_workers("auto", on_accelerator=runtime.has_accelerator())
    assert f"- dataloader_num_workers: auto: {workers.value} ({workers.why})" in out
    assert out.count("```") == 2  # one block to paste


# ---- light commands ------------------------------------------------------------------------------------------

def test_light_commands_import_neither_torch_nor_transformers():
    code = ("import sys\nfrom hf_segformer.cli import main\n"
            "for argv in (['--help'], ['coco-to-masks', '--help'], ['make-synthetic', '--help'], "
            "['import-annotations', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], env=offline_env(), capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_env_imports_no_transformers():
    code = "import sys\nfrom hf_segformer.cli import main\nmain(['env'])\nprint('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=offline_env(), capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


# ---- one option style, old spellings deprecated -------------------------------------------------------------

def test_positional_model_folders_become_model_with_one_warning(capsys):
    assert leading_positionals(["m", "out.onnx", "--opset", "17"], "export-onnx", ("--model", "--output_path")) \
        == ["--model", "m", "--output_path", "out.onnx", "--opset", "17"]
    assert leading_positionals(["m", "a/", "b/", "--top", "2"], "rank-unlabelled", ("--model",), rest="--inputs") \
        == ["--model", "m", "--inputs", "a/", "b/", "--top", "2"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        ("warning: `hf-segformer export-onnx MODEL OUTPUT_PATH` (positional arguments) is deprecated and will stop "
         "working in the next release; write `hf-segformer export-onnx --model MODEL --output_path OUTPUT_PATH`."),
        ("warning: `hf-segformer rank-unlabelled MODEL INPUTS...` (positional arguments) is deprecated and will "
         "stop working in the next release; write `hf-segformer rank-unlabelled --model MODEL --inputs INPUTS...`.")]
    assert leading_positionals(["--model", "m"], "deploy-report", ("--model",)) == ["--model", "m"]
    assert capsys.readouterr().err == ""  # the new spelling: no warning


def test_hyphenated_option_is_renamed_with_a_warning(capsys):
    assert renamed_options(["--export-space=x", "--model", "m"], "demo", {"--export-space": "--export_space"}) \
        == ["--export_space=x", "--model", "m"]
    assert "`hf-segformer demo --export-space` is deprecated" in capsys.readouterr().err


def test_booleans_take_a_bare_flag_or_a_value(tmp_path, capsys):
    """coco-to-masks as the example of the argparse commands: `--overwrite`, `--overwrite true` and
    `--overwrite false` all parse; the old positional output folder still works, with a warning."""
    import json

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
                                       "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    split = ["--split", "train", str(annotations), str(images)]
    assert cli.main(["coco-to-masks", "--out", str(tmp_path / "out"), *split]) == 0
    assert cli.main(["coco-to-masks", "--out", str(tmp_path / "out"), *split, "--overwrite", "false"]) == 2
    assert cli.main(["coco-to-masks", "--out", str(tmp_path / "out"), *split, "--overwrite", "true"]) == 0
    assert cli.main(["coco-to-masks", "--out", str(tmp_path / "out"), "--overwrite", *split]) == 0
    capsys.readouterr()
    assert cli.main(["coco-to-masks", *split, str(tmp_path / "old")]) == 0
    assert "`hf-segformer coco-to-masks OUTPUT_DIR` (a positional output folder) is deprecated" in \
        capsys.readouterr().err
    assert (tmp_path / "old" / "masks" / "train" / "a.png").is_file()
