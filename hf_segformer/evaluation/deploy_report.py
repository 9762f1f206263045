"""What each way of deploying a trained SegFormer costs and gives, measured side by side in one run: PyTorch fp32
and bf16, ONNX Runtime fp32, INT8 dynamic and INT8 static, and token merging (hq, fast) on the faster PyTorch
precision — ms/image at the evaluation input size, model file size, peak memory, mIoU and its change against
PyTorch fp32, pixel agreement with PyTorch fp32. Written as deploy_report.md and deploy_report.json.

How it measures (the benchmarks' protocol, benchmarks/README.md):
- accuracy and memory: each row in a fresh worker process (`python -m <this module> --worker`) that loads the
  model as `predict` would (`Segmenter.from_pretrained`, with --onnx / precision / token_merging) and runs the
  `evaluate` command's own loop (`evaluation.evaluate_shard`, each mask at its native size); its peak resident
  memory (VmHWM) is the row's memory, so no row inherits another's allocations.
- speed: every row loaded in this process; after a warm-up round, each round times every row once, in turn, on
  the same images already resized to the evaluation input size (normalisation + forward: `Segmenter.logits`);
  a row's ms/image is its median over rounds and its speed-up the median of its per-round ratios, so that load
  drifts of a shared machine cancel.

A row whose mIoU falls more than `collapse_points` below PyTorch fp32 is flagged COLLAPSED in both files.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_segformer.data.images import load_image, open_image
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.inference.quantize import QUANTIZATION_KEY, cpu_int8_features, quantize_onnx
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
from hf_segformer.runtime import cpu_info

RESULT_PREFIX = "RESULT "
REPORT_FILES = ("deploy_report.md", "deploy_report.json")
DEFAULT_COLLAPSE_POINTS = 5.0
# The issue's goal for the INT8 static row: at least this speed-up over ONNX fp32, at most this mIoU loss (points).
GOAL_SPEEDUP, GOAL_MAX_LOSS_POINTS = 1.5, 1.0


@dataclass(frozen=True)
class Row:
    """One way of running the model."""

    key: str
    label: str
    runtime: str  # "pytorch" or "onnx"
    precision: str = "fp32"
    token_merging: str | None = None
    onnx_file: str | None = None  # written in the report folder
    fold_head: bool = False  # ONNX: exported with the decode head folded (hf_segformer.head_folding)
    quantize: str | None = None  # ONNX: "dynamic" or "static"


ROWS: dict[str, Row] = {row.key: row for row in (
    Row("pytorch-fp32", "PyTorch fp32", "pytorch"),
    Row("pytorch-bf16", "PyTorch bf16 (autocast)", "pytorch", "bf16"),
    Row("onnx-fp32", "ONNX Runtime fp32", "onnx", onnx_file="model.onnx"),
    Row("onnx-int8-dynamic", "ONNX Runtime INT8 dynamic", "onnx", onnx_file="model.int8-dynamic.onnx",
        quantize="dynamic"),
    Row("onnx-int8-static", "ONNX Runtime INT8 static (QDQ)", "onnx", onnx_file="model.int8-static.onnx",
        quantize="static"),
    Row("tome-hq", "PyTorch + token merging hq", "pytorch", token_merging="hq"),
    Row("tome-fast", "PyTorch + token merging fast", "pytorch", token_merging="fast"),
    # not in the default table: the same exports with the decode head folded before export
    Row("onnx-fp32-folded", "ONNX Runtime fp32, folded head", "onnx", onnx_file="model.folded.onnx", fold_head=True),
    Row("onnx-int8-static-folded", "ONNX Runtime INT8 static, folded head", "onnx",
        onnx_file="model.folded.int8-static.onnx", fold_head=True, quantize="static"),
)}
DEFAULT_ROWS = ("pytorch-fp32", "pytorch-bf16", "onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static", "tome-hq",
                "tome-fast")
REFERENCE_ROW, ONNX_REFERENCE_ROW, GOAL_ROW = "pytorch-fp32", "onnx-fp32", "onnx-int8-static"


@dataclass
class RowResult:
    """The measurements of one row (None where the row did not get that far; `error` says why)."""

    key: str
    label: str
    runtime: str
    precision: str
    token_merging: str | None
    file: str
    file_bytes: int
    ms_per_image: float | None = None
    ms_rounds: list[float] = field(default_factory=list)
    speedup_vs_pytorch_fp32: float | None = None
    speedup_vs_onnx_fp32: float | None = None
    peak_rss_mb: float | None = None
    loaded_rss_mb: float | None = None
    miou: float | None = None
    miou_change_points: float | None = None
    pixel_agreement: float | None = None  # share of pixels predicted as PyTorch fp32 predicts them
    collapsed: bool = False
    error: str | None = None


@dataclass
class DeployReport:
    rows: list[RowResult]
    facts: dict[str, Any]

    def row(self, key: str) -> RowResult | None:
        return next((r for r in self.rows if r.key == key), None)

    def to_json(self) -> dict[str, Any]:
        return {"facts": self.facts, "rows": [asdict(r) for r in self.rows], "goal": goal_status(self)}


# ---------------------------------------------------------------------------------------------------------------
# Memory and worker protocol (as benchmarks/workers.py, which the package cannot import)
# ---------------------------------------------------------------------------------------------------------------

def memory_mb(name: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process in MB, from /proc; None where there is no /proc."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return None


def _worker_command(spec_path: Path) -> tuple[list[str], dict[str, str]]:
    """Run this module in a fresh interpreter, importable there as it is here."""
    spec = globals().get("__spec__")
    module = spec.name if spec is not None and spec.name != "__main__" else None
    env = dict(os.environ)
    if module:
        root = Path(__file__).resolve().parents[len(module.split(".")) - 1]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        return [sys.executable, "-m", module, "--worker", str(spec_path)], env
    return [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)], env


def run_row_worker(spec: dict[str, Any], folder: Path, threads: int) -> dict[str, Any]:
    """Evaluate one row in a fresh process; its result, or {"error": why}."""
    spec_path = folder / f"worker-{spec['row']['key']}.json"
    spec_path.write_text(json.dumps(spec))
    command, env = _worker_command(spec_path)
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        why = "killed (out of memory?)" if result.returncode in (-9, 137) else f"exit {result.returncode}"
        tail = result.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"worker {why}: {tail[0][-300:]}"}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _settings_from(data: dict[str, Any]) -> InferenceSettings:
    return InferenceSettings(**data)


def load_row(model_dir: str | Path, row: Row, settings: InferenceSettings, folder: Path,
             precision: str | None = None) -> Segmenter:
    """The row's model as `predict` loads it (the CPU; ONNX Runtime for ONNX rows)."""
    onnx = str(folder / row.onnx_file) if row.onnx_file else None
    return Segmenter.from_pretrained(model_dir, settings, device="cpu", precision=precision or row.precision,
                                     token_merging=row.token_merging, onnx=onnx)


