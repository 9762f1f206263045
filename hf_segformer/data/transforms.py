"""Training and evaluation transforms, applied on the fly with `Dataset.with_transform`.

Training follows MMSegmentation's SegFormer pipeline (random resize → random crop with `cat_max_ratio`
→ flip → photometric distortion → pad) but is built for speed: the crop window is chosen first and only
that region is resampled (`PIL.Image.resize(box=...)`), JPEGs are decoded at reduced scale when they are
going to be shrunk anyway (`draft`), and normalisation happens once per batch in the collator.
Masks are only ever resampled with nearest-neighbour. Evaluation keeps the mask at native resolution.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from hf_segformer.data.bands import BandImage, read_bands
from hf_segformer.data.image_cache import DecodedImageCache
from hf_segformer.data.images import (
    decoding,
    entry_name,
    keep_ratio_size,
    open_image,
    rescale_factor,
    to_rgb,
    upright,
)
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.logits import LABEL_PAD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



@dataclass
class TrainTransform:
    """Random resize, crop (with cat_max_ratio retries), flip and photometric distortion of a batch."""

    decoder: LabelDecoder
    crop_size: int = 512
    scale: tuple[float, float] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255
    rare_class_crop_prob: float = 0.0  # this share of crops is centred on a pixel of the image's rarest class
    rare_classes: tuple[int, ...] = ()  # class ids from the rarest (training-pixel share) to the most common
    cache: DecodedImageCache | None = field(default=None, repr=False)  # decoded pairs kept in memory (cache_images)
    # set: images read as this many bands in the data's units (data.bands); geometric steps only, no photometric
    num_channels: int | None = None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values, labels = [], []
        for image_entry, mask_entry in zip(batch["image"], batch["label"]):
            image, label = self.pair(image_entry, mask_entry)
            pixel_values.append(image)
            labels.append(label)
        return {"pixel_values": pixel_values, "labels": labels}

    def pair(self, image_entry: Any, mask_entry: Any, rng: random.Random | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One (image, mask) entry pair read (or taken from the cache) and augmented with `rng`'s draws."""
        with decoding(image_entry, mask_entry):  # PIL decodes lazily: inside `transform`, for the most part
            if self.num_channels is not None:
                image, mask = read_bands(image_entry, self.num_channels), open_image(mask_entry)
            else:
                image, mask = (self.cache.pair(image_entry, mask_entry) if self.cache is not None
                               else (open_image(image_entry), open_image(mask_entry)))
            return self.transform(image, mask, entry_name(mask_entry), rng)

    def transform(self, image: Image.Image | BandImage, mask: Image.Image, name: str = "mask",
                  rng: random.Random | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """`rng`: where the random draws come from (None: one seeded from the global `random`, which set_seed
        seeds); data.augmented_pairs gives each sample its own, so that a resumed run draws the same crops."""
        rng = rng if rng is not None else random.Random(random.getrandbits(64))
        width, height = mask.size
        factor = rescale_factor(width, height, self.scale) * rng.uniform(*self.ratio_range)
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        crop_w, crop_h = min(self.crop_size, new_w), min(self.crop_size, new_h)

        anchor = None
        if self.rare_classes and self.rare_class_crop_prob > 0 and rng.random() < self.rare_class_crop_prob:
            anchor = self._rare_anchor(mask, name, new_w / width, new_h / height, rng)
        for _ in range(10 if self.cat_max_ratio < 1.0 and anchor is None else 1):
            x0, y0 = rng.randint(0, new_w - crop_w), rng.randint(0, new_h - crop_h)
            if anchor is not None:  # centred on the rare pixel as far as the image allows
                x0 = min(max(round(anchor[0] - crop_w / 2), 0), new_w - crop_w)
                y0 = min(max(round(anchor[1] - crop_h / 2), 0), new_h - crop_h)
            box = (x0 * width / new_w, y0 * height / new_h,
                   min(width, (x0 + crop_w) * width / new_w), min(height, (y0 + crop_h) * height / new_h))
            # Nearest-neighbour only picks mask pixels, so cropping the raw mask and decoding the crop equals
            # decoding first; the class-ratio test looks at a quarter-resolution crop.
            if anchor is not None or self.cat_max_ratio >= 1.0 or self._balanced(self.decoder(
                    mask.resize((max(1, crop_w // 4), max(1, crop_h // 4)), Image.NEAREST, box=box), name)):
                break
        label = self.decoder(mask.resize((crop_w, crop_h), Image.NEAREST, box=box), name)

        decode_scale = 1.0  # JPEGs that will be shrunk anyway are decoded at 1/2, 1/4 or 1/8 scale
        if image.format == "JPEG" and factor < 0.5:
            stored_width = image.width
            drafted = image.draft("RGB", (math.ceil(image.width * factor), math.ceil(image.height * factor)))
            if drafted is not None:
                decode_scale = drafted[1][2] / stored_width
        bands = isinstance(image, BandImage)
        image = image if bands else to_rgb(upright(image))
        image = image.resize((crop_w, crop_h), Image.BILINEAR, box=tuple(b * decode_scale for b in box))
        if self.photometric and not bands:  # colour jitter is defined on RGB: band stacks get the geometric steps
            image = photometric_distortion(image, rng)
        pixels = image.array if bands else np.asarray(image)

        if rng.random() < self.hflip_prob:
            pixels, label = pixels[:, ::-1], label[:, ::-1]
        out_pixels = np.zeros((self.crop_size, self.crop_size, pixels.shape[2]), dtype=pixels.dtype)
        out_label = np.full((self.crop_size, self.crop_size), self.ignore_index, dtype=np.int64)
        out_pixels[:crop_h, :crop_w] = pixels
        out_label[:crop_h, :crop_w] = label
        return torch.from_numpy(out_pixels).permute(2, 0, 1), torch.from_numpy(out_label)

    def _rare_anchor(self, mask: Image.Image, name: str, scale_x: float, scale_y: float, rng: random.Random
                     ) -> tuple[float, float] | None:
        """A random pixel of the rarest class this mask holds, in resized-image coordinates (from a
        quarter-resolution decode); None if it holds none of `rare_classes`."""
        small_w, small_h = max(1, mask.width // 4), max(1, mask.height // 4)
        small = self.decoder(mask.resize((small_w, small_h), Image.NEAREST), name)
        for class_id in self.rare_classes:
            ys, xs = np.nonzero(small == class_id)
            if len(xs):
                i = rng.randrange(len(xs))
                return ((xs[i] + 0.5) * mask.width / small_w * scale_x, (ys[i] + 0.5) * mask.height / small_h * scale_y)
        return None

    def _balanced(self, label: np.ndarray) -> bool:
        counts = np.bincount(label[label != self.ignore_index].ravel().astype(np.int64))
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio


# Luminance-preserving saturation and hue-rotation matrices (W3C Filter Effects, `saturate`/`hue-rotate`).
_LUMA = np.array([0.213, 0.715, 0.072])


def _saturation_matrix(factor: float) -> np.ndarray:
    return np.outer(np.ones(3), _LUMA) * (1 - factor) + np.eye(3) * factor


def _hue_matrix(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (np.outer(np.ones(3), _LUMA)
            + c * np.array([[0.787, -0.715, -0.072], [-0.213, 0.285, -0.072], [-0.213, -0.715, 0.928]])
            + s * np.array([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283], [-0.787, 0.715, 0.072]]))


def photometric_distortion(image: Image.Image, rng: random.Random | None = None) -> Image.Image:
    """MMSegmentation's PhotoMetricDistortion, each step with probability 0.5: brightness ±32, contrast
    ×[0.5, 1.5] (before or after the colour steps), saturation ×[0.5, 1.5], hue ±36° (±18 OpenCV units).

    Every step is affine in RGB, so they are composed into one 3×4 matrix and applied in a single pass
    (`Image.convert(matrix=...)`, clipped once at the end rather than after each step).
    """
    rng = rng if rng is not None else random.Random(random.getrandbits(64))
    matrix, offset = np.eye(3), np.zeros(3)

    def then(step: np.ndarray, shift: float = 0.0) -> None:
        nonlocal matrix, offset
        matrix, offset = step @ matrix, step @ offset + shift

    if rng.random() < 0.5:
        then(np.eye(3), rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        then(np.eye(3) * contrast)
    if rng.random() < 0.5:
        then(_saturation_matrix(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.5:
        then(_hue_matrix(rng.uniform(-36, 36)))
    if contrast is not None and not contrast_first:
        then(np.eye(3) * contrast)
    if np.array_equal(matrix, np.eye(3)) and not offset.any():
        return image
    return image.convert("RGB", tuple(np.concatenate([matrix, offset[:, None]], axis=1).ravel().tolist()))


@dataclass
class EvalTransform:
    """Resize the image for the model (to `size`², or keeping its aspect ratio to fit `scale` (long side, short
    side) as training's random resize does); decode the mask at its own (native) resolution."""

    decoder: LabelDecoder
    size: int = 512
    scale: tuple[float, float] | None = None
    num_channels: int | None = None  # set: images read as bands (data.bands), float32 in the data's units

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the model sees for an image of this size."""
        return (self.size, self.size) if self.scale is None else keep_ratio_size(width, height, self.scale)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values, labels = [], []
        for image_entry, mask_entry in zip(batch["image"], batch["label"]):
            with decoding(image_entry, mask_entry):
                image = (to_rgb(upright(open_image(image_entry))) if self.num_channels is None
                         else read_bands(image_entry, self.num_channels))
                image = image.resize(self.input_size(*image.size), Image.BILINEAR)
                label = self.decoder(open_image(mask_entry), entry_name(mask_entry))
            pixels = image.array if isinstance(image, BandImage) else np.asarray(image)
            pixel_values.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
            labels.append(torch.from_numpy(label.astype(np.int64)))
        return {"pixel_values": pixel_values, "labels": labels}


@dataclass
class SegmentationCollator:
    """Stack uint8 images, normalise once per batch, pad labels of different sizes with LABEL_PAD. Band stacks
    (float32, in the data's units) are normalised by their per-band mean/std without the 1/255 rescale.

    Images of different sizes (keep-ratio evaluation) are padded bottom/right to a common size, and
    `pixel_sizes` [B, 2] (height, width) says how much of each is the image, so that the model can be run on
    each image alone: attention is global, so padding would change the prediction."""

    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        images = [e["pixel_values"] for e in examples]
        sizes = [tuple(image.shape[-2:]) for image in images]
        batch: dict[str, torch.Tensor] = {}
        if len(set(sizes)) > 1:
            stacked = torch.zeros((len(images), images[0].shape[0], max(h for h, _ in sizes),
                                   max(w for _, w in sizes)), dtype=images[0].dtype)
            for i, image in enumerate(images):
                stacked[i, :, : image.shape[-2], : image.shape[-1]] = image
            batch["pixel_sizes"] = torch.tensor(sizes, dtype=torch.long)
        else:
            stacked = torch.stack(images)
        pixels = stacked.float().div_(255.0) if stacked.dtype == torch.uint8 else stacked.float()
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        batch = {"pixel_values": pixels.sub_(mean).div_(std), **batch}
        if "labels" in examples[0]:
            labels = [e["labels"] for e in examples]
            height = max(label.shape[0] for label in labels)
            width = max(label.shape[1] for label in labels)
            padded = torch.full((len(labels), height, width), LABEL_PAD, dtype=torch.long)
            for i, label in enumerate(labels):
                padded[i, : label.shape[0], : label.shape[1]] = label
            batch["labels"] = padded
        return batch
