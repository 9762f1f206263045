"""A deterministic synthetic shapes dataset, so that the quickstart and the tests need no download.

Each image is a noisy, blotchy, randomly coloured background with a few discs (plain fill), squares
(checkerboard fill) and triangles (fine stripes). All colours are drawn independently of the class, so
a model has to tell the classes apart by form and pattern, not by colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_ID2LABEL = {0: "background", 1: "disc", 2: "square", 3: "triangle"}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blotchy two-colour background (a smoothly upsampled random field) plus pixel noise, float32 H×W×3."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    field = Image.fromarray(rng.uniform(0, 255, (6, 6)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    t = (np.asarray(field, dtype=np.float32) / 255.0)[..., None]
    return a * (1 - t) + b * t + rng.normal(0, 28, (size, size, 3))


def _fill(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """Two random colours in a pattern that goes with the shape: plain (disc), checkerboard (square),
    fine stripes (triangle). Colours never depend on the class; the pattern is a local cue to the form."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 1:
        pattern = np.zeros((size, size))
    elif kind == 2:
        cell = rng.integers(4, 8)
        pattern = ((yy // cell + xx // cell) % 2).astype(float)
    else:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 10)
        pattern = (np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period) > 0).astype(float)
    fill = a * (1 - pattern[..., None]) + b * pattern[..., None]
    return fill + rng.normal(0, 8, (size, size, 3))


def _shape_polygon(rng: np.random.Generator, kind: int, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == 2:  # square, rotated
        angles = rng.uniform(0, np.pi / 2) + np.arange(4) * np.pi / 2
    else:  # triangle, rotated
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
    return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in angles]


def make_sample(seed: int, size: int = 128) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, L mask) pair; the same seed always gives the same pair."""
    rng = np.random.default_rng(seed)
    image = _texture(rng, size)
    mask = Image.new("L", (size, size), 0)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, 4))
        r = rng.uniform(0.12, 0.26) * size
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
        shape = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(shape)
        if kind == 1:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        else:
            draw.polygon(_shape_polygon(rng, kind, cx, cy, r * (1.15 if kind == 2 else 1.5)), fill=1)
        inside = np.asarray(shape, dtype=bool)
        image[inside] = _fill(rng, kind, size)[inside]
        mask.paste(kind, mask=shape.point(lambda v: 255 * v))
    rgb = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    return rgb, mask


def write_synthetic_dataset(
    root: str | Path, num_train: int = 320, num_validation: int = 64, size: int = 128, seed: int = 0
) -> Path:
    """Write `images/{train,validation}/*.png`, `masks/...` and `id2label.json` under `root`.

    An existing, complete dataset is left untouched (never overwritten).
    """
    root = Path(root)
    marker = root / "id2label.json"
    if marker.is_file():
        return root
    for split, count, offset in (("train", num_train, 0), ("validation", num_validation, 1_000_000)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = make_sample(seed * 10_000_019 + offset + i, size)
            image.save(root / "images" / split / f"{i:05d}.png")
            mask.save(root / "masks" / split / f"{i:05d}.png")
    marker.write_text(json.dumps({str(k): v for k, v in SYNTHETIC_ID2LABEL.items()}, indent=2))
    return root
