"""A training run's data: loaded (or generated) and checked once on the main process, then its training and
evaluation splits with their transforms applied on the fly (a streaming training set as this process's part of the
stream). The run's settings come from its TrainingArguments (seed, processes, loader workers, output_dir)."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import canonical_split
from hf_segformer.data.augmented_pairs import AugmentedPairs
from hf_segformer.data.image_cache import DecodedImageCache, plan_cache
from hf_segformer.data.loading import undecoded
from hf_segformer.data.preflight import DataReport
from hf_segformer.data.prepare import build_label_decoder, prepare_data, run_data_check
from hf_segformer.data.rare_classes import rarest_first
from hf_segformer.data.scale_choice import scale_line, settle_scale
from hf_segformer.data.streaming import StreamingData
from hf_segformer.data.train_stream import TrainStream
from hf_segformer.data.transforms import EvalTransform, TrainTransform
from hf_segformer.errors import DataError
from hf_segformer.runtime import available_memory, local_processes

logger = logging.getLogger("hf_segformer")


def load_checked_data(data_args: DataArguments, training_args: TrainingArguments,
                      ) -> tuple[DatasetDict | StreamingData, dict[int, str], DataReport | None]:
    """The data and its class names, and the data check's report: the main process loads and checks every pair
    and saves the report; the others wait, then load the data and read the same report. The report (None without
    the check) gives the class weights, the rare-class sampler and crops, and the image cache's sizing."""
    with training_args.main_process_first(local=False, desc="preparing data"):
        data, id2label = prepare_data(data_args, training_args.seed, training_args)
        if data_args.check_data and training_args.process_index == 0:
            run_data_check(data, data_args, id2label).save(training_args.output_dir)
    path = Path(training_args.output_dir) / "class_histogram.json"
    report = DataReport.load(path) if data_args.check_data and path.is_file() else None
    if data_args.auto_scale_fields:  # every process fills them from the same report
        train = report.splits.get(canonical_split(data_args.train_split)) if report is not None else None
        choice = settle_scale(data_args, report.thinness if report is not None else None,
                              train.image_sizes if train is not None else [], id2label)
        logger.info(scale_line(data_args, choice))
    return data, id2label, report


def build_datasets(data: DatasetDict | StreamingData, data_args: DataArguments,
                   training_args: TrainingArguments, report: DataReport | None, num_labels: int | None = None,
                   ) -> tuple[AugmentedPairs | TrainStream, Dataset | None, Dataset | None]:
    """The training and evaluation splits with their transforms applied on the fly, and the raw evaluation split
    (for the sample grid); the evaluation split is None when the run does not evaluate. Streaming: the training
    set is this process's part of the stream (`TrainStream`), the evaluation split the bounded validation set."""
    train_split, eval_split = canonical_split(data_args.train_split), canonical_split(data_args.eval_split)
    stream_source = None
    if isinstance(data, StreamingData):
        stream_source = data.train
        data = DatasetDict({eval_split: data.evaluation} if data.evaluation is not None else {})
    if training_args.eval_strategy != "no" and eval_split not in data:
        splits = sorted([train_split, *data]) if stream_source is not None else sorted(data)
        raise DataError(f"No '{data_args.eval_split}' split to evaluate on (the data has {splits}). "
                        "Set validation_split: 0.1 to carve one from train (streaming: data_files: {validation: ...}), "
                        "or eval_strategy: 'no'.")
    decoder = build_label_decoder(data_args, num_labels)
    num_channels = report.num_channels if report is not None else None  # settled by the check (recipe or data)
    rarest = rarest_first(report.splits[train_split].class_counts) if data_args.rare_class_crop_prob > 0 else ()
    train_transform = TrainTransform(
        decoder, data_args.crop_size, tuple(data_args.train_scale), tuple(data_args.ratio_range),
        data_args.cat_max_ratio, data_args.hflip_prob, data_args.photometric_distortion, data_args.ignore_index,
        data_args.rare_class_crop_prob, rarest, num_channels=num_channels,
    )
    if stream_source is not None:  # decoded in dataloader_num_workers processes of the stream's own
        train_dataset = TrainStream(stream_source, train_transform, seed=training_args.data_seed or training_args.seed,
                                    shuffle_buffer_size=data_args.shuffle_buffer_size,
                                    rank=training_args.process_index, world_size=training_args.world_size,
                                    split=data_args.streaming_split, num_workers=training_args.dataloader_num_workers,
                                    mp_context=training_args.dataloader_multiprocessing_context)
    else:
        # band stacks are read as they are stored; the cache keeps decoded 8-bit RGB pairs
        train_transform.cache = image_cache(data_args, training_args, train_split, report) if num_channels is None \
            else None
        train_dataset = AugmentedPairs(undecoded(data[train_split]), train_transform,
                                       seed=training_args.data_seed or training_args.seed)
    if eval_split not in data:
        return train_dataset, None, None
    raw_eval = undecoded(data[eval_split])
    eval_transform = EvalTransform(decoder, data_args.eval_size,
                                   tuple(data_args.eval_scale) if data_args.eval_scale else None, num_channels)
    return train_dataset, raw_eval.with_transform(eval_transform), raw_eval


def image_cache(data_args: DataArguments, training_args: TrainingArguments, split: str,
                report: DataReport | None) -> DecodedImageCache | None:
    """The decoded-image cache `cache_images` asks for; `auto` sizes the split from the data check's report, against
    the memory available now, shared by this machine's processes and each one's loader workers."""
    train = report.splits.get(split) if report is not None and data_args.cache_images == "auto" else None
    sizes = train.image_sizes if train is not None else None
    workers = training_args.dataloader_num_workers
    cache, why = plan_cache(data_args.cache_images, sizes, available_memory(), local_processes() * max(workers, 1),
                            workers_restart=workers > 0 and not training_args.dataloader_persistent_workers)
    logger.info("Decoded training images %s (%s).", "kept in memory" if cache is not None else "not cached", why)
    return cache
