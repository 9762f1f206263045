"""The INT8 half of `hf-segformer export-onnx --quantize dynamic|static` and the `deploy-report` command.

    hf-segformer export-onnx MODEL OUT.onnx [--quantize dynamic|static --config recipe.yaml
                                              --calibration_split train --num_calibration_images 16]
    hf-segformer deploy-report MODEL --config recipe.yaml [--output_dir DIR] [--rows ...] [--threads 1]

With --quantize, cli's export-onnx writes the float32 export and its parity report first (as without it), then
the INT8 file to OUT, compared with PyTorch fp32: the random-input check, plus the pixel agreement of the masks on
validation images not used for calibration. Both commands read the recipe's data, hence this module lives beside
the evaluate command rather than in inference/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from hf_segformer.config.data import DataArguments
from hf_segformer.config.parser import parse_command
from hf_segformer.config.values import canonical_split
from hf_segformer.data.images import open_image
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.errors import RecipeError
from hf_segformer.evaluation.deploy_report import DEFAULT_COLLAPSE_POINTS, DEFAULT_ROWS, ROWS, deploy_report
from hf_segformer.evaluation.run import load_split
from hf_segformer.inference.onnx_export import export_onnx
from hf_segformer.inference.quantize import MODES, QuantizationSettings, export_quantized, split_calibration
from hf_segformer.inference.segmenter import InferenceSettings
from hf_segformer.training.arguments import RECIPE_DATACLASSES

DEFAULT_CALIBRATION_IMAGES = 16


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """The INT8 options export-onnx gains; the data options come from the recipe (--config, --data_dir, ...)."""
    parser.add_argument("--quantize", choices=MODES, help="also quantize to INT8 with ONNX Runtime: dynamic (no data) "
                        "or static (QDQ, per-channel weights, calibrated on --num_calibration_images images)")
    parser.add_argument("--calibration_split", default="train",
                        help="split of the recipe's data whose images calibrate static quantization (default train)")
    parser.add_argument("--num_calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="calibration images, spread over the split (default %(default)s)")
    parser.add_argument("--num_check_images", type=int, default=8,
                        help="validation images (not used for calibration) whose masks INT8 and PyTorch are compared on")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_path (with --quantize: the INT8 file too)")


def _data(recipe_argv: list[str]) -> tuple[DataArguments, InferenceSettings, dict[str, Any]]:
    return parse_command(recipe_argv, (DataArguments, InferenceSettings), RECIPE_DATACLASSES)


def _has_data(data_args: DataArguments) -> bool:
    return bool(data_args.data_dir or data_args.dataset_name or data_args.image_dir)


def split_entries(data_args: DataArguments, split: str, seed: int = 42) -> list[Any]:
    """The undecoded (image, label) entries of one split of the recipe's data."""
    dataset = load_split(dataclasses.replace(data_args, eval_split=split), seed)
    return list(zip(dataset["image"], dataset["label"]))


def calibration_and_check_images(data_args: DataArguments, calibration_split: str, count: int, check_count: int,
                                 seed: int = 42) -> tuple[list[Any], list[Any], list[Any]]:
    """Calibration images spread over `calibration_split`; the evaluation split's pairs without them; and up
    to `check_count` of those images for the agreement check."""
    evaluation = split_entries(data_args, data_args.eval_split, seed)
    if canonical_split(calibration_split) == canonical_split(data_args.eval_split):
        calibration, evaluation = split_calibration(evaluation, count)
        if not evaluation:
            raise RecipeError(f"--calibration_split {calibration_split} is the evaluation split and "
                              f"--num_calibration_images {count} would use all of it: nothing would be left to "
                              "measure on. Calibrate on another split (train) or on fewer images.")
    else:
        calibration, _ = split_calibration(split_entries(data_args, calibration_split, seed), count)
    images = [open_image(image) for image, _ in calibration]
    checks = [open_image(image) for image, _ in evaluation[:check_count]]
    return images, evaluation, checks


