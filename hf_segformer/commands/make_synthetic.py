"""`hf-segformer make-synthetic OUTPUT_DIR`: the synthetic shapes dataset, for trying the recipes offline."""

from __future__ import annotations

import argparse

from hf_segformer.data.synthetic import write_synthetic_dataset


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hf-segformer make-synthetic")
    parser.add_argument("output_dir")
    parser.add_argument("--num_train", type=int, default=320)
    parser.add_argument("--num_validation", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_synthetic_dataset(args.output_dir, args.num_train, args.num_validation, args.image_size, args.seed)
    print(f"Synthetic dataset in {root}")
    return 0
