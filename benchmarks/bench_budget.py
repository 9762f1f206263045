"""Levers for rare classes at one wall-clock budget on the Dubai aerial set (`max_time`), side by side.

Every case trains SegFormer-B0 from random init with `recipes/aerial/segformer-b0.yaml` (crop 256 here, seed 42)
for the same `max_time`; the budget fixes each run's steps from its own measured step time, so a lever that
slows a step pays for it in steps. The cases run at the same time (one torch thread each) so that they share the
machine's load; the table gives the validation mIoU, the IoU of the rarest classes and the steps each run got.

    python benchmarks/bench_budget.py --max_time 8m                       # four cases at once
    python benchmarks/bench_budget.py --max_time 90s --cases today ema    # smoke test
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
RARE = ("unlabeled", "road", "water")
CASES = {
    "today": [],
    "rare_class_sampling": ["--rare_class_sampling", "true"],
    "ema": ["--ema_decay", "0.99"],
    "rare+ema": ["--rare_class_sampling", "true", "--ema_decay", "0.99"],
}


def start_case(name: str, cli: argparse.Namespace) -> tuple[subprocess.Popen, Path, float]:
    output_dir = Path(cli.output_dir) / name.replace("+", "_")
    command = [sys.executable, str(ROOT / "recipes/finetune.py"), "--config", str(ROOT / "recipes/aerial/segformer-b0.yaml"),
               "--data_dir", str(cli.data_dir), "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
               "--max_time", cli.max_time, "--crop_size", str(cli.crop_size),
               "--train_scale", str(2 * cli.crop_size), str(cli.crop_size), "--seed", str(cli.seed),
               "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
               "--report_to", "none", "--logging_steps", "10", "--dataloader_num_workers", "1", *CASES[name]]
    env = {**os.environ, "OMP_NUM_THREADS": str(cli.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(Path(cli.output_dir) / f"{name.replace('+', '_')}.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), output_dir, time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared/datasets/dubai_aerial"))
    parser.add_argument("--output_dir", default=str(ROOT / "outputs/bench-budget"))
    parser.add_argument("--max_time", default="8m")
    parser.add_argument("--crop_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (they run at once)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"subset of {list(CASES)}")
    cli = parser.parse_args()
    if not Path(cli.data_dir).is_dir():
        sys.exit(f"{cli.data_dir} is absent: the shared datasets sit beside the project (../shared/datasets).")
    Path(cli.output_dir).mkdir(parents=True, exist_ok=True)

    running = {name: start_case(name, cli) for name in cli.cases}
    rows = []
    for name, (process, output_dir, started) in running.items():
        code = process.wait()
        seconds = time.time() - started
        if code != 0:
            rows.append((name, {"error": f"exit {code} (see {output_dir}.log)"}))
            continue
        results = json.loads((output_dir / "all_results.json").read_text())
        rows.append((name, {**results, "seconds": seconds}))

    print(f"\nB0 random init, max_time {cli.max_time} per case ({len(cli.cases)} at once, {cli.threads} thread each), "
          f"crop {cli.crop_size}, seed {cli.seed}; validation split at native resolution\n")
    print("| case | mIoU | mean acc | IoU " + " | IoU ".join(RARE) + " | steps | budget used (s) |")
    print("|---|---|---|" + "---|" * len(RARE) + "---|---|")
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | {r['error']} |")
            continue
        rare = " | ".join(f"{r.get(f'eval_iou_{c}', float('nan')):.3f}" for c in RARE)
        print(f"| {name} | {r['eval_mean_iou']:.3f} | {r['eval_mean_accuracy']:.3f} | {rare} | "
              f"{r.get('budget_steps')} | {r.get('budget_spent_s')} |")


if __name__ == "__main__":
    main()
