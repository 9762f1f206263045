"""CPU training throughput: 1 process vs 2 DDP processes, fp32 vs bf16 autocast, side by side.

SegFormer-B0 (from config) on the synthetic shapes set at 256×256, global batch 8 (1 process × 8, or 2
processes × 4 through `accelerate_configs/cpu_2proc.yaml`), the real `recipes/finetune.py` path. Each
configuration trains twice, for `--short` and `--long` steps; the difference of the Trainer's `train_runtime`
over the difference of steps is the steady-state time per step (start-up, data loading warm-up and the first
slow steps cancel out). Threads: 1 process uses every core, 2 processes one core each.

    python benchmarks/bench_train_throughput.py             # about 6 minutes on 2 cores
    python benchmarks/bench_train_throughput.py --short 2 --long 4 --configs 1proc-fp32   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
CONFIGS = {  # name: (processes, bf16)
    "1proc-fp32": (1, False),
    "1proc-bf16": (1, True),
    "2proc-fp32": (2, False),
    "2proc-bf16": (2, True),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_runtime(processes: int, bf16: bool, steps: int, cli: argparse.Namespace, output_dir: Path) -> float:
    cores = os.cpu_count() or 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, cores // processes))}
    recipe = ["--data_dir", str(cli.data_dir), "--synthetic_data", "true", "--synthetic_image_size", "256",
              "--synthetic_num_train", "64", "--synthetic_num_validation", "8", "--crop_size", "256",
              "--train_scale", "512", "256", "--per_device_train_batch_size", str(8 // processes),
              "--max_steps", str(steps), "--bf16", str(bf16).lower(), "--eval_strategy", "no",
              "--save_strategy", "no", "--report_to", "none", "--check_data", "false", "--logging_steps", "1000",
              "--lr_scheduler_type", "constant", "--warmup_steps", "0",
              "--dataloader_num_workers", "0", "--dataloader_persistent_workers", "false",
              "--output_dir", str(output_dir), "--overwrite_output_dir", "true", "--seed", "0"]
    if processes == 1:
        command = [sys.executable, str(ROOT / "recipes/finetune.py"), *recipe]
    else:
        command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs/cpu_2proc.yaml"),
                   "--main_process_port", str(free_port()), str(ROOT / "recipes/finetune.py"), *recipe]
        env["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-1500:] + result.stderr[-3000:])
    return json.loads((output_dir / "train_results.json").read_text())["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=5)
    parser.add_argument("--long", type=int, default=25)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--data_dir", default=str(ROOT / "outputs/data/synthetic-shapes-256"))
    parser.add_argument("--output_dir", default=str(ROOT / "outputs/bench-throughput"))
    cli = parser.parse_args()

    rows = {}
    for name in cli.configs:
        processes, bf16 = CONFIGS[name]
        times = [train_runtime(processes, bf16, steps, cli, Path(cli.output_dir) / f"{name}-{steps}")
                 for steps in (cli.short, cli.long)]
        rows[name] = (times[1] - times[0]) / (cli.long - cli.short)
        print(f"{name}: {rows[name]:.3f} s/step", flush=True)

    baseline = rows.get("1proc-fp32")
    print(f"\nSegFormer-B0, 256×256 crops, global batch 8, {os.cpu_count()} CPU cores, steady state over steps "
          f"{cli.short}–{cli.long}\n")
    print("| configuration | s/step | images/s | vs 1 process fp32 |")
    print("|---|---|---|---|")
    for name, seconds in rows.items():
        ratio = f"{baseline / seconds:.2f}×" if baseline else "n/a"
        print(f"| {name} | {seconds:.3f} | {8 / seconds:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
