"""The training step of the model alone, interleaved A/B in one process: the stock decode head against the reordered
one (`fuse_decode_head`, the default), its upsampling in contiguous layout (before) against channels-last (now), and
the whole model channels_last (`channels_last: true`).

SegFormer-B0 from config, random inputs, forward + cross-entropy at label resolution + backward + AdamW, in
float32 (or --bf16), with freed memory kept for reuse as a run does (`--system_malloc`: not). The cases take turns
step by step, so a machine whose load drifts slows them alike; the first round is a warm-up; the figure is each
case's median step time and its ratio to the stock head.

    python benchmarks/bench_train_step.py                              # batch 2 × 512², 4 rounds
    python benchmarks/bench_train_step.py --batch 8 --size 256 --rounds 8   # the from-scratch recipes' step
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import SegformerForSemanticSegmentation

from hf_segformer.modeling import head_folding
from hf_segformer.modeling.build import variant_config
from hf_segformer.modeling.head_folding import fuse_decode_head_for_training
from hf_segformer.runtime import keep_freed_memory

CASES = ("stock", "reordered-contiguous-upsampling", "reordered", "reordered-model-channels-last")


def contiguous_upsampled(mapped: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The reordered head's upsampling before it went channels-last (the baseline of that change)."""
    if mapped.shape[2:] == size:
        return mapped
    return F.interpolate(mapped, size=size, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def upsampling(function) -> Iterator[None]:
    default = head_folding.upsampled
    head_folding.upsampled = function
    try:
        yield
    finally:
        head_folding.upsampled = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--system_malloc", action="store_true", help="leave glibc's allocator as it is")
    cli = parser.parse_args()
    allocator = "system allocator" if cli.system_malloc else keep_freed_memory().value
    torch.manual_seed(0)
    base = SegformerForSemanticSegmentation(variant_config(cli.variant, num_labels=6)).train()
    pixels = torch.randn(cli.batch, 3, cli.size, cli.size)
    labels = torch.randint(0, 6, (cli.batch, cli.size, cli.size))
    cases = {}
    for name in CASES:
        model = copy.deepcopy(base)
        if name.startswith("reordered"):
            fuse_decode_head_for_training(model)
        inputs = pixels
        if name == "reordered-model-channels-last":
            model = model.to(memory_format=torch.channels_last)
            inputs = pixels.contiguous(memory_format=torch.channels_last)
        layout = contiguous_upsampled if name == "reordered-contiguous-upsampling" else head_folding.upsampled
        cases[name] = (model, torch.optim.AdamW(model.parameters(), 1e-4), inputs, layout)

    def step(model, optimizer, inputs, layout) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cli.bf16), upsampling(layout):
            logits = model(pixel_values=inputs).logits
        loss = F.cross_entropy(F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear"), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(cli.rounds + 1):
        for name, case in cases.items():
            seconds = step(*case)
            if round_index:
                times[name].append(seconds)
    stock = statistics.median(times["stock"])
    print(f"\nSegFormer-{cli.variant.upper()} training step, batch {cli.batch} × {cli.size}², "
          f"{'bf16 autocast' if cli.bf16 else 'fp32'}, {torch.get_num_threads()} torch threads, freed memory "
          f"{allocator}, median of {cli.rounds} interleaved rounds\n")
    print("| case | s/step | vs stock head |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {stock / median:.2f}× |")


if __name__ == "__main__":
    main()
