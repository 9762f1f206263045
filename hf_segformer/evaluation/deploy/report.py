"""What each way of deploying a trained SegFormer costs and gives, measured side by side in one run: PyTorch fp32
and bf16, ONNX Runtime fp32, INT8 dynamic and INT8 static, and token merging (hq, fast) on the faster PyTorch
precision — ms/image at the evaluation input size, model file size, peak memory, mIoU and its change against
PyTorch fp32, pixel agreement with PyTorch fp32. Written as deploy_report.md and deploy_report.json.

How it measures (the benchmarks' protocol, benchmarks/README.md):
- accuracy and memory: each row in a fresh worker process (`deploy.worker`) that loads the model as `predict`
  would (`Segmenter.from_pretrained`, with --onnx / precision / token_merging) and runs the `evaluate` command's
  own loop (`evaluation.evaluate_shard`, each mask at its native size); its peak resident memory (VmHWM) is the
  row's memory, so no row inherits another's allocations.
- speed: every row loaded in this process; after a warm-up round, each round times every row once, in turn, on
  the same images already resized to the evaluation input size (normalisation + forward: `Segmenter.logits`);
  a row's ms/image is its median over rounds and its speed-up the median of its per-round ratios, so that load
  drifts of a shared machine cancel.

A row whose mIoU falls more than `collapse_points` below PyTorch fp32 is flagged COLLAPSED in both files.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pickle
import platform
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hf_segformer.data.labels import LabelDecoder
from hf_segformer.errors import RecipeError
from hf_segformer.evaluation.deploy.exports import describe_exports, export_files, file_bytes, wrong_heads
from hf_segformer.evaluation.deploy.measure import (
    agreements,
    load_row,
    masks_file,
    median_ratio,
    score_against_reference,
    time_rows,
    timing_inputs,
)
from hf_segformer.evaluation.deploy.pairs import pairs_dataset
from hf_segformer.evaluation.deploy.recommend import DEFAULT_ACCURACY_BUDGET, check_accuracy_budget, recommend
from hf_segformer.evaluation.deploy.render import render_markdown
from hf_segformer.evaluation.deploy.rows import (
    DEFAULT_COLLAPSE_POINTS,
    DEFAULT_ROWS,
    ONNX_REFERENCE_ROW,
    REFERENCE_ROW,
    ROWS,
    DeployReport,
    Row,
    RowResult,
    resolve_rows,
)
from hf_segformer.evaluation.deploy.worker import run_row_worker, worker_spec
from hf_segformer.inference.openvino_backend import ir_files, is_openvino_file
from hf_segformer.inference.segmenter import InferenceSettings
from hf_segformer.runtime import CPU_BF16_FLAGS, cpu_flags, cpu_info, cpu_int8_features

REPORT_FILES = ("deploy_report.md", "deploy_report.json")


def _check_outputs(folder: Path, rows: Sequence[Row], overwrite: bool, reuse_exports: bool) -> None:
    onnx_files = sorted({row.onnx_file for row in rows if row.onnx_file})
    if any(row.runtime == "openvino" for row in rows) and not reuse_exports:  # converted from the folded export
        onnx_files = sorted(set(onnx_files) | {ROWS["onnx-fp32"].onnx_file})
    written = sorted({p.name for name in onnx_files
                      for p in (ir_files(folder / name) if is_openvino_file(name) else [folder / name])})
    if reuse_exports:
        missing = [name for name in written if not (folder / name).is_file()]
        if missing:
            raise RecipeError(f"deploy report: reuse_exports (--reuse_exports) needs {', '.join(missing)} in "
                              f"{folder}; run once without it to write them.")
        wrong = wrong_heads(folder, rows)
        if wrong:
            raise RecipeError(f"deploy report: reuse_exports (--reuse_exports): in {folder}, {', '.join(wrong)}: "
                              "not the decode head its row measures (an export of an earlier version?); run "
                              "without --reuse_exports, with --overwrite, to export them anew.")
        written = []
    names = list(REPORT_FILES) + written
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise RecipeError(f"deploy report: {folder} already holds {', '.join(existing)}; pass --overwrite "
                          "(overwrite=True) to replace them, or choose another --output_dir.")


def deploy_report(model_dir: str | Path, pairs: Any, decoder: LabelDecoder, output_dir: str | Path, *,
                  settings: InferenceSettings | None = None, calibration_images: Sequence[Any] | None = None,
                  rows: Sequence[str] = DEFAULT_ROWS, threads: int | None = None, repeats: int = 5,
                  timing_images: int = 1, agreement_images: int = 8,
                  collapse_points: float = DEFAULT_COLLAPSE_POINTS,
                  accuracy_budget: float = DEFAULT_ACCURACY_BUDGET, quantization: Any | None = None,
                  overwrite: bool = False, reuse_exports: bool = False,
                  facts: dict[str, Any] | None = None) -> DeployReport:
    """Measure `rows` for the saved model in `model_dir` on `pairs` ((image, mask) pairs or a Dataset with image
    and label columns; masks decoded by `decoder`) and write the ONNX files and deploy_report.md/.json into
    `output_dir`. `calibration_images`: for the INT8 static rows (images not among `pairs`, for an honest mIoU).
    `quantization`: a quantize.QuantizationSettings instead of the measured defaults. `reuse_exports`: measure
    the ONNX files already in `output_dir` (e.g. one tuned by hand) instead of exporting and quantizing anew.
    `accuracy_budget`: the mIoU points against PyTorch fp32 that the recommended row (the fastest within it)
    may lose. `facts`: extra entries (split, recipe) for the report's header."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise RecipeError(f"deploy report: {model_dir} is not a saved model folder (no config.json); pass a "
                          "training output_dir.")
    settings = settings or InferenceSettings()
    chosen = resolve_rows(rows)
    needs_static = any(row.needs_calibration for row in chosen)
    calibration = list(calibration_images or [])
    if needs_static and not calibration and not reuse_exports:
        raise RecipeError("deploy report: the INT8 static and OpenVINO INT8 rows need calibration images "
                          "(--calibration_split, --num_calibration_images), or leave those rows out (--rows).")
    check_accuracy_budget(accuracy_budget)
    if repeats < 1 or timing_images < 1:
        raise RecipeError("deploy report: repeats and timing_images must be at least 1.")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _check_outputs(folder, chosen, overwrite, reuse_exports)
    dataset = pairs_dataset(pairs)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory(prefix="hf-segformer-deploy-") as tmp:
        tmp_dir = Path(tmp)
        made = {} if reuse_exports else export_files(model_dir, folder, chosen, calibration, settings, quantization,
                                                     skip_unsized=tuple(rows) == tuple(DEFAULT_ROWS))
        skipped = {row.key: made[row.onnx_file]["skipped"] for row in chosen
                   if "skipped" in made.get(row.onnx_file or "", {})}
        for key, why in skipped.items():
            print(f"deploy report: {ROWS[key].label} left out: {why}")
        chosen = [row for row in chosen if row.key not in skipped]

        # speed: every row here, side by side; token merging on both precisions until the faster one is known
        keys = {row.key for row in chosen}
        compare = {"pytorch-fp32", "pytorch-bf16"} <= keys
        candidates = list(chosen) + [replace(row, key=row.key + "@bf16", precision="bf16")
                                     for row in chosen if row.token_merging and compare]
        segmenters = {row.key: load_row(model_dir, row, settings, folder) for row in candidates}
        first = next(iter(segmenters.values()))
        images = timing_inputs(dataset.select(range(min(timing_images, len(dataset))))["image"], first)
        input_size = list(first.input_size_of(images[0]))
        timings = time_rows(segmenters, images, repeats)
        del segmenters, first
        best_precision = "fp32"
        if compare and statistics.median(timings["pytorch-bf16"]) < statistics.median(timings["pytorch-fp32"]):
            best_precision = "bf16"
        final_rows = [replace(row, precision=best_precision) if row.token_merging else row for row in chosen]
        for row in chosen:
            if row.token_merging and best_precision == "bf16":
                timings[row.key] = timings.pop(row.key + "@bf16")
            timings.pop(row.key + "@bf16", None)

        # accuracy and memory: a fresh process per row
        decoder_path = tmp_dir / "decoder.pkl"
        decoder_path.write_bytes(pickle.dumps(decoder))
        dataset.save_to_disk(str(tmp_dir / "pairs"))
        outcomes = {}
        for row in final_rows:
            spec = worker_spec(row, model_dir, folder, settings, threads, tmp_dir / "pairs", decoder_path,
                               agreement_images, masks_file(tmp_dir, row.key))
            outcomes[row.key] = run_row_worker(spec, tmp_dir, threads)
        agreement = agreements(final_rows, outcomes, tmp_dir)

    exports = describe_exports(folder, final_rows, made)
    static_files = [exports[row.onnx_file] for row in final_rows if row.needs_calibration]
    calibrated = max((entry.get("calibration_images", 0) for entry in static_files), default=len(calibration))
    results = []
    for row in final_rows:
        outcome = outcomes[row.key]
        file = folder / row.onnx_file if row.onnx_file else _weights_file(model_dir)
        result = RowResult(row.key, row.label + (f" ({row.precision})" if row.token_merging else ""), row.runtime,
                           row.precision, row.token_merging, file.name, file_bytes(file),
                           statistics.median(timings[row.key]), list(timings[row.key]),
                           median_ratio(timings.get(REFERENCE_ROW, []), timings[row.key]),
                           median_ratio(timings.get(ONNX_REFERENCE_ROW, []), timings[row.key]),
                           outcome.get("peak_rss_mb"), outcome.get("loaded_rss_mb"), outcome.get("miou"),
                           pixel_agreement=agreement.get(row.key), error=outcome.get("error"))
        results.append(result)
    score_against_reference(results, collapse_points)
    facts = {
        "model": model_dir.name, "images": len(dataset), "input_size": input_size,
        "mode": settings.mode, "threads": threads, "repeats": repeats, "timing_images": len(images),
        "agreement_images": min(agreement_images, len(dataset)), "collapse_points": collapse_points,
        "accuracy_budget_points": accuracy_budget,
        "token_merging_precision": best_precision, "calibration_images": calibrated,
        "exports": exports, "reused_exports": reuse_exports, "skipped_rows": skipped, "machine": machine_facts(),
        "date": datetime.date.today().isoformat(), **(facts or {}),
    }
    report = DeployReport(results, facts, recommend(results, accuracy_budget, facts["machine"]))
    write_report(report, folder)
    return report


def _weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise RecipeError(f"deploy report: {model_dir} has no model.safetensors or pytorch_model.bin.")


def machine_facts() -> dict[str, Any]:
    """The CPU, its INT8 extensions and the library versions, for the report's reader to compare machines."""
    ort_version = _version("onnxruntime")
    cpu = cpu_info("model name") or platform.processor() or platform.machine()
    flags = cpu_flags()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "int8_features": cpu_int8_features(),
            "native_bf16": None if flags is None else bool(flags & set(CPU_BF16_FLAGS)),
            "openvino": _version("openvino"),
            "torch": torch.__version__, "onnxruntime": ort_version, "python": platform.python_version()}


def _version(package: str) -> str | None:
    """An optional runtime's version (the [onnx] and [openvino] extras), None where it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_report(report: DeployReport, folder: Path) -> None:
    (folder / "deploy_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (folder / "deploy_report.md").write_text(render_markdown(report))
