"""Commands run in the test's own process, as `recipes/finetune.py` and `hf-segformer` call them (`run_command`):
for reference runs and runs refused before any step, where a Python start with torch per run tests nothing the
launched runs beside them do not."""

from __future__ import annotations


def train_here(*argv: str, expect_code: int = 0, threads: int | None = None) -> None:
    """`recipes/finetune.py ARGV` (the train command) in this process; asserts its exit code. `threads=1`: one torch
    thread, as the launched processes have (OMP_NUM_THREADS=1), for losses compared exactly with theirs. This
    process's torch threads and OMP_NUM_THREADS are as before afterwards (the run sets both)."""
    import os

    import torch

    from hf_segformer.cli import run_command

    before_threads, before_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        assert run_command("train", [str(arg) for arg in argv]) == expect_code
    finally:
        torch.set_num_threads(before_threads)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env
