"""Run checks made before any data work: mixed precision, the device, and the output folder.

Each check raises `RecipeError` with one message that names the field or path and says what to do.

Mixed precision. `accelerate launch` always exports `ACCELERATE_MIXED_PRECISION` (`no`, `fp16`, `bf16`; the
config file's `mixed_precision`, or `no` when none is given). transformers' `TrainingArguments.__post_init__`
sets `mixed_precision` from that variable and then overrides it with the recipe's `fp16: true` / `bf16: true`;
the Trainer hands `args.mixed_precision` to the `Accelerator`. So a recipe flag silently wins over the
Accelerate config. The checks here make it one source of truth: a recipe flag that names a *different*
precision than the config is an error; a config precision with no recipe flag is used (with a warning that
the config decides). `no` is Accelerate's default, indistinguishable from "not set", so a recipe flag is
allowed to turn autocast on under it.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from .configs import has_accelerator
from .errors import RecipeError

logger = logging.getLogger("hf_segformer")

ENV_MIXED_PRECISION = "ACCELERATE_MIXED_PRECISION"
GB = 1024**3


def launcher_precision() -> str | None:
    """The precision the Accelerate config asked for, or None when the launcher set none."""
    value = os.environ.get(ENV_MIXED_PRECISION)
    return value.strip().lower() if value and value.strip() else None


def recipe_precision(training_args: Any) -> str | None:
    """`fp16` / `bf16` when the recipe sets that flag, else None."""
    if getattr(training_args, "fp16", False):
        return "fp16"
    if getattr(training_args, "bf16", False):
        return "bf16"
    return None


def effective_precision(training_args: Any) -> str:
    """What the Trainer will use: the recipe flag if set, else the launcher's value, else `no`."""
    return recipe_precision(training_args) or launcher_precision() or "no"


def check_mixed_precision(training_args: Any) -> None:
    """The recipe's fp16/bf16 must not contradict the Accelerate config's mixed_precision."""
    launcher, recipe = launcher_precision(), recipe_precision(training_args)
    if launcher in (None, "no"):
        return  # no config precision (or Accelerate's default 'no'): the recipe flag, if any, decides
    if recipe is None:
        logger.warning("The Accelerate config sets mixed_precision: %s (%s=%s) and the recipe sets neither fp16 "
                       "nor bf16: the Accelerate config decides, training uses %s autocast.",
                       launcher, ENV_MIXED_PRECISION, launcher, launcher)
        return
    if recipe != launcher:
        raise RecipeError(
            f"Mixed precision is set twice and the two disagree: the Accelerate config says mixed_precision: "
            f"{launcher} ({ENV_MIXED_PRECISION}={launcher}) but the recipe says {recipe}: true. transformers would "
            f"silently use the recipe's {recipe}. Keep one source of truth: remove {recipe} from the recipe (the "
            f"Accelerate config then decides), or launch with a config whose mixed_precision is {recipe} "
            f"(e.g. accelerate_configs/*_{recipe}.yaml, or `accelerate launch --mixed_precision {recipe}`)."
        )


def _on_accelerator(training_args: Any) -> bool:
    """The run trains on an accelerator (CUDA, XPU, MPS: where Accelerate runs fp16 autocast), not the CPU."""
    return not getattr(training_args, "use_cpu", False) and has_accelerator()


def check_fp16_device(training_args: Any) -> None:
    """fp16 on the CPU: Accelerate turns autocast off there, so the run would silently train in float32."""
    if effective_precision(training_args) != "fp16" or _on_accelerator(training_args):
        return
    source = ("the recipe sets fp16: true" if recipe_precision(training_args) == "fp16"
              else f"the Accelerate config sets mixed_precision: fp16 ({ENV_MIXED_PRECISION}=fp16)")
    where = "use_cpu is true" if getattr(training_args, "use_cpu", False) else "this machine has no CUDA device"
    raise RecipeError(
        f"fp16 was requested ({source}) but {where}: fp16 autocast does nothing on a CPU (Accelerate runs the "
        "model in float32). Use bf16 instead (bf16: true in the recipe, or an Accelerate config with "
        "mixed_precision: bf16, e.g. accelerate_configs/cpu.yaml edited to bf16), or run on a GPU."
    )


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
    probe = os.path.join(path, f".hf_segformer_write_probe_{os.getpid()}_{uuid.uuid4().hex}")
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


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU computes in bf16 natively (AVX-512 BF16 or AMX); None where /proc/cpuinfo is absent."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return None
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


def check_cpu_bf16(training_args: Any) -> None:
    """bf16 autocast on a CPU without native bf16 is emulated and slower than fp32: say so, it is a config choice."""
    if not _on_accelerator(training_args) and effective_precision(training_args) == "bf16" and cpu_has_native_bf16() is False:
        logger.warning("bf16 autocast on a CPU without %s is emulated (slower than fp32): set bf16: false in the "
                       "recipe and mixed_precision: 'no' in the Accelerate config on this machine.",
                       " or ".join(CPU_BF16_FLAGS))


def check_run(training_args: Any, min_free_gb: float = 1.0) -> None:
    """All run checks, in order: mixed precision source, fp16 device, CPU bf16 support, output_dir writable with
    free space."""
    check_mixed_precision(training_args)
    check_fp16_device(training_args)
    check_cpu_bf16(training_args)
    check_output_dir(training_args.output_dir, min_free_gb)
