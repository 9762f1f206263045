"""COCO instance annotations (polygons, RLE) → semantic masks of contiguous class ids.

The rules, also written into `coco_category_map.json` next to the masks:

- Classes: COCO category ids in ascending order become contiguous class ids. With a background class (the
  default) it is class 0 and the categories are 1..K; without one the categories are 0..K-1 and pixels
  that no annotation covers are `ignore_index`.
- Coverage: a pixel belongs to a polygon when its centre lies inside it (even-odd rule; a centre exactly on
  a left/top edge is inside, on a right/bottom edge outside), as pycocotools does: the polygon of a box
  [x, y, x+w, y+h] covers exactly w×h pixels. An annotation's polygons are united.
- Overlaps: the smaller instance (fewer pixels) is drawn on top of the larger one, so that an object
  lying on another (a cup on a table) keeps its pixels whatever order the file lists them in; between
  instances of equal size the later annotation wins.
- Crowds: `iscrowd: 1` regions become `ignore_index`, below every non-crowd instance (an instance
  annotated inside a crowd keeps its class).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hf_segformer.data.labels import ID2LABEL_FILE
from hf_segformer.errors import DataError, problems_message

CATEGORY_MAP_FILE = "coco_category_map.json"
RULES = {
    "coverage": "a pixel belongs to a polygon when its centre is inside it (even-odd); polygons of one "
                "annotation are united; RLE masks are used as given",
    "overlaps": "the instance with fewer pixels is drawn on top; equal sizes: the later annotation wins",
    "crowd": "iscrowd regions are ignore_index, below every non-crowd instance",
}


@dataclass
class CategoryMap:
    """COCO category id → contiguous class id, and the class names that go with them."""

    category_to_class: dict[int, int]
    id2label: dict[int, str]
    background_class: int | None
    ignore_index: int

    @classmethod
    def from_categories(cls, categories: list[dict], background: str | None = "background",
                        ignore_index: int = 255) -> "CategoryMap":
        ids = [int(c["id"]) for c in categories]
        if len(set(ids)) != len(ids):
            raise DataError(f"COCO categories: duplicate category ids in {sorted(ids)}.")
        offset = 0 if background is None else 1
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        id2label = {} if background is None else {0: background}
        id2label.update({i + offset: str(c["name"]) for i, c in enumerate(ordered)})
        if ignore_index in id2label:
            raise DataError(f"{len(id2label)} classes would use class id {ignore_index}, the ignore_index; "
                            "choose a larger ignore_index (masks are then written as 16-bit PNGs).")
        return cls({int(c["id"]): i + offset for i, c in enumerate(ordered)}, id2label,
                   None if background is None else 0, ignore_index)

    def mask_dtype(self) -> type:
        return np.uint8 if max(max(self.id2label), self.ignore_index) < 256 else np.uint16

    def save(self, folder: str | os.PathLike, categories: list[dict]) -> Path:
        """Write `coco_category_map.json` (mapping and rules) and `id2label.json` into folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        by_id = {int(c["id"]): c for c in categories}
        payload = {
            "background_class": self.background_class,
            "ignore_index": self.ignore_index,
            "categories": [{"category_id": cid, "class_id": class_id, "name": self.id2label[class_id],
                            "supercategory": by_id[cid].get("supercategory")}
                           for cid, class_id in self.category_to_class.items()],
            "rules": RULES,
        }
        (folder / CATEGORY_MAP_FILE).write_text(json.dumps(payload, indent=1) + "\n")
        (folder / ID2LABEL_FILE).write_text(json.dumps({str(k): v for k, v in self.id2label.items()}, indent=1) + "\n")
        return folder / CATEGORY_MAP_FILE


