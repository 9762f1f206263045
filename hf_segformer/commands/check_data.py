"""`hf-segformer check-data`: a recipe's pre-flight data check, and its class histogram written beside the run."""

from __future__ import annotations

from hf_segformer.data.prepare import prepare_data, run_data_check
from hf_segformer.training.arguments import parse_recipe


def main(argv: list[str]) -> int:
    data_args, _, training_args = parse_recipe(argv)
    data, id2label = prepare_data(data_args, training_args.seed)
    report = run_data_check(data, data_args, id2label)
    if training_args.output_dir:
        report.save(training_args.output_dir)
        print(f"Saved class_histogram.json/.md to {training_args.output_dir}")
    print("Data check passed: " + ", ".join(f"{name} {s.num_samples} pairs" for name, s in report.splits.items()))
    return 0