def worker_main(spec_path: str) -> dict[str, Any]:
    """A worker: one row's mIoU (the evaluate command's loop), peak memory, and predictions for the agreement."""
    import torch
    from datasets import load_from_disk

    from hf_segformer.evaluation.metrics import metrics_from_confusion
    from hf_segformer.evaluation.run import evaluate_shard

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    row = Row(**spec["row"])
    folder = Path(spec["folder"])
    segmenter = load_row(spec["model_dir"], row, _settings_from(spec["settings"]), folder, spec["precision"])
    loaded = memory_mb("VmRSS")
    dataset = load_from_disk(spec["dataset"])
    decoder = pickle.loads(Path(spec["decoder"]).read_bytes())
    started = time.perf_counter()
    confusion, _ = evaluate_shard(segmenter, dataset, decoder, batch_size=1)
    seconds = time.perf_counter() - started
    peak = memory_mb("VmHWM")  # read before the agreement pass below, which is not part of an evaluation
    confusion = confusion.cpu().numpy()
    metrics = metrics_from_confusion(confusion)
    masks = {}
    if spec["agreement_images"]:
        subset = dataset.select(range(min(spec["agreement_images"], len(dataset))))
        images = [load_image(_pil(entry)) for entry in subset["image"]]
        masks = {str(i): mask for i, mask in enumerate(segmenter(images, batch_size=1))}
        np.savez_compressed(spec["masks"], **masks)
    return {"miou": float(metrics["mean_iou"]), "confusion": confusion.tolist(), "peak_rss_mb": peak,
            "loaded_rss_mb": loaded, "eval_seconds": seconds, "masks": bool(masks)}


