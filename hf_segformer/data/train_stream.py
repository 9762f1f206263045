"""One process's training stream: its part of the data, block-shuffled, augmented lazily, resumable exactly.

Per process: the source in file order → `datasets.distributed.split_dataset_by_node` → for every pass, the shard
order reshuffled (`IterableDataset.set_epoch`) → blocks of `shuffle_buffer_size` examples, each permuted by an
RNG seeded with (seed, pass, block, rank) → `TrainTransform` on each example with Python's `random` seeded by
(seed, pass, the example's place in the stream) → batches. The stream never ends: training runs by `max_steps`.

Resume. A checkpoint records, for every process, the pass, the block, how many of its examples were trained on
and the `datasets` state_dict at the start of the block. Resuming reloads that state, re-reads the block (at
most `shuffle_buffer_size` undecoded examples) and continues at the offset: the same examples, in the same
order, with the same augmentation as the run that was not interrupted; nothing repeated, nothing skipped.
The shuffle is therefore a block shuffle, not `datasets`' rolling buffer, whose state_dict does not hold the
buffer (on resume it skips the buffered examples and, measured with datasets 5.2, repeats a few others).
An example never leaves its block; the per-pass shard order and larger blocks give more mixing.

Decoding and augmenting run in `num_workers` processes (the recipe's `dataloader_num_workers`), results kept in
order; reading and the position stay in the training process, which is how the position of the last example
trained on is known exactly (`torch`'s DataLoader workers would hide it; torchdata's StatefulDataLoader is not
a dependency). Results do not depend on the number of workers.

`training.stream.StreamingTrainerMixin` puts this into the HF Trainer.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Image, IterableDataset
from datasets.distributed import split_dataset_by_node

from hf_segformer.data.images import entry_name, open_image
from hf_segformer.errors import DataError

logger = logging.getLogger("hf_segformer")

STATE_DIR = "stream_state"
STATE_VERSION = 1
SETTINGS = ("rank", "world_size", "strategy", "shuffle_buffer_size", "seed", "num_shards")


def resolve_strategy(requested: str, num_shards: int, world_size: int) -> str:
    """`auto` → `shards` when the shards divide evenly over the processes, else `examples` (datasets' own rule)."""
    if world_size == 1:
        return "shards"
    if requested == "auto":
        return "shards" if num_shards % world_size == 0 else "examples"
    if requested == "shards" and num_shards < world_size:
        raise DataError(f"streaming_split: shards gives each of the {world_size} processes its own shards, but the "
                        f"training stream has {num_shards}; write more shards or use streaming_split: examples.")
    return requested


def pass_epoch(seed: int, pass_index: int) -> int:
    """The `datasets` epoch of a pass: never 0 (which keeps the file order) and different for every seed."""
    return (seed % 1_000_003) * 1_000_000 + pass_index + 1


@dataclass
class StreamPosition:
    """Where the stream continues: pass, block, examples of the block already given, datasets state at the block's
    start (None: the pass's start) and the examples given since training began."""

    pass_index: int = 0
    block_index: int = 0
    offset: int = 0
    block_state: dict | None = None
    consumed: int = 0


_WORKER_TRANSFORM: Any = None


def _init_worker(transform: Any, parent: int) -> None:
    global _WORKER_TRANSFORM
    _WORKER_TRANSFORM = transform
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """A worker outlives a SIGKILLed training process (it waits on a queue whose other end it holds itself), keeping
    its output pipes open; it exits as soon as the training process is gone, as DataLoader workers do."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def augment(transform: Any, image_entry: dict, mask_entry: dict, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`transform.transform` with Python's `random` seeded by `key`; the caller's RNG state is left as it was."""
    saved = random.getstate()
    random.seed(key)
    try:
        return transform.transform(open_image(image_entry), open_image(mask_entry), entry_name(mask_entry))
    finally:
        random.setstate(saved)


def _augment_in_worker(image_entry: dict, mask_entry: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    pixels, label = augment(_WORKER_TRANSFORM, image_entry, mask_entry, key)
    return pixels.numpy(), label.to(torch.int32).numpy()  # plain arrays: pickled by value, no shared-memory handles


class TrainStream(torch.utils.data.IterableDataset):
    """This process's endless, resumable training stream of `{"pixel_values", "labels"}` examples."""

    def __init__(self, source: IterableDataset, transform: Any, *, seed: int = 42, shuffle_buffer_size: int = 1000,
                 rank: int = 0, world_size: int = 1, split: str = "auto", num_workers: int = 0, prefetch: int = 32,
                 mp_context: str | None = None):
        raw = source.cast_column("image", Image(decode=False)).cast_column("label", Image(decode=False))
        self.num_shards = raw.num_shards  # part of the saved position: other shards would make it meaningless
        self.strategy = resolve_strategy(split, raw.num_shards, world_size)
        self.source = split_dataset_by_node(raw, rank, world_size, strategy=self.strategy) if world_size > 1 else raw
        self.transform = transform
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.block_size = max(1, shuffle_buffer_size)
        self.shuffle_buffer_size = shuffle_buffer_size
        self.num_workers, self.prefetch, self.mp_context = num_workers, max(prefetch, 2 * num_workers), mp_context
        self._start = StreamPosition()
        self._positions: deque[StreamPosition] = deque([self._start], maxlen=4096)
        reads = ("every shard" if world_size == 1 else "its own shards" if self.strategy == "shards"
                 else f"all shards, keeping 1 example in {world_size}")
        logger.info("Training stream: process %d of %d reads %s (%d shard(s) in the source), blocks of %d shuffled, "
                    "decoded in %s.", rank, world_size, reads, raw.num_shards, self.block_size,
                    f"{num_workers} worker process(es)" if num_workers else "the training process")

    # -- position -------------------------------------------------------------------------------------------------

    def keep_positions(self, count: int) -> None:
        """Remember the position after each of the last `count` examples given out: the examples that the loader
        and the Trainer may hold before training on them (batches fetched ahead, gradient accumulation)."""
        if count > self._positions.maxlen:
            self._positions = deque(self._positions, maxlen=count)

    def state_dict(self, consumed: int) -> dict:
        """The position after the first `consumed` examples (counted from the start of training), as JSON-able data."""
        for position in reversed(self._positions):
            if position.consumed == consumed:
                return {"version": STATE_VERSION, **{k: getattr(self, k) for k in SETTINGS}, **asdict(position)}
        known = (self._positions[0].consumed, self._positions[-1].consumed)
        raise RuntimeError(f"The stream no longer knows the position after example {consumed} (it holds {known}); "
                           "call keep_positions with more.")

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the settings that shape the stream must be those it was saved with."""
        saved = {k: state.get(k) for k in SETTINGS}
        current = {k: getattr(self, k) for k in SETTINGS}
        if state.get("version") != STATE_VERSION or saved != current:
            raise DataError(f"The checkpoint's stream position was saved with {saved}, this run has {current}. "
                            "Resume with the same number of processes, streaming_split, shuffle_buffer_size, seed "
                            "and shards (or start a new run: another output_dir).")
        self._start = StreamPosition(state["pass_index"], state["block_index"], state["offset"], state["block_state"],
                                     state["consumed"])
        self._positions.clear()
        self._positions.append(self._start)

    # -- iteration ------------------------------------------------------------------------------------------------

    def _place(self, pass_index: int, raw_index: int) -> str:
        """The augmentation seed of an example: with `examples` splitting (or one process) its index in the whole
        pass, so that N processes augment every example as one process does; with `shards`, rank and index."""
        if self.strategy == "examples" or self.world_size == 1:
            return f"{self.seed}/{pass_index}/{raw_index * self.world_size + self.rank}"
        return f"{self.seed}/{pass_index}/{self.rank}:{raw_index}"

    def _read_block(self, iterator: Iterator[dict], pass_index: int, last: str) -> list[dict]:
        try:
            return list(islice(iterator, self.block_size))
        except Exception as err:
            raise DataError(f"Reading the training stream failed (process {self.rank}, pass {pass_index}, after "
                            f"{last}): {type(err).__name__}: {err}. A shard is unreadable or truncated; the shard "
                            "check at start-up opens local shards only.") from err

    def _raw(self, start: StreamPosition) -> Iterator[tuple[dict, str, StreamPosition]]:
        """(undecoded example, augmentation key, position after it), endlessly, pass after pass."""
        position, consumed, last = start, start.consumed, "the start"
        while True:
            pass_index, block_index, skip, block_state = (position.pass_index, position.block_index, position.offset,
                                                          position.block_state)
            self.source.set_epoch(pass_epoch(self.seed, pass_index))
            if block_state is not None:
                self.source.load_state_dict(block_state)
            iterator = iter(self.source)
            read_any = False
            while block := self._read_block(iterator, pass_index, last):
                read_any = True
                next_state = self.source.state_dict()
                order = (np.random.default_rng([self.seed, pass_index, block_index, self.rank]).permutation(len(block))
                         if self.block_size > 1 else [0])
                for j in range(skip, len(block)):
                    consumed += 1
                    if j + 1 == len(block):
                        after = StreamPosition(pass_index, block_index + 1, 0, next_state, consumed)
                    else:
                        after = StreamPosition(pass_index, block_index, j + 1, block_state, consumed)
                    example = block[order[j]]
                    last = entry_name(example["image"])
                    yield example, self._place(pass_index, block_index * self.block_size + int(order[j])), after
                skip, block_state, block_index = 0, next_state, block_index + 1
            if not read_any and block_state is None:
                raise DataError(f"The training stream of process {self.rank} (of {self.world_size}) has no examples in "
                                f"pass {pass_index}: its shards are empty.")
            position = StreamPosition(pass_index + 1, 0, 0, None, consumed)

    def _emitted(self, pixels: Any, label: Any, after: StreamPosition) -> dict[str, torch.Tensor]:
        self._positions.append(after)
        pixels = torch.as_tensor(pixels)
        return {"pixel_values": pixels, "labels": torch.as_tensor(label).long()}

    def _failed(self, err: Exception, example: dict, after: StreamPosition) -> DataError:
        return DataError(f"{entry_name(example['image'])} / {entry_name(example['label'])}: cannot be decoded or "
                         f"augmented (process {self.rank}, pass {after.pass_index}; the pre-flight check reads only "
                         f"the first streaming_check_samples pairs): {type(err).__name__}: {err}. "
                         "Fix or remove the pair.")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("TrainStream is iterated in the training process (DataLoader num_workers=0): it keeps "
                               "the position there and decodes in its own worker processes.")
        raw = self._raw(self._start)
        if not self.num_workers:
            for example, key, after in raw:
                try:
                    pixels, label = augment(self.transform, example["image"], example["label"], key)
                except Exception as err:
                    raise self._failed(err, example, after) from err
                yield self._emitted(pixels, label, after)
            return
        context = multiprocessing.get_context(self.mp_context) if self.mp_context else None
        pool = ProcessPoolExecutor(self.num_workers, mp_context=context, initializer=_init_worker,
                                   initargs=(self.transform, os.getpid()))
        window: deque[tuple[Future, dict, StreamPosition]] = deque()
        try:
            for example, key, after in raw:
                future = pool.submit(_augment_in_worker, example["image"], example["label"], key)
                window.append((future, example, after))
                if len(window) < self.prefetch:
                    continue
                future, oldest, oldest_after = window.popleft()
                try:
                    pixels, label = future.result()
                except Exception as err:
                    raise self._failed(err, oldest, oldest_after) from err
                yield self._emitted(pixels, label, oldest_after)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


# -- checkpoints ----------------------------------------------------------------------------------------------------


def state_file(checkpoint: str | os.PathLike, rank: int) -> Path:
    return Path(checkpoint) / STATE_DIR / f"rank{rank:05d}.json"


def save_stream_state(checkpoint: str | os.PathLike, rank: int, state: dict) -> Path:
    """Write atomically (a kill mid-write leaves the previous file or none, never half a file)."""
    path = state_file(checkpoint, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(state))
    os.replace(partial, path)
    return path


def load_stream_state(checkpoint: str | os.PathLike, rank: int, world_size: int = 1) -> dict:
    """This process's position; every process checks that all positions are there, so that all stop together
    rather than some training on while the others wait for them."""
    missing = [str(state_file(checkpoint, r)) for r in range(world_size) if not state_file(checkpoint, r).is_file()]
    if missing:
        raise DataError(f"{missing[0]} is missing ({len(missing)} of {world_size} positions): {checkpoint} was not "
                        "written by a streaming run, or the run was killed while saving it. Resume from the previous "
                        "checkpoint (delete this one) or start a new run.")
    return json.loads(state_file(checkpoint, rank).read_text())
