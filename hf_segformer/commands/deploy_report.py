"""`hf-segformer deploy-report --model MODEL --config recipe.yaml`: PyTorch fp32/bf16, ONNX fp32, ONNX INT8 and token
merging measured side by side on the recipe's evaluation split (`evaluation.deploy`).

    hf-segformer deploy-report --model MODEL --config recipe.yaml [--output_dir DIR] [--rows ...] [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_segformer.commands.inference_options import has_data, recipe_data_and_settings
from hf_segformer.commands.option_style import add_flag, leading_positionals
from hf_segformer.data.images import image_pixel_limit
from hf_segformer.data.prepare import build_label_decoder
from hf_segformer.errors import RecipeError
from hf_segformer.evaluation.deploy.recommend import DEFAULT_ACCURACY_BUDGET, check_accuracy_budget
from hf_segformer.evaluation.deploy.report import deploy_report
from hf_segformer.evaluation.deploy.rows import DEFAULT_COLLAPSE_POINTS, DEFAULT_ROWS, ROWS
from hf_segformer.inference.calibration_images import DEFAULT_CALIBRATION_IMAGES, calibration_and_check_images
from hf_segformer.inference.quantize import QuantizationSettings
from hf_segformer.modeling.saved_label_map import with_saved_label_map


def main(argv: list[str]) -> int:
    """The deploy table on the recipe's eval split; 0 when every row was measured, 1 when one failed."""
    parser = argparse.ArgumentParser(
        prog="hf-segformer deploy-report", allow_abbrev=False,
        description="Measure, side by side in one run, PyTorch fp32/bf16, ONNX fp32, ONNX INT8 dynamic/static, "
                    "token merging and (with the openvino extra) OpenVINO fp32/bf16/INT8 on the recipe's evaluation "
                    "split: ms/image, file size, peak memory, mIoU and its change against fp32, and the fastest row "
                    "within --accuracy_budget recommended. Writes deploy_report.md/.json and the exported files. "
                    "Other options are recipe "
                    "fields (--config recipe.yaml, --data_dir, --eval_split, --mode, --scale ...).")
    parser.add_argument("--model", required=True, help="a saved model folder (training output_dir)")
    parser.add_argument("--output_dir", help="default: MODEL/deploy_report")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS),
                        help="rows to measure (default: %(default)s)")
    parser.add_argument("--calibration_split", default="train")
    parser.add_argument("--num_calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--threads", type=int, help="CPU threads per row (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (median)")
    parser.add_argument("--timing_images", type=int, default=1, help="images timed per round")
    parser.add_argument("--agreement_images", type=int, default=8,
                        help="images whose masks are compared pixel by pixel with PyTorch fp32 (0: none)")
    parser.add_argument("--accuracy_budget", type=float, default=DEFAULT_ACCURACY_BUDGET,
                        help="the recommendation: the fastest row losing at most this many mIoU points against "
                             "PyTorch fp32 (default %(default)s)")
    parser.add_argument("--collapse_points", type=float, default=DEFAULT_COLLAPSE_POINTS,
                        help="flag a row whose mIoU is more than this many points below PyTorch fp32")
    parser.add_argument("--activation_type", choices=("uint8", "int8"), default=QuantizationSettings.activation_type)
    parser.add_argument("--calibration_method", choices=("minmax", "entropy", "percentile"),
                        default=QuantizationSettings.calibration_method)
    add_flag(parser, "--overwrite", help="replace an existing report and ONNX files")
    add_flag(parser, "--reuse_exports",
             help="measure the ONNX files already in --output_dir instead of exporting them anew")
    args, recipe_argv = parser.parse_known_args(leading_positionals(argv, "deploy-report", ("--model",)))
    check_accuracy_budget(args.accuracy_budget)
    data_args, settings, recipe = recipe_data_and_settings(recipe_argv)
    if not has_data(data_args):
        raise RecipeError("deploy-report measures mIoU on your data: give --config recipe.yaml (or --data_dir).")
    if not (Path(args.model) / "config.json").is_file():
        raise RecipeError(f"{args.model} is not a saved model folder (no config.json); pass a training output_dir.")
    data_args = with_saved_label_map(data_args, args.model)  # raw masks read as in training
    output_dir = Path(args.output_dir or Path(args.model) / "deploy_report")
    needs_static = any(ROWS[key].needs_calibration for key in args.rows) and not args.reuse_exports
    with image_pixel_limit(data_args.max_image_pixels):  # this process and the rows' workers
        calibration, pairs, _ = calibration_and_check_images(
            data_args, args.calibration_split, args.num_calibration_images if needs_static else 0, 0,
            int(recipe.get("seed", 42)))
        if data_args.max_eval_samples:
            pairs = pairs[: data_args.max_eval_samples]
        decoder = build_label_decoder(data_args)  # the one decoder training and evaluation use
        quantization = QuantizationSettings(activation_type=args.activation_type,
                                            calibration_method=args.calibration_method)
        report = deploy_report(
            args.model, pairs, decoder, output_dir, settings=settings, calibration_images=calibration, rows=args.rows,
            threads=args.threads, repeats=args.repeats, timing_images=args.timing_images,
            agreement_images=args.agreement_images, collapse_points=args.collapse_points,
            accuracy_budget=args.accuracy_budget, quantization=quantization,
            overwrite=args.overwrite, reuse_exports=args.reuse_exports,
            facts={"split": data_args.eval_split,
                   "calibration_split": args.calibration_split if needs_static else None})
    print((output_dir / "deploy_report.md").read_text())
    return 1 if any(row.error for row in report.rows) else 0
