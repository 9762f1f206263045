r"""Thin structures at equal wall-clock budget: the fixed scale, the scale chosen from the data, and losses that favour
thin structures, side by side with per-class IoU, on the shared sets and on pavement cracks (CrackForest: thin
structures in small photographs, converted once by benchmarks/prepare_crackforest.py into a folder of its own).

Every arm trains `recipes/custom/segformer-b0-scratch.yaml` (SegFormer-B0 from random init) for the same
`max_time`, one arm at a time on the whole machine, changed only by the arm's overrides:
  fixed           the fixed scale the recipe had before it chose one from the data (crop 256, train_scale
                  [1536, 384], eval_scale [2048, 512]); in-loop evaluations bounded by cost, as the recipe's
  fixed+dice      `fixed` with a Dice term on top of cross-entropy ({ce: 1.0, dice: 0.5})
  fixed+ohem      `fixed` with OHEM cross-entropy ({ohem: 1.0}, min kept 16384: a quarter of a 256² crop)
  fixed+boundary  `fixed` with boundary-weighted cross-entropy added ({ce: 1.0, boundary: 1.0})
  today           `fixed` with every in-loop evaluation on the whole validation split
  data            crop, train_scale and eval_scale chosen by the data check (`auto`)
  data+dice       `data` with {ce: 1.0, dice: 0.5}
  data+ohem       `data` with {ohem: 1.0}, min kept 16384
  recipe          the recipe as it is, no overrides (it takes `auto` for the scale)
The tables give each arm's IoU deltas against a baseline arm: --baseline, else `fixed` where a set has that arm's
run, else `today`. After training, each model is evaluated on the test split where the set has one (no setting was
chosen on it). `--extra` adds recipe fields to every arm (use another --output_dir per variant).

    python benchmarks/bench_thin.py --max_time 2m30s --arms fixed fixed+dice fixed+ohem fixed+boundary
    python benchmarks/bench_thin.py --max_time 2m30s --arms data --sets isbi_membrane dubai_aerial --seed 43
    python benchmarks/bench_thin.py --max_time 2m30s --arms fixed --sets crackforest --output_dir outputs/thin-512 \
        --extra "--train_scale 2048 512 --eval_scale 2816 704"
    python benchmarks/bench_thin.py --table                                         # the table of runs so far

Rows append to `<output_dir>/runs.jsonl`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_budget import evaluate_test  # the held-out evaluation, as the budget benchmark runs it

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/custom/segformer-b0-scratch.yaml"
SETS = {  # the recipe fields each shared set needs (the scratch recipe names no classes)
    "isbi_membrane": ["--id2label", '{"0": "membrane", "1": "cell"}'],
    "dubai_aerial": ["--id2label", ('{"0": "building", "1": "land", "2": "road", "3": "vegetation", "4": "water", '
                                    '"5": "unlabeled"}')],
    "crackforest": ["--id2label", '{"0": "background", "1": "crack"}'],  # masks: 255 where the source is unclear
}
OWN_FOLDER = {"crackforest": "crackforest"}  # sets outside the shared folder: their option (--crackforest) names it
AUTO_SCALE = ["--crop_size", "auto", "--train_scale", "auto", "--eval_scale", "auto"]
FIXED_SCALE = ["--crop_size", "256", "--train_scale", "1536", "384", "--eval_scale", "2048", "512"]
ARMS: dict[str, list[str]] = {
    "fixed": FIXED_SCALE,
    "fixed+dice": [*FIXED_SCALE, "--loss", "{ce: 1.0, dice: 0.5}"],
    "fixed+ohem": [*FIXED_SCALE, "--loss", "{ohem: 1.0}", "--ohem_min_kept", "16384"],
    "fixed+boundary": [*FIXED_SCALE, "--loss", "{ce: 1.0, boundary: 1.0}"],
    "today": [*FIXED_SCALE, "--eval_subset_size", "0"],
    "data": AUTO_SCALE,
    "data+dice": [*AUTO_SCALE, "--loss", "{ce: 1.0, dice: 0.5}"],
    "data+ohem": [*AUTO_SCALE, "--loss", "{ohem: 1.0}", "--ohem_min_kept", "16384"],
    "recipe": [],
}
BASELINES = ("fixed", "today")  # the default baseline: the first of these a set has a run of


def train_arm(arm: str, data_set: str, cli: argparse.Namespace) -> dict:
    """One arm on one set: train, then the held-out evaluation; the run's results (or its error)."""
    data_dir = set_folder(data_set, cli)
    output_dir = cli.output_dir / f"{data_set}-{arm}-seed{cli.seed}-{cli.max_time}"
    command = [sys.executable, str(ROOT / "recipes/finetune.py"), "--config", str(RECIPE), "--data_dir",
               str(data_dir), "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
               "--max_time", cli.max_time, "--seed", str(cli.seed), "--report_to", "none", "--push_to_hub", "false",
               *SETS[data_set], *shlex.split(cli.extra), *ARMS[arm]]
    started = time.time()
    with open(f"{output_dir}.log", "w") as log:
        code = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
    row = {"set": data_set, "arm": arm, "seed": cli.seed, "max_time": cli.max_time, "output_dir": str(output_dir),
           "wall_s": round(time.time() - started)}
    results_file = output_dir / "all_results.json"
    if code != 0 or not results_file.is_file():
        return {**row, "error": f"exit {code} (see {output_dir}.log)"}
    histogram = json.loads((output_dir / "class_histogram.json").read_text())
    row["scale_choice"] = histogram.get("scale_choice", "")
    has_test = (data_dir / "images" / cli.test_split).is_dir()
    held_out = evaluate_test(output_dir, argparse.Namespace(recipe=RECIPE, data_dir=data_dir,
                                                           test_split=cli.test_split)) if has_test else {}
    return {**row, **json.loads(results_file.read_text()), **held_out}


