"""LoRA adapters through `peft`: the recipe's SegFormer wrapped for training, a saved adapter loaded back onto its
base model, and an adapter merged into a plain SegFormer.

A run with `lora` saves `adapter_model.safetensors` and `adapter_config.json` (naming the base model) beside the
run's `config.json` (the classes and head of the model the adapter makes) and its image processor. The decode head
is new for every dataset, so it is trained and saved in full (`modules_to_save`); the encoder gets low-rank updates
of the targeted projections only. Every loader of a saved folder goes through `modeling.build.load_saved_model`,
which merges the adapter here: inference then runs the plain model (head folding, ONNX export, token merging).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, SegformerForSemanticSegmentation

from hf_segformer.errors import RecipeError, require_extra

logger = logging.getLogger("hf_segformer")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    """The peft package, or one error saying how to install it."""
    return require_extra("peft", "lora", "lora", "peft")


def is_adapter_folder(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a local folder holding a LoRA adapter (a run trained with `lora`)."""
    return path is not None and os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


# Of `from_pretrained`'s keyword arguments, those that say where an adapter's files are fetched from.
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")


def _hub_kwargs(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in load_kwargs.items() if key in HUB_KWARGS}


def adapter_config_file(model_name_or_path: str | os.PathLike, **load_kwargs: Any) -> str | None:
    """The adapter_config.json of a run folder or a Hub repository holding a LoRA adapter (a pushed LoRA run), or
    None for a whole model; a Hub repository that cannot be reached is left to the model loader's own error."""
    from transformers.utils.peft_utils import find_adapter_config_file

    hub_kwargs = _hub_kwargs(load_kwargs)
    try:
        return find_adapter_config_file(str(model_name_or_path), **hub_kwargs)
    except OSError:
        return None


def adapter_base_model(path: str | os.PathLike, config_file: str | os.PathLike | None = None) -> str:
    """The base model an adapter (folder, or Hub repository with `config_file` its downloaded adapter_config.json)
    was trained on: `base_model_name_or_path` of its adapter_config.json."""
    config_file = Path(config_file or Path(path) / ADAPTER_CONFIG)
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise RecipeError(f"{config_file} cannot be read as JSON ({err}); it is not a usable LoRA adapter.") from None
    if not base:
        raise RecipeError(f"{config_file} names no base_model_name_or_path: the adapter's base model is unknown.")
    return base


def apply_lora(model: torch.nn.Module, settings: dict[str, Any], base_model: str) -> torch.nn.Module:
    """`model` wrapped with LoRA adapters (`settings`: the checked `lora` field); only the adapters and
    `modules_to_save` train. Logs the trainable parameters. `base_model` is recorded in adapter_config.json."""
    peft = _peft()
    config = peft.LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                             target_modules=settings["target_modules"],
                             modules_to_save=settings["modules_to_save"] or None)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules not found in the model
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))})
        raise RecipeError(f"lora: {err} The model's linear and convolution layers are named: "
                          f"{', '.join(linear)}.") from None
    wrapped.peft_config["default"].base_model_name_or_path = base_model
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info("LoRA (r %d, alpha %s, dropout %s on %s; trained in full: %s): %s of %s parameters trainable "
                "(%.2f %%)", settings["r"], settings["alpha"], settings["dropout"],
                ", ".join(settings["target_modules"]), ", ".join(settings["modules_to_save"]) or "none",
                f"{trainable:,}", f"{total:,}", 100.0 * trainable / total)
    return wrapped


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether `model` carries peft adapters (without importing peft when it is not installed)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


@contextlib.contextmanager
def saving_adapter(model: torch.nn.Module, output_dir: str | os.PathLike, main_process: bool = True):
    """Around a save of a peft model: then writes the model config beside the adapter (the classes and head the
    loaded model must have: the base model's own config has other classes), and removes the placeholder README.md
    peft writes (the run's model card is written by the push). Does nothing for a plain model."""
    readme = Path(output_dir) / "README.md"
    had_readme = readme.exists()
    yield
    if not is_peft_model(model) or not main_process:
        return
    model.get_base_model().config.save_pretrained(output_dir)
    if not had_readme:
        readme.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_transformers():
    """The base model's head is replaced by the adapter's saved head: transformers' warning about newly
    initialised head weights would only mislead."""
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def load_merged_adapter(path: str | os.PathLike, config_file: str | os.PathLike | None = None,
                        **load_kwargs: Any) -> SegformerForSemanticSegmentation:
    """A run folder (or a Hub repository: `config_file` its adapter_config.json) holding an adapter → its base model
    with the adapter loaded and merged in: a plain SegFormer with the run's classes, ready for inference or
    `save_pretrained`."""
    peft = _peft()
    base = adapter_base_model(path, config_file)
    hub_kwargs = _hub_kwargs(load_kwargs)
    try:
        config = AutoConfig.from_pretrained(path, **hub_kwargs)
    except OSError:
        raise RecipeError(f"{path} holds an adapter but no config.json (the run's classes): save the run again, or "
                          "give a folder written by `hf-segformer train` with lora.") from None
    try:
        with _quiet_transformers():
            model = SegformerForSemanticSegmentation.from_pretrained(
                base, config=config, ignore_mismatched_sizes=True,
                **{key: value for key, value in load_kwargs.items() if key != "revision"})  # the adapter's revision
    except OSError as err:
        raise RecipeError(f"{path}: the adapter's base model {base} cannot be loaded ({err}). The base model must "
                          "be reachable (a Hub id, or the local folder it was trained from).") from None
    adapted = peft.PeftModel.from_pretrained(model, str(path), **hub_kwargs)
    merged = adapted.merge_and_unload()
    logger.info("Loaded %s: the LoRA adapter merged into its base model %s", path, base)
    return merged


# Files of a run that describe the model rather than the run: copied beside the merged weights.
PROCESSOR_FILES = ("preprocessor_config.json",)


def merge_adapter_folder(run_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """A LoRA run folder → `output_dir` holding a plain SegFormer (the adapter merged in) and the run's image
    processor, loadable by `AutoModelForSemanticSegmentation` and `pipeline("image-segmentation")`. Refuses a
    run without an adapter and an existing non-empty `output_dir` before loading anything."""
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    if not is_adapter_folder(run_dir):
        raise RecipeError(f"--model: {run_dir} holds no LoRA adapter ({ADAPTER_CONFIG}): give the output_dir of a "
                          "run trained with lora.")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise RecipeError(f"--output: {output_dir} exists and is not an empty folder: choose a new folder (nothing "
                          "is written over).")
    if output_dir.resolve() == run_dir.resolve():
        raise RecipeError("--output must be another folder than --model.")
    model = load_merged_adapter(run_dir)
    model.config.update({"_name_or_path": ""})  # the merged folder is a model of its own, not the base
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    for name in PROCESSOR_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, output_dir / name)
    return output_dir
