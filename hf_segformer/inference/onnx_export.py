"""ONNX export of a saved SegFormer (dynamic batch, height and width), checked against PyTorch with onnxruntime.

The exported graph maps normalised `pixel_values` [B, 3, H, W] ([B, N, H, W] for a model
trained on N bands) to `logits` [B, C, H/4, W/4], as the model's
forward does; the class names and the saved image processor's settings travel in the file's metadata, so that
an ONNX file alone is enough to predict. The decode head is exported folded (`modeling.head_folding`: the same logits
up to float rounding, faster) unless asked otherwise; the metadata says which head the file holds. Needs the `onnx`
extra (onnx, onnxruntime; onnxscript for `dynamo`).
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_segformer import __version__
from hf_segformer.errors import RecipeError, require_extra
from hf_segformer.modeling.head_folding import FoldedSegformer, can_fold
from hf_segformer.modeling.token_merging import has_token_merging

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
# Parity of ONNX Runtime with PyTorch in float32: max |logit difference| and share of equal arg-max pixels.
MAX_ABS_DIFFERENCE, MIN_ARGMAX_AGREEMENT = 1e-3, 0.999
# The metadata entry naming the exported decode head: FOLDED, or UNFOLDED (the graph as saved).
HEAD_KEY, FOLDED, UNFOLDED = "decode_head", "folded", "unfolded"


def _require(module: str):
    """onnx, onnxruntime or onnxscript (the `onnx` extra)."""
    return require_extra(module, "onnx", "ONNX export and inference", "onnx, onnxruntime, onnxscript")


class _Logits(nn.Module):
    """The model with one tensor in and one out: what an ONNX graph can express."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def export_model(model: nn.Module, output_path: str | Path, opset: int = DEFAULT_OPSET,
                 sample_size: tuple[int, int] = (512, 512), dynamo: bool = False,
                 metadata: dict[str, str] | None = None, fold_head: bool = True) -> Path:
    """Write `model` (eval mode, float32, CPU) as ONNX with dynamic batch/height/width and metadata.

    `fold_head`: export the decode head folded where the model allows it (`can_fold`), else as saved; the metadata
    entry HEAD_KEY records which.

    `dynamo=False` uses the TorchScript exporter: seconds instead of tens of seconds and, for SegFormer,
    shape-generic (the decode head's interpolation to the first stage's size is recorded as shape arithmetic).
    `dynamo=True` uses torch.export (the exporter PyTorch develops further; needs onnxscript).
    """
    onnx = _require("onnx")
    if has_token_merging(model):
        raise RecipeError("Export the model without token merging (remove_token_merging): the number of merged "
                          "tokens depends on the input size, which an exported graph would freeze.")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    folded = fold_head and can_fold(model)
    # the folded maps as 1×1 Conv nodes, which ONNX Runtime's INT8 quantizer handles (an Einsum it leaves float)
    wrapped = _Logits(FoldedSegformer(model, as_conv=True) if folded else model)
    # batch 2: torch.export specialises a dimension whose sample size is 1
    sample = torch.zeros(2, getattr(model.config, "num_channels", 3), *sample_size)  # N bands for band-stack models
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        if dynamo:
            _require("onnxscript")
            dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
            torch.onnx.export(wrapped, (sample,), str(output_path), dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={"pixel_values": dims}, verbose=False)
        else:
            torch.onnx.export(wrapped, (sample,), str(output_path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                                            OUTPUT_NAME: {0: "batch", 2: "logits_height", 3: "logits_width"}})
    graph = onnx.load(str(output_path))
    recorded = {entry.domain: entry.version for entry in graph.opset_import}.get("", opset)
    props = {"opset": str(recorded), "exporter": "torch.export" if dynamo else "torchscript",
             "torch_version": torch.__version__, "hf_segformer_version": __version__, **(metadata or {}),
             HEAD_KEY: FOLDED if folded else UNFOLDED}
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(output_path))
    return output_path


def model_metadata(model_dir: str | Path, model: nn.Module) -> dict[str, str]:
    """id2label and the saved image processor's settings (when the folder has them), as JSON strings."""
    metadata = {"id2label": json.dumps({int(k): v for k, v in model.config.id2label.items()}),
                "source": str(model_dir)}
    processor = Path(model_dir) / "preprocessor_config.json"
    if processor.is_file():
        metadata["preprocessor_config"] = processor.read_text()
    return metadata


def load_onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime InferenceSession on the CUDA provider when onnxruntime has it, else the CPU."""
    ort = _require("onnxruntime")
    if not Path(path).is_file():
        raise RecipeError(f"ONNX model {path} does not exist.")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def onnx_metadata(session) -> dict[str, object]:
    """The metadata written by `export_model`, with id2label (int keys) and preprocessor_config parsed."""
    metadata: dict[str, object] = dict(session.get_modelmeta().custom_metadata_map)
    if "id2label" in metadata:
        metadata["id2label"] = {int(k): v for k, v in json.loads(metadata["id2label"]).items()}
    if "preprocessor_config" in metadata:
        metadata["preprocessor_config"] = json.loads(metadata["preprocessor_config"])
    return metadata


def onnx_logits(session, pixel_values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Logits [B, C, H/4, W/4] (float32, CPU) of an exported model for normalised pixel_values [B, 3, H, W]."""
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.detach().float().cpu().numpy()
    array = np.ascontiguousarray(pixel_values, dtype=np.float32)
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


