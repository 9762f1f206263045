"""Class-id masks (a model's predictions) → pre-annotations an annotation tool imports, so that annotators correct
a draft instead of painting from scratch.

    label-studio  tasks JSON with `predictions` (brush regions, `model_version`, `score`) + a matching labeling
                  config (label_config.xml) to create the project with
    cvat-mask     a "Segmentation mask 1.1" archive (.zip) or folder: labelmap.txt, SegmentationClass/,
                  SegmentationObject/, ImageSets/Segmentation/default.txt
    coco          a COCO instances JSON with one RLE annotation per class present in an image

The background class (by default the class named "background") and ignored pixels become no region at all:
they are what the tool shows as unlabelled. The writers refuse an existing output unless `overwrite`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from hf_segformer.data.palettes import default_palette
from hf_segformer.errors import DataError, RecipeError

FORMATS = ("label-studio", "cvat-mask", "coco")
DEFAULT_SUFFIX = {"label-studio": ".json", "cvat-mask": ".zip", "coco": ".json"}
LOCAL_FILES_PREFIX = "/data/local-files/?d="  # how Label Studio serves files of a local storage


@dataclass
class MaskToExport:
    """One image and its class-id mask (an array, or a mask PNG to read)."""

    image: Path
    relative: PurePosixPath  # the image's path as the tool knows it (relative to the images' root), extension kept
    mask: np.ndarray | Path
    score: float | None = None  # the model's confidence in this image, 0..1 (Label Studio sorts tasks by it)

    def class_ids(self) -> np.ndarray:
        if isinstance(self.mask, np.ndarray):
            return self.mask
        with Image.open(self.mask) as image:
            if image.mode not in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
                raise DataError(f"{self.mask}: a prediction mask holds class ids (palette, grey or 16-bit PNG); "
                                f"this one is {image.mode}.")
            return np.asarray(image)


@dataclass
class LabelStudioOptions:
    """Names that must match the Label Studio project's labeling config."""

    from_name: str = "tag"  # the <BrushLabels name=...>
    to_name: str = "image"  # the <Image name=...>
    image_key: str = "image"  # the <Image value="$image"> variable
    image_url_prefix: str = LOCAL_FILES_PREFIX  # + the image's relative path = data.<image_key>


@dataclass
class ExportClasses:
    """What a writer exports: every class but the background one, with names and (optional) colours."""

    id2label: dict[int, str]
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    background_class: int | None = None
    ignore_index: int = 255

    @property
    def exported(self) -> list[int]:
        return [c for c in sorted(self.id2label) if c != self.background_class]

    def distinct_colours(self) -> dict[int, tuple[int, int, int]]:
        """A distinct colour per exported class, none black (black is CVAT's background): the class's own colour
        where it has a usable one, else the next free colour of the VOC colour map."""
        pool = [tuple(int(v) for v in rgb) for rgb in default_palette(256)]
        used, chosen = {(0, 0, 0)}, {}
        for class_id in self.exported:
            colour = tuple(self.colours.get(class_id, pool[class_id % 256]))
            if colour in used:
                colour = next(c for c in pool if c not in used)
            used.add(colour)
            chosen[class_id] = colour
        return chosen

    def check(self, mask: np.ndarray, name: str) -> None:
        known = mask != self.ignore_index
        if known.any() and (mask[known].min() < 0 or mask[known].max() >= len(self.id2label)):
            raise DataError(f"{name}: class ids outside 0..{len(self.id2label) - 1} (and {self.ignore_index}, "
                            "ignored); is this mask from the same model?")


def resolve_background(id2label: dict[int, str], background_class: int | str | None = "auto") -> int | None:
    """"auto": the class named background (any case), if there is one; an int: that class; None: none."""
    if background_class == "auto":
        return next((c for c, name in id2label.items() if name.strip().lower() == "background"), None)
    if background_class is not None and int(background_class) not in id2label:
        raise RecipeError(f"background_class {background_class} is not a class id of {sorted(id2label)}.")
    return None if background_class is None else int(background_class)


def palette_colours(mask_file: Path, num_classes: int) -> dict[int, tuple[int, int, int]]:
    """The class colours a palette mask (as `predict` writes them) carries."""
    with Image.open(mask_file) as image:
        palette = image.getpalette() if image.mode == "P" else None
    if not palette:
        return {}
    colours = np.array(palette, dtype=np.uint8).reshape(-1, 3)[:num_classes]
    return {c: tuple(int(v) for v in colours[c]) for c in range(len(colours))}
