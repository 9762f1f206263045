"""The fine-tuning run: recipe → checks → data → model → `Trainer.train()` → saved results → Hub."""

from __future__ import annotations

import logging
import sys

import datasets
import torch
import transformers
from transformers import set_seed

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.config.values import canonical_split
from hf_segformer.data.images import image_pixel_limit
from hf_segformer.data.palettes import dataset_palette
from hf_segformer.data.prepare import build_label_decoder
from hf_segformer.data.rare_classes import rare_class_sampler
from hf_segformer.data.training_data import build_datasets, load_checked_data
from hf_segformer.data.transforms import SegmentationCollator
from hf_segformer.evaluation.metrics import LogitsMeanIoU, SegmentationMetrics, load_hub_mean_iou
from hf_segformer.evaluation.reports import write_class_report
from hf_segformer.hub.publish import push_model
from hf_segformer.modeling.build import build_image_processor
from hf_segformer.modeling.prepare import prepare_model
from hf_segformer.modeling.saved_label_map import save_label_map
from hf_segformer.runtime import Choice, apply_threads, keep_freed_memory
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.budget import (
    TimeBudgetCallback,
    add_budget_metrics,
    eval_subset,
    loop_eval_pixels,
    save_budget_spent,
)
from hf_segformer.training.callbacks import LastEvaluation, SampleGridCallback
from hf_segformer.training.checkpoints import claim_run_folder, run_inputs
from hf_segformer.training.early_stopping import add_early_stopping_metrics, early_stopping_callback
from hf_segformer.training.ema import WeightAverage
from hf_segformer.training.losses import build_loss
from hf_segformer.training.preemption import Preempted, StopOnSignal
from hf_segformer.training.run_checks import check_recipe
from hf_segformer.training.trainer import SegformerTrainer, out_of_memory_explained

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


def set_up_runtime(training_args: SegformerTrainingArguments) -> None:
    """Torch threads and the allocator for this machine, then the first lines of a run: what it runs on and why,
    before anything else is printed."""
    threads = apply_threads(training_args.torch_threads)
    on_cpu = training_args.device.type == "cpu"
    memory = keep_freed_memory(training_args.reuse_freed_memory) if on_cpu else Choice("as is", "not a CPU run")
    device = training_args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}"
    logger.info("Device: %s; torch threads: %s; loader workers: %d (%s); precision: %s (%s); freed memory: %s",
                name, f"{threads.value} ({threads.why})", training_args.dataloader_num_workers,
                training_args.loader_workers_reason, training_args.precision, training_args.precision_reason,
                f"{memory.value} ({memory.why})")
    logger.debug("Training arguments %s", training_args)


def main(data_args: DataArguments, model_args: ModelArguments, training_args: SegformerTrainingArguments) -> dict:
    """One fine-tuning run, top to bottom: set-up and checks, data, model, Trainer, train, save, evaluate, push."""
    with image_pixel_limit(data_args.max_image_pixels):  # PIL's limit as the recipe sets it, for this run only
        return _run(data_args, model_args, training_args)


