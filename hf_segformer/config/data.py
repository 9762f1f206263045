"""The recipe's data fields (`DataArguments`): where the images and masks come from and how they are augmented.

Light on purpose: imports nothing heavy (no transformers, no torch), so the commands that only read data
(check-data, coco-to-masks, import-annotations) and the parsers of other commands share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_segformer.config.values import (
    LABEL_MAP_DEFAULTS,
    check_choice,
    check_ignore_index,
    check_label_map_targets,
    check_max_image_pixels,
    check_num_labels,
    normalise_id2label,
    parse_colour_map,
    parse_data_files,
    parse_label_map,
)
from hf_segformer.errors import RecipeError

SPLIT_STRATEGIES = ("auto", "shards", "examples")  # how processes divide a stream (datasets' split_dataset_by_node)
AUTO = "auto"  # crop_size, train_scale, eval_scale: chosen from the data (`data.scale_choice`)
FORMAT_BY_EXTENSION = {".parquet": "parquet", ".tar": "webdataset"}
DATA_FORMATS = tuple(FORMAT_BY_EXTENSION.values())


# DataArguments fields only training reads (augmentation, the synthetic set, the pre-flight check, the model
# card's dataset): hidden from the --help of evaluate, predict and demo (`config.parser.command_parser`).
TRAINING_ONLY_DATA_FIELDS = frozenset({
    "crop_size", "train_scale", "ratio_range", "cat_max_ratio", "hflip_prob", "photometric_distortion",
    "synthetic_data", "synthetic_num_train", "synthetic_num_validation", "synthetic_image_size",
    "train_split", "max_train_samples", "check_data", "check_num_proc", "hub_dataset_id", "num_channels",
    "display_bands", "eval_subset_size",
})

MAX_IMAGE_PIXELS_HELP = ("PIL's image size limit in pixels (width × height): an image over twice it is refused as a "
                         "possible decompression bomb (by default, over about 179 million pixels). An image's error "
                         "gives the value that allows it. 0 = no limit. Default: PIL's limit.")


@dataclass
class DataArguments:
    """Where the images and masks come from, and how they are augmented."""

    _argument_group_name = "Data (see docs/data.md)"

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
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_IMAGE_PIXELS_HELP})
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
    label_map: str | None = field(
        default=None,
        metadata={"help": "Raw mask value → class id, e.g. {7: 0, 8: 1, 11: 2} (merge by sending several values to one "
                          "id; drop a value by sending it to ignore_index), in the recipe, JSON text or a JSON file. "
                          "Applied wherever masks are read (training, evaluation, the data check)."},
    )
    label_map_default: str = field(
        default="ignore",
        metadata={"help": "With label_map: raw values it does not name become ignore_index ('ignore') or stay as "
                          "they are ('keep')."},
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
    crop_size: str = field(
        default="512",
        metadata={"help": "Training crop side (pixels), or auto: chosen from the data with train_scale (256, smaller "
                          "only for small images; docs/training.md, \"Scale from the data\")."},
    )
    train_scale: list[str] = field(
        default_factory=lambda: [2048, 512],
        metadata={"help": "Random-resize base scale (long side, short side), before ratio_range, as MMSegmentation; "
                          "or auto: chosen from the data check's measure of the thinnest class and the image sizes "
                          "(docs/training.md, \"Scale from the data\")."},
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
    num_channels: int | None = field(
        default=None,
        metadata={"help": "Bands per image (e.g. 4 for RGB + NIR): images are read as they are stored (.npy, TIFF "
                          "stacks, 16-bit grey PNG) without conversion to 8-bit RGB, normalised by the per-band "
                          "mean/std the data check measures on the training split. Unset: 8-bit RGB, unless the "
                          "check finds .npy or TIFF stacks (more than three bands or more than 8 bits) and infers it. "
                          "See docs/data.md."},
    )
    display_bands: list[int] | None = field(
        default=None,
        metadata={"help": "With num_channels: the three bands (0-based) overlays and sample grids draw as red, green, "
                          "blue, each stretched from its 2nd to 98th percentile. Default: the first three."},
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
    eval_scale: list[str] | None = field(
        default=None,
        metadata={"help": "Evaluation: resize keeping the aspect ratio to fit (long side, short side), as "
                          "MMSegmentation's test pipeline: train_scale evaluates at the scale the model trained at; "
                          "which scale reads best depends on the data (benchmarks/bench_eval_scale.py measures it "
                          "for a trained model; docs/evaluation.md). eval_size² squashes other shapes. Saved with "
                          "the model: `hf-segformer evaluate/predict` resize the same way. auto: chosen from the data "
                          "with train_scale (docs/training.md). Unset: eval_size²."},
    )
    eval_subset_size: str = field(
        default="auto",
        metadata={"help": "Evaluations during training read this many validation images, the same ones each time "
                          "(spread evenly over the split); the evaluation after training reads the whole split. "
                          "auto: under a max_time budget (evaluating is time not spent learning) at most 64, as many "
                          "as the in-loop evaluations read in about a tenth of max_time, else the whole split; 0: the "
                          "whole split."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the evaluation set (debugging). With streaming: the validation examples read "
                          "into memory for evaluation (default when unset: the first 500)."},
    )
    check_data: bool = field(default=True, metadata={"help": "Run the pre-flight data check before training."})
    check_num_proc: int | None = field(default=None, metadata={"help": "Processes for the data check (default: CPUs)."})

    def __post_init__(self) -> None:
        self.id2label_map = normalise_id2label(self.id2label)
        self.colour_map_rgb = parse_colour_map(self.colour_map)
        check_num_labels(self.num_labels, self.id2label_map)
        self.data_files_map = parse_data_files(self.data_files)
        if self.data_format is not None:
            check_choice("data_format", self.data_format, DATA_FORMATS)
        check_choice("streaming_split", self.streaming_split, SPLIT_STRATEGIES)
        check_max_image_pixels(self.max_image_pixels)
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
        self._read_scale_fields()
        if str(self.eval_subset_size).strip().lower() == AUTO:
            self.eval_subset_size = AUTO
        elif not str(self.eval_subset_size).isdigit():
            raise RecipeError(f"eval_subset_size takes a number of images ≥ 0 (0: the whole split) or auto; got "
                              f"{self.eval_subset_size!r}.")
        else:
            self.eval_subset_size = int(self.eval_subset_size)
        if not isinstance(self.ratio_range, (list, tuple)) or len(self.ratio_range) != 2 or (
                self.train_scale != AUTO and len(self.train_scale) != 2):
            raise RecipeError(f"train_scale and ratio_range take two numbers each (e.g. train_scale: [2048, 512]); "
                              f"got train_scale: {self.train_scale}, ratio_range: {self.ratio_range}.")
        if self.eval_scale not in (None, AUTO) and (len(self.eval_scale) != 2 or min(self.eval_scale) <= 0):
            raise RecipeError(f"eval_scale takes two positive numbers (long side, short side), e.g. the train_scale "
                              f"{list(self.train_scale)}; got {self.eval_scale}.")
        check_ignore_index(self.ignore_index)
        self._check_label_map()
        self._check_bands()

    def _check_bands(self) -> None:
        """num_channels needs the data check (it measures the per-band mean/std the model is normalised with)."""
        if self.num_channels is not None:
            if not isinstance(self.num_channels, int) or self.num_channels < 1:
                raise RecipeError(f"num_channels must be a positive number of bands; got {self.num_channels}.")
            if not self.check_data:
                raise RecipeError("num_channels: the data check measures the per-band mean/std the model is "
                                  "normalised with: keep check_data: true.")
            if self.streaming:
                raise RecipeError("num_channels is not supported with streaming: true yet; write the images to an "
                                  "image/mask folder (.npy or TIFF stacks) instead.")
        if self.display_bands is not None:
            bands = [int(b) for b in self.display_bands]
            if len(bands) != 3 or min(bands) < 0 or (self.num_channels is not None and max(bands) >= self.num_channels):
                raise RecipeError(f"display_bands takes three band numbers from 0 to num_channels - 1 (red, green, "
                                  f"blue); got {self.display_bands}.")
            self.display_bands = bands

    def _read_scale_fields(self) -> None:
        """crop_size, train_scale and eval_scale are numbers, or `auto` (chosen from the data at the start of the
        run: `data.scale_choice`); `auto_scale_fields` names those left to the data."""
        self.crop_size = _number_or_auto("crop_size", self.crop_size)
        self.train_scale = _numbers_or_auto("train_scale", self.train_scale)
        self.eval_scale = None if self.eval_scale is None else _numbers_or_auto("eval_scale", self.eval_scale)
        self.auto_scale_fields = tuple(name for name in ("crop_size", "train_scale", "eval_scale")
                                       if getattr(self, name) == AUTO)

    def _check_label_map(self) -> None:
        """label_map decides each raw value's class by itself: the other mask decodings would re-map its result."""
        self.label_map_ids = parse_label_map(self.label_map)
        check_choice("label_map_default", self.label_map_default, LABEL_MAP_DEFAULTS)
        if self.label_map_ids is None:
            return
        clashes = {"colour_map": ("colour masks are mapped by colour_map alone (send several colours to one id to "
                                  "merge, to ignore_index to drop)") if self.colour_map_rgb else None,
                   "reduce_labels": "write its 0 → ignore_index and k → k-1 into label_map" if self.reduce_labels
                   else None,
                   "binary_masks": "write {0: 0, 255: 1} into label_map" if self.binary_masks else None}
        for name, how in clashes.items():
            if how:
                raise RecipeError(f"label_map and {name} both re-map mask values; use label_map alone: {how}.")
        check_label_map_targets(self.label_map_ids, self.num_labels or (len(self.id2label_map) if self.id2label_map
                                                                        else None), self.ignore_index)


