r"""One trained model evaluated at several keep-ratio scales: which `eval_scale` to put in a recipe.

Each (scale, split) is one `hf-segformer evaluate --scale LONG SHORT` run, exactly as a user would call it, so
the figures are the ones the model card and `predict` would give with that scale saved. The first scale is the
baseline: each row says how its mIoU and evaluation time compare with it. Nothing is trained: point `--model`
at a finished run (for a fixed training recipe the best scale is a property of the model and the data).

    python benchmarks/bench_eval_scale.py --model outputs/aerial-segformer-b0 \
        --scales 1024x512 1536x768 2048x1024        # the aerial recipe's run; val and test splits
    python benchmarks/bench_eval_scale.py --model outputs/custom-segformer-b0-scratch \
        --config recipes/custom/segformer-b0-scratch.yaml --data_dir ../shared/datasets/isbi_membrane \
        --recipe_args "--id2label '{\"0\": \"membrane\", \"1\": \"cell\"}'" --splits val --scales 2048x512 3072x768
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from hf_segformer.evaluation.run import metric_prefix

ROOT = Path(__file__).resolve().parents[1]


def parse_scale(text: str) -> tuple[int, int]:
    long_side, _, short_side = text.partition("x")
    if not (long_side.isdigit() and short_side.isdigit()):
        raise argparse.ArgumentTypeError(f"a scale is LONGxSHORT in pixels, e.g. 1536x768; got {text!r}")
    return int(long_side), int(short_side)


def evaluate(scale: tuple[int, int], split: str, cli: argparse.Namespace) -> dict:
    """The metrics of one `hf-segformer evaluate` run; its log sits beside its results."""
    out = cli.output_dir / f"{scale[0]}x{scale[1]}-{split}"
    prefix = metric_prefix(split)
    results = out / f"{prefix}_results.json"
    if not results.is_file():
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "hf_segformer.cli", "evaluate", "--config", str(cli.config),
                   "--model", str(cli.model), "--eval_split", split, "--scale", str(scale[0]), str(scale[1]),
                   "--eval_output_dir", str(out), *(["--data_dir", str(cli.data_dir)] if cli.data_dir else []),
                   *shlex.split(cli.recipe_args)]
        with open(out / "evaluate.log", "w") as log:
            code = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT).returncode
        if code != 0:
            sys.exit(f"evaluate at {scale} on {split} failed (exit {code}): see {out / 'evaluate.log'}")
    return {key.replace(f"{prefix}_", "", 1): value for key, value in json.loads(results.read_text()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained run's output folder")
    parser.add_argument("--config", type=Path, default=ROOT / "recipes/aerial/segformer-b0.yaml",
                        help="the recipe it was trained with (its data fields)")
    parser.add_argument("--data_dir", type=Path, help="instead of the recipe's")
    parser.add_argument("--recipe_args", default="", help="more recipe fields, as on the command line")
    parser.add_argument("--scales", type=parse_scale, nargs="+", default=[(1024, 512), (1536, 768), (2048, 1024)],
                        help="LONGxSHORT keep-ratio scales; the first is the baseline")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--output_dir", type=Path, help="default: <model>/eval-scales")
    cli = parser.parse_args()
    cli.output_dir = cli.output_dir or cli.model / "eval-scales"

    table = {(scale, split): evaluate(scale, split, cli) for scale in cli.scales for split in cli.splits}
    base = cli.scales[0]
    print(f"\n{cli.model} evaluated keeping each image's shape; baseline {base[0]}x{base[1]}")
    print("| scale | " + " | ".join(f"{s} mIoU | {s} min class IoU | {s} s/image" for s in cli.splits) + " |")
    print("|---|" + "---:|---:|---:|" * len(cli.splits))
    for scale in cli.scales:
        cells = []
        for split in cli.splits:
            r, b = table[(scale, split)], table[(base, split)]
            ious = [v for k, v in r.items() if k.startswith("iou_")]
            per_image = r["runtime"] / r["samples"]
            base_per_image = b["runtime"] / b["samples"]
            cells += [f"{r['mean_iou']:.4f} ({r['mean_iou'] - b['mean_iou']:+.4f})",
                      f"{min(ious):.3f}", f"{per_image:.2f} ({per_image / base_per_image:.2f}×)"]
        print(f"| {scale[0]}x{scale[1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
