"""Label Studio: read a JSON export into class-id masks, and write a model's masks as predictions to import.

The export ("JSON" in Label Studio's export dialog) is a list of tasks:

    {"id": 7, "data": {"image": "/data/upload/3/1a2b3c4d-photo.jpg"}, "file_upload": "1a2b3c4d-photo.jpg",
     "annotations": [{"id": 21, "was_cancelled": false, "ground_truth": false, "updated_at": "...",
                      "result": [{"id": "r1", "type": "brushlabels", "original_width": 640, "original_height": 480,
                                  "image_rotation": 0,
                                  "value": {"format": "rle", "rle": [...], "brushlabels": ["cat"]}},
                                 {"id": "r2", "type": "polygonlabels", "original_width": 640, ...,
                                  "value": {"points": [[10.0, 20.5], ...], "polygonlabels": ["dog"]}}]}],
     "predictions": [...]}

Geometry is read from the value: `rle` (brush, see brush_rle.py), `points` (polygon, [x, y] in percent of the
image's width and height), `x`/`y`/`width`/`height` (rectangle, percent, unrotated). A region's class is its
`*labels` list (exactly one name); a result that carries only labels for the same region id counts too. Other
results (choices, text areas, key points) are not regions and are skipped; ellipses and rotated shapes are
refused. Pixel coverage of polygons and rectangles follows coco.py (pixel centre inside).

Per task the annotation used is the ground-truth one, else the latest (`updated_at`); cancelled (skipped)
annotations are not used, and a task with none is unannotated (listed, kept out). A submitted annotation
without regions means "nothing to label here": an all-background mask (unlabelled="background"), or unannotated
when unlabelled pixels are ignored. Where two regions of different
classes cover a pixel the pixel is ignored (`overlaps="ignore"`, reported) or the smaller region wins
(`overlaps="smaller"`, coco.py's rule). Pixels no region covers are ignore_index (`unlabelled="ignore"`, the
default: Label Studio does not tell unpainted from background) or class 0 "background".

Images are found from `data.<image_key>`: a local-storage URL's `d=` path, the file name of an upload (with or
without the 8-hex-digit prefix Label Studio adds) or of any URL, looked up under `images_dir`.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import ImageColor

from hf_segformer.data.annotations import brush_rle
from hf_segformer.data.annotations.layout import (
    ClassTable,
    ImportPlan,
    PlannedImage,
    claim_output,
    hex_colour,
    upright_size,
    write_new_file,
)
from hf_segformer.data.annotations.preannotations import ExportClasses, LabelStudioOptions, MaskToExport
from hf_segformer.data.coco import RULES as COCO_RULES
from hf_segformer.data.coco import polygon_mask
from hf_segformer.data.images import IMAGE_EXTENSIONS
from hf_segformer.errors import DataError, problems_message

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")
OVERLAP_CHOICES = ("ignore", "smaller")
CONTESTED = -2


def load_tasks(path: Path) -> list[dict]:
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such Label Studio export.") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); export the project as 'JSON'.") from err
    if isinstance(tasks, dict) and "data" in tasks:
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise DataError(f"{path}: a Label Studio JSON export is a list of tasks, each with a 'data' object; export "
                        "the project as 'JSON' (not JSON-MIN or CSV).")
    return tasks


def parse_label_config(config: str | Path) -> tuple[list[str], dict[str, tuple[int, int, int]]]:
    """Label names in the order of the labeling config's <Label value=...> tags (under any *Labels tag), and
    the colours of their `background` attributes where PIL can read them."""
    text = Path(config).read_text(encoding="utf-8") if Path(str(config)).is_file() else str(config)
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as err:
        raise DataError(f"label config {config}: not valid XML ({err}).") from err
    names, colours = [], {}
    for control in root.iter():
        if not control.tag.lower().endswith("labels"):
            continue
        for label in control.iter("Label"):
            name = label.get("value")
            if name is None or name in names:
                continue
            names.append(name)
            try:
                colours[name] = ImageColor.getrgb(label.get("background", ""))[:3]
            except ValueError:
                pass
    if not names:
        raise DataError(f"label config {config}: no <Label value=...> under a *Labels tag.")
    return names, colours


def label_config_xml(classes: ExportClasses, options: LabelStudioOptions,
                     colours: dict[int, tuple[int, int, int]]) -> str:
    """A labeling config whose names match the written predictions (brush labels, the model's colours)."""
    lines = ["<View>",
             f"  <Image name={quoteattr(options.to_name)} value={quoteattr('$' + options.image_key)} zoom=\"true\"/>",
             f"  <BrushLabels name={quoteattr(options.from_name)} toName={quoteattr(options.to_name)}>"]
    for class_id in classes.exported:
        lines.append(f"    <Label value={quoteattr(classes.id2label[class_id])} "
                     f"background={quoteattr(hex_colour(colours[class_id]))}/>")
    return "\n".join(lines + ["  </BrushLabels>", "</View>"]) + "\n"


def image_reference(task: dict, image_key: str | None, where: str) -> str:
    data = task["data"]
    if image_key:
        if not isinstance(data.get(image_key), str):
            raise DataError(f"{where}: data has no '{image_key}' (keys: {sorted(data)}); give the labeling config's "
                            "<Image value=\"$...\"> variable as --image_key.")
        return data[image_key]
    if isinstance(data.get("image"), str):
        return data["image"]
    found = [v for v in data.values() if isinstance(v, str)
             and PurePosixPath(urlparse(v).path).suffix.lower() in IMAGE_EXTENSIONS]
    if len(found) != 1:
        raise DataError(f"{where}: cannot tell which of the data keys {sorted(data)} is the image; give --image_key.")
    return found[0]


def image_candidates(reference: str, file_upload: str | None = None) -> list[str]:
    """Relative paths an image reference may have under the images folder, most specific first."""
    parsed = urlparse(reference)
    names = list(parse_qs(parsed.query).get("d", []))  # local storage: /data/local-files/?d=folder/photo.jpg
    if parsed.path and not parsed.path.endswith("/") and not parsed.path.endswith("local-files"):
        names.append(PurePosixPath(unquote(parsed.path)).name)
    if file_upload:
        names.append(PurePosixPath(file_upload).name)
    for name in list(names):
        match = UPLOAD_PREFIX.match(PurePosixPath(name).name)
        if match:
            names.append(match.group(1))
    names += [PurePosixPath(name).name for name in names]
    return list(dict.fromkeys(n for n in names if n))


def find_image(reference: str, file_upload: str | None, images_dir: Path | None) -> tuple[Path, PurePosixPath] | None:
    local = Path(unquote(urlparse(reference).path)) if urlparse(reference).scheme in ("", "file") else None
    if local is not None and local.is_absolute() and local.is_file():
        return local, PurePosixPath(local.name)
    if images_dir is None:
        return None
    for name in image_candidates(reference, file_upload):
        path = images_dir / name
        if path.is_file():
            return path, PurePosixPath(name)
    return None


def choose_annotation(task: dict) -> tuple[dict | None, int]:
    """The annotation to import (ground truth, else the latest; never a cancelled one) and how many were usable."""
    usable = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        return None, 0
    pool = [a for a in usable if a.get("ground_truth")] or usable
    order = max(range(len(pool)), key=lambda i: (str(pool[i].get("updated_at") or pool[i].get("created_at") or ""), i))
    return pool[order], len(usable)


def _region_labels(results: list[dict]) -> dict[str, list[str]]:
    """Region id → the label names any of its results carry (`brushlabels`, `polygonlabels`, `labels`, ...)."""
    labels: dict[str, list[str]] = {}
    for result in results:
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(value, dict):
            continue
        for key, names in value.items():
            if key.endswith("labels") and isinstance(names, list):
                bucket = labels.setdefault(str(result.get("id")), [])
                bucket += [name for name in names if name not in bucket]
    return labels


def _geometry(value: dict) -> str | None:
    if "rle" in value:
        return "brush"
    if "points" in value:
        return "polygon"
    if "radiusX" in value or "radiusY" in value:
        return "ellipse"
    if {"x", "y", "width", "height"} <= set(value):
        return "rectangle"
    return None


class _Region:
    def __init__(self, result: dict, class_id: int, kind: str, name: str):
        self.result, self.class_id, self.kind, self.name = result, class_id, kind, name

    def pixels(self, width: int, height: int) -> np.ndarray:
        value = self.result["value"]
        if self.kind == "brush":
            if value.get("format", "rle") != "rle":
                raise DataError(f"{self.name}: brush format '{value.get('format')}' is not 'rle'.")
            return brush_rle.decode_mask(value["rle"], int(self.result.get("original_width", width)),
                                         int(self.result.get("original_height", height)), self.name)
        if self.kind == "polygon":
            points = value["points"]
            if not isinstance(points, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
                raise DataError(f"{self.name}: polygon points must be [[x, y], ...] in percent.")
            flat = [coordinate for x, y in points for coordinate in (x * width / 100, y * height / 100)]
        else:
            x, y = value["x"] * width / 100, value["y"] * height / 100
            right, bottom = x + value["width"] * width / 100, y + value["height"] * height / 100
            flat = [x, y, right, y, right, bottom, x, bottom]
        return polygon_mask([flat], height, width, self.name)


def read_export(path: Path, images_dir: Path | None = None, split: str = "train", unlabelled: str = "ignore",
                overlaps: str = "ignore", label_config: str | Path | None = None, labels: list[str] | None = None,
                keep_unannotated: bool = False, ignore_index: int = 255, image_key: str | None = None,
                counters: dict[str, int] | None = None) -> ImportPlan:
    """Plan the import of a Label Studio JSON export (see the module docstring). `counters`: a dict to count
    into (shared by the exports of one import)."""
    if overlaps not in OVERLAP_CHOICES:
        raise DataError(f"overlaps must be one of {', '.join(OVERLAP_CHOICES)}; got '{overlaps}'.")
    path = Path(path)
    tasks = load_tasks(path)
    colours_by_name: dict[str, tuple[int, int, int]] = {}
    if label_config is not None:
        names, colours_by_name = parse_label_config(label_config)
    elif labels:
        names = list(dict.fromkeys(labels))
    else:
        names = sorted({n for task in tasks for n in _names_in(task)})
    counters = {} if counters is None else counters
    for key in ("tasks", "tasks with several annotations", "contested pixels", "results skipped (not regions)"):
        counters.setdefault(key, 0)
    counters["tasks"] += len(tasks)

    prepared, unannotated, problems = [], [], []
    seen_images: dict[Path, str] = {}
    for task in tasks:
        where = f"{path}: task {task.get('id', '?')}"
        annotation, usable = choose_annotation(task)
        counters["tasks with several annotations"] += usable > 1
        results = [r for r in (annotation or {}).get("result") or [] if isinstance(r, dict)]
        region_results = [r for r in results if isinstance(r.get("value"), dict) and _geometry(r["value"])]
        counters["results skipped (not regions)"] += len(results) - len(region_results)
        reference = image_reference(task, image_key, where)
        # a submitted annotation without regions says "nothing here": all background, but all ignored is no label
        if (annotation is None or (not region_results and unlabelled == "ignore")) and not keep_unannotated:
            unannotated.append(reference)
            continue
        found = find_image(reference, task.get("file_upload"), images_dir)
        if found is None:
            problems.append(f"task {task.get('id', '?')}: image {reference} not found"
                            + ("" if images_dir else " (give --images)") + f"; looked for "
                            f"{image_candidates(reference, task.get('file_upload'))[:3]}")
            continue
        image, relative = found
        if image in seen_images:
            problems.append(f"task {task.get('id', '?')} and {seen_images[image]} both annotate {image}")
            continue
        seen_images[image] = f"task {task.get('id', '?')}"
        prepared.append((task, image, relative, region_results, _region_labels(results), where,
                         f"task {task.get('id', '?')}"))
    if problems:
        raise DataError(problems_message(f"{path}: tasks whose image cannot be used", problems,
                                         "Give --images, the folder holding the project's images (for local storage "
                                         "its document root; for uploads the files as uploaded)."))

    background_name = next((n for n in names if n.lower() == "background"), "background")
    ordered = ([background_name] if unlabelled == "background" else []) + [n for n in names if n != background_name
                                                                            or unlabelled != "background"]
    classes = ClassTable(dict(enumerate(ordered)), {i: colours_by_name[n] for i, n in enumerate(ordered)
                                                    if n in colours_by_name}, ignore_index)
    label2id = classes.label2id
    fill = 0 if unlabelled == "background" else ignore_index
    planned = []
    for task, image, relative, region_results, region_labels, where, origin in prepared:
        width, height = upright_size(image)
        regions = []
        for result in region_results:
            name = f"{where}, result {result.get('id', '?')}"
            kind = _geometry(result["value"])
            if kind == "ellipse" or (kind == "rectangle" and result["value"].get("rotation", 0)):
                raise DataError(f"{name}: {'ellipses' if kind == 'ellipse' else 'rotated rectangles'} are not "
                                "imported; draw the region as a polygon or brush.")
            if result.get("image_rotation", 0):
                raise DataError(f"{name}: the image was rotated in the editor (image_rotation "
                                f"{result['image_rotation']}); regions of rotated images are not imported.")
            found_names = region_labels.get(str(result.get("id")), [])
            if len(found_names) != 1:
                raise DataError(f"{name}: a region needs exactly one label for a class-id mask; it has {found_names}.")
            if found_names[0] not in label2id:
                raise DataError(f"{name}: label '{found_names[0]}' is not one of the classes {list(label2id)}"
                                + (" of the label config" if label_config is not None else "") + ".")
            size = (int(result.get("original_width", width)), int(result.get("original_height", height)))
            if size != (width, height):
                raise DataError(f"{name}: drawn on a {size[0]}×{size[1]} image, but {image} is {width}×{height}.")
            regions.append(_Region(result, label2id[found_names[0]], kind, name))
        planned.append(PlannedImage(image, relative, split, origin,
                                    _renderer(regions, width, height, fill, ignore_index, overlaps, counters),
                                    len(regions)))
    notes = []
    if unlabelled == "ignore":
        notes.append("Pixels no region covers are ignore_index; if unpainted means background, import with "
                     "--unlabelled background.")
    rules = {
        "annotation": "per task the ground-truth annotation, else the latest; cancelled annotations are not used",
        "regions": "brush RLE (alpha > 0), polygons and unrotated rectangles in percent of the image; "
                   + COCO_RULES["coverage"],
        "overlaps": "pixels two classes claim are ignore_index" if overlaps == "ignore" else COCO_RULES["overlaps"],
        "unlabelled": "ignore_index" if unlabelled == "ignore" else "class 0 (background)",
        "unannotated": "tasks without a usable annotation are kept out (unannotated.txt); an annotation without "
                       "regions is all background, or kept out when unlabelled pixels are ignored",
    }
    return ImportPlan("label-studio", [str(path)], classes, planned, unannotated, notes, rules, counters)


def _names_in(task: dict) -> list[str]:
    annotation, _ = choose_annotation(task)
    return [n for names in _region_labels([r for r in (annotation or {}).get("result") or []
                                          if isinstance(r, dict)]).values() for n in names]


def _renderer(regions: list[_Region], width: int, height: int, fill: int, ignore_index: int, overlaps: str,
              counters: dict[str, int]):
    def render() -> np.ndarray:
        masks = [(region.class_id, region.pixels(width, height)) for region in regions]
        if overlaps == "smaller":
            mask = np.full((height, width), fill, dtype=np.int64)
            order = sorted(range(len(masks)), key=lambda i: (-int(masks[i][1].sum()), i))
            for i in order:
                mask[masks[i][1]] = masks[i][0]
            return mask
        owner = np.full((height, width), -1, dtype=np.int64)
        for class_id, pixels in masks:
            clash = pixels & (owner >= 0) & (owner != class_id)
            owner[pixels & (owner == -1)] = class_id
            owner[clash] = CONTESTED
        contested = owner == CONTESTED
        counters["contested pixels"] += int(contested.sum())
        mask = np.where(owner >= 0, owner, fill)
        mask[contested] = ignore_index
        return mask

    return render


def write_predictions(items: Iterable[MaskToExport], output: Path, classes: ExportClasses, model_version: str | None,
                      options: LabelStudioOptions, overwrite: bool = False) -> Path:
    """Tasks with one prediction each (a brush region per exported class present), importable in Label Studio;
    and `<output stem>.label_config.xml`, a labeling config whose names match them."""
    config_path = output.with_name(output.stem + ".label_config.xml")
    claim_output(output, overwrite)
    claim_output(config_path, overwrite)
    colours = classes.distinct_colours()
    tasks = []
    for number, item in enumerate(items):
        mask = item.class_ids()
        classes.check(mask, str(item.mask if isinstance(item.mask, Path) else item.relative))
        height, width = mask.shape
        results = [{"id": f"{number}-{class_id}", "type": "brushlabels",
                    "from_name": options.from_name, "to_name": options.to_name, "original_width": width,
                    "original_height": height, "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush_rle.encode_mask(mask == class_id),
                              "brushlabels": [classes.id2label[class_id]]}}
                   for class_id in classes.exported if (mask == class_id).any()]
        prediction = {"model_version": model_version or "hf-segformer", "result": results}
        if item.score is not None:
            prediction["score"] = round(float(item.score), 6)
        tasks.append({"data": {options.image_key: options.image_url_prefix + item.relative.as_posix()},
                      "predictions": [prediction]})
    write_new_file(output, json.dumps(tasks).encode(), overwrite)
    write_new_file(config_path, label_config_xml(classes, options, colours).encode(), overwrite)
    return output
