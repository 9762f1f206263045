"""The training stream of a process (`hf_segformer.data.train_stream.TrainStream`).

A user relies on: every example seen once per pass, split between processes without overlap; a run resumed
from a checkpoint continuing with exactly the examples, order and augmentation of the run that was not
interrupted (no example repeated or skipped, whatever the shuffle buffer); the same stream whatever the number
of decoding workers; N processes splitting by examples seeing, together, the batch of one process.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Features, Image, IterableDataset, load_dataset
from support.streams import write_pairs

from hf_segformer.data.shards import write_parquet_shards, write_webdataset_shards
from hf_segformer.data.train_stream import TrainStream, load_stream_state, save_stream_state
from hf_segformer.errors import DataError


class Recorder:
    """A stand-in for TrainTransform: returns (pair index read from pixel (0, 0), one draw of Python's `random`),
    i.e. which example came and which augmentation it got."""

    def transform(self, image, mask, name):
        index = int(np.asarray(image.convert("RGB"))[0, 0, 0])
        return torch.tensor([index, random.randint(0, 2**31)]), torch.zeros(1, dtype=torch.long)


def make_source(tmp_path: Path, count: int = 24, num_shards: int = 4, shard_format: str = "parquet"):
    folder = tmp_path / f"{shard_format}-{count}-{num_shards}"
    if not folder.exists():
        pairs = write_pairs(tmp_path / f"pairs-{count}", count, size=(4, 4))
        writer = write_parquet_shards if shard_format == "parquet" else write_webdataset_shards
        writer(pairs, folder, num_shards=num_shards)
    name = "parquet" if shard_format == "parquet" else "webdataset"
    files = sorted(str(p) for p in folder.iterdir())
    stream = load_dataset(name, data_files={"train": files}, streaming=True)["train"]
    if shard_format == "webdataset":
        stream = stream.select_columns(["image.png", "label.png"]).rename_columns(
            {"image.png": "image", "label.png": "label"})
    return stream


def take(stream: TrainStream, count: int) -> list[tuple[int, int]]:
    iterator = iter(stream)
    return [tuple(next(iterator)["pixel_values"].tolist()) for _ in range(count)]


def stream_of(source, **kwargs) -> TrainStream:
    return TrainStream(source, Recorder(), seed=3, **kwargs)


def test_a_pass_holds_every_example_once_and_each_pass_is_shuffled_anew(tmp_path):
    stream = stream_of(make_source(tmp_path, 23, 4), shuffle_buffer_size=5)
    seen = take(stream, 46)
    first, second = [i for i, _ in seen[:23]], [i for i, _ in seen[23:]]
    assert sorted(first) == sorted(second) == list(range(23))
    assert first != second and first != list(range(23))
    draws = {(i, d) for i, d in seen}
    assert len(draws) == 46  # an example is augmented differently in the next pass


def test_without_a_buffer_shards_are_read_whole_in_file_order(tmp_path):
    order = [i for i, _ in take(stream_of(make_source(tmp_path, 24, 4), shuffle_buffer_size=0), 24)]
    runs = [order[k:k + 6] for k in range(0, 24, 6)]  # 4 shards of 6 pairs, in a shuffled shard order
    assert sorted(run[0] for run in runs) == [0, 6, 12, 18]
    assert all(run == list(range(run[0], run[0] + 6)) for run in runs)


@pytest.mark.parametrize(("strategy", "world_size"), [("shards", 2), ("examples", 2), ("examples", 3), ("auto", 3)])
def test_processes_split_every_pass_without_overlap(tmp_path, strategy, world_size):
    source = make_source(tmp_path, 24, 4)
    per_rank = 24 // world_size
    ranks = [take(stream_of(source, shuffle_buffer_size=4, rank=r, world_size=world_size, split=strategy), 2 * per_rank)
             for r in range(world_size)]
    for pass_index in (0, 1):
        together = sorted(i for seen in ranks for i, _ in seen[pass_index * per_rank:(pass_index + 1) * per_rank])
        assert together == list(range(24)), pass_index


def test_auto_splits_by_shards_when_they_divide_evenly(tmp_path):
    source = make_source(tmp_path, 24, 4)
    assert stream_of(source, world_size=2).strategy == "shards"
    assert stream_of(source, world_size=3).strategy == "examples"
    with pytest.raises(DataError, match="has 4; write more shards or use streaming_split: examples"):
        stream_of(source, world_size=8, split="shards")


def test_splitting_by_examples_gives_the_processes_the_batch_of_one_process(tmp_path):
    """Two processes, batch 2 each, together train on the examples of one process with batch 4, augmented alike."""
    source = make_source(tmp_path, 24, 4)
    one = take(stream_of(source, shuffle_buffer_size=0), 32)
    ranks = [take(stream_of(source, shuffle_buffer_size=0, rank=r, world_size=2, split="examples"), 16) for r in (0, 1)]
    for step in range(8):
        together = ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2]
        assert sorted(together) == sorted(one[4 * step:4 * step + 4]), step


CASES = [(0, 1, "shards"), (5, 1, "shards"), (7, 2, "shards"), (4, 2, "examples"), (1, 3, "examples")]


@pytest.mark.parametrize(("buffer", "world_size", "strategy"), CASES)
@pytest.mark.parametrize("shard_format", ["parquet", "webdataset"])
def test_resume_continues_exactly_where_the_stream_stopped(tmp_path, buffer, world_size, strategy, shard_format):
    """Stop after k examples (mid-block, at a block's end, at and past the end of a pass), save the position as a
    checkpoint does (JSON), resume in a new stream: the rest equals the uninterrupted stream, draws included."""
    source = make_source(tmp_path, 23 if world_size == 1 else 24, 4, shard_format)
    settings = dict(shuffle_buffer_size=buffer, world_size=world_size, split=strategy)
    for rank in range(world_size):
        straight = take(stream_of(source, rank=rank, **settings), 40)
        for stop in (1, 5, 7, 12, 23, 24, 31):
            first = stream_of(source, rank=rank, **settings)
            assert take(first, stop) == straight[:stop]
            state = json.loads(json.dumps(first.state_dict(stop)))
            resumed = stream_of(source, rank=rank, **settings)
            resumed.load_state_dict(state)
            assert take(resumed, 40 - stop) == straight[stop:], (rank, stop)


def test_a_resumed_stream_can_be_resumed_again(tmp_path):
    source = make_source(tmp_path, 23, 4)
    straight = take(stream_of(source, shuffle_buffer_size=6), 50)
    first = stream_of(source, shuffle_buffer_size=6)
    take(first, 9)
    second = stream_of(source, shuffle_buffer_size=6)
    second.load_state_dict(first.state_dict(9))
    assert take(second, 20) == straight[9:29]
    third = stream_of(source, shuffle_buffer_size=6)
    third.load_state_dict(second.state_dict(29))  # positions count from the start of training
    assert take(third, 21) == straight[29:]


def test_decoding_workers_do_not_change_the_stream(tmp_path):
    source = make_source(tmp_path, 23, 4)
    in_process = take(stream_of(source, shuffle_buffer_size=5), 40)
    with_workers = stream_of(source, shuffle_buffer_size=5, num_workers=2)
    assert take(with_workers, 40) == in_process
    resumed = stream_of(source, shuffle_buffer_size=5, num_workers=2)
    resumed.load_state_dict(with_workers.state_dict(17))  # the position is exact although workers decode ahead
    assert take(resumed, 23) == in_process[17:]


def test_a_position_from_another_setup_is_refused(tmp_path):
    source = make_source(tmp_path, 24, 4)
    first = stream_of(source, shuffle_buffer_size=4)
    take(first, 3)
    for other in (dict(shuffle_buffer_size=4, world_size=2), dict(shuffle_buffer_size=8)):
        with pytest.raises(DataError, match="Resume with the same number of processes, streaming_split, "
                                            "shuffle_buffer_size, seed and shards"):
            stream_of(source, **other).load_state_dict(first.state_dict(3))
    with pytest.raises(DataError, match="'num_shards': 4}, this run has .*'num_shards': 3}"):  # a shard was added
        stream_of(make_source(tmp_path, 24, 3), shuffle_buffer_size=4).load_state_dict(first.state_dict(3))


def test_a_checkpoint_without_every_position_is_refused_by_every_process(tmp_path):
    save_stream_state(tmp_path / "checkpoint-4", 0, {"consumed": 8})
    for rank in (0, 1):  # rank 0's file is there, but it must not train on while rank 1 cannot start
        with pytest.raises(DataError, match=r"rank00001.json is missing \(1 of 2 positions\)"):
            load_stream_state(tmp_path / "checkpoint-4", rank, world_size=2)
    assert load_stream_state(tmp_path / "checkpoint-4", 0) == {"consumed": 8}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_undecodable_pair_is_named(tmp_path, num_workers):
    pairs = write_pairs(tmp_path / "pairs", 6, size=(4, 4))
    pairs[4][0].write_bytes(b"not an image")
    write_parquet_shards(pairs, tmp_path / "shards", num_shards=1)
    source = load_dataset("parquet", data_files=str(tmp_path / "shards" / "*.parquet"), streaming=True)["train"]
    with pytest.raises(DataError) as error:
        take(stream_of(source, shuffle_buffer_size=0, num_workers=num_workers), 6)
    assert "0004.png / 0004.png: cannot be decoded or augmented" in str(error.value)
    assert "UnidentifiedImageError" in str(error.value) and "Fix or remove the pair" in str(error.value)


def test_an_empty_stream_is_an_error_not_a_hang():
    def nothing():
        yield from ()

    empty = IterableDataset.from_generator(nothing, features=Features({"image": Image(), "label": Image()}))
    with pytest.raises(DataError, match="has no examples in pass 0: its shards are empty"):
        take(stream_of(empty), 1)


def test_the_stream_refuses_to_run_inside_dataloader_workers(tmp_path):
    loader = torch.utils.data.DataLoader(stream_of(make_source(tmp_path, 8, 1)), batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError, match="iterated in the training process"):
        next(iter(loader))
