"""The reference: transformers' semantic-segmentation example, minus albumentations, on an image/mask folder.

SegFormer built from config, the model's built-in loss, the plain `Trainer` with its default optimizer and
schedule, and the example's augmentation (pad to the crop with the ignore value, random crop, horizontal flip,
normalise) written with numpy. Prints one `RESULT {json}` line with the Trainer's `train_runtime`, the torch
threads and the precision, for `bench_train_speed.py`.

    python benchmarks/plain_trainer.py --data_dir ../shared/datasets/dubai_aerial --max_steps 5 [--bf16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Image
from transformers import SegformerConfig, SegformerForSemanticSegmentation, Trainer, TrainingArguments
from workers import emit, memory_gb

MIT = {"b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768)}
MEAN, STD = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255


def pairs(data_dir: Path, split: str) -> dict[str, list[str]]:
    images = sorted((data_dir / "images" / split).iterdir())
    return {"image": [str(p) for p in images],
            "label": [str(data_dir / "masks" / split / (p.stem + ".png")) for p in images]}


class ExampleTransform:
    """Pad to the crop size with the ignore value, random crop, horizontal flip, normalise (the example's)."""

    def __init__(self, crop: int, ignore_index: int = 255, seed: int = 0):
        self.crop, self.ignore_index, self.rng = crop, ignore_index, np.random.default_rng(seed)

    def one(self, image, label) -> tuple[np.ndarray, np.ndarray]:
        image, label = np.asarray(image.convert("RGB"), dtype=np.float32), np.asarray(label, dtype=np.int64)
        pad_h, pad_w = max(0, self.crop - image.shape[0]), max(0, self.crop - image.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        top = self.rng.integers(0, image.shape[0] - self.crop + 1)
        left = self.rng.integers(0, image.shape[1] - self.crop + 1)
        image = image[top : top + self.crop, left : left + self.crop]
        label = label[top : top + self.crop, left : left + self.crop]
        if self.rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = (image - MEAN) / STD
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), np.ascontiguousarray(label)

    def __call__(self, batch: dict) -> dict:
        out = [self.one(image, label) for image, label in zip(batch["image"], batch["label"])]
        return {"pixel_values": [torch.from_numpy(o[0]) for o in out], "labels": [torch.from_numpy(o[1]) for o in out]}


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.stack([e["labels"] for e in examples])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--num_labels", type=int, default=6)
    parser.add_argument("--variant", default="b0", choices=list(MIT))
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_steps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=0, help="the example's default: 0")
    cli = parser.parse_args()

    hidden, depths, decoder = MIT[cli.variant]
    config = SegformerConfig(hidden_sizes=hidden, depths=depths, decoder_hidden_size=decoder,
                             num_attention_heads=[1, 2, 5, 8], num_labels=cli.num_labels,
                             semantic_loss_ignore_index=255)
    model = SegformerForSemanticSegmentation(config)
    dataset = Dataset.from_dict(pairs(cli.data_dir, "train")).cast_column("image", Image()).cast_column("label", Image())
    dataset = dataset.with_transform(ExampleTransform(cli.crop))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=cli.batch_size,
                                 max_steps=cli.max_steps, learning_rate=6e-5, bf16=cli.bf16, fp16=cli.fp16,
                                 use_cpu=cli.device == "cpu", remove_unused_columns=False, report_to="none",
                                 save_strategy="no", eval_strategy="no", logging_steps=1000,
                                 dataloader_num_workers=cli.workers, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
        metrics = trainer.train().metrics
    emit({"train_runtime": metrics["train_runtime"], "threads": torch.get_num_threads(), "workers": cli.workers,
          "precision": "bf16" if cli.bf16 else "fp16" if cli.fp16 else "fp32", "peak_rss_gb": memory_gb("VmHWM"),
          "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cli.device == "cuda" else None})


if __name__ == "__main__":
    main()
