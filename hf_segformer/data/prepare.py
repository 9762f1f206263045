"""From a recipe's data fields to a checked dataset: load (or generate) it, settle the class names, build the
label decoder, run the pre-flight check. Shared by training, check-data, evaluation and push-dataset.
With `streaming: true` the data is a `StreamingData` (the training stream and the bounded validation set)."""

from __future__ import annotations

import logging
import os
from typing import Any

from datasets import DatasetDict

from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import canonical_split, check_label_map_targets, check_num_labels, normalise_id2label
from hf_segformer.data.bands import stack_file_bands
from hf_segformer.data.doctor import UNLABELLED_NAMES, empty_class_problems, unlabelled_hint
from hf_segformer.data.images import entry_name
from hf_segformer.data.labels import LabelDecoder, find_id2label_file, numbered_classes
from hf_segformer.data.loading import load_data, undecoded
from hf_segformer.data.preflight import DataReport, check_data
from hf_segformer.data.scale_choice import choose_scale, scale_line
from hf_segformer.data.streaming import (
    StreamingData,
    check_streaming_data,
    find_id2label_near_shards,
    load_streaming_data,
)
from hf_segformer.data.synthetic import write_synthetic_dataset
from hf_segformer.data.thinness import measure_thinness
from hf_segformer.errors import DataError, problems_message

logger = logging.getLogger("hf_segformer")


def prepare_data(data_args: DataArguments, seed: int,
                 training_args: Any = None) -> tuple[DatasetDict | StreamingData, dict[int, str]]:
    """Load the data (generating the synthetic set first if asked) and settle the class names. A streaming recipe
    is checked against `training_args` (max_steps, strategies) before anything is read."""
    if data_args.synthetic_data:
        if not data_args.data_dir:
            raise DataError("synthetic_data: true needs data_dir (where the generated dataset is written).")
        write_synthetic_dataset(data_args.data_dir, data_args.synthetic_num_train,
                                data_args.synthetic_num_validation, data_args.synthetic_image_size)
    data = load_streaming_data(data_args, training_args) if data_args.streaming else load_data(data_args, seed)
    # Every source is found first and read once, at the end: the recipe's names, an id2label.json next to the
    # folders or the shards, the Hub dataset's, or numbered classes.
    near_file = find_id2label_file(data_args.data_dir, data_args.image_dir)
    source: dict | str | None = (data_args.id2label_map or near_file
                                 or find_id2label_near_shards(data_args.data_files_map))
    if source is None and data_args.dataset_name:
        source = hub_id2label_file(data_args.dataset_name)
    if source is None and data_args.num_labels:
        source = numbered_classes(data_args.num_labels)
    id2label = normalise_id2label(source)
    near_data = normalise_id2label(near_file) if data_args.id2label_map and near_file else None
    if near_data and near_data != data_args.id2label_map:
        # The recipe's names win (renaming classes is a recipe's right), but a different count or order usually
        # means the recipe was written for other data: say so before training on it.
        logger.warning("The recipe's id2label %s differs from the id2label.json next to the data %s: the recipe's "
                       "is used. If the masks were made with the data's, remove id2label from the recipe.",
                       data_args.id2label_map, near_data)
    if id2label is None:
        raise DataError("The class names are unknown: set id2label (or num_labels) in the recipe, "
                        "or put an id2label.json next to the data.")
    if len(id2label) == 1:
        raise DataError("One class: a binary task needs both classes named (e.g. {0: background, 1: foreground}); "
                        "SegFormer's softmax over those two logits is the sigmoid model. (The losses in "
                        "hf_segformer.training.losses also take single-channel logits for custom heads.)")
    check_num_labels(data_args.num_labels, id2label)
    if 0 <= data_args.ignore_index < len(id2label) and not _unlabelled(id2label[data_args.ignore_index]):
        raise DataError(f"id2label names {len(id2label)} classes, so class {data_args.ignore_index} "
                        f"'{id2label[data_args.ignore_index]}' is ignore_index={data_args.ignore_index}: its pixels "
                        "would be ignored, never learnt. Set ignore_index to a value no class uses (e.g. -1 when the "
                        "masks mark nothing as unlabelled), or drop that class.")
    check_label_map_targets(data_args.label_map_ids, len(id2label), data_args.ignore_index)
    return data, id2label


