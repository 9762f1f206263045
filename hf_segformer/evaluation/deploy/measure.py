"""How a deploy report measures its rows: each row loaded as `predict` loads it, timed round by round beside the
others, and scored against PyTorch fp32 (mIoU change, the COLLAPSED flag, pixel agreement)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_segformer.data.bands import BandImage
from hf_segformer.evaluation.deploy.rows import REFERENCE_ROW, Row, RowResult
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter


def load_row(model_dir: str | Path, row: Row, settings: InferenceSettings, folder: Path,
             precision: str | None = None) -> Segmenter:
    """The row's model as `predict` loads it (the CPU; ONNX Runtime for ONNX rows)."""
    onnx = str(folder / row.onnx_file) if row.onnx_file else None
    return Segmenter.from_pretrained(model_dir, settings, device="cpu", precision=precision or row.precision,
                                     token_merging=row.token_merging, onnx=onnx)


def timing_inputs(entries: list[Any], segmenter: Segmenter) -> list[Image.Image | BandImage]:
    """The images to time on, read as the model reads them (8-bit RGB or its bands) and already resized to its input
    size, so that a row's time is normalisation + forward only."""
    images = []
    for entry in entries:
        image = segmenter.read(entry)
        height, width = segmenter.input_size_of(image)
        images.append(image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR))
    return images


def time_rows(segmenters: dict[str, Segmenter], images: list[Any], repeats: int) -> dict[str, list[float]]:
    """ms/image of each segmenter, round by round: after one warm-up round, every round runs each row once."""
    timings: dict[str, list[float]] = {key: [] for key in segmenters}
    for warm_up in (True, False):
        for _ in range(1 if warm_up else repeats):
            for key, segmenter in segmenters.items():
                started = time.perf_counter()
                for image in images:
                    for _ in segmenter.logits([image]):
                        pass
                if not warm_up:
                    timings[key].append(1000 * (time.perf_counter() - started) / len(images))
    return timings


def median_ratio(baseline: list[float], other: list[float]) -> float | None:
    """The median of per-round ratios, so that load drifts of a shared machine cancel."""
    return statistics.median(b / o for b, o in zip(baseline, other)) if baseline and other else None


def masks_file(folder: Path, key: str) -> Path:
    """Where a row's worker saves its predicted masks for the agreement."""
    return folder / f"masks-{key}.npz"


def agreements(rows: list[Row], outcomes: dict[str, dict], folder: Path) -> dict[str, float]:
    """Per row, the share of pixels (at each image's native size) predicted as PyTorch fp32 predicts them."""
    reference = masks_file(folder, REFERENCE_ROW)
    if not outcomes.get(REFERENCE_ROW, {}).get("masks") or not reference.is_file():
        return {}
    with np.load(reference) as ref:
        expected = {k: ref[k] for k in ref.files}
    shares = {}
    for row in rows:
        path = masks_file(folder, row.key)
        if outcomes[row.key].get("masks") and path.is_file():
            with np.load(path) as got:
                same = sum(int((got[k] == expected[k]).sum()) for k in expected)
            shares[row.key] = same / sum(v.size for v in expected.values())
    return shares


def score_against_reference(results: list[RowResult], collapse_points: float) -> None:
    """Each row's mIoU change against PyTorch fp32 (else the first row measured), and its COLLAPSED flag."""
    reference = next((r for r in results if r.key == REFERENCE_ROW and r.miou is not None), None)
    reference = reference or next((r for r in results if r.miou is not None), None)
    for result in results:
        if reference is not None and result.miou is not None:
            result.miou_change_points = 100 * (result.miou - reference.miou)
            result.collapsed = result.miou_change_points < -collapse_points