def _number_or_auto(name: str, value: object) -> int | str:
    if str(value).strip().lower() == AUTO:
        return AUTO
    try:
        number = int(str(value))
    except ValueError:
        raise RecipeError(f"{name} takes a whole number of pixels or auto; got {value!r}.") from None
    if number <= 0:
        raise RecipeError(f"{name} must be > 0 pixels (or auto); got {number}.")
    return number


def _numbers_or_auto(name: str, value: object) -> list[int] | str:
    """A scale: [long, short] (from YAML, or two command-line words), or auto (one word)."""
    words = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(words) == 1 and str(words[0]).strip().lower() == AUTO:
        return AUTO
    try:
        return [int(str(word)) for word in words]
    except ValueError:
        raise RecipeError(f"{name} takes two numbers (long side, short side), e.g. [2048, 512], or auto; "
                          f"got {value!r}.") from None


PALETTE_KEYS = ("data_dir", "mask_dir", "colour_map")  # recipe fields that say what the dataset's colours are


def recipe_data_args(recipe: dict, colour_map: str | None = None) -> DataArguments | None:
    """The data fields of a recipe that name the dataset's colours (a `--colour_map` option wins), or None."""
    keys = {key: recipe[key] for key in PALETTE_KEYS if recipe.get(key) is not None}
    if colour_map:
        keys["colour_map"] = colour_map
    return DataArguments(**keys) if keys else None
