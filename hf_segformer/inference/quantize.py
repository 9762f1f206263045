"""INT8 SegFormer for the CPU: ONNX Runtime's dynamic or static (QDQ, calibrated) quantization of an exported model.

`quantize_onnx` turns the float32 file written by `hf-segformer export-onnx` into an INT8 one that `predict`,
`evaluate` and the demo run unchanged (`--onnx`): same input/output names, same metadata (class names, image
processor), plus a `quantization` entry recording how it was made.

- dynamic: weights stored INT8, activations quantized on the fly per tensor and per call (no data needed).
- static: weights and activations INT8 in QDQ format, activation ranges calibrated on images that are
  preprocessed exactly as inference preprocesses them: the calibration reader runs the project's `Segmenter`
  (resize, normalisation table, whole or slide windows, test-time scales) and records the arrays it hands to
  ONNX Runtime, so calibration sees the model inputs that prediction will.

How an INT8 file is checked against PyTorch fp32 after quantizing is `inference.quantize_check`.

The static defaults are the settings measured fastest, at no measurable mIoU cost, on the development CPU (AMD EPYC,
AVX2, no VNNI; explore/ and benchmarks/bench_deploy.py): Conv, the MatMuls with a constant weight (the Linear
layers) and the data movement between them (Resize, Concat, Transpose, Reshape, so that the decode head's upsampling
and concatenation move 8-bit tensors; only where its output reaches an INT8 Conv/MatMul, so the folded head's
upsampling, which feeds a float Add, gets no Q/DQ pair that would only convert) in INT8; attention's activation ×
activation products and its Softmax, LayerNorm, GELU and Add stay float (INT8 Softmax ran 4× slower than float, and
QDQ around GELU and LayerNorm broke ONNX Runtime's fusions); uint8 activations × int8 per-channel weights (int8
activations and per-tensor weights were slower, reduce_range no faster); MinMax calibration (Percentile was no more
accurate and slower to calibrate; Entropy was not measured). Dynamic quantizes only the weight MatMuls (ConvInteger,
what dynamic makes of a Conv, ran at 0.6× float speed). Without VNNI, 8-bit products gain little over float FMA, so
on this CPU nearly all of the gain is the decode head's 1×1 fusion convolution; see the issue 19 report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoImageProcessor

from hf_segformer.errors import RecipeError, require_extra
from hf_segformer.inference.onnx_export import INPUT_NAME, load_onnx_session, onnx_metadata
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
from hf_segformer.modeling.build import load_saved_model

MODES = ("dynamic", "static")
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZATION_KEY = "quantization"  # the ONNX metadata entry recording the settings


@dataclass(frozen=True)
class QuantizationSettings:
    """Which nodes become INT8 and how; every field maps to one onnxruntime.quantization argument."""

    mode: str = "static"
    per_channel: bool = True
    # Resize/Concat/Transpose/Reshape: the decode head's upsampling and concatenation then move 8-bit tensors
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Resize", "Concat", "Transpose", "Reshape")
    # MatMuls whose second input is a weight (the Linear layers): attention's Q·Kᵀ and P·V stay float
    constant_weight_matmul_only: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = False
    calibration_method: str = "minmax"
    percentile: float = 99.999
    # nodes kept float: "pattern" (any node whose name contains it) or "OpType@pattern" (only nodes of that type)
    exclude: tuple[str, ...] = ()
    # data movement (Resize, Concat, Transpose, Reshape) kept float where its output reaches no INT8 Conv/MatMul:
    # there QDQ around it only converts (the folded head's upsampling feeds a float Add)
    movement_feeding_int8_only: bool = True
    preprocess: bool = True  # onnxruntime's quant_pre_process (shape inference + graph clean-up) first

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RecipeError(f"quantize: mode must be one of {', '.join(MODES)}; got '{self.mode}'.")
        if self.activation_type not in ACTIVATION_TYPES:
            raise RecipeError(f"quantize: activation_type must be one of {', '.join(ACTIVATION_TYPES)}; "
                              f"got '{self.activation_type}'.")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise RecipeError(f"quantize: calibration_method must be one of {', '.join(CALIBRATION_METHODS)}; "
                              f"got '{self.calibration_method}'.")
        if not self.op_types:
            raise RecipeError("quantize: op_types is empty, so nothing would be quantized.")


def default_settings(mode: str) -> QuantizationSettings:
    """The measured defaults of a mode. Dynamic quantizes only the weight MatMuls: ONNX Runtime's ConvInteger
    (what dynamic makes of a Conv) ran the aerial B0 at 0.6× float speed on the development CPU."""
    if mode == "dynamic":
        return QuantizationSettings(mode="dynamic", op_types=("MatMul",))
    return QuantizationSettings(mode=mode)


def _require_quantization():
    """onnxruntime's quantization tools (the `onnx` extra)."""
    return require_extra("onnxruntime.quantization", "onnx", "INT8 quantization", "onnx, onnxruntime, onnxscript")


