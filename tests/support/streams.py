"""Image/mask pairs and tiny recipes for the streaming tests (Parquet / WebDataset shards of the synthetic set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def write_pairs(root: Path, count: int, size: tuple[int, int] = (24, 16), classes: int = 3, seed: int = 0,
                prefix: str = "") -> list[tuple[Path, Path]]:
    """`count` (RGB noise PNG, L mask PNG) pairs whose pixel (0, 0) holds the pair's index (to recognise it)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image[0, 0] = i
        mask = rng.integers(0, classes, (size[1], size[0]), dtype=np.uint8)
        image_path, mask_path = root / "images" / f"{prefix}{i:04d}.png", root / "masks" / f"{prefix}{i:04d}.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
        pairs.append((image_path, mask_path))
    return pairs


def synthetic_pairs(data_dir: Path, split: str) -> list[tuple[Path, Path]]:
    """The pairs of a folder dataset written by `hf_segformer.data.synthetic.write_synthetic_dataset`."""
    images = sorted((data_dir / "images" / split).iterdir())
    return [(p, data_dir / "masks" / split / p.name) for p in images]


def tiny_streaming_recipe(tmp_path: Path, shard_format: str = "parquet", num_train: int = 12, num_validation: int = 4,
                          train_shards: int = 4, **fields) -> Path:
    """The tiny recipe of the project's fault tests (B0 from config, 32×32 synthetic shapes, crop = image), read as
    a stream of shards written from the synthetic folders."""
    from hf_segformer.data.shards import write_shards
    from hf_segformer.data.synthetic import write_synthetic_dataset

    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=num_train, num_validation=num_validation, size=32)
    shard_dir = tmp_path / "shards"
    write_shards(synthetic_pairs(data_dir, "train"), shard_dir, shard_format, "train", train_shards)
    write_shards(synthetic_pairs(data_dir, "validation"), shard_dir, shard_format, "validation", 1)
    extension = "parquet" if shard_format == "parquet" else "tar"
    recipe = {"streaming": True,
              "data_files": {"train": str(shard_dir / f"train-*.{extension}"),
                             "validation": str(shard_dir / f"validation-*.{extension}")},
              "id2label": {0: "background", 1: "disc", 2: "square", 3: "triangle"},
              "max_eval_samples": num_validation, "model_variant": "b0", "crop_size": 32, "eval_size": 32,
              "train_scale": [64, 32], "ratio_range": [1.0, 1.0], "cat_max_ratio": 1.0, "hflip_prob": 0.0,
              "photometric_distortion": False, "check_data": False, "per_device_train_batch_size": 2,
              "per_device_eval_batch_size": 4, "learning_rate": 0.003, "max_steps": 6, "logging_steps": 1,
              "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "dataloader_num_workers": 0,
              "precision": "fp32", "shuffle_buffer_size": 0, "seed": 7, **fields}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path

