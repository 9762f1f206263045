"""`hf-segformer` command line: the table of commands (one module each in `hf_segformer.commands`), dispatch, and
how a user error ends (one `error:` line, exit code 2) instead of a traceback."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from hf_segformer.errors import CRASH_EXIT, USER_ERROR_EXIT, DataError, RecipeError, TrainingError, as_raised
from hf_segformer.training.peer_errors import peer_error_code, publish_error

# name → (module whose `main(argv) -> int` runs it, one line of help). A module is imported only when its command
# runs, so `hf-segformer coco-to-masks` never pays for torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_segformer.commands.train",
              "fine-tune from a recipe: --config recipe.yaml [--num_processes N] [--field value ...]"),
    "env": ("hf_segformer.commands.env",
            "versions, devices, CPU flags, cores, and what precision/threads/workers auto pick here: for bug reports"),
    "check-data": ("hf_segformer.commands.check_data",
                   "run the pre-flight data check of a recipe and print the class histogram"),
    "make-synthetic": ("hf_segformer.commands.make_synthetic", "write the synthetic shapes dataset to a folder"),
    "coco-to-masks": ("hf_segformer.commands.coco_to_masks",
                      "convert COCO polygons/RLE annotations into a folder of class-id masks"),
    "import-annotations": ("hf_segformer.commands.import_annotations",
                           "a CVAT, Label Studio or COCO export → a data_dir of class-id masks"),
    "push-dataset": ("hf_segformer.commands.push_dataset",
                     "check a recipe's data and publish it on the Hub with a dataset card"),
    "evaluate": ("hf_segformer.commands.evaluate",
                 "evaluate a saved model on a split at native resolution (whole, slide, TTA)"),
    "predict": ("hf_segformer.commands.predict", "images (folder, glob, files) → class-id PNG masks and overlays"),
    "rank-unlabelled": ("hf_segformer.commands.rank_unlabelled",
                        "unlabelled images most worth labelling first; the top as pre-annotations"),
    "export-onnx": ("hf_segformer.commands.export_onnx",
                    "export a saved model to ONNX (dynamic sizes) and check it against PyTorch"),
    "merge-lora": ("hf_segformer.commands.merge_lora",
                   "merge a LoRA run's adapter into a plain SegFormer folder that pipeline() loads"),
    "deploy-report": ("hf_segformer.commands.deploy_report",
                      "PyTorch / ONNX / INT8 / token merging side by side: speed, size, memory, mIoU lost"),
    "demo": ("hf_segformer.commands.demo",
             "serve a model as a Gradio app in the browser, or --export_space for a Hugging Face Space"),
}


def _report_user_errors(command: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """Run a command; a user error ends with its one `error:` line last and exit code 2 (a run that could not go
    on, TrainingError, exits 1). In a multi-process run the other processes exit with the same code, quietly."""
    try:
        return command(*args, **kwargs)
    except (DataError, RecipeError) as err:
        return _report(as_raised(err), USER_ERROR_EXIT)  # a loader worker's: its message, not its traceback
    except TrainingError as err:
        return _report(as_raised(err), CRASH_EXIT)
    except Exception:
        # a collective failed because a peer stopped on such an error: its `error:` line says it all (no traceback
        # here, no bar redrawn after it); without one, a real crash
        code = peer_error_code()
        if code is None:
            raise
        bars, terminal = _open_progress_bars(), sys.stderr.isatty()
        for bar in bars:  # drawn after the peer's line, it would be the last thing on the screen: erased
            if terminal:
                bar.clear()
            bar.disable = True
        if bars and not terminal:
            print(file=sys.stderr, flush=True)  # a log: the bar's line ended
        return code


def _report(message: str, code: int) -> int:
    """The `error:` line, last and on a line of its own, once in a multi-process run (the peers stop with it). A
    progress bar left open (tqdm draws it with carriage returns) is closed first, or it would hold the line and be
    redrawn after it at exit; in a multi-process run the bar may be the main process's: a newline ends it."""
    if not publish_error(message, code):
        return code
    sys.stdout.flush()
    bars = _open_progress_bars()
    for bar in bars:
        bar.close()
    if not bars and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(file=sys.stderr)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _open_progress_bars() -> list[Any]:
    bars = getattr(getattr(sys.modules.get("tqdm"), "tqdm", None), "_instances", ())
    return [bar for bar in list(bars) if not getattr(bar, "disable", True)]


def _run_module(module: str, argv: list[str], options: dict[str, Any]) -> int:
    # Imported here, inside the error report: a command whose extra is missing (demo without Gradio) says so in one
    # `error:` line.
    return importlib.import_module(module).main(argv, **options)


def run_command(name: str, argv: list[str], **options: Any) -> int:
    """Run the command `name` as `hf-segformer NAME ...` does: logging set up (training sets up its own,
    transformers' format with per-process levels) and user errors reported. `options` go to its `main`
    (`default_config` for train). Used by `main` and by the scripts in recipes/."""
    module, _ = COMMANDS[name]
    if name != "train":
        logging.basicConfig(format="%(message)s", stream=sys.stdout)
        logging.getLogger("hf_segformer").setLevel(logging.INFO)
    return _report_user_errors(_run_module, module, argv, options)


def _usage() -> str:
    lines = ["usage: hf-segformer COMMAND [options]", "", "commands:"]
    lines += [f"  {name:20s}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def _unknown_command(name: str) -> str:
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    return f"unknown command '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        print(f"error: {_unknown_command(argv[0])}", file=sys.stderr)
        return USER_ERROR_EXIT
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
