"""Loading image/mask pairs into a `datasets.DatasetDict` with columns `image` and `label` (`datasets.Image`).

Sources: an image folder + a mask folder (pairs matched by file stem, split sub-folders discovered),
a Hub dataset id, or a local `save_to_disk` folder. Nothing is dropped silently: unpaired files are errors.
`load_split` reads one split alone (undecoded), as evaluation and the deploy checks measure on it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk
from PIL import Image as PILImage

from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import SPLIT_ALIASES, canonical_split
from hf_segformer.data.images import IMAGE_EXTENSIONS, MASK_EXTENSIONS, is_image_file
from hf_segformer.errors import DataError, problems_message

logger = logging.getLogger(__name__)

def _index_files(folder: Path, extensions: set[str], suffix: str
                 ) -> tuple[dict[str, Path], list[str], dict[str, Path]]:
    """Map pairing key (relative path without extension and suffix) → file; report ambiguous keys, and the
    broken links (a symbolic link whose target is gone) by key. With a suffix, only the files whose stem ends with
    it take part."""
    index: dict[str, Path] = {}
    broken: dict[str, Path] = {}
    duplicates = []
    for path in sorted(folder.rglob("*")):
        dangling = path.is_symlink() and not path.exists()
        if (not path.is_file() and not dangling) or path.name.startswith(".") or path.suffix.lower() not in extensions:
            continue
        key = str(path.relative_to(folder).with_suffix(""))
        if suffix:
            if not key.endswith(suffix):  # e.g. Cityscapes' *_gtFine_color.png beside *_gtFine_labelTrainIds.png
                continue
            key = key[: -len(suffix)]
        if dangling:
            broken[key] = path
            continue
        if key in index:
            duplicates.append(f"{index[key]} and {path} both pair as '{key}'")
        index[key] = path
    return index, duplicates, broken


def _broken(path: Path) -> str:
    return f"{path}: broken link (it points to {os.readlink(path)}, which does not exist)"


JPEG_EXTENSIONS = {".jpg", ".jpeg"}  # never read as masks: JPEG changes the class ids at every edge


def pair_files(image_dir: Path, mask_dir: Path, image_suffix: str = "", mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """Pair images with masks by stem (not by sort order); any unpaired or ambiguous file is an error."""
    images, dup_images, broken_images = _index_files(image_dir, IMAGE_EXTENSIONS, image_suffix)
    masks, dup_masks, broken_masks = _index_files(mask_dir, MASK_EXTENSIONS, mask_suffix)
    jpeg_masks = _index_files(mask_dir, JPEG_EXTENSIONS, mask_suffix)[0] if mask_dir != image_dir else {}
    problems = dup_images + dup_masks
    problems += [_broken(path) for path in sorted([*broken_images.values(), *broken_masks.values()])]
    for key in sorted(images.keys() - masks.keys() - broken_masks.keys()):
        if key in jpeg_masks:
            problems.append(f"{images[key]}: its mask {jpeg_masks[key]} is a JPEG file; JPEG compression changes "
                            "class ids at every edge, so masks are read from PNG (or TIFF, BMP, .npy) only: save "
                            "the masks losslessly as PNG from the original labels")
        else:
            problems.append(f"{images[key]}: no mask with stem '{key}' in {mask_dir}")
    problems += [f"{masks[k]}: mask without an image in {image_dir}"
                 for k in sorted(masks.keys() - images.keys() - broken_images.keys())]
    if problems:
        raise DataError(problems_message(
            f"Images and masks in {image_dir} / {mask_dir} do not pair up by file name", problems,
            "Every image needs exactly one mask with the same stem (set image_suffix/mask_suffix if names differ "
            "by a fixed suffix); remove or move stray files.",
        ))
    if not images:
        raise DataError(f"No images found in {image_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return [(images[k], masks[k]) for k in sorted(images)]


def _mask_entry(path: Path) -> dict:
    """`.npy` masks become PNG bytes so that the `label` column is always a `datasets.Image`."""
    if path.suffix.lower() != ".npy":
        return {"path": str(path), "bytes": None}
    array = np.load(path)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 65535:
        raise DataError(f"{path}: a .npy mask must be a 2-D array of integer class ids in 0..65535; "
                        f"got shape {array.shape}, dtype {array.dtype}.")
    image = PILImage.fromarray(array.astype(np.uint8 if array.max() < 256 else np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"path": str(path), "bytes": buffer.getvalue()}


def _pairs_to_dataset(pairs: list[tuple[Path, Path]]) -> Dataset:
    data = {"image": [{"path": str(i), "bytes": None} for i, _ in pairs], "label": [_mask_entry(m) for _, m in pairs]}
    return Dataset.from_dict(data).cast_column("image", Image()).cast_column("label", Image())


def _split_folders(folder: Path) -> dict[str, Path]:
    """Sub-folders named after a split (train, validation|val|valid, test), by canonical split name."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and path.name.lower() in SPLIT_ALIASES:
            split = canonical_split(path.name)
            if split in found:
                raise DataError(f"{found[split]} and {path} are both the '{split}' split; keep one.")
            found[split] = path
    return found


