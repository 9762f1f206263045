"""Losses and optimiser recipe on the Dubai aerial set: what helps the rare classes, at a fixed CPU budget.

Every case trains SegFormer-B0 (random init, seed 42, identical data order and augmentation) from
`recipes/aerial/segformer-b0.yaml` for the same number of steps, then evaluates on the validation split at
native resolution. Cases: loss ∈ {CE, class-weighted CE (median-frequency, clipped at 10), CE + 0.5·Dice} ×
optimiser ∈ {plain Trainer: one learning rate, linear decay, no warm-up; published SegFormer recipe: decode
head at 10× the learning rate, linear warm-up then poly (power 1) decay}, plus CE with the loss at the logits'
resolution (`loss_resolution: logits`). Each case runs in its own process; the table gives mIoU, mean
accuracy, the IoU of the rare classes (road 9 % of the training pixels, unlabeled 0.6 %) and the wall time.

    python benchmarks/bench_aerial_losses.py                 # 500 steps per case, about 5 min each on 2 cores
    python benchmarks/bench_aerial_losses.py --steps 20 --cases ce      # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from workers import RECIPE_FIXED_WORK

ROOT = Path(__file__).resolve().parents[1]
RARE = ("road", "unlabeled")
LOSSES = {
    "ce": [],
    "weighted_ce": ["--class_weights", "median_frequency"],
    "ce+dice": ["--loss", '{"ce": 1.0, "dice": 0.5}'],
}
OPTIMISERS = {
    "plain": ["--head_lr_multiplier", "1.0", "--lr_scheduler_type", "linear", "--warmup_steps", "0"],
    "recipe": ["--head_lr_multiplier", "10.0", "--lr_scheduler_type", "polynomial",
               "--lr_scheduler_kwargs", '{"power": 1.0, "lr_end": 0.0}', "--warmup_steps", "0.05"],
}
CASES = {f"{loss}/{opt}": LOSSES[loss] + OPTIMISERS[opt] for loss in LOSSES for opt in OPTIMISERS}
CASES["ce/recipe/loss@logits"] = OPTIMISERS["recipe"] + ["--loss_resolution", "logits"]


def run_case(name: str, extra: list[str], cli: argparse.Namespace) -> dict:
    output_dir = Path(cli.output_dir) / name.replace("/", "_").replace("+", "_").replace("@", "_")
    command = [sys.executable, str(ROOT / "recipes/finetune.py"), "--config", str(ROOT / "recipes/aerial/segformer-b0.yaml"),
               "--data_dir", str(cli.data_dir), "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
               "--max_steps", str(cli.steps), *RECIPE_FIXED_WORK, "--crop_size", str(cli.crop_size),
               "--train_scale", str(2 * cli.crop_size), str(cli.crop_size), "--learning_rate", str(cli.learning_rate),
               "--per_device_train_batch_size", str(cli.batch_size), "--bf16", "true", "--eval_strategy", "no",
               "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
               "--logging_steps", "50", "--seed", "42", *extra]
    env = {"OMP_NUM_THREADS": str(cli.threads), **os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stdout[-2000:] + result.stderr[-4000:], file=sys.stderr)
        return {"error": f"exit {result.returncode}", "seconds": seconds}
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return {"seconds": seconds, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared/datasets/dubai_aerial"))
    parser.add_argument("--output_dir", default=str(ROOT / "outputs/bench-aerial-losses"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--crop_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=6e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads per run (OMP_NUM_THREADS, unless set); 1 on a busy machine")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"subset of {list(CASES)}")
    cli = parser.parse_args()
    if not Path(cli.data_dir).is_dir():
        sys.exit(f"{cli.data_dir} is absent: the shared datasets sit beside the project (../shared/datasets).")

    rows = []
    for name in cli.cases:
        print(f"running {name} ...", flush=True)
        rows.append((name, run_case(name, CASES[name], cli)))
        print(json.dumps({k: v for k, v in rows[-1][1].items() if "iou" in k or k == "seconds"}), flush=True)

    print(f"\nB0 random init, {cli.steps} steps, crop {cli.crop_size}, batch {cli.batch_size}, bf16, "
          f"lr {cli.learning_rate}, seed 42; validation split at native resolution\n")
    print("| case | mIoU | mean acc | IoU " + " | IoU ".join(RARE) + " | minutes |")
    print("|---|---|---|" + "---|" * len(RARE) + "---|")
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | {r['error']} |")
            continue
        rare = " | ".join(f"{r.get(f'eval_iou_{c}', float('nan')):.3f}" for c in RARE)
        print(f"| {name} | {r['eval_mean_iou']:.3f} | {r['eval_mean_accuracy']:.3f} | {rare} | {r['seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main()
