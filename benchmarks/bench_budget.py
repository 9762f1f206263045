r"""From-scratch settings compared at one wall-clock budget (`max_time`) on a shared set, side by side.

Every case trains SegFormer-B0 from random init with a recipe (default `recipes/aerial/segformer-b0.yaml`) for
the same `max_time`, changed only by the case's overrides; the budget fixes each run's steps from its own
measured step time, so a setting that slows a step pays for it in steps. Cases compose with `+`
(`crop384+lr1.2e-3`). `--parallel N` runs N cases at once (each with `--threads` torch threads) so that they
share the machine's load alike; the steps each run got are in the table. After training, each model is also
evaluated on `--test_split` (the split no setting was chosen on), at native resolution.

    python benchmarks/bench_budget.py --max_time 20m --cases crop256 crop384 --parallel 2 --threads 1 --workers 0
    python benchmarks/bench_budget.py --max_time 90s --cases recipe ema          # smoke test
    python benchmarks/bench_budget.py --recipe recipes/custom/segformer-b0-scratch.yaml \
        --data_dir ../shared/datasets/isbi_membrane \
        --recipe_args "--id2label '{\"0\": \"membrane\", \"1\": \"cell\"}'" --max_time 10m ...
    python benchmarks/bench_budget.py --table --output_dir outputs/bench-budget   # the table of every run so far

Rows append to `<output_dir>/runs.jsonl`; `--table` prints the table from it without training.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, list[str]] = {
    "recipe": [],
    "crop256": ["--crop_size", "256"], "crop384": ["--crop_size", "384"], "crop512": ["--crop_size", "512"],
    "batch4": ["--per_device_train_batch_size", "4"], "batch16": ["--per_device_train_batch_size", "16"],
    "lr3e-4": ["--learning_rate", "3e-4"], "lr6e-4": ["--learning_rate", "6e-4"],
    "lr1.2e-3": ["--learning_rate", "1.2e-3"], "lr2e-3": ["--learning_rate", "2e-3"],
    "lr2.4e-3": ["--learning_rate", "2.4e-3"],
    "nodrop": ["--drop_path_rate", "0", "--classifier_dropout_prob", "0"],
    "ratio0.75": ["--ratio_range", "0.75", "1.5"],
    "nophoto": ["--photometric_distortion", "false"],
    "scale256": ["--train_scale", "512", "256", "--eval_scale", "512", "256"],
    "scale384": ["--train_scale", "768", "384", "--eval_scale", "768", "384"],
    "scale1x": ["--train_scale", "2048", "512"], "drop": ["--drop_path_rate", "0.1", "--classifier_dropout_prob", "0.1"],
    "warmup0": ["--warmup_steps", "0"], "warmup0.1": ["--warmup_steps", "0.1"],
    "head10": ["--head_lr_multiplier", "10"],
    "noweights": ["--class_weights", "null"], "effective": ["--class_weights", "effective_number"],
    "clip5": ["--class_weight_clip", "5"], "clip20": ["--class_weight_clip", "20"],
    "dice": ["--loss", "{ce: 1.0, dice: 0.5}"], "ohem": ["--loss", "{ohem: 1.0}", "--ohem_min_kept", "16384"],
    "rcs": ["--rare_class_sampling", "true", "--rare_class_temperature", "0.1"],
    "rcs0.01": ["--rare_class_sampling", "true", "--rare_class_temperature", "0.01"],
    "rcrop": ["--rare_class_crop_prob", "0.5"], "norcrop": ["--rare_class_crop_prob", "0"],
    "norcs": ["--rare_class_sampling", "false"],
    "ema": ["--ema_decay", "0.999"], "noema": ["--ema_decay", "null"],
    "tome-hq": ["--token_merging", "hq"], "tome-fast": ["--token_merging", "fast"],
}


def overrides(case: str) -> list[str]:
    args: list[str] = []
    for part in case.split("+"):
        if part not in CASES:
            sys.exit(f"Unknown case part {part!r}; known: {', '.join(CASES)}")
        args += CASES[part]
    return args


def start_case(case: str, seed: int, cli: argparse.Namespace) -> tuple[subprocess.Popen, Path]:
    output_dir = Path(cli.output_dir) / f"{case}-seed{seed}-{cli.max_time}"
    command = [sys.executable, str(ROOT / "recipes/finetune.py"), "--config", str(cli.recipe),
               "--data_dir", str(cli.data_dir), "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
               "--max_time", cli.max_time, "--seed", str(seed), "--report_to", "none", "--push_to_hub", "false",
               *(["--dataloader_num_workers", str(cli.workers)] if cli.workers is not None else []),
               *shlex.split(cli.recipe_args), *overrides(case)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cli.threads), "HF_HUB_OFFLINE": "1"}
    log = open(f"{output_dir}.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), output_dir


def held_out_results(output_dir: Path, split: str) -> dict:
    path = output_dir / f"eval-{split}" / f"{split}_results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate_test(output_dir: Path, cli: argparse.Namespace) -> dict:
    """The trained model on the held-back split (nothing was chosen on it)."""
    command = [sys.executable, "-m", "hf_segformer.cli", "evaluate", "--config", str(cli.recipe),
               "--data_dir", str(cli.data_dir), "--model", str(output_dir), "--eval_split", cli.test_split,
               "--eval_output_dir", str(output_dir / f"eval-{cli.test_split}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(f"{output_dir}.log", "a") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return held_out_results(output_dir, cli.test_split) if code == 0 else {}


def row_of(case: str, seed: int, output_dir: Path, code: int, cli: argparse.Namespace) -> dict:
    row = {"case": case, "seed": seed, "output_dir": str(output_dir), "max_time": cli.max_time, "threads": cli.threads,
           "workers": cli.workers,
           "parallel": cli.parallel, "recipe": str(cli.recipe), "data_dir": str(cli.data_dir)}
    if code != 0 or not (output_dir / "all_results.json").is_file():
        return {**row, "error": f"exit {code} (see {output_dir}.log)"}
    results = json.loads((output_dir / "all_results.json").read_text())
    return {**row, **results, **evaluate_test(output_dir, cli)}


def print_table(rows: list[dict], test_split: str) -> None:
    print(f"\n| case | seed | budget | threads × at once | steps | val mIoU | val min class IoU | "
          f"{test_split} mIoU | {test_split} min class IoU | rarest class IoU (val) |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['seed']} | {r['max_time']} | | | {r['error']} |||||")
            continue
        val = {k[len("eval_iou_"):]: v for k, v in r.items() if k.startswith("eval_iou_")}
        test = [v for k, v in r.items() if k.startswith(f"{test_split}_iou_")]
        rare = r.get("eval_iou_unlabeled", min(val.values()) if val else float("nan"))

        def cell(x):
            return "—" if x is None else f"{x:.3f}"

        print(f"| {r['case']} | {r['seed']} | {r['max_time']} | {r['threads']} × {r['parallel']} | "
              f"{r.get('budget_steps')} | {cell(r.get('eval_mean_iou'))} | "
              f"{cell(min(val.values()) if val else None)} | "
              f"{cell(r.get(f'{test_split}_mean_iou'))} | {cell(min(test) if test else None)} | {cell(rare)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/aerial/segformer-b0.yaml")
    parser.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared/datasets/dubai_aerial")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs/bench-budget")
    parser.add_argument("--max_time", default="25m")
    parser.add_argument("--cases", nargs="*", default=["recipe"], help=f"parts joined by '+', from {list(CASES)}")
    parser.add_argument("--seeds", type=int, nargs="*", default=[42])
    parser.add_argument("--parallel", type=int, default=1, help="cases trained at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument("--workers", type=int, help="loader workers per case (default: the recipe's); 0 keeps "
                        "parallel cases from competing for cores through their loaders")
    parser.add_argument("--recipe_args", default="", help="recipe fields for every case, as on the command line "
                        "(JSON for mappings), e.g. --id2label '{\"0\": \"membrane\", \"1\": \"cell\"}'")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--table", action="store_true", help="print the table of runs.jsonl and stop")
    cli = parser.parse_args()
    runs = cli.output_dir / "runs.jsonl"
    if cli.table:  # held-out results evaluated after the run (hf-segformer evaluate) are picked up too
        rows = [json.loads(line) for line in runs.read_text().splitlines() if line.strip()]
        for row in rows:
            folder = Path(row.get("output_dir")
                          or cli.output_dir / f"{row['case']}-seed{row['seed']}-{row['max_time']}")
            row.update(held_out_results(folder, cli.test_split))
        print_table(rows, cli.test_split)
        return
    if not (cli.data_dir / "images").is_dir():
        sys.exit(f"{cli.data_dir} has no images/: pass --data_dir (the shared sets sit in ../shared/datasets).")
    cli.output_dir.mkdir(parents=True, exist_ok=True)

    queue = [(case, seed) for seed in cli.seeds for case in cli.cases]
    for case, _ in queue:
        overrides(case)  # unknown names fail before any training
    rows = []
    while queue:
        group, queue = queue[:cli.parallel], queue[cli.parallel:]
        started = time.time()
        running = [(case, seed, *start_case(case, seed, cli)) for case, seed in group]
        for case, seed, process, output_dir in running:
            row = row_of(case, seed, output_dir, process.wait(), cli)
            rows.append(row)
            with runs.open("a") as out:
                out.write(json.dumps(row) + "\n")
        print(f"group {[c for c, _ in group]} done in {time.time() - started:.0f} s", flush=True)
    print(f"\nB0 random init, {cli.recipe.name} on {cli.data_dir.name}, max_time {cli.max_time} per case "
          f"({cli.parallel} at once, {cli.threads} torch thread(s) each)")
    print_table(rows, cli.test_split)


if __name__ == "__main__":
    main()
