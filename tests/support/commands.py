"""Commands run in the test's own process, as `recipes/finetune.py` and `hf-segformer` call them (`run_command`):
for reference runs and runs refused before any step, where a Python start with torch per run tests nothing the
launched runs beside them do not."""

from __future__ import annotations


def train_here(*argv: str, expect_code: int = 0) -> None:
    """`recipes/finetune.py ARGV` (the train command) in this process; asserts its exit code."""
    from hf_segformer.cli import run_command

    assert run_command("train", [str(arg) for arg in argv]) == expect_code