def set_folder(data_set: str, cli: argparse.Namespace) -> Path:
    """Where a set is: the shared sets under --datasets, the others at their own option's path."""
    return getattr(cli, OWN_FOLDER[data_set]) if data_set in OWN_FOLDER else cli.datasets / data_set


def print_tables(rows: list[dict], test_split: str, baseline: str | None = None) -> None:
    """Per set: one column per arm and seed (the baseline first), per-class IoU on validation (and test) with deltas
    against the baseline arm's run of the same seed (`baseline`, else the first of BASELINES the set has), mIoU,
    steps."""
    for data_set in dict.fromkeys(r["set"] for r in rows):
        runs = [r for r in rows if r["set"] == data_set]
        arms = {r["arm"] for r in runs}
        chosen = baseline or next((arm for arm in BASELINES if arm in arms), None)
        runs.sort(key=lambda r: (r["arm"] != chosen, list(ARMS).index(r["arm"]) if r["arm"] in ARMS else 99,
                                 r["seed"]))
        print(f"\n{data_set}: " + ", ".join(f"{r['arm']} ({r['max_time']}, seed {r['seed']})" for r in runs))
        bases = {r["seed"]: r for r in runs if r["arm"] == chosen}
        print(f"IoU deltas against {chosen} of the same seed" if bases else
              f"no IoU deltas: no {chosen} run in this set")
        print("| | " + " | ".join(f"{r['arm']} s{r['seed']}" for r in runs) + " |")
        print("|---|" + "---:|" * len(runs))
        keys = ["budget_steps", "budget_evaluations", "budget_evaluation_s", "budget_eval_images"]
        for prefix in ("eval", test_split):
            classes = dict.fromkeys(k for r in runs for k in r if k.startswith(f"{prefix}_iou_"))
            keys += [f"{prefix}_mean_iou", *classes]
        for key in keys:
            cells = []
            for r in runs:
                value = r.get(key)
                if "error" in r:
                    cells.append(r["error"] if key == keys[0] else "")
                elif value is None:
                    cells.append("—")
                elif isinstance(value, float) and "iou" in key:
                    base = bases.get(r["seed"])
                    delta = "" if base is None or r is base or base.get(key) is None else \
                        f" ({value - base[key]:+.3f})"
                    cells.append(f"{value:.3f}{delta}")
                else:
                    cells.append(str(value))
            print(f"| {key} | " + " | ".join(cells) + " |")
        for r in runs:
            if r.get("scale_choice"):
                print(f"- {r['arm']}: {r['scale_choice']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared/datasets")
    parser.add_argument("--crackforest", type=Path, default=ROOT.parent / "bench-data/crackforest",
                        help="the folder benchmarks/prepare_crackforest.py wrote")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--arms", nargs="*", default=["fixed", "recipe"], choices=list(ARMS))
    parser.add_argument("--max_time", default="4m", help="the budget of every arm")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--extra", default="", help="recipe fields for every arm, as on the command line")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs/bench-thin")
    parser.add_argument("--table", action="store_true", help="print the tables of runs.jsonl and stop")
    parser.add_argument("--baseline", choices=list(ARMS), default=None,
                        help="the arm the IoU deltas are against (default: recipe where a set has it, else today)")
    cli = parser.parse_args()
    runs = cli.output_dir / "runs.jsonl"
    if cli.table:
        print_tables([json.loads(line) for line in runs.read_text().splitlines() if line.strip()], cli.test_split,
                     cli.baseline)
        return
    missing = [name for name in cli.sets if not (set_folder(name, cli) / "images").is_dir()]
    if missing:
        sys.exit("Not found: " + ", ".join(f"{name} at {set_folder(name, cli)}" for name in missing)
                 + ": pass --datasets (the shared sets' folder), or --crackforest (make it with "
                 "benchmarks/prepare_crackforest.py).")
    cli.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for data_set in cli.sets:
        for arm in cli.arms:
            row = train_arm(arm, data_set, cli)
            rows.append(row)
            with runs.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(f"{data_set} {arm}: {row.get('error') or 'done'} in {row['wall_s']} s", flush=True)
    print(f"\nB0 random init, {RECIPE.name}, max_time {cli.max_time} per arm, one arm at a time")
    print_tables(rows, cli.test_split, cli.baseline)


if __name__ == "__main__":
    main()