def _pil(entry: Any):
    return open_image(entry)


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def _entry(item: Any, what: str, index: int) -> dict[str, Any]:
    """An undecoded datasets.Image entry for a path, PIL image or array."""
    from PIL import Image

    if isinstance(item, dict) and ("path" in item or "bytes" in item):
        return {"path": item.get("path"), "bytes": item.get("bytes")}
    if isinstance(item, (str, Path)):
        if not Path(item).is_file():
            raise DataError(f"deploy report: {what} {index} ({item}) does not exist.")
        return {"path": str(item), "bytes": None}
    if isinstance(item, np.ndarray):
        item = Image.fromarray(item)
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return {"path": None, "bytes": buffer.getvalue()}
    raise DataError(f"deploy report: {what} {index} is a {type(item).__name__}; give a path, PIL image or array.")


def pairs_dataset(pairs: Any):
    """(image, mask) pairs, or a datasets.Dataset with `image` and `label` columns, as the undecoded Dataset the
    evaluate command's loop reads."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(decode=False), "label": ImageFeature(decode=False)})
    if isinstance(pairs, Dataset):
        missing = {"image", "label"} - set(pairs.column_names)
        if missing:
            raise DataError(f"deploy report: the dataset lacks column(s) {sorted(missing)}; it needs image and label.")
        return pairs.select_columns(["image", "label"]).cast(features)
    pairs = list(pairs)
    if not pairs:
        raise DataError("deploy report: no (image, mask) pairs to evaluate on.")
    images = [_entry(image, "image", i) for i, (image, _) in enumerate(pairs)]
    labels = [_entry(mask, "mask", i) for i, (_, mask) in enumerate(pairs)]
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def _check_outputs(folder: Path, rows: Sequence[Row], overwrite: bool, reuse_exports: bool) -> None:
    onnx_files = sorted({row.onnx_file for row in rows if row.onnx_file})
    if reuse_exports:
        missing = [name for name in onnx_files if not (folder / name).is_file()]
        if missing:
            raise RecipeError(f"deploy report: reuse_exports (--reuse_exports) needs {', '.join(missing)} in "
                              f"{folder}; run once without it to write them.")
        onnx_files = []
    names = list(REPORT_FILES) + onnx_files
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise RecipeError(f"deploy report: {folder} already holds {', '.join(existing)}; pass --overwrite "
                          "(overwrite=True) to replace them, or choose another --output_dir.")


def _resolve_rows(keys: Sequence[str]) -> list[Row]:
    unknown = [key for key in keys if key not in ROWS]
    if unknown:
        raise RecipeError(f"deploy report: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}.")
    return [ROWS[key] for key in dict.fromkeys(keys)]


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------

def _export_files(model_dir: Path, folder: Path, rows: list[Row], calibration_images: list[Any] | None,
                  settings: InferenceSettings, quantization: Any | None) -> dict[str, Any]:
    """Write the ONNX files the rows need: float32 exports, then their INT8 versions. Returns what was made how."""
    import torch
    from transformers import AutoModelForSemanticSegmentation

    from hf_segformer.inference.onnx_export import export_model, model_metadata
    from hf_segformer.modeling.head_folding import FoldedSegformer

    made: dict[str, Any] = {}
    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    metadata = model_metadata(model_dir, model)
    size = tuple(Segmenter(model, _processor(model_dir), settings, "cpu").input_size or (512, 512))
    fp32_files = {False: ROWS["onnx-fp32"].onnx_file, True: ROWS["onnx-fp32-folded"].onnx_file}
    needed = {row.fold_head for row in rows if row.runtime == "onnx"}
    for fold in sorted(needed):
        path = folder / fp32_files[fold]
        with torch.no_grad():
            export_model(FoldedSegformer(model) if fold else model, path, sample_size=size, metadata=metadata)
        made[fp32_files[fold]] = {"fold_head": fold}
    for row in rows:
        if not row.quantize:
            continue
        static = row.quantize == "static"
        # `quantization` tunes the static rows; dynamic keeps its own measured defaults (weight MatMuls only)
        result = quantize_onnx(folder / fp32_files[row.fold_head], folder / row.onnx_file, row.quantize,
                               calibration_images if static else None, model_dir=model_dir,
                               inference_settings=settings, settings=quantization if static else None,
                               overwrite=True)
        made[row.onnx_file] = {k: v for k, v in asdict(result).items() if k not in ("path", "excluded_nodes")}
        made[row.onnx_file]["excluded_nodes"] = len(result.excluded_nodes)
    return made


def _describe_exports(folder: Path, rows: list[Row], made: dict[str, Any]) -> dict[str, Any]:
    """What each ONNX file is, from this run's exports or, for reused files, from their own metadata."""
    import onnx

    exports = {}
    for row in rows:
        if not row.onnx_file:
            continue
        entry = dict(made.get(row.onnx_file, {}))
        if not entry:
            props = {p.key: p.value for p in onnx.load(str(folder / row.onnx_file), load_external_data=False)
                     .metadata_props}
            entry = json.loads(props[QUANTIZATION_KEY]) if QUANTIZATION_KEY in props else {"quantization": None}
        exports[row.onnx_file] = entry
    return exports


