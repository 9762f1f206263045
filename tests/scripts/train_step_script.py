"""One optimizer step of `SegformerTrainer` on four fixed samples: the logged loss and every gradient.

Imported by tests/test_optimisation.py (one process: batch 4, or batch 2 × 2 accumulation steps, with or
without activation checkpointing) and launched by it through `accelerate launch` on two CPU processes (batch
2 per process). The same effective batch must give the same loss and gradients in every configuration.

    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/train_step_script.py OUT.pt \\
        --batch_size 2 [--sync_batchnorm]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation, TrainerCallback

from hf_segformer.modeling.batchnorm import convert_sync_batchnorm
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.losses import SegmentationLoss
from hf_segformer.training.trainer import SegformerTrainer

NUM_SAMPLES, SIZE, NUM_LABELS = 4, 32, 3


def samples() -> list[dict[str, torch.Tensor]]:
    """Four different images with fully labelled masks (every micro-batch has the same number of pixels)."""
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, SIZE, SIZE, generator=generator),
             "labels": torch.randint(0, NUM_LABELS, (SIZE, SIZE), generator=generator)} for _ in range(NUM_SAMPLES)]


def tiny_model() -> SegformerForSemanticSegmentation:
    """Seeded, without dropout or stochastic depth (their random masks differ between configurations)."""
    torch.manual_seed(0)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16, num_labels=NUM_LABELS, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, drop_path_rate=0.0)
    return SegformerForSemanticSegmentation(config)


class GradientCapture(TrainerCallback):
    """Copies every gradient just before the optimizer step (after DDP's all-reduce and the accumulation)."""

    gradients: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def one_step(batch_size: int, accumulation: int = 1, *, sync_batchnorm: bool = False, frozen_batchnorm: bool = False,
             activation_checkpointing: bool = False, loss: dict[str, float] | None = None,
             precision: str = "fp32") -> dict:
    """The logged loss and the gradients of the first optimizer step over the four samples (fp32 unless asked:
    the configurations are compared exactly)."""
    model = tiny_model()
    if frozen_batchnorm:
        # BatchNorm statistics of a micro-batch are not those of the whole batch (no sync across accumulation
        # steps), so comparing accumulation with one big batch needs the head's BatchNorm on running statistics.
        bn = model.decode_head.batch_norm
        bn.eval()
        bn.train = lambda mode=True: bn
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if sync_batchnorm and world_size > 1:
        model = convert_sync_batchnorm(model, on_gpu=False)
    capture = GradientCapture()
    with tempfile.TemporaryDirectory() as output_dir:
        args = SegformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            max_steps=1, learning_rate=1e-3, max_grad_norm=0.0, logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0,
            activation_checkpointing=activation_checkpointing, precision=precision)
        trainer = SegformerTrainer(model=model, args=args, train_dataset=samples(), callbacks=[capture],
                                   loss_fn=SegmentationLoss(loss, ignore_index=255))
        trainer.train()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return {"loss": logged, "gradients": capture.gradients, "world_size": world_size,
            "rank": args.process_index}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--sync_batchnorm", action="store_true")
    cli = parser.parse_args()
    result = one_step(cli.batch_size, sync_batchnorm=cli.sync_batchnorm)
    if result["rank"] == 0:
        torch.save(result, cli.output)


if __name__ == "__main__":
    main()
