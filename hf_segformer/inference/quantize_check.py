"""The check of an INT8 export, and its printed report: the export is compared with PyTorch fp32 on random inputs
(for information) and, mask against mask, on real images that calibration did not see (the pass/fail test).

Used by `hf-segformer export-onnx --quantize`; the quantizing itself is `inference.quantize`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_segformer.inference.onnx_export import check_parity, load_onnx_session
from hf_segformer.inference.quantize import QuantizationResult, QuantizationSettings, quantize_onnx
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
from hf_segformer.modeling.build import load_saved_model

# An INT8 model passes its check when at least this share of the check images' pixels get PyTorch fp32's class.
MIN_INT8_AGREEMENT = 0.98


def split_calibration(items: list[Any], count: int) -> tuple[list[Any], list[Any]]:
    """`count` items spread evenly over `items` for calibration, and the rest (calibration-free, for checks)."""
    if count <= 0 or not items:
        return [], list(items)
    count = min(count, len(items))
    picked = sorted({math.floor(i * len(items) / count) for i in range(count)})
    chosen = set(picked)
    return [items[i] for i in picked], [item for i, item in enumerate(items) if i not in chosen]


@dataclass
class QuantizedExport:
    """An INT8 export and its checks against PyTorch fp32."""

    result: QuantizationResult
    random_checks: list[Any]  # onnx_export.ParityCheck on random inputs (today's report; fp32 thresholds do not apply)
    check_images: int
    pixel_agreement: float | None  # masks at each image's size, INT8 vs PyTorch fp32; None without check images

    @property
    def passed(self) -> bool:
        return self.pixel_agreement is None or self.pixel_agreement >= MIN_INT8_AGREEMENT


def mask_agreement(reference: Segmenter, candidate: Segmenter, images: list[Any]) -> float:
    """Share of pixels, over `images` at their own sizes, where the two segmenters predict the same class."""
    same = total = 0
    for item in images:
        image = reference.read(item)
        expected, actual = reference(image), candidate(image)
        same += int((expected == actual).sum())
        total += expected.size
    return same / total


def export_quantized(model_dir: str | Path, fp32_path: str | Path, output_path: str | Path, mode: str,
                     calibration_images: Iterable[Any] | None = None, check_images: Iterable[Any] = (),
                     inference_settings: InferenceSettings | None = None,
                     check_sizes: list[tuple[int, int]] | None = None, settings: QuantizationSettings | None = None,
                     overwrite: bool = False) -> QuantizedExport:
    """Quantize the float32 export of `model_dir` into `output_path`, then print and return its parity report:
    today's comparison on random inputs, and the pixel agreement of its masks with PyTorch fp32 on
    `check_images` (validation images that were not used for calibration)."""
    result = quantize_onnx(fp32_path, output_path, mode, calibration_images, model_dir=model_dir,
                           inference_settings=inference_settings, settings=settings, overwrite=overwrite,
                           per_channel=(settings or QuantizationSettings()).per_channel)
    session = load_onnx_session(output_path, torch.get_num_threads())
    model = load_saved_model(model_dir).eval()
    reference = Segmenter.from_pretrained(model_dir, inference_settings, device="cpu")
    sizes = check_sizes or [reference.input_size or (512, 512)]
    random_checks = check_parity(model, session, [tuple(s) for s in sizes])
    images = list(check_images)
    agreement = None
    if images:
        candidate = Segmenter.from_pretrained(model_dir, inference_settings, device="cpu", onnx=output_path)
        agreement = mask_agreement(reference, candidate, images)
    outcome = QuantizedExport(result, random_checks, len(images), agreement)
    calibrated = f", calibrated on {result.calibration_images} images" if result.mode == "static" else ""
    print(f"Quantized to INT8 ({result.mode}{calibrated}): {output_path}, {result.file_bytes / 1e6:.2f} MB "
          f"(float32: {Path(fp32_path).stat().st_size / 1e6:.2f} MB), {result.seconds:.0f} s.")
    print("ONNX Runtime INT8 vs PyTorch (float32):")
    for check in random_checks:
        print(f"  random {check.batch}×3×{check.size[0]}×{check.size[1]}: max |logit difference| "
              f"{check.max_abs_difference:.2e}, argmax agreement {100 * check.argmax_agreement:.3f} % "
              "(random inputs: for information, INT8 is not held to the float32 thresholds)")
    if agreement is None:
        print("  no check images (give --config / --data_dir): mask agreement on real images not measured.")
    else:
        verdict = "" if outcome.passed else f"  <-- FAILED (< {100 * MIN_INT8_AGREEMENT:.0f} %)"
        print(f"  masks of {len(images)} validation images not used for calibration: {100 * agreement:.3f} % of "
              f"pixels as PyTorch fp32{verdict}")
        if not outcome.passed:
            print("error: the INT8 model changes too many pixels; try --quantize static with more calibration images, "
                  "or keep more of the model float (QuantizationSettings.exclude).", file=sys.stderr)
    return outcome
