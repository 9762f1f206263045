"""CVAT's "Segmentation mask 1.1" format (a Pascal VOC segmentation layout): read an export, write pre-annotations.

    labelmap.txt                       '# label:color_rgb:parts:actions', then one `name:r,g,b:parts:actions`
                                       line per label; CVAT puts `background:0,0,0::` first
    SegmentationClass/<item>.png       RGB: every pixel in its label's colour, background colour where no shape is
    SegmentationObject/<item>.png      instances in the VOC colour map by instance number (0, black: none)
    ImageSets/Segmentation/<subset>.txt   the item names (image paths without extension), one a line
    JPEGImages/<item>.jpg              only when exported with "Save images"

CVAT writes a SegmentationClass mask only for an image with at least one shape, but lists every image of the
subset: images without a mask are the unannotated ones. The background label is found as CVAT/Datumaro find
it: the label coloured 0,0,0, else the one named background. A labelmap without colours means the VOC colour
map by label index; a 1-channel (grey) mask holds label indices (line numbers of labelmap.txt).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from hf_segformer.data.annotations.layout import (
    ClassTable,
    ImportPlan,
    PlannedImage,
    StagedFolder,
    claim_output,
    upright_size,
    write_new_file,
)
from hf_segformer.data.annotations.preannotations import ExportClasses, MaskToExport
from hf_segformer.data.annotations.sources import DEFAULT_SUBSET, find_image_by_stem, split_name
from hf_segformer.data.palettes import default_palette
from hf_segformer.errors import DataError, problems_message

LABELMAP_FILE = "labelmap.txt"
CLASS_DIR = "SegmentationClass"
OBJECT_DIR = "SegmentationObject"
LISTS_DIR = Path("ImageSets") / "Segmentation"
IMAGES_DIR = "JPEGImages"
BLACK = (0, 0, 0)
VOC_LABELS = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
              "tvmonitor"]  # the labels CVAT assumes when an archive has no labelmap.txt


def voc_colours(count: int) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in rgb) for rgb in default_palette(count)]


def parse_labelmap(path: Path) -> list[tuple[str, tuple[int, int, int]]]:
    """labelmap.txt → [(label, colour)] in file order; colours from the VOC colour map when none is given."""
    labels: list[tuple[str, tuple[int, int, int] | None]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 4:
            raise DataError(f"{path} line {number}: '{line}' has {len(fields)} ':'-separated fields; a label line is "
                            "name:r,g,b:parts:actions (4 fields, the last ones may be empty).")
        name, colour = fields[0], None
        if fields[1].strip():
            try:
                colour = tuple(int(c) for c in fields[1].split(","))
            except ValueError:
                colour = ()
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise DataError(f"{path} line {number}: label '{name}' has colour '{fields[1]}'; write it as r,g,b.")
        if name in (n for n, _ in labels):
            raise DataError(f"{path} line {number}: label '{name}' is declared twice.")
        labels.append((name, colour))
    if not labels:
        raise DataError(f"{path}: no label lines.")
    with_colour = [colour is not None for _, colour in labels]
    if any(with_colour) and not all(with_colour):
        raise DataError(f"{path}: some labels have a colour and some do not "
                        f"({[n for n, c in labels if c is None]}); give every label its r,g,b.")
    if not any(with_colour):
        labels = list(zip([n for n, _ in labels], voc_colours(len(labels))))
    colours: dict[tuple, str] = {}
    for name, colour in labels:
        if colour in colours:
            raise DataError(f"{path}: labels '{colours[colour]}' and '{name}' share the colour {colour}; masks "
                            "could not tell them apart.")
        colours[colour] = name
    return labels  # type: ignore[return-value]


def background_index(labels: list[tuple[str, tuple[int, int, int]]]) -> int | None:
    for i, (_, colour) in enumerate(labels):
        if colour == BLACK:
            return i
    return next((i for i, (name, _) in enumerate(labels) if name == "background"), None)


def class_table(labels: list[tuple[str, tuple[int, int, int]]], unlabelled: str,
                ignore_index: int) -> tuple[ClassTable, np.ndarray, int | None]:
    """Classes (background first as class 0, or ignored) and the label index → mask value lookup."""
    background = background_index(labels)
    order = ([background] if background is not None and unlabelled == "background" else []) + \
        [i for i in range(len(labels)) if i != background]
    table = ClassTable({c: labels[i][0] for c, i in enumerate(order)}, {c: labels[i][1] for c, i in enumerate(order)},
                       ignore_index)
    lookup = np.full(len(labels), ignore_index, dtype=np.int64)
    lookup[order] = np.arange(len(order))
    return table, lookup, background


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _read_mask(path: Path, name: str) -> np.ndarray:
    """The pixels of a mask file, or one DataError naming it (a truncated or garbled PNG of a damaged export)."""
    try:
        with Image.open(path) as image:
            grey = image.mode in ("L", "I;16", "I;16B", "I;16L", "I")
            return np.asarray(image if grey else image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, zlib.error) as err:
        raise DataError(f"{name}: cannot be read as a mask ({type(err).__name__}: {err}); the export is damaged or "
                        "cut short: export or download it again.") from err


def decode_class_mask(path: Path, labels: list[tuple[str, tuple[int, int, int]]], labelmap: str,
                      name: str | None = None) -> np.ndarray:
    """A SegmentationClass PNG → label indices (positions in labelmap.txt); `name` is how messages call it (the
    member of the user's zip rather than the temporary file)."""
    name = name or str(path)
    pixels = _read_mask(path, name)
    if pixels.ndim == 2:
        indices = pixels.astype(np.int64)
        if indices.max(initial=0) >= len(labels):
            raise DataError(f"{name}: a 1-channel mask holds label indices, but it has value {indices.max()} and "
                            f"{labelmap} declares {len(labels)} labels (0..{len(labels) - 1}).")
        return indices
    rgb = pixels
    declared = _colour_keys(np.array([colour for _, colour in labels], dtype=np.uint8))
    order = np.argsort(declared)
    keys = _colour_keys(rgb)
    position = np.clip(np.searchsorted(declared[order], keys), 0, len(declared) - 1)
    known = declared[order][position] == keys
    if not known.all():
        unknown = np.unique(keys[~known])
        shown = ", ".join(f"#{int(k):06X}" for k in unknown[:5])
        shown += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(f"{name}: colour(s) {shown} are not declared in {labelmap}; every colour of a mask must be a "
                        "label's colour there (export the labelmap of the same task).")
    return order[position]


def read_export(folder: Path, images_dir: Path | None = None, split: str | None = None,
                unlabelled: str = "background", keep_unannotated: bool = False, ignore_index: int = 255,
                source_name: str | None = None) -> ImportPlan:
    """Plan the import of a Segmentation mask 1.1 export folder (see the module docstring)."""
    source_name = source_name or str(folder)
    class_dir = folder / CLASS_DIR
    if not class_dir.is_dir():
        raise DataError(f"{source_name}: no {CLASS_DIR}/ folder; is this a CVAT 'Segmentation mask 1.1' export?")
    labelmap_path = folder / LABELMAP_FILE
    notes = []
    if labelmap_path.is_file():
        labels = parse_labelmap(labelmap_path)
    else:
        labels = list(zip(VOC_LABELS, voc_colours(len(VOC_LABELS))))
        notes.append(f"{source_name} has no {LABELMAP_FILE}: the 21 Pascal VOC labels and colours were assumed.")
    labelmap_name = f"{source_name}/{LABELMAP_FILE}"
    classes, lookup, background = class_table(labels, unlabelled, ignore_index)
    if background is None:
        notes.append(f"{labelmap_name} has no background label (colour 0,0,0 or named background).")

    masks = {p.relative_to(class_dir).with_suffix("").as_posix(): p
             for p in sorted(class_dir.rglob("*.png")) if p.is_file()}
    subsets: dict[str, str] = {}  # item → subset
    lists_dir = folder / LISTS_DIR
    for listing in sorted(lists_dir.glob("*.txt")) if lists_dir.is_dir() else []:
        for line in listing.read_text(encoding="utf-8").splitlines():
            if line.strip():
                subsets.setdefault(line.strip(), listing.stem)
    unlisted = sorted(set(masks) - set(subsets))
    if subsets and unlisted:
        notes.append(f"{len(unlisted)} mask(s) not listed in {LISTS_DIR}/*.txt were imported into subset "
                     f"'{DEFAULT_SUBSET}', e.g. {unlisted[:3]}.")
    for item in unlisted:
        subsets[item] = DEFAULT_SUBSET

    roots = [folder / IMAGES_DIR] + ([Path(images_dir)] if images_dir else [])
    planned, unannotated, problems = [], [], []
    fill = classes.ignore_index if unlabelled == "ignore" or background is None else 0
    for item, subset in sorted(subsets.items()):
        if item not in masks and not keep_unannotated:
            unannotated.append(item)
            continue
        image, why = find_image_by_stem(PurePosixPath(item), roots)
        if image is None:
            problems.append(f"item {item}: {why}")
            continue
        planned.append(PlannedImage(image, PurePosixPath(item + image.suffix), split_name(subset, split),
                                    f"item {item}", _renderer(masks.get(item), image, labels, lookup, fill,
                                                               labelmap_name, f"{source_name}: member {CLASS_DIR}/"
                                                               f"{item}.png"), 1 if item in masks else 0))
    if problems:
        raise DataError(problems_message(f"{source_name}: images of the export not found", problems,
                                         "Give --images, the folder the task's images came from (or export with "
                                         "'Save images' so that JPEGImages/ holds them)."))
    rules = {
        "masks": f"{CLASS_DIR}/*.png read through the label colours of {LABELMAP_FILE}; {OBJECT_DIR}/ (instances) is "
                 "not used",
        "overlaps": "resolved by CVAT when it drew the masks (the upper shape wins)",
        "unlabelled": "pixels no shape covers carry the background label's colour: class 0 with --unlabelled "
                      "background, ignore_index with --unlabelled ignore",
        "unannotated": "images listed in ImageSets without a mask are kept out (unannotated.txt)"
                       + (" unless --keep_unannotated" if not keep_unannotated else ""),
    }
    return ImportPlan("cvat-mask", [source_name], classes, planned, unannotated, notes, rules)


def _renderer(mask_path: Path | None, image: Path, labels, lookup: np.ndarray, fill: int, labelmap: str,
              name: str):
    def render() -> np.ndarray:
        if mask_path is None:
            width, height = upright_size(image)
            return np.full((height, width), fill, dtype=np.int64)
        return lookup[decode_class_mask(mask_path, labels, labelmap, name)]

    return render


def labelmap_text(classes: ExportClasses, colours: dict[int, tuple[int, int, int]]) -> str:
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    for class_id in classes.exported:
        name = classes.id2label[class_id]
        if ":" in name or "\n" in name:
            raise DataError(f"class name {name!r} cannot be written to {LABELMAP_FILE} (':' separates its fields).")
        if name == "background":
            raise DataError("a class named 'background' would be exported as a label, but CVAT's background is "
                            "the unlabelled area; pass background_class for it (or 'auto').")
        lines.append(f"{name}:{','.join(str(v) for v in colours[class_id])}::")
    return "\n".join(lines) + "\n"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def export_files(items: Iterable[MaskToExport], classes: ExportClasses) -> dict[str, bytes]:
    """Relative path → content of every file of the export."""
    colours = classes.distinct_colours()
    size = max(max(classes.id2label), classes.ignore_index) + 1
    class_colours = np.zeros((size, 3), dtype=np.uint8)  # background and ignored stay black
    for class_id, colour in colours.items():
        class_colours[class_id] = colour
    instance_colours = np.array(voc_colours(256), dtype=np.uint8)
    files = {LABELMAP_FILE: labelmap_text(classes, colours).encode()}
    names = []
    for item in items:
        mask = item.class_ids()
        classes.check(mask, str(item.mask if isinstance(item.mask, Path) else item.relative))
        name = item.relative.with_suffix("").as_posix()
        names.append(name)
        instances = np.zeros(mask.shape, dtype=np.int64)
        for number, class_id in enumerate([c for c in classes.exported if (mask == c).any()], 1):
            instances[mask == class_id] = number
        files[f"{CLASS_DIR}/{name}.png"] = _png(class_colours[mask])
        files[f"{OBJECT_DIR}/{name}.png"] = _png(instance_colours[instances])
    files[f"{LISTS_DIR.as_posix()}/{DEFAULT_SUBSET}.txt"] = ("\n".join(names) + "\n").encode()
    return files


def write_export(items: Iterable[MaskToExport], output: Path, classes: ExportClasses, overwrite: bool = False) -> Path:
    """Write the masks as a Segmentation mask 1.1 archive (output ending in .zip) or folder, for CVAT's
    Upload annotations → Segmentation mask 1.1."""
    claim_output(output, overwrite)
    files = export_files(items, classes)
    if output.suffix.lower() == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in files.items():
                archive.writestr(name, content)
        return write_new_file(output, buffer.getvalue(), overwrite)
    with StagedFolder(output, overwrite) as folder:
        for name, content in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.write_bytes(content)
    return output

