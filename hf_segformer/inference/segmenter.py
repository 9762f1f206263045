"""Segmenting images of any size with a saved model: whole-image, sliding-window and test-time augmented
inference, batched, in bounded memory (`Segmenter`).

One code path serves `predict`, `evaluate`, the training sample grids and the Python API:
`Segmenter.logits` yields, per image, class logits on a grid covering the whole image; the class-id mask
is their bilinear upsampling to the image's size, arg-maxed (`class_map`, chunked over classes).

- whole: the image resized at once (to the image processor's size, as `pipeline("image-segmentation")`
  and the training evaluation do, or keep-ratio to `scale`); images of the same input size share batches.
- slide: crop windows with a stride over the (optionally resized) image, as MMSegmentation's slide
  inference; each window's logits are upsampled to the window and overlapping ones averaged. Windows go
  through the model `window_batch` at a time, so memory is bounded by that cap and one image's logits.
- test-time augmentation: `tta_scales` × optional horizontal flip; the logits of all views are averaged on
  the grid of the largest view (smaller ones are upsampled to it) before the final upsampling.

Whole mode at the processor's size reproduces the pipeline's masks exactly (at the same batch size): same PIL
resize, the processor's own normalisation arithmetic (as a per-channel lookup table), same upsampling and arg-max.

The commands' options that add the model and how it runs (`InferenceArguments`) are in commands/inference_options.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor

from hf_segformer.data.bands import BandImage, read_image
from hf_segformer.data.images import keep_ratio_size
from hf_segformer.data.labels import numbered_classes
from hf_segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hf_segformer.errors import RecipeError
from hf_segformer.inference.onnx_export import load_onnx_session, onnx_logits
from hf_segformer.inference.openvino_backend import OpenVINOSession, is_openvino_file
from hf_segformer.logits import upsample_logits, upsampled_argmax
from hf_segformer.modeling.build import DISPLAY_BANDS, KEEP_RATIO_SCALE, NUM_CHANNELS, load_saved_model
from hf_segformer.modeling.head_folding import FoldedSegformer, can_fold
from hf_segformer.modeling.token_merging import apply_token_merging

logger = logging.getLogger(__name__)

MODES = ("whole", "slide")
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_INPUT_SIZE = (512, 512)  # for a model saved without preprocessor_config.json


@dataclass
class InferenceSettings:
    """How an image becomes logits: the resize, whole or sliding-window, and test-time augmentation."""

    mode: str = field(default="whole", metadata={
        "help": "whole: the image resized at once; slide: overlapping crop windows (MMSegmentation's slide "
                "inference)."})
    scale: list[int] | None = field(default=None, metadata={
        "help": "Keep-ratio resize before inference, as MMSegmentation's scale (long side, short side), e.g. 2048 512. "
                "Unset: the scale the model was evaluated at in training (recipe eval_scale, saved with it); for a "
                "model without one, whole resizes to the image processor's size (as pipeline('image-segmentation') "
                "does) and slide keeps the native size."})
    slide_crop: list[int] = field(default_factory=lambda: [512, 512],
                                  metadata={"help": "Slide window size: height [width]."})
    slide_stride: list[int] = field(default_factory=lambda: [341, 341], metadata={
        "help": "Slide window stride: height [width]; below the crop, windows overlap."})
    tta_scales: list[float] = field(default_factory=lambda: [1.0], metadata={
        "help": "Test-time augmentation: resize factors of the inference size, e.g. 0.75 1.0 1.25; logits averaged."})
    flip: bool = field(default=False, metadata={"help": "Test-time augmentation: also the horizontally flipped image."})
    window_batch: int = field(default=8, metadata={"help": "Slide windows per forward pass (bounds the memory)."})
    fold_head: bool = field(default=True, metadata={
        "help": "Fold the decode head's fusion and BatchNorm into per-stage 1×1 maps (hf_segformer.modeling.head_folding): "
                "the same logits up to float rounding, B0 about 3× faster on the CPU. false: the model as saved."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RecipeError(f"mode must be one of {', '.join(MODES)}; got '{self.mode}'.")
        if self.scale is not None and (len(self.scale) != 2 or min(self.scale) <= 0):
            raise RecipeError(f"scale takes two positive numbers (long side, short side); got {self.scale}.")
        for name in ("slide_crop", "slide_stride"):
            value = getattr(self, name)
            if len(value) not in (1, 2) or min(value) <= 0:
                raise RecipeError(f"{name} takes one or two positive numbers (height [width]); got {value}.")
        if not self.tta_scales or min(self.tta_scales) <= 0:
            raise RecipeError(f"tta_scales must be positive factors; got {self.tta_scales}.")
        if self.window_batch < 1:
            raise RecipeError(f"window_batch must be at least 1; got {self.window_batch}.")

    @property
    def crop(self) -> tuple[int, int]:
        return int(self.slide_crop[0]), int(self.slide_crop[-1])

    @property
    def stride(self) -> tuple[int, int]:
        return int(self.slide_stride[0]), int(self.slide_stride[-1])


def class_names(config: Any, source: str = "the model") -> dict[int, str]:
    """id2label of a model config; transformers' placeholders (LABEL_0, ...) mean it had none: ids instead."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    if len(id2label) != config.num_labels or all(v == f"LABEL_{k}" for k, v in id2label.items()):
        logger.warning("%s has no class names (id2label in config.json): classes are named class_0..class_%d. "
                       "Add id2label to its config.json to name them.", source, config.num_labels - 1)
        return numbered_classes(config.num_labels)
    return id2label



