"""The recipe's SegFormer set up for training: the decode head reordered, the memory format, token merging and,
under DDP, the decode head's BatchNorm synchronised over the global batch."""

from __future__ import annotations

import logging

import torch
from transformers import TrainingArguments

from hf_segformer.config.model import ModelArguments
from hf_segformer.modeling.batchnorm import convert_sync_batchnorm
from hf_segformer.modeling.build import build_model
from hf_segformer.modeling.head_folding import fuse_decode_head_for_training
from hf_segformer.modeling.lora import apply_lora
from hf_segformer.modeling.token_merging import apply_token_merging

logger = logging.getLogger("hf_segformer")


def prepare_model(model_args: ModelArguments, training_args: TrainingArguments, id2label: dict[int, str],
                  ignore_index: int, num_channels: int = 3) -> torch.nn.Module:
    """The SegFormer of the recipe, set up for training: reordered head, memory format, token merging, LoRA
    adapters (`lora`), SyncBN (`sync_batchnorm` of SegformerTrainingArguments, under DDP only). Logs the run's batch
    per optimizer step. `num_channels`: the bands of the data (modeling.input_bands)."""
    model = build_model(model_args, id2label, ignore_index, num_channels)
    if model_args.fuse_decode_head and not fuse_decode_head_for_training(model):
        logger.info("The decode head cannot be reordered (not transformers' SegformerDecodeHead): trained as it is.")
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if model_args.token_merging:
        apply_token_merging(model, model_args.token_merging)
    if model_args.lora:  # after the head is reordered: peft's trained copy of the head keeps the reordered forward
        model = apply_lora(model, model_args.lora, model_args.model_name_or_path)
    sync_batchnorm = getattr(training_args, "sync_batchnorm", False) and training_args.world_size > 1
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
