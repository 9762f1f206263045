"""LoRA vs full fine-tuning at the same wall-clock budget, from one model trained on a shared set (no Hub).

1. A base SegFormer-B0 is trained from random init on `--base_data_dir` (default the Dubai aerial set) for
   `--base_time`, with `recipes/aerial/segformer-b0.yaml` (or `--base_model` reuses a trained run's folder).
2. From that base, two runs on `--data_dir` with the same recipe, seed and `--time` budget (`max_time`: the budget
   fixes the steps and the schedule of each): `full` trains every weight, `lora` trains LoRA adapters
   (`--lora`, default r 32, alpha 32 on query/value) plus the decode head in full.
Each run is its own process (loader workers 0, so the process's peak resident memory is the run's); the table
gives trainable parameters, the saved size (adapter vs whole model), peak memory (CPU: peak RSS; CUDA: the
Trainer's peak allocated), mean step time and validation mIoU at native resolution.

    python benchmarks/bench_lora.py                               # base 10 min, 5 min per arm
    python benchmarks/bench_lora.py --base_time 3m30s --time 2m   # about 10 minutes in all (start-ups included)
    python benchmarks/bench_lora.py --base_time 20s --time 20s --crop_size 128      # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/aerial/segformer-b0.yaml"
ARMS = ("full", "lora")


def run_recipe(output_dir: Path, cli: argparse.Namespace, budget: str, data_dir: str, *extra: str) -> dict:
    """One run in its own process; its results, peak resident memory (bytes) and wall time."""
    command = [sys.executable, str(ROOT / "recipes/finetune.py"), "--config", str(RECIPE), "--data_dir", data_dir,
               "--output_dir", str(output_dir), "--overwrite_output_dir", "true", "--max_time", budget,
               "--crop_size", str(cli.crop_size), "--train_scale", str(3 * cli.crop_size), str(cli.crop_size),
               "--eval_scale", str(6 * cli.crop_size), str(3 * cli.crop_size), "--dataloader_num_workers", "0",
               "--dataloader_persistent_workers", "false", "--eval_strategy", "no", "--save_strategy", "no",
               "--report_to", "none", "--seed", "42", "--learning_rate", str(cli.learning_rate), *extra]
    env = {"OMP_NUM_THREADS": str(cli.threads), **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    log = output_dir.parent / f"{output_dir.name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{output_dir.name} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}")
    results = json.loads((output_dir / "all_results.json").read_text())
    return {"results": results, "peak_rss": usage.ru_maxrss * 1024, "seconds": seconds}


def trainable_parameters(run: Path, arm: str) -> int:
    """Parameters the optimizer updated: the adapter file's tensors (LoRA + decode head), or the whole model."""
    from safetensors.torch import load_file

    weights = run / ("adapter_model.safetensors" if arm == "lora" else "model.safetensors")
    return sum(tensor.numel() for name, tensor in load_file(weights).items()
               if not name.endswith(("running_mean", "running_var", "num_batches_tracked")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared/datasets/dubai_aerial"))
    parser.add_argument("--base_data_dir", default=None, help="the base model's training set (default --data_dir)")
    parser.add_argument("--base_model", default=None, help="a trained run's folder to start from (skips step 1)")
    parser.add_argument("--output_dir", default=str(ROOT / "outputs/bench-lora"))
    parser.add_argument("--base_time", default="10m")
    parser.add_argument("--time", default="5m", help="the same wall-clock budget for each arm")
    parser.add_argument("--lora", default="{r: 32, alpha: 32}", help="the lora field of the LoRA arm")
    parser.add_argument("--learning_rate", type=float, default=6e-4)
    parser.add_argument("--crop_size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    cli = parser.parse_args()
    for folder in (cli.data_dir, cli.base_data_dir or cli.data_dir):
        if not Path(folder).is_dir():
            sys.exit(f"{folder} is absent: the shared datasets sit beside the project (../shared/datasets).")
    output = Path(cli.output_dir)
    base = Path(cli.base_model) if cli.base_model else output / "base"
    if not cli.base_model:
        print(f"training the base model ({cli.base_time}) ...", flush=True)
        run_recipe(base, cli, cli.base_time, cli.base_data_dir or cli.data_dir)
    rows = {}
    for arm in ARMS:
        print(f"fine-tuning: {arm} ({cli.time}) ...", flush=True)
        extra = ["--model_name_or_path", str(base), "--ignore_mismatched_sizes", "true",
                 "--drop_path_rate", "0.0", "--classifier_dropout_prob", "0.0"]
        if arm == "lora":
            extra += ["--lora", cli.lora, "--ema_decay", "null"]  # the average of frozen weights is wasted memory
        else:
            extra += ["--ema_decay", "null"]  # the same for both arms
        rows[arm] = run_recipe(output / arm, cli, cli.time, cli.data_dir, *extra)
    print(f"\nLoRA vs full fine-tuning, {cli.time} each from {base.name} on {Path(cli.data_dir).name}, "
          f"crop {cli.crop_size}, {cli.threads} threads\n")
    start_results = base / "all_results.json"  # where the two arms start from
    if start_results.is_file():
        start_miou = json.loads(start_results.read_text()).get("eval_mean_iou", float("nan"))
        print(f"Starting point ({base.name}): val mIoU {start_miou:.4f}\n")
    print("| arm | trainable parameters | saved size | peak memory | step time | steps | val mIoU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm, row in rows.items():
        run, results = output / arm, row["results"]
        weights = run / ("adapter_model.safetensors" if arm == "lora" else "model.safetensors")
        steps = json.loads((run / "trainer_state.json").read_text())["global_step"]
        step_s = results.get("budget_step_time_s")  # the budget's own measure: steps only, no start-up
        step_ms = 1000 * (step_s if step_s else results["train_runtime"] / max(steps, 1))
        memory = (f"{results['train_peak_gpu_memory_gb']:.2f} GB GPU" if "train_peak_gpu_memory_gb" in results
                  else f"{row['peak_rss'] / 2**30:.2f} GiB RSS")
        print(f"| {arm} | {trainable_parameters(run, arm):,} | {weights.stat().st_size / 2**20:.1f} MiB | {memory} | "
              f"{step_ms:.0f} ms | {steps} | {results.get('eval_mean_iou', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
