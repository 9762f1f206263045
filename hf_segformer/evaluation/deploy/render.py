"""The deploy report as text: its table, deploy_report.md, and the model card's "Deployment" section.

Reads only the report's data (rows.py), so that the model card renders a saved deploy_report.json without torch.
"""

from __future__ import annotations

from typing import Any

from hf_segformer.evaluation.deploy.recommend import how_to_run
from hf_segformer.evaluation.deploy.rows import DEFAULT_COLLAPSE_POINTS, ROWS, DeployReport


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
    heads = {r.label: exports.get(r.file, {}).get("decode_head") for r in report.rows if r.runtime != "pytorch"}
    if "folded" not in heads.values():
        return ""
    unfolded = [label for label, head in heads.items() if head != "folded"]
    return (" The exported files hold the decode head folded into per-stage 1×1 maps, as `hf-segformer export-onnx` "
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
           if any(r.key in ROWS and ROWS[r.key].needs_calibration for r in report.rows) else "")
        + head_note(report),
        "", markdown_table(report), "", recommendation_text(report), "",
        (f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs; {features}"
         f"{', native bf16' if machine.get('native_bf16') else ''}), torch {machine['torch']}, "
         f"onnxruntime {machine['onnxruntime']}, openvino {machine.get('openvino')}; {f['date']}."), ""])


def _file_note(recommendation: dict[str, Any]) -> str:
    """What the recommended file is, for a reader who downloads it."""
    file, runtime = recommendation["file"], recommendation["runtime"]
    if runtime == "pytorch":
        return f"`{file}`, the model's own weights"
    if runtime == "openvino":
        return (f"`{file}` with `{file[:-len('.xml')]}.bin`, an OpenVINO model (pip install 'hf-segformer[openvino]')")
    return f"`{file}`, an ONNX model run by ONNX Runtime (pip install 'hf-segformer[onnx]')"


def recommendation_text(report: DeployReport, model: str = "MODEL") -> str:
    """The recommended row on this machine, its file and command, and why each other row was not chosen."""
    choice = report.recommendation
    if choice is None:
        return "**Recommended here:** none: no row was measured within the accuracy budget."
    agreement = ("" if choice.get("pixel_agreement") is None
                 else f", {100 * choice['pixel_agreement']:.2f} % of pixels as PyTorch fp32")
    speed = choice.get("speedup_vs_pytorch_fp32")
    lines = [(f"**Recommended here: {choice['label']}** — the fastest row within {choice['accuracy_budget_points']:g} "
              f"mIoU points of PyTorch fp32: {choice['ms_per_image']:.1f} ms/image"
              f"{'' if speed is None else f' ({speed:.2f}× PyTorch fp32)'}, {choice['miou_change_points']:+.2f} "
              f"mIoU points{agreement}. File: {_file_note(choice)}. Run it with "
              f"`{how_to_run(choice, model)}`."), "", "Not chosen on this machine:"]
    lines += [f"- {entry['label']}: {entry['why']}" for entry in choice["not_chosen"]]
    return "\n".join(lines)


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
        recommendation_text(report, "<this repo>"), "",
        ("Run an exported file with `hf-segformer predict --model <this repo> --onnx <file>` (an ONNX file, or an "
         "OpenVINO .xml beside its .bin)." + head_note(report)), ""])
