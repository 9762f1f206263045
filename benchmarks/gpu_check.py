"""The GPU path, end to end, in a few minutes: training in fp16 and in bf16 on one GPU, DDP over every GPU present,
then evaluate, predict and export-onnx on CUDA. Prints one line per step with its figures (time, steps/s, peak GPU
memory, mIoU) and exits non-zero when a step fails, so one call on a lent GPU machine says what works.

    python benchmarks/gpu_check.py                 # on a machine with CUDA GPUs (under 10 minutes on one H100)
    python benchmarks/gpu_check.py --smoke         # the same commands on the CPU in fp32, tiny: checks the script

Everything is written under --work (default outputs/gpu_check); the synthetic shapes data is generated there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(name: str, command: list[str], results: list[dict], timeout: int) -> bool:
    """Run one step; record its wall time and exit code, and print its last lines when it fails."""
    start = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, output = 124, f"timed out after {timeout} s\n{err.stdout or ''}{err.stderr or ''}"
    seconds = time.monotonic() - start
    results.append({"step": name, "exit": code, "seconds": round(seconds, 1)})
    print(f"{name:28s} exit {code:3d}  {seconds:7.1f} s", flush=True)
    if code != 0:
        print("\n".join(str(output).splitlines()[-25:]), flush=True)
    return code == 0


def train_figures(run_dir: Path) -> dict:
    """Steps/s, peak GPU memory and mIoU of a finished training run, from the files it wrote."""
    train = json.loads((run_dir / "train_results.json").read_text()) if (run_dir / "train_results.json").is_file() else {}
    evals = json.loads((run_dir / "eval_results.json").read_text()) if (run_dir / "eval_results.json").is_file() else {}
    return {"steps_per_s": train.get("train_steps_per_second"), "peak_gpu_gb": train.get("train_peak_gpu_memory_gb"),
            "eval_mean_iou": evals.get("eval_mean_iou")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="outputs/gpu_check")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each training run")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, a few steps: check the script itself")
    args = parser.parse_args()
    work = (REPO / args.work).resolve()
    if work.exists():
        shutil.rmtree(work)  # the script's own folder: nothing of the user's lives there
    work.mkdir(parents=True)
    python, results = sys.executable, []
    steps = 4 if args.smoke else args.steps
    gpus = 0
    if not args.smoke:
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            print("No CUDA GPU here: run with --smoke to check the script on the CPU.")
            return 2
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s): "
              + ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)), flush=True)
    run("env", [python, "-m", "hf_segformer.cli", "env"], results, 60)
    data = work / "data"
    run("make-synthetic", [python, "-m", "hf_segformer.cli", "make-synthetic", str(data), "--num_train", "256",
                           "--num_validation", "32", "--image_size", "128"], results, 120)
    common = ["--config", "recipes/quickstart.yaml", "--data_dir", str(data), "--synthetic_data", "false",
              "--max_steps", str(steps), "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
              "--logging_steps", "20", "--overwrite_output_dir", "true"]
    launch = [python, "-m", "accelerate.commands.launch"]
    precisions = ["fp32"] if args.smoke else ["fp16", "bf16"]
    for precision in precisions:
        config = "accelerate_configs/default.yaml"
        run(f"train 1 process {precision}", [*launch, "--config_file", config, "recipes/finetune.py", *common,
                                             "--precision", precision, "--output_dir", str(work / f"run-{precision}")],
            results, 600)
        results[-1].update(train_figures(work / f"run-{precision}"))
    if gpus > 1:
        run(f"train DDP {gpus} GPUs bf16", [*launch, "--config_file", "accelerate_configs/multi_gpu_bf16.yaml",
                                            "--num_processes", str(gpus), "recipes/finetune.py", *common,
                                            "--output_dir", str(work / "run-ddp")], results, 600)
        results[-1].update(train_figures(work / "run-ddp"))
    model = work / f"run-{precisions[-1]}"
    device = ["--device", "cpu"] if args.smoke else ["--device", "cuda"]
    run("evaluate fp32", [python, "-m", "hf_segformer.cli", "evaluate", "--model", str(model), "--data_dir",
                          str(data), *device, "--eval_output_dir", str(work / "eval")], results, 300)
    summary = work / "eval" / "eval_results.json"
    if summary.is_file():
        results[-1]["eval_mean_iou"] = json.loads(summary.read_text()).get("eval_mean_iou")
    run("predict", [python, "-m", "hf_segformer.cli", "predict", "--model", str(model), "--inputs",
                    str(data / "images" / "validation"), "--predictions_dir", str(work / "masks"), *device],
        results, 300)
    run("export-onnx", [python, "-m", "hf_segformer.cli", "export-onnx", "--model", str(model), "--output_path",
                        str(work / "model.onnx")],
        results, 300)
    print(json.dumps(results, indent=1))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
