"""Writing image/mask pairs as Parquet and WebDataset shards (`hf_segformer.data.shards`).

A user relies on: a streamed example holding exactly the bytes of the file it came from (no re-encoding), in the
order of the pairs; `.npy` masks becoming PNG class ids; nothing already written being overwritten.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image
from support.streams import write_pairs

from hf_segformer.data.shards import write_parquet_shards, write_shards, write_webdataset_shards
from hf_segformer.errors import DataError


def decoded(entry: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(entry["bytes"])))


def test_parquet_shards_hold_the_files_bytes_in_order(tmp_path):
    pairs = write_pairs(tmp_path / "pairs", 7)
    written = write_parquet_shards(pairs, tmp_path / "shards", "train", num_shards=3)
    assert [p.name for p in written] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    stream = load_dataset("parquet", data_files=[str(p) for p in written], streaming=True)["train"]
    assert {name: type(f).__name__ for name, f in stream.features.items()} == {"image": "Image", "label": "Image"}
    rows = list(stream.decode(False))
    assert len(rows) == 7
    for (image_path, mask_path), row in zip(pairs, rows):
        assert row["image"]["bytes"] == image_path.read_bytes() and row["label"]["bytes"] == mask_path.read_bytes()
        assert row["image"]["path"] == image_path.name


def test_webdataset_shards_pair_image_and_mask_by_key(tmp_path):
    pairs = write_pairs(tmp_path / "pairs", 5)
    written = write_webdataset_shards(pairs, tmp_path / "shards", "validation", num_shards=2)
    with tarfile.open(written[0]) as tar:
        assert tar.getnames()[:4] == ["0000.image.png", "0000.label.png", "0001.image.png", "0001.label.png"]
    stream = load_dataset("webdataset", data_files=[str(p) for p in written], streaming=True)["train"]
    rows = list(stream.decode(False))
    assert [r["__key__"] for r in rows] == ["0000", "0001", "0002", "0003", "0004"]
    for (image_path, mask_path), row in zip(pairs, rows):
        assert row["image.png"]["bytes"] == image_path.read_bytes()
        assert row["label.png"]["bytes"] == mask_path.read_bytes()


@pytest.mark.parametrize("shard_format", ["parquet", "webdataset"])
def test_npy_masks_become_png_class_ids(tmp_path, shard_format):
    pairs = write_pairs(tmp_path / "pairs", 2)
    values = np.arange(24 * 16).reshape(16, 24) % 300  # needs 16 bits
    npy = tmp_path / "pairs" / "masks" / "0001.npy"
    np.save(npy, values)
    written = write_shards([pairs[0], (pairs[1][0], npy)], tmp_path / "shards", shard_format, num_shards=1)
    name = "parquet" if shard_format == "parquet" else "webdataset"
    rows = list(load_dataset(name, data_files=str(written[0]), streaming=True)["train"].decode(False))
    label = rows[1]["label"] if shard_format == "parquet" else rows[1]["label.png"]
    np.testing.assert_array_equal(decoded(label), values)


def test_existing_shards_are_never_overwritten_unless_asked(tmp_path):
    pairs = write_pairs(tmp_path / "pairs", 4)
    first = write_parquet_shards(pairs, tmp_path / "shards", num_shards=2)
    before = first[0].read_bytes()
    with pytest.raises(DataError, match="already holds shards of split 'train'.*pass overwrite=True"):
        write_parquet_shards(pairs[:2], tmp_path / "shards", num_shards=2)
    assert first[0].read_bytes() == before
    write_parquet_shards(pairs[:2], tmp_path / "shards", num_shards=2, overwrite=True)
    with pytest.raises(DataError, match="another shard count"):  # 3 files would leave the 2-shard set to be read too
        write_parquet_shards(pairs, tmp_path / "shards", num_shards=3, overwrite=True)


def test_webdataset_keys_must_be_unique_and_dotless(tmp_path):
    pairs = write_pairs(tmp_path / "pairs", 2)
    dotted = pairs[0][0].with_name("a.b.png")
    pairs[0][0].rename(dotted)
    written = write_webdataset_shards([(dotted, pairs[0][1]), pairs[1]], tmp_path / "shards")
    with tarfile.open(written[0]) as tar:
        assert tar.getnames()[0] == "a_b.image.png"
    clash = pairs[1][0].with_name("a_b.png")
    pairs[1][0].rename(clash)
    with pytest.raises(DataError, match=r"share the WebDataset key\(s\) \['a_b'\]"):
        write_webdataset_shards([(dotted, pairs[0][1]), (clash, pairs[1][1])], tmp_path / "other")


def test_more_shards_than_pairs_is_an_error(tmp_path):
    with pytest.raises(DataError, match="num_shards must be between 1 and the number of pairs \\(2\\)"):
        write_parquet_shards(write_pairs(tmp_path / "pairs", 2), tmp_path / "shards", num_shards=3)