class _RecordingSession:
    """Stands in for the float32 InferenceSession inside a `Segmenter`: runs it, and keeps each model input."""

    def __init__(self, session: Any):
        self.session = session
        self.inputs: list[np.ndarray] = []

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.inputs.append(feeds[INPUT_NAME])
        return self.session.run(output_names, feeds)


def _calibration_reader_class():
    quantization = _require_quantization()

    class SegmenterCalibrationReader(quantization.CalibrationDataReader):
        """Feeds ONNX Runtime's calibrator the model inputs inference makes of each image, one image at a time
        (memory: one image's inputs), one array per forward pass as inference would batch it (batch 1 in whole
        mode, the windows of one image in slide mode)."""

        def __init__(self, segmenter: Segmenter, recorder: _RecordingSession, images: Iterable[Any]):
            self.segmenter, self.recorder = segmenter, recorder
            self.images = iter(images)
            self.count = 0  # images read
            self.inputs_given = 0  # arrays handed to the calibrator

        def _refill(self) -> bool:
            for item in self.images:
                image = self.segmenter.read(item)  # as inference reads it: 8-bit RGB or the model's bands
                for _ in self.segmenter.logits([image]):
                    pass
                self.count += 1
                if self.recorder.inputs:
                    return True
            return False

        def get_next(self) -> dict[str, np.ndarray] | None:
            if not self.recorder.inputs and not self._refill():
                return None
            self.inputs_given += 1
            return {INPUT_NAME: np.ascontiguousarray(self.recorder.inputs.pop(0), dtype=np.float32)}

    return SegmenterCalibrationReader


def calibration_reader(fp32_path: str | Path, images: Iterable[Any], model_dir: str | Path,
                       settings: InferenceSettings | None = None):
    """A CalibrationDataReader over `images` (paths, PIL images or arrays) preprocessed as `Segmenter` does for
    the model in `model_dir` (its image processor and class count) with inference `settings`."""
    recorder = _RecordingSession(load_onnx_session(fp32_path, threads=None))
    model = load_saved_model(model_dir)
    segmenter = Segmenter(model, saved_image_processor(model_dir), settings, device="cpu", onnx_session=recorder)
    return _calibration_reader_class()(segmenter, recorder, images)


def saved_image_processor(model_dir: str | Path) -> Any:
    """The saved model's image processor, or None: `Segmenter` then uses its own default (512², ImageNet
    normalisation), as prediction would."""
    try:
        return AutoImageProcessor.from_pretrained(model_dir)
    except OSError:
        return None


def iterate_pixels(reader: Any) -> Iterator[np.ndarray]:
    """The arrays a calibration reader yields (for tests and inspection)."""
    while (feed := reader.get_next()) is not None:
        yield feed[INPUT_NAME]


