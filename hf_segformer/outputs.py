"""Output folders: checked before any work (can be created, written, has free space)."""

from __future__ import annotations

import logging
import os
import shutil
import uuid

from hf_segformer.errors import RecipeError

logger = logging.getLogger("hf_segformer")

GB = 1024**3
PROBE_PREFIX = ".hf_segformer_write_probe_"  # check_output_dir's write probe, removed at once


def check_output_dir(output_dir: str | os.PathLike, min_free_gb: float = 1.0) -> None:
    """output_dir can be created and written to, and its file system has at least `min_free_gb` GB free.

    Creates the folder (and missing parents) if needed, writes and deletes one probe file of its own; nothing
    that was there before is touched.
    """
    if not output_dir:
        raise RecipeError("output_dir is empty: set output_dir in the recipe (or --output_dir).")
    path = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise RecipeError(f"output_dir {path} exists and is not a folder: pick another output_dir.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise RecipeError(f"output_dir {path} cannot be created ({error.strerror or error}): pick an output_dir "
                          "in a folder you can write to, or fix the permissions of its parent.") from error
    probe = os.path.join(path, f"{PROBE_PREFIX}{os.getpid()}_{uuid.uuid4().hex}")
    try:
        with open(probe, "xb") as f:  # "x": never truncates an existing file
            f.write(b"probe")
    except OSError as error:
        raise RecipeError(f"output_dir {path} is not writable ({error.strerror or error}): fix its permissions "
                          "or pick another output_dir.") from error
    else:
        try:
            os.remove(probe)
        except OSError:
            logger.warning("Could not remove the write probe %s; delete it by hand.", probe)
    free_gb = shutil.disk_usage(path).free / GB
    if free_gb < min_free_gb:
        raise RecipeError(f"output_dir {path} has {free_gb:.2f} GB free, less than the {min_free_gb:g} GB a run "
                          "needs (checkpoints, logs, the final model): free some space or pick an output_dir on "
                          "another disk.")


def writable_folder(folder: str | os.PathLike, option: str) -> None:
    """The output folder of a command can be created and written (`check_output_dir`), checked before
    any work; the error names the command's option."""
    try:
        check_output_dir(folder, min_free_gb=0.01)
    except RecipeError as err:
        raise RecipeError(f"--{option}: {err}") from err
