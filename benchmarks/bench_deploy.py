"""Deploy report on the aerial set: PyTorch fp32/bf16, ONNX fp32, ONNX INT8 dynamic/static and token merging, side
by side in one run (`hf-segformer deploy-report`); the ONNX rows hold the folded decode head, as export-onnx writes
it, and one fp32 row the head as saved, for comparison.

The model: SegFormer-B0 (random init) trained on the aerial train split with the project's recipe, e.g.

    nice -n 10 python recipes/finetune.py --config recipes/aerial/segformer-b0.yaml --output_dir outputs/aerial-b0-300 \
        --crop_size 256 --per_device_train_batch_size 4 --max_steps 300 --max_time null --bf16 false \
        --eval_strategy no --save_strategy no --load_best_model_at_end false --dataloader_num_workers 1 \
        --rare_class_sampling false \
        --rare_class_crop_prob 0 --ema_decay null --learning_rate 6e-4 --train_scale 512 256

then (validation split: 8 images, each mask at its native size; calibration: 16 train images):

    python benchmarks/bench_deploy.py --model_dir outputs/aerial-b0-300 --threads 1

Every figure is measured in this run (hf_segformer/evaluation/deploy/): ms/image is the median of interleaved rounds
(each round runs every row once, in turn), speed-ups are medians of per-round ratios to PyTorch fp32 and to ONNX
fp32; mIoU and peak memory come from a fresh process per row. The script prints the table and the goal's verdict
(INT8 static ≥ 1.5× ONNX fp32 with ≤ 1 mIoU point lost: a development goal, so this script judges it, not the
user's report), and writes deploy_report.md/.json and the ONNX files to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hf_segformer.commands.deploy_report import main as deploy_report_command
from hf_segformer.evaluation.deploy.rows import DEFAULT_ROWS, ROWS

ROOT = Path(__file__).resolve().parents[1]
# The goal for the INT8 static row: at least this speed-up over ONNX fp32, at most this mIoU loss (points).
GOAL_ROW, GOAL_SPEEDUP, GOAL_MAX_LOSS_POINTS = "onnx-int8-static", 1.5, 1.0


def goal_line(report: dict) -> str:
    """The goal's verdict from deploy_report.json: met or missed, and by what."""
    row = next((r for r in report["rows"] if r["key"] == GOAL_ROW), None)
    if row is None or row["speedup_vs_onnx_fp32"] is None or row["miou_change_points"] is None:
        return "Goal (INT8 static ≥ 1.5× ONNX fp32, ≤ 1 mIoU point lost): not measured (row missing or failed)."
    speedup, change = row["speedup_vs_onnx_fp32"], row["miou_change_points"]
    missed = []
    if speedup < GOAL_SPEEDUP:
        missed.append(f"speed-up {speedup:.2f}× < {GOAL_SPEEDUP}×")
    if change < -GOAL_MAX_LOSS_POINTS:
        missed.append(f"{-change:.2f} mIoU points lost > {GOAL_MAX_LOSS_POINTS}")
    verdict = "**missed**: " + "; ".join(missed) if missed else "**met**"
    return (f"Goal (INT8 static ≥ {GOAL_SPEEDUP}× ONNX fp32 with ≤ {GOAL_MAX_LOSS_POINTS:g} mIoU point lost): "
            f"{speedup:.2f}×, {change:+.2f} points — {verdict}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a trained aerial model folder")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/aerial/segformer-b0.yaml"))
    parser.add_argument("--data_dir", help="default: the recipe's data_dir (run from the repository root)")
    parser.add_argument("--eval_split", default="val")
    parser.add_argument("--output_dir", help="default: MODEL/deploy_report")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timing_images", type=int, default=2)
    parser.add_argument("--num_calibration_images", type=int, default=16)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    argv = [args.model_dir, "--config", args.recipe, "--eval_split", args.eval_split,
            "--threads", str(args.threads), "--repeats", str(args.repeats), "--timing_images",
            str(args.timing_images), "--num_calibration_images", str(args.num_calibration_images),
            "--rows", *args.rows]
    argv += ["--data_dir", args.data_dir] if args.data_dir else []
    argv += ["--output_dir", args.output_dir] if args.output_dir else []
    argv += ["--overwrite"] if args.overwrite else []
    started = time.perf_counter()
    code = deploy_report_command(argv)
    output_dir = Path(args.output_dir or Path(args.model_dir) / "deploy_report")
    if code == 0:
        print(goal_line(json.loads((output_dir / "deploy_report.json").read_text())))
    print(f"(bench_deploy.py: {time.perf_counter() - started:.0f} s in all)")
    return code


if __name__ == "__main__":
    sys.exit(main())
