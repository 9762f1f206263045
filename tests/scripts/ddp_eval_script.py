"""Evaluate a saved SegFormer on a folder dataset's validation split with `SegformerTrainer.evaluate()`.

Launched by tests/test_distributed.py through `accelerate launch`, once with one process and once with two
(DDP over gloo on the CPU). The main process writes `result.json` (world size, eval metrics, confusion
matrix); every process writes `samples_rank<i>.json` with how many samples its dataloader gave it, so the
test can see that the distributed sampler padded the odd-sized set with a repeated sample.

    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/ddp_eval_script.py \\
        --model_dir MODEL --data_dir DATA --output_dir OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets import Image
from transformers import SegformerForSemanticSegmentation

from hf_segformer.config.data import DataArguments
from hf_segformer.data.prepare import build_label_decoder, prepare_data
from hf_segformer.data.transforms import EvalTransform, SegmentationCollator
from hf_segformer.evaluation.metrics import SegmentationMetrics
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.trainer import SegformerTrainer


class CountingCollator(SegmentationCollator):
    """The evaluation collator, counting the samples this process evaluates (duplicates included)."""

    seen = 0

    def __call__(self, examples):
        self.seen += len(examples)
        return super().__call__(examples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--eval_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=2)
    cli = parser.parse_args()

    model = SegformerForSemanticSegmentation.from_pretrained(cli.model_dir)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    data_args = DataArguments(data_dir=cli.data_dir, id2label=json.dumps(id2label), eval_size=cli.eval_size)
    data, _ = prepare_data(data_args, seed=0)
    undecoded = data["validation"].cast_column("image", Image(decode=False)).cast_column("label", Image(decode=False))
    eval_dataset = undecoded.with_transform(EvalTransform(build_label_decoder(data_args), cli.eval_size))

    output_dir = Path(cli.output_dir)
    args = SegformerTrainingArguments(output_dir=str(output_dir / "trainer"), per_device_eval_batch_size=cli.batch_size,
                                      use_cpu=True, report_to="none", dataloader_num_workers=0,
                                      precision="fp32")  # compared exactly across process counts
    metrics, collator = SegmentationMetrics(len(id2label), id2label), CountingCollator()
    trainer = SegformerTrainer(model=model, args=args, eval_dataset=eval_dataset, data_collator=collator,
                               compute_metrics=metrics, ignore_index=data_args.ignore_index)
    results = trainer.evaluate()

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"samples_rank{args.process_index}.json").write_text(json.dumps({"seen": collator.seen}))
    if trainer.is_world_process_zero():
        (output_dir / "result.json").write_text(json.dumps({
            "world_size": args.world_size, "distributed_type": str(trainer.accelerator.distributed_type),
            "num_samples": len(eval_dataset), "metrics": results, "confusion": metrics.last_confusion.tolist(),
        }))


if __name__ == "__main__":
    main()
