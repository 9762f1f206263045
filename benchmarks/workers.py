"""What the benchmarks share: each case runs in a fresh worker process (clean peak memory, no warm caches), which
prints one `RESULT {json}` line; the parent runs it, reads the result, and formats the tables. The line's prefix
and the /proc memory reader are the deploy report's worker protocol (`hf_segformer.evaluation.deploy.worker`)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from hf_segformer.evaluation.deploy.worker import RESULT_PREFIX, memory_mb

# The aerial recipe's data pipeline, loss and optimiser for a fixed number of steps: its time budget and per-run
# extras (rare-class sampling and crops, EMA) set aside and dropout at the model's defaults (as the plain Trainer
# runs it), so a benchmark's cases do the same work.
RECIPE_FIXED_WORK = ["--max_time", "null", "--rare_class_sampling", "false", "--rare_class_crop_prob", "0",
                     "--ema_decay", "null", "--drop_path_rate", "0.1", "--classifier_dropout_prob", "0.1"]


def memory_gb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process in GB, from /proc (ru_maxrss where there is no /proc)."""
    mb = memory_mb(field)
    if mb is not None:
        return mb * 2**20 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def emit(result: dict) -> None:
    """The worker's side: print its result for `run_worker`."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(command: list[str], threads: int, label: str, stderr_tail: int = 3000) -> dict:
    """The parent's side: run a worker with `threads` torch threads, offline; its result, or {"error": why}."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        why = "killed (out of memory?)" if result.returncode in (-9, 137) else f"exit {result.returncode}"
        print(f"  {label}: {why}\n{result.stderr[-stderr_tail:]}", file=sys.stderr)
        return {"error": why}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def fmt(value: float | None, spec: str) -> str:
    """A table cell: the value formatted, or a dash where there is none."""
    return "—" if value is None else format(value, spec)