def processor_input_size(image_processor: Any) -> tuple[int, int] | None:
    """(height, width) the image processor resizes to; None when it does not resize."""
    if image_processor is None:
        return DEFAULT_INPUT_SIZE
    if not getattr(image_processor, "do_resize", True):
        return None
    size = image_processor.size
    height, width = (size.get("height"), size.get("width")) if isinstance(size, dict) else (size.height, size.width)
    if not height or not width:
        raise RecipeError(f"The image processor resizes to {size}; whole-image inference needs a fixed height and "
                          "width (preprocessor_config.json 'size': {'height': H, 'width': W}) or --scale LONG SHORT.")
    return int(height), int(width)


def normalisation_table(image_processor: Any) -> torch.Tensor:
    """[3, 256] float32: the model input of every 8-bit value of each channel, computed with the processor's own
    arithmetic (rescale in float64 then cast, (x - mean) / std in float32) so that inputs match it bit for bit."""
    values = np.arange(256, dtype=np.float64)
    if image_processor is None or getattr(image_processor, "do_rescale", True):
        values = values * (getattr(image_processor, "rescale_factor", None) or 1 / 255)
    table = np.repeat(values.astype(np.float32)[None], 3, axis=0)
    if image_processor is None or getattr(image_processor, "do_normalize", True):
        mean = np.broadcast_to(np.asarray(getattr(image_processor, "image_mean", IMAGENET_MEAN), np.float32), (3,))
        std = np.broadcast_to(np.asarray(getattr(image_processor, "image_std", IMAGENET_STD), np.float32), (3,))
        table = (table - mean[:, None]) / std[:, None]
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))


def input_bands(model: torch.nn.Module, image_processor: Any) -> tuple[int | None, list[int] | None]:
    """(num_channels, display_bands) of a model trained on band stacks (saved in its preprocessor_config.json),
    (None, None) for an RGB model; a model whose config and processor disagree is one error."""
    saved = getattr(image_processor, NUM_CHANNELS, None)
    expected = getattr(model.config, "num_channels", 3)
    if (saved or 3) != expected:
        raise RecipeError(f"The model takes {expected} input bands but its preprocessor_config.json says "
                          f"num_channels {saved or 'unset (3, 8-bit RGB)'}: save the model with the image processor of "
                          "the run that trained it.")
    return (int(saved), list(getattr(image_processor, DISPLAY_BANDS, None) or range(min(saved, 3)))) \
        if saved is not None else (None, None)