@dataclass
class ParityCheck:
    """ONNX Runtime vs PyTorch on one input size."""

    size: tuple[int, int]
    batch: int
    max_abs_difference: float
    argmax_agreement: float
    channels: int = 3

    @property
    def passed(self) -> bool:
        return self.max_abs_difference <= MAX_ABS_DIFFERENCE and self.argmax_agreement >= MIN_ARGMAX_AGREEMENT

    def __str__(self) -> str:
        return (f"{self.batch}×{self.channels}×{self.size[0]}×{self.size[1]}: "
                f"max |logit difference| {self.max_abs_difference:.2e}, "
                f"argmax agreement {100 * self.argmax_agreement:.3f} %{'' if self.passed else '  <-- FAILED'}")


def check_parity(model: nn.Module, session, sizes: list[tuple[int, int]], batch: int = 2,
                 seed: int = 0) -> list[ParityCheck]:
    """Run both on the same random normalised images of each size."""
    generator = torch.Generator().manual_seed(seed)
    checks = []
    model = model.eval().float()
    for size in sizes:
        pixel_values = torch.randn(batch, getattr(model.config, "num_channels", 3), *size, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).logits
        actual = onnx_logits(session, pixel_values)
        if actual.shape != expected.shape:
            raise RuntimeError(f"ONNX logits have shape {tuple(actual.shape)} for input {tuple(pixel_values.shape)}; "
                               f"PyTorch gives {tuple(expected.shape)}: the export froze a dimension.")
        agreement = (actual.argmax(1) == expected.argmax(1)).float().mean().item()
        checks.append(ParityCheck(size, batch, (actual - expected).abs().max().item(), agreement,
                                  pixel_values.shape[1]))
    return checks


def check_output_file(output_path: str | Path, overwrite: bool) -> None:
    """Before any work: the .onnx file can be written there, and an existing file is replaced only if told."""
    path = Path(output_path)
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise RecipeError(f"output_path {path}: {blocking} is a file, not a folder; pick another output_path.")
    if path.is_dir():
        raise RecipeError(f"output_path {path} is a folder; give the .onnx file to write, e.g. {path / 'model.onnx'}.")
    if path.exists() and not overwrite:
        raise RecipeError(f"output_path {path} exists; pass --overwrite to replace it, or pick another output_path.")


def export_onnx(model_dir: str | Path, output_path: str | Path, opset: int = DEFAULT_OPSET,
                sample_size: tuple[int, int] | None = None, check_sizes: list[tuple[int, int]] | None = None,
                dynamo: bool = False, batch: int = 2, overwrite: bool = False,
                fold_head: bool = True) -> list[ParityCheck]:
    """Export a saved model folder to `output_path` and check it against PyTorch (printed and returned).

    sample_size: the tracing input (default: the saved image processor's size, else 512²); check_sizes: the
    sizes compared (default: the sample size and one of another aspect ratio). fold_head: export the folded decode
    head (see `export_model`). Either graph is compared with the model as saved, so a folded export passes only if
    folding and export together keep its logits.
    """
    from hf_segformer.modeling.build import load_saved_model  # transformers: only when a model is exported

    if not (Path(model_dir) / "config.json").is_file():
        raise RecipeError(f"{model_dir} is not a saved model folder (no config.json); pass a training output_dir.")
    check_output_file(output_path, overwrite)
    model = load_saved_model(model_dir).eval()
    metadata = model_metadata(model_dir, model)
    sample_size = tuple(sample_size or _processor_size(metadata) or (512, 512))
    path = export_model(model, output_path, opset, sample_size, dynamo, metadata, fold_head)
    session = load_onnx_session(path)
    sizes = check_sizes or [sample_size, (sample_size[0] * 3 // 4 + 3, sample_size[1] + 37)]
    checks = check_parity(model, session, [tuple(s) for s in sizes], batch)
    head = onnx_metadata(session)[HEAD_KEY]
    if head == FOLDED:
        head_note = "decode head folded (--fold_head false: as saved)"
    else:
        head_note = "decode head as saved" + ("" if fold_head else " (--fold_head false)")
    print(f"Exported {model_dir} to {path} (opset {onnx_metadata(session)['opset']}, "
          f"{'torch.export' if dynamo else 'torchscript'} exporter, dynamic batch/height/width, {head_note}).")
    if fold_head and head != FOLDED:
        print("  the decode head cannot be folded (not transformers' SegformerDecodeHead with 4-D stage outputs), "
              "so it was exported as saved.")
    print("ONNX Runtime vs PyTorch (float32, the model as saved):")
    for check in checks:
        print(f"  {check}")
    if not all(check.passed for check in checks):
        print(f"error: ONNX Runtime disagrees with PyTorch beyond max |logit difference| {MAX_ABS_DIFFERENCE} / "
              f"argmax agreement {100 * MIN_ARGMAX_AGREEMENT} %; try another --opset or --dynamo.", file=sys.stderr)
    return checks


def _processor_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    size = json.loads(metadata.get("preprocessor_config", "{}")).get("size") or {}
    return (size["height"], size["width"]) if "height" in size and "width" in size else None
