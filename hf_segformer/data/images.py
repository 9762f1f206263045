"""Reading images the one way every command does: opened from a path or a `datasets` entry, turned upright
(EXIF), converted to RGB with one log line per unusual mode, and found in folders by extension."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from hf_segformer.errors import DataError, RecipeError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".npy"}  # .npy: band stacks


MASK_EXTENSIONS = {".png", ".npy", ".tif", ".tiff", ".bmp"}


PIXEL_LIMIT_VARIABLE = "HF_SEGFORMER_MAX_IMAGE_PIXELS"  # a command's limit, read by the processes it starts


class ImageTooLarge(DataError):
    """An image past PIL's decompression-bomb limit: not broken, refused until the user allows it."""


@contextlib.contextmanager
def image_pixel_limit(max_image_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) for the duration: None keeps PIL's, 0 lifts it.
    Also set in the environment, so the processes the command starts (loader and check workers, the deploy
    report's rows) read images under the same limit."""
    if max_image_pixels is None:
        yield
        return
    before, before_variable = Image.MAX_IMAGE_PIXELS, os.environ.get(PIXEL_LIMIT_VARIABLE)
    Image.MAX_IMAGE_PIXELS = max_image_pixels or None
    os.environ[PIXEL_LIMIT_VARIABLE] = str(max_image_pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before
        if before_variable is None:
            os.environ.pop(PIXEL_LIMIT_VARIABLE, None)
        else:
            os.environ[PIXEL_LIMIT_VARIABLE] = before_variable


if os.environ.get(PIXEL_LIMIT_VARIABLE, "").isdigit():  # a process started under a command's limit
    Image.MAX_IMAGE_PIXELS = int(os.environ[PIXEL_LIMIT_VARIABLE]) or None


def too_large(name: str, err: Image.DecompressionBombError) -> ImageTooLarge:
    """The one message for an image past PIL's limit: which file, its size, and the option that allows it."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = found.group(1) if found else "N"
    return ImageTooLarge(f"{name}: {err} If you trust this file, allow it with --max_image_pixels {pixels} "
                         f"(max_image_pixels: {pixels} in a recipe; 0: no limit).")


def open_image(entry: Any) -> Image.Image:
    """Open an entry of an undecoded `datasets.Image` column ({'path', 'bytes'}) or a PIL image, lazily."""
    if isinstance(entry, Image.Image):
        return entry
    try:
        if isinstance(entry, dict):
            return Image.open(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"])
        return Image.open(entry)
    except Image.DecompressionBombError as err:
        raise too_large(entry_name(entry), err) from err


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos), as `datasets.Image` decoding does."""
    orientation = image.getexif().get(0x0112, 1) if image.format in ("JPEG", "TIFF", "PNG", "WEBP") else 1
    return ImageOps.exif_transpose(image) if orientation != 1 else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA and 16-bit images become 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    return image.convert("RGB")


def entry_name(entry: Any) -> str:
    if isinstance(entry, (str, os.PathLike)):
        return str(entry)
    return entry.get("path") or "<in-memory image>" if isinstance(entry, dict) else str(getattr(entry, "filename", "image"))


DECODE_ERRORS = (OSError, SyntaxError)  # what PIL raises for a truncated, garbled or non-image file


def _decodes(entry: Any) -> bool:
    try:
        open_image(entry).load()
    except DECODE_ERRORS:
        return False
    return True


@contextlib.contextmanager
def decoding(*entries: Any) -> Iterator[None]:
    """Read these files (an image and its mask) inside: a file PIL cannot decode, which reaches the loaders when
    the pre-flight check is off, ends in one DataError naming it and what to do. Where each file decodes on its
    own, the error was not theirs (a full disk, say) and goes on as raised."""
    try:
        yield
    except DECODE_ERRORS as err:
        broken = [entry_name(entry) for entry in entries if not _decodes(entry)]
        if not broken:
            raise
        raise DataError(f"{' and '.join(broken)}: cannot be decoded as an image ({type(err).__name__}: {err}). "
                        "Replace it with a readable copy, or remove it and its image or mask; `hf-segformer "
                        "check-data` lists every such file.") from err


def rescale_factor(width: int, height: int, scale: tuple[float, float]) -> float:
    """MMSegmentation keep-ratio rescale: the largest factor with long side ≤ scale[0], short side ≤ scale[1]."""
    long_edge, short_edge = max(scale), min(scale)
    return min(long_edge / max(width, height), short_edge / min(width, height))


def keep_ratio_size(width: int, height: int, scale: tuple[float, float]) -> tuple[int, int]:
    """(width, height) after the keep-ratio rescale to `scale`, rounded half up: the one rule for evaluation in
    training and for inference, so that both see the same pixels."""
    ratio = rescale_factor(width, height, scale)
    return max(1, int(width * ratio + 0.5)), max(1, int(height * ratio + 0.5))


def as_rgb(image: Image.Image, name: str = "image", said: set[str] | None = None) -> Image.Image:
    """Upright (EXIF orientation) 8-bit RGB, as the model expects. Grayscale, palette, RGBA (alpha dropped) and
    16-bit images (scaled by their maximum) are converted and the log says so: once per image mode when the
    caller passes its `said` set of modes already reported, else every time."""
    image = upright(image)
    if image.mode != "RGB":
        if said is None or image.mode not in said:
            logger.warning("%s is a %s image: converted to 8-bit RGB for the model%s.", name, image.mode,
                           "" if said is None else f" (further {image.mode} images without a message)")
            if said is not None:
                said.add(image.mode)
        image = to_rgb(image)
    return image


def load_image(item: str | Path | Image.Image | np.ndarray, name: str | None = None,
               said: set[str] | None = None) -> Image.Image:
    """A path, PIL image or uint8/uint16 array (H×W, H×W×3 or H×W×4) → upright 8-bit RGB PIL image."""
    if isinstance(item, np.ndarray):
        if item.dtype not in (np.uint8, np.uint16) or item.ndim not in (2, 3):
            raise DataError(f"{name or 'array'}: an image array must be H×W or H×W×C of uint8 or uint16; "
                            f"got shape {item.shape}, dtype {item.dtype}.")
        item = Image.fromarray(item)
    elif isinstance(item, (str, Path)):
        name = name or str(item)
    image = open_image(item)
    return as_rgb(image, name or getattr(image, "filename", "") or "image", said)


def is_image_file(path: Path) -> bool:
    """A file the loaders, predict and the demo read as an image: by extension, hidden files left out."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path, option: str = "--examples") -> list[str]:
    """The image files of a folder (not recursive), sorted; RecipeError naming `option` when there are none."""
    folder = Path(folder)
    images = sorted(str(p) for p in folder.glob("*") if is_image_file(p))
    if not images:
        raise RecipeError(f"{option}: no image in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return images
