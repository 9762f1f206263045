"""Imagery with any number of bands (RGB + NIR, multispectral tiles, 16-bit stacks), kept in the data's own units.

The ordinary path reads every image as 8-bit RGB (data/images.py). A recipe with `num_channels` (or a data check
that finds .npy or TIFF stacks) reads them here instead: .npy arrays (H×W or H×W×C), TIFF stacks through tifffile
(`pip install hf-segformer[multiband]`) and 16-bit grey PNG, as float32 H×W×C without rescaling. `BandImage` has
the few `PIL.Image` members the transforms and `Segmenter` use (size, width, height, resize with a box), so that one
code path serves both kinds of image; the normalisation is the per-band mean/std the data check measured.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_segformer.data.images import as_rgb, entry_name, load_image, open_image, to_rgb, upright
from hf_segformer.errors import DataError, require_extra

TIFF_EXTENSIONS = (".tif", ".tiff")
DEFAULT_DISPLAY_BANDS = (0, 1, 2)


@dataclass
class BandImage:
    """An H×W×C float32 stack of bands in the data's units, resized band by band as PIL resizes an RGB image."""

    array: np.ndarray
    filename: str = ""
    format: str | None = None  # not a JPEG: the transforms' reduced-scale decoding does not apply
    display_bands: tuple[int, ...] = DEFAULT_DISPLAY_BANDS  # the three bands pictures draw as red, green, blue

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]

    @property
    def width(self) -> int:
        return self.array.shape[1]

    @property
    def height(self) -> int:
        return self.array.shape[0]

    @property
    def bands(self) -> int:
        return self.array.shape[2]

    def load(self) -> None:
        """Already decoded (PIL's `load`, for the callers that force decoding)."""

    def resize(self, size: tuple[int, int], resample: int = Image.BILINEAR, box: Any = None) -> BandImage:
        """PIL's resize of each band as a 32-bit float image: the same sampling as the RGB path, no clipping."""
        if tuple(size) == self.size and box is None:
            return self
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(self.array[..., b])).resize(size, resample, box))
                  for b in range(self.bands)]
        return BandImage(np.stack(planes, axis=-1), self.filename, display_bands=self.display_bands)

    def display(self, bands: tuple[int, ...] | list[int] | None = None) -> Image.Image:
        """An 8-bit RGB picture of three bands (default `display_bands`; overlays, sample grids), each stretched
        from its 2nd to its 98th percentile to 0..255; an image of fewer bands shows its first ones (grey for one)."""
        bands = self.display_bands if bands is None else bands
        chosen = [min(b, self.bands - 1) for b in (list(bands) * 3)[:3]] if self.bands < 3 else list(bands)[:3]
        planes = []
        for b in chosen:
            plane = self.array[..., b]
            low, high = np.percentile(plane, (2, 98)) if plane.size else (0.0, 1.0)
            scaled = (plane - low) * (255.0 / max(float(high - low), 1e-12))
            planes.append(np.clip(scaled, 0, 255).astype(np.uint8))
        return Image.fromarray(np.stack(planes, axis=-1), "RGB")


