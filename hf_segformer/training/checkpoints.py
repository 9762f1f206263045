"""Where a run trains and where it resumes from: the output folder claimed (never written over, merged into or
deleted) and the checkpoint `resume_from_checkpoint` names, checked before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_utils import get_last_checkpoint

from hf_segformer.errors import RecipeError
from hf_segformer.outputs import claim_output_dir, mark_run_folder
from hf_segformer.training.arguments import SegformerTrainingArguments


def claim_run_folder(training_args: SegformerTrainingArguments) -> str | None:
    """Claim output_dir for this run and return the checkpoint to resume from (None: a fresh start).

    Every process decides the same refusal (nothing moves without overwrite_output_dir); only the main one moves
    old outputs aside and marks the folder as a run's."""
    with training_args.main_process_first(local=False, desc="output folder"):
        claim_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                         training_args.resume_from_checkpoint, move=training_args.process_index == 0)
        if training_args.process_index == 0:
            mark_run_folder(training_args.output_dir)
        return resolve_checkpoint(training_args)


def resolve_checkpoint(training_args: SegformerTrainingArguments) -> str | None:
    """`resume_from_checkpoint: last` → newest checkpoint; refuse to train over another run's checkpoints."""
    output_dir = training_args.output_dir
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    resume = training_args.resume_from_checkpoint
    if resume not in (None, "last") and not os.path.isdir(resume):
        raise RecipeError(f"resume_from_checkpoint: {resume} is not a folder; give a checkpoint-* folder of an "
                          "earlier run, or 'last' for the newest one in output_dir.")
    if resume == "last":
        if last is None:
            raise RecipeError(f"resume_from_checkpoint=last but {output_dir} has no checkpoint-* folder.")
        check_checkpoint_files(last)
        return last
    if resume is not None:
        check_checkpoint_files(resume)
    if resume is None and last is not None and not training_args.overwrite_output_dir:
        raise RecipeError(f"{output_dir} already holds checkpoints of an earlier run ({last}). Continue it with "
                         "--resume_from_checkpoint last, pick another --output_dir, or pass --overwrite_output_dir.")
    return resume


def check_checkpoint_files(folder: str) -> None:
    """A checkpoint cut short (a copy interrupted, a full disk) fails here, naming the file, before any work."""
    for name in ("model.safetensors", "trainer_state.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            if name.endswith(".json"):
                json.loads(Path(path).read_text())
            else:
                with safe_open(path, "pt"):
                    pass
        except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError derives from Exception alone
            raise RecipeError(f"resume_from_checkpoint: {path} is damaged ({type(err).__name__}: {err}); resume "
                              "from an earlier checkpoint-* folder, or start again with --overwrite_output_dir."
                              ) from err
