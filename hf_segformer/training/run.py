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
from datasets import DatasetDict
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.config.values import canonical_split
from hf_segformer.data.image_cache import DecodedImageCache, plan_cache
from hf_segformer.data.loading import undecoded
from hf_segformer.data.palettes import dataset_palette
from hf_segformer.data.preflight import DataReport
from hf_segformer.data.prepare import build_label_decoder, prepare_data, run_data_check
from hf_segformer.data.rare_classes import RareClassSampler, load_presence
from hf_segformer.data.streaming import StreamingData
from hf_segformer.data.transforms import EvalTransform, SegmentationCollator, TrainTransform
from hf_segformer.errors import DataError, RecipeError, TrainingError
from hf_segformer.evaluation.metrics import LogitsMeanIoU, SegmentationMetrics, load_hub_mean_iou
from hf_segformer.evaluation.reports import write_class_report
from hf_segformer.hub.publish import push_model
from hf_segformer.logits import check_ignore_index
from hf_segformer.modeling.batchnorm import convert_sync_batchnorm
from hf_segformer.modeling.build import build_image_processor, build_model, check_model_folder
from hf_segformer.modeling.head_folding import fuse_decode_head_for_training
from hf_segformer.modeling.token_merging import apply_token_merging, resolve_token_merging
from hf_segformer.outputs import claim_output_dir, mark_run_folder
from hf_segformer.runtime import Choice, apply_threads, available_memory, keep_freed_memory, local_processes
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.budget import TimeBudgetCallback, fixed_speed_metrics
from hf_segformer.training.callbacks import LastEvaluation, SampleGridCallback
from hf_segformer.training.ema import WeightAverage
from hf_segformer.training.losses import SegmentationLoss, class_weights_from_report, validate_class_weights
from hf_segformer.training.run_checks import check_field_combinations, check_run
from hf_segformer.training.stream import TrainStream
from hf_segformer.training.trainer import SegformerTrainer, out_of_memory_message

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


def data_report(data_args: DataArguments, training_args: SegformerTrainingArguments) -> DataReport | None:
    """The data check's report as the main process saved it (every process reads the same file); None without the
    check. The class weights, the rare-class sampler and crops, and the image cache's sizing all come from it."""
    path = Path(training_args.output_dir) / "class_histogram.json"
    return DataReport.load(path) if data_args.check_data and path.is_file() else None


