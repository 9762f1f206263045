"""Mask files → class-id arrays, and where class names come from.

Every path that reads a mask (pre-flight check, training and evaluation transforms) goes through
`LabelDecoder`, so palette handling, colour maps, label maps and `reduce_labels` are applied in exactly one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hf_segformer.errors import DataError

ID2LABEL_FILE = "id2label.json"
COLOUR_SPACE_MODES = ("CMYK", "YCbCr", "LAB", "HSV")  # PIL modes no mask is saved in: refused, never guessed


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass
class LabelDecoder:
    """Decode a mask (PIL image or array) into an integer class-id array.

    Palette masks are read as their indices (never converted to grey levels), 16-bit masks keep
    their values, RGB masks go through `colour_map`, `label_map` sends raw values to class ids (values it does not
    name to the ignore index, or kept as they are with `label_map_default: keep`), `binary_masks` maps 255 → 1
    (0/255 masks), and `reduce_labels` maps 0 → ignore, k → k-1. `config.data` refuses a label map together with
    the other three: each would re-map what the label map already decided.
    """

    colour_map: dict[tuple[int, int, int], int] | None = None
    reduce_labels: bool = False
    ignore_index: int = 255
    binary_masks: bool = False  # 0/255 masks: 255 is the foreground class 1, not the ignore index
    label_map: dict[int, int] | None = None  # raw mask value → class id (or the ignore index)
    label_map_default: str = "ignore"  # raw values the label map does not name: "ignore" or "keep"
    # set where masks are read without the pre-flight check (check_data: false): a value outside the classes is
    # an error naming the file, not a crash deep in the loss or the metric
    num_labels: int | None = None
    _keys: np.ndarray = field(init=False, repr=False)
    _values: np.ndarray = field(init=False, repr=False)
    _raw: np.ndarray = field(init=False, repr=False)
    _mapped: np.ndarray = field(init=False, repr=False)
    _lut: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.colour_map:
            keys = _rgb_key(np.array(list(self.colour_map), dtype=np.uint8))
            order = np.argsort(keys)
            self._keys = keys[order]
            self._values = np.array(list(self.colour_map.values()), dtype=np.int32)[order]
        if self.label_map:
            raw = np.array(sorted(self.label_map), dtype=np.int64)
            self._raw, self._mapped = raw, np.array([self.label_map[int(r)] for r in raw], dtype=np.int64)
            lut = np.array([self.map_raw_value(v) for v in range(256)], dtype=np.int64)  # 8-bit masks: one lookup
            self._lut = lut.astype(np.uint8 if 0 <= lut.min() and lut.max() < 256 else np.int32)

    def __call__(self, mask: Image.Image | np.ndarray, name: str = "mask") -> np.ndarray:
        return self._in_range(self._decode(self._to_array(mask, name)), name)

    def _in_range(self, label: np.ndarray, name: str) -> np.ndarray:
        """With `num_labels`: every value is a class id or the ignore index (a cheap max/min first)."""
        if self.num_labels is None or (int(label.min(initial=0)) >= 0 and int(label.max(initial=0)) < self.num_labels):
            return label
        bad = np.unique(label[((label < 0) | (label >= self.num_labels)) & (label != self.ignore_index)])
        if len(bad):
            raise DataError(f"{name}: values {', '.join(str(v) for v in bad[:10])} are outside the {self.num_labels} "
                            f"classes [0, {self.num_labels}) and are not ignore_index={self.ignore_index}. Fix this "
                            "mask, or correct num_labels / id2label / ignore_index; `hf-segformer check-data` lists "
                            "every such file (check_data: true runs it before training).")
        return label

    def decode_counted(self, mask: Image.Image | np.ndarray,
                       name: str = "mask") -> tuple[np.ndarray, dict[int, int] | None]:
        """The class-id array and, with a label map, the pixels of each raw value before it was mapped (what the
        pre-flight check reports as found, mapped and dropped)."""
        array = self._to_array(mask, name)
        return self._decode(array), (_value_counts(array) if self.label_map else None)

    def map_raw_value(self, raw: int) -> int:
        """The class id (or ignore index) a raw mask value becomes under the label map."""
        if self.label_map and raw in self.label_map:
            return self.label_map[raw]
        return self.ignore_index if self.label_map_default == "ignore" else raw

    def _decode(self, array: np.ndarray) -> np.ndarray:
        if self.label_map:
            array = self._apply_label_map(array)
        if self.binary_masks:
            array = np.where(array == 255, 1, array).astype(array.dtype)
        if self.reduce_labels:
            array = array.astype(np.int32)
            void = (array == 0) | (array == self.ignore_index)
            array -= 1
            array[void] = self.ignore_index
        return array

    def _apply_label_map(self, array: np.ndarray) -> np.ndarray:
        if array.dtype == np.uint8:
            return self._lut[array]
        flat = array.astype(np.int64, copy=False)
        pos = np.clip(np.searchsorted(self._raw, flat), 0, len(self._raw) - 1)
        named = self._raw[pos] == flat
        unnamed = self.ignore_index if self.label_map_default == "ignore" else flat
        mapped = np.where(named, self._mapped[pos], unnamed)
        low, high = int(mapped.min(initial=0)), int(mapped.max(initial=0))
        return mapped.astype(np.uint8 if 0 <= low and high < 256 else np.int32)

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
            elif mask.mode in COLOUR_SPACE_MODES:
                raise DataError(f"{name}: this mask is a {mask.mode} {mask.format or ''} image (a photo or print "
                                "colour space), not class ids: its values cannot be read as classes. Save masks as "
                                "single-channel PNG class ids (or RGB with a colour_map).")
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


def _value_counts(array: np.ndarray) -> dict[int, int]:
    if array.dtype in (np.uint8, np.uint16):
        counts = np.bincount(array.ravel(), minlength=1)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(array, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def numbered_classes(num_labels: int) -> dict[int, str]:
    """Names for classes nobody named: class_0, class_1, ... (training, the model card, predict and the demo)."""
    return {i: f"class_{i}" for i in range(num_labels)}


def find_id2label_file(*folders: str | os.PathLike | None) -> str | None:
    """The path of an `id2label.json` next to the data (the folder itself or its parent), unread: the caller
    reads it with `normalise_id2label` once the class names' source is settled."""
    for folder in folders:
        if folder is None:
            continue
        for candidate in (Path(folder) / ID2LABEL_FILE, Path(folder).parent / ID2LABEL_FILE):
            if candidate.is_file():
                return str(candidate)
    return None
