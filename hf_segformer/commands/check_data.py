"""`hf-segformer check-data`: a recipe's pre-flight data check, and its class histogram written beside the run
when the recipe (or the command line) names an output_dir."""

from __future__ import annotations

from hf_segformer.config.parser import load_recipe
from hf_segformer.data.images import image_pixel_limit
from hf_segformer.data.prepare import prepare_data, run_data_check
from hf_segformer.training.arguments import RECIPE_DATACLASSES, parse_recipe


def _asked_output_dir(argv: list[str], recipe_file: str | None) -> bool:
    """The user named output_dir (command line or recipe): transformers' default folder is not a place they asked
    for, and nothing is written there."""
    if any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv):
        return True
    return bool(recipe_file and load_recipe(recipe_file, RECIPE_DATACLASSES).get("output_dir"))


def main(argv: list[str]) -> int:
    data_args, _, training_args = parse_recipe(argv)
    with image_pixel_limit(data_args.max_image_pixels):
        data, id2label = prepare_data(data_args, training_args.seed)
        report = run_data_check(data, data_args, id2label)
    if _asked_output_dir(argv, getattr(training_args, "recipe_file", None)):
        report.save(training_args.output_dir)
        print(f"Saved class_histogram.json/.md to {training_args.output_dir}")
    else:
        print("No output_dir in the recipe: the class histogram was printed only (set output_dir, or pass "
              "--output_dir DIR, to save class_histogram.json/.md there for the run).")
    print("Data check passed: " + ", ".join(f"{name} {s.num_samples} pairs" for name, s in report.splits.items()))
    return 0
