"""COCO instances JSON: read it through the project's converter (hf_segformer.data.coco: categories, polygon coverage,
RLE, overlap and crowd rules), and write a model's masks as RLE annotations for a tool to import.

Import differs from `hf-segformer coco-to-masks` only where the labeling round trip needs it: images are copied
(never linked), an image without any annotation is kept out and listed (COCO files list every image of a task),
and the output folder follows the import rules of layout.py. Categories that carry a `color` (COCO panoptic
style) give the colour map.

Export: one annotation per class present in an image, `iscrowd: 0`, its pixels as compressed RLE (column-major
runs starting with a run of 0s; each run in 5-bit groups, least significant first, as characters from '0' with
0x20 marking that another group follows and 0x10 of the last group the sign; from the fourth run on a run is
stored as its difference to the run two places before), `area` and `bbox` from the pixels, and `score` when the
image has one. Category ids are 1..K in class-id order, so that importing the file back gives the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from hf_segformer.data.annotations.layout import ClassTable, ImportPlan, PlannedImage, claim_output, write_new_file
from hf_segformer.data.annotations.preannotations import ExportClasses, MaskToExport
from hf_segformer.data.annotations.sources import split_name
from hf_segformer.data.coco import RULES as COCO_RULES
from hf_segformer.data.coco import CategoryMap, annotations_by_image, load_coco, semantic_mask
from hf_segformer.errors import DataError, problems_message


def _image_root(path: Path, images: list[dict], images_dir: Path | None) -> Path:
    """The folder COCO's file_name values are relative to: the one given, else the first of the usual places
    (next to the JSON, its images/ folder, the parent's images/) holding the first image."""
    candidates = [images_dir] if images_dir else [path.parent, path.parent / "images", path.parent.parent / "images"]
    if not images:
        return candidates[0]
    for root in candidates:
        if (root / images[0]["file_name"]).is_file():
            return root
    raise DataError(f"{path}: image {images[0]['file_name']} not found in "
                    f"{', '.join(str(c) for c in candidates)}; give --images, the folder file_name is relative to.")


def read_exports(sources: list[tuple[str, Path, Path | None]], unlabelled: str = "background",
                 keep_unannotated: bool = False, ignore_index: int = 255) -> ImportPlan:
    """Plan the import of COCO files, one per split: [(split, instances.json, image folder or None)]. All files
    must list the same categories (else the class ids would disagree)."""
    files = [(split, Path(path), images_dir, load_coco(path)) for split, path, images_dir in sources]
    reference = sorted((int(c["id"]), str(c["name"])) for c in files[0][3]["categories"])
    for split, path, _, coco in files[1:]:
        if sorted((int(c["id"]), str(c["name"])) for c in coco["categories"]) != reference:
            raise DataError(f"{path} lists other categories than {files[0][1]}; all splits must share one list.")
    categories = files[0][3]["categories"]
    category_map = CategoryMap.from_categories(categories, "background" if unlabelled == "background" else None,
                                               ignore_index)
    colours = {category_map.category_to_class[int(c["id"])]: tuple(int(v) for v in c["color"])
               for c in categories if isinstance(c.get("color"), list) and len(c["color"]) == 3}
    classes = ClassTable(category_map.id2label, colours, ignore_index)

    planned, unannotated, problems = [], [], []
    for split, path, images_dir, coco in files:
        by_image = annotations_by_image(coco, str(path), category_map)
        root = _image_root(path, coco["images"], images_dir)
        for image in coco["images"]:
            annotations = by_image.get(int(image["id"]), [])
            if not annotations and not keep_unannotated:
                unannotated.append(str(image["file_name"]))
                continue
            source = root / image["file_name"]
            if not source.is_file():
                problems.append(f"{path}: image {image['file_name']} (id {image['id']}) not found in {root}")
                continue
            planned.append(PlannedImage(source, PurePosixPath(Path(image["file_name"]).as_posix()),
                                        split_name(split), f"{path.name} image {image['id']}",
                                        _renderer(annotations, int(image["height"]), int(image["width"]), category_map),
                                        len(annotations)))
    if problems:
        raise DataError(problems_message("COCO images not found", problems, "Give --images (the folder file_name is "
                                         "relative to), per split as SPLIT=FOLDER when they differ."))
    rules = dict(COCO_RULES)
    rules["unannotated"] = "images without annotations are kept out (unannotated.txt)"
    rules["unlabelled"] = "class 0 (background)" if unlabelled == "background" else "ignore_index"
    return ImportPlan("coco", [str(p) for _, p, _, _ in files], classes, planned, unannotated, [], rules)


def _renderer(annotations: list[dict], height: int, width: int, category_map: CategoryMap):
    return lambda: semantic_mask(annotations, height, width, category_map).astype(np.int64)


def mask_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in column-major order, the first run counting 0s (maybe an empty run)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    if flat.size == 0:
        return [0]
    bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0] + runs if flat[0] else runs


def encode_compressed_counts(runs: list[int]) -> str:
    """Run lengths → COCO's compressed RLE string (the inverse of hf_segformer.data.coco.decode_compressed_counts)."""
    characters = []
    for index, run in enumerate(runs):
        value = int(run) - int(runs[index - 2]) if index > 2 else int(run)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: a negative value ends at -1
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr((group | (0x20 if more else 0)) + 48))
    return "".join(characters)


def _bbox(pixels: np.ndarray) -> list[float]:
    rows, columns = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
    return [float(columns[0]), float(rows[0]), float(columns[-1] - columns[0] + 1), float(rows[-1] - rows[0] + 1)]


def write_coco_rle(items: Iterable[MaskToExport], output: Path, classes: ExportClasses, model_version: str | None,
                   overwrite: bool = False) -> Path:
    """A COCO instances file of the masks (see the module docstring)."""
    claim_output(output, overwrite)
    category_of = {class_id: number for number, class_id in enumerate(classes.exported, 1)}
    images, annotations = [], []
    for image_id, item in enumerate(items, 1):
        mask = item.class_ids()
        classes.check(mask, str(item.mask if isinstance(item.mask, Path) else item.relative))
        height, width = mask.shape
        images.append({"id": image_id, "file_name": item.relative.as_posix(), "width": width, "height": height})
        for class_id in classes.exported:
            pixels = mask == class_id
            if not pixels.any():
                continue
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_of[class_id],
                          "segmentation": {"size": [height, width],
                                           "counts": encode_compressed_counts(mask_runs(pixels))},
                          "area": int(pixels.sum()), "bbox": _bbox(pixels), "iscrowd": 0}
            if item.score is not None:
                annotation["score"] = round(float(item.score), 6)
            annotations.append(annotation)
    payload = {"info": {"description": "pre-annotations written by hf-segformer",
                        "version": model_version or "hf-segformer"},
               "images": images, "annotations": annotations,
               "categories": [{"id": number, "name": classes.id2label[class_id], "supercategory": ""}
                              for class_id, number in category_of.items()]}
    return write_new_file(output, json.dumps(payload).encode(), overwrite)
