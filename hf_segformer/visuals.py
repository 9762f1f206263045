"""Pictures of predictions: overlays with a legend, error maps and sample grids (image | ground truth |
prediction | error) for evaluations and for TensorBoard during training. Class colours and palette mask files
are data: `data/palettes.py`.

Everything is drawn with PIL and numpy (no pyplot), so it is cheap enough to run at every evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hf_segformer.data.bands import display_image
from hf_segformer.data.palettes import IGNORED_COLOUR, colourise, pixels_per_class

WRONG_COLOUR = (230, 25, 45)
GRID_TILE_HEIGHT = 256
GRID_COLUMNS = ("image", "ground truth", "prediction", "error")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def overlay(image: Image.Image, mask: np.ndarray, palette: np.ndarray, id2label: dict[int, str],
            alpha: float = 0.5) -> Image.Image:
    """The image blended with its coloured mask, and a legend (colour, class name, share of the image) to the
    right, listing the classes present, largest first."""
    image = display_image(image)
    blended = Image.blend(image, Image.fromarray(colourise(mask, palette)), alpha)
    present = pixels_per_class(mask, len(palette))
    font_size = max(10, min(24, image.height // 30))
    row = font_size + 6
    font = _font(font_size)
    lines = [f"{id2label.get(c, str(c))}  {100 * pixels / mask.size:.1f}%" for c, pixels in present]
    measure = ImageDraw.Draw(blended)
    text_width = max((measure.textlength(line, font=font) for line in lines), default=0)
    legend_width = int(text_width) + row + 16
    canvas = Image.new("RGB", (image.width + legend_width, max(image.height, row * len(lines) + 8)), "white")
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, ((class_id, _), line) in enumerate(zip(present, lines)):
        top = 4 + i * row
        left = image.width + 6
        draw.rectangle((left, top, left + row - 6, top + row - 6), fill=tuple(int(v) for v in palette[class_id]),
                       outline="black")
        draw.text((left + row, top), line, fill="black", font=font)
    return canvas


def error_map(image: Image.Image, label: np.ndarray, prediction: np.ndarray, ignore_index: int) -> np.ndarray:
    """The image dimmed to grey, wrong pixels red, unlabelled (ignored) pixels white."""
    grey = np.asarray(display_image(image).convert("L"), dtype=np.float32) * 0.45
    out = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    ignored = label == ignore_index
    out[(label != prediction) & ~ignored] = WRONG_COLOUR
    out[ignored] = IGNORED_COLOUR
    return out


def sample_grid(samples: Sequence[tuple[Image.Image, np.ndarray, np.ndarray]], palette: np.ndarray,
                ignore_index: int, tile_height: int = GRID_TILE_HEIGHT) -> Image.Image:
    """One row per (image, label, prediction) sample: image | ground truth | prediction | error, each tile
    scaled to `tile_height` (aspect kept; masks with nearest-neighbour), column titles on top."""
    rows = []
    for image, label, prediction in samples:
        image = display_image(image)
        tiles = [image, Image.fromarray(colourise(label, palette, ignore_index)),
                 Image.fromarray(colourise(prediction, palette)),
                 Image.fromarray(error_map(image, label, prediction, ignore_index))]
        width = max(1, round(image.width * tile_height / image.height))
        rows.append([tile.resize((width, tile_height), Image.BILINEAR if i == 0 else Image.NEAREST)
                     for i, tile in enumerate(tiles)])
    gap, title = 4, 22
    column_width = max((row[0].width for row in rows), default=tile_height)
    grid = Image.new("RGB", (len(GRID_COLUMNS) * (column_width + gap) - gap,
                             title + len(rows) * (tile_height + gap)), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(14)
    for c, name in enumerate(GRID_COLUMNS):
        draw.text((c * (column_width + gap) + 4, 3), name, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid.paste(tile, (c * (column_width + gap), title + r * (tile_height + gap)))
    return grid


