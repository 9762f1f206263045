"""The deploy report's evaluation pairs, given as (image, mask) pairs or a Dataset, as the undecoded Dataset that the
evaluate command's loop reads (so every row is scored by that loop, each mask at its native size)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_segformer.errors import DataError


def _entry(item: Any, what: str, index: int) -> dict[str, Any]:
    """An undecoded datasets.Image entry for a path, PIL image or array."""
    if isinstance(item, dict) and ("path" in item or "bytes" in item):
        return {"path": item.get("path"), "bytes": item.get("bytes")}
    if isinstance(item, (str, Path)):
        if not Path(item).is_file():
            raise DataError(f"deploy report: {what} {index} ({item}) does not exist.")
        return {"path": str(item), "bytes": None}
    if isinstance(item, np.ndarray):
        item = Image.fromarray(item)
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return {"path": None, "bytes": buffer.getvalue()}
    raise DataError(f"deploy report: {what} {index} is a {type(item).__name__}; give a path, PIL image or array.")


def pairs_dataset(pairs: Any) -> Dataset:
    """(image, mask) pairs, or a datasets.Dataset with `image` and `label` columns, as the undecoded Dataset the
    evaluate command's loop reads."""
    features = Features({"image": ImageFeature(decode=False), "label": ImageFeature(decode=False)})
    if isinstance(pairs, Dataset):
        missing = {"image", "label"} - set(pairs.column_names)
        if missing:
            raise DataError(f"deploy report: the dataset lacks column(s) {sorted(missing)}; it needs image and label.")
        return pairs.select_columns(["image", "label"]).cast(features)
    pairs = list(pairs)
    if not pairs:
        raise DataError("deploy report: no (image, mask) pairs to evaluate on.")
    images = [_entry(image, "image", i) for i, (image, _) in enumerate(pairs)]
    labels = [_entry(mask, "mask", i) for i, (_, mask) in enumerate(pairs)]
    return Dataset.from_dict({"image": images, "label": labels}, features=features)
