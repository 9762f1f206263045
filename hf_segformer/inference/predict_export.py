"""`hf-segformer predict … --export FORMAT`: the masks predict has just written, sent back to the annotation tool
as pre-annotations (data/annotations/). predict.main parses `ExportArguments` with its other option
dataclasses, calls `check_export_target` before any work and `export_after_predict` after `predict_files`.

The export reads the mask files back (so images predicted by an earlier, resumed run are included), takes the
class colours from their palette, and names each image by its path relative to the input folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hf_segformer.data.annotations.exporter import default_output, export_masks
from hf_segformer.data.annotations.preannotations import (
    FORMATS,
    LOCAL_FILES_PREFIX,
    LabelStudioOptions,
    MaskToExport,
    palette_colours,
)
from hf_segformer.errors import RecipeError


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


def image_name(job, root: Path) -> PurePosixPath:
    """How an annotation tool knows a predicted image: its path relative to the input folder, extension kept
    (predict's Job pairs the image with its mask under `root`, the resolved output folder)."""
    stem = job.mask.relative_to(root).with_suffix("")
    return PurePosixPath(stem.with_name(stem.name + job.source.suffix).as_posix())


def export_target(args: ExportArguments, predictions_dir: str | os.PathLike) -> Path:
    return Path(args.export_path) if args.export_path else default_output(predictions_dir, args.export)


def check_export_target(args: ExportArguments, predictions_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an existing export before predicting (a resumed run must not fail only at the end)."""
    overwrite = overwrite or args.overwrite_export
    if args.export is not None:
        target = export_target(args, predictions_dir)
        if target.exists() and not overwrite:
            raise RecipeError(f"--export_path {target} already exists; remove it, give another --export_path or "
                              "pass --overwrite_export true.")


def export_after_predict(args: ExportArguments, jobs: list, predictions_dir: str | os.PathLike,
                         id2label: dict[int, str], overwrite: bool = False,
                         model_name: str | None = None) -> Path | None:
    """Write the masks of `jobs` (predict's Job list; those whose mask file exists) as `args.export`; returns the
    path written, None without --export."""
    if args.export is None:
        return None
    overwrite = overwrite or args.overwrite_export
    root = Path(predictions_dir).resolve()
    items = []
    for job in jobs:
        if not job.mask.is_file():  # an image predict could not read
            continue
        items.append(MaskToExport(job.source, image_name(job, root), job.mask))
    if not items:
        raise RecipeError(f"--export: no mask in {predictions_dir} to export.")
    return export_masks(args.export, items, export_target(args, predictions_dir), id2label,
                        colours=palette_colours(items[0].mask, len(id2label)),
                        background_class=args.background(),
                        model_version=args.model_version or (Path(model_name).name if model_name else None),
                        overwrite=overwrite, label_studio=args.label_studio())
