"""Run checks made before any data work: the precision on this device, the output folder, the model folder and
token-merging preset, fields that contradict each other (`check_recipe` makes them all, in that order).

Each check raises `RecipeError` with one message that names the field or path and says what to do. Which
precision a run uses (recipe, Accelerate config, or chosen for the machine) is settled when the recipe is parsed
(`hf_segformer.runtime.choose_precision`); what is checked here is whether that precision makes sense where the
run trains.
"""

from __future__ import annotations

import logging
from typing import Any

from hf_segformer.config.data import AUTO, DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.data.scale_choice import CROP_SIZE
from hf_segformer.errors import RecipeError
from hf_segformer.modeling.build import check_model_folder
from hf_segformer.modeling.token_merging import resolve_token_merging
from hf_segformer.outputs import check_output_dir
from hf_segformer.runtime import (
    CPU_BF16_FLAGS,
    ENV_MIXED_PRECISION,
    cpu_has_native_bf16,
    has_accelerator,
    launcher_precision,
)

logger = logging.getLogger("hf_segformer")


def _on_accelerator(training_args: Any) -> bool:
    """The run trains on an accelerator (CUDA, XPU, MPS: where Accelerate runs fp16 autocast), not the CPU."""
    return not getattr(training_args, "use_cpu", False) and has_accelerator()


def check_fp16_device(training_args: Any) -> None:
    """fp16 on the CPU: Accelerate turns autocast off there, so the run would silently train in float32."""
    if not getattr(training_args, "fp16", False) or _on_accelerator(training_args):
        return
    source = (f"the Accelerate config sets mixed_precision: fp16 ({ENV_MIXED_PRECISION}=fp16)"
              if launcher_precision() == "fp16" else "the recipe sets fp16")
    where = "use_cpu is true" if getattr(training_args, "use_cpu", False) else "this machine has no CUDA device"
    raise RecipeError(
        f"fp16 was requested ({source}) but {where}: fp16 autocast does nothing on a CPU (Accelerate runs the "
        "model in float32). Leave precision to auto (bf16 where the CPU has it, else fp32), set precision: bf16 "
        "or fp32, or run on a GPU."
    )



def check_cpu_bf16(training_args: Any) -> None:
    """bf16 autocast on a CPU without native bf16 is emulated and slower than fp32: say so, it is a config choice."""
    if (not _on_accelerator(training_args) and getattr(training_args, "bf16", False)
            and cpu_has_native_bf16() is False):
        logger.warning("bf16 autocast on a CPU without %s is emulated (several times slower than fp32): leave "
                       "precision to auto (or set precision: fp32) and mixed_precision: 'no' in the Accelerate "
                       "config on this machine.", " or ".join(CPU_BF16_FLAGS))


def check_field_combinations(data_args: Any, training_args: Any) -> None:
    """Fields that are each valid but together would not do what they say."""
    if training_args.metric_backend == "evaluate_hub" and data_args.eval_scale:
        raise RecipeError("eval_scale evaluates images at their own shapes, which evaluate_hub cannot concatenate: "
                          "use metric_backend: confusion (the same mean_iou results, offline) or eval_size.")
    crop_size = CROP_SIZE if data_args.crop_size == AUTO else data_args.crop_size  # auto: at most CROP_SIZE
    crop_pixels = crop_size ** 2
    if training_args.loss_terms.get("ohem") and training_args.ohem_min_kept >= crop_pixels:
        raise RecipeError(f"ohem_min_kept {training_args.ohem_min_kept} is not below the {crop_pixels} pixels of a "
                          f"{crop_size}² crop: OHEM would keep every pixel and train plain cross-entropy. "
                          f"Lower ohem_min_kept (e.g. {crop_pixels // 4}, a quarter of the crop) or drop the ohem "
                          "term.")


def check_run(training_args: Any, min_free_gb: float = 1.0) -> None:
    """All run checks, in order: fp16 device, CPU bf16 support, output_dir writable with free space."""
    check_fp16_device(training_args)
    check_cpu_bf16(training_args)
    check_output_dir(training_args.output_dir, min_free_gb)


def check_recipe(data_args: DataArguments, model_args: ModelArguments, training_args: Any) -> None:
    """Every check a training recipe can fail before any data work: the run checks (fp16 only on a GPU, output_dir
    writable with free space), the model folder, the token-merging preset, then the fields that contradict each
    other (eval_scale with evaluate_hub, OHEM keeping everything)."""
    check_run(training_args)
    check_model_folder(model_args.model_name_or_path, revision=model_args.model_revision,
                       cache_dir=model_args.cache_dir)
    if model_args.token_merging:
        resolve_token_merging(model_args.token_merging)
    check_field_combinations(data_args, training_args)
