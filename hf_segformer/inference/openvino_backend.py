"""OpenVINO for SegFormer on x86 CPUs (Intel and AMD): the ONNX export converted to OpenVINO IR (.xml + .bin), its
INT8 version quantized post-training by NNCF, and a session that `Segmenter` runs as it runs ONNX Runtime's.

- convert: `openvino.convert_model` reads the ONNX file written by `export-onnx` (the decode head folded), so both
  files hold the same graph; the ONNX metadata (class names, image processor, decode head) travels in the IR's
  rt_info and reads back through `get_modelmeta()` as ONNX Runtime's does.
- precision: `fp32`, or `bf16` through OpenVINO's INFERENCE_PRECISION_HINT (computed natively on AMX/AVX-512 BF16
  CPUs; where the CPU has neither, OpenVINO runs f32 and the session says so in `precision_used`).
- INT8: `inference.quantize_openvino` (NNCF) writes an IR that this module runs like the float one.

Needs the `openvino` extra (openvino, nncf).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hf_segformer.errors import RecipeError, require_extra
from hf_segformer.inference.onnx_export import OUTPUT_NAME

SUFFIX = ".xml"  # an OpenVINO IR: NAME.xml (the graph) beside NAME.bin (the weights)
RT_INFO_SECTION = "hf_segformer"  # where the ONNX metadata entries travel in the IR
HINTS = {"fp32": "f32", "bf16": "bf16"}  # Segmenter precision → INFERENCE_PRECISION_HINT


def require(module: str):
    """openvino or nncf (the `openvino` extra)."""
    return require_extra(module, "openvino", "OpenVINO deployment", "openvino, nncf")


def is_openvino_file(path: str | Path | None) -> bool:
    """Whether `path` names an OpenVINO IR (.xml) rather than an ONNX file."""
    return path is not None and Path(path).suffix.lower() == SUFFIX


def ir_files(xml_path: str | Path) -> list[Path]:
    """The files an IR is made of: the .xml and its .bin."""
    xml_path = Path(xml_path)
    return [xml_path, xml_path.with_suffix(".bin")]


def save_ir(model: Any, xml_path: Path, metadata: dict[str, str]) -> Path:
    ov = require("openvino")
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # fp16 weights would change the fp32 row's logits
    return xml_path


def onnx_props(onnx_path: Path) -> dict[str, str]:
    import onnx  # the [onnx] extra: the IR is made from the ONNX export

    return {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}


def convert_onnx(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """The ONNX export as an OpenVINO IR (float32 weights), its metadata kept."""
    ov = require("openvino")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RecipeError(f"OpenVINO: the ONNX model {onnx_path} does not exist; export it first (hf-segformer "
                          "export-onnx).")
    return save_ir(ov.convert_model(str(onnx_path)), Path(xml_path), onnx_props(onnx_path))


def read_metadata(model: Any) -> dict[str, str]:
    """The ONNX metadata entries kept in an IR's rt_info."""
    if not model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = model.get_rt_info()[RT_INFO_SECTION]
    return {key: section[key].astype(str) for key in section}


class _Meta:
    def __init__(self, metadata: dict[str, str]):
        self.custom_metadata_map = metadata


class OpenVINOSession:
    """A compiled IR behind ONNX Runtime's `run`/`get_modelmeta` interface, so that `Segmenter` (onnx_logits),
    `onnx_metadata` and `quantization_info` read it unchanged."""

    precisions = tuple(HINTS)  # what Segmenter may ask of this session

    def __init__(self, xml_path: str | Path, threads: int | None = None, precision: str = "fp32"):
        ov = require("openvino")
        xml_path = Path(xml_path)
        missing = [str(p) for p in ir_files(xml_path) if not p.is_file()]
        if missing:
            raise RecipeError(f"OpenVINO model {xml_path}: {', '.join(missing)} missing (an IR is NAME.xml beside "
                              "NAME.bin).")
        if precision not in HINTS:
            raise RecipeError(f"OpenVINO runs fp32 or bf16; got precision '{precision}'.")
        core = ov.Core()
        model = core.read_model(str(xml_path))
        self.metadata = read_metadata(model)
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.precision_used = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.input_size = None if shape[2].is_dynamic or shape[3].is_dynamic else (shape[2].get_length(),
                                                                                    shape[3].get_length())
        self.path = xml_path

    def get_modelmeta(self) -> _Meta:
        return _Meta(self.metadata)

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        size = next(iter(feeds.values())).shape[2:]
        if self.input_size is not None and tuple(size) != self.input_size:
            raise RecipeError(f"OpenVINO model {self.path} runs {self.input_size[0]}×{self.input_size[1]} inputs only "
                              f"(an INT8 file is quantized at one size); this input is {size[0]}×{size[1]}. Use whole "
                              "mode at the model's image processor size, or quantize at this size.")
        results = self.request.infer(feeds)
        by_name = {name: value for output, value in results.items() for name in output.get_names()}
        return [np.array(by_name[name] if name in by_name else results[self.compiled.output(0)], copy=True)
                for name in (output_names or [OUTPUT_NAME])]
