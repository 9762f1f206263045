"""`hf-segformer` command line: train, check-data, make-synthetic."""

from __future__ import annotations

import argparse
import sys

from .errors import DataError, RecipeError
from .parser import parse_recipe


def _check_data(argv: list[str]) -> int:
    from .train import prepare_data, run_data_check

    data_args, _, training_args = parse_recipe(argv)
    data, id2label = prepare_data(data_args, training_args.seed)
    report = run_data_check(data, data_args, id2label)
    if training_args.output_dir:
        report.save(training_args.output_dir)
        print(f"Saved class_histogram.json/.md to {training_args.output_dir}")
    print("Data check passed: " + ", ".join(f"{name} {s.num_samples} pairs" for name, s in report.splits.items()))
    return 0


def _train(argv: list[str], default_config: str | None = None) -> int:
    from .train import main

    main(*parse_recipe(argv, default_config=default_config))
    return 0


def run_train(argv: list[str], default_config: str | None = None) -> int:
    """Entry point of `recipes/finetune.py`: user errors print one clear message instead of a traceback."""
    return _report_user_errors(_train, argv, default_config)


def _report_user_errors(command, *args) -> int:
    try:
        return command(*args)
    except (DataError, RecipeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _make_synthetic(argv: list[str]) -> int:
    from .synthetic import write_synthetic_dataset

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


COMMANDS = {
    "train": (_train, "fine-tune from a recipe: --config recipe.yaml [--field value ...]"),
    "check-data": (_check_data, "run the pre-flight data check of a recipe and print the class histogram"),
    "make-synthetic": (_make_synthetic, "write the synthetic shapes dataset to a folder"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-segformer COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:16s}{help_text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, _ = COMMANDS[argv[0]]
    return _report_user_errors(command, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
