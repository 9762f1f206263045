"""What a deploy report is made of: the ways of running the model (rows), what was measured of each, the report.

Plain data, importing nothing heavy, so that a model card can render a saved report without torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_segformer.errors import RecipeError

# A row whose mIoU falls more than this many points below PyTorch fp32 is flagged COLLAPSED.
DEFAULT_COLLAPSE_POINTS = 5.0


@dataclass(frozen=True)
class Row:
    """One way of running the model."""

    key: str
    label: str
    runtime: str  # "pytorch", "onnx" (ONNX Runtime) or "openvino"
    precision: str = "fp32"
    token_merging: str | None = None
    onnx_file: str | None = None  # the exported file, written in the report folder: .onnx, or an OpenVINO .xml
    fold_head: bool = True  # exported with the decode head folded (modeling.head_folding), as export-onnx does
    quantize: str | None = None  # ONNX Runtime: "dynamic" or "static"; OpenVINO: "nncf"

    @property
    def needs_calibration(self) -> bool:
        """Whether making this row's file needs calibration images (static INT8 of either runtime)."""
        return self.quantize in ("static", "nncf")


ROWS: dict[str, Row] = {row.key: row for row in (
    Row("pytorch-fp32", "PyTorch fp32", "pytorch"),
    Row("pytorch-bf16", "PyTorch bf16 (autocast)", "pytorch", "bf16"),
    Row("onnx-fp32", "ONNX Runtime fp32", "onnx", onnx_file="model.onnx"),
    # for comparison: the graph as saved (export-onnx --fold_head false); the other ONNX rows hold the folded head
    Row("onnx-fp32-unfolded", "ONNX Runtime fp32, unfolded head (as saved)", "onnx", onnx_file="model.unfolded.onnx",
        fold_head=False),
    Row("onnx-int8-dynamic", "ONNX Runtime INT8 dynamic", "onnx", onnx_file="model.int8-dynamic.onnx",
        quantize="dynamic"),
    Row("onnx-int8-static", "ONNX Runtime INT8 static (QDQ)", "onnx", onnx_file="model.int8-static.onnx",
        quantize="static"),
    Row("tome-hq", "PyTorch + token merging hq", "pytorch", token_merging="hq"),
    Row("tome-fast", "PyTorch + token merging fast", "pytorch", token_merging="fast"),
    # OpenVINO IR converted from the folded ONNX file; bf16 through INFERENCE_PRECISION_HINT (native on AMX CPUs)
    Row("openvino-fp32", "OpenVINO fp32", "openvino", onnx_file="model.openvino.xml"),
    Row("openvino-bf16", "OpenVINO bf16 (precision hint)", "openvino", "bf16", onnx_file="model.openvino.xml"),
    Row("openvino-int8", "OpenVINO INT8 (NNCF)", "openvino", onnx_file="model.openvino-int8.xml", quantize="nncf"),
)}
OPENVINO_ROWS = ("openvino-fp32", "openvino-bf16", "openvino-int8")
# the OpenVINO rows are measured by default where the `openvino` extra is installed
DEFAULT_ROWS = ("pytorch-fp32", "pytorch-bf16", "onnx-fp32", "onnx-fp32-unfolded", "onnx-int8-dynamic",
                "onnx-int8-static", "tome-hq", "tome-fast") + (
    OPENVINO_ROWS if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf") else ())
REFERENCE_ROW, ONNX_REFERENCE_ROW = "pytorch-fp32", "onnx-fp32"


def resolve_rows(keys: Sequence[str]) -> list[Row]:
    """The rows named by `keys`, in order and once each; an unknown key is refused before any work."""
    unknown = [key for key in keys if key not in ROWS]
    if unknown:
        raise RecipeError(f"deploy report: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}.")
    return [ROWS[key] for key in dict.fromkeys(keys)]


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
    """The measured rows and the facts of the run (model, split, machine, exports), as deploy_report.json holds them."""

    rows: list[RowResult]
    facts: dict[str, Any]
    recommendation: dict[str, Any] | None = None  # recommend.recommend: the row chosen and why not the others

    def row(self, key: str) -> RowResult | None:
        return next((r for r in self.rows if r.key == key), None)

    def to_json(self) -> dict[str, Any]:
        return {"facts": self.facts, "rows": [asdict(r) for r in self.rows], "recommendation": self.recommendation}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeployReport:
        return cls([RowResult(**row) for row in data["rows"]], data["facts"], data.get("recommendation"))
