"""The files a deploy report measures: float32 ONNX exports (the decode head folded, as export-onnx writes them, or
as saved for comparison), their INT8 versions, and the OpenVINO IR converted from the folded export with its NNCF
INT8 version, written into the report folder, and what each file is (for deploy_report.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hf_segformer.evaluation.deploy.rows import ROWS, Row
from hf_segformer.inference.onnx_export import FOLDED, HEAD_KEY, UNFOLDED, export_model, model_metadata
from hf_segformer.inference.openvino_backend import convert_onnx, ir_files, is_openvino_file, require
from hf_segformer.inference.quantize import QUANTIZATION_KEY, quantize_onnx, saved_image_processor
from hf_segformer.inference.quantize_openvino import VariableInputSize, quantize_openvino
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
from hf_segformer.modeling.build import load_saved_model


def export_files(model_dir: Path, folder: Path, rows: list[Row], calibration_images: list[Any] | None,
                 settings: InferenceSettings, quantization: Any | None, skip_unsized: bool = False) -> dict[str, Any]:
    """Write the files the rows need: float32 ONNX exports, their INT8 versions, then the OpenVINO IRs. Returns what
    was made how. `skip_unsized`: an OpenVINO INT8 row for a model whose inputs vary in size (one IR size only) is
    recorded as {"skipped": why} instead of stopping the report (the default rows)."""
    made: dict[str, Any] = {}
    model = load_saved_model(model_dir).eval()
    metadata = model_metadata(model_dir, model)
    size = tuple(Segmenter(model, saved_image_processor(model_dir), settings, "cpu").input_size or (512, 512))
    fp32_files = {True: ROWS["onnx-fp32"].onnx_file, False: ROWS["onnx-fp32-unfolded"].onnx_file}
    needed = {row.fold_head for row in rows if row.runtime in ("onnx", "openvino")}
    for fold in sorted(needed):
        path = folder / fp32_files[fold]
        with torch.no_grad():
            export_model(model, path, sample_size=size, metadata=metadata, fold_head=fold)
        made[fp32_files[fold]] = {HEAD_KEY: _metadata(path).get(HEAD_KEY, UNFOLDED)}
    for row in rows:
        if row.runtime == "openvino":
            try:
                made[row.onnx_file] = _openvino_file(folder, row, fp32_files[row.fold_head], made, calibration_images,
                                                     model_dir, settings)
            except VariableInputSize as err:
                if not skip_unsized:
                    raise
                made[row.onnx_file] = {"skipped": str(err)}
            continue
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
        made[row.onnx_file][HEAD_KEY] = made[fp32_files[row.fold_head]][HEAD_KEY]
    return made


def _openvino_file(folder: Path, row: Row, onnx_file: str, made: dict[str, Any], calibration_images: list[Any] | None,
                   model_dir: Path, settings: InferenceSettings) -> dict[str, Any]:
    """The row's IR, converted (fp32, bf16 rows: one file) or quantized by NNCF from the float ONNX export."""
    if row.onnx_file in made:
        return made[row.onnx_file]
    if row.quantize:
        result = quantize_openvino(folder / onnx_file, folder / row.onnx_file, calibration_images or [], model_dir,
                                   settings)
        entry = {"quantization": "nncf", **result.settings, "calibration_images": result.calibration_images,
                 "seconds": result.seconds}
    else:
        convert_onnx(folder / onnx_file, folder / row.onnx_file)
        entry = {"quantization": None, "converted_from": onnx_file}
    return {**entry, "openvino": require("openvino").__version__, HEAD_KEY: made[onnx_file][HEAD_KEY]}


def file_bytes(path: Path) -> int:
    """The size of an exported model: an OpenVINO IR counts its .xml and .bin."""
    return sum(p.stat().st_size for p in (ir_files(path) if is_openvino_file(path) else [path]))


def _metadata(path: Path) -> dict[str, str]:
    """An export's metadata entries (a file without HEAD_KEY was exported as saved, before it was recorded)."""
    if is_openvino_file(path):
        from hf_segformer.inference.openvino_backend import read_metadata

        return read_metadata(require("openvino").Core().read_model(str(path)))
    import onnx  # optional: the [onnx] extra

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def wrong_heads(folder: Path, rows: Sequence[Row]) -> list[str]:
    """The ONNX files in `folder` (to be reused) whose decode head is not the one their row measures, e.g. a
    model.onnx exported as saved by an earlier version, when the onnx-fp32 row now holds the folded head."""
    wrong = []
    for row in rows:
        if row.onnx_file and (folder / row.onnx_file).is_file():
            head = _metadata(folder / row.onnx_file).get(HEAD_KEY, UNFOLDED)
            if head != (FOLDED if row.fold_head else UNFOLDED):
                wrong.append(f"{row.onnx_file} ({head} head)")
    return wrong


def describe_exports(folder: Path, rows: list[Row], made: dict[str, Any]) -> dict[str, Any]:
    """What each ONNX file is, from this run's exports or, for reused files, from their own metadata."""
    exports = {}
    for row in rows:
        if not row.onnx_file:
            continue
        entry = dict(made.get(row.onnx_file, {}))
        if not entry:
            props = _metadata(folder / row.onnx_file)
            entry = json.loads(props[QUANTIZATION_KEY]) if QUANTIZATION_KEY in props else {"quantization": None}
            entry[HEAD_KEY] = props.get(HEAD_KEY, UNFOLDED)
        exports[row.onnx_file] = entry
    return exports
