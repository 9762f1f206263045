"""Token merging (SegFormer++ presets) and ONNX Runtime: forward speed and memory, and the mIoU each preset costs.

Speed (default): SegFormer-B0 built from config (random init, seeded; `--num_labels` 150 as ADE20K, or 6 as the
aerial set), batch `--batch_size`, per input size (default 512×512 and 1024×2048):

  cases     none / hq / fast / 2x2 (`hf_segformer.modeling.token_merging` presets) in float32 and under bf16 autocast,
            and the same model exported to ONNX (`hf_segformer.inference.onnx_export`, float32) run by ONNX Runtime.
  timing    side by side in one process: after one warm-up forward per case, each round runs every case once,
            in turn; a case's ms/image is its median over `--rounds` rounds, and its ratio is to `none` of the
            same precision (ONNX: to float32 `none`) in the same rounds, so machine load drifts cancel.
  memory    each case once more in a fresh process: the peak during one forward above the memory held before
            it (CPU: peak RSS, VmHWM, minus RSS; GPU: torch.cuda.max_memory_allocated minus memory_allocated).

mIoU (`--model_dir`): a trained model folder evaluated with each preset on a recipe's validation split (default
recipes/aerial/segformer-b0.yaml, whose data_dir is ../shared/datasets/dubai_aerial) through the `evaluate`
command's code (`inference.Segmenter`, `evaluation.evaluate_shard`, each mask at its native size): mIoU, its
change against `none` in points, and ms/image on those images. `--scale 2048 1024` evaluates at high resolution
(keep-ratio resize, as MMSegmentation's scale) instead of the saved image processor's size.

    python benchmarks/bench_token_merging.py                                   # the speed table
    python benchmarks/bench_token_merging.py --quick                           # smoke test: 64² and 64×128
    python benchmarks/bench_token_merging.py --model_dir outputs/aerial-segformer-b0 --skip_speed --scale 2048 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from workers import RESULT_PREFIX, memory_gb

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.modeling.build import build_model
from hf_segformer.modeling.head_folding import FoldedSegformer
from hf_segformer.modeling.token_merging import PRESETS, apply_token_merging

PRESET_CASES = ("none", "hq", "fast", "2x2")
ROOT = Path(__file__).resolve().parent.parent


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def build_b0(variant: str, num_labels: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelArguments(model_variant=variant), {i: f"class_{i}" for i in range(num_labels)}, 255)
    return model.eval().to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_runner(model: torch.nn.Module, case: str, precision: str, device: torch.device, onnx_session=None):
    """A callable running one forward of `case` (after switching the model to it) on a batch of pixels."""
    if case == "onnx":
        from hf_segformer.inference.onnx_export import onnx_logits

        return lambda pixels: onnx_logits(onnx_session, pixels)

    def run(pixels: torch.Tensor) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(pixel_values=pixels)
        synchronize(device)

    return run


def cases(with_onnx: bool) -> list[tuple[str, str]]:
    listed = [(case, precision) for precision in ("fp32", "bf16") for case in PRESET_CASES]
    return listed + ([("onnx", "fp32")] if with_onnx else [])


# ---------------------------------------------------------------------------------------------------------------
# Memory: one case per fresh process
# ---------------------------------------------------------------------------------------------------------------


def memory_worker(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    size = parse_size(args.sizes[0])
    model = build_b0(args.variant, args.num_labels, device)
    session = None
    if args.case == "onnx":
        from hf_segformer.inference.onnx_export import load_onnx_session

        session = load_onnx_session(args.onnx_path, args.threads)
    elif args.case != "none":
        apply_token_merging(model, args.case)
    pixels = torch.randn(args.batch_size, 3, *size, device=device if args.case != "onnx" else "cpu")
    run = make_runner(model, args.case, args.precision, device, session)
    if device.type == "cuda" and args.case != "onnx":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run(pixels)
        return {"forward_peak_mb": (torch.cuda.max_memory_allocated(device) - before) / 2**20}
    before = 1000 * memory_gb("VmRSS")
    run(pixels)
    return {"forward_peak_mb": 1000 * memory_gb("VmHWM") - before, "process_peak_mb": 1000 * memory_gb("VmHWM")}


def measure_memory(args: argparse.Namespace, size: str, case: str, precision: str, onnx_path: str | None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "memory", "--sizes", size, "--case", case,
               "--precision", precision, "--variant", args.variant, "--num_labels", str(args.num_labels),
               "--batch_size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
    if onnx_path:
        command += ["--onnx_path", onnx_path]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        why = "killed (out of memory?)" if result.returncode in (-9, 137) else f"exit {result.returncode}"
        print(f"  memory {case} {precision} {size}: {why}\n{result.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# ---------------------------------------------------------------------------------------------------------------
# Speed: every case of one size side by side
# ---------------------------------------------------------------------------------------------------------------

def time_cases(args: argparse.Namespace, size: tuple[int, int], device: torch.device,
               onnx_path: str | None) -> dict[tuple[str, str], list[float]]:
    """Seconds per forward of each (case, precision), round by round."""
    model = build_b0(args.variant, args.num_labels, device)
    session = None
    if onnx_path:
        from hf_segformer.inference.onnx_export import load_onnx_session

        session = load_onnx_session(onnx_path, args.threads)
    pixels = torch.randn(args.batch_size, 3, *size, generator=torch.Generator().manual_seed(0))
    on_device = pixels.to(device)
    # --fold_head: the inference path of Segmenter/predict (the head folded, the encoder and its merging shared)
    forward = FoldedSegformer(model) if args.fold_head else model
    runners = {}
    for case, precision in cases(onnx_path is not None):
        runners[(case, precision)] = make_runner(forward, case, precision, device, session)
    timings: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for warm_up in (True, False):
        for _ in range(1 if warm_up else args.rounds):
            for (case, precision), run in runners.items():
                if case != "onnx":
                    apply_token_merging(model, case)
                batch = pixels if case == "onnx" else on_device
                start = time.perf_counter()
                run(batch)
                if not warm_up:
                    timings[(case, precision)].append(time.perf_counter() - start)
    return timings


def speed_table(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    print(f"SegFormer-{args.variant.upper()} (random init, {args.num_labels} classes"
          f"{', folded decode head' if args.fold_head else ''}), batch {args.batch_size}, "
          f"device {device} ({platform.processor() or platform.machine()}), {args.threads} threads, "
          f"torch {torch.__version__}, median of {args.rounds} rounds; ratios are to `none` of the same precision "
          "in the same rounds (ONNX: to fp32 none).\n")
    print("| input | case | precision | ms/image | images/s | × vs none | forward peak MB |")
    print("|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if not args.skip_onnx:
            from hf_segformer.inference.onnx_export import export_model

            onnx_path = str(export_model(build_b0(args.variant, args.num_labels, torch.device("cpu")),
                                         Path(tmp) / "model.onnx", sample_size=(64, 64), fold_head=args.fold_head))
        for size_text in args.sizes:
            size = parse_size(size_text)
            timings = time_cases(args, size, device, onnx_path)
            for (case, precision), seconds in timings.items():
                ms = 1000 * statistics.median(seconds) / args.batch_size
                baseline = timings[("none", precision)]
                ratio = statistics.median(b / s for b, s in zip(baseline, seconds))
                memory = {} if args.skip_memory else measure_memory(args, size_text, case, precision, onnx_path)
                peak = f"{memory['forward_peak_mb']:.0f}" if "forward_peak_mb" in memory else "—"
                print(f"| {size[0]}×{size[1]} | {case} | {precision} | {ms:.1f} | {1000 / ms:.2f} | {ratio:.2f} | "
                      f"{peak} |", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# mIoU per preset on a trained model
# ---------------------------------------------------------------------------------------------------------------

def miou_table(args: argparse.Namespace) -> None:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from hf_segformer.config.parser import parse_command
    from hf_segformer.data.loading import load_split
    from hf_segformer.data.prepare import build_label_decoder
    from hf_segformer.evaluation.metrics import metrics_from_confusion
    from hf_segformer.evaluation.run import evaluate_shard
    from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
    from hf_segformer.training.arguments import RECIPE_DATACLASSES

    argv = ["--config", args.recipe] + (["--data_dir", args.data_dir] if args.data_dir else [])
    argv += ["--scale", *map(str, args.scale)] if args.scale else []
    data_args, settings, recipe = parse_command(argv, (DataArguments, InferenceSettings), RECIPE_DATACLASSES)
    dataset = load_split(data_args, int(recipe.get("seed", 42)))
    decoder = build_label_decoder(data_args)
    model = AutoModelForSemanticSegmentation.from_pretrained(args.model_dir)
    processor = AutoImageProcessor.from_pretrained(args.model_dir)
    where = f"scale {args.scale}" if args.scale else "the image processor's size"
    print(f"\n{args.model_dir} on {data_args.data_dir or data_args.dataset_name} '{data_args.eval_split}' "
          f"({len(dataset)} images, {where}, {args.miou_precision}, whole-image inference):\n")
    print("| preset | mIoU | Δ mIoU vs none (points) | eval ms/image (decode, forward, metric) | × vs none |")
    print("|---|---:|---:|---:|---:|")
    reference = None
    for preset in args.presets:
        apply_token_merging(model, preset)
        segmenter = Segmenter(model, processor, settings, args.device, args.miou_precision)
        evaluate_shard(segmenter, dataset.select([0]), decoder, batch_size=1)  # warm-up
        start = time.perf_counter()
        confusion, _ = evaluate_shard(segmenter, dataset, decoder, batch_size=1)
        ms = 1000 * (time.perf_counter() - start) / len(dataset)
        miou = float(metrics_from_confusion(confusion.cpu().numpy())["mean_iou"])
        reference = reference or (miou, ms)
        print(f"| {preset} | {miou:.4f} | {100 * (miou - reference[0]):+.2f} | {ms:.0f} | {reference[1] / ms:.2f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"], help="input sizes HxW")
    parser.add_argument("--variant", default="b0", help="MiT variant built from config (b0 … b5)")
    parser.add_argument("--num_labels", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fold_head", action="store_true",
                        help="time the model with its decode head folded, as Segmenter / predict run it")
    parser.add_argument("--skip_onnx", action="store_true")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64×64 and 64×128, 2 rounds, 6 classes")
    parser.add_argument("--model_dir", help="a trained model folder: also measure mIoU per preset")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/aerial/segformer-b0.yaml"),
                        help="the recipe whose data and eval_split the mIoU is measured on")
    parser.add_argument("--data_dir", help="override the recipe's data_dir")
    parser.add_argument("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="mIoU: keep-ratio resize (long side, short side) instead of the processor's size")
    parser.add_argument("--presets", nargs="+", default=list(PRESET_CASES), choices=sorted(PRESETS))
    parser.add_argument("--miou_precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--worker", choices=("memory",), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--onnx_path", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(RESULT_PREFIX + json.dumps(memory_worker(args)), flush=True)
        return
    if args.quick:
        args.sizes, args.rounds, args.num_labels = ["64x64", "64x128"], 2, 6
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        speed_table(args)
    if args.model_dir:
        if args.presets[0] != "none":
            args.presets = ["none"] + [p for p in args.presets if p != "none"]
        miou_table(args)


if __name__ == "__main__":
    main()
