"""Deploy report on the aerial set: PyTorch fp32/bf16, ONNX fp32, ONNX INT8 dynamic/static, OpenVINO fp32/bf16/INT8
(with the openvino extra) and token merging, side by side in one run (`hf-segformer deploy-report`); the ONNX rows
hold the folded decode head, as export-onnx writes it, and one fp32 row the head as saved, for comparison.

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
fp32; mIoU and peak memory come from a fresh process per row. The report names the recommended row (the fastest
within 0.5 mIoU points of PyTorch fp32); this script judges it against the development goal (≥ 3× PyTorch fp32 on a
CPU with VNNI/AMX, ≥ 1.5× on one without, with ≤ 0.5 mIoU points lost; the user's report carries no goal), prints
the CPU model and flags it ran on, and writes deploy_report.md/.json and the exported files to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hf_segformer.commands.deploy_report import main as deploy_report_command
from hf_segformer.evaluation.deploy.rows import DEFAULT_ROWS, ROWS
from hf_segformer.runtime import cpu_has_native_bf16, cpu_info, cpu_int8_features

ROOT = Path(__file__).resolve().parents[1]
# The goal for the recommended row: speed-up over PyTorch fp32 (with VNNI/AMX, without) and mIoU points it may lose.
GOAL_SPEEDUP_INT8_CPU, GOAL_SPEEDUP_OTHER_CPU, GOAL_MAX_LOSS_POINTS = 3.0, 1.5, 0.5


def machine_line() -> str:
    """The CPU model and the flags that decide the rows (bf16, INT8), for the benchmark table."""
    features = cpu_int8_features()
    flags = [name for name, present in {**features, "native bf16": bool(cpu_has_native_bf16())}.items() if present]
    return f"CPU: {cpu_info('model name') or 'unknown'}; flags: {', '.join(flags) or 'none of avx2/avx512/vnni/amx'}"


def goal_line(report: dict) -> str:
    """The goal's verdict for the report's recommended row: met or missed, and by what."""
    features = cpu_int8_features()
    target = GOAL_SPEEDUP_INT8_CPU if features["vnni"] or features["amx_int8"] else GOAL_SPEEDUP_OTHER_CPU
    chosen = report.get("recommendation")
    if not chosen or chosen.get("speedup_vs_pytorch_fp32") is None:
        return f"Goal (recommended row ≥ {target:g}× PyTorch fp32, ≤ {GOAL_MAX_LOSS_POINTS} points): no recommendation."
    speedup, change = chosen["speedup_vs_pytorch_fp32"], chosen["miou_change_points"]
    missed = []
    if speedup < target:
        missed.append(f"speed-up {speedup:.2f}× < {target:g}×")
    if change < -GOAL_MAX_LOSS_POINTS:
        missed.append(f"{-change:.2f} mIoU points lost > {GOAL_MAX_LOSS_POINTS}")
    verdict = "**missed**: " + "; ".join(missed) if missed else "**met**"
    return (f"Goal (recommended row ≥ {target:g}× PyTorch fp32 with ≤ {GOAL_MAX_LOSS_POINTS:g} mIoU points lost): "
            f"{chosen['label']}: {speedup:.2f}×, {change:+.2f} points — {verdict}.")


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
    argv = ["--model", args.model_dir, "--config", args.recipe, "--eval_split", args.eval_split,
            "--threads", str(args.threads), "--repeats", str(args.repeats), "--timing_images",
            str(args.timing_images), "--num_calibration_images", str(args.num_calibration_images),
            "--rows", *args.rows]
    argv += ["--data_dir", args.data_dir] if args.data_dir else []
    argv += ["--output_dir", args.output_dir] if args.output_dir else []
    argv += ["--overwrite"] if args.overwrite else []
    started = time.perf_counter()
    code = deploy_report_command(argv)
    output_dir = Path(args.output_dir or Path(args.model_dir) / "deploy_report")
    print(machine_line())
    if code == 0:
        print(goal_line(json.loads((output_dir / "deploy_report.json").read_text())))
    print(f"(bench_deploy.py: {time.perf_counter() - started:.0f} s in all)")
    return code


if __name__ == "__main__":
    sys.exit(main())
