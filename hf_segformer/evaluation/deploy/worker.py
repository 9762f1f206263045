"""A deploy report row's worker: a fresh process that loads one row as `predict` would and runs the `evaluate`
command's own loop on the pairs, so that the row's peak resident memory (VmHWM) is its own and no row inherits
another's allocations. It prints one `RESULT {json}` line, which the parent reads.

The report spawns it as `python -m hf_segformer.evaluation.deploy.worker --worker SPEC.json`; it is the package's
own subprocess, not a user command. The benchmarks' workers share its protocol (RESULT_PREFIX, memory_mb), so this
module imports nothing heavy until a worker runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hf_segformer.evaluation.deploy.rows import Row

RESULT_PREFIX = "RESULT "


def memory_mb(name: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process in MB, from /proc; None where there is no /proc."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return None


def worker_spec(row: Row, model_dir: Path, folder: Path, settings: Any, threads: int, dataset: Path,
                decoder: Path, agreement_images: int, masks: Path) -> dict[str, Any]:
    """What a worker needs, as JSON: the row, the model and its exports, inference `settings` (InferenceSettings),
    the pairs saved with `Dataset.save_to_disk`, the pickled label decoder, and where to save its masks."""
    return {"row": asdict(row), "precision": row.precision, "model_dir": str(model_dir), "folder": str(folder),
            "settings": asdict(settings), "threads": threads, "dataset": str(dataset), "decoder": str(decoder),
            "agreement_images": agreement_images, "masks": str(masks)}


def worker_command(spec_path: Path) -> tuple[list[str], dict[str, str]]:
    """Run this module in a fresh interpreter, importable there as it is here."""
    module = __spec__.name if __spec__ is not None and __spec__.name != "__main__" else None
    env = dict(os.environ)
    if module:
        root = Path(__file__).resolve().parents[len(module.split(".")) - 1]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        return [sys.executable, "-m", module, "--worker", str(spec_path)], env
    return [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)], env


def run_row_worker(spec: dict[str, Any], folder: Path, threads: int) -> dict[str, Any]:
    """Evaluate one row in a fresh process; its result, or {"error": why}."""
    spec_path = folder / f"worker-{spec['row']['key']}.json"
    spec_path.write_text(json.dumps(spec))
    command, env = worker_command(spec_path)
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        why = "killed (out of memory?)" if result.returncode in (-9, 137) else f"exit {result.returncode}"
        tail = result.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"worker {why}: {tail[0][-300:]}"}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def worker_main(spec_path: str) -> dict[str, Any]:
    """A worker: one row's mIoU (the evaluate command's loop), peak memory, and predictions for the agreement."""
    # imported here, in the worker only: the parent and the benchmarks import this module for its protocol alone
    import torch
    from datasets import load_from_disk

    from hf_segformer.evaluation.deploy.measure import load_row
    from hf_segformer.evaluation.metrics import metrics_from_confusion
    from hf_segformer.evaluation.run import evaluate_shard
    from hf_segformer.inference.segmenter import InferenceSettings

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    row = Row(**spec["row"])
    folder = Path(spec["folder"])
    segmenter = load_row(spec["model_dir"], row, InferenceSettings(**spec["settings"]), folder, spec["precision"])
    loaded = memory_mb("VmRSS")
    dataset = load_from_disk(spec["dataset"])
    decoder = pickle.loads(Path(spec["decoder"]).read_bytes())
    started = time.perf_counter()
    confusion, _ = evaluate_shard(segmenter, dataset, decoder, batch_size=1)
    seconds = time.perf_counter() - started
    peak = memory_mb("VmHWM")  # read before the agreement pass below, which is not part of an evaluation
    confusion = confusion.cpu().numpy()
    metrics = metrics_from_confusion(confusion)
    masks = {}
    if spec["agreement_images"]:
        subset = dataset.select(range(min(spec["agreement_images"], len(dataset))))
        images = [segmenter.read(entry) for entry in subset["image"]]
        masks = {str(i): mask for i, mask in enumerate(segmenter(images, batch_size=1))}
        np.savez_compressed(spec["masks"], **masks)
    return {"miou": float(metrics["mean_iou"]), "confusion": confusion.tolist(), "peak_rss_mb": peak,
            "loaded_rss_mb": loaded, "eval_seconds": seconds, "masks": bool(masks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", required=True, help="worker spec (JSON) written by deploy_report")
    args = parser.parse_args(argv)
    print(RESULT_PREFIX + json.dumps(worker_main(args.worker)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
