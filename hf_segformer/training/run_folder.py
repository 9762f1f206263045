"""A run's output folder: claimed before any work, never over a user's files or inputs; earlier outputs moved aside
(never deleted but our own, beyond the newest few); the marker that tells a run's folder from a user's.

It lives with training because it knows every file a run writes, from the writers' own names (data check,
class reports, sample grid, weight average, class weights).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime
from pathlib import Path

from hf_segformer.data.preflight import HISTOGRAM_JSON, HISTOGRAM_MD
from hf_segformer.data.rare_classes import PRESENCE_FILE
from hf_segformer.errors import RecipeError
from hf_segformer.evaluation.reports import CLASS_REPORT_SUFFIXES
from hf_segformer.outputs import PROBE_PREFIX
from hf_segformer.training.callbacks import SAMPLES_FILE
from hf_segformer.training.ema import EMA_FILE
from hf_segformer.training.losses import CLASS_WEIGHTS_FILE

logger = logging.getLogger("hf_segformer")

RUN_MARKER = ".hf_segformer_run"  # mark_run_folder: this folder holds a run of this project
# Written by transformers' Trainer and save_pretrained, and the model card: fixed names that are not ours to define.
TRANSFORMERS_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "training_args.bin",
                      "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json", "README.md",
                      "runs")
RUN_PREFIXES = ("checkpoint-", "evaluation_", "deploy_report", PROBE_PREFIX, "events.out.tfevents")
FINISHED = ("model.safetensors", "all_results.json", "eval_per_class.md")
MOVED_ASIDE = "previous_runs"
OWN_MOVED_MARKER = ".moved_by_hf_segformer"
KEEP_MOVED_ASIDE = 3


def run_files() -> frozenset[str]:
    """Every file a training run, `check-data` and `evaluate` into the model folder write in output_dir: only
    these may be there for a run to start without a word. Taken from the writers' own names."""

    return frozenset({*TRANSFORMERS_FILES, HISTOGRAM_JSON, HISTOGRAM_MD, PRESENCE_FILE, SAMPLES_FILE, EMA_FILE,
                      CLASS_WEIGHTS_FILE, RUN_MARKER, *(f"eval{suffix}" for suffix in CLASS_REPORT_SUFFIXES)})


def run_signatures() -> frozenset[str]:
    """Files only this project's runs (or check-data) write: one of them, or the marker, tells our folder from a
    user's."""

    return frozenset({"training_args.bin", "trainer_state.json", HISTOGRAM_JSON, PRESENCE_FILE, RUN_MARKER})


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _inside(path: str, folder: str) -> bool:
    """`path` is `folder` or lies under it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or os.path.commonpath([path, folder]) == folder


def check_inputs_outside(output_dir: str | os.PathLike, inputs: dict[str, str | None]) -> None:
    """A run writes into output_dir and, with overwrite_output_dir, moves everything there aside: none of its
    inputs (`inputs`: recipe field → path) may lie in it. Refused before any work, naming the field and path."""
    inside = [f"{field} {path}" for field, path in inputs.items()
              if path and _inside(os.fspath(path), os.fspath(output_dir))]
    if inside:
        raise RecipeError(f"output_dir {os.path.abspath(output_dir)} holds this run's own input(s): "
                          f"{'; '.join(inside)}. A run writes into output_dir (and --overwrite_output_dir moves "
                          "everything there aside), so it must be a folder of its own: set output_dir to a new "
                          f"folder such as {os.path.join(os.fspath(output_dir), 'runs', 'my-run')}.")


def claim_output_dir(output_dir: str | os.PathLike, overwrite: bool, resume: str | None,
                     keep: int = KEEP_MOVED_ASIDE, move: bool = True,
                     inputs: dict[str, str | None] | None = None) -> Path | None:
    """Make output_dir safe to train into, before any work; returns where old outputs were moved, if anywhere.

    A run never writes over, merges into or deletes what is already there, and never moves its own inputs
    (`inputs`: recipe field → path; `check_inputs_outside`). A folder holding anything but this project's own
    run outputs, or a finished run (its model, metrics and reports would be replaced or mixed with the new
    run's), is refused unless `overwrite_output_dir`, which MOVES everything there into
    `previous_runs/<date>/` (of those, only the newest `keep` that held nothing but our own outputs are kept).
    An earlier run's checkpoints are left to `resolve_checkpoint` (resume or refuse); resuming skips this check.
    `move=False` (processes other than the main one) decides the same refusals and moves nothing.
    """
    check_inputs_outside(output_dir, inputs or {})
    path = Path(output_dir)
    if resume is not None or not path.is_dir():
        return None
    # Under DDP every process probes output_dir (check_output_dir) while the main one claims it: another process's
    # probe, there for an instant, says nothing about whose folder this is.
    entries = sorted(name for name in os.listdir(path) if name != MOVED_ASIDE and not name.startswith(PROBE_PREFIX))
    if not entries:
        return None
    own_files = run_files()
    foreign = [name for name in entries if name not in own_files and not name.startswith(RUN_PREFIXES)]
    a_run = any(name in run_signatures() or name.startswith("checkpoint-") for name in entries)
    if not overwrite:
        choices = (f"pick a new --output_dir, or pass --overwrite_output_dir to move everything there into "
                   f"{path / MOVED_ASIDE}/<date>/ first (nothing is deleted)")
        checkpoints = any(name.startswith("checkpoint-") for name in entries)
        if not a_run:
            raise RecipeError(f"output_dir {path} holds files this project's runs did not write ({_listing(entries)}); "
                              f"a run never writes over or merges into them: {choices}.")
        if checkpoints:
            return None  # resolve_checkpoint: resume it or refuse, offering --resume_from_checkpoint last
        besides = f" and files it did not write ({_listing(foreign)})" if foreign else ""
        finished = [name for name in FINISHED if name in entries]
        if finished:
            raise RecipeError(f"output_dir {path} holds a finished run ({', '.join(finished)}){besides}: a new run "
                              f"would replace its model and mix its results with the new ones: {choices}.")
        if foreign:
            raise RecipeError(f"output_dir {path} holds an earlier run{besides}; a run never writes over or merges "
                              f"into them: {choices}.")
        return None  # check-data, or a run stopped before any checkpoint: every file it left is rewritten
    if not move:  # another process than the main one: the main process moves them
        return None
    while True:  # dated to the microsecond: names sort in time order, which pruning relies on
        target = path / MOVED_ASIDE / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        if not target.exists():
            break
    target.mkdir(parents=True)
    for name in entries:
        os.replace(path / name, target / name)
    if a_run and not foreign:
        (target / OWN_MOVED_MARKER).write_text("")
    logger.warning("overwrite_output_dir: the %d item(s) in %s were moved to %s.", len(entries), path, target)
    _prune_moved_aside(path / MOVED_ASIDE, keep)
    return target


def _prune_moved_aside(folder: Path, keep: int) -> None:
    """Delete the oldest moved-aside runs beyond `keep`, only those that held nothing but our own outputs."""
    own = sorted(p for p in folder.iterdir() if (p / OWN_MOVED_MARKER).is_file())
    for old in own[: max(0, len(own) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("Removed %s (an older moved-aside run of this project; the newest %d are kept).", old, keep)


def mark_run_folder(output_dir: str | os.PathLike) -> None:
    """Leave the marker that tells this project's run folder from a user's folder."""
    marker = Path(output_dir) / RUN_MARKER
    if not marker.exists():
        marker.write_text("This folder holds an hf-segformer training run.\n")
