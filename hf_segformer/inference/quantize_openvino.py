"""INT8 OpenVINO IR by NNCF post-training quantization of the float32 ONNX export.

`nncf.quantize` with the transformer model type: the Linear layers' and convolutions' MatMuls in INT8, attention's
activation × activation MatMuls, Softmax, LayerNorm and GELU float, as NNCF's transformer scheme keeps them. It is
calibrated on the arrays inference hands the model, recorded by the same calibration reader as ONNX Runtime's
static INT8 (`quantize.calibration_reader`), so both INT8 files see the inputs prediction will.

The INT8 IR is quantized, and runs, at the calibration inputs' height and width (batch free): NNCF folds the shape
arithmetic of a graph with free height and width into constants of the calibration size, which would give wrong
logits at any other size. Whole-image inference at the image processor's size (the deploy report's setting) feeds
one size; for other sizes, quantize at that size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_segformer.errors import RecipeError
from hf_segformer.inference.openvino_backend import ir_files, onnx_props, require, save_ir
from hf_segformer.inference.quantize import QUANTIZATION_KEY, calibration_reader, iterate_pixels


class VariableInputSize(RecipeError):
    """The model's inputs vary in size (keep-ratio or native-size inference): an NNCF INT8 IR runs at one size."""


@dataclass
class OpenVINOQuantization:
    """How `quantize_openvino` made an INT8 IR (recorded in its metadata, as ONNX Runtime's INT8 files are)."""

    path: str
    settings: dict[str, Any]
    file_bytes: int
    seconds: float
    calibration_images: int
    calibration_inputs: int


def quantize_openvino(onnx_path: str | Path, xml_path: str | Path, calibration_images: Iterable[Any],
                      model_dir: str | Path, inference_settings: Any = None) -> OpenVINOQuantization:
    """INT8 IR of the float32 ONNX export: NNCF post-training quantization (transformer scheme) calibrated on
    `calibration_images` preprocessed as `Segmenter` preprocesses them for the model in `model_dir`."""
    ov, nncf = require("openvino"), require("nncf")
    images = list(calibration_images)
    if not images:
        raise RecipeError("OpenVINO INT8 needs at least one calibration image (--calibration_split, "
                          "--num_calibration_images).")
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    started = time.perf_counter()
    reader = calibration_reader(onnx_path, images, model_dir, inference_settings)
    inputs = list(iterate_pixels(reader))
    sizes = {tuple(array.shape[2:]) for array in inputs}
    if len(sizes) != 1:
        raise VariableInputSize(f"OpenVINO INT8 is made for one input size; the calibration inputs have {len(sizes)} "
                          f"({', '.join('×'.join(map(str, s)) for s in sorted(sizes))}): use whole mode at the image "
                          "processor's size, or one --scale for images of one size.")
    (height, width), = sizes
    settings = {"tool": "nncf", "nncf_version": nncf.__version__, "openvino_version": ov.__version__,
                "model_type": "transformer", "preset": "performance", "subset_size": len(inputs),
                "input_size": [height, width]}
    model = ov.convert_model(str(onnx_path))
    model.reshape({model.inputs[0]: [-1, inputs[0].shape[1], height, width]})  # N bands for band-stack models
    quantized = nncf.quantize(model, nncf.Dataset(inputs),
                              model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(inputs))
    metadata = {**onnx_props(onnx_path),
                QUANTIZATION_KEY: json.dumps({**settings, "calibration_images": reader.count})}
    save_ir(quantized, xml_path, metadata)
    return OpenVINOQuantization(str(xml_path), settings, sum(p.stat().st_size for p in ir_files(xml_path)),
                                time.perf_counter() - started, reader.count, len(inputs))


