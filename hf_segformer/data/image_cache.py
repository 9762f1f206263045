"""Decoded training images kept in memory (`cache_images`): each pair is decoded once per process instead of at every
draw. On the aerial set (JPEGs up to 2149×1480) decoding was most of the training transform's time: 59 pairs/s from
the files against 147 from memory with the aerial recipe's crop 256 (benchmarks/bench_input_pipeline.py, one thread).

While the cache is on, every image is decoded whole (no reduced-scale JPEG decode), hit or miss, so a crop does not
depend on what the cache happened to hold: runs stay reproducible whether or not an image fitted.
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from hf_segformer.data.images import entry_name, open_image, to_rgb, upright

logger = logging.getLogger(__name__)

BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3, "RGBA": 4}
DECODED_BYTES_PER_PIXEL = 4  # an RGB image and a one-channel mask: the estimate before anything is decoded
MEMORY_SHARE = 0.25  # `auto` caches when the decoded split fits in this share of the memory available at start


def decoded_bytes(image: Image.Image) -> int:
    return image.width * image.height * BYTES_PER_PIXEL.get(image.mode, 4)


def entry_key(entry: Any) -> Any:
    """What identifies an undecoded `datasets.Image` entry: its path, or for in-memory bytes their hash too."""
    if isinstance(entry, dict):
        data = entry.get("bytes")
        return (entry.get("path"), len(data), hash(data)) if data else entry.get("path")
    return str(entry)


class DecodedImageCache:
    """Decoded (upright RGB image, mask) pairs by entry, up to `max_bytes`; past it, pairs are decoded at each use.

    One per process: loader workers and distributed processes each fill their own (`max_bytes` is that share).
    """

    def __init__(self, max_bytes: int | None):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._pairs: dict[Any, tuple[Image.Image, Image.Image]] = {}
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._pairs)

    def pair(self, image_entry: Any, mask_entry: Any) -> tuple[Image.Image, Image.Image]:
        key = (entry_key(image_entry), entry_key(mask_entry))
        cached = self._pairs.get(key)
        if cached is not None:
            return cached
        image = to_rgb(upright(open_image(image_entry)))
        mask = open_image(mask_entry)
        image.load()
        mask.load()
        size = decoded_bytes(image) + decoded_bytes(mask)
        if self.max_bytes is None or self.bytes + size <= self.max_bytes:
            self._pairs[key] = (image, mask)
            self.bytes += size
        elif not self._full_logged:
            self._full_logged = True
            logger.info("Image cache full at %d pairs (%.0f MB): %s and later images are decoded at each use.",
                        len(self._pairs), self.bytes / 1e6, entry_name(image_entry))
        return image, mask


def plan_cache(setting: str, image_sizes: list[tuple[int, int]] | None, available_bytes: int | None,
               sharers: int, workers_restart: bool = False) -> tuple[DecodedImageCache | None, str]:
    """The cache `cache_images` asks for (None: off), and why, for the log.

    `image_sizes`: the training split's (width, height), from the data check; `sharers`: the processes on this
    machine times their loader workers, each filling a cache of its own. `auto` caches when the decoded split fits
    in a quarter of the memory available, divided between them, and not when loader workers restart at every
    epoch (`dataloader_persistent_workers: false`), taking their caches with them.
    """
    if setting == "false":
        return None, "cache_images: false"
    if setting == "true":
        return DecodedImageCache(None), "cache_images: true"
    if workers_restart:
        return None, "auto, and loader workers that restart at every epoch (dataloader_persistent_workers: false)"
    if not image_sizes:
        return None, "auto, and no image sizes from the data check to tell whether they fit"
    if available_bytes is None:
        return None, "auto, and the memory available is unknown"
    needed = sum(width * height for width, height in image_sizes) * DECODED_BYTES_PER_PIXEL
    share = int(available_bytes * MEMORY_SHARE / max(sharers, 1))
    where = (f"{MEMORY_SHARE:.0%} of the {available_bytes / 1e9:.1f} GB available"
             + (f" ÷ {sharers} processes and loader workers" if sharers > 1 else ""))
    if needed > share:
        return None, f"auto: the decoded split (~{needed / 1e9:.1f} GB) does not fit in {where}"
    return DecodedImageCache(share), f"auto: the decoded split (~{needed / 1e6:.0f} MB) fits in {where}"
