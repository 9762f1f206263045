"""An annotation tool's export, once read, written as the project's data_dir layout.

    OUT/images/<split>/<name>.<ext>    copies of the annotated images (never links: the folder stands alone)
    OUT/masks/<split>/<name>.png       class ids as a palette PNG in the tool's colours (16-bit past 255)
    OUT/id2label.json                  {"0": "background", ...}
    OUT/colour_map.json                {"#RRGGBB": class_id} when the tool had colours
    OUT/import_report.json             what was read, what was left out and why, the rules applied
    OUT/unannotated.txt                images the export lists without any annotation (kept out of training)

Readers (one per tool) turn an export into an `ImportPlan`: the class table and, per image, a function that
renders its class-id mask. Everything a reader can check without rendering (files, names, sizes, labels) is
checked before `write_data_dir` writes anything. A new OUT is built in a hidden sibling folder and renamed when
complete, so an interrupted or failed import leaves nothing behind; an existing OUT is refused unless
`overwrite`, and even then only the files this import writes are replaced (a link there is removed, never
written through).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from hf_segformer.data.labels import ID2LABEL_FILE
from hf_segformer.data.palettes import IGNORED_COLOUR, default_palette, mask_image
from hf_segformer.errors import DataError, problems_message

COLOUR_MAP_FILE = "colour_map.json"
REPORT_FILE = "import_report.json"
UNANNOTATED_FILE = "unannotated.txt"
UNLABELLED_CHOICES = ("background", "ignore")
EXIF_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


@dataclass
class ClassTable:
    """Class ids 0..n-1 with their names, the colours the tool gave them (if any) and the ignore value."""

    id2label: dict[int, str]
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if sorted(self.id2label) != list(range(len(self.id2label))) or not self.id2label:
            raise DataError(f"class ids must be 0..n-1 without gaps; got {sorted(self.id2label)}.")
        names = list(self.id2label.values())
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise DataError(f"class names must be unique; {twice} appear more than once. If the export has its own "
                            "'background' label, import with --unlabelled ignore or rename the label in the tool.")
        if self.ignore_index in self.id2label:
            raise DataError(f"{len(self.id2label)} classes would use class id {self.ignore_index}, the ignore_index; "
                            "choose a larger --ignore_index.")

    @property
    def label2id(self) -> dict[str, int]:
        return {name: class_id for class_id, name in self.id2label.items()}

    def mask_dtype(self) -> type:
        return np.uint8 if max(len(self.id2label) - 1, self.ignore_index) < 256 else np.uint16

    def palette(self) -> np.ndarray:
        """Colours for palette masks: the tool's colours, the VOC colour map where it gave none, white for
        ignore_index; longer than 256 when the masks need 16 bits (`visuals.mask_image` then writes grey)."""
        palette = default_palette(256 if self.mask_dtype() is np.uint8 else 65536)
        for class_id, rgb in self.colours.items():
            palette[class_id] = rgb
        if self.ignore_index < 256:
            palette[self.ignore_index] = IGNORED_COLOUR
        return palette

    def colour_map(self) -> dict[str, int]:
        return {hex_colour(rgb): class_id for class_id, rgb in sorted(self.colours.items())}


@dataclass
class PlannedImage:
    """One annotated image of an export and how to render its mask."""

    source: Path  # the image file
    relative: PurePosixPath  # its path under images/<split>/, extension kept
    split: str
    origin: str  # how the export names it, for messages ("task 12", "item frame_0001", ...)
    render: Callable[[], np.ndarray]  # class-id mask at the image's (EXIF-upright) size
    annotations: int = 0


@dataclass
class ImportPlan:
    tool: str
    sources: list[str]
    classes: ClassTable
    images: list[PlannedImage]
    unannotated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # filled by the renderers (overlap pixels, ...)


@dataclass
class ImportSummary:
    out: Path
    images_per_split: dict[str, int]
    pixels_per_class: dict[str, int]
    ignored_pixels: int
    unannotated: list[str]
    notes: list[str]

    def lines(self) -> list[str]:
        total = max(sum(self.pixels_per_class.values()) + self.ignored_pixels, 1)
        lines = [f"Imported {sum(self.images_per_split.values())} annotated images into {self.out} ("
                 + ", ".join(f"{split} {n}" for split, n in self.images_per_split.items()) + ")"]
        lines += [f"  {name}: {100 * pixels / total:.2f}% of pixels" for name, pixels in self.pixels_per_class.items()]
        lines.append(f"  ignored (unlabelled or contested): {100 * self.ignored_pixels / total:.2f}% of pixels")
        if self.unannotated:
            lines.append(f"{len(self.unannotated)} image(s) without annotations were kept out; listed in "
                         f"{self.out / UNANNOTATED_FILE}")
        lines += self.notes
        return lines


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as the model sees it: after its EXIF orientation, without decoding it."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1) if image.format in ("JPEG", "TIFF", "PNG", "WEBP") else 1
    except Exception as err:  # noqa: BLE001 - whatever PIL raises, the message names the file
        raise DataError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err
    return (height, width) if orientation in EXIF_TRANSPOSED else (width, height)


def claim_output(out: Path, overwrite: bool) -> None:
    """Refuse a folder or file the user already has, before any work, unless told to overwrite. An empty folder
    is free; with overwrite a file or link in the way is removed (a link is never written through)."""
    if not (out.is_symlink() or out.exists()):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{out} already exists; choose a new output or pass --overwrite (only the files this "
                        "command writes are replaced).")
    if out.is_symlink() or not out.is_dir():
        out.unlink()


class StagedFolder:
    """A folder built under a hidden sibling name and renamed into place when complete (`with` block without
    error), so that a failed run leaves nothing; a non-empty folder (allowed by overwrite) is written in place."""

    def __init__(self, out: Path, overwrite: bool):
        claim_output(out, overwrite)
        self.out = out
        self.in_place = out.is_dir() and any(out.iterdir())
        self.path = out if self.in_place else out.parent / f".{out.name}.partial-{os.getpid()}"

    def __enter__(self) -> Path:
        if not self.in_place:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, kind, error, traceback) -> None:
        if self.in_place:
            return
        if kind is None:
            os.replace(self.path, self.out)  # also onto an empty folder
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def replace_file(target: Path) -> None:
    """Make room for a file this command writes: a link is removed (never written through), as is our own
    earlier file when overwriting."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()