def _processor(model_dir: Path):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_dir)
    except OSError:
        return None


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


def _median_ratio(baseline: list[float], other: list[float]) -> float | None:
    return statistics.median(b / o for b, o in zip(baseline, other)) if baseline and other else None


def deploy_report(model_dir: str | Path, pairs: Any, decoder: LabelDecoder, output_dir: str | Path, *,
                  settings: InferenceSettings | None = None, calibration_images: Sequence[Any] | None = None,
                  rows: Sequence[str] = DEFAULT_ROWS, threads: int | None = None, repeats: int = 5,
                  timing_images: int = 1, agreement_images: int = 8,
                  collapse_points: float = DEFAULT_COLLAPSE_POINTS, quantization: Any | None = None,
                  overwrite: bool = False, reuse_exports: bool = False,
                  facts: dict[str, Any] | None = None) -> DeployReport:
    """Measure `rows` for the saved model in `model_dir` on `pairs` ((image, mask) pairs or a Dataset with image
    and label columns; masks decoded by `decoder`) and write the ONNX files and deploy_report.md/.json into
    `output_dir`. `calibration_images`: for the INT8 static rows (images not among `pairs`, for an honest mIoU).
    `quantization`: a quantize.QuantizationSettings instead of the measured defaults. `reuse_exports`: measure
    the ONNX files already in `output_dir` (e.g. one tuned by hand) instead of exporting and quantizing anew.
    `facts`: extra entries (split, recipe) for the report's header."""
    import torch

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise RecipeError(f"deploy report: {model_dir} is not a saved model folder (no config.json); pass a "
                          "training output_dir.")
    settings = settings or InferenceSettings()
    chosen = _resolve_rows(rows)
    needs_static = any(row.quantize == "static" for row in chosen)
    calibration = list(calibration_images or [])
    if needs_static and not calibration and not reuse_exports:
        raise RecipeError("deploy report: the INT8 static rows need calibration images (--calibration_split, "
                          "--num_calibration_images), or leave those rows out (--rows).")
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
        made = {} if reuse_exports else _export_files(model_dir, folder, chosen, calibration, settings, quantization)

        # speed: every row here, side by side; token merging on both precisions until the faster one is known
        keys = {row.key for row in chosen}
        compare = {"pytorch-fp32", "pytorch-bf16"} <= keys
        candidates = list(chosen) + [replace(row, key=row.key + "@bf16", precision="bf16")
                                     for row in chosen if row.token_merging and compare]
        segmenters = {row.key: load_row(model_dir, row, settings, folder) for row in candidates}
        first = next(iter(segmenters.values()))
        images = []
        for entry in dataset.select(range(min(timing_images, len(dataset))))["image"]:
            image = load_image(_pil(entry))
            height, width = first.input_size_of(image)
            images.append(image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR))
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
            spec = {"row": asdict(row), "precision": row.precision, "model_dir": str(model_dir),
                    "folder": str(folder), "settings": asdict(settings), "threads": threads,
                    "dataset": str(tmp_dir / "pairs"), "decoder": str(decoder_path),
                    "agreement_images": agreement_images, "masks": str(tmp_dir / f"masks-{row.key}.npz")}
            outcomes[row.key] = run_row_worker(spec, tmp_dir, threads)
        agreement = _agreements(final_rows, outcomes, tmp_dir)

    exports = _describe_exports(folder, final_rows, made)
    static_files = [exports[row.onnx_file] for row in final_rows if row.quantize == "static"]
    calibrated = max((entry.get("calibration_images", 0) for entry in static_files), default=len(calibration))
    results = []
    for row in final_rows:
        outcome = outcomes[row.key]
        file = folder / row.onnx_file if row.onnx_file else _weights_file(model_dir)
        result = RowResult(row.key, row.label + (f" ({row.precision})" if row.token_merging else ""), row.runtime,
                           row.precision, row.token_merging, file.name, file.stat().st_size,
                           statistics.median(timings[row.key]), list(timings[row.key]),
                           _median_ratio(timings.get(REFERENCE_ROW, []), timings[row.key]),
                           _median_ratio(timings.get(ONNX_REFERENCE_ROW, []), timings[row.key]),
                           outcome.get("peak_rss_mb"), outcome.get("loaded_rss_mb"), outcome.get("miou"),
                           pixel_agreement=agreement.get(row.key), error=outcome.get("error"))
        results.append(result)
    _score_against_reference(results, collapse_points)
    facts = {
        "model": model_dir.name, "images": len(dataset), "input_size": input_size,
        "mode": settings.mode, "threads": threads, "repeats": repeats, "timing_images": len(images),
        "agreement_images": min(agreement_images, len(dataset)), "collapse_points": collapse_points,
        "token_merging_precision": best_precision, "calibration_images": calibrated,
        "exports": exports, "reused_exports": reuse_exports, "machine": machine_facts(), "date": datetime.date.today().isoformat(), **(facts or {}),
    }
    report = DeployReport(results, facts)
    write_report(report, folder)
    return report