def _run(data_args: DataArguments, model_args: ModelArguments, training_args: SegformerTrainingArguments) -> dict:
    setup_logging(training_args)
    set_up_runtime(training_args)
    check_recipe(data_args, model_args, training_args)  # everything that can fail before the data work
    # never over another run nor its own inputs; None: a fresh start
    checkpoint = claim_run_folder(training_args, run_inputs(data_args, model_args, training_args))
    # metric_backend: evaluate_hub fetches evaluate's mean_iou now: a machine without the Hub fails before any work.
    hub_mean_iou = load_hub_mean_iou() if training_args.metric_backend == "evaluate_hub" else None
    set_seed(training_args.seed)

    # Data: load (or generate) and check every pair on the main process; transforms applied on the fly.
    data, id2label, report = load_checked_data(data_args, training_args)
    train_dataset, eval_dataset, raw_eval = build_datasets(data, data_args, training_args, report,
                                                           num_labels=len(id2label))
    train_split = canonical_split(data_args.train_split)
    sampler = (rare_class_sampler(training_args.output_dir, train_split, report.splits[train_split].class_counts,
                                  data_args.rare_class_temperature, training_args.seed, len(train_dataset))
               if data_args.rare_class_sampling else None)  # images drawn through their rarest classes

    # Loss, metrics, model.
    loss_fn = build_loss(training_args, data_args.ignore_index, len(id2label), train_split, report)
    metrics = (LogitsMeanIoU(hub_mean_iou, id2label, data_args.ignore_index) if hub_mean_iou is not None
               else SegmentationMetrics(len(id2label), id2label))
    bands = report.input_bands(train_split) if report is not None else None  # N-band data: (N, mean, std)
    model = prepare_model(model_args, training_args, id2label, data_args.ignore_index,
                          bands[0] if bands is not None else 3)
    image_processor = (build_image_processor(data_args.eval_size, data_args.eval_scale) if bands is None else
                       build_image_processor(data_args.eval_size, data_args.eval_scale, bands[1], bands[2], bands[0],
                                             data_args.display_bands))
    save_label_map(image_processor, data_args)  # evaluate reads raw masks without the recipe

    # The Trainer, built with its sampler, weight average and callbacks.
    sample_grid = (SampleGridCallback(raw_eval, build_label_decoder(data_args),
                                      palette=dataset_palette(len(id2label), data_args))
                   if raw_eval is not None else None)  # image | ground truth | prediction | errors, at every evaluation
    last_evaluation = LastEvaluation()
    preemption = StopOnSignal()  # SIGTERM: save a checkpoint at the next step boundary and stop
    # evaluations during training on a fixed subset (eval_subset_size), the evaluation after it on the whole split
    budgeted = training_args.max_time_s is not None
    loop_eval = eval_subset(eval_dataset, data_args.eval_subset_size, budgeted)
    # auto: the budget cuts the subset by cost, from timing evaluations of 1 and 2 of its images; not with early
    # stopping, which counts every evaluation and compares their metrics (a 2-image one is not comparable)
    eval_pixels = loop_eval_pixels(data_args, raw_eval, budgeted and training_args.early_stopping_patience is None)
    budget = (TimeBudgetCallback(training_args.max_time_s, max_steps_cap=training_args.max_steps_cap,
                                 final_eval=eval_dataset is not None,
                                 final_eval_scale=len(eval_dataset) / len(loop_eval) if loop_eval else 1.0,
                                 eval_pixels=eval_pixels)
              if budgeted else None)  # max_time: fixes max_steps after the first steps
    early_stopping = early_stopping_callback(training_args)  # early_stopping_patience: transformers' callback
    trainer = SegformerTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=loop_eval,
        data_collator=SegmentationCollator(tuple(image_processor.image_mean), tuple(image_processor.image_std)),
        processing_class=image_processor, compute_metrics=metrics, ignore_index=data_args.ignore_index, loss_fn=loss_fn,
        eval_confusion=hub_mean_iou is None, train_sampler=sampler,
        ema=WeightAverage(model, training_args.ema_decay) if training_args.ema_decay is not None else None,
        callbacks=[callback for callback in (sample_grid, last_evaluation, budget, early_stopping, preemption)
                   if callback is not None],
    )

    # Train and save.
    with out_of_memory_explained(training_args, data_args.crop_size, "training"):
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if preemption.received:
        raise Preempted(f"Stopped on SIGTERM at step {trainer.state.global_step}, checkpoint saved in "
                        f"{training_args.output_dir}: run the same command with --resume_from_checkpoint last to "
                        "continue.")
    trainer.save_model_atomically()
    add_early_stopping_metrics(train_result.metrics, early_stopping, trainer,
                               budget.budget_steps if budget is not None else trainer.state.max_steps)
    add_budget_metrics(train_result.metrics, budget, training_args, trainer.state.global_step)
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
        reuse = not training_args.load_best_model_at_end and trainer.eval_dataset is eval_dataset  # (the budget's cut)
        eval_metrics = last_evaluation.of_step(final_step) if reuse else None
        with out_of_memory_explained(training_args, data_args.crop_size, "evaluation"):
            eval_metrics = eval_metrics or trainer.evaluate(eval_dataset=eval_dataset)
        # The training's evaluations run in its precision: say which (bf16 figures differ from machine to machine;
        # `hf-segformer evaluate` scores in fp32 by default).
        eval_metrics = {**eval_metrics, "eval_precision": training_args.precision}
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        results.update(eval_metrics)
        if trainer.is_world_process_zero() and metrics.last_confusion is not None:
            write_class_report(training_args.output_dir, metrics.last_confusion, id2label)
    save_budget_spent(trainer, budget, train_result.metrics, results)  # the whole budgeted span, evaluation included

    # Publish: model, processor, results and a model card (main process only).
    if training_args.push_to_hub:
        push_model(trainer, data_args, model_args)
    return results
