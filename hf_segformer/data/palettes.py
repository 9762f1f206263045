"""Class colours and class-id mask images: the default palette, the dataset's own colours, palette PNG masks,
colourised masks and each class's pixels in a mask.

Data, not drawing: annotation converters and the mask writers use them without any plotting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from hf_segformer.data.images import MASK_EXTENSIONS

if TYPE_CHECKING:
    from hf_segformer.config.data import DataArguments

IGNORED_COLOUR = (255, 255, 255)  # unlabelled pixels in masks; class 0 is black in the default palette


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours per class id [N, 3] uint8: the PASCAL VOC colour map (class 0 black, 1 dark red, ...).

    The bits of the class id are spread over the high bits of R, G and B, so neighbouring ids get unlike colours.
    """
    ids = np.arange(num_classes)
    colours = np.zeros((num_classes, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def dataset_palette(num_classes: int, data_args: DataArguments | None = None) -> np.ndarray:
    """The dataset's own class colours where it has them, else `default_palette`.

    From the recipe's `colour_map` (RGB masks: colour → class id), or from the palette of the dataset's mask
    files when they are palette PNGs (VOC style); classes the dataset gives no colour keep the default one.
    """
    palette = default_palette(num_classes)
    if data_args is None:
        return palette
    if data_args.colour_map_rgb:
        for rgb, class_id in data_args.colour_map_rgb.items():
            if 0 <= class_id < num_classes:
                palette[class_id] = rgb
        return palette
    mask = _first_mask_file(data_args)
    if mask is not None:
        with Image.open(mask) as image:
            if image.mode == "P" and image.getpalette():
                colours = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:num_classes]
                palette[: len(colours)] = colours
    return palette


def _first_mask_file(data_args: DataArguments) -> Path | None:
    mask_dir = data_args.mask_dir or (data_args.data_dir and os.path.join(data_args.data_dir, "masks"))
    if not mask_dir or not os.path.isdir(mask_dir):
        return None
    return next((p for p in Path(mask_dir).rglob("*") if p.suffix.lower() in MASK_EXTENSIONS - {".npy"}), None)


def mask_image(mask: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A class-id mask as a PNG-ready image: palette mode ("P", pixel values = class ids, shown in the dataset's
    colours) up to 256 classes, 16-bit grey ("I;16", values = class ids) beyond."""
    if len(palette) <= 256:
        image = Image.fromarray(mask.astype(np.uint8), "P")
        image.putpalette(palette.reshape(-1).tolist())
        return image
    return Image.fromarray(mask.astype(np.uint16))


def colourise(mask: np.ndarray, palette: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Class ids → RGB [H, W, 3]; ignored (or unknown) ids are white."""
    colours = np.concatenate([palette, np.array([IGNORED_COLOUR], dtype=np.uint8)])
    ids = np.where((mask >= 0) & (mask < len(palette)) & (mask != ignore_index), mask, len(palette))
    return colours[ids]


def pixels_per_class(mask: np.ndarray, num_classes: int) -> list[tuple[int, int]]:
    """(class id, pixels) of each class present in a class-id mask, largest first (ties: the lower id)."""
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=num_classes)
    return [(int(c), int(counts[c])) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
