"""Streaming input: Hub datasets, Parquet shards and WebDataset tars read as `datasets` IterableDatasets.

With `streaming: true` nothing is downloaded or materialised up front. The sources give the same two columns as
the materialised loader (`image`, `label`, `datasets.Image`), so the transforms, the pre-flight check and the
metrics are the ones of a materialised run. What changes, and why:

- training runs by `max_steps` (a stream has no length), from `data.train_stream.TrainStream`: each process
  reads its part of the stream (`split_dataset_by_node`), shuffled in blocks, and resumes exactly after a kill;
- the pre-flight check decodes the first `streaming_check_samples` pairs of the training stream (in file order)
  and the whole bounded validation set, with the errors of `data/preflight.py`; local shards are opened first, so a
  corrupt or mismatched shard is named before any step is spent;
- evaluation runs on the first `max_eval_samples` validation examples (unset: the first
  `STREAMING_EVAL_SAMPLES`), read once into memory: a map-style `Dataset` like any other, so DDP evaluation
  (sharded, confusion matrices reduced) is unchanged.
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # installed with datasets (which requires it): reads a shard's footer only
from datasets import Dataset, Features, Image, IterableDataset, load_dataset, load_from_disk

from hf_segformer.config.data import FORMAT_BY_EXTENSION
from hf_segformer.config.values import canonical_split
from hf_segformer.data.labels import LabelDecoder, find_id2label_file
from hf_segformer.data.preflight import DataReport, check_split, data_report
from hf_segformer.errors import DataError, RecipeError, problems_message

logger = logging.getLogger("hf_segformer")

IMAGE_FEATURES = Features({"image": Image(), "label": Image()})
# Validation examples held in memory when max_eval_samples is unset: a split of any length evaluates without a
# setting, and 500 undecoded images of a few hundred KB each stay within a few hundred MB per process.
STREAMING_EVAL_SAMPLES = 500


def is_remote(path: str) -> bool:
    return "://" in path


def resolve_data_files(data_files: dict[str, list[str]]) -> dict[str, list[str]]:
    """Expand local globs (sorted) so that a pattern matching nothing is an error naming it; URLs pass as given."""
    resolved: dict[str, list[str]] = {}
    problems = []
    for split, patterns in data_files.items():
        files: list[str] = []
        for pattern in patterns:
            if is_remote(pattern):
                files.append(pattern)
                continue
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
            if not matches:
                problems.append(f"split '{split}': '{pattern}' matches no file")
            files.extend(matches)
        resolved[split] = files
    if problems:
        raise DataError(problems_message("data_files do not point at shards", problems,
                                         "Check the paths (relative to the folder you launch from) and the globs."))
    return resolved


def detect_format(data_files: dict[str, list[str]], declared: str | None) -> str:
    if declared:
        return declared
    extensions = {Path(f.split("?")[0]).suffix.lower() for files in data_files.values() for f in files}
    formats = {FORMAT_BY_EXTENSION.get(e) for e in extensions}
    if len(formats) != 1 or None in formats:
        raise RecipeError(f"data_files mix or do not name known shard types (extensions {sorted(extensions)}); "
                          "use .parquet or WebDataset .tar files, or set data_format.")
    return formats.pop()


def check_local_shards(data_files: dict[str, list[str]], data_format: str) -> None:
    """Open every local shard (a Parquet footer, a tar's first header) and list every unreadable one at once."""
    problems = []
    for split, files in data_files.items():
        for path in files:
            if is_remote(path):
                continue
            try:
                if data_format == "parquet":
                    metadata = pq.ParquetFile(path).metadata
                    if metadata.num_rows == 0:
                        problems.append(f"{path} (split '{split}'): Parquet file with no rows")
                else:
                    with tarfile.open(path) as tar:
                        if tar.next() is None:
                            problems.append(f"{path} (split '{split}'): empty tar archive")
            except Exception as err:  # any reader failure is the user's file, not our bug
                kind = "Parquet file" if data_format == "parquet" else "tar archive"
                problems.append(f"{path} (split '{split}'): not a readable {kind} ({type(err).__name__}: {err})")
    if problems:
        raise DataError(problems_message("Some shards cannot be read", problems, "Re-write or remove these files "
                                         "(a partial copy or download is the usual cause)."))


def _match_column(wanted: str, columns: list[str]) -> str | None:
    """`wanted` itself, else the one column whose name before its first dot is `wanted` (WebDataset fields such as
    `image.jpg` / `label.png`, where the key of every member of a sample is the part before the first dot)."""
    if wanted in columns:
        return wanted
    candidates = [c for c in columns if c.split(".", 1)[0] == wanted]
    return candidates[0] if len(candidates) == 1 else None


def normalise_columns(stream: IterableDataset | Dataset, image_column: str, label_column: str, where: str):
    """Keep the image and mask columns as `image` / `label` (`datasets.Image`), whatever the source called them."""
    columns = list(stream.features or {})
    found = {"image": _match_column(image_column, columns), "label": _match_column(label_column, columns)}
    missing = [name for name, column in ((image_column, found["image"]), (label_column, found["label"]))
               if column is None]
    if missing:
        shown = [c for c in columns if not c.startswith("__")]
        raise DataError(f"{where} has no column(s) {missing}; its columns are {shown}. Set image_column / "
                        "label_column in the recipe (for WebDataset tars: the field after the sample key, e.g. "
                        "'jpg' or 'mask.png').")
    stream = stream.select_columns([found["image"], found["label"]])
    if found["image"] != "image" or found["label"] != "label":
        stream = stream.rename_columns({found["image"]: "image", found["label"]: "label"})
    for column in ("image", "label"):
        feature = stream.features[column]
        if isinstance(feature, Image):
            if not feature.decode:
                stream = stream.cast_column(column, Image())
            continue
        storage = getattr(feature, "dtype", None) if not isinstance(feature, dict) else None
        is_struct = isinstance(feature, dict) and {"bytes", "path"} <= set(feature)
        if not (is_struct or storage in ("binary", "large_binary")):
            raise DataError(f"{where} column '{found[column]}' is {feature}, not an image (datasets.Image, "
                            "{bytes, path} or binary); masks must be stored as image files (e.g. PNG).")
        stream = stream.cast_column(column, Image())
    return stream


def _splits_of(loaded: Any) -> dict[str, Any]:
    if isinstance(loaded, (Dataset, IterableDataset)):
        return {"train": loaded}
    return {canonical_split(name): ds for name, ds in loaded.items()}


def open_streams(args: Any) -> dict[str, IterableDataset]:
    """The recipe's source as one IterableDataset per split, columns `image` / `label`."""
    if args.data_files_map:
        files = resolve_data_files(args.data_files_map)
        if args.dataset_name:
            loaded = load_dataset(args.dataset_name, args.dataset_config_name, revision=args.dataset_revision,
                                  data_files=files, streaming=True)
            where = f"Dataset {args.dataset_name}"
        else:
            data_format = detect_format(files, args.data_format)
            check_local_shards(files, data_format)
            try:
                loaded = load_dataset(data_format, data_files=files, streaming=True)
            except ValueError as err:  # e.g. a WebDataset tar whose samples do not share their fields
                raise DataError(f"{data_format} shards {files.get('train', [''])[0]} ...: {err}") from err
            where = f"The {data_format} shards"
    elif args.dataset_name:
        name = args.dataset_name
        if os.path.isdir(name) and any((Path(name) / f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = {split: ds.to_iterable_dataset(num_shards=max(1, min(len(ds), len(ds.cache_files))))
                      for split, ds in _splits_of(load_from_disk(name)).items()}
        else:
            loaded = load_dataset(name, args.dataset_config_name, revision=args.dataset_revision, streaming=True)
        where = f"Dataset {name}"
    else:
        raise RecipeError("streaming: true reads data_files (Parquet or WebDataset shards) or dataset_name (a Hub "
                          "dataset); a folder of images is read whole: convert it with data.shards.write_shards, or "
                          "drop streaming.")
    return {split: normalise_columns(ds, args.image_column, args.label_column, f"{where} split '{split}'")
            for split, ds in _splits_of(loaded).items()}


def materialise(stream: IterableDataset, limit: int) -> Dataset:
    """The first `limit` examples of a stream as an in-memory `Dataset` (undecoded bytes; `datasets.Image` columns)."""
    raw = stream.cast_column("image", Image(decode=False)).cast_column("label", Image(decode=False))
    rows = list(islice(raw, limit))
    for row in rows:  # entries that only name a local file are read now: the stream's files may be temporary
        for column in ("image", "label"):
            if not row[column].get("bytes") and row[column].get("path"):
                row[column] = {"bytes": Path(row[column]["path"]).read_bytes(), "path": row[column]["path"]}
    return Dataset.from_list(rows, features=IMAGE_FEATURES)


@dataclass
class StreamingData:
    """What a streaming run trains and evaluates on."""

    train: IterableDataset  # the whole training stream, in file order (each process takes its part later)
    evaluation: Dataset | None  # the first max_eval_samples (or STREAMING_EVAL_SAMPLES) of the validation split
    train_split: str
    eval_split: str


def validate_streaming_recipe(data_args: Any, training_args: Any) -> None:
    """What a stream cannot do, said before any data is read."""
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise RecipeError("streaming: true trains by steps (a stream has no length, so num_train_epochs cannot be "
                          "turned into steps): set max_steps.")
    for name in ("eval_strategy", "save_strategy", "logging_strategy"):
        if str(getattr(getattr(training_args, name), "value", getattr(training_args, name))) == "epoch":
            raise RecipeError(f"{name}: epoch has no meaning for a stream (the run is one pass of max_steps); "
                              f"use {name}: steps.")
    if getattr(data_args, "rare_class_sampling", False):
        raise RecipeError("rare_class_sampling draws images by index from a materialised split; a stream has no "
                          "index: turn it off (rare_class_crop_prob works with a stream).")
    if data_args.validation_split > 0:
        raise RecipeError("validation_split carves a fraction of a materialised train split; with streaming give a "
                          "validation split (data_files: {validation: ...}) or set validation_split: 0.")


def load_streaming_data(args: Any, training_args: Any | None = None) -> StreamingData:
    """Open the streams; read the bounded validation set into memory (every process reads the same examples)."""
    if training_args is not None:
        validate_streaming_recipe(args, training_args)
    streams = open_streams(args)
    train_split, eval_split = canonical_split(args.train_split), canonical_split(args.eval_split)
    if train_split not in streams:
        raise DataError(f"No '{args.train_split}' split; the data has {sorted(streams)}.")
    train = streams[train_split]
    if args.max_train_samples is not None:
        train = train.take(args.max_train_samples)
    evaluation = None
    if eval_split in streams:
        limit = STREAMING_EVAL_SAMPLES if args.max_eval_samples is None else args.max_eval_samples
        evaluation = materialise(streams[eval_split], limit)
        if len(evaluation) == 0:
            raise DataError(f"Split '{eval_split}' is empty.")
        if args.max_eval_samples is not None:
            bound = f"max_eval_samples {args.max_eval_samples}"
        elif len(evaluation) < limit:
            bound = f"the whole split; max_eval_samples unset reads up to {limit}"
        else:
            bound = f"max_eval_samples unset: at most {limit} are held in memory; set max_eval_samples to change it"
        logger.info("Evaluating on the first %d examples of the '%s' stream (%s).", len(evaluation), eval_split, bound)
    return StreamingData(train, evaluation, train_split, eval_split)


def check_streaming_data(data: StreamingData, decoder: LabelDecoder, num_labels: int, id2label: dict[int, str],
                         samples: int, num_proc: int | None = None) -> DataReport:
    """The pre-flight check on the first `samples` training pairs and the whole bounded validation set.

    The training histogram (and class weights computed from it) then describe that sample, not the full stream.
    """
    sample = materialise(data.train, samples)
    if len(sample) == 0:
        raise DataError(f"Split '{data.train_split}' is empty.")
    splits = {data.train_split: check_split(sample, f"{data.train_split} (first {len(sample)} of the stream)",
                                            decoder, num_labels, num_proc)}
    if data.evaluation is not None:
        splits[data.eval_split] = check_split(data.evaluation, data.eval_split, decoder, num_labels, num_proc)
    return data_report(decoder, num_labels, id2label, splits)


def find_id2label_near_shards(data_files: dict[str, list[str]] | None) -> str | None:
    """The path of an `id2label.json` in the folder of the local shards, or in its parent (e.g. next to `data/`)."""
    for files in (data_files or {}).values():
        for pattern in files:
            if is_remote(pattern):
                continue
            folder = Path(os.path.expanduser(pattern)).parent
            while glob.has_magic(str(folder)):
                folder = folder.parent
            found = find_id2label_file(str(folder))
            if found:
                return found
    return None
