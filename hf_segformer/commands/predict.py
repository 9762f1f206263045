"""`hf-segformer predict`: images (folders, glob patterns or files) → class-id PNG masks, overlays and, with
--export, pre-annotations for an annotation tool (`inference.predict`, `inference.predict_export`).

    hf-segformer predict --config recipes/my-data.yaml --inputs photos/ --predictions_dir outputs/masks --overlays true
    hf-segformer predict --model outputs/my-run --inputs "scans/**/*.tif" --predictions_dir out --mode slide
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_segformer.commands.inference_options import InferenceArguments
from hf_segformer.config.data import MAX_IMAGE_PIXELS_HELP, recipe_data_args
from hf_segformer.config.parser import parse_command
from hf_segformer.config.values import check_max_image_pixels
from hf_segformer.data.annotations.exporter import default_output
from hf_segformer.data.annotations.preannotations import FORMATS, LOCAL_FILES_PREFIX, LabelStudioOptions
from hf_segformer.data.images import image_pixel_limit
from hf_segformer.data.palettes import dataset_palette
from hf_segformer.errors import RecipeError, problems_message
from hf_segformer.inference.predict import find_jobs, predict_files
from hf_segformer.inference.predict_export import export_after_predict
from hf_segformer.outputs import writable_folder
from hf_segformer.training.arguments import RECIPE_DATACLASSES


@dataclass
class PredictArguments:
    """What `hf-segformer predict` reads and writes."""

    _argument_group_name = "Inputs and outputs"

    inputs: list[str] | None = field(default=None, metadata={
        "help": "Image folder(s) (searched recursively), glob pattern(s) (quote them) or image file(s)."})
    predictions_dir: str | None = field(default=None, metadata={"help": "Where the masks (<stem>.png) are written."})
    overlays: bool = field(default=False, metadata={
        "help": "Also write overlays/<stem>.jpg: the image blended with its coloured mask, with a legend."})
    overlay_alpha: float = field(default=0.5, metadata={"help": "Opacity of the mask in the overlays."})
    colour_map: str | None = field(default=None, metadata={
        "help": "Class colours as the recipe's colour_map ({'#RRGGBB': class_id}); default: the recipe's data."})
    overwrite: bool = field(default=False, metadata={"help": "Redo images whose outputs exist (default: skip them)."})
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_IMAGE_PIXELS_HELP})

    def __post_init__(self) -> None:
        check_max_image_pixels(self.max_image_pixels)


@dataclass
class ExportArguments:
    """Options of `hf-segformer predict` that write its masks as pre-annotations for an annotation tool."""

    export: str | None = field(default=None, metadata={
        "help": "Also write the masks as pre-annotations: label-studio (predictions JSON + label config), cvat-mask "
                "(Segmentation mask 1.1 .zip) or coco (RLE instances JSON)."})
    export_path: str | None = field(default=None, metadata={
        "help": "Where the pre-annotations go (default: <predictions_dir>_<format>.json|.zip)."})
    model_version: str | None = field(default=None, metadata={
        "help": "The model_version Label Studio shows for the predictions (default: the model folder's name)."})
    background_class: str = field(default="auto", metadata={
        "help": "Class not exported as a region (the tool's unlabelled area): a class id, 'auto' (the class named "
                "background) or 'none'."})
    ls_from_name: str = field(default="tag", metadata={"help": "Label Studio: the <BrushLabels name=...>."})
    ls_to_name: str = field(default="image", metadata={"help": "Label Studio: the <Image name=...>."})
    ls_image_key: str = field(default="image", metadata={"help": "Label Studio: the <Image value=\"$...\"> variable."})
    image_url_prefix: str = field(default=LOCAL_FILES_PREFIX, metadata={
        "help": "Label Studio: prefix of each image's path relative to its input folder, e.g. "
                "'/data/local-files/?d=photos/' for local storage or 'https://bucket.example/photos/'."})
    overwrite_export: bool = field(default=False, metadata={
        "help": "Replace an existing --export_path (--overwrite, which also redoes every image, does too)."})

    def __post_init__(self) -> None:
        if self.export is not None and self.export not in FORMATS:
            raise RecipeError(f"--export must be one of {', '.join(FORMATS)}; got '{self.export}'.")

    def background(self) -> int | str | None:
        value = str(self.background_class).strip().lower()
        if value == "none":
            return None
        if value == "auto":
            return "auto"
        try:
            return int(value)
        except ValueError as err:
            raise RecipeError(f"--background_class must be a class id, 'auto' or 'none'; got '{value}'.") from err

    def label_studio(self) -> LabelStudioOptions:
        return LabelStudioOptions(self.ls_from_name, self.ls_to_name, self.ls_image_key, self.image_url_prefix)

    def target(self, predictions_dir: str | os.PathLike) -> Path:
        """Where the pre-annotations go: --export_path, else beside the predictions folder."""
        return Path(self.export_path) if self.export_path else default_output(predictions_dir, self.export)

    def check_target(self, predictions_dir: str | os.PathLike, overwrite: bool = False) -> None:
        """Refuse an existing export before predicting (a resumed run must not fail only at the end)."""
        if self.export is not None:
            target = self.target(predictions_dir)
            if target.exists() and not (overwrite or self.overwrite_export):
                raise RecipeError(f"--export_path {target} already exists; remove it, give another --export_path or "
                                  "pass --overwrite_export true.")


def main(argv: list[str]) -> int:
    """0 when every image was predicted (or already was), 1 when some could not be read."""
    inference_args, predict_args, export_args, recipe = parse_command(
        argv, (InferenceArguments, PredictArguments, ExportArguments), RECIPE_DATACLASSES)
    if not predict_args.inputs or not predict_args.predictions_dir:
        raise RecipeError("predict needs --inputs (folders, glob patterns or files) and --predictions_dir.")
    writable_folder(predict_args.predictions_dir, "predictions_dir")  # before any work
    export_args.check_target(predict_args.predictions_dir, predict_args.overwrite)
    jobs = find_jobs(predict_args.inputs, predict_args.predictions_dir, predict_args.overlays)
    pending = jobs if predict_args.overwrite else [job for job in jobs if not job.done()]
    segmenter = inference_args.load(recipe)
    palette = dataset_palette(segmenter.num_labels, recipe_data_args(recipe, predict_args.colour_map))
    with image_pixel_limit(predict_args.max_image_pixels):
        failures = predict_files(segmenter, pending, palette, inference_args.batch_size, predict_args.overlay_alpha)
    written = len(pending) - len(failures)
    print(f"Wrote {written} mask{'s' if written != 1 else ''} to {predict_args.predictions_dir}"
          + (f" ({len(jobs) - len(pending)} already there, skipped)" if len(jobs) > len(pending) else ""))
    if export_args.export is not None:
        exported = export_after_predict(
            export_args.export, jobs, predict_args.predictions_dir, export_args.target(predict_args.predictions_dir),
            segmenter.id2label, background_class=export_args.background(),
            model_version=export_args.model_version or Path(inference_args.model_path(recipe)).name,
            label_studio=export_args.label_studio(), overwrite=predict_args.overwrite or export_args.overwrite_export)
        print(f"Wrote the masks as {export_args.export} pre-annotations to {exported}")
    if failures:
        print(problems_message(f"{len(failures)} of {len(pending)} images could not be read and were skipped",
                               failures, "Fix or remove them and run the same command again: finished images "
                               "are skipped."), file=sys.stderr)
        return 1
    return 0