def build_loss(training_args: SegformerTrainingArguments, data_args: DataArguments, num_labels: int,
               train_split: str, report: DataReport | None) -> SegmentationLoss:
    """The recipe's loss; class weights computed from the data check's training histogram are saved with the run."""
    weights = training_args.class_weights
    if isinstance(weights, list):
        weights = validate_class_weights(weights, num_labels)
    elif weights is not None:
        if report is None:
            raise RecipeError(f"class_weights: {weights} is computed from the data check's pixel histogram; "
                              "keep check_data: true (or give the weights as a list).")
        weights = class_weights_from_report(report, weights, split=train_split,
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
    if resume not in (None, "last") and not os.path.isdir(resume):
        raise RecipeError(f"resume_from_checkpoint: {resume} is not a folder; give a checkpoint-* folder of an "
                          "earlier run, or 'last' for the newest one in output_dir.")
    if resume == "last":
        if last is None:
            raise RecipeError(f"resume_from_checkpoint=last but {output_dir} has no checkpoint-* folder.")
        check_checkpoint_files(last)
        return last
    if resume is not None:
        check_checkpoint_files(resume)
    if resume is None and last is not None and not training_args.overwrite_output_dir:
        raise RecipeError(f"{output_dir} already holds checkpoints of an earlier run ({last}). Continue it with "
                         "--resume_from_checkpoint last, pick another --output_dir, or pass --overwrite_output_dir.")
    return resume


def check_checkpoint_files(folder: str) -> None:
    """A checkpoint cut short (a copy interrupted, a full disk) fails here, naming the file, before any work."""
    from safetensors import safe_open

    for name in ("model.safetensors", "trainer_state.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            if name.endswith(".json"):
                json.loads(Path(path).read_text())
            else:
                with safe_open(path, "pt"):
                    pass
        except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError derives from Exception alone
            raise RecipeError(f"resume_from_checkpoint: {path} is damaged ({type(err).__name__}: {err}); resume "
                              "from an earlier checkpoint-* folder, or start again with --overwrite_output_dir.") from err


def log_runtime(training_args: SegformerTrainingArguments, threads: str, memory: str) -> None:
    """The first lines of a run: what it runs on and why, before anything else is printed."""
    device = training_args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}"
    logger.info("Device: %s; torch threads: %s; loader workers: %d (%s); precision: %s (%s); freed memory: %s",
                name, threads, training_args.dataloader_num_workers, training_args.loader_workers_reason,
                training_args.precision, training_args.precision_reason, memory)


def build_datasets(data: DatasetDict | StreamingData, data_args: DataArguments,
                   training_args: SegformerTrainingArguments, report: DataReport | None):
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
    decoder = build_label_decoder(data_args)
    train_transform = TrainTransform(
        decoder, data_args.crop_size, tuple(data_args.train_scale), tuple(data_args.ratio_range),
        data_args.cat_max_ratio, data_args.hflip_prob, data_args.photometric_distortion, data_args.ignore_index,
        data_args.rare_class_crop_prob, rarest_first(data_args, report, train_split),
    )
    if stream_source is not None:  # decoded in dataloader_num_workers processes of the stream's own
        train_dataset = TrainStream(stream_source, train_transform, seed=training_args.data_seed or training_args.seed,
                                    shuffle_buffer_size=data_args.shuffle_buffer_size,
                                    rank=training_args.process_index, world_size=training_args.world_size,
                                    split=data_args.streaming_split, num_workers=training_args.dataloader_num_workers,
                                    mp_context=training_args.dataloader_multiprocessing_context)
    else:
        train_transform.cache = image_cache(data_args, training_args, train_split, report)
        train_dataset = undecoded(data[train_split]).with_transform(train_transform)
    if eval_split not in data:
        return train_dataset, None, None
    raw_eval = undecoded(data[eval_split])
    return train_dataset, raw_eval.with_transform(EvalTransform(
        decoder, data_args.eval_size, tuple(data_args.eval_scale) if data_args.eval_scale else None)), raw_eval


def image_cache(data_args: DataArguments, training_args: SegformerTrainingArguments, split: str,
                report: DataReport | None) -> DecodedImageCache | None:
    """The decoded-image cache `cache_images` asks for; `auto` sizes the split from the data check's report."""
    train = report.splits.get(split) if report is not None and data_args.cache_images == "auto" else None
    sizes = train.image_sizes if train is not None else None
    workers = training_args.dataloader_num_workers
    cache, why = plan_cache(data_args.cache_images, sizes, available_memory(), local_processes() * max(workers, 1),
                            workers_restart=workers > 0 and not training_args.dataloader_persistent_workers)
    logger.info("Decoded training images %s (%s).", "kept in memory" if cache is not None else "not cached", why)
    return cache


def rare_class_sampler(data_args: DataArguments, training_args: SegformerTrainingArguments, report: DataReport,
                       num_images: int) -> RareClassSampler:
    """The training split's sampler from the data check's histogram and per-image presence (saved by process 0
    before this point: main_process_first)."""
    split = canonical_split(data_args.train_split)
    image_classes = load_presence(training_args.output_dir, split)
    if len(image_classes) != num_images:
        raise DataError(f"class_presence.json lists {len(image_classes)} training images but the split has "
                        f"{num_images}; rerun with check_data: true into a fresh output_dir.")
    sampler = RareClassSampler(image_classes, report.splits[split].pixel_counts[:-1], data_args.rare_class_temperature,
                               seed=training_args.seed)
    logger.info("Rare-class sampling (T=%g): class probabilities %s", data_args.rare_class_temperature,
                ", ".join(f"{p:.3f}" for p in sampler.probabilities))
    return sampler


def rarest_first(data_args: DataArguments, report: DataReport | None, split: str) -> tuple[int, ...]:
    """Class ids present in the training split, rarest first (for rare_class_crop_prob); () when off."""
    if data_args.rare_class_crop_prob <= 0:
        return ()
    counts = report.splits[split].pixel_counts[:-1]
    return tuple(int(c) for c in sorted(range(len(counts)), key=lambda c: counts[c]) if counts[c] > 0)


def prepare_model(model_args: ModelArguments, training_args: SegformerTrainingArguments, id2label: dict[int, str],
                  ignore_index: int) -> torch.nn.Module:
    """The SegFormer of the recipe, set up for training: reordered head, memory format, token merging, SyncBN."""
    model = build_model(model_args, id2label, ignore_index)
    if model_args.fuse_decode_head and not fuse_decode_head_for_training(model):
        logger.info("The decode head cannot be reordered (not transformers' SegformerDecodeHead): trained as it is.")
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if model_args.token_merging:
        apply_token_merging(model, model_args.token_merging)
    sync_batchnorm = training_args.sync_batchnorm and training_args.world_size > 1
    if sync_batchnorm:
        model = convert_sync_batchnorm(model, on_gpu=training_args.device.type == "cuda")
    images_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size)
    logger.info("%d process(es) (%s), per-device train batch %d × gradient accumulation %d → %d images per "
                "optimizer step; decode-head BatchNorm %s", training_args.world_size,
                training_args.distributed_state.distributed_type, training_args.per_device_train_batch_size,
                training_args.gradient_accumulation_steps, images_per_step,
                "synchronised" if sync_batchnorm else "per process")
    return model