def decode_compressed_counts(counts: str | bytes) -> list[int]:
    """COCO's compressed RLE string → run lengths.

    Each run is a little-endian sequence of 5-bit groups stored as characters from '0' (48); bit 0x20 marks
    that another group follows, bit 0x10 of the last group is the sign. From the fourth run on, a run is
    stored as its difference to the run two places before.
    """
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise DataError(f"Compressed RLE counts end in the middle of a run: {text[:40]!r}.")
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(segmentation: dict, height: int, width: int, name: str = "annotation") -> np.ndarray:
    """An RLE segmentation ({'size': [h, w], 'counts': list or string}) → boolean H×W mask.

    Runs alternate between 0s and 1s (starting with 0s) over the pixels in column-major order."""
    size = [int(v) for v in segmentation.get("size", [])]
    if size != [height, width]:
        raise DataError(f"{name}: RLE size {size} is not the image's [height, width] = [{height}, {width}].")
    counts = segmentation.get("counts")
    runs = np.asarray(decode_compressed_counts(counts) if isinstance(counts, (str, bytes)) else counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or runs.sum() != height * width:
        raise DataError(f"{name}: RLE runs must be non-negative and sum to {height}×{width} = {height * width} "
                        f"pixels; they sum to {int(runs.sum()) if runs.ndim == 1 else 'n/a'}.")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def polygon_mask(polygons: list[list[float]], height: int, width: int, name: str = "annotation") -> np.ndarray:
    """Polygons ([x1, y1, x2, y2, ...] each, in pixel-edge coordinates) → boolean H×W mask of the pixels whose
    centre lies inside at least one of them (scanline crossings at pixel centres, even-odd per polygon)."""
    mask = np.zeros((height, width), dtype=bool)
    for flat in polygons:
        points = np.asarray(flat, dtype=np.float64)
        if points.ndim != 1 or len(points) < 6 or len(points) % 2:
            raise DataError(f"{name}: a polygon needs at least 3 (x, y) points as a flat list; got {list(flat)[:8]}.")
        x0, y0 = points[0::2], points[1::2]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # An edge crosses the rows whose centre r + 0.5 lies in [min(y0, y1), max(y0, y1)).
        first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
        stop = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
        lengths = np.maximum(stop - first, 0)
        edge = np.repeat(np.arange(len(x0)), lengths)
        rows = first[edge] + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        centre_y = rows + 0.5
        crossing = x0[edge] + (centre_y - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        # Every pixel whose centre is at or right of the crossing toggles inside/outside.
        columns = np.clip(np.ceil(crossing - 0.5), 0, width).astype(np.int64)
        toggles = np.zeros((height, width + 1), dtype=np.int32)
        np.add.at(toggles, (rows, columns), 1)
        mask |= (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)
    return mask


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """The boolean mask of one annotation, from its polygons or its RLE."""
    name = f"annotation {annotation.get('id', '?')} (image {annotation.get('image_id', '?')})"
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):
        return decode_rle(segmentation, height, width, name)
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, height, width, name)
    raise DataError(f"{name}: segmentation must be a list of polygons or an RLE dict; got {type(segmentation).__name__}.")


def semantic_mask(annotations: list[dict], height: int, width: int, category_map: CategoryMap) -> np.ndarray:
    """Paint one image's annotations into a class-id mask following the module's overlap and crowd rules."""
    fill = category_map.background_class if category_map.background_class is not None else category_map.ignore_index
    mask = np.full((height, width), fill, dtype=category_map.mask_dtype())
    crowds, instances = [], []
    for index, annotation in enumerate(annotations):
        category = int(annotation.get("category_id", -1))
        if category not in category_map.category_to_class:
            raise DataError(f"annotation {annotation.get('id', '?')}: category_id {category} is not in the "
                            f"file's categories {sorted(category_map.category_to_class)}.")
        pixels = annotation_mask(annotation, height, width)
        if annotation.get("iscrowd"):
            crowds.append(pixels)
        else:
            instances.append((-int(pixels.sum()), index, pixels, category_map.category_to_class[category]))
    for pixels in crowds:
        mask[pixels] = category_map.ignore_index
    for _, _, pixels, class_id in sorted(instances, key=lambda item: (item[0], item[1])):
        mask[pixels] = class_id
    return mask


