"""`hf-segformer export-onnx --model MODEL --output_path OUT.onnx`: a saved model → ONNX (dynamic batch, height,
width; the decode head folded unless --fold_head false), compared with PyTorch (`inference.onnx_export`); with
--quantize dynamic|static, an INT8 file instead, checked against PyTorch fp32 (`inference.quantize`,
`inference.quantize_check`).

    hf-segformer export-onnx --model MODEL --output_path OUT.onnx [--fold_head false] [--quantize dynamic|static
                             --config recipe.yaml --calibration_split train --num_calibration_images 16]

With --quantize, the float32 export and its parity report come first (as without it), then the INT8 file at OUT,
compared with PyTorch fp32: the random-input check, plus the pixel agreement of the masks on validation images
not used for calibration.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from hf_segformer.commands.inference_options import has_data, recipe_data_and_settings
from hf_segformer.commands.option_style import add_flag, leading_positionals, parse_bool
from hf_segformer.errors import RecipeError
from hf_segformer.inference.calibration_images import DEFAULT_CALIBRATION_IMAGES, calibration_and_check_images
from hf_segformer.inference.onnx_export import DEFAULT_OPSET, ParityCheck, check_parity, export_onnx
from hf_segformer.inference.openvino_backend import OpenVINOSession, convert_onnx, ir_files
from hf_segformer.inference.quantize import MODES
from hf_segformer.inference.quantize_check import export_quantized


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """The INT8 options export-onnx gains; the data options come from the recipe (--config, --data_dir, ...)."""
    parser.add_argument("--quantize", choices=MODES, help="also quantize to INT8 with ONNX Runtime: dynamic (no data) "
                        "or static (QDQ, per-channel weights, calibrated on --num_calibration_images images)")
    parser.add_argument("--calibration_split", default="train",
                        help="split of the recipe's data whose images calibrate static quantization (default train)")
    parser.add_argument("--num_calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="calibration images, spread over the split (default %(default)s)")
    parser.add_argument("--num_check_images", type=int, default=8,
                        help="validation images (not used for calibration) whose masks INT8 and PyTorch are "
                             "compared on")
    add_flag(parser, "--overwrite", help="replace an existing output_path (with --quantize: the INT8 file too)")


def quantized_export(args: argparse.Namespace, recipe_argv: list[str]) -> int:
    """export-onnx with --quantize: the float32 export and its parity report, then the INT8 file at
    args.output_path and its check against PyTorch fp32. `args` carries export-onnx's options."""
    output = Path(args.output_path)
    if output.exists() and not args.overwrite:
        raise RecipeError(f"{output} exists; choose another path or pass --overwrite.")
    data_args, settings, recipe = recipe_data_and_settings(recipe_argv)
    calibration, checks = None, []
    if args.quantize == "static" or has_data(data_args):
        if not has_data(data_args):
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
                                  args.dynamo, fold_head=args.fold_head)
        if not all(check.passed for check in fp32_checks):
            print("error: the float32 export does not match PyTorch, so it is not quantized.", file=sys.stderr)
            return 1
        outcome = export_quantized(args.model_dir, fp32_path, output, args.quantize,
                                   calibration if args.quantize == "static" else None, checks, settings,
                                   check_sizes=[tuple(s) for s in args.check_size] if args.check_size else None,
                                   overwrite=args.overwrite)
    return 0 if outcome.passed else 1


def main(argv: list[str]) -> int:
    """0 when the export (and the INT8 file) match PyTorch, 1 when a check failed."""
    parser = argparse.ArgumentParser(
        prog="hf-segformer export-onnx",
        description="Export a saved model folder to ONNX (dynamic batch, height, width) and compare ONNX Runtime "
                    "with PyTorch (max |logit difference|, argmax agreement). Needs pip install 'hf-segformer[onnx]'.")
    parser.add_argument("--model", dest="model_dir", required=True,
                        help="a saved model folder (config.json, model.safetensors)")
    parser.add_argument("--output_path", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--sample_size", type=int, nargs=2, metavar=("H", "W"),
                        help="tracing input size (default: the saved image processor's size)")
    parser.add_argument("--check_size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="input size compared with PyTorch; repeatable (default: two sizes)")
    add_flag(parser, "--dynamo", help="use the torch.export-based exporter (needs onnxscript)")
    add_flag(parser, "--openvino", help="also convert the export to an OpenVINO model (OUT.xml beside OUT.bin, pip "
             "install 'hf-segformer[openvino]'), compared with PyTorch as the ONNX file is")
    # spelled as evaluate/predict's fold_head (HfArgumentParser): --fold_head [true|false], --no_fold_head
    parser.add_argument("--fold_head", type=parse_bool, nargs="?", const=True, default=True, metavar="true|false",
                        help="export the decode head folded into per-stage 1×1 maps (default true: the same logits "
                             "up to float rounding, faster); false: the graph as saved")
    parser.add_argument("--no_fold_head", dest="fold_head", action="store_false", help=argparse.SUPPRESS)
    parser.epilog = ("--quantize writes an INT8 model instead (after the float32 export and its check) and also "
                     "compares its masks with PyTorch fp32 on validation images; its data options are recipe fields "
                     "(--config recipe.yaml, --data_dir, --eval_split ...).")
    add_quantize_arguments(parser)
    argv = leading_positionals(argv, "export-onnx", ("--model", "--output_path"))
    args, recipe_argv = parser.parse_known_args(argv)
    if args.quantize:
        return quantized_export(args, recipe_argv)
    if recipe_argv:
        parser.error(f"unrecognized arguments: {' '.join(recipe_argv)} (recipe options go with --quantize)")
    from hf_segformer.modeling.build import check_model_folder
    from hf_segformer.modeling.lora import is_adapter_folder

    if not is_adapter_folder(args.model_dir):  # an adapter folder is exported merged into its base model
        check_model_folder(args.model_dir, "--model")
    if args.openvino:
        taken = [str(p) for p in ir_files(Path(args.output_path).with_suffix(".xml")) if p.exists()]
        if taken and not args.overwrite:
            raise RecipeError(f"{', '.join(taken)} exist(s); pass --overwrite to replace, or pick another output_path.")
    checks = export_onnx(args.model_dir, args.output_path, args.opset, args.sample_size, args.check_size, args.dynamo,
                         overwrite=args.overwrite, fold_head=args.fold_head)
    if args.openvino and all(check.passed for check in checks):
        checks = openvino_export(args.model_dir, Path(args.output_path), [check.size for check in checks])
    return 0 if all(check.passed for check in checks) else 1


def openvino_export(model_dir: str, onnx_path: Path, sizes: list[tuple[int, int]]) -> list[ParityCheck]:
    """The ONNX export converted to OpenVINO IR beside it, and OpenVINO compared with PyTorch on the same sizes."""
    from hf_segformer.modeling.build import load_saved_model

    xml_path = convert_onnx(onnx_path, onnx_path.with_suffix(".xml"))
    checks = check_parity(load_saved_model(model_dir).eval(), OpenVINOSession(xml_path), sizes)
    print(f"Converted to OpenVINO: {xml_path} (+ {xml_path.with_suffix('.bin').name}). OpenVINO vs PyTorch (float32):")
    for check in checks:
        print(f"  {check}")
    return checks
