"""DAFormer's rare-class sampling: draw a class with P(c) ∝ exp((1 − f_c) / T), f_c its share of the training
pixels, then an image that contains it. Rare classes are seen in more batches without touching the loss.

The per-image class presence comes from the pre-flight check (`class_presence.json` next to
`class_histogram.json`). The sampler is deterministic under its seed and epoch, and identical on every process:
under DDP, Accelerate hands each process its shard of the sampled batches, as it does for the Trainer's own
seeded random sampler.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hf_segformer.errors import DataError

logger = logging.getLogger("hf_segformer")

PRESENCE_FILE = "class_presence.json"


def save_presence(output_dir: str | os.PathLike, presence: dict[str, list[list[int]]]) -> None:
    """Per split, per image: the class ids with at least one pixel (ignore index left out)."""
    (Path(output_dir) / PRESENCE_FILE).write_text(json.dumps(presence))


def load_presence(output_dir: str | os.PathLike, split: str) -> list[list[int]]:
    path = Path(output_dir) / PRESENCE_FILE
    if not path.is_file():
        raise DataError(f"rare_class_sampling needs the data check's per-image class presence ({path}); keep "
                        "check_data: true.")
    presence = json.loads(path.read_text())
    if split not in presence:
        raise DataError(f"{path} has no '{split}' split (it has {sorted(presence)}).")
    return presence[split]


def class_probabilities(pixel_counts: list[int] | np.ndarray, temperature: float,
                        present: np.ndarray | None = None) -> np.ndarray:
    """P(c) ∝ exp((1 − f_c) / T) over the classes that appear in some image (others get 0)."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if temperature <= 0:
        raise ValueError(f"rare_class_temperature must be > 0; got {temperature}")
    freq = counts / max(counts.sum(), 1.0)
    logits = (1.0 - freq) / temperature
    mask = counts > 0 if present is None else present
    logits = np.where(mask, logits, -np.inf)
    logits -= logits[mask].max()
    weights = np.exp(logits)
    return weights / weights.sum()


class RareClassSampler(torch.utils.data.Sampler[int]):
    """`len(image_classes)` image indices per epoch: a class by `class_probabilities`, then an image with it."""

    def __init__(self, image_classes: list[list[int]], pixel_counts: list[int], temperature: float = 0.01,
                 seed: int = 0, num_samples: int | None = None):
        num_labels = len(pixel_counts)
        self.images_of = [np.flatnonzero([c in set(classes) for classes in image_classes]) for c in range(num_labels)]
        present = np.array([len(images) > 0 for images in self.images_of])
        if not present.any():
            raise DataError("rare_class_sampling: no training image has a labelled pixel.")
        self.probabilities = class_probabilities(pixel_counts, temperature, present)
        self.seed = seed
        self.epoch = 0
        self.num_samples = num_samples or len(image_classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = rng.choice(len(self.probabilities), size=self.num_samples, p=self.probabilities)
        for c in classes:
            images = self.images_of[c]
            yield int(images[rng.integers(len(images))])


def rare_class_sampler(output_dir: str | os.PathLike, split: str, class_counts: list[int], temperature: float,
                       seed: int, num_images: int) -> RareClassSampler:
    """The training split's sampler from the data check's histogram (`class_counts`, per class id) and per-image
    presence (saved by process 0 before this point: main_process_first)."""
    image_classes = load_presence(output_dir, split)
    if len(image_classes) != num_images:
        raise DataError(f"class_presence.json lists {len(image_classes)} training images but the split has "
                        f"{num_images}; rerun with check_data: true into a fresh output_dir.")
    sampler = RareClassSampler(image_classes, class_counts, temperature, seed=seed)
    logger.info("Rare-class sampling (T=%g): class probabilities %s", temperature,
                ", ".join(f"{p:.3f}" for p in sampler.probabilities))
    return sampler


def rarest_first(class_counts: list[int]) -> tuple[int, ...]:
    """Class ids present in the split (`class_counts`, per class id), rarest first (for rare_class_crop_prob)."""
    return tuple(int(c) for c in sorted(range(len(class_counts)), key=lambda c: class_counts[c]) if class_counts[c] > 0)