def _entry_source(entry: Any) -> tuple[Any, str]:
    """(what numpy/tifffile/PIL read: bytes in a buffer or a path, its name) of a path or a {path, bytes} entry."""
    if isinstance(entry, dict):
        return (io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"]), entry.get("path") or "image"
    return entry, str(entry)


def _tiff_array(source: Any, name: str) -> np.ndarray:
    tifffile = require_extra("tifffile", "multiband", f"{name}: reading TIFF band stacks", "tifffile")
    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    if array.ndim == 3 and axes[0] in "CS" and axes[-1] not in "CS":  # planar (band-first) stacks → H×W×C
        array = np.moveaxis(array, 0, -1)
    return array


def _squashed_to_8_bits(image: Image.Image) -> bool:
    """A 16-bit colour PNG (RGB, RGBA, grey + alpha), which Pillow decodes to 8 bits per band (16-bit grey it reads
    whole): told from the decoder's raw mode before decoding."""
    if image.format != "PNG" or not image.tile:
        return False
    args = image.tile[0].args
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return image.mode in ("RGB", "RGBA", "LA") and str(rawmode).endswith(";16B")


def band_array(entry: Any, name: str | None = None) -> np.ndarray:
    """The pixel values of an image file or entry as they are stored (H×W or H×W×C, its own dtype)."""
    if isinstance(entry, BandImage):
        return entry.array
    if isinstance(entry, np.ndarray):
        return entry
    if isinstance(entry, Image.Image):
        return np.asarray(entry)
    source, path_name = _entry_source(entry)
    name = name or path_name
    suffix = Path(path_name).suffix.lower()
    if suffix == ".npy":
        return np.load(source, allow_pickle=False)
    if suffix in TIFF_EXTENSIONS:
        return _tiff_array(source, name)
    image = open_image(entry)
    if _squashed_to_8_bits(image):
        raise DataError(f"{name} is a 16-bit {image.mode} PNG, which Pillow can only read as 8 bits per band: its "
                        "range would be lost. Save it as a TIFF (tifffile.imwrite) or a .npy array to keep 16 bits.")
    image = upright(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image)  # 16-bit (and 32-bit) grey at full range
    return np.asarray(image.convert("RGB") if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr") else image)


def read_bands(entry: Any, num_channels: int, name: str | None = None, field: str = "num_channels",
               display_bands: tuple[int, ...] | list[int] | None = None) -> BandImage:
    """An image as `num_channels` float32 bands in the data's units; a different band count is one DataError naming
    the file, its bands and the recipe field (or the model's, with `field`)."""
    name = name or (entry_name(entry) if isinstance(entry, dict) else
                    getattr(entry, "filename", None) or (str(entry) if isinstance(entry, (str, Path)) else "image"))
    array = band_array(entry, name)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{name}: an image must be H×W or H×W×bands of numbers; got shape {array.shape}, "
                        f"dtype {array.dtype}.")
    if array.shape[2] != num_channels:
        raise DataError(f"{name} has {array.shape[2]} band{'s' if array.shape[2] != 1 else ''}, but {field} is "
                        f"{num_channels}: give every image {num_channels} bands, or set {field}: {array.shape[2]} "
                        "if that is what the data holds.")
    return BandImage(np.ascontiguousarray(array, dtype=np.float32), name,
                     display_bands=tuple(display_bands) if display_bands else DEFAULT_DISPLAY_BANDS)


def read_image(entry: Any, num_channels: int | None = None, name: str | None = None, said: set[str] | None = None,
               display_bands: tuple[int, ...] | list[int] | None = None,
               field: str = "num_channels") -> Image.Image | BandImage:
    """The one reader of an image for the model: 8-bit RGB (`num_channels` None, the ordinary path) or its bands."""
    if num_channels is None:
        if isinstance(entry, dict):
            return as_rgb(open_image(entry), name or entry_name(entry), said)
        return load_image(entry, name, said)
    return read_bands(entry, num_channels, name, field, display_bands)


def stack_file_bands(entry: Any) -> int | None:
    """The band count of an image the ordinary RGB path would squash (a .npy array; a TIFF with more than three
    bands or more than 8 bits), else None: how the data check infers `num_channels` from the data."""
    _, path_name = _entry_source(entry)
    suffix = Path(path_name).suffix.lower()
    if suffix not in (".npy", *TIFF_EXTENSIONS):
        return None
    array = band_array(entry)
    bands = array.shape[2] if array.ndim == 3 else 1
    if suffix == ".npy" or bands > 3 or array.dtype != np.uint8:
        return bands
    return None


def display_image(image: Image.Image | BandImage) -> Image.Image:
    """What overlays and sample grids draw: an image as 8-bit RGB, a band stack as its three display bands."""
    return image.display() if isinstance(image, BandImage) else to_rgb(image)
