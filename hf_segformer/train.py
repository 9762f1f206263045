"""The fine-tuning run: recipe → data → pre-flight check → model → `Trainer.train()` → saved results."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers
from datasets import DatasetDict, Image
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .batchnorm import convert_sync_batchnorm
from .checks import DataReport, check_data
from .configs import DataArguments, ModelArguments, SegformerTrainingArguments
from .data import canonical_split, load_data
from .errors import DataError, RecipeError, TrainingError
from .head_folding import fuse_decode_head_for_training
from .hub import push_model
from .labels import LabelDecoder, find_id2label_file
from .losses import SegmentationLoss, class_weights_from_report, validate_class_weights
from .metrics import LogitsMeanIoU, SegmentationMetrics, load_hub_mean_iou
from .modeling import build_image_processor, build_model
from .reports import write_class_report
from .runchecks import check_run
from .runtime import apply_threads
from .synthetic import write_synthetic_dataset
from .token_merging import apply_token_merging
from .trainer import SegformerTrainer, out_of_memory_message
from .transforms import EvalTransform, SegmentationCollator, TrainTransform
from .visuals import SampleGridCallback, dataset_palette

logger = logging.getLogger("hf_segformer")


def setup_logging(training_args: SegformerTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    # "passive" keeps transformers' warnings-only default, but this package's own lines (world size and batch,
    # class weights, checks) are what a user reads on the main process.
    passive_main = training_args.log_level == "passive" and training_args.should_log
    logger.setLevel(logging.INFO if passive_main else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def prepare_data(data_args: DataArguments, seed: int) -> tuple[DatasetDict, dict[int, str]]:
    """Load the data (generating the synthetic set first if asked) and settle the class names."""
    if data_args.synthetic_data:
        if not data_args.data_dir:
            raise DataError("synthetic_data: true needs data_dir (where the generated dataset is written).")
        write_synthetic_dataset(data_args.data_dir, data_args.synthetic_num_train,
                                data_args.synthetic_num_validation, data_args.synthetic_image_size)
    data = load_data(data_args, seed)
    id2label = data_args.id2label_map or find_id2label_file(data_args.data_dir, data_args.image_dir)
    if id2label is None and data_args.dataset_name:
        id2label = hub_id2label(data_args.dataset_name)
    if id2label is None and data_args.num_labels:
        id2label = {i: f"class_{i}" for i in range(data_args.num_labels)}
    if id2label is None:
        raise DataError("The class names are unknown: set id2label (or num_labels) in the recipe, "
                        "or put an id2label.json next to the data.")
    if len(id2label) == 1:
        raise DataError("One class: a binary task needs both classes named (e.g. {0: background, 1: foreground}); "
                        "SegFormer's softmax over those two logits is the sigmoid model. (The losses in "
                        "hf_segformer.losses also take single-channel logits for custom heads.)")
    if data_args.num_labels and data_args.num_labels != len(id2label):
        raise DataError(f"num_labels={data_args.num_labels} but id2label names {len(id2label)} classes.")
    return data, id2label


def hub_id2label(dataset_name: str) -> dict[int, str] | None:
    """`id2label.json` from a Hub dataset repository, as transformers' example script reads it."""
    if os.path.isdir(dataset_name):
        return find_id2label_file(dataset_name)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    from .labels import normalise_id2label

    try:
        return normalise_id2label(hf_hub_download(dataset_name, "id2label.json", repo_type="dataset"))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError):
        return None


def label_decoder(data_args: DataArguments) -> LabelDecoder:
    return LabelDecoder(data_args.colour_map_rgb, data_args.reduce_labels, data_args.ignore_index)


def run_data_check(data: DatasetDict, data_args: DataArguments, id2label: dict[int, str]) -> DataReport:
    report = check_data(data, label_decoder(data_args), len(id2label), id2label, data_args.check_num_proc)
    print("\nPixels per class:\n" + report.class_table() + "\n")
    return report


def build_loss(training_args: SegformerTrainingArguments, data_args: DataArguments, num_labels: int,
               train_split: str) -> SegmentationLoss:
    """The recipe's loss; class weights computed from the data check's training histogram are saved with the run."""
    weights = training_args.class_weights
    if isinstance(weights, list):
        weights = validate_class_weights(weights, num_labels)
    elif weights is not None:
        histogram = Path(training_args.output_dir) / "class_histogram.json"
        if not data_args.check_data or not histogram.is_file():
            raise RecipeError(f"class_weights: {weights} is computed from the data check's pixel histogram; "
                              "keep check_data: true (or give the weights as a list).")
        weights = class_weights_from_report(DataReport.load(histogram), weights, split=train_split,
                                            clip=training_args.class_weight_clip, beta=training_args.class_weight_beta)
        if training_args.process_index == 0:
            (Path(training_args.output_dir) / "class_weights.json").write_text(json.dumps(weights))
    if weights is not None:
        logger.info("Class weights: %s", ", ".join(f"{w:.3f}" for w in weights))
    return SegmentationLoss(training_args.loss_terms, class_weights=weights, ignore_index=data_args.ignore_index,
                            focal_gamma=training_args.focal_gamma, ohem_thresh=training_args.ohem_thresh,
                            ohem_min_kept=training_args.ohem_min_kept, dice_smooth=training_args.dice_smooth,
                            resolution=training_args.loss_resolution)