def main(data_args: DataArguments, model_args: ModelArguments, training_args: SegformerTrainingArguments) -> dict:
    """One fine-tuning run, top to bottom: set-up and checks, data, model, Trainer, train, save, evaluate, push."""
    setup_logging(training_args)
    threads = apply_threads(training_args.torch_threads)
    on_cpu = training_args.device.type == "cpu"
    memory = keep_freed_memory(training_args.reuse_freed_memory) if on_cpu else Choice("as is", "not a CPU run")
    log_runtime(training_args, f"{threads.value} ({threads.why})", f"{memory.value} ({memory.why})")
    logger.debug("Training arguments %s", training_args)
    check_run(training_args)  # fp16 only on a GPU, output_dir writable with free space
    check_ignore_index(data_args.ignore_index)
    check_model_folder(model_args.model_name_or_path)  # before the data work
    if model_args.token_merging:
        resolve_token_merging(model_args.token_merging)  # a bad preset fails before any data work
    check_field_combinations(data_args, training_args)  # eval_scale with evaluate_hub, OHEM keeping everything
    with training_args.main_process_first(local=False, desc="output folder"):
        # Never write over, merge into or delete what is there. Every process decides the same refusal (nothing
        # moves without overwrite_output_dir); only the main one moves old outputs aside.
        claim_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                         training_args.resume_from_checkpoint, move=training_args.process_index == 0)
        if training_args.process_index == 0:
            mark_run_folder(training_args.output_dir)
        checkpoint = resolve_checkpoint(training_args)
    # metric_backend: evaluate_hub fetches evaluate's mean_iou now: a machine without the Hub fails before any work.
    hub_mean_iou = load_hub_mean_iou() if training_args.metric_backend == "evaluate_hub" else None
    set_seed(training_args.seed)

    # Data: load (or generate), check every pair on the main process, transforms applied on the fly.
    with training_args.main_process_first(local=False, desc="preparing data"):
        data, id2label = prepare_data(data_args, training_args.seed, training_args)
        if data_args.check_data and training_args.process_index == 0:
            run_data_check(data, data_args, id2label).save(training_args.output_dir)
    report = data_report(data_args, training_args)  # pixel histogram, per-split image sizes; None without the check
    loss_fn = build_loss(training_args, data_args, len(id2label), canonical_split(data_args.train_split), report)
    train_dataset, eval_dataset, raw_eval = build_datasets(data, data_args, training_args, report)

    # Model, metrics, Trainer.
    model = prepare_model(model_args, training_args, id2label, data_args.ignore_index)
    image_processor = build_image_processor(data_args.eval_size, data_args.eval_scale)
    metrics = (LogitsMeanIoU(hub_mean_iou, id2label, data_args.ignore_index) if hub_mean_iou is not None
               else SegmentationMetrics(len(id2label), id2label))
    trainer = SegformerTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=SegmentationCollator(tuple(image_processor.image_mean), tuple(image_processor.image_std)),
        processing_class=image_processor, compute_metrics=metrics, ignore_index=data_args.ignore_index, loss_fn=loss_fn,
        eval_confusion=hub_mean_iou is None,
    )
    if raw_eval is not None:  # image | ground truth | prediction | errors, at every evaluation
        SampleGridCallback.attach(trainer, raw_eval, build_label_decoder(data_args),
                                  palette=dataset_palette(len(id2label), data_args))

    if data_args.rare_class_sampling:  # images drawn through their rarest classes (pre-flight presence)
        trainer.train_sampler = rare_class_sampler(data_args, training_args, report, len(train_dataset))
    if training_args.ema_decay is not None:  # evaluated and saved as the average of the weights
        trainer.ema = WeightAverage(trainer.model, training_args.ema_decay)
        trainer.add_callback(trainer.ema)
    last_evaluation = LastEvaluation()
    trainer.add_callback(last_evaluation)
    budget = None
    if training_args.max_time_s is not None:  # max_time: the budget fixes max_steps after the first steps
        budget = TimeBudgetCallback.attach(trainer, training_args.max_time_s, max_steps_cap=training_args.max_steps_cap,
                                           final_eval=eval_dataset is not None)

    # Train and save.
    try:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    except torch.OutOfMemoryError as err:
        raise TrainingError(out_of_memory_message(training_args, data_args.crop_size, "training")) from err
    trainer.save_model()
    if budget is not None:
        fixed_speed_metrics(train_result.metrics, training_args, trainer.state.global_step - budget.first_step)
        train_result.metrics.update(budget.results())
        training_args.max_steps = budget.budget_steps or trainer.state.global_step  # the model card's max_steps
    if training_args.device.type == "cuda":
        train_result.metrics["train_peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    results = dict(train_result.metrics)

    # Evaluate at native resolution, with per-class reports: the Trainer's evaluation after the last step is of the
    # saved weights unless load_best_model_at_end swapped them.
    if eval_dataset is not None:
        final_step = trainer.state.global_step
        eval_metrics = None if training_args.load_best_model_at_end else last_evaluation.of_step(final_step)
        try:
            eval_metrics = eval_metrics or trainer.evaluate()
        except torch.OutOfMemoryError as err:
            raise TrainingError(out_of_memory_message(training_args, data_args.crop_size, "evaluation")) from err
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        results.update(eval_metrics)
        if trainer.is_world_process_zero() and metrics.last_confusion is not None:
            write_class_report(training_args.output_dir, metrics.last_confusion, id2label)
    if budget is not None:  # the whole budgeted span, final evaluation included
        results["budget_spent_s"] = round(budget.spent_s(), 1)
        trainer.save_metrics("train", {**train_result.metrics, "budget_spent_s": results["budget_spent_s"]})

    # Publish: model, processor, results and a model card (main process only).
    if training_args.push_to_hub:
        push_model(trainer, data_args, model_args)
    return results
