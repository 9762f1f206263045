"""The training and evaluation scale chosen from the data (`train_scale: auto`, `eval_scale: auto`,
`crop_size: auto`): the thinnest class keeps a stated width where SegFormer's head predicts, at 1/4 resolution.

The rule, from the pre-flight check's thinness (`data.thinness`) and the training images' sizes:
- the base training scale (ratio 1 of ratio_range) is the larger of the scale that keeps the thinnest class's
  10th-percentile structure `MIN_TRAIN_WIDTH` px wide (1 px at the head's 1/4 resolution) and the scale that brings
  the median short side to `CONTEXT_SHORT_SIDE` (zoomed out: each crop sees more of an image);
- the thinnest class only stops the zoom-out: it never zooms in past the native size (or past the context scale,
  for images smaller than it). At an equal budget, upsampling small photographs of 1-px pavement cracks ×1.6, ×2
  and ×3.2 lost to ×1.2 (benchmarks/README.md, "Thin structures at equal budget"): a crop then sees too little of
  the image;
- capped at `MAX_UPSAMPLE`× the native size and a short side of `MAX_SHORT_SIDE` px (the evaluation's cost grows with
  the pixels it reads, the input pipeline's with the pixels it resizes);
- evaluation at `EVAL_OVER_TRAIN`× the base training scale (the top of what training drew), capped the same way;
- crops of `CROP_SIZE` px (the step's cost), smaller only when the scaled images are.
Sizes are multiples of 32; the long side of each scale is 4× its short side (the short side decides).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from hf_segformer.config.data import DataArguments
from hf_segformer.data.thinness import Thinness

MIN_TRAIN_WIDTH = 4.0  # px at the base training scale: 1 px at the decode head's 1/4 resolution
CONTEXT_SHORT_SIDE = 384  # the zoomed-out base for thick structures (chosen at a fixed budget on aerial photographs)
MAX_UPSAMPLE = 4.0
MAX_SHORT_SIDE = 1024
EVAL_OVER_TRAIN = 4 / 3
CROP_SIZE = 256
# Without a measurement (check_data: false, streaming data): the values chosen by experiment on aerial photographs.
FALLBACK = {"crop_size": CROP_SIZE, "train_scale": [4 * CONTEXT_SHORT_SIDE, CONTEXT_SHORT_SIDE],
            "eval_scale": [2048, 512]}


@dataclass
class ScaleChoice:
    crop_size: int
    train_scale: list[int]
    eval_scale: list[int]
    why: str

    def as_fields(self) -> dict[str, int | list[int]]:
        return {"crop_size": self.crop_size, "train_scale": self.train_scale, "eval_scale": self.eval_scale}


def _multiple_of_32(value: float) -> int:
    """Rounded up: the thinnest class keeps at least its stated width."""
    return max(32, math.ceil(value / 32 - 1e-9) * 32)


def choose_scale(thinness: Thinness | None, image_sizes: list[tuple[int, int]],
                 id2label: dict[int, str] | None = None) -> ScaleChoice:
    """The scales and crop for data with this thinness and these (width, height) training image sizes."""
    thinnest = thinness.thinnest() if thinness is not None else None
    if thinnest is None or not image_sizes:
        return ScaleChoice(**FALLBACK, why="no thinness measured (the data check is off, or streams): the defaults")
    class_id, thin = thinnest
    short = statistics.median(min(size) for size in image_sizes)
    width = max(2 * thin.p10, 1.0)
    for_width, for_context = MIN_TRAIN_WIDTH / width, CONTEXT_SHORT_SIDE / short
    zoom_in_limit = max(for_context, 1.0)
    factor = min(max(for_width, for_context), zoom_in_limit, MAX_UPSAMPLE, MAX_SHORT_SIDE / short)
    train_short = min(_multiple_of_32(short * factor), MAX_SHORT_SIDE)
    eval_short = min(_multiple_of_32(train_short * EVAL_OVER_TRAIN), MAX_SHORT_SIDE)
    kept = width * train_short / short
    name = (id2label or {}).get(class_id, str(class_id))
    limit = "the thinnest class" if for_width >= for_context else f"a short side of {CONTEXT_SHORT_SIDE} px"
    if factor < max(for_width, for_context) and factor == zoom_in_limit:
        limit = (f"a short side of {CONTEXT_SHORT_SIDE} px" if for_context > 1 else "the native size") + \
            f"; the thinnest class would need ×{for_width:.2f}, and the scale never zooms in for it"
    elif factor < max(for_width, for_context):
        limit += " (capped)"
    why = (f"thinnest class {class_id} '{name}': 10th-percentile width {width:g} px at the median short side "
           f"{short:g} px → training short side {train_short} px (×{train_short / short:.2f}, set by {limit}),"
           f" where it is {kept:.1f} px wide ({kept / 4:.2f} px at the head's 1/4; aim ≥ {MIN_TRAIN_WIDTH / 4:g})")
    return ScaleChoice(min(CROP_SIZE, train_short), [4 * train_short, train_short], [4 * eval_short, eval_short], why)


def scale_line(data_args: DataArguments, choice: ScaleChoice) -> str:
    """What the run trains and evaluates at, and why: the data's choice for the fields left to auto, the recipe's
    values for the others."""
    chosen = choice.as_fields()
    auto = data_args.auto_scale_fields
    if not auto:
        return (f"Scale: the recipe's (from the data it would be crop_size {choice.crop_size}, train_scale "
                f"{choice.train_scale}, eval_scale {choice.eval_scale}: {choice.why}).")
    values = ", ".join(f"{name} {chosen[name] if name in auto else getattr(data_args, name)}"
                       f"{'' if name in auto else ' (the recipe)'}" for name in chosen)
    return f"Scale chosen from the data: {values}; {choice.why}."


def settle_scale(data_args: DataArguments, thinness: Thinness | None, image_sizes: list[tuple[int, int]],
                 id2label: dict[int, str] | None = None) -> ScaleChoice:
    """Fill the scale fields the recipe left to auto (every process of a run, from the same report); explicit
    values are kept."""
    choice = choose_scale(thinness, image_sizes, id2label)
    for name in data_args.auto_scale_fields:
        setattr(data_args, name, choice.as_fields()[name])
    return choice
