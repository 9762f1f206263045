"""The deploy report's row worker run in the test's own process: `worker_main` on the spec the report writes, its
result as the parent reads it back. For tests of what the report makes of a row's mIoU, files and flags (a fresh
worker costs a Python start with torch per row); memory isolation is tested with real workers."""

from __future__ import annotations

import json
from pathlib import Path


def run_row_here(spec: dict, folder: Path, threads: int) -> dict:
    """`deploy.worker.run_row_worker`'s contract, in this process; the torch thread count is restored after."""
    import torch

    from hf_segformer.evaluation.deploy import worker

    spec_path = folder / f"worker-{spec['row']['key']}.json"
    spec_path.write_text(json.dumps(spec))
    before = torch.get_num_threads()
    try:
        return json.loads(json.dumps(worker.worker_main(str(spec_path))))  # as read back from its RESULT line
    finally:
        torch.set_num_threads(before)
