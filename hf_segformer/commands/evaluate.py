"""`hf-segformer evaluate` (and `recipes/evaluate.py`): a saved model on a split of the recipe's data, at native
resolution, whole, slide or test-time augmented, on one or several processes (`evaluation.run`).

    hf-segformer evaluate --config recipes/aerial/segformer-b0.yaml --mode slide --slide_crop 512 --slide_stride 341
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml recipes/evaluate.py --config ... --flip true
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hf_segformer.commands.inference_options import InferenceArguments
from hf_segformer.config.data import DataArguments
from hf_segformer.config.parser import parse_command
from hf_segformer.config.values import canonical_split
from hf_segformer.data.images import image_pixel_limit
from hf_segformer.evaluation.run import default_output_dir, run_evaluation
from hf_segformer.outputs import writable_folder
from hf_segformer.training.arguments import RECIPE_DATACLASSES


@dataclass
class EvaluateArguments:
    """Where `hf-segformer evaluate` writes, and how many samples its picture shows."""

    _argument_group_name = "Evaluation output"

    eval_output_dir: str | None = field(default=None, metadata={
        "help": "Results folder; default: <model>/evaluation_<split>_<mode>[_tta] (a Hub model needs it set)."})
    grid_samples: int = field(default=4, metadata={"help": "Samples in eval_samples.png (spread over the split)."})


def main(argv: list[str]) -> int:
    data_args, inference_args, eval_args, recipe = parse_command(
        argv, (DataArguments, InferenceArguments, EvaluateArguments), RECIPE_DATACLASSES)
    model = inference_args.model_path(recipe)
    split = canonical_split(data_args.eval_split)
    output_dir = Path(eval_args.eval_output_dir or default_output_dir(model, split, inference_args))
    created = not output_dir.exists()
    writable_folder(output_dir, "eval_output_dir")  # before any work
    options = {f.name: getattr(inference_args, f.name) for f in dataclasses.fields(inference_args)}
    try:
        with image_pixel_limit(data_args.max_image_pixels):
            run_evaluation(lambda device: inference_args.load(recipe, device=device, for_metrics=True), model,
                           data_args, output_dir, options, device=inference_args.device,
                           batch_size=inference_args.batch_size,
                           grid_samples=eval_args.grid_samples, seed=int(recipe.get("seed", 42)))
    except BaseException:  # a missing split, a bad model: no empty results folder is left behind
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
        raise
    return 0
