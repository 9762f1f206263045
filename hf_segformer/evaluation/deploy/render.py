"""The deploy report as text: its table, deploy_report.md, and the model card's "Deployment" section.

Reads only the report's data (rows.py), so that the model card renders a saved deploy_report.json without torch.
"""

from __future__ import annotations

from typing import Any

from hf_segformer.evaluation.deploy.rows import DEFAULT_COLLAPSE_POINTS, DeployReport


def _cell(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(report: DeployReport) -> str:
    """The table (also the model card's): one line per row, a COLLAPSED flag where mIoU fell past the threshold."""
    lines = [("| deployment | file | size MB | ms/image | × vs PyTorch fp32 | × vs ONNX fp32 | peak memory MB | "
              "mIoU | Δ mIoU (points) | pixels as fp32 | flag |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    threshold = report.facts.get("collapse_points", DEFAULT_COLLAPSE_POINTS)
    for r in report.rows:
        flag = f"**COLLAPSED** (> {threshold:g} points lost)" if r.collapsed else ""
        if r.error:
            flag = f"failed: {r.error}"
        agreement = "—" if r.pixel_agreement is None else f"{100 * r.pixel_agreement:.2f} %"
        lines.append(
            f"| {r.label} | {r.file} | {r.file_bytes / 1e6:.2f} | {_cell(r.ms_per_image, '.1f')} | "
            f"{_cell(r.speedup_vs_pytorch_fp32, '.2f')} | {_cell(r.speedup_vs_onnx_fp32, '.2f')} | "
            f"{_cell(r.peak_rss_mb, '.0f')} | {_cell(r.miou, '.4f')} | {_cell(r.miou_change_points, '+.2f')} | "
            f"{agreement} | {flag} |")
    return "\n".join(lines)


def head_note(report: DeployReport) -> str:
    """Which decode head the ONNX rows hold, as the report's exports recorded it (empty where it did not)."""
    exports = report.facts.get("exports", {})  # keys of onnx_export.HEAD_KEY/FOLDED, not imported: torch
    heads = {r.label: exports.get(r.file, {}).get("decode_head") for r in report.rows if r.runtime == "onnx"}
    if "folded" not in heads.values():
        return ""
    unfolded = [label for label, head in heads.items() if head != "folded"]
    return (" The ONNX files hold the decode head folded into per-stage 1×1 maps, as `hf-segformer export-onnx` "
            "writes them (the same logits up to float rounding, faster)"
            + (f"; {', '.join(unfolded)}: the graph as saved (`--fold_head false`), for comparison." if unfolded
               else "."))


def render_markdown(report: DeployReport) -> str:
    """deploy_report.md: how it was measured, the table, and the machine."""
    f = report.facts
    machine = f["machine"]
    features = ", ".join(k for k, v in machine["int8_features"].items() if v) or "none known"
    size = "×".join(map(str, f["input_size"]))
    pairs = f"The {f['split']} split" if f.get("split") else "The evaluation pairs"
    return "\n".join([
        f"# Deploy report: {f['model']}", "",
        f"{pairs}: {f['images']} images, each mask at its native size; {f['mode']} "
        f"inference at {size}. ms/image: one image at {size} (normalisation + forward), median of {f['repeats']} "
        f"rounds in which every row ran once in turn, {f['threads']} thread(s); speed-ups are medians of per-round "
        "ratios. Peak memory: peak resident memory of a fresh process that loads the row and evaluates the split "
        f"(Python, torch and the data included). Pixels as fp32: share of the pixels of the first "
        f"{f['agreement_images']} images predicted as PyTorch fp32 predicts them."
        + (f" Token merging runs in {f['token_merging_precision']}, the faster PyTorch precision here."
           if any(r.token_merging for r in report.rows) else "")
        + (f" INT8 static calibrated on {f['calibration_images']} images"
           f"{' of the ' + f['calibration_split'] + ' split' if f.get('calibration_split') else ''}."
           if any(r.key.startswith("onnx-int8-static") for r in report.rows) else "")
        + head_note(report),
        "", markdown_table(report), "",
        (f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs; {features}), torch {machine['torch']}, "
         f"onnxruntime {machine['onnxruntime']}; {f['date']}."), ""])


def model_card_section(report_json: dict[str, Any]) -> str:
    """A '## Deployment' section for the model card, from deploy_report.json (no local paths in it)."""
    report = DeployReport.from_json(report_json)
    f = report.facts
    size = "×".join(map(str, f["input_size"]))
    return "\n".join([
        "## Deployment", "",
        (f"Measured with `hf-segformer deploy-report` on the {f.get('split', 'validation')} split ({f['images']} "
         f"images) at {size}, {f['threads']} CPU thread(s) on {f['machine']['cpu']}:"), "",
        markdown_table(report), "",
        "Run an ONNX file with `hf-segformer predict --model <this repo> --onnx <file>`." + head_note(report), ""])