def annotations_by_image(coco: dict, name: str, category_map: CategoryMap) -> dict[int, list[dict]]:
    """Image id → its annotations, once every annotation is known to name a listed image and category: checked
    for the whole file before any mask is written, so that a bad annotation leaves no half-converted output."""
    by_image: dict[int, list[dict]] = {}
    problems = []
    for annotation in coco["annotations"]:
        label = f"annotation {annotation.get('id', '?')}"
        try:
            image_id, category = int(annotation["image_id"]), int(annotation["category_id"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{label}: needs an integer image_id and category_id; got image_id "
                            f"{annotation.get('image_id')!r}, category_id {annotation.get('category_id')!r}")
            continue
        if category not in category_map.category_to_class:
            problems.append(f"{label} (image {image_id}): category_id {category} is not in 'categories'")
        by_image.setdefault(image_id, []).append(annotation)
    orphans = sorted(set(by_image) - {int(image["id"]) for image in coco["images"]})
    if orphans:
        problems.append(f"annotations refer to image ids {orphans[:10]} that are not in 'images'")
    if problems:
        raise DataError(problems_message(f"{name}: annotations that cannot be converted", problems,
                                         f"The file's categories are {sorted(category_map.category_to_class)}: "
                                         "fix these annotations or export the file again; nothing was written."))
    return by_image


def load_coco(path: str | os.PathLike) -> dict:
    """Read a COCO instances file and check that it has what conversion needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} does not exist.")
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}.") from err
    if not isinstance(coco, dict):
        raise DataError(f"{path}: a COCO instances file is a JSON object with 'images', 'annotations' and "
                        f"'categories'; its top level is a {type(coco).__name__}.")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(coco.get(key), list)]
    if missing:
        raise DataError(f"{path}: a COCO instances file needs lists 'images', 'annotations' and 'categories'; "
                        f"missing {missing}.")
    return coco


@dataclass
class ConversionSummary:
    split: str
    images: int
    annotations: int
    crowd_annotations: int


def _user_file_in_the_way(source: Path, target: Path) -> bool:
    """A regular file (not our link) at target that is not a copy of source: never replaced."""
    if target.is_symlink() or not target.exists():
        return False
    return not (target.is_file() and filecmp.cmp(source, target, shallow=False))


def _place_image(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    elif target.exists():  # a copy of this very image (checked before any write): keep it
        return
    if copy:
        shutil.copy2(source, target)
    else:
        target.symlink_to(source.resolve())


def convert_split(coco: dict, image_dir: str | os.PathLike, output_dir: str | os.PathLike, split: str,
                  category_map: CategoryMap, copy_images: bool = False) -> ConversionSummary:
    """Write `output_dir/masks/<split>/<file>.png` for every image of a COCO file and link (or copy) the image
    to `output_dir/images/<split>/<file>`, so that output_dir is a `data_dir` for the recipes."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    by_image = annotations_by_image(coco, f"COCO split '{split}'", category_map)
    missing = [image["file_name"] for image in coco["images"] if not (image_dir / image["file_name"]).is_file()]
    if missing:
        raise DataError(f"COCO split '{split}': {len(missing)} image file(s) not found in {image_dir}, e.g. {missing[:3]}.")
    in_the_way = [str(output_dir / "images" / split / image["file_name"]) for image in coco["images"]
                  if _user_file_in_the_way(image_dir / image["file_name"], output_dir / "images" / split / image["file_name"])]
    if in_the_way:
        raise DataError(f"COCO split '{split}': {len(in_the_way)} file(s) already in the output are not these images, "
                        f"e.g. {in_the_way[:3]}; they are never replaced: convert into a new output folder.")
    crowd = 0
    for image in coco["images"]:
        annotations = by_image.get(int(image["id"]), [])
        crowd += sum(bool(a.get("iscrowd")) for a in annotations)
        mask = semantic_mask(annotations, int(image["height"]), int(image["width"]), category_map)
        relative = Path(image["file_name"])
        mask_path = output_dir / "masks" / split / relative.with_suffix(".png")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mask_path)
        _place_image(image_dir / relative, output_dir / "images" / split / relative, copy_images)
    return ConversionSummary(split, len(coco["images"]), len(coco["annotations"]), crowd)


def convert_coco(splits: dict[str, tuple[str | os.PathLike, str | os.PathLike]], output_dir: str | os.PathLike,
                 background: str | None = "background", ignore_index: int = 255,
                 copy_images: bool = False, overwrite: bool = False) -> list[ConversionSummary]:
    """Convert {split: (annotation file, image folder)} into a data_dir with one category map for all splits.

    Every split must list the same categories (same ids and names), or the class ids would disagree. An output
    folder that already holds anything is refused unless `overwrite` (two label schemes must not mix silently);
    even then a user's image file is never replaced (by a link or otherwise)."""
    files = {split: load_coco(annotations) for split, (annotations, _) in splits.items()}
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} is a file: pick a new folder for the converted dataset.")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
        raise DataError(f"output folder {out} is not empty ({shown}): converting into it would replace its masks "
                        "and id2label.json. Pick a new folder, or pass --overwrite to write into it (a user's "
                        "images are still never replaced).")
    first_split, first = next(iter(files.items()))
    reference = sorted((int(c["id"]), str(c["name"])) for c in first["categories"])
    for split, coco in files.items():
        if sorted((int(c["id"]), str(c["name"])) for c in coco["categories"]) != reference:
            raise DataError(f"COCO split '{split}' lists other categories than split '{first_split}'; "
                            "all splits must share one category list.")
    category_map = CategoryMap.from_categories(first["categories"], background, ignore_index)
    for split, coco in files.items():  # every split checked before the first one is written
        annotations_by_image(coco, f"{splits[split][0]} (split '{split}')", category_map)
    summaries = [convert_split(files[split], image_dir, output_dir, split, category_map, copy_images)
                 for split, (_, image_dir) in splits.items()]
    category_map.save(output_dir, first["categories"])
    return summaries