def band_normalisation(image_processor: Any, num_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std (float32) the processor normalises band stacks with (0 and 1 when it does not)."""
    if not getattr(image_processor, "do_normalize", True):
        return torch.zeros(num_channels), torch.ones(num_channels)
    mean = np.broadcast_to(np.asarray(image_processor.image_mean, np.float32), (num_channels,))
    std = np.broadcast_to(np.asarray(image_processor.image_std, np.float32), (num_channels,))
    return torch.from_numpy(mean.copy()), torch.from_numpy(std.copy())


def class_map(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids [H, W] from logits [C, h, w]: bilinear upsampling to `size`, then arg-max (chunked over classes)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.max(0).indices
    return upsampled_argmax(logits, size)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one side (length ≥ crop): every `stride`, the last one flush with the end."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


def _round(value: float) -> int:
    return max(1, int(value + 0.5))


class Segmenter:
    """Class-id masks for images of any size from a semantic-segmentation model and its image processor.

        segmenter = Segmenter.from_pretrained("outputs/my-run", precision="bf16")
        mask = segmenter("photo.jpg")                 # np.ndarray [H, W] of class ids, at the image's size
        masks = segmenter(list_of_images, batch_size=8)
        segmenter = Segmenter.from_pretrained("outputs/my-run", InferenceSettings(mode="slide", flip=True))
    """

    def __init__(self, model: torch.nn.Module, image_processor: Any = None, settings: InferenceSettings | None = None,
                 device: str | torch.device | None = None, precision: str = "fp32", compile: bool = False,
                 onnx_session: Any = None):
        if precision not in PRECISIONS:
            raise RecipeError(f"precision must be one of {', '.join(PRECISIONS)}; got '{precision}'.")
        # an ONNX Runtime session runs float32; an OpenVINO one says which precisions it can be compiled for
        exported_precisions = getattr(onnx_session, "precisions", ("fp32",))
        if onnx_session is not None and (precision not in exported_precisions or compile):
            raise RecipeError(f"This exported model runs in {' or '.join(exported_precisions)}: choose that "
                              "precision and leave compile off.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.settings = settings or InferenceSettings()
        self.id2label = class_names(model.config, getattr(model.config, "name_or_path", "") or "the model")
        self.num_labels = model.config.num_labels
        self.input_size = processor_input_size(image_processor)
        self.scale = self.settings.scale if self.settings.scale is not None else getattr(
            image_processor, KEEP_RATIO_SCALE, None)  # the training evaluation's keep-ratio resize
        self.precision = precision  # what the results say evaluated the model
        self.autocast = PRECISIONS[precision]
        self.num_channels, self.display_bands = input_bands(model, image_processor)  # None: 8-bit RGB images
        self._table = (normalisation_table(image_processor) if self.num_channels is None
                       else torch.zeros(3 * 256)).to(self.device).view(-1)
        if self.num_channels is not None:  # band stacks in the data's units: (x - mean) / std per band
            mean, std = band_normalisation(image_processor, self.num_channels)
            self._band_mean = mean.to(self.device).view(1, -1, 1, 1)
            self._band_std = std.to(self.device).view(1, -1, 1, 1)
        self._channel_offset = (torch.arange(3, device=self.device, dtype=torch.int32) * 256).view(1, 3, 1, 1)
        self._onnx = onnx_session  # set: the forward pass runs in ONNX Runtime (`hf-segformer export-onnx`)
        fold = self.settings.fold_head and onnx_session is None and can_fold(self.model)
        forward = FoldedSegformer(self.model) if fold else self.model
        self._forward = torch.compile(forward) if compile else forward
        self._converted_modes: set[str] = set()  # image modes whose conversion to RGB was logged

    @classmethod
    def from_pretrained(cls, model_name_or_path: str | Path, settings: InferenceSettings | None = None,
                        device: str | torch.device | None = None, precision: str = "fp32", compile: bool = False,
                        token_merging: str | None = None, onnx: str | Path | None = None,
                        **load_kwargs: Any) -> Segmenter:
        """A saved model folder (ours, a LoRA run's adapter, or any `save_pretrained` one) or a Hub id, with its image
        processor;
        `onnx`: the model exported by `hf-segformer export-onnx`, run by ONNX Runtime instead of PyTorch, or an
        OpenVINO IR (.xml) made from it, run by OpenVINO (in `precision` fp32 or bf16)."""
        if onnx and token_merging:
            raise RecipeError("token_merging cannot be applied to an exported ONNX model; export without it.")
        model = load_saved_model(model_name_or_path, **load_kwargs)
        try:
            image_processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        except OSError:
            logger.warning("%s has no preprocessor_config.json: resizing to %d×%d with ImageNet normalisation.",
                           model_name_or_path, *DEFAULT_INPUT_SIZE)
            image_processor = None
        if token_merging:
            apply_token_merging(model, token_merging)  # patches the encoder's attention in place
        session = None
        if is_openvino_file(onnx):
            session = OpenVINOSession(onnx, torch.get_num_threads(), precision)
        elif onnx:
            session = load_onnx_session(onnx, torch.get_num_threads())
        return cls(model, image_processor, settings, device, precision, compile, session)

    def __call__(self, images: Any, batch_size: int = 8) -> np.ndarray | list[np.ndarray]:
        """Class-id masks (uint8 up to 256 classes, else int32) at each image's own size. `images`: one path, PIL
        image or array, or a list of them."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        dtype = np.uint8 if self.num_labels <= 256 else np.int32
        masks = []
        for start in range(0, len(items), batch_size):
            batch = [self.read(item) for item in items[start : start + batch_size]]
            masks += [mask.cpu().numpy().astype(dtype) for mask in self.masks(batch)]
        return masks[0] if single else masks

    def masks(self, images: list[Image.Image]) -> Iterator[torch.Tensor]:
        """Class ids [H, W] (on the model's device) per RGB image, in order."""
        for image, logits in zip(images, self.logits(images)):
            yield class_map(logits, (image.height, image.width))

    @torch.inference_mode()
    def logits(self, images: list[Image.Image]) -> Iterator[torch.Tensor]:
        """Per RGB image, in order, float32 logits [C, h, w] on a grid covering the whole image.

        Whole mode runs images of the same input size together; slide mode runs one image at a time (its windows
        are the batch), so that only one image's full-resolution logits are held.
        """
        if self.settings.mode == "slide":
            for image in images:
                yield self._averaged_views([image])[0]
            return
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[self.input_size_of(image)].append(i)
        results: list[torch.Tensor | None] = [None] * len(images)
        for indices in groups.values():
            for i, logits in zip(indices, self._averaged_views([images[i] for i in indices])):
                results[i] = logits
        yield from results  # type: ignore[misc]

    def input_size_of(self, image: Image.Image, factor: float = 1.0) -> tuple[int, int]:
        """(height, width) the image is resized to for the model, at test-time scale `factor`."""
        width, height = image.size
        if self.scale is not None:
            width, height = keep_ratio_size(width, height, tuple(self.scale))
        elif self.settings.mode == "whole" and self.input_size is not None:
            height, width = self.input_size
        return _round(height * factor), _round(width * factor)

    def _averaged_views(self, images: list[Image.Image]) -> torch.Tensor:
        """Logits [B, C, h, w] of images that share their input size, averaged over the test-time views."""
        total, count = None, 0
        for factor in sorted(set(self.settings.tta_scales), reverse=True):  # the largest view sets the grid
            height, width = self.input_size_of(images[0], factor)
            pixels = self._pixels([image if image.size == (width, height) else
                                   image.resize((width, height), Image.BILINEAR) for image in images])
            for flip in (False, True) if self.settings.flip else (False,):
                view = pixels.flip(-1) if flip else pixels
                logits = self._slide(view) if self.settings.mode == "slide" else self._forward_logits(view)
                logits = logits.flip(-1) if flip else logits
                if total is None:
                    total = logits.float()
                else:
                    total += upsample_logits(logits, tuple(total.shape[-2:]))
                count += 1
        return total / count if count > 1 else total

    def read(self, item: Any, name: str | None = None) -> Image.Image | BandImage:
        """A path, PIL image, array or {path, bytes} entry as this model reads it: 8-bit RGB, or a model trained on
        band stacks its `num_channels` bands (another band count is one error naming the file)."""
        return read_image(item, self.num_channels, name, self._converted_modes, self.display_bands,
                          field="the model's num_channels")

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Same-size RGB images → normalised model input [B, 3, H, W] on the device."""
        if isinstance(images[0], BandImage):
            stack = torch.from_numpy(np.stack([image.array for image in images])).to(self.device)
            return (stack.permute(0, 3, 1, 2) - self._band_mean) / self._band_std
        array = torch.from_numpy(np.stack([np.asarray(image) for image in images])).to(self.device)
        index = array.permute(0, 3, 1, 2).int() + self._channel_offset  # value + 256 × channel
        return self._table.index_select(0, index.reshape(-1)).view(index.shape)

    def _forward_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._onnx is not None:
            return onnx_logits(self._onnx, pixels).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            return self._forward(pixel_values=pixels).logits

    def _slide(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits [1, C, H, W] at full resolution from overlapping crop windows, `window_batch` windows per pass.

        An image smaller than the crop is padded (bottom/right) with zeros, the mean colour after normalisation."""
        (crop_h, crop_w), (stride_h, stride_w) = self.settings.crop, self.settings.stride
        height, width = pixels.shape[-2:]
        pixels = F.pad(pixels, (0, max(crop_w - width, 0), 0, max(crop_h - height, 0)))
        padded_h, padded_w = pixels.shape[-2:]
        boxes = [(y, x) for y in window_starts(padded_h, crop_h, stride_h)
                 for x in window_starts(padded_w, crop_w, stride_w)]
        total = torch.zeros(self.num_labels, padded_h, padded_w, device=pixels.device)
        count = torch.zeros(padded_h, padded_w, device=pixels.device)
        for start in range(0, len(boxes), self.settings.window_batch):
            chunk = boxes[start : start + self.settings.window_batch]
            windows = torch.cat([pixels[..., y : y + crop_h, x : x + crop_w] for y, x in chunk])
            for (y, x), logits in zip(chunk, self._forward_logits(windows)):
                total[:, y : y + crop_h, x : x + crop_w] += upsample_logits(logits[None], (crop_h, crop_w))[0]
                count[y : y + crop_h, x : x + crop_w] += 1
        return total.div_(count)[None, :, :height, :width]
