"""Tiny images and masks written to disk the way users' folders hold them (PNG, JPEG, palette, 16-bit, RGB, .npy).

Everything is small (32×48 images, a handful of files) so that the suite stays fast on a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 32, 48
# Palette whose colours are NOT grey levels: index i is drawn as a saturated colour, so decoding the
# palette colours (or converting to "L") instead of reading indices gives values far from 0, 1, 2, ...
PALETTE_COLOURS = [(200, 30, 60), (20, 180, 90), (70, 40, 230), (250, 220, 10), (130, 0, 130)]


def save_image(path: str | Path, array: np.ndarray | None = None, size: tuple[int, int] = (WIDTH, HEIGHT),
               seed: int = 0, quality: int = 95) -> Path:
    """Write an RGB image (random noise of `size` = (width, height) unless `array` H×W×3 is given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=quality)
    else:
        image.save(path)
    return path


def save_mask(path: str | Path, values: np.ndarray, mode: str = "L",
              palette: list[tuple[int, int, int]] | None = None) -> Path:
    """Write a mask of class ids `values` (H×W) as "L", "P" (palette, indices = values), "I;16" PNG,
    as an "RGB" PNG (`values` H×W×3) or, for a `.npy` path, as a NumPy array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values)
    if path.suffix == ".npy":
        np.save(path, values)
        return path
    if mode == "L":
        image = Image.fromarray(values.astype(np.uint8), "L")
    elif mode == "P":
        image = Image.fromarray(values.astype(np.uint8), "P")
        image.putpalette([c for rgb in (palette or PALETTE_COLOURS) for c in rgb])
    elif mode == "I;16":
        image = Image.fromarray(values.astype(np.uint16))
        assert image.mode.startswith("I;16")
    elif mode == "RGB":
        image = Image.fromarray(values.astype(np.uint8), "RGB")
    else:
        raise ValueError(f"unsupported mask mode {mode}")
    image.save(path)
    return path


def read_mask(path: str | Path) -> np.ndarray:
    """The stored values of a mask file (palette indices, not colours; RGB triples for an RGB PNG)."""
    with Image.open(path) as image:
        return np.asarray(image)


def save_exif_rotated(path: str | Path, array: np.ndarray, orientation: int) -> Path:
    """Write a JPEG stored rotated, with an EXIF Orientation tag (3 = 180°, 6 = 90°) so that viewers and
    `datasets.Image` show `array` (as phone cameras do). `array` should be smooth (JPEG-friendly)."""
    from datasets import Image as ImageFeature

    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = Path(path)
    Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB").transpose(stored).save(path, exif=exif, quality=95)
    shown = np.asarray(ImageFeature().decode_example({"path": str(path), "bytes": None}), dtype=np.int16)
    if shown.shape != array.shape or np.abs(shown - array).mean() > 8:
        raise RuntimeError("test premise broken: datasets.Image does not show the EXIF-rotated JPEG upright")
    return path


def stripes_mask(height: int = HEIGHT, width: int = WIDTH, values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Vertical stripes cycling through `values` (every value present)."""
    columns = np.arange(width) * len(values) // width
    return np.broadcast_to(np.asarray(values, dtype=np.int64)[columns], (height, width)).copy()


def write_pairs(root: str | Path, names: list[str], split: str | None = None, mask_mode: str = "L",
                image_ext: str = ".png", mask_ext: str = ".png", mask: np.ndarray | None = None,
                size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    """Write `root/images[/split]/<name><image_ext>` and `root/masks[/split]/<name><mask_ext>` pairs."""
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    if split:
        image_dir, mask_dir = image_dir / split, mask_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    values = stripes_mask(size[1], size[0]) if mask is None else mask
    for i, name in enumerate(names):
        save_image(image_dir / f"{name}{image_ext}", size=size, seed=i)
        save_mask(mask_dir / f"{name}{mask_ext}", values, mask_mode)
    return root


def smooth_image(seed: int, size: tuple[int, int] = (56, 48)) -> Image.Image:
    """An RGB image (width, height) of smooth colour blobs: varied enough for spatially varied predictions, and
    with the smooth statistics that INT8 calibration expects (unlike pixel noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BILINEAR)


def write_smooth_images(folder: Path, seeds: list[int], size: tuple[int, int] = (56, 48)) -> list[Path]:
    """`smooth_image` for each seed, saved as folder/img<seed>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        smooth_image(seed, size).save(folder / f"img{seed}.png")
        paths.append(folder / f"img{seed}.png")
    return paths
