"""`hf-segformer demo`: serve a model as a Gradio app in the browser (`app.demo`), or write a Hugging Face Space
folder serving it with --export_space (`app.space`).

    hf-segformer demo --model outputs/my-run --examples photos/ --port 7860
    hf-segformer demo --config recipes/my-data.yaml --export_space space/ --hub_model_id me/my-model
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from hf_segformer.app.demo import MAX_PIXELS, launch, source_name
from hf_segformer.app.space import export_space
from hf_segformer.commands.inference_options import InferenceArguments
from hf_segformer.commands.option_style import renamed_options
from hf_segformer.config.data import recipe_data_args
from hf_segformer.config.parser import parse_command
from hf_segformer.data.images import list_images
from hf_segformer.data.palettes import dataset_palette
from hf_segformer.errors import RecipeError
from hf_segformer.hub.redaction import hub_repo_id
from hf_segformer.modeling.lora import adapter_config_file
from hf_segformer.training.arguments import RECIPE_DATACLASSES


@dataclass
class DemoArguments:
    """Options of `hf-segformer demo` besides the model and inference settings (`InferenceArguments`)."""

    _argument_group_name = "Demo"

    examples: str | None = field(default=None, metadata={"help": "Folder of example images shown under the upload."})
    port: int | None = field(default=None, metadata={"help": "Port to serve on (default: Gradio's, 7860 or the "
                                                             "next free one)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on; 0.0.0.0 for other machines."})
    max_pixels: int = field(default=MAX_PIXELS, metadata={"help": "Larger uploads are downscaled to this many pixels."})
    colour_map: str | None = field(default=None, metadata={
        "help": "Class colours as the recipe's colour_map ({'#RRGGBB': class_id}); default: the recipe's data."})
    export_space: str | None = field(default=None, metadata={
        "help": "Write a Hugging Face Space folder (app.py, requirements.txt, README.md) serving this demo for "
                "the Hub model --hub_model_id (or --model when that is a Hub id), and exit."})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "The Hub model repository the exported Space loads (where the model was pushed)."})


def recipe_palette(recipe: dict, colour_map: str | None) -> Callable[[int], np.ndarray] | None:
    """The dataset's colours named by the recipe's data fields (as `predict` uses them), or None."""
    data_args = recipe_data_args(recipe, colour_map)
    return functools.partial(dataset_palette, data_args=data_args) if data_args else None


def main(argv: list[str]) -> int:
    """Serve the app until interrupted, or write the Space folder with --export_space."""
    argv = renamed_options(argv, "demo", {"--export-space": "--export_space"})
    inference_args, demo_args, recipe = parse_command(argv, (InferenceArguments, DemoArguments), RECIPE_DATACLASSES)
    model = inference_args.model_path(recipe)
    palette = recipe_palette(recipe, demo_args.colour_map)
    if demo_args.export_space:
        model_id = demo_args.hub_model_id or hub_repo_id(model)
        if model_id is None:
            raise RecipeError(f"--export_space: the Space loads the model from the Hub, and {model} is a local "
                              "folder; give --hub_model_id namespace/name (where it was pushed), or a Hub id as "
                              "--model.")
        try:
            colours = palette(AutoConfig.from_pretrained(model).num_labels) if palette else None
        except OSError as err:
            raise RecipeError(f"--export_space: the dataset's colours need the model's class count: {err}") from err
        folder = export_space(demo_args.export_space, model_id, examples=demo_args.examples, palette=colours,
                              mode=inference_args.mode, token_merging=inference_args.token_merging,
                              adapter=adapter_config_file(model) is not None)
        print(f"Space folder written to {folder}: push it to a Gradio Space (README.md holds its metadata).")
        return 0
    if not Path(model).exists() and hub_repo_id(model) is None:
        raise RecipeError(f"--model {model}: no such folder, and not a Hub id (namespace/name).")
    examples = demo_args.examples
    if examples is not None:
        list_images(examples)  # an empty folder is an error before the server starts
    launch(lambda: inference_args.load(recipe), examples, palette=palette, name=source_name(model),
           host=demo_args.host, port=demo_args.port, max_pixels=demo_args.max_pixels, mode=inference_args.mode,
           token_merging=inference_args.token_merging)
    return 0
