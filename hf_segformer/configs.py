"""The recipe's fields: one dataclass per concern, parsed by `HfArgumentParser` from YAML + command line.

These dataclasses are the single source of truth for every option; the YAML recipes only set values. They
import nothing of the package but its errors, `recipe_values` (the parsers of values such as `id2label`,
`colour_map`, `max_time`, shared with the light commands) and `runtime` (which settles precision, threads and
loader workers before transformers' own `__post_init__` needs them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_segformer.errors import RecipeError
from hf_segformer.recipe_values import (check_num_labels, normalise_id2label, parse_colour_map, parse_data_files,
                                        parse_duration, parse_mapping)
from hf_segformer.runtime import choose_loader_workers, choose_precision, has_accelerator, launcher_precision

WEIGHT_METHODS = ("inverse_frequency", "median_frequency", "effective_number")
LOSS_TERMS = ("ce", "focal", "dice", "ohem")
LOSS_RESOLUTIONS = ("labels", "logits")
METRIC_BACKENDS = ("confusion", "evaluate_hub")
SPLIT_STRATEGIES = ("auto", "shards", "examples")  # how processes divide a stream (datasets' split_dataset_by_node)
FORMAT_BY_EXTENSION = {".parquet": "parquet", ".tar": "webdataset"}


# DataArguments fields only training reads (augmentation, the synthetic set, the pre-flight check, the model
# card's dataset): hidden from the --help of evaluate, predict and demo (`parser.command_parser`).
TRAINING_ONLY_DATA_FIELDS = frozenset({
    "crop_size", "train_scale", "ratio_range", "cat_max_ratio", "hflip_prob", "photometric_distortion",
    "synthetic_data", "synthetic_num_train", "synthetic_num_validation", "synthetic_image_size",
    "train_split", "max_train_samples", "check_data", "check_num_proc", "hub_dataset_id",
})


@dataclass
class DataArguments:
    """Where the images and masks come from, and how they are augmented."""

    _argument_group_name = "Data (see README, \"Your own data\")"

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding `images/` and `masks/` (each optionally split into train/validation|val/test)."},
    )
    image_dir: str | None = field(default=None, metadata={"help": "Image folder (instead of data_dir/images)."})
    mask_dir: str | None = field(default=None, metadata={"help": "Mask folder (instead of data_dir/masks)."})
    mask_suffix: str = field(
        default="",
        metadata={"help": "Suffix on mask stems to drop before pairing (e.g. '_gtFine_labelTrainIds'); "
                          "other files in the mask folder (e.g. '_gtFine_color') are then left out."},
    )
    image_suffix: str = field(default="", metadata={"help": "Suffix on image stems to drop before pairing (only such files are images then)."})
    hub_dataset_id: str | None = field(
        default=None,
        metadata={"help": "The Hub dataset the model card names when training from local folders (e.g. the repo "
                          "published with `hf-segformer push-dataset`)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, or a local folder written by `save_to_disk`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_revision: str | None = field(
        default=None,
        metadata={"help": "Hub dataset revision; 'refs/convert/parquet' reads the Hub's Parquet conversion of a "
                          "dataset published with a loading script (which datasets 5 no longer runs)."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the data as a stream (Hub dataset, Parquet or WebDataset shards) instead of "
                          "materialising it; training then runs by max_steps."},
    )
    data_files: str | None = field(
        default=None,
        metadata={"help": "Shards per split, as a mapping {train: 'shards/train-*.parquet', validation: [...]} (YAML) "
                          "or JSON text; a single glob is the train split. Local paths, globs or URLs "
                          "(hf://, s3://, https://) of .parquet files or WebDataset .tar files."},
    )
    data_format: str | None = field(
        default=None, metadata={"help": "'parquet' or 'webdataset' (default: from the data_files extensions)."}
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "Streaming: examples shuffled together in each block (memory: that many undecoded "
                          "examples per process); 0 or 1 keeps the stream order. Shard order is reshuffled "
                          "every pass."},
    )
    streaming_split: str = field(
        default="auto",
        metadata={"help": "How processes divide the stream (split_dataset_by_node): 'shards' (each reads its own "
                          "shards; needs shards a multiple of the processes), 'examples' (each reads all, keeps 1 in N), "
                          "'auto' (shards when they divide evenly)."},
    )
    streaming_check_samples: int = field(
        default=200, metadata={"help": "Streaming: training pairs decoded by the pre-flight check (the first N)."}
    )
    image_column: str = field(default="image", metadata={"help": "Column with the images (Hub/disk datasets)."})
    label_column: str = field(default="label", metadata={"help": "Column with the masks (Hub/disk datasets)."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="validation", metadata={"help": "Split used for evaluation ('val' also matches)."})
    validation_split: float = field(
        default=0.0,
        metadata={"help": "Fraction of train carved off (seeded) as validation when the data has no validation split."},
    )
    synthetic_data: bool = field(
        default=False,
        metadata={"help": "Generate the built-in synthetic shapes dataset into data_dir if it is not there yet."},
    )
    synthetic_num_train: int = field(default=320, metadata={"help": "Synthetic dataset: training images."})
    synthetic_num_validation: int = field(default=64, metadata={"help": "Synthetic dataset: validation images."})
    synthetic_image_size: int = field(default=128, metadata={"help": "Synthetic dataset: image side in pixels."})
    id2label: str | None = field(
        default=None,
        metadata={"help": "Class names: a mapping in the recipe, JSON text, or a path to id2label.json."},
    )
    num_labels: int | None = field(default=None, metadata={"help": "Number of classes (default: from id2label)."})
    colour_map: str | None = field(
        default=None,
        metadata={"help": "For RGB colour masks: {'#RRGGBB': class_id} in the recipe, or a JSON file of it."},
    )
    ignore_index: int = field(default=255, metadata={"help": "Mask value that is not a class (no loss, no metric)."})
    reduce_labels: bool = field(
        default=False, metadata={"help": "ADE20K style: mask value 0 becomes ignore_index and k becomes k-1."}
    )
    binary_masks: bool = field(
        default=False, metadata={"help": "Masks saved as 0/255 (black/white): 255 is class 1, not the ignore index."}
    )
    allow_empty_classes: bool = field(
        default=False,
        metadata={"help": "Accept a class with no training pixels (the data check refuses one by default)."},
    )
    crop_size: int = field(default=512, metadata={"help": "Training crop side (pixels)."})
    train_scale: list[int] = field(
        default_factory=lambda: [2048, 512],
        metadata={"help": "Random-resize base scale (long side, short side), before ratio_range, as MMSegmentation."},
    )
    ratio_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0], metadata={"help": "Random-resize ratio range."}
    )
    cat_max_ratio: float = field(
        default=0.75, metadata={"help": "Re-draw a crop (up to 10 times) if one class covers more than this share."}
    )
    rare_class_sampling: bool = field(
        default=False,
        metadata={"help": "DAFormer's rare-class sampling: each training image is drawn by first drawing a class with "
                          "P(c) ∝ exp((1 − f_c)/T) (f_c: its share of the training pixels, from the data check), then "
                          "an image containing it. Needs check_data: true."},
    )
    rare_class_temperature: float = field(
        default=0.01, metadata={"help": "T of rare_class_sampling: smaller favours rare classes more (DAFormer: 0.01)."}
    )
    rare_class_crop_prob: float = field(
        default=0.0,
        metadata={"help": "Share of training crops centred on a random pixel of the image's rarest class (rarity: the "
                          "data check's training histogram); these crops skip the cat_max_ratio retries. 0: off."},
    )
    hflip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    photometric_distortion: bool = field(
        default=True, metadata={"help": "Random brightness/contrast/saturation/hue (MMSegmentation's)."}
    )
    cache_images: str = field(
        default="auto",
        metadata={"help": "Keep decoded training images in memory, each decoded once per process instead of at every "
                          "draw (the aerial recipe's transform: 59 → 147 pairs/s, benchmarks/bench_input_pipeline.py). "
                          "auto: when the decoded training split (sizes from the data check) fits in a quarter of the "
                          "memory available, shared by this machine's processes and loader workers; true; false. Not "
                          "for streaming data."},
    )
    eval_size: int = field(
        default=512, metadata={"help": "Evaluation: images are resized to eval_size², labels stay at native size."}
    )
    eval_scale: list[int] | None = field(
        default=None,
        metadata={"help": "Evaluation: resize keeping the aspect ratio to fit (long side, short side), as "
                          "MMSegmentation's test pipeline: train_scale evaluates at the scale the model trained at; "
                          "which scale reads best depends on the data (benchmarks/bench_eval_scale.py measures it "
                          "for a trained model; README, \"Metrics\"). eval_size² squashes other shapes. Saved with "
                          "the model: `hf-segformer evaluate/predict` resize the same way. Unset: eval_size²."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the evaluation set (debugging). With streaming: the validation examples read "
                          "into memory for evaluation (required when there is a validation split)."},
    )
    check_data: bool = field(default=True, metadata={"help": "Run the pre-flight data check before training."})
    check_num_proc: int | None = field(default=None, metadata={"help": "Processes for the data check (default: CPUs)."})

    def __post_init__(self) -> None:
        self.id2label_map = normalise_id2label(self.id2label)
        self.colour_map_rgb = parse_colour_map(self.colour_map)
        check_num_labels(self.num_labels, self.id2label_map)
        self.data_files_map = parse_data_files(self.data_files)
        if self.data_format is not None and self.data_format not in FORMAT_BY_EXTENSION.values():
            raise RecipeError(f"data_format must be 'parquet' or 'webdataset'; got '{self.data_format}'.")
        if self.streaming_split not in SPLIT_STRATEGIES:
            raise RecipeError(f"streaming_split must be one of {', '.join(SPLIT_STRATEGIES)}; "
                              f"got '{self.streaming_split}'.")
        if self.shuffle_buffer_size < 0:
            raise RecipeError(f"shuffle_buffer_size must be ≥ 0; got {self.shuffle_buffer_size}.")
        if self.streaming_check_samples < 1:
            raise RecipeError(f"streaming_check_samples must be ≥ 1; got {self.streaming_check_samples} "
                              "(turn the check off with check_data: false).")
        if not 0.0 <= self.validation_split < 1.0:
            raise RecipeError(f"validation_split must be in [0, 1); got {self.validation_split}.")
        self.cache_images = str(self.cache_images).strip().lower()
        if self.cache_images not in ("auto", "true", "false"):
            raise RecipeError(f"cache_images must be auto, true or false; got '{self.cache_images}'.")
        if self.streaming and self.cache_images == "true":
            raise RecipeError("cache_images: true keeps a split's decoded images in memory; streaming data is read "
                              "once per pass: set cache_images: false (or auto).")
        if self.rare_class_sampling and not self.check_data:
            raise RecipeError("rare_class_sampling uses the data check's per-image class presence: keep check_data: true.")
        if not 0.0 <= self.rare_class_crop_prob <= 1.0:
            raise RecipeError(f"rare_class_crop_prob must be in [0, 1]; got {self.rare_class_crop_prob}.")
        if self.rare_class_crop_prob > 0 and not self.check_data:
            raise RecipeError("rare_class_crop_prob ranks classes by the data check's histogram: keep check_data: true.")
        if not self.rare_class_temperature > 0:
            raise RecipeError(f"rare_class_temperature must be > 0; got {self.rare_class_temperature}.")
        if not isinstance(self.train_scale, (list, tuple)) or not isinstance(self.ratio_range, (list, tuple)) \
                or len(self.train_scale) != 2 or len(self.ratio_range) != 2:
            raise RecipeError(f"train_scale and ratio_range take two numbers each (e.g. train_scale: [2048, 512]); "
                              f"got train_scale: {self.train_scale}, ratio_range: {self.ratio_range}.")
        if self.eval_scale is not None and (not isinstance(self.eval_scale, (list, tuple)) or len(self.eval_scale) != 2
                                            or min(self.eval_scale) <= 0):
            raise RecipeError(f"eval_scale takes two positive numbers (long side, short side), e.g. the train_scale "
                              f"{list(self.train_scale)}; got {self.eval_scale}.")


@dataclass
class ModelArguments:
    """Which SegFormer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder (e.g. nvidia/mit-b0). Unset: build `model_variant` from config."},
    )
    model_variant: str = field(
        default="b0", metadata={"help": "MiT variant b0..b5 built from config with random weights (offline)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a checkpoint whose head has another number of classes."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    model_license: str | None = field(
        default=None,
        metadata={"help": "Hub licence id for the model card. Unset: NVIDIA's SegFormer licence (non-commercial) when "
                          "fine-tuning nvidia/mit-* or nvidia/segformer-* weights, otherwise none declared."},
    )
    hub_space_id: str | None = field(
        default=None,
        metadata={"help": "Hub Space (namespace/name) serving this model's demo (`hf-segformer demo --export-space`); "
                          "the model card written by push_to_hub links to it."},
    )
    token_merging: str | None = field(
        default=None,
        metadata={"help": "Token merging in the encoder's attention (SegFormer++): hq, fast, 2x2, none, or one "
                          "{query, query_ratio, query_stride, kv, kv_ratio, kv_stride, proportional_attention} "
                          "mapping per stage. Applies to a loaded model without retraining; see benchmarks/README.md."},
    )
    fuse_decode_head: bool = field(
        default=True,
        metadata={"help": "Train the decode head in its exact reordered form: each stage's projection and its slice "
                          "of the 1×1 fusion applied as one map before upsampling, summed, then BatchNorm (the "
                          "4·D-channel tensor at 1/4 resolution is never built). Same logits and gradients up to "
                          "float rounding, same saved model; a faster step (README, \"Measured\")."},
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Train with channels-last memory format (often faster on GPUs with tensor cores)."},
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth in the encoder (config default 0.1, as MMSegmentation)."}
    )
    classifier_dropout_prob: float | None = field(
        default=None, metadata={"help": "Dropout before the decode head's classifier (config default 0.1)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})


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
        metadata={"help": "Training loss terms and their weights, e.g. {ce: 1.0, dice: 0.5}; terms: ce, focal, dice, "
                          "ohem. Default: plain cross-entropy."},
    )
    class_weights: str | None = field(
        default=None,
        metadata={"help": "Per-class loss weights: a list, or computed from the training pixel histogram of the "
                          "data check: inverse_frequency | median_frequency | effective_number."},
    )
    class_weight_clip: float | None = field(default=10.0, metadata={"help": "Largest/smallest class weight ratio."})
    class_weight_beta: float = field(default=0.9999, metadata={"help": "beta of effective_number weights."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focal loss focusing parameter."})
    ohem_thresh: float = field(default=0.7, metadata={"help": "OHEM: keep pixels whose true-class probability is below."})
    ohem_min_kept: int = field(default=100_000, metadata={"help": "OHEM: keep at least this many pixels per image."})
    dice_smooth: float = field(default=1.0, metadata={"help": "Dice loss smoothing term."})
    loss_resolution: str = field(
        default="labels",
        metadata={"help": "'labels': logits upsampled to the label size for the loss (as SegFormer's own loss). "
                          "'logits': labels downsampled to the logits' 1/4 resolution (majority of each 4×4 "
                          "cell) instead: 16× less loss memory at 150 classes, see README for the mIoU cost."},
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
    dataloader_num_workers: str = field(
        default="auto",
        metadata={"help": "DataLoader worker processes, or auto: 1 for CPU training (0 on one core), up to 8 when "
                          "an accelerator trains (cores per process - 1)."},
    )

    def __post_init__(self) -> None:
        if self.metric_backend not in METRIC_BACKENDS:
            raise RecipeError(f"metric_backend must be one of {', '.join(METRIC_BACKENDS)}; "
                              f"got '{self.metric_backend}'.")
        self.loss_terms = parse_mapping(self.loss, "loss") if self.loss is not None else {"ce": 1.0}
        unknown = sorted(set(self.loss_terms) - set(LOSS_TERMS))
        if unknown or any(float(w) < 0 for w in self.loss_terms.values()):
            raise RecipeError(f"loss: terms must be among {', '.join(LOSS_TERMS)} with weights ≥ 0; got {self.loss_terms}.")
        if isinstance(self.class_weights, str) and self.class_weights.lstrip().startswith("["):
            self.class_weights = json.loads(self.class_weights)
        if isinstance(self.class_weights, str) and self.class_weights not in WEIGHT_METHODS:
            raise RecipeError(f"class_weights: '{self.class_weights}' is neither a list nor one of "
                              f"{', '.join(WEIGHT_METHODS)}.")
        if self.loss_resolution not in LOSS_RESOLUTIONS:
            raise RecipeError(f"loss_resolution must be one of {', '.join(LOSS_RESOLUTIONS)}; "
                              f"got '{self.loss_resolution}'.")
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


PALETTE_KEYS = ("data_dir", "mask_dir", "colour_map")  # recipe fields that say what the dataset's colours are


def recipe_data_args(recipe: dict, colour_map: str | None = None) -> DataArguments | None:
    """The data fields of a recipe that name the dataset's colours (a `--colour_map` option wins), or None."""
    keys = {key: recipe[key] for key in PALETTE_KEYS if recipe.get(key) is not None}
    if colour_map:
        keys["colour_map"] = colour_map
    return DataArguments(**keys) if keys else None