def quantized_export(args: argparse.Namespace, recipe_argv: list[str]) -> int:
    """export-onnx with --quantize: the float32 export and its parity report, then the INT8 file at
    args.output_path and its check against PyTorch fp32. `args` carries cli's export-onnx options."""
    output = Path(args.output_path)
    if output.exists() and not args.overwrite:
        raise RecipeError(f"{output} exists; choose another path or pass --overwrite.")
    data_args, settings, recipe = _data(recipe_argv)
    calibration, checks = None, []
    if args.quantize == "static" or _has_data(data_args):
        if not _has_data(data_args):
            raise RecipeError("--quantize static calibrates on images of your data: give --config recipe.yaml (or "
                              "--data_dir) and --calibration_split.")
        if args.num_calibration_images < 1:
            raise RecipeError(f"--num_calibration_images must be at least 1; got {args.num_calibration_images}.")
        calibration, _, checks = calibration_and_check_images(
            data_args, args.calibration_split, args.num_calibration_images, args.num_check_images,
            int(recipe.get("seed", 42)))
    with tempfile.TemporaryDirectory(prefix="hf-segformer-export-") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        fp32_checks = export_onnx(args.model_dir, fp32_path, args.opset, args.sample_size, args.check_size,
                                  args.dynamo)
        if not all(check.passed for check in fp32_checks):
            print("error: the float32 export does not match PyTorch, so it is not quantized.", file=sys.stderr)
            return 1
        outcome = export_quantized(args.model_dir, fp32_path, output, args.quantize,
                                   calibration if args.quantize == "static" else None, checks, settings,
                                   check_sizes=[tuple(s) for s in args.check_size] if args.check_size else None,
                                   overwrite=args.overwrite)
    return 0 if outcome.passed else 1


def deploy_report_command(argv: list[str]) -> int:
    """`hf-segformer deploy-report MODEL --config recipe.yaml`: the deploy table on the recipe's eval split."""
    parser = argparse.ArgumentParser(
        prog="hf-segformer deploy-report", allow_abbrev=False,
        description="Measure, side by side in one run, PyTorch fp32/bf16, ONNX fp32, ONNX INT8 dynamic/static and "
                    "token merging on the recipe's evaluation split: ms/image, file size, peak memory, mIoU and its "
                    "change against fp32. Writes deploy_report.md/.json and the ONNX files. Other options are recipe "
                    "fields (--config recipe.yaml, --data_dir, --eval_split, --mode, --scale ...).")
    parser.add_argument("model", help="a saved model folder (training output_dir)")
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
    parser.add_argument("--collapse_points", type=float, default=DEFAULT_COLLAPSE_POINTS,
                        help="flag a row whose mIoU is more than this many points below PyTorch fp32")
    parser.add_argument("--activation_type", choices=("uint8", "int8"), default=QuantizationSettings.activation_type)
    parser.add_argument("--calibration_method", choices=("minmax", "entropy", "percentile"),
                        default=QuantizationSettings.calibration_method)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report and ONNX files")
    parser.add_argument("--reuse_exports", action="store_true",
                        help="measure the ONNX files already in --output_dir instead of exporting them anew")
    args, recipe_argv = parser.parse_known_args(argv)
    data_args, settings, recipe = _data(recipe_argv)
    if not _has_data(data_args):
        raise RecipeError("deploy-report measures mIoU on your data: give --config recipe.yaml (or --data_dir).")
    if not (Path(args.model) / "config.json").is_file():
        raise RecipeError(f"{args.model} is not a saved model folder (no config.json); pass a training output_dir.")
    output_dir = Path(args.output_dir or Path(args.model) / "deploy_report")
    needs_static = any(ROWS[key].quantize == "static" for key in args.rows) and not args.reuse_exports
    calibration, pairs, _ = calibration_and_check_images(
        data_args, args.calibration_split, args.num_calibration_images if needs_static else 0, 0,
        int(recipe.get("seed", 42)))
    if data_args.max_eval_samples:
        pairs = pairs[: data_args.max_eval_samples]
    decoder = LabelDecoder(data_args.colour_map_rgb, data_args.reduce_labels, data_args.ignore_index)
    quantization = QuantizationSettings(activation_type=args.activation_type,
                                        calibration_method=args.calibration_method)
    report = deploy_report(
        args.model, pairs, decoder, output_dir, settings=settings, calibration_images=calibration, rows=args.rows,
        threads=args.threads, repeats=args.repeats, timing_images=args.timing_images,
        agreement_images=args.agreement_images, collapse_points=args.collapse_points, quantization=quantization,
        overwrite=args.overwrite, reuse_exports=args.reuse_exports,
        facts={"split": data_args.eval_split, "calibration_split": args.calibration_split if needs_static else None})
    print((output_dir / "deploy_report.md").read_text())
    return 1 if any(row.error for row in report.rows) else 0
