"""The deploy report's choice: the fastest row whose mIoU stays within an accuracy budget of PyTorch fp32, and, for
every other row, why it was not chosen on this machine (slower here, and what the CPU lacks for it; over the
budget; failed).

Plain data in, plain data out (stdlib only), so that the model card renders a saved report without torch.
"""

from __future__ import annotations

from typing import Any

from hf_segformer.errors import RecipeError
from hf_segformer.evaluation.deploy.rows import RowResult

# mIoU points a recommended row may lose against PyTorch fp32
DEFAULT_ACCURACY_BUDGET = 0.5
# the float row each reduced-precision row is an alternative to, on the same runtime
FLOAT_COUNTERPART = {"onnx-int8-dynamic": "onnx-fp32", "onnx-int8-static": "onnx-fp32",
                     "openvino-int8": "openvino-fp32", "pytorch-bf16": "pytorch-fp32",
                     "openvino-bf16": "openvino-fp32"}


def check_accuracy_budget(points: float) -> float:
    """The budget as given; refused before any work where it is not a number of mIoU points ≥ 0."""
    if not points >= 0:  # NaN too
        raise RecipeError(f"deploy report: accuracy_budget (--accuracy_budget) is the mIoU points the recommended row "
                          f"may lose against PyTorch fp32, a number ≥ 0 (default {DEFAULT_ACCURACY_BUDGET}); got "
                          f"{points}.")
    return points


def _hardware_reason(row: RowResult, machine: dict[str, Any]) -> str:
    """What this CPU lacks for the row's reduced precision ("" where it has it or the row is float)."""
    int8, bf16 = machine.get("int8_features", {}), machine.get("native_bf16")
    if "int8" in row.key:
        if not (int8.get("vnni") or int8.get("amx_int8")):
            return "this CPU has no VNNI/AMX, so 8-bit products gain little over float FMA"
        return ("this CPU has VNNI/AMX, but the float parts of the graph (attention, LayerNorm, Softmax, GELU) and "
                "the conversions into and out of INT8 outweigh the faster products")
    if row.precision == "bf16" and not row.token_merging and bf16 is False:
        return "this CPU has no AVX-512 BF16/AMX-BF16, so bf16 is emulated (PyTorch) or runs as fp32 (OpenVINO)"
    return ""


def _why_not(row: RowResult, chosen: RowResult, rows: dict[str, RowResult], budget: float,
             machine: dict[str, Any]) -> str:
    if row.error:
        return f"failed: {row.error}"
    if row.ms_per_image is None or row.miou_change_points is None:
        return "not measured"
    if row.miou_change_points < -budget:
        return (f"{row.miou_change_points:+.2f} mIoU points, over the {budget:g}-point budget"
                + (f" (though {chosen.ms_per_image / row.ms_per_image:.2f}× the speed of {chosen.label})"
                   if row.ms_per_image < chosen.ms_per_image else ""))
    parts = [f"{row.ms_per_image / chosen.ms_per_image:.2f}× the time of {chosen.label} here"]
    counterpart = rows.get(FLOAT_COUNTERPART.get(row.key, ""))
    if counterpart is not None and counterpart.ms_per_image and row.ms_per_image:
        parts.append(f"{counterpart.ms_per_image / row.ms_per_image:.2f}× the speed of {counterpart.label}")
    hardware = _hardware_reason(row, machine)
    return "; ".join(parts) + (f" — {hardware}" if hardware else "")


def recommend(results: list[RowResult], budget_points: float, machine: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest measured row losing at most `budget_points` mIoU points against PyTorch fp32, and why each other
    row was not chosen. None where no row qualifies (every row failed)."""
    measured = [r for r in results if not r.error and r.ms_per_image is not None and r.miou_change_points is not None]
    within = [r for r in measured if r.miou_change_points >= -budget_points]
    if not within:
        return None
    chosen = min(within, key=lambda r: r.ms_per_image)
    by_key = {r.key: r for r in results}
    return {"key": chosen.key, "label": chosen.label, "runtime": chosen.runtime, "precision": chosen.precision,
            "token_merging": chosen.token_merging, "file": chosen.file, "ms_per_image": chosen.ms_per_image,
            "speedup_vs_pytorch_fp32": chosen.speedup_vs_pytorch_fp32,
            "miou_change_points": chosen.miou_change_points, "pixel_agreement": chosen.pixel_agreement,
            "accuracy_budget_points": budget_points,
            "not_chosen": [{"key": r.key, "label": r.label, "why": _why_not(r, chosen, by_key, budget_points, machine)}
                           for r in results if r is not chosen]}


def how_to_run(recommendation: dict[str, Any], model: str = "MODEL") -> str:
    """The command that runs the recommended row."""
    file = recommendation["file"]
    if recommendation["runtime"] == "pytorch":
        options = [f"--precision {recommendation['precision']}"]
        if recommendation.get("token_merging"):
            options.append(f"--token_merging {recommendation['token_merging']}")
        return f"hf-segformer predict --model {model} {' '.join(options)} --inputs IMAGES --predictions_dir MASKS"
    precision = " --precision bf16" if recommendation["precision"] == "bf16" else ""
    return f"hf-segformer predict --model {model} --onnx {file}{precision} --inputs IMAGES --predictions_dir MASKS"