def _weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise RecipeError(f"deploy report: {model_dir} has no model.safetensors or pytorch_model.bin.")


def _agreements(rows: list[Row], outcomes: dict[str, dict], folder: Path) -> dict[str, float]:
    """Per row, the share of pixels (at each image's native size) predicted as PyTorch fp32 predicts them."""
    reference = folder / f"masks-{REFERENCE_ROW}.npz"
    if not outcomes.get(REFERENCE_ROW, {}).get("masks") or not reference.is_file():
        return {}
    with np.load(reference) as ref:
        expected = {k: ref[k] for k in ref.files}
    shares = {}
    for row in rows:
        path = folder / f"masks-{row.key}.npz"
        if outcomes[row.key].get("masks") and path.is_file():
            with np.load(path) as got:
                same = sum(int((got[k] == expected[k]).sum()) for k in expected)
            shares[row.key] = same / sum(v.size for v in expected.values())
    return shares


def _score_against_reference(results: list[RowResult], collapse_points: float) -> None:
    reference = next((r for r in results if r.key == REFERENCE_ROW and r.miou is not None), None)
    reference = reference or next((r for r in results if r.miou is not None), None)
    for result in results:
        if reference is not None and result.miou is not None:
            result.miou_change_points = 100 * (result.miou - reference.miou)
            result.collapsed = result.miou_change_points < -collapse_points


def goal_status(report: DeployReport) -> dict[str, Any]:
    """The issue's goal for INT8 static: ≥ 1.5× ONNX fp32 with ≤ 1 mIoU point lost; met or missed, and by what."""
    row = report.row(GOAL_ROW)
    if row is None or row.speedup_vs_onnx_fp32 is None or row.miou_change_points is None:
        return {"measured": False}
    speed_ok = row.speedup_vs_onnx_fp32 >= GOAL_SPEEDUP
    accuracy_ok = row.miou_change_points >= -GOAL_MAX_LOSS_POINTS
    return {"measured": True, "speedup_vs_onnx_fp32": row.speedup_vs_onnx_fp32, "speedup_goal": GOAL_SPEEDUP,
            "miou_change_points": row.miou_change_points, "max_loss_points": GOAL_MAX_LOSS_POINTS,
            "speed_met": speed_ok, "accuracy_met": accuracy_ok, "met": speed_ok and accuracy_ok}


def machine_facts() -> dict[str, Any]:
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    cpu = cpu_info("model name") or platform.processor() or platform.machine()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "int8_features": cpu_int8_features(),
            "torch": torch.__version__, "onnxruntime": ort_version, "python": platform.python_version()}