def _unlabelled(name: str) -> bool:
    """A class named like "void" or "unlabelled": ignoring it is what its name says."""
    return name.strip().lower() in UNLABELLED_NAMES


def hub_id2label_file(dataset_name: str) -> str | None:
    """The local path of `id2label.json` from a Hub dataset repository (as transformers' example script reads it),
    or next to a dataset saved on disk."""
    if os.path.isdir(dataset_name):
        return find_id2label_file(dataset_name)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(dataset_name, "id2label.json", repo_type="dataset")
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError):
        return None


def build_label_decoder(data_args: DataArguments, num_labels: int | None = None) -> LabelDecoder:
    """The one mask decoder of a recipe; with `num_labels`, a value outside the classes is an error naming the
    file where a mask is read (training and evaluation, with or without the pre-flight check)."""
    return LabelDecoder(data_args.colour_map_rgb, data_args.reduce_labels, data_args.ignore_index,
                        binary_masks=data_args.binary_masks, label_map=data_args.label_map_ids,
                        label_map_default=data_args.label_map_default, num_labels=num_labels)


def settle_num_channels(data: DatasetDict, data_args: DataArguments) -> tuple[int | None, str]:
    """(bands per image, where that comes from): the recipe's num_channels, else inferred from the first training
    image when it is a stack the RGB path would squash (.npy; TIFF with more than three bands or 8 bits), else
    (None, ""): 8-bit RGB."""
    if data_args.num_channels is not None:
        return data_args.num_channels, "the recipe's num_channels"
    split = canonical_split(data_args.train_split)
    if split not in data or len(data[split]) == 0:
        return None, ""
    entry = undecoded(data[split])[0]["image"]
    bands = stack_file_bands(entry)
    if bands is None:
        return None, ""
    logger.info("num_channels: %d, inferred from %s (set num_channels in the recipe to state it).", bands,
                entry_name(entry))
    return bands, f"inferred from the data: {entry_name(entry)} has {bands} band{'s' if bands != 1 else ''}"


def run_data_check(data: DatasetDict | StreamingData, data_args: DataArguments, id2label: dict[int, str]) -> DataReport:
    streaming = isinstance(data, StreamingData)
    if streaming:  # the first streaming_check_samples training pairs + the bounded validation set
        report = check_streaming_data(data, build_label_decoder(data_args), len(id2label), id2label,
                                      data_args.streaming_check_samples, data_args.check_num_proc)
    else:
        num_channels, source = settle_num_channels(data, data_args)
        report = check_data(data, build_label_decoder(data_args), len(id2label), id2label, data_args.check_num_proc,
                            num_channels, source)
    train = report.splits.get(canonical_split(data_args.train_split))
    if train is not None and not data_args.allow_empty_classes:
        empty = empty_class_problems(train.pixel_counts, id2label, data_args.ignore_index, data_args.binary_masks,
                                     data_args.train_split)
        if empty and streaming:  # a class missing from the first pairs may still come later in the stream
            logger.warning(problems_message(f"Not in the first {train.num_samples} training pairs of the stream",
                                            empty))
        elif empty:
            raise DataError(problems_message("The training data cannot teach every class", empty))
    if train is not None and not streaming:  # how thin each class is, on a bounded sample of training masks
        report.thinness = measure_thinness(undecoded(data[canonical_split(data_args.train_split)]),
                                           build_label_decoder(data_args), len(id2label))
    report.scale_choice = scale_line(data_args, choose_scale(report.thinness, train.image_sizes if train else [],
                                                             id2label))
    hint = unlabelled_hint(id2label, data_args.reduce_labels)
    if hint:
        logger.warning(hint)
    print("\nPixels per class:\n" + report.tables() + "\n")
    return report