def weight_matmuls(model_path: str | Path) -> tuple[set[str], set[str]]:
    """Names of the MatMul nodes whose second input is a constant (an initializer or a Constant node), and of the
    other MatMuls (activation × activation, e.g. attention scores)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    # a weight may reach the MatMul through a Transpose/Identity of a constant
    for node in graph.node:
        if node.op_type in ("Transpose", "Identity", "Cast") and node.input and node.input[0] in constants:
            constants.update(node.output)
    weight, other = set(), set()
    for node in graph.node:
        if node.op_type == "MatMul":
            (weight if node.input[1] in constants else other).add(node.name)
    return weight, other


def nodes_to_exclude(model_path: str | Path, settings: QuantizationSettings) -> list[str]:
    """Nodes kept float: name patterns, and activation × activation MatMuls when only weight MatMuls are wanted."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    rules = [entry.split("@", 1) if "@" in entry else (None, entry) for entry in settings.exclude]
    excluded = {node.name for node in graph.node
                if any((op is None or node.op_type == op) and pattern in node.name for op, pattern in rules)}
    if settings.constant_weight_matmul_only and "MatMul" in settings.op_types:
        excluded |= weight_matmuls(model_path)[1]
    if settings.movement_feeding_int8_only:
        excluded |= _movement_feeding_no_int8(graph, settings, excluded)
    return sorted(excluded)


DATA_MOVEMENT = ("Resize", "Concat", "Transpose", "Reshape")
INT8_COMPUTE = ("Conv", "MatMul")