def load_folder_dataset(image_dir: str | os.PathLike, mask_dir: str | os.PathLike,
                        image_suffix: str = "", mask_suffix: str = "") -> DatasetDict:
    """Folder pairs → DatasetDict; `train/`, `validation|val/`, `test/` sub-folders become splits."""
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not folder.is_dir():
            raise DataError(f"The {what} folder {folder} does not exist.")
    image_splits, mask_splits = _split_folders(image_dir), _split_folders(mask_dir)
    if not image_splits:
        return DatasetDict({"train": _pairs_to_dataset(pair_files(image_dir, mask_dir, image_suffix, mask_suffix))})
    problems = [f"{image_splits[s]}: no mask folder for split '{s}' in {mask_dir}" for s in image_splits.keys() - mask_splits.keys()]
    problems += [f"{mask_splits[s]}: no image folder for split '{s}' in {image_dir}" for s in mask_splits.keys() - image_splits.keys()]
    problems += [f"{p}: file outside the split folders" for p in sorted(image_dir.iterdir()) if is_image_file(p)]
    if problems:
        raise DataError(problems_message(f"The split folders of {image_dir} and {mask_dir} do not match", problems,
                                         "Use the same split sub-folders (train/, validation|val/, test/) on both sides."))
    splits, failures = {}, []
    for split, folder in sorted(image_splits.items()):  # every split's problems in one error
        try:
            splits[split] = _pairs_to_dataset(pair_files(folder, mask_splits[split], image_suffix, mask_suffix))
        except DataError as err:
            failures.append(str(err))
    if failures:
        raise DataError("\n".join(failures))
    return DatasetDict(splits)


def _load_hub_or_disk(args: DataArguments) -> DatasetDict:
    name = args.dataset_name
    if os.path.isdir(name) and any((Path(name) / f).exists() for f in ("dataset_dict.json", "state.json")):
        loaded = load_from_disk(name)
    else:
        loaded = load_dataset(name, args.dataset_config_name, revision=args.dataset_revision, cache_dir=None)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    renamed = {}
    for split, ds in loaded.items():
        missing = [c for c in (args.image_column, args.label_column) if c not in ds.column_names]
        if missing:
            raise DataError(f"Dataset {name} split '{split}' has no column(s) {missing}; its columns are "
                            f"{ds.column_names}. Set image_column / label_column in the recipe.")
        ds = ds.select_columns([args.image_column, args.label_column])
        ds = ds.rename_columns({args.image_column: "image", args.label_column: "label"})
        for column in ("image", "label"):
            if not isinstance(ds.features[column], Image):
                raise DataError(f"Dataset {name} column '{column}' is {ds.features[column]}, not datasets.Image.")
        renamed[canonical_split(split)] = ds
    return DatasetDict(renamed)


def undecoded(dataset: Dataset, columns: tuple[str, ...] = ("image", "label")) -> Dataset:
    """The dataset with its image columns left as {path, bytes}: the transforms and the check open them themselves
    (reading masks as their palette indices, decoding large JPEGs at reduced scale)."""
    for column in columns:
        dataset = dataset.cast_column(column, Image(decode=False))
    return dataset


def load_data(args: DataArguments, seed: int = 42) -> DatasetDict:
    """Load the configured source and make sure there is a train and (if possible) a validation split."""
    if args.dataset_name:
        data = _load_hub_or_disk(args)
    else:
        image_dir = args.image_dir or (args.data_dir and os.path.join(args.data_dir, "images"))
        mask_dir = args.mask_dir or (args.data_dir and os.path.join(args.data_dir, "masks"))
        if not image_dir or not mask_dir:
            raise DataError("No data given: set data_dir (with images/ and masks/), image_dir + mask_dir, or dataset_name.")
        data = load_folder_dataset(image_dir, mask_dir, args.image_suffix, args.mask_suffix)
    train_split, eval_split = canonical_split(args.train_split), canonical_split(args.eval_split)
    if train_split not in data:
        raise DataError(f"No '{args.train_split}' split; the data has {sorted(data)}.")
    if eval_split not in data and args.validation_split > 0:
        carved = data[train_split].train_test_split(test_size=args.validation_split, seed=seed)
        data[train_split], data[eval_split] = carved["train"], carved["test"]
        logger.info("Carved %d validation samples from %d (seed %d).", len(carved["test"]),
                    len(carved["train"]) + len(carved["test"]), seed)
    if args.max_train_samples is not None:
        data[train_split] = data[train_split].select(range(min(args.max_train_samples, len(data[train_split]))))
    if eval_split in data and args.max_eval_samples is not None:
        data[eval_split] = data[eval_split].select(range(min(args.max_eval_samples, len(data[eval_split]))))
    return data


def load_split(data_args: DataArguments, seed: int = 42) -> Dataset:
    """The split named by `eval_split`, undecoded. A data folder that holds only that split is fine; a split
    carved from train (`validation_split`) is carved with the training's seed, so it is the same one."""
    if data_args.validation_split == 0:
        data_args = dataclasses.replace(data_args, train_split=data_args.eval_split, max_train_samples=None)
    data = load_data(data_args, seed)
    split = canonical_split(data_args.eval_split)
    if split not in data:
        raise DataError(f"No '{data_args.eval_split}' split to evaluate; the data has {sorted(data)}.")
    return undecoded(data[split])


def split_entries(data_args: DataArguments, split: str, seed: int = 42) -> list[Any]:
    """The undecoded (image, label) entries of one split of the recipe's data."""
    dataset = load_split(dataclasses.replace(data_args, eval_split=split), seed)
    return list(zip(dataset["image"], dataset["label"]))


def spread_indices(count: int, num_samples: int) -> list[int]:
    """`num_samples` indices spread evenly over a dataset of `count` (first and last included): the sample grids'
    images, the masks the data check measures, the evaluation subset inside a time budget."""
    if count <= 0 or num_samples <= 0:
        return []
    return sorted({round(i * (count - 1) / max(num_samples - 1, 1)) for i in range(min(num_samples, count))})
