"""Where a run trains and where it resumes from: the output folder claimed (never written over, merged into or
deleted) and the checkpoint `resume_from_checkpoint` names, checked before any work."""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_segformer.errors import RecipeError
from hf_segformer.modeling.build import file_damage
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.run_folder import claim_output_dir, mark_run_folder

logger = logging.getLogger("hf_segformer")
CHECKPOINT = f"{PREFIX_CHECKPOINT_DIR}-"


def run_inputs(data_args: Any, model_args: Any, training_args: Any) -> dict[str, str | None]:
    """Recipe field → the local path it reads: what a run must never write into or move aside."""
    local = {"data_dir": data_args.data_dir, "image_dir": data_args.image_dir, "mask_dir": data_args.mask_dir,
             "dataset_name": data_args.dataset_name, "model_name_or_path": model_args.model_name_or_path,
             "recipe": getattr(training_args, "recipe_file", None)}
    for field in ("id2label", "colour_map"):
        value = getattr(data_args, field, None)
        local[field] = value if isinstance(value, str) else None
    for split, globs in (data_args.data_files_map or {}).items():
        for i, pattern in enumerate(globs):
            local[f"data_files[{split}][{i}]"] = pattern.split("*")[0] or "."
    maybe_remote = ("dataset_name", "model_name_or_path", "id2label", "colour_map")  # Hub ids, inline mappings
    return {field: path for field, path in local.items()
            if path and (field not in maybe_remote or os.path.exists(path))}


def claim_run_folder(training_args: SegformerTrainingArguments, inputs: dict[str, str | None] | None = None
                     ) -> str | None:
    """Claim output_dir for this run and return the checkpoint to resume from (None: a fresh start).

    Every process decides the same refusal (nothing moves without overwrite_output_dir); only the main one moves
    old outputs aside and marks the folder as a run's. `inputs` (`run_inputs`) may not lie in output_dir."""
    with training_args.main_process_first(local=False, desc="output folder"):
        claim_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                         training_args.resume_from_checkpoint, move=training_args.process_index == 0,
                         inputs=inputs)
        if training_args.process_index == 0:
            mark_run_folder(training_args.output_dir)
        return resolve_checkpoint(training_args)


def resolve_checkpoint(training_args: SegformerTrainingArguments) -> str | None:
    """`resume_from_checkpoint: last` → newest checkpoint; refuse to train over another run's checkpoints."""
    output_dir = training_args.output_dir
    last = last_complete_checkpoint(output_dir) if os.path.isdir(output_dir) else None
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


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` that holds its trainer_state.json, the file the Trainer writes last. This project
    renames a checkpoint into place once complete; one cut short by an older version, or by a copy, is skipped."""
    steps = sorted((int(name[len(CHECKPOINT):]), name) for name in os.listdir(output_dir)
                   if name.startswith(CHECKPOINT) and name[len(CHECKPOINT):].isdigit()
                   and os.path.isdir(os.path.join(output_dir, name)))
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
        logger.warning("%s has no trainer_state.json (a save cut short): skipped for an earlier checkpoint.", path)
    return None


def check_checkpoint_files(folder: str) -> None:
    """A checkpoint cut short (a copy interrupted, a full disk) fails here, naming the file, before any work."""
    torch_files = sorted(name for name in os.listdir(folder) if name.endswith((".pt", ".pth")))
    for name in ("model.safetensors", "trainer_state.json", *torch_files):
        path = os.path.join(folder, name)
        damage = file_damage(path) if os.path.isfile(path) else None
        if damage:
            raise RecipeError(f"resume_from_checkpoint: {path} is damaged ({damage}); resume from an earlier "
                              "checkpoint-* folder, or start again with --overwrite_output_dir.")
