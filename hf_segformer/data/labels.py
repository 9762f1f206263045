"""Mask files → class-id arrays, and where class names come from.

Every path that reads a mask (pre-flight check, training and evaluation transforms) goes through
`LabelDecoder`, so palette handling, colour maps and `reduce_labels` are applied in exactly one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hf_segformer.config.values import normalise_id2label
from hf_segformer.errors import DataError

ID2LABEL_FILE = "id2label.json"



def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass
class LabelDecoder:
    """Decode a mask (PIL image or array) into an integer class-id array.

    Palette masks are read as their indices (never converted to grey levels), 16-bit masks keep
    their values, RGB masks go through `colour_map`, `binary_masks` maps 255 → 1 (0/255 masks), and
    `reduce_labels` maps 0 → ignore, k → k-1.
    """

    colour_map: dict[tuple[int, int, int], int] | None = None
    reduce_labels: bool = False
    ignore_index: int = 255
    binary_masks: bool = False  # 0/255 masks: 255 is the foreground class 1, not the ignore index
    _keys: np.ndarray = field(init=False, repr=False)
    _values: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.colour_map:
            keys = _rgb_key(np.array(list(self.colour_map), dtype=np.uint8))
            order = np.argsort(keys)
            self._keys = keys[order]
            self._values = np.array(list(self.colour_map.values()), dtype=np.int32)[order]

    def __call__(self, mask: Image.Image | np.ndarray, name: str = "mask") -> np.ndarray:
        array = self._to_array(mask, name)
        if self.binary_masks:
            array = np.where(array == 255, 1, array).astype(array.dtype)
        if self.reduce_labels:
            array = array.astype(np.int32)
            void = (array == 0) | (array == self.ignore_index)
            array -= 1
            array[void] = self.ignore_index
        return array

    def _to_array(self, mask: Image.Image | np.ndarray, name: str) -> np.ndarray:
        if isinstance(mask, np.ndarray):
            array = mask
        else:
            if mask.mode in ("RGB", "RGBA"):
                array = np.asarray(mask.convert("RGB") if mask.mode == "RGBA" else mask)
            elif mask.mode == "LA":
                array = np.asarray(mask)[..., 0]
            elif mask.mode == "1":
                array = np.asarray(mask, dtype=np.uint8)
            else:  # L, P (palette indices), I;16, I
                array = np.asarray(mask)
        if array.ndim == 3:
            return self._colours_to_ids(array, name)
        if array.ndim != 2:
            raise DataError(f"{name}: a mask must be 2-D (H×W); got shape {array.shape}.")
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{name}: mask values must be integers; got dtype {array.dtype}.")
        return array

    def _colours_to_ids(self, rgb: np.ndarray, name: str) -> np.ndarray:
        if rgb.shape[-1] not in (3, 4):
            raise DataError(f"{name}: a colour mask must have 3 channels; got shape {rgb.shape}.")
        rgb = rgb[..., :3]
        if not self.colour_map:
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                return np.ascontiguousarray(rgb[..., 0])
            raise DataError(
                f"{name}: this mask is an RGB colour image. Give the colour → class map in the recipe "
                "(colour_map: {'#RRGGBB': class_id, ...}) or save masks as single-channel class ids."
            )
        keys = _rgb_key(rgb)
        pos = np.clip(np.searchsorted(self._keys, keys), 0, len(self._keys) - 1)
        known = self._keys[pos] == keys
        if not known.all():
            unknown = np.unique(keys[~known])
            shown = ", ".join(f"#{int(k):06X}" for k in unknown[:5])
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise DataError(f"{name}: colour(s) {shown}{more} are not in colour_map; add them (or map them to the ignore index).")
        return self._values[pos].astype(np.uint8 if self._values.max() < 256 else np.int32)



def numbered_classes(num_labels: int) -> dict[int, str]:
    """Names for classes nobody named: class_0, class_1, ... (training, the model card, predict and the demo)."""
    return {i: f"class_{i}" for i in range(num_labels)}


def find_id2label_file(*folders: str | os.PathLike | None) -> dict[int, str] | None:
    """Look for an `id2label.json` next to the data (the folder itself or its parent)."""
    for folder in folders:
        if folder is None:
            continue
        for candidate in (Path(folder) / ID2LABEL_FILE, Path(folder).parent / ID2LABEL_FILE):
            if candidate.is_file():
                return normalise_id2label(str(candidate))
    return None
