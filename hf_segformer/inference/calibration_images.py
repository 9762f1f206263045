"""Which images of the recipe's data an INT8 export is calibrated and checked on: calibration images spread over
one split, and evaluation pairs that calibration did not see (used by `export-onnx --quantize` and
`deploy-report`)."""

from __future__ import annotations

from typing import Any

from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import canonical_split
from hf_segformer.data.loading import split_entries
from hf_segformer.errors import RecipeError
from hf_segformer.inference.quantize_check import split_calibration

DEFAULT_CALIBRATION_IMAGES = 16


def calibration_and_check_images(data_args: DataArguments, calibration_split: str, count: int, check_count: int,
                                 seed: int = 42) -> tuple[list[Any], list[Any], list[Any]]:
    """Calibration images spread over `calibration_split`; the evaluation split's pairs without them; and up
    to `check_count` of those images for the agreement check. Images are the split's undecoded entries: the
    segmenter of the model that uses them reads them (8-bit RGB, or a band-stack model's bands)."""
    evaluation = split_entries(data_args, data_args.eval_split, seed)
    if canonical_split(calibration_split) == canonical_split(data_args.eval_split):
        calibration, evaluation = split_calibration(evaluation, count)
        if not evaluation:
            raise RecipeError(f"--calibration_split {calibration_split} is the evaluation split and "
                              f"--num_calibration_images {count} would use all of it: nothing would be left to "
                              "measure on. Calibrate on another split (train) or on fewer images.")
    else:
        calibration, _ = split_calibration(split_entries(data_args, calibration_split, seed), count)
    images = [image for image, _ in calibration]
    checks = [image for image, _ in evaluation[:check_count]]
    return images, evaluation, checks
