"""`hf-segformer merge-lora --model RUN --output DIR`: a LoRA run's adapter merged into its base model, saved as a
plain SegFormer folder (with the run's image processor) that transformers' `pipeline("image-segmentation")` and
`AutoModelForSemanticSegmentation` load without peft."""

from __future__ import annotations

import argparse

from hf_segformer.modeling.lora import merge_adapter_folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hf-segformer merge-lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="output_dir of a run trained with lora (holds the adapter)")
    parser.add_argument("--output", required=True, help="new (or empty) folder for the merged model")
    args = parser.parse_args(argv)
    output = merge_adapter_folder(args.model, args.output)
    print(f"Merged the adapter of {args.model} into its base model: {output}")
    return 0
