"""`hf-segformer predict … --export FORMAT`: the masks predict has just written, sent back to the annotation tool
as pre-annotations (data/annotations/). The predict command (commands/predict.py, with its `ExportArguments`)
calls `export_after_predict` after `predict_files`.

The export reads the mask files back (so images predicted by an earlier, resumed run are included), takes the
class colours from their palette, and names each image by its path relative to the input folder.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from hf_segformer.data.annotations.exporter import export_masks
from hf_segformer.data.annotations.preannotations import LabelStudioOptions, MaskToExport, palette_colours
from hf_segformer.errors import RecipeError


def image_name(job, root: Path) -> PurePosixPath:
    """How an annotation tool knows a predicted image: its path relative to the input folder, extension kept
    (predict's Job pairs the image with its mask under `root`, the resolved output folder)."""
    stem = job.mask.relative_to(root).with_suffix("")
    return PurePosixPath(stem.with_name(stem.name + job.source.suffix).as_posix())


def export_after_predict(export: str, jobs: list, predictions_dir: str | os.PathLike, target: Path,
                         id2label: dict[int, str], *, background_class: int | str | None = "auto",
                         model_version: str | None = None, label_studio: LabelStudioOptions | None = None,
                         overwrite: bool = False) -> Path:
    """Write the masks of `jobs` (predict's Job list; those whose mask file exists) as `export` pre-annotations to
    `target`; returns the path written."""
    root = Path(predictions_dir).resolve()
    items = []
    for job in jobs:
        if not job.mask.is_file():  # an image predict could not read
            continue
        items.append(MaskToExport(job.source, image_name(job, root), job.mask))
    if not items:
        raise RecipeError(f"--export: no mask in {predictions_dir} to export.")
    return export_masks(export, items, target, id2label, colours=palette_colours(items[0].mask, len(id2label)),
                        background_class=background_class, model_version=model_version, overwrite=overwrite,
                        label_studio=label_studio)
