"""The training pairs, each augmented with draws keyed by (seed, epoch, index): a run resumed mid-epoch draws the
same crops, flips and colours as the uninterrupted run, whatever the loader workers and their prefetching did.

The sampler (`EpochKeyedSampler`, in the main process) tells the dataset the epoch inside each index it yields
(`epoch × len + index`), so loader workers, persistent or not, need no word of the epoch."""

from __future__ import annotations

import random
from typing import Any

import torch
from datasets import Dataset

from hf_segformer.data.transforms import TrainTransform


class AugmentedPairs(torch.utils.data.Dataset):
    """Undecoded (image, label) pairs → augmented training examples; `epoch` is set by the Trainer at each epoch."""

    def __init__(self, pairs: Dataset, transform: TrainTransform, seed: int):
        self.pairs, self.transform, self.seed = pairs, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitems__(self, keys: list[int]) -> list[dict[str, torch.Tensor]]:
        size = len(self.pairs)
        batch = self.pairs[[key % size for key in keys]]
        examples = []
        for key, image_entry, mask_entry in zip(keys, batch["image"], batch["label"]):
            rng = random.Random(f"{self.seed}/{key // size}/{key % size}")  # str seeds hash the same everywhere
            image, label = self.transform.pair(image_entry, mask_entry, rng)
            examples.append({"pixel_values": image, "labels": label})
        return examples

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])[0]


class EpochKeyedSampler(torch.utils.data.Sampler[int]):
    """`order`'s indices (None: a shuffle seeded by (seed, epoch), as Accelerate seeds the Trainer's own random
    sampler, which this wrapper would hide from it) shifted by `epoch × len(pairs)`, the epoch read as it starts."""

    def __init__(self, order: Any | None, pairs: AugmentedPairs):
        self.order, self.pairs = order, pairs

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.order, "set_epoch"):
            self.order.set_epoch(epoch)

    def __iter__(self):
        epoch, size = self.pairs.epoch, len(self.pairs)
        if self.order is None:
            order = torch.randperm(size, generator=torch.Generator().manual_seed(self.pairs.seed + epoch)).tolist()
        else:
            order = self.order
        for index in order:
            yield epoch * size + int(index)

    def __len__(self) -> int:
        return len(self.pairs) if self.order is None else len(self.order)
