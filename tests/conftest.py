"""Shared helpers: tiny image/mask folders written into `tmp_path`.

Everything is small (32×48 images, a handful of files) so that the suite stays fast on a 2-core machine.
The helpers are exposed as fixtures so that test files never copy-paste file-writing code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

HEIGHT, WIDTH = 32, 48
# Palette whose colours are NOT grey levels: index i is drawn as a saturated colour, so decoding the
# palette colours (or converting to "L") instead of reading indices gives values far from 0, 1, 2, ...
PALETTE_COLOURS = [(200, 30, 60), (20, 180, 90), (70, 40, 230), (250, 220, 10), (130, 0, 130)]


ACCELERATE = Path(sys.executable).with_name("accelerate")


def run_offline(command: list[str], cwd: str | Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a training/evaluation process the way the tests launch them: offline, one torch thread each (the
    machine has two cores), unbuffered output, stdout and stderr captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for accelerate's rendezvous, app servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def write_image():
    return save_image


@pytest.fixture
def write_exif_rotated():
    return save_exif_rotated


@pytest.fixture
def write_mask():
    return save_mask


@pytest.fixture
def make_pairs():
    return write_pairs


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data folder one level below tmp_path (so no stray id2label.json in its parent is picked up)."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def stripes():
    return stripes_mask


def build_tiny_segformer(id2label: dict[int, str], seed: int = 0):
    """A from-config SegFormer with four one-block stages of width 8..32 (seeded random weights, eval mode):
    milliseconds per 32×32 image, yet spatially varied predictions."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16, num_labels=len(id2label), id2label=dict(id2label),
                             label2id={name: i for i, name in id2label.items()}, semantic_loss_ignore_index=255)
    return SegformerForSemanticSegmentation(config).eval()


TINY_ID2LABEL = {0: "sky", 1: "road", 2: "car"}


def save_tiny_model(folder: Path, id2label: dict[int, str] = TINY_ID2LABEL, eval_size: int = 64, seed: int = 0) -> Path:
    """A tiny SegFormer saved with its image processor as training saves it; for module-scoped fixtures (the
    ONNX and INT8 tests export once per file)."""
    from hf_segformer.modeling.build import build_image_processor

    build_tiny_segformer(id2label, seed).save_pretrained(folder)
    build_image_processor(eval_size).save_pretrained(folder)
    return folder


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


@pytest.fixture
def tiny_segformer():
    return build_tiny_segformer


@pytest.fixture
def train_tiny():
    """Run `hf_segformer.training.run.main` in-process on a tiny synthetic set (32×32, 8 + 4 images); returns the runner."""
    from hf_segformer.data.synthetic import write_synthetic_dataset
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main

    def run(tmp_path: Path, *overrides: str) -> dict:
        data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
        argv = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), "--model_variant", "b0",
                "--crop_size", "32", "--eval_size", "32", "--train_scale", "64", "32", "--cat_max_ratio", "1.0",
                "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "0.01",
                "--report_to", "none", "--dataloader_num_workers", "0", "--check_data", "false", *overrides]
        return main(*parse_recipe(argv))

    return run


@pytest.fixture
def saved_model(tmp_path: Path):
    """Save a tiny SegFormer and its image processor (eval size 32) as training does (`Trainer.save_model` with
    the processor as processing class); returns a function (id2label, folder name) → the folder."""
    from hf_segformer.modeling.build import build_image_processor

    def save(id2label: dict[int, str], name: str = "model", eval_size: int = 32, seed: int = 0) -> Path:
        folder = tmp_path / name
        build_tiny_segformer(id2label, seed).save_pretrained(folder)
        build_image_processor(eval_size).save_pretrained(folder)
        return folder

    return save
