"""`export_masks`: class-id masks (a model's predictions) → pre-annotations in one tool's format
(preannotations.py says what each format holds; the writers live with their readers, one file per tool)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hf_segformer.data.annotations.coco_format import write_coco_rle
from hf_segformer.data.annotations.cvat_mask import write_export
from hf_segformer.data.annotations.label_studio import write_predictions
from hf_segformer.data.annotations.preannotations import (
    DEFAULT_SUFFIX,
    FORMATS,
    ExportClasses,
    LabelStudioOptions,
    MaskToExport,
    resolve_background,
)
from hf_segformer.errors import RecipeError


def default_output(predictions_dir: str | os.PathLike, fmt: str) -> Path:
    """Next to the predictions folder: <predictions_dir>_<format>.json|.zip."""
    folder = Path(predictions_dir)
    return folder.with_name(f"{folder.name}_{fmt}{DEFAULT_SUFFIX[fmt]}")


def export_masks(fmt: str, items: Iterable[MaskToExport], output: str | os.PathLike, id2label: dict[int, str], *,
                 colours: dict[int, tuple[int, int, int]] | None = None, background_class: int | str | None = "auto",
                 ignore_index: int = 255, model_version: str | None = None, overwrite: bool = False,
                 label_studio: LabelStudioOptions | None = None) -> Path:
    """Write `items` as pre-annotations in one of FORMATS; returns the written path."""
    if fmt not in FORMATS:
        raise RecipeError(f"export format must be one of {', '.join(FORMATS)}; got '{fmt}'.")
    classes = ExportClasses({int(k): str(v) for k, v in id2label.items()}, dict(colours or {}),
                            resolve_background(id2label, background_class), ignore_index)
    output = Path(output)
    if fmt == "label-studio":
        return write_predictions(items, output, classes, model_version, label_studio or LabelStudioOptions(),
                                 overwrite)
    if fmt == "cvat-mask":
        return write_export(items, output, classes, overwrite)
    return write_coco_rle(items, output, classes, model_version, overwrite)