def _cell(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(report: DeployReport) -> str:
    """The table (also the model card's): one line per row, a COLLAPSED flag where mIoU fell past the threshold."""
    lines = ["| deployment | file | size MB | ms/image | × vs PyTorch fp32 | × vs ONNX fp32 | peak memory MB | "
             "mIoU | Δ mIoU (points) | pixels as fp32 | flag |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    threshold = report.facts.get("collapse_points", DEFAULT_COLLAPSE_POINTS)
    for r in report.rows:
        flag = f"**COLLAPSED** (> {threshold:g} points lost)" if r.collapsed else ""
        if r.error:
            flag = f"failed: {r.error}"
        lines.append(
            f"| {r.label} | {r.file} | {r.file_bytes / 1e6:.2f} | {_cell(r.ms_per_image, '.1f')} | "
            f"{_cell(r.speedup_vs_pytorch_fp32, '.2f')} | {_cell(r.speedup_vs_onnx_fp32, '.2f')} | "
            f"{_cell(r.peak_rss_mb, '.0f')} | {_cell(r.miou, '.4f')} | {_cell(r.miou_change_points, '+.2f')} | "
            f"{_cell(None if r.pixel_agreement is None else 100 * r.pixel_agreement, '.2f')}{'' if r.pixel_agreement is None else ' %'} | "
            f"{flag} |")
    return "\n".join(lines)


def _goal_line(report: DeployReport) -> str:
    goal = goal_status(report)
    if not goal["measured"]:
        return "Goal (INT8 static ≥ 1.5× ONNX fp32, ≤ 1 mIoU point lost): not measured (row missing or failed)."
    missed = []
    if not goal["speed_met"]:
        missed.append(f"speed-up {goal['speedup_vs_onnx_fp32']:.2f}× < {GOAL_SPEEDUP}×")
    if not goal["accuracy_met"]:
        missed.append(f"{-goal['miou_change_points']:.2f} mIoU points lost > {GOAL_MAX_LOSS_POINTS}")
    verdict = "**met**" if goal["met"] else "**missed**: " + "; ".join(missed)
    return (f"Goal (INT8 static ≥ {GOAL_SPEEDUP}× ONNX fp32 with ≤ {GOAL_MAX_LOSS_POINTS:g} mIoU point lost): "
            f"{goal['speedup_vs_onnx_fp32']:.2f}×, {goal['miou_change_points']:+.2f} points — {verdict}.")


def render_markdown(report: DeployReport) -> str:
    f = report.facts
    machine = f["machine"]
    features = ", ".join(k for k, v in machine["int8_features"].items() if v) or "none known"
    size = "×".join(map(str, f["input_size"]))
    return "\n".join([
        f"# Deploy report: {f['model']}", "",
        f"{'The ' + f['split'] + ' split' if f.get('split') else 'The evaluation pairs'}: {f['images']} images, each mask at its native size; {f['mode']} "
        f"inference at {size}. ms/image: one image at {size} (normalisation + forward), median of {f['repeats']} "
        f"rounds in which every row ran once in turn, {f['threads']} thread(s); speed-ups are medians of per-round "
        "ratios. Peak memory: peak resident memory of a fresh process that loads the row and evaluates the split "
        f"(Python, torch and the data included). Pixels as fp32: share of the pixels of the first "
        f"{f['agreement_images']} images predicted as PyTorch fp32 predicts them."
        + (f" Token merging runs in {f['token_merging_precision']}, the faster PyTorch precision here."
           if any(r.token_merging for r in report.rows) else "")
        + (f" INT8 static calibrated on {f['calibration_images']} images"
           f"{' of the ' + f['calibration_split'] + ' split' if f.get('calibration_split') else ''}."
           if any(r.key.startswith("onnx-int8-static") for r in report.rows) else ""),
        "", markdown_table(report), "", _goal_line(report), "",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs; {features}), torch {machine['torch']}, "
        f"onnxruntime {machine['onnxruntime']}; {f['date']}.", ""])


def write_report(report: DeployReport, folder: Path) -> None:
    (folder / "deploy_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (folder / "deploy_report.md").write_text(render_markdown(report))


def model_card_section(report_json: dict[str, Any]) -> str:
    """A '## Deployment' section for the model card, from deploy_report.json (no local paths in it)."""
    report = DeployReport([RowResult(**row) for row in report_json["rows"]], report_json["facts"])
    f = report.facts
    size = "×".join(map(str, f["input_size"]))
    return "\n".join([
        "## Deployment", "",
        f"Measured with `hf-segformer deploy-report` on the {f.get('split', 'validation')} split ({f['images']} "
        f"images) at {size}, {f['threads']} CPU thread(s) on {f['machine']['cpu']}:", "",
        markdown_table(report), "", _goal_line(report), "",
        "Run an ONNX file with `hf-segformer predict --model <this repo> --onnx <file>`.", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", required=True, help="worker spec (JSON) written by deploy_report")
    args = parser.parse_args(argv)
    print(RESULT_PREFIX + json.dumps(worker_main(args.worker)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
