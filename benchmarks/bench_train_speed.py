"""Training speed, side by side in one run: the plain HF Trainer against this project launched the README's way.

Real images (`../shared/datasets/dubai_aerial` train split), 512² crops, batch 8, SegFormer-B0 from config.
Each case trains twice, `--short` and `--long` steps, each in a fresh process; the difference of the Trainer's
`train_runtime` over the difference of steps is the steady-state time per step (start-up, the data check and
the first slow steps cancel out). Peak memory = the case's largest process (VmHWM, through RUSAGE_CHILDREN of a
wrapper process); on a GPU the peak allocated GPU memory the run reports.

Cases (`--cases`):
  plain-fp32, plain-bf16   transformers' example minus albumentations (benchmarks/plain_trainer.py), all cores
  readme                   `accelerate launch recipes/finetune.py --config recipes/aerial/segformer-b0.yaml`:
                           no Accelerate config, precision, threads and workers as the run chooses them (the
                           recipe at 512² crops, without its time budget, rare-class sampling or EMA: PINNED)
  readme-fp32, readme-bf16 the same with --precision fp32 / bf16 (equal precision with the plain rows)
  stock-head               readme-fp32 with --fuse_decode_head false (what the reordered head buys)
  system-malloc            readme with --reuse_freed_memory false (what keeping freed memory buys on a CPU)
  channels-last            readme with --channels_last true
  compile                  readme with --torch_compile true (a first, discarded run fills the compile cache)
  tome-hq, tome-fast       readme with training-time token merging (SegFormer++ presets)
  workers0, workers1       readme with 0 / 1 loader worker processes (what `dataloader_num_workers: auto` picks)

bf16 rows are skipped on a CPU without native bf16 (emulated bf16 is several times slower than fp32 there).

    python benchmarks/bench_train_speed.py                       # plain-fp32, plain-bf16, readme, readme-bf16
    python benchmarks/bench_train_speed.py --cases plain-fp32 readme stock-head --short 2 --long 4
    python benchmarks/bench_train_speed.py --device cuda --variant b2 --cases plain-bf16 readme channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from workers import RECIPE_FIXED_WORK, RESULT_PREFIX, fmt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hf_segformer.runtime import cpu_has_native_bf16

ACCELERATE = Path(sys.executable).with_name("accelerate")
OURS = {"readme": [], "readme-fp32": ["--precision", "fp32"], "readme-bf16": ["--precision", "bf16"],
        "stock-head": ["--precision", "fp32", "--fuse_decode_head", "false"],
        "system-malloc": ["--reuse_freed_memory", "false"],
        "channels-last": ["--channels_last", "true"], "compile": ["--torch_compile", "true"],
        "tome-hq": ["--token_merging", "hq"],
        "tome-fast": ["--token_merging", "fast"],
        "workers0": ["--dataloader_num_workers", "0"], "workers1": ["--dataloader_num_workers", "1"]}
PINNED = [*RECIPE_FIXED_WORK, "--train_scale", "1024", "512"]  # and --crop_size, as the plain Trainer's
PLAIN = {"plain-fp32": [], "plain-bf16": ["--bf16"], "plain-fp16": ["--fp16"]}
WRAPPER = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9); sys.exit(r.returncode)")


def run_case(name: str, steps: int, cli: argparse.Namespace, workdir: Path) -> dict:
    """One training run of `steps` steps: train_runtime, threads, precision, peak memory."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("ACCELERATE_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if name in PLAIN:
        command = [sys.executable, str(ROOT / "benchmarks/plain_trainer.py"), "--data_dir", str(cli.data_dir),
                   "--variant", cli.variant, "--max_steps", str(steps), "--device", cli.device,
                   "--crop", str(cli.crop_size), *PLAIN[name]]
    else:
        output_dir = workdir / f"{name}-{steps}"
        command = [str(ACCELERATE), "launch", str(ROOT / "recipes/finetune.py"), "--config",
                   str(ROOT / "recipes/aerial/segformer-b0.yaml"), "--data_dir", str(cli.data_dir),
                   "--model_variant", cli.variant, "--max_steps", str(steps), "--eval_strategy", "no",
                   "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
                   "--output_dir", str(output_dir), "--overwrite_output_dir", "true", "--logging_steps", "1000",
                   *PINNED, "--crop_size", str(cli.crop_size), *OURS[name]]
    result = subprocess.run([sys.executable, "-c", WRAPPER, *command], env=env, capture_output=True, text=True,
                            cwd=workdir)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{name} ({steps} steps) failed:\n{log[-4000:]}")
    peak = float(re.findall(r"^PEAK (\S+)", result.stdout, flags=re.M)[-1])
    if name in PLAIN:
        line = [l for l in result.stdout.splitlines() if l.startswith(RESULT_PREFIX)][-1]
        out = json.loads(line[len(RESULT_PREFIX):])
        return {**out, "peak_rss_gb": peak}
    runtime = json.loads((output_dir / "train_results.json").read_text())
    match = re.search(r"torch threads: (\d+) .*?loader workers: (\d+) .*?precision: (\w+)", log)
    return {"train_runtime": runtime["train_runtime"], "threads": int(match.group(1)) if match else None,
            "workers": int(match.group(2)) if match else None, "precision": match.group(3) if match else None,
            "peak_rss_gb": peak,
            "peak_gpu_gb": runtime.get("train_peak_gpu_memory_gb")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=["plain-fp32", "plain-bf16", "readme", "readme-bf16"],
                        choices=[*PLAIN, *OURS])
    parser.add_argument("--short", type=int, default=2)
    parser.add_argument("--long", type=int, default=5)
    parser.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared/datasets/dubai_aerial")
    parser.add_argument("--variant", default="b0", choices=["b0", "b2"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--crop_size", type=int, default=512, help="training crop side of every case, the plain "
                        "Trainer's included (the issue's 512² by default)")
    cli = parser.parse_args()
    if not (cli.data_dir / "images" / "train").is_dir():
        sys.exit(f"No images/train under {cli.data_dir}: pass --data_dir (the shared aerial set).")
    native_bf16 = cli.device == "cuda" or cpu_has_native_bf16()

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in cli.cases:
            if ("bf16" in name) and not native_bf16:
                print(f"{name}: skipped (this CPU has no native bf16; emulated bf16 is several times slower)")
                continue
            if name == "compile":  # fill inductor's on-disk cache first: the short and long runs then compile alike
                run_case(name, cli.short, cli, Path(tmp))
            short, long = (run_case(name, steps, cli, Path(tmp)) for steps in (cli.short, cli.long))
            seconds = (long["train_runtime"] - short["train_runtime"]) / (cli.long - cli.short)
            rows[name] = {**long, "s_per_step": seconds}
            print(f"{name}: {seconds:.2f} s/step ({long['threads']} threads, {long['precision']})", flush=True)

    print(f"\nSegFormer-{cli.variant.upper()}, {cli.data_dir.name} train, {cli.crop_size}² crops, batch 8, "
          f"{cli.device}, "
          f"{os.cpu_count()} CPU cores; steady state over steps {cli.short}–{cli.long}\n")
    print("| case | precision | torch threads | loader workers | s/step | images/s | peak memory GB | vs plain fp32 "
          "| vs plain, same precision |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        base = rows.get("plain-fp32")
        same = rows.get(f"plain-{row['precision']}")
        memory = row["peak_gpu_gb"] if cli.device == "cuda" else row["peak_rss_gb"]
        print(f"| {name} | {row['precision']} | {row['threads']} | {row.get('workers')} | {row['s_per_step']:.2f} | "
              f"{8 / row['s_per_step']:.2f} | {fmt(memory, '.2f')} | "
              f"{ratio(base, row)} | {ratio(same, row)} |")


def ratio(baseline: dict | None, row: dict) -> str:
    return "—" if baseline is None else f"{baseline['s_per_step'] / row['s_per_step']:.2f}×"


if __name__ == "__main__":
    main()
