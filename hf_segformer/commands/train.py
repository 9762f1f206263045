"""`hf-segformer train` (and `recipes/finetune.py`): fine-tune from a recipe,
`--config recipe.yaml [--field value ...]` (`training.run`), in this process or, with `--num_processes N` or
`--accelerate_config FILE`, in processes started through Accelerate's launcher (`commands.launch`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hf_segformer.commands.launch import (
    LAUNCH_HELP,
    LaunchRequest,
    launch,
    read_accelerate_config,
    split_launch_options,
)


def main(argv: list[str], default_config: str | None = None) -> int:
    """`default_config`: the recipe read when no --config is given (the quickstart, for recipes/finetune.py)."""
    request = split_launch_options(argv)
    if "-h" in argv or "--help" in argv:
        print(LAUNCH_HELP)
    from hf_segformer.training.arguments import parse_recipe  # transformers: after the launch options are read

    if request.in_process:
        from hf_segformer.training.preemption import PREEMPTED_EXIT, Preempted
        from hf_segformer.training.run import main as train

        try:
            train(*parse_recipe(request.train_argv, default_config=default_config))
        except Preempted as stop:  # SIGTERM: a checkpoint was saved; not an error, but not a finished run either
            print(stop, file=sys.stderr, flush=True)
            return PREEMPTED_EXIT
        return 0
    with config_precision(request):
        parse_recipe(request.train_argv, default_config=default_config)  # a bad recipe: one error, before any launch
    has_config = any(arg == "--config" or arg.startswith("--config=") for arg in request.train_argv)
    if default_config and not has_config:
        request = LaunchRequest(request.num_processes, request.accelerate_config,
                                ["--config", str(default_config), *request.train_argv])
    return launch(request)


@contextmanager
def config_precision(request: LaunchRequest) -> Iterator[None]:
    """While the recipe is checked here, the config file's mixed_precision is what the launched processes will
    see, so a recipe that contradicts it is refused before they start."""
    config = read_accelerate_config(request.accelerate_config) if request.accelerate_config else {}
    precision = str(config.get("mixed_precision") or "").lower()
    previous = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if precision in ("fp16", "bf16"):
        os.environ["ACCELERATE_MIXED_PRECISION"] = precision
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
        else:
            os.environ["ACCELERATE_MIXED_PRECISION"] = previous
