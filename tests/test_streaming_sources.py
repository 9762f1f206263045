"""Opening streams (`hf_segformer.data.streaming`): Parquet shards, WebDataset tars, a Hub-style dataset folder;
the recipe fields; the bounded validation set; the pre-flight check on the first pairs; bad shards.

A user relies on: the same `image` / `label` columns from every source; a recipe that cannot stream (no max_steps,
epoch strategies, validation carved by fraction) refused before any data is read; the validation set held in
memory bounded without a setting, and the bound said in the log;
a pattern that matches nothing, a corrupt or empty shard, a missing column named in one clear error; the
pre-flight check raising the errors of `data/preflight.py` on the first N pairs and counting their pixels.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from support.streams import write_pairs

import hf_segformer.data.streaming
from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import normalise_id2label, parse_data_files
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.shards import write_parquet_shards, write_webdataset_shards
from hf_segformer.data.streaming import (
    check_streaming_data,
    find_id2label_near_shards,
    load_streaming_data,
    open_streams,
    validate_streaming_recipe,
)
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.training.arguments import SegformerTrainingArguments

ID2LABEL = {0: "a", 1: "b", 2: "c"}


def data_args(**fields) -> DataArguments:
    return DataArguments(**{"streaming": True, "id2label": json.dumps(ID2LABEL), **fields})


def training_args(tmp_path, **fields) -> SegformerTrainingArguments:
    return SegformerTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                                      **{"max_steps": 5, **fields})


def parquet_set(tmp_path, train: int = 6, validation: int = 3, shards: int = 2) -> dict[str, str]:
    write_parquet_shards(write_pairs(tmp_path / "t", train), tmp_path / "shards", "train", shards)
    write_parquet_shards(write_pairs(tmp_path / "v", validation, seed=1), tmp_path / "shards", "validation", 1)
    return {"train": str(tmp_path / "shards" / "train-*.parquet"),
            "validation": str(tmp_path / "shards" / "validation-*.parquet")}


def pixels(entry: dict) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(entry["bytes"])) if entry.get("bytes") else PILImage.open(entry["path"]))


def test_data_files_are_read_from_yaml_json_or_a_single_glob():
    assert parse_data_files({"train": "a/*.parquet", "val": ["b/1.parquet", "b/2.parquet"]}) == {
        "train": ["a/*.parquet"], "val": ["b/1.parquet", "b/2.parquet"]}
    assert parse_data_files('{"train": ["a/*.tar"]}') == {"train": ["a/*.tar"]}
    assert parse_data_files("shards/*.parquet") == {"train": ["shards/*.parquet"]}
    with pytest.raises(RecipeError, match="split 'train' needs one or more paths"):
        parse_data_files({"train": []})
    with pytest.raises(RecipeError, match="streaming_split must be one of auto, shards, examples"):
        data_args(streaming_split="nodes")


@pytest.mark.parametrize("shard_format", ["parquet", "webdataset"])
def test_shards_stream_as_image_and_label_columns(tmp_path, shard_format):
    pairs = write_pairs(tmp_path / "t", 5)
    writer = write_parquet_shards if shard_format == "parquet" else write_webdataset_shards
    writer(pairs, tmp_path / "shards", "train", 2)
    extension = "parquet" if shard_format == "parquet" else "tar"
    streams = open_streams(data_args(data_files={"train": str(tmp_path / f"shards/*.{extension}")}))
    assert list(streams) == ["train"]
    assert list(streams["train"].features) == ["image", "label"]
    assert all(isinstance(f, Image) for f in streams["train"].features.values())
    rows = list(streams["train"])
    assert len(rows) == 5
    np.testing.assert_array_equal(np.asarray(rows[3]["label"]), pixels({"path": str(pairs[3][1])}))


def test_webdataset_fields_are_named_by_what_follows_the_key(tmp_path):
    pairs = write_pairs(tmp_path / "t", 3)
    write_webdataset_shards(pairs, tmp_path / "shards", image_field="rgb", label_field="seg")
    files = {"train": str(tmp_path / "shards" / "*.tar")}
    with pytest.raises(DataError) as error:
        open_streams(data_args(data_files=files))
    assert "has no column(s) ['image', 'label']; its columns are ['rgb.png', 'seg.png']" in str(error.value)
    streams = open_streams(data_args(data_files=files, image_column="rgb.png", label_column="seg"))
    np.testing.assert_array_equal(np.asarray(next(iter(streams["train"]))["image"]), pixels({"path": str(pairs[0][0])}))


def test_a_hub_style_dataset_folder_streams_its_splits(tmp_path):
    """`dataset_name` resolves a folder of `data/<split>-*.parquet` exactly as it resolves a Hub repository."""
    repo = tmp_path / "repo"
    write_parquet_shards(write_pairs(tmp_path / "t", 4), repo / "data", "train", 2)
    write_parquet_shards(write_pairs(tmp_path / "v", 2, seed=1), repo / "data", "validation", 1)
    streams = open_streams(data_args(dataset_name=str(repo)))
    assert sorted(streams) == ["train", "validation"]
    assert [len(list(streams[s])) for s in ("train", "validation")] == [4, 2]


def test_a_saved_dataset_streams_with_renamed_columns(tmp_path):
    pairs = write_pairs(tmp_path / "t", 3)
    features = Features({"photo": Image(), "mask": Image(), "id": Value("int32")})
    Dataset.from_dict({"photo": [str(i) for i, _ in pairs], "mask": [str(m) for _, m in pairs], "id": [0, 1, 2]},
                      features=features).save_to_disk(str(tmp_path / "saved"))
    streams = open_streams(data_args(dataset_name=str(tmp_path / "saved"), image_column="photo", label_column="mask"))
    assert list(streams["train"].features) == ["image", "label"] and len(list(streams["train"])) == 3


def test_bad_data_files_are_all_named_before_any_reading(tmp_path):
    files = parquet_set(tmp_path)
    with pytest.raises(DataError) as error:
        open_streams(data_args(data_files={**files, "test": str(tmp_path / "nowhere" / "*.parquet")}))
    assert f"split 'test': '{tmp_path}/nowhere/*.parquet' matches no file" in str(error.value)

    (tmp_path / "shards" / "train-00009-of-00010.parquet").write_bytes(b"PAR1 truncated")
    schema = Features({"image": Image(), "label": Image()}).arrow_schema
    import pyarrow.parquet as pq

    pq.write_table(schema.empty_table(), tmp_path / "shards" / "train-empty.parquet")
    with pytest.raises(DataError) as error:
        open_streams(data_args(data_files=files))
    message = str(error.value)
    assert message.startswith("Some shards cannot be read (2 problems):")
    assert "train-00009-of-00010.parquet (split 'train'): not a readable Parquet file" in message
    assert "train-empty.parquet (split 'train'): Parquet file with no rows" in message


def test_a_broken_tar_is_named(tmp_path):
    write_webdataset_shards(write_pairs(tmp_path / "t", 2), tmp_path / "shards")
    (tmp_path / "shards" / "train-99999.tar").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match=r"train-99999.tar \(split 'train'\): (not a readable tar archive|empty tar)"):
        open_streams(data_args(data_files={"train": str(tmp_path / "shards" / "*.tar")}))


def test_mixed_or_unknown_shard_types_are_refused(tmp_path):
    parquet_set(tmp_path)
    (tmp_path / "shards" / "x.tar").write_bytes(b"")
    with pytest.raises(RecipeError, match=r"mix or do not name known shard types \(extensions \['.parquet', "
                                          r"'.tar'\]\)"):
        open_streams(data_args(data_files={"train": str(tmp_path / "shards" / "*")}))


def test_a_column_that_is_not_an_image_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "s").mkdir()
    pq.write_table(pa.table({"image": [b"x"], "label": [3]}), tmp_path / "s" / "train.parquet")
    with pytest.raises(DataError, match="column 'label' is Value\\('int64'\\), not an image"):
        open_streams(data_args(data_files=str(tmp_path / "s" / "*.parquet")))


@pytest.mark.parametrize(("fields", "message"), [
    (dict(max_steps=-1), "streaming: true trains by steps"),
    (dict(eval_strategy="epoch"), "eval_strategy: epoch has no meaning for a stream"),
    (dict(save_strategy="epoch"), "save_strategy: epoch has no meaning for a stream"),
])
def test_what_a_stream_cannot_do_is_refused_up_front(tmp_path, fields, message):
    with pytest.raises(RecipeError, match=message):
        validate_streaming_recipe(data_args(), training_args(tmp_path, **fields))
    with pytest.raises(RecipeError, match="validation_split carves a fraction"):
        validate_streaming_recipe(data_args(validation_split=0.1), training_args(tmp_path))
    with pytest.raises(RecipeError, match="rare_class_sampling draws images by index"):
        validate_streaming_recipe(data_args(rare_class_sampling=True), training_args(tmp_path))


def test_the_validation_set_is_bounded_and_held_in_memory(tmp_path):
    files = parquet_set(tmp_path, validation=5)
    data = load_streaming_data(data_args(data_files=files, max_eval_samples=3), training_args(tmp_path))
    for shard in (tmp_path / "shards").iterdir():  # nothing is read from the shards any more
        shard.unlink()
    assert isinstance(data.evaluation, Dataset) and len(data.evaluation) == 3
    expected = write_pairs(tmp_path / "again", 5, seed=1)  # same seed: the same pixels as the validation pairs
    for row, (image_path, _) in zip(data.evaluation, expected[:3], strict=True):
        np.testing.assert_array_equal(np.asarray(row["image"]), pixels({"path": str(image_path)}))


def test_without_max_eval_samples_a_bounded_default_is_read_and_said(tmp_path, monkeypatch, caplog):
    files = parquet_set(tmp_path, validation=5)
    with caplog.at_level(logging.INFO, logger="hf_segformer"):
        whole = load_streaming_data(data_args(data_files=files), training_args(tmp_path))
    assert len(whole.evaluation) == 5
    assert "Evaluating on the first 5 examples of the 'validation' stream (the whole split; max_eval_samples unset " \
           "reads up to 500)" in caplog.text
    monkeypatch.setattr(hf_segformer.data.streaming, "STREAMING_EVAL_SAMPLES", 3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_segformer"):
        bounded = load_streaming_data(data_args(data_files=files), training_args(tmp_path))
    assert len(bounded.evaluation) == 3
    assert "(max_eval_samples unset: at most 3 are held in memory; set max_eval_samples to change it)" in caplog.text


def test_max_train_samples_keeps_the_first_examples(tmp_path):
    data = load_streaming_data(data_args(data_files=parquet_set(tmp_path), max_eval_samples=2, max_train_samples=4))
    assert len(list(data.train)) == 4


def test_the_pre_flight_check_reads_the_first_pairs_with_the_errors_of_the_folder_check(tmp_path):
    pairs = write_pairs(tmp_path / "t", 6)
    bad_size = np.zeros((16, 20), dtype=np.uint8)  # the image is 24×16
    PILImage.fromarray(bad_size).save(pairs[1][1])
    bad_values = np.full((16, 24), 7, dtype=np.uint8)
    PILImage.fromarray(bad_values).save(pairs[5][1])  # beyond the first 4: not checked
    write_parquet_shards(pairs, tmp_path / "shards", "train", 2)
    data = load_streaming_data(data_args(data_files=str(tmp_path / "shards" / "*.parquet")))
    decoder = LabelDecoder(ignore_index=255)
    with pytest.raises(DataError) as error:
        check_streaming_data(data, decoder, 3, ID2LABEL, samples=4)
    message = str(error.value)
    assert message.startswith("The 'train (first 4 of the stream)' data failed the pre-flight check (1 problem):")
    assert "0001.png: mask is 20×16 but its image 0001.png is 24×16" in message

    PILImage.fromarray(np.zeros((16, 24), dtype=np.uint8)).save(pairs[1][1])
    write_parquet_shards(pairs, tmp_path / "shards", "train", 2, overwrite=True)
    report = check_streaming_data(data, decoder, 3, ID2LABEL, samples=4)
    masks = [np.asarray(PILImage.open(m)) for _, m in pairs[:4]]
    expected = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    assert report.splits["train"].num_samples == 4
    assert report.splits["train"].pixel_counts == [*expected.tolist(), 0]
    with pytest.raises(DataError, match="0005.png: values 7 are outside the 3 classes"):
        check_streaming_data(data, decoder, 3, ID2LABEL, samples=6)


def test_class_names_are_found_next_to_the_shards(tmp_path):
    files = parquet_set(tmp_path)
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "sea", "1": "land"}))
    assert normalise_id2label(find_id2label_near_shards(parse_data_files(files))) == {0: "sea", 1: "land"}
    assert find_id2label_near_shards({"train": ["hf://datasets/x/y/*.parquet"]}) is None


def test_the_stream_of_the_recipe_reads_like_the_folder_it_was_written_from(tmp_path):
    """Training pairs streamed from shards decode to the pixels of the folder dataset the project loads today."""
    from hf_segformer.data.loading import load_folder_dataset

    pairs = write_pairs(tmp_path / "folder", 4)
    write_parquet_shards(pairs, tmp_path / "shards", "train", 2)
    folder = load_folder_dataset(tmp_path / "folder" / "images", tmp_path / "folder" / "masks")["train"]
    streamed = list(open_streams(data_args(data_files=str(tmp_path / "shards" / "*.parquet")))["train"])
    assert len(streamed) == len(folder) == 4
    for row, expected in zip(streamed, folder, strict=True):
        for column in ("image", "label"):
            np.testing.assert_array_equal(np.asarray(row[column]), np.asarray(expected[column]))


def test_push_dataset_refuses_a_stream_before_reading_it(tmp_path):
    from hf_segformer.hub.publish import publishable_data

    missing = str(tmp_path / "nowhere" / "train-*.parquet")  # never opened: the refusal comes first
    with pytest.raises(RecipeError, match="push-dataset does not read streams"):
        publishable_data(DataArguments(streaming=True, data_files={"train": missing}))


def test_a_class_missing_from_the_first_pairs_is_a_warning_for_a_stream(tmp_path, caplog):
    """The check sees only the first pairs of a stream: a class that is not among them may come later, so the
    "cannot teach every class" check warns instead of stopping the run (for a folder it is an error)."""
    from hf_segformer.data.prepare import run_data_check

    pairs = write_pairs(tmp_path / "t", 6, classes=2)  # classes 0 and 1 only ...
    PILImage.fromarray(np.full((16, 24), 2, dtype=np.uint8)).save(pairs[5][1])  # ... class 2 in the sixth pair
    write_parquet_shards(pairs, tmp_path / "shards", "train", 2)
    args = data_args(data_files=str(tmp_path / "shards" / "*.parquet"), streaming_check_samples=4)
    with caplog.at_level("WARNING", logger="hf_segformer"):
        report = run_data_check(load_streaming_data(args), args, ID2LABEL)
    assert report.splits["train"].num_samples == 4 and report.splits["train"].pixel_counts[2] == 0
    assert "Not in the first 4 training pairs of the stream (1 problem):" in caplog.text
    assert "class 2 'c' has no pixels in the 'train' split" in caplog.text
