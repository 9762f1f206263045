"""Streaming vs materialised input on the Dubai aerial set: images/s at the loader and first-batch latency.

The train split (56 JPEG/PNG pairs, 509×544 to 2149×1480) is first written as local Parquet shards into a temporary
folder. Then, per round and side by side, the same augmentation (the aerial recipe's: random resize to
[1024, 512] × [0.5, 2], 512² crop with cat_max_ratio 0.75, flip, photometric distortion) is fed from
- materialised: today's path, `load_folder_dataset` (paths in an Arrow table) + `with_transform` + a DataLoader
  with a random sampler and `--workers` persistent worker processes (as the aerial recipe);
- streaming: the Parquet shards as a `datasets` IterableDataset + `TrainStream` (block shuffle, decoding in
  `--workers` processes) + the DataLoader of `StreamingTrainerMixin`.
"First batch" is the time from nothing built to the first batch of 8 in hand (loading included); "images/s" is
measured over the following `--batches` batches. Medians over `--rounds` rounds, each timing both paths in turn.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/bench_streaming.py [--data_dir ../shared/datasets/dubai_aerial]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hf_segformer.config.data import DataArguments
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.loading import load_folder_dataset, pair_files, undecoded
from hf_segformer.data.shards import write_parquet_shards
from hf_segformer.data.streaming import open_streams
from hf_segformer.data.train_stream import TrainStream
from hf_segformer.data.transforms import SegmentationCollator, TrainTransform

BATCH = 8


def aerial_transform() -> TrainTransform:
    return TrainTransform(LabelDecoder(ignore_index=255), crop_size=512, scale=(1024, 512), ratio_range=(0.5, 2.0),
                          cat_max_ratio=0.75, hflip_prob=0.5, photometric=True, ignore_index=255)


def materialised_loader(image_dir: Path, mask_dir: Path, workers: int, seed: int) -> torch.utils.data.DataLoader:
    dataset = undecoded(load_folder_dataset(image_dir, mask_dir)["train"]).with_transform(aerial_transform())
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=SegmentationCollator(),
                                       num_workers=workers, persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def streaming_loader(shard_glob: str, workers: int, seed: int, buffer: int) -> torch.utils.data.DataLoader:
    source = open_streams(DataArguments(streaming=True, data_files={"train": shard_glob}))["train"]
    stream = TrainStream(source, aerial_transform(), seed=seed, shuffle_buffer_size=buffer, num_workers=workers)
    return torch.utils.data.DataLoader(stream, batch_size=BATCH, collate_fn=SegmentationCollator(), num_workers=0,
                                       generator=torch.Generator())


def measure(build, batches: int) -> tuple[float, float]:
    """(seconds to the first batch from nothing built, images/s over the next `batches` batches; a finite loader
    starts its next epoch as the Trainer does)."""
    start = time.perf_counter()
    loader = build()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        images += len(batch["pixel_values"])
    rate = images / (time.perf_counter() - start)
    del iterator, loader
    return first, rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/datasets/dubai_aerial")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--buffer", type=int, default=1000, help="shuffle_buffer_size of the stream")
    parser.add_argument("--batches", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    image_dir, mask_dir = Path(args.data_dir) / "images" / args.split, Path(args.data_dir) / "masks" / args.split
    pairs = pair_files(image_dir, mask_dir)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shards = write_parquet_shards(pairs, tmp, args.split, args.num_shards)
        written = time.perf_counter() - start
        size = sum(p.stat().st_size for p in shards) / 1e6
        source_size = sum(i.stat().st_size + m.stat().st_size for i, m in pairs) / 1e6
        print(f"{len(pairs)} pairs ({source_size:.1f} MB of files) → {len(shards)} Parquet shards, {size:.1f} MB, "
              f"written in {written:.2f} s")
        shard_glob = str(Path(tmp) / f"{args.split}-*.parquet")
        print(f"batch {BATCH}, {args.batches} batches timed after the first, {args.rounds} rounds (medians), "
              f"stream blocks of {args.buffer}, torch threads 1\n")
        print("| workers | input | first batch (s) | images/s | streaming ÷ materialised (images/s) |")
        print("|---:|---|---:|---:|---:|")
        for workers in args.workers:
            results: dict[str, list[tuple[float, float]]] = {"materialised": [], "streaming": []}
            for round_index in range(args.rounds):
                results["materialised"].append(measure(
                    lambda: materialised_loader(image_dir, mask_dir, workers, round_index), args.batches))
                results["streaming"].append(measure(
                    lambda: streaming_loader(shard_glob, workers, round_index, args.buffer), args.batches))
            medians = {name: (statistics.median(f for f, _ in runs), statistics.median(r for _, r in runs))
                       for name, runs in results.items()}
            ratio = medians["streaming"][1] / medians["materialised"][1]
            for name, (first, rate) in medians.items():
                shown = f"{ratio:.2f}" if name == "streaming" else ""
                print(f"| {workers} | {name} | {first:.2f} | {rate:.2f} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
