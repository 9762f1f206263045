"""Peak memory of a training step with each loss, against SegFormer's built-in loss, at 150 classes.

SegFormer-B0 built from config with 150 classes (ADE20K), batch 2 of 512×512, one forward + loss + backward
on the CPU. The largest tensor of the step is the loss input: logits [2, 150, 128, 128] upsampled to
[2, 150, 512, 512] (315 MB in float32). Each case runs in a fresh process; the figure is the step's peak
(VmHWM during the step minus the RSS before it, so imports and weights are left out), side by side with the
built-in loss `model(pixel_values, labels=labels).loss` measured the same way, as a ratio.

    python benchmarks/bench_loss_memory.py                      # fp32 and bf16 autocast, every loss
    python benchmarks/bench_loss_memory.py --precision fp32 --cases builtin ce
"""

from __future__ import annotations

import argparse
import statistics
import sys

from workers import emit, memory_gb, run_worker

NUM_CLASSES, SIZE, BATCH = 150, 512, 2
CASES = {
    "builtin": None,
    "ce": {"terms": {"ce": 1.0}},
    "weighted_ce": {"terms": {"ce": 1.0}, "class_weights": "random"},
    "focal": {"terms": {"focal": 1.0}},
    "dice": {"terms": {"dice": 1.0}},
    "ohem": {"terms": {"ohem": 1.0}, "ohem_min_kept": 100_000},
    "ce+dice": {"terms": {"ce": 1.0, "dice": 0.5}},
    "ce@logits": {"terms": {"ce": 1.0}, "resolution": "logits"},
}




def worker(case: str, precision: str) -> dict:
    import torch
    from transformers import SegformerForSemanticSegmentation

    from hf_segformer.modeling.build import variant_config
    from hf_segformer.training.losses import SegmentationLoss

    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(variant_config("b0", num_labels=NUM_CLASSES)).train()
    pixel_values = torch.randn(BATCH, 3, SIZE, SIZE)
    labels = torch.randint(0, NUM_CLASSES, (BATCH, SIZE, SIZE))
    labels[:, :32] = 255
    spec = CASES[case]
    loss_fn = None
    if spec is not None:
        weights = torch.rand(NUM_CLASSES) + 0.5 if spec.get("class_weights") else None
        loss_fn = SegmentationLoss(spec["terms"], class_weights=weights, ignore_index=255,
                                   resolution=spec.get("resolution", "labels"),
                                   ohem_min_kept=spec.get("ohem_min_kept", 100_000))
    before = memory_gb("VmRSS")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if loss_fn is None:
            loss = model(pixel_values=pixel_values, labels=labels).loss
        else:
            loss = loss_fn(model(pixel_values=pixel_values).logits, labels)
    loss.backward()
    return {"step_peak_gb": memory_gb("VmHWM") - before, "loss": float(loss)}


def measure(case: str, precision: str) -> dict:
    return run_worker([sys.executable, __file__, "--worker", case, "--precision", precision], 2, f"{case} {precision}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--precision", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case; the median is shown")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.worker:
        emit(worker(cli.worker, cli.precision[0]))
        return

    print(f"SegFormer-B0, {NUM_CLASSES} classes, batch {BATCH} × {SIZE}², one training step on the CPU; "
          f"step peak = VmHWM - RSS before the step, median of {cli.repeats} processes\n")
    print("| loss | precision | step peak GB | vs built-in |")
    print("|---|---|---|---|")
    for precision in cli.precision:
        builtin = None
        for case in ["builtin"] + [c for c in cli.cases if c != "builtin"]:
            runs = [measure(case, precision) for _ in range(cli.repeats)]
            peaks = [r["step_peak_gb"] for r in runs if "step_peak_gb" in r]
            if not peaks:
                print(f"| {case} | {precision} | failed: {runs[0].get('error')} | |")
                continue
            peak = statistics.median(peaks)
            builtin = peak if case == "builtin" else builtin
            ratio = f"{peak / builtin:.2f}×" if builtin else "n/a"
            print(f"| {case} | {precision} | {peak:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