def _movement_feeding_no_int8(graph: Any, settings: QuantizationSettings, excluded: set[str]) -> set[str]:
    """The data-movement nodes to be quantized whose output reaches no INT8 Conv/MatMul, directly or through other
    such nodes: their Q/DQ would only convert into 8 bits and back."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moving = {node.name for node in graph.node if node.op_type in DATA_MOVEMENT and node.op_type in settings.op_types
              and node.name not in excluded}
    feeds: dict[str, bool] = {}

    def feeds_int8(node: Any) -> bool:
        if node.name not in feeds:
            feeds[node.name] = False  # a cycle cannot occur in an ONNX graph; this only guards the recursion
            feeds[node.name] = any(
                (c.op_type in INT8_COMPUTE and c.op_type in settings.op_types and c.name not in excluded)
                or (c.name in moving and feeds_int8(c)) for out in node.output for c in consumers.get(out, []))
        return feeds[node.name]

    return {node.name for node in graph.node if node.name in moving and not feeds_int8(node)}


@dataclass
class QuantizationResult:
    """What `quantize_onnx` wrote and how."""

    path: str
    mode: str
    settings: dict[str, Any]
    file_bytes: int
    seconds: float
    calibration_images: int = 0
    calibration_inputs: int = 0
    excluded_nodes: list[str] = field(default_factory=list)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, mode: str = "dynamic",
                  calibration_images: Iterable[Any] | None = None, per_channel: bool = True,
                  model_dir: str | Path | None = None, inference_settings: InferenceSettings | None = None,
                  settings: QuantizationSettings | None = None, overwrite: bool = False) -> QuantizationResult:
    """Quantize the float32 export `fp32_path` into `out_path` (refused if it exists, unless `overwrite`).

    static needs `calibration_images` (paths, PIL images or uint8 arrays; a few to a few dozen) and the model
    folder whose image processor preprocesses them (`model_dir`, default: the folder recorded in the export's
    metadata). `settings` overrides the measured defaults; `mode` and `per_channel` are applied on top of it.
    """
    quantization = _require_quantization()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    settings = replace(settings or default_settings(mode), mode=mode, per_channel=per_channel)
    if not fp32_path.is_file():
        raise RecipeError(f"quantize: the float32 ONNX model {fp32_path} does not exist; export it first "
                          "(hf-segformer export-onnx --model MODEL --output_path OUT.onnx).")
    if out_path.resolve() == fp32_path.resolve():
        raise RecipeError(f"quantize: the output {out_path} is the float32 input; give another file name.")
    if out_path.exists() and not overwrite:
        raise RecipeError(f"quantize: {out_path} exists; choose another path or pass overwrite=True (--overwrite).")
    images = None
    if settings.mode == "static":
        if calibration_images is None:
            raise RecipeError("quantize: static quantization needs calibration images (--calibration_split / "
                              "--num_calibration_images): its activation ranges are measured on them.")
        images = list(calibration_images)
        if not images:
            raise RecipeError("quantize: static quantization needs at least one calibration image; got none.")
        model_dir = model_dir or _source_folder(fp32_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    reader = None
    with tempfile.TemporaryDirectory(prefix="hf-segformer-quantize-") as tmp:
        source, tmp_out = fp32_path, Path(tmp) / "quantized.onnx"
        if settings.preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            quantization.quant_pre_process(str(fp32_path), str(source))
        excluded = nodes_to_exclude(source, settings)
        op_types = list(settings.op_types)
        if settings.mode == "dynamic":
            quantization.quantize_dynamic(
                source, tmp_out, op_types_to_quantize=op_types, per_channel=settings.per_channel,
                reduce_range=settings.reduce_range, weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=excluded)
        else:
            reader = calibration_reader(fp32_path, images, model_dir, inference_settings)
            method = {"minmax": quantization.CalibrationMethod.MinMax,
                      "entropy": quantization.CalibrationMethod.Entropy,
                      "percentile": quantization.CalibrationMethod.Percentile}[settings.calibration_method]
            # MinMax keeps only each tensor's min and max per input (ReduceMin/ReduceMax outputs), so memory stays
            # small without CalibMaxIntermediateOutputs, which onnxruntime 1.32 implements by discarding the batch
            extra: dict[str, Any] = {}
            if settings.calibration_method == "percentile":
                extra["CalibPercentile"] = settings.percentile
            activation = {"uint8": quantization.QuantType.QUInt8, "int8": quantization.QuantType.QInt8}
            quantization.quantize_static(
                source, tmp_out, reader, quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=op_types,
                per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                activation_type=activation[settings.activation_type], weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=excluded, calibrate_method=method, extra_options=extra)
        _record_settings(tmp_out, settings, reader.count if reader is not None else 0)
        # written whole, then moved: an interrupted run leaves no half-written model under the user's name
        if _same_filesystem(tmp_out, out_path):
            tmp_out.replace(out_path)
        else:
            _copy(tmp_out, out_path)
    return QuantizationResult(str(out_path), settings.mode, asdict(settings), out_path.stat().st_size,
                              time.perf_counter() - started, reader.count if reader is not None else 0,
                              reader.inputs_given if reader is not None else 0, excluded)


def _record_settings(path: Path, settings: QuantizationSettings, calibration_images: int) -> None:
    import onnx

    model = onnx.load(str(path))
    props = {prop.key: prop.value for prop in model.metadata_props}
    props[QUANTIZATION_KEY] = json.dumps({**asdict(settings), "calibration_images": calibration_images,
                                          "onnxruntime_version": _ort_version()})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.parent.stat().st_dev
    except OSError:
        return False


def _copy(source: Path, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(destination)


def _source_folder(fp32_path: Path) -> Path:
    """The saved model folder recorded in an export's metadata (`source`), for its image processor and config."""
    metadata = onnx_metadata(load_onnx_session(fp32_path))
    source = metadata.get("source")
    if not source or not (Path(str(source)) / "config.json").is_file():
        raise RecipeError(f"quantize: {fp32_path} does not say which saved model it was exported from (or that "
                          "folder is gone); pass model_dir, the folder with config.json and preprocessor_config.json.")
    return Path(str(source))


def quantization_info(session: Any) -> dict[str, Any] | None:
    """The settings recorded in a quantized model's metadata, or None for a float model."""
    text = session.get_modelmeta().custom_metadata_map.get(QUANTIZATION_KEY)
    return json.loads(text) if text else None
