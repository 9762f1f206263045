"""`SegformerTrainingArguments`: transformers' `TrainingArguments` with the segmentation run's own fields.

It lives with training because it is transformers' class (the recipe's data and model fields in `config/` stay
light); `__post_init__` settles precision and loader workers (`runtime`) before transformers' own needs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.config.parser import parse_args
from hf_segformer.config.values import check_choice, parse_duration, parse_mapping
from hf_segformer.errors import RecipeError
from hf_segformer.runtime import choose_loader_workers, choose_precision, has_accelerator, launcher_precision
from hf_segformer.training.losses import LOSS_RESOLUTIONS, LOSS_TERMS, WEIGHT_METHODS, check_boundary_settings

METRIC_BACKENDS = ("confusion", "evaluate_hub")


@dataclass
class SegformerTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that suit segmentation, plus run-safety options."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "Images are decoded on the fly."})
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "Accumulate a confusion matrix per batch instead of keeping every logit."}
    )
    metric_backend: str = field(
        default="confusion",
        metadata={"help": "'confusion': streaming confusion matrices with evaluate's mean_iou semantics, offline. "
                          "'evaluate_hub': evaluate.load('mean_iou') from the Hub on every logit, as transformers' "
                          "example (needs the Hub before training starts; turns batch_eval_metrics off)."},
    )
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "Loggers (tensorboard by default)."})
    loss: str | None = field(
        default=None,
        metadata={"help": "Training loss terms and their weights, e.g. {ce: 1.0, dice: 0.5}; terms: "
                          f"{', '.join(LOSS_TERMS)} (boundary: cross-entropy with pixels near another class "
                          "weighted up, see boundary_weight). Default: plain cross-entropy."},
    )
    class_weights: str | None = field(
        default=None,
        metadata={"help": "Per-class loss weights: a list, or computed from the training pixel histogram of the "
                          f"data check: {' | '.join(WEIGHT_METHODS)}."},
    )
    class_weight_clip: float | None = field(default=10.0, metadata={"help": "Largest/smallest class weight ratio."})
    class_weight_beta: float = field(default=0.9999, metadata={"help": "beta of effective_number weights."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focal loss focusing parameter."})
    ohem_thresh: float = field(default=0.7, metadata={"help": "OHEM: keep pixels whose true-class probability is below."})
    ohem_min_kept: int = field(default=100_000, metadata={"help": "OHEM: keep at least this many pixels per image."})
    dice_smooth: float = field(default=1.0, metadata={"help": "Dice loss smoothing term."})
    boundary_weight: float = field(
        default=4.0,
        metadata={"help": "boundary loss: a pixel within boundary_width label pixels of another labelled class weighs "
                          "1 + this in the cross-entropy (times its class weight); 0 is plain cross-entropy."},
    )
    boundary_width: int = field(
        default=2,
        metadata={"help": "boundary loss: how near (label pixels, a square window) another class makes a pixel a "
                          "boundary pixel; a structure up to twice as wide is all boundary."},
    )
    loss_resolution: str = field(
        default="labels",
        metadata={"help": "'labels': logits upsampled to the label size for the loss (as SegFormer's own loss). "
                          "'logits': labels downsampled to the logits' 1/4 resolution (majority of each 4×4 "
                          "cell) instead: 16× less loss memory at 150 classes; its mIoU cost: benchmarks/README.md."},
    )
    head_lr_multiplier: float = field(
        default=1.0,
        metadata={"help": "Learning rate of the decode head = learning_rate × this (10 in the published SegFormer "
                          "recipe). 1.0 is the plain Trainer's optimizer. Biases and norms never get weight decay."},
    )
    sync_batchnorm: bool = field(
        default=False,
        metadata={"help": "Under DDP, normalise the decode head's BatchNorm over the global batch (all processes): "
                          "torch's SyncBatchNorm on GPUs, an all-reduce BatchNorm on CPU processes."},
    )
    max_nonfinite_losses: int = field(
        default=0,
        metadata={"help": "Training batches with a NaN/Inf loss that are skipped (zero gradient, with a warning) "
                          "before the run stops with an error naming the step; 0 stops at the first."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow training into an output_dir that holds checkpoints of another run."}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto | fp32 | bf16 | fp16. auto: the Accelerate config's mixed_precision or the recipe's "
                          "fp16/bf16 flag if either is set, else the fastest safe one here (bf16 on GPUs that have it, "
                          "else fp16; bf16 on CPUs with AVX-512 BF16/AMX, else fp32). Contradictions are refused."},
    )
    torch_threads: int | None = field(
        default=None,
        metadata={"help": "Torch threads per process. Unset: OMP_NUM_THREADS if you set it, else the usable cores "
                          "divided by the processes on this machine (a launcher's default of 1 is replaced)."},
    )
    reuse_freed_memory: bool = field(
        default=True,
        metadata={"help": "CPU runs: keep freed memory in the process for the next step instead of returning it to "
                          "the system (glibc), which made a CPU training step 1.4× faster for ~1 GB more peak memory "
                          "(B0, batch 8 × 512²). false: the system allocator's defaults."},
    )
    ema_decay: float | None = field(
        default=None,
        metadata={"help": "Keep an exponential moving average of the weights (e.g. 0.999; warm-up min(decay, "
                          "(1+t)/(10+t))): evaluations use it and the saved model is it. Checkpoints keep the raw "
                          "weights and the average (ema.safetensors) for resuming. Unset: off."},
    )
    max_time: str | None = field(
        default=None,
        metadata={"help": "A wall-clock budget for training, e.g. 90s, 25m, 2h, 1.5d: the run times its first steps "
                          "and its evaluation, then fixes max_steps so that warm-up and the LR decay end at the "
                          "budget, with the last evaluation and the save inside it (max_steps, if set, stays an "
                          "upper bound). Recorded in train_results.json (budget_*) and the model card."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop training when metric_for_best_model (default: mean_iou) has not improved by more "
                          "than early_stopping_threshold for this many evaluations in a row (transformers' "
                          "EarlyStoppingCallback). Turns load_best_model_at_end on: the saved model is the best "
                          "evaluation's. Needs eval_strategy steps or epoch and save_strategy the same (save_steps a "
                          "multiple of eval_steps). Recorded in train_results.json and the model card. Unset: off."},
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "With early_stopping_patience: the least change of the metric that counts as an "
                          "improvement."},
    )
    dataloader_num_workers: str = field(
        default="auto",
        metadata={"help": "DataLoader worker processes, or auto: 1 for CPU training (0 on one core), up to 8 when "
                          "an accelerator trains (cores per process - 1)."},
    )

    def __post_init__(self) -> None:
        check_choice("metric_backend", self.metric_backend, METRIC_BACKENDS)
        self.loss_terms = parse_mapping(self.loss, "loss") if self.loss is not None else {"ce": 1.0}
        unknown = sorted(set(self.loss_terms) - set(LOSS_TERMS))
        if unknown or any(float(w) < 0 for w in self.loss_terms.values()):
            raise RecipeError(f"loss: terms must be among {', '.join(LOSS_TERMS)} with weights ≥ 0; got {self.loss_terms}.")
        check_boundary_settings(self.boundary_weight, self.boundary_width)
        if isinstance(self.class_weights, str) and self.class_weights.lstrip().startswith("["):
            self.class_weights = json.loads(self.class_weights)
        if isinstance(self.class_weights, str):
            check_choice("class_weights", self.class_weights, WEIGHT_METHODS, alternative="a list")
        check_choice("loss_resolution", self.loss_resolution, LOSS_RESOLUTIONS)
        if not self.head_lr_multiplier > 0:
            raise RecipeError(f"head_lr_multiplier must be > 0; got {self.head_lr_multiplier}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise RecipeError(f"ema_decay must be between 0 and 1 (e.g. 0.999); got {self.ema_decay}.")
        self.max_time_s = parse_duration(self.max_time) if self.max_time is not None else None
        if self.max_time_s is not None:
            self.max_steps_cap = self.max_steps if 0 < self.max_steps < 10_000_000 else None
            self.max_steps = self.max_steps_cap or 10_000_000  # provisional: the budget decides after a few steps
        if self.metric_backend == "evaluate_hub":
            self.batch_eval_metrics = False  # the Hub module needs every prediction at once
        self._settle_early_stopping()
        on_cpu = self.use_cpu or not has_accelerator()
        try:
            chosen = choose_precision(self.precision, self.fp16, self.bf16, on_cpu, launcher_precision())
            workers = choose_loader_workers(self.dataloader_num_workers, on_accelerator=not on_cpu)
        except ValueError as err:
            raise RecipeError(str(err)) from err
        self.precision, self.precision_reason = str(chosen.value), chosen.why
        self.fp16, self.bf16 = self.precision == "fp16", self.precision == "bf16"
        self.dataloader_num_workers, self.loader_workers_reason = int(workers.value), workers.why
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # torch refuses persistent workers without workers
        if on_cpu and not self.use_cpu:
            self.use_cpu = True  # a machine without an accelerator: CPU (bf16 autocast needs use_cpu there)
        super().__post_init__()

    def _settle_early_stopping(self) -> None:
        """EarlyStoppingCallback needs evaluations, the best model kept (load_best_model_at_end, so saves at the
        evaluations) and a metric: set here, or refused naming the fields, before transformers' own checks."""
        if self.early_stopping_patience is None:
            if self.early_stopping_threshold:
                raise RecipeError("early_stopping_threshold is set but early_stopping_patience is not: set "
                                  "early_stopping_patience (evaluations without improvement before stopping).")
            return
        if self.early_stopping_patience < 1:
            raise RecipeError(f"early_stopping_patience must be ≥ 1 (evaluations); got {self.early_stopping_patience}.")
        if not self.early_stopping_threshold >= 0:
            raise RecipeError(f"early_stopping_threshold must be ≥ 0; got {self.early_stopping_threshold}.")
        evaluate, save = (str(getattr(value, "value", value)) for value in (self.eval_strategy, self.save_strategy))
        if evaluate == "no":
            raise RecipeError("early_stopping_patience counts evaluations: set eval_strategy: steps (with "
                              "eval_steps) or epoch.")
        if save not in (evaluate, "best"):
            raise RecipeError(f"early_stopping_patience keeps the best evaluation's model (load_best_model_at_end), "
                              f"which is saved at an evaluation: set save_strategy: {evaluate} (as eval_strategy) "
                              f"or best; got save_strategy: {save}.")
        eval_steps = self.eval_steps or self.logging_steps
        if evaluate == save == "steps" and eval_steps >= 1 and self.save_steps >= 1 and self.save_steps % eval_steps:
            raise RecipeError(f"early_stopping_patience keeps the best evaluation's model, which is saved at an "
                              f"evaluation: save_steps ({self.save_steps:g}) must be a multiple of eval_steps "
                              f"({eval_steps:g}).")
        self.load_best_model_at_end = True
        self.metric_for_best_model = self.metric_for_best_model or "mean_iou"


RECIPE_DATACLASSES = (DataArguments, ModelArguments, SegformerTrainingArguments)


def parse_recipe(argv: list[str] | None = None, default_config: str | Path | None = None,
                 ) -> tuple[DataArguments, ModelArguments, SegformerTrainingArguments]:
    """A training recipe (`--config recipe.yaml` + `--field value` overrides) → its three dataclasses."""
    return parse_args(argv, RECIPE_DATACLASSES, default_config)
