"""The offline quickstart, timed end to end: wall-clock time and validation mIoU against the targets.

Runs `accelerate launch recipes/finetune.py` (the embedded quickstart recipe: synthetic data generation,
pre-flight check, SegFormer-B0 from config, training, evaluation, saving) in a fresh temporary folder,
`--repeats` times, and prints each run and the medians next to the targets (< 5 min, mIoU ≥ 0.70).

    python benchmarks/bench_quickstart.py [--repeats 3] [-- extra recipe overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS, TARGET_MIOU = 300.0, 0.70


def run_once(extra: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                   str(ROOT / "accelerate_configs/cpu.yaml"), str(ROOT / "recipes/finetune.py"),
                   "--output_dir", f"{tmp}/run", "--data_dir", f"{tmp}/data", "--report_to", "none", *extra]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=tmp, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        miou = json.loads(Path(f"{tmp}/run/eval_results.json").read_text())["eval_mean_iou"]
    return seconds, miou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    runs = []
    print("| run | wall time (s) | val mIoU |\n|---:|---:|---:|")
    for i in range(args.repeats):
        seconds, miou = run_once(extra)
        runs.append((seconds, miou))
        print(f"| {i + 1} | {seconds:.0f} | {miou:.4f} |", flush=True)
    seconds = statistics.median(r[0] for r in runs)
    miou = statistics.median(r[1] for r in runs)
    print(f"\nmedian: {seconds:.0f} s (target < {TARGET_SECONDS:.0f} s, {seconds / TARGET_SECONDS:.2f}× of budget), "
          f"mIoU {miou:.4f} (target ≥ {TARGET_MIOU:.2f})")


if __name__ == "__main__":
    main()
