"""hf-segformer: Hugging Face Trainer fine-tuning recipes for SegFormer semantic segmentation.

The public API, imported on first use (so `import hf_segformer` stays cheap and pulls in no torch):

    from hf_segformer import parse_recipe, train            # a run from a recipe, as recipes/finetune.py does
    from hf_segformer import Segmenter                      # a saved model → masks (whole, slide, TTA)
    from hf_segformer import SegmentationLoss, SegmentationMetrics, MEAN_IOU_MODULE_PATH

The map of the house (every module, the path from a recipe to a saved model, where to add things):
docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # recipes and runs
    "DataArguments": "hf_segformer.config.data",
    "ModelArguments": "hf_segformer.config.model",
    "SegformerTrainingArguments": "hf_segformer.training.arguments",
    "parse_recipe": "hf_segformer.training.arguments",
    "train": ("hf_segformer.training.run", "main"),
    "SegformerTrainer": "hf_segformer.training.trainer",
    "SegmentationLoss": "hf_segformer.training.losses",
    # data
    "load_data": "hf_segformer.data.loading",
    "prepare_data": "hf_segformer.data.prepare",
    "check_data": "hf_segformer.data.preflight",
    "LabelDecoder": "hf_segformer.data.labels",
    "TrainTransform": "hf_segformer.data.transforms",
    "EvalTransform": "hf_segformer.data.transforms",
    "write_synthetic_dataset": "hf_segformer.data.synthetic",
    # model
    "build_model": "hf_segformer.modeling.build",
    "apply_token_merging": "hf_segformer.modeling.token_merging",
    "remove_token_merging": "hf_segformer.modeling.token_merging",
    # evaluation and inference
    "SegmentationMetrics": "hf_segformer.evaluation.metrics",
    "MEAN_IOU_MODULE_PATH": "hf_segformer.evaluation.metrics",
    "Segmenter": "hf_segformer.inference.segmenter",
    "InferenceSettings": "hf_segformer.inference.segmenter",
    "export_onnx": "hf_segformer.inference.onnx_export",
    # errors
    "DataError": "hf_segformer.errors",
    "RecipeError": "hf_segformer.errors",
    "TrainingError": "hf_segformer.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'hf_segformer' has no attribute '{name}'")
    module, attribute = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