def copy_image(source: Path, target: Path) -> None:
    if target.exists() and not target.is_symlink() and os.path.samefile(source, target):
        return
    replace_file(target)
    shutil.copy2(source, target)


def save_mask(mask: np.ndarray, path: Path, classes: ClassTable) -> None:
    replace_file(path)
    mask_image(mask, classes.palette()).save(path, format="PNG")


def _check_names(plan: ImportPlan) -> None:
    """Masks pair with images by stem within a split: two images may not share one."""
    seen: dict[tuple[str, str], PlannedImage] = {}
    problems = []
    for item in plan.images:
        key = (item.split, str(item.relative.with_suffix("")))
        if key in seen:
            problems.append(f"{seen[key].origin} ({seen[key].source}) and {item.origin} ({item.source}) would both "
                            f"become {item.split}/{key[1]}")
        seen[key] = item
    if problems:
        raise DataError(problems_message("Two annotated images would get the same name", problems,
                                         "Rename one of the images (masks pair with images by file stem)."))


def write_data_dir(plan: ImportPlan, out: str | os.PathLike, overwrite: bool = False) -> ImportSummary:
    """Render and write every planned image (see the module docstring); returns what was written."""
    out = Path(out)
    if not plan.images:
        raise DataError(f"{', '.join(plan.sources)}: no annotated image found ({len(plan.unannotated)} without "
                        "annotations); nothing to import.")
    _check_names(plan)
    classes = plan.classes
    counts = np.zeros(len(classes.id2label), dtype=np.int64)
    ignored = 0
    per_split: dict[str, int] = {}
    with StagedFolder(out, overwrite) as folder:
        for item in plan.images:
            mask = item.render()
            width, height = upright_size(item.source)
            if mask.shape != (height, width):
                raise DataError(f"{item.source}: the image is {width}×{height} pixels but its annotation "
                                f"({item.origin}) is {mask.shape[1]}×{mask.shape[0]}; export the annotations of this "
                                "very image.")
            known = mask != classes.ignore_index
            if (mask[known] >= len(classes.id2label)).any():
                raise DataError(f"{item.origin}: class ids beyond the {len(classes.id2label)} classes.")
            counts += np.bincount(mask[known].ravel().astype(np.int64), minlength=len(counts))
            ignored += int((~known).sum())
            save_mask(mask, folder / "masks" / item.split / item.relative.with_suffix(".png"), classes)
            copy_image(item.source, folder / "images" / item.split / item.relative)
            per_split[item.split] = per_split.get(item.split, 0) + 1
        _write_json(folder / ID2LABEL_FILE, {str(k): v for k, v in classes.id2label.items()})
        if classes.colours:
            _write_json(folder / COLOUR_MAP_FILE, classes.colour_map())
        pixels = {classes.id2label[c]: int(counts[c]) for c in range(len(counts))}
        _write_json(folder / REPORT_FILE, {
            "tool": plan.tool, "sources": plan.sources, "images_per_split": per_split,
            "ignore_index": classes.ignore_index, "pixels_per_class": pixels, "ignored_pixels": ignored,
            "unannotated_images": plan.unannotated, "counters": plan.counters, "rules": plan.rules,
            "notes": plan.notes})
        unannotated = folder / UNANNOTATED_FILE
        if plan.unannotated:
            replace_file(unannotated)
            unannotated.write_text("\n".join(plan.unannotated) + "\n")
    return ImportSummary(out, per_split, pixels, ignored, plan.unannotated, plan.notes)


def _write_json(path: Path, payload: dict) -> None:
    replace_file(path)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def write_new_file(path: Path, data: bytes, overwrite: bool) -> Path:
    """Write a file the user does not have yet (or may overwrite) under a temporary name, then rename it."""
    claim_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path
