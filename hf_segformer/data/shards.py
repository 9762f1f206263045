"""Write image/mask pairs as streamable shards: Parquet files or WebDataset tars.

Streaming (`streaming: true`) reads shards, not folders. These writers turn a folder dataset (or any list of
pairs) into shards that `load_dataset("parquet" | "webdataset", data_files=..., streaming=True)` reads back
with the same `image` / `label` columns: the file bytes are stored as they are (no re-encoding), so a streamed
example decodes to exactly the pixels of the folder's file. Existing shards are never overwritten unless asked.

Parquet: `<split>-00000-of-00004.parquet`, the Hub's own layout; each row holds both files' bytes as
`datasets.Image` columns. WebDataset: `<split>-00000-of-00004.tar`, one sample per pair, members
`<key>.image.<ext>` and `<key>.label.<ext>` (WebDataset groups consecutive members by the part of the file
name before the first dot, so dots in a stem are replaced by `_` in the key).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

from hf_segformer.errors import DataError

PairList = Sequence[tuple[Path, Path]]
SHARD_FORMATS = ("parquet", "webdataset")


def _file_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes and extension; a `.npy` mask becomes PNG bytes (a `datasets.Image` column holds images)."""
    if path.suffix.lower() != ".npy":
        return path.read_bytes(), path.suffix.lower().lstrip(".")
    array = np.load(path)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 65535:
        raise DataError(f"{path}: a .npy mask must be a 2-D array of integer class ids in 0..65535; "
                        f"got shape {array.shape}, dtype {array.dtype}.")
    buffer = io.BytesIO()
    PILImage.fromarray(array.astype(np.uint8 if array.max() < 256 else np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def shard_names(split: str, num_shards: int, extension: str) -> list[str]:
    return [f"{split}-{i:05d}-of-{num_shards:05d}.{extension}" for i in range(num_shards)]


def _targets(out_dir: str | os.PathLike, split: str, num_shards: int, extension: str, pairs: PairList,
             overwrite: bool) -> list[Path]:
    if not pairs:
        raise DataError(f"No pairs to write for split '{split}'.")
    if not 1 <= num_shards <= len(pairs):
        raise DataError(f"num_shards must be between 1 and the number of pairs ({len(pairs)}); got {num_shards}.")
    out = Path(out_dir)
    targets = [out / name for name in shard_names(split, num_shards, extension)]
    existing = [str(t) for t in targets if t.exists()]
    stale = sorted(str(p) for p in out.glob(f"{split}-*.{extension}") if p not in targets) if out.is_dir() else []
    if (existing or stale) and not overwrite:
        raise DataError(f"{out} already holds shards of split '{split}' ({(existing + stale)[0]}, "
                        f"{len(existing) + len(stale)} in all); pick another folder or pass overwrite=True.")
    if stale:  # a previous write with another shard count: its files would be read as part of this split
        raise DataError(f"{out} holds '{split}' shards of another shard count ({stale[0]}); remove them first.")
    out.mkdir(parents=True, exist_ok=True)
    return targets


def _chunks(pairs: PairList, num_shards: int) -> list[PairList]:
    """Contiguous, near-equal chunks (the first `len % num_shards` one pair longer)."""
    bounds = np.linspace(0, len(pairs), num_shards + 1).round().astype(int)
    return [pairs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def write_parquet_shards(pairs: PairList, out_dir: str | os.PathLike, split: str = "train", num_shards: int = 1,
                         overwrite: bool = False, row_group_size: int = 64) -> list[Path]:
    """Write `pairs` as Parquet shards with `image` / `label` `datasets.Image` columns (bytes embedded)."""
    targets = _targets(out_dir, split, num_shards, "parquet", pairs, overwrite)
    features = Features({"image": Image(), "label": Image()})  # stored in the file's metadata: read back as Image
    for target, chunk in zip(targets, _chunks(pairs, num_shards)):
        rows = {"image": [], "label": []}
        for image_path, mask_path in chunk:
            rows["image"].append({"bytes": _file_bytes(image_path)[0], "path": image_path.name})
            rows["label"].append({"bytes": _file_bytes(mask_path)[0], "path": mask_path.name})
        Dataset.from_dict(rows, features=features).to_parquet(str(target), batch_size=row_group_size)
    return targets


def sample_key(image_path: Path) -> str:
    """The WebDataset key of a pair: the image's stem without dots (a dot would end the key)."""
    return image_path.stem.replace(".", "_")


def write_webdataset_shards(pairs: PairList, out_dir: str | os.PathLike, split: str = "train", num_shards: int = 1,
                            overwrite: bool = False, image_field: str = "image",
                            label_field: str = "label") -> list[Path]:
    """Write `pairs` as WebDataset tars: per pair `<key>.<image_field>.<ext>` then `<key>.<label_field>.<ext>`."""
    targets = _targets(out_dir, split, num_shards, "tar", pairs, overwrite)
    keys = [sample_key(image) for image, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise DataError(f"Several pairs share the WebDataset key(s) {duplicates[:5]}: keys are image stems with "
                        "dots replaced by '_' and must be unique within a split.")
    for target, chunk in zip(targets, _chunks(pairs, num_shards)):
        with tarfile.open(target, "w") as tar:
            for image_path, mask_path in chunk:
                for field_name, path in ((image_field, image_path), (label_field, mask_path)):
                    data, extension = _file_bytes(path)
                    info = tarfile.TarInfo(f"{sample_key(image_path)}.{field_name}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return targets


def write_shards(pairs: PairList, out_dir: str | os.PathLike, shard_format: str, split: str = "train",
                 num_shards: int = 1, overwrite: bool = False) -> list[Path]:
    if shard_format not in SHARD_FORMATS:
        raise DataError(f"shard format must be one of {', '.join(SHARD_FORMATS)}; got '{shard_format}'.")
    writer = write_parquet_shards if shard_format == "parquet" else write_webdataset_shards
    return writer(pairs, out_dir, split=split, num_shards=num_shards, overwrite=overwrite)