def resolve_checkpoint(training_args: SegformerTrainingArguments) -> str | None:
    """`resume_from_checkpoint: last` → newest checkpoint; refuse to train over another run's checkpoints."""
    output_dir = training_args.output_dir
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    resume = training_args.resume_from_checkpoint
    if resume == "last":
        if last is None:
            raise RecipeError(f"resume_from_checkpoint=last but {output_dir} has no checkpoint-* folder.")
        return last
    if resume is None and last is not None and not training_args.overwrite_output_dir:
        raise RecipeError(f"{output_dir} already holds checkpoints of an earlier run ({last}). Continue it with "
                         "--resume_from_checkpoint last, pick another --output_dir, or pass --overwrite_output_dir.")
    return resume


def log_runtime(training_args: SegformerTrainingArguments, threads: str) -> None:
    """The first lines of a run: what it runs on and why, before anything else is printed."""
    device = training_args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}"
    logger.info("Device: %s; torch threads: %s; loader workers: %d (%s); precision: %s (%s)", name, threads,
                training_args.dataloader_num_workers, training_args.loader_workers_reason,
                training_args.precision, training_args.precision_reason)


def main(data_args: DataArguments, model_args: ModelArguments, training_args: SegformerTrainingArguments) -> dict:
    setup_logging(training_args)
    threads = apply_threads(training_args.torch_threads)
    log_runtime(training_args, f"{threads.value} ({threads.why})")
    logger.debug("Training arguments %s", training_args)
    check_run(training_args)  # precision agrees with the Accelerate config, output_dir writable with free space
    checkpoint = resolve_checkpoint(training_args)
    # metric_backend: evaluate_hub fetches evaluate's mean_iou now: a machine without the Hub fails before any work.
    hub_mean_iou = load_hub_mean_iou() if training_args.metric_backend == "evaluate_hub" else None
    set_seed(training_args.seed)

    with training_args.main_process_first(local=False, desc="preparing data"):
        data, id2label = prepare_data(data_args, training_args.seed)
        if data_args.check_data and training_args.process_index == 0:
            run_data_check(data, data_args, id2label).save(training_args.output_dir)

    train_split, eval_split = canonical_split(data_args.train_split), canonical_split(data_args.eval_split)
    loss_fn = build_loss(training_args, data_args, len(id2label), train_split)
    if training_args.eval_strategy != "no" and eval_split not in data:
        raise DataError(f"No '{data_args.eval_split}' split to evaluate on (the data has {sorted(data)}). "
                        "Set validation_split: 0.1 to carve one from train, or eval_strategy: 'no'.")

    decoder = label_decoder(data_args)
    undecoded = {name: ds.cast_column("image", Image(decode=False)).cast_column("label", Image(decode=False))
                 for name, ds in data.items()}
    train_dataset = undecoded[train_split].with_transform(TrainTransform(
        decoder, data_args.crop_size, tuple(data_args.train_scale), tuple(data_args.ratio_range),
        data_args.cat_max_ratio, data_args.hflip_prob, data_args.photometric_distortion, data_args.ignore_index,
    ))
    eval_dataset = undecoded[eval_split].with_transform(EvalTransform(decoder, data_args.eval_size)) if eval_split in undecoded else None

    model = build_model(model_args, id2label, data_args.ignore_index)
    if model_args.fuse_decode_head and not fuse_decode_head_for_training(model):
        logger.info("The decode head cannot be reordered (not transformers' SegformerDecodeHead): trained as it is.")
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if model_args.token_merging:
        apply_token_merging(model, model_args.token_merging)
    sync_batchnorm = training_args.sync_batchnorm and training_args.world_size > 1
    if sync_batchnorm:
        model = convert_sync_batchnorm(model, on_gpu=training_args.device.type == "cuda")
    logger.info("%d process(es) (%s), per-device train batch %d × gradient accumulation %d → %d images per "
                "optimizer step; decode-head BatchNorm %s", training_args.world_size,
                training_args.distributed_state.distributed_type, training_args.per_device_train_batch_size,
                training_args.gradient_accumulation_steps,
                training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                * training_args.world_size,
                "synchronised" if sync_batchnorm else "per process")
    image_processor = build_image_processor(data_args.eval_size)
    metrics = (LogitsMeanIoU(hub_mean_iou, id2label, data_args.ignore_index) if hub_mean_iou is not None
               else SegmentationMetrics(len(id2label), id2label))
    trainer = SegformerTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=SegmentationCollator(tuple(image_processor.image_mean), tuple(image_processor.image_std)),
        processing_class=image_processor, compute_metrics=metrics, ignore_index=data_args.ignore_index, loss_fn=loss_fn,
        eval_confusion=hub_mean_iou is None,
    )
    if eval_dataset is not None:  # image | ground truth | prediction | errors, at every evaluation
        SampleGridCallback.attach(trainer, undecoded[eval_split], decoder,
                                  palette=dataset_palette(len(id2label), data_args))

    results: dict = {}
    try:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    except torch.OutOfMemoryError as err:
        raise TrainingError(out_of_memory_message(training_args, data_args.crop_size, "training")) from err
    trainer.save_model()
    if training_args.device.type == "cuda":
        train_result.metrics["train_peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    results.update(train_result.metrics)
    if eval_dataset is not None:
        try:
            eval_metrics = trainer.evaluate()
        except torch.OutOfMemoryError as err:
            raise TrainingError(out_of_memory_message(training_args, data_args.crop_size, "evaluation")) from err
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        results.update(eval_metrics)
        if trainer.is_world_process_zero() and metrics.last_confusion is not None:
            write_class_report(training_args.output_dir, metrics.last_confusion, id2label)

    if training_args.push_to_hub:
        push_model(trainer, data_args, model_args)  # model card from this run (cards.py), main process only
    return results
