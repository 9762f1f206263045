"""Options shared by the commands that run a model.

`InferenceArguments` (evaluate, predict, demo): which model, how it runs (precision, device, threads, ONNX,
token merging) and the inference settings; `load` sets up the threads and precision and returns a `Segmenter`.
`recipe_data_and_settings` (export-onnx --quantize, deploy-report): the recipe's data and inference settings.
They live with the commands rather than in config/: they build a Segmenter (torch, transformers), and the
configuration package stays free of heavy imports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_segformer.config.data import DataArguments
from hf_segformer.config.parser import parse_command
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.inference.segmenter import PRECISIONS, InferenceSettings, Segmenter
from hf_segformer.runtime import Choice, apply_threads, choose_precision, keep_freed_memory
from hf_segformer.training.arguments import RECIPE_DATACLASSES

logger = logging.getLogger(__name__)


@dataclass
class InferenceArguments(InferenceSettings):
    """Options of `evaluate`, `predict` and `demo`: which model, how it runs, and the inference settings."""

    _argument_group_name = "Model and inference (see docs/evaluation.md)"

    model: str | None = field(default=None, metadata={
        "help": "The fine-tuned model: a folder saved by training (or any save_pretrained one) or a Hub id. "
                "Default: the recipe's output_dir, where training saved it."})
    batch_size: int = field(default=8, metadata={"help": "Images per forward pass (whole mode)."})
    precision: str = field(default="auto", metadata={
        "help": "auto (predict, demo: the fastest safe one here: bf16 on GPUs and CPUs that compute it natively, fp16 "
                "on older GPUs, else fp32; evaluate: fp32, so that its metrics are the same on every machine; fp32 "
                "with --onnx), fp32, or autocast in bf16 (CPU or GPU) or fp16 (GPU)."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (slow first batch, then faster)."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    token_merging: str | None = field(default=None, metadata={"help": "Token-merging preset applied to the encoder."})
    onnx: str | None = field(default=None, metadata={
        "help": "An .onnx file written by `hf-segformer export-onnx` from this model: the forward pass runs in ONNX "
                "Runtime (pip install 'hf-segformer[onnx]'; 2.3–2.6× faster than PyTorch fp32 on the development "
                "CPU, benchmarks/README.md), or an OpenVINO .xml made from it (export-onnx --openvino, the deploy "
                "report; pip install 'hf-segformer[openvino]'), run by OpenVINO in fp32 or --precision bf16. --model "
                "still gives the class names and the image processor."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise RecipeError(f"precision must be auto or one of {', '.join(PRECISIONS)}; got '{self.precision}'.")
        if self.batch_size < 1:
            raise RecipeError(f"batch_size must be at least 1; got {self.batch_size}.")

    def model_path(self, recipe: dict) -> str:
        model = self.model or recipe.get("output_dir")
        if not model:
            raise RecipeError("Which model? Give --model (a saved model folder or Hub id), or --config with the "
                              "training recipe (the model is in its output_dir).")
        return str(model)

    def resolved_precision(self, device: torch.device, for_metrics: bool = False) -> Choice:
        """`auto` settled for the device the model runs on (ONNX Runtime runs float32). `for_metrics` (evaluate):
        fp32, since bf16 or fp16 would make the reported metrics depend on the machine that computed them."""
        if self.precision != "auto":
            return Choice(self.precision, "--precision")
        if self.onnx:
            return Choice("fp32", "auto: an exported model runs in float32 (OpenVINO: --precision bf16 on AMX CPUs)")
        if for_metrics:
            return Choice("fp32", "auto for evaluation: the same metrics on every machine; --precision bf16 is faster")
        return choose_precision("auto", False, False, on_cpu=device.type == "cpu")

    def load(self, recipe: dict, device: str | torch.device | None = None, for_metrics: bool = False) -> Segmenter:
        model = self.model_path(recipe)
        device = torch.device(device or self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = self.resolved_precision(device, for_metrics)
        threads = apply_threads()
        if device.type == "cpu":
            keep_freed_memory()
        logger.info("Device: %s; torch threads: %s (%s); precision: %s (%s)", device, threads.value, threads.why,
                    precision.value, precision.why)
        if Path(model).is_dir() and not (Path(model) / "config.json").is_file():
            raise RecipeError(f"{model} is not a saved model folder (no config.json): give the output_dir of a "
                              "training run, a checkpoint-* folder in it, or a Hub model id.")
        try:
            return Segmenter.from_pretrained(model, self, device, str(precision.value), self.compile,
                                             self.token_merging, self.onnx)
        except OSError as err:
            where = "" if Path(model).is_dir() else " (no such folder here, so it was tried as a Hub id)"
            raise RecipeError(f"Cannot load a model from {model}{where}: {err}") from err
        except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError derives from Exception alone
            if isinstance(err, (RecipeError, DataError)) or not Path(model).is_dir():
                raise
            # transformers' "Unrecognized model", safetensors' SafetensorError (a truncated file): the folder is bad
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RecipeError(f"Cannot load a model from {model}: {type(err).__name__}: {reason}. The folder is not "
                              "a complete saved SegFormer (a copy cut short?): save or copy it again.") from err




def recipe_data_and_settings(recipe_argv: list[str]) -> tuple[DataArguments, InferenceSettings, dict[str, Any]]:
    """The recipe's data and inference settings (--config recipe.yaml, --data_dir, --eval_split, --mode ...), and
    its other fields."""
    return parse_command(recipe_argv, (DataArguments, InferenceSettings), RECIPE_DATACLASSES)


def has_data(data_args: DataArguments) -> bool:
    """Whether the recipe names any data (a data_dir, a dataset or an image_dir)."""
    return bool(data_args.data_dir or data_args.dataset_name or data_args.image_dir)
