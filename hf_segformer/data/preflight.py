"""Pre-flight data check: every pair is decoded and validated before a training step is spent.

It finds undecodable images, missing masks, image/mask size mismatches and out-of-range class ids,
and reports them all at once (first 20 and a count). On the way it counts pixels per class.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from hf_segformer.data.bands import BandImage, read_bands
from hf_segformer.data.doctor import out_of_range_hint
from hf_segformer.data.images import ImageTooLarge, entry_name, open_image, upright
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.loading import undecoded
from hf_segformer.data.rare_classes import save_presence
from hf_segformer.data.thinness import Thinness
from hf_segformer.errors import DataError, problems_message

HISTOGRAM_JSON, HISTOGRAM_MD = "class_histogram.json", "class_histogram.md"  # DataReport.save, beside the run


@dataclass
class SplitReport:
    """What the check learned about one split."""

    num_samples: int
    pixel_counts: list[int]  # per class id, then the ignore index last
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)
    # per image: class ids present (rare-class sampling); saved beside the report in class_presence.json
    image_classes: list[list[int]] = field(default_factory=list, compare=False)
    raw_counts: dict[int, int] = field(default_factory=dict)  # with a label map: pixels per raw mask value
    band_mean: list[float] | None = None  # with num_channels: per band, in the data's units
    band_std: list[float] | None = None

    @property
    def class_counts(self) -> list[int]:
        """Pixels per class id, without the ignore count (ignored pixels carry no loss and no class)."""
        return self.pixel_counts[:-1]


@dataclass
class DataReport:
    num_labels: int
    ignore_index: int
    id2label: dict[int, str]
    splits: dict[str, SplitReport]
    # with a label map: what each raw value found (or named by the map) became, a class id or the ignore index
    label_map_targets: dict[int, int] | None = None
    num_channels: int | None = None  # set: images read as bands (data.bands), None: 8-bit RGB
    num_channels_from: str = ""  # the recipe's num_channels, or what in the data it was inferred from
    # the training split's structure half-widths (`data.thinness`) and the scale line they gave (`data.scale_choice`)
    thinness: Thinness | None = field(default=None, kw_only=True)
    scale_choice: str = field(default="", kw_only=True)

    def class_table(self) -> str:
        """Per-class pixel counts and shares for every split, as a Markdown table."""
        names = [f"{i} {self.id2label.get(i, str(i))}" for i in range(self.num_labels)] + [f"{self.ignore_index} (ignored)"]
        header = "| class | " + " | ".join(f"{s} pixels | {s} share" for s in self.splits) + " |"
        rule = "|---|" + "---:|---:|" * len(self.splits)
        rows = []
        for c, name in enumerate(names):
            cells = []
            for split in self.splits.values():
                total = max(sum(split.pixel_counts[:-1]), 1)
                count = split.pixel_counts[c]
                share = "" if c == self.num_labels else f"{100 * count / total:.2f}%"
                cells.append(f"{count:,} | {share}")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join([header, rule, *rows])

    def label_map_table(self) -> str:
        """With a label map: each raw mask value, what it became (mapped, or dropped to the ignore index) and its
        pixels per split, then the values the map names that no mask holds; "" without a label map."""
        if self.label_map_targets is None:
            return ""
        found = sorted(set().union(*(s.raw_counts for s in self.splits.values())))
        header = "| raw value | becomes | " + " | ".join(f"{s} pixels" for s in self.splits) + " |"
        rows = [header, "|---:|---|" + "---:|" * len(self.splits)]
        for raw in found:
            target = self.label_map_targets[raw]
            becomes = (f"{self.ignore_index} (dropped: ignored)" if target == self.ignore_index
                       else f"{target} {self.id2label.get(target, '')}".rstrip())
            rows.append(f"| {raw} | {becomes} | " + " | ".join(f"{s.raw_counts.get(raw, 0):,}"
                                                              for s in self.splits.values()) + " |")
        dropped = [raw for raw in found if self.label_map_targets[raw] == self.ignore_index]
        unseen = sorted(set(self.label_map_targets) - set(found))
        summary = (f"Label map: {len(found)} raw values found, {len(found) - len(dropped)} mapped onto "
                   f"{len({self.label_map_targets[r] for r in found} - {self.ignore_index})} classes, "
                   f"{len(dropped)} dropped (ignored)"
                   + (f"; named by the map but in no mask: {', '.join(map(str, unseen))}" if unseen else "") + ".")
        return summary + "\n\n" + "\n".join(rows)

    def input_bands(self, train_split: str) -> tuple[int, list[float], list[float]] | None:
        """(num_channels, per-band mean, per-band std on the training split) for band stacks; None for RGB data."""
        if self.num_channels is None:
            return None
        train = self.splits[train_split]
        return self.num_channels, list(train.band_mean), list(train.band_std)

    def band_table(self) -> str:
        """With num_channels: where it came from and each band's mean/std per split; "" for 8-bit RGB data."""
        if self.num_channels is None:
            return ""
        rows = [f"Input bands: {self.num_channels} ({self.num_channels_from}); per-band mean/std in the data's units "
                "(the training split's normalise the model's input):", "",
                "| band | " + " | ".join(f"{s} mean | {s} std" for s in self.splits) + " |",
                "|---:|" + "---:|---:|" * len(self.splits)]
        for band in range(self.num_channels):
            cells = [f"{s.band_mean[band]:.6g} | {s.band_std[band]:.6g}" if s.band_mean else " | "
                     for s in self.splits.values()]
            rows.append(f"| {band} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def tables(self) -> str:
        """The class table, and the label map's, scale's and bands' when there are (the check's printout and its .md)."""
        return "\n\n".join(t for t in (self.class_table(), self.label_map_table(), self.scale_text(),
                                        self.band_table()) if t)

    def scale_text(self) -> str:
        """Image sizes of each split, the training split's thinness table and the scale chosen from them."""
        sizes = []
        for name, split in self.splits.items():
            if split.image_sizes:
                shorts = sorted(min(size) for size in split.image_sizes)
                longs = sorted(max(size) for size in split.image_sizes)
                sizes.append(f"{name}: short side {shorts[0]}–{shorts[-1]} (median {shorts[len(shorts) // 2]}), "
                             f"long side {longs[0]}–{longs[-1]} px")
        parts = ["Image sizes: " + "; ".join(sizes) + "." if sizes else "",
                 self.thinness.table(self.id2label) if self.thinness is not None else "", self.scale_choice]
        return "\n\n".join(part for part in parts if part)

    def save(self, output_dir: str | os.PathLike) -> None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "num_labels": self.num_labels,
            "ignore_index": self.ignore_index,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "splits": {name: {"num_samples": s.num_samples, "pixel_counts": s.pixel_counts,
                              "image_sizes": s.image_sizes} for name, s in self.splits.items()},
        }
        if self.label_map_targets is not None:
            payload["label_map"] = {"targets": {str(k): v for k, v in self.label_map_targets.items()},
                                    "raw_pixels": {name: {str(k): v for k, v in s.raw_counts.items()}
                                                   for name, s in self.splits.items()}}
        if self.thinness is not None:
            payload["thinness"] = self.thinness.to_json()
        if self.scale_choice:
            payload["scale_choice"] = self.scale_choice
        if self.num_channels is not None:
            payload["bands"] = {"num_channels": self.num_channels, "from": self.num_channels_from,
                                "mean": {name: s.band_mean for name, s in self.splits.items()},
                                "std": {name: s.band_std for name, s in self.splits.items()}}
        (out / HISTOGRAM_JSON).write_text(json.dumps(payload, indent=1))
        (out / HISTOGRAM_MD).write_text(self.tables() + "\n")
        if any(s.image_classes for s in self.splits.values()):
            save_presence(out, {name: s.image_classes for name, s in self.splits.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DataReport":
        payload = json.loads(Path(path).read_text())
        label_map = payload.get("label_map")
        raw = {name: {int(k): v for k, v in counts.items()} for name, counts in label_map["raw_pixels"].items()} \
            if label_map else {}
        bands = payload.get("bands") or {}
        splits = {name: SplitReport(s["num_samples"], s["pixel_counts"], [tuple(x) for x in s["image_sizes"]],
                                    raw_counts=raw.get(name, {}), band_mean=bands.get("mean", {}).get(name),
                                    band_std=bands.get("std", {}).get(name))
                  for name, s in payload["splits"].items()}
        report = cls(payload["num_labels"], payload["ignore_index"],
                     {int(k): v for k, v in payload["id2label"].items()}, splits,
                     {int(k): v for k, v in label_map["targets"].items()} if label_map else None)
        report.thinness = Thinness.from_json(payload["thinness"]) if "thinness" in payload else None
        report.scale_choice = payload.get("scale_choice", "")
        report.num_channels, report.num_channels_from = bands.get("num_channels"), bands.get("from", "")
        return report


def data_report(decoder: LabelDecoder, num_labels: int, id2label: dict[int, str],
                splits: dict[str, SplitReport], num_channels: int | None = None,
                num_channels_from: str = "") -> DataReport:
    """The report of checked splits; with a label map, what each raw value found or named became."""
    targets = None
    if decoder.label_map:
        raw_values = set(decoder.label_map).union(*(s.raw_counts for s in splits.values()))
        targets = {raw: decoder.map_raw_value(raw) for raw in sorted(raw_values)}
    return DataReport(num_labels, decoder.ignore_index, id2label, splits, targets, num_channels=num_channels,
                      num_channels_from=num_channels_from)


def _band_sums(image: BandImage) -> list[float]:
    """Per band: the sum and the sum of squares of its values (float64), then the pixel count."""
    values = image.array.reshape(-1, image.bands).astype(np.float64)
    return [*values.sum(axis=0).tolist(), *np.square(values).sum(axis=0).tolist(), float(len(values))]


def _check_pair(image_entry: dict, mask_entry: dict, decoder: LabelDecoder, num_labels: int,
                num_channels: int | None = None) -> tuple[str, np.ndarray, tuple[int, int], str, list[float]]:
    """Return (problem or '', per-class counts + ignore count, image size, raw value counts as JSON: with a label
    map, else "{}"; with num_channels the image's per-band sums (`_band_sums`), else [])."""
    counts = np.zeros(num_labels + 1, dtype=np.int64)
    name = entry_name(image_entry)
    sums: list[float] = []
    try:
        if num_channels is None:
            image = upright(open_image(image_entry))
            image.load()
        else:
            image = read_bands(image_entry, num_channels, name)
            sums = _band_sums(image)
    except (ImageTooLarge, DataError) as err:  # not broken: too large, or a band count other than num_channels
        return str(err), counts, (0, 0), "{}", sums
    except Exception as err:  # any decoder failure is the user's file, not our bug
        return f"{name}: image cannot be decoded ({type(err).__name__}: {err})", counts, (0, 0), "{}", sums
    mask_name = entry_name(mask_entry)
    try:
        mask = open_image(mask_entry)
        label, raw_counts = decoder.decode_counted(mask, mask_name)
    except DataError as err:
        return str(err), counts, image.size, "{}", sums
    except Exception as err:
        return f"{mask_name}: mask cannot be decoded ({type(err).__name__}: {err})", counts, image.size, "{}", sums
    raw = json.dumps(raw_counts or {})
    if (label.shape[1], label.shape[0]) != image.size:
        return (f"{mask_name}: mask is {label.shape[1]}×{label.shape[0]} but its image {name} is "
                f"{image.size[0]}×{image.size[1]}"), counts, image.size, raw, sums
    values, value_counts = np.unique(label, return_counts=True)
    ignored = values == decoder.ignore_index
    bad = values[~ignored & ((values < 0) | (values >= num_labels))]
    if len(bad):
        shown = ", ".join(str(v) for v in bad[:10])
        hint = out_of_range_hint(values, num_labels, decoder.ignore_index, decoder.reduce_labels, decoder.binary_masks,
                                 getattr(mask, "format", None))
        return (f"{mask_name}: values {shown} are outside the {num_labels} classes [0, {num_labels}) "
                f"and are not ignore_index={decoder.ignore_index}.{hint}"), counts, image.size, raw, sums
    counts[values[~ignored].astype(np.int64)] = value_counts[~ignored]
    counts[-1] = value_counts[ignored].sum()
    return "", counts, image.size, raw, sums


def check_split(dataset: Dataset, split: str, decoder: LabelDecoder, num_labels: int, num_proc: int | None = None,
                num_channels: int | None = None) -> SplitReport:
    """Decode every pair of one split (in parallel) and raise one DataError listing all problems."""
    if len(dataset) == 0:
        raise DataError(f"Split '{split}' is empty.")
    raw = undecoded(dataset)

    def check_batch(batch: dict) -> dict:
        results = [_check_pair(i, m, decoder, num_labels, num_channels) for i, m in zip(batch["image"], batch["label"])]
        return {"problem": [r[0] for r in results], "counts": [r[1] for r in results],
                "size": [list(r[2]) for r in results], "raw": [r[3] for r in results],
                "bands": [r[4] for r in results]}

    num_proc = num_proc or min(os.cpu_count() or 1, max(1, len(dataset) // 64))
    checked = raw.map(check_batch, batched=True, batch_size=16, num_proc=num_proc if num_proc > 1 else None,
                      remove_columns=raw.column_names, desc=f"Checking {split} data", load_from_cache_file=False)
    problems = [p for p in checked["problem"] if p]
    if problems:
        raise DataError(problems_message(f"The '{split}' data failed the pre-flight check", problems,
                                         "Fix or remove these files (or correct num_labels / ignore_index / colour_map)."))
    per_image = np.asarray(checked["counts"], dtype=np.int64)
    counts = per_image.sum(axis=0)
    image_classes = [np.flatnonzero(row[:-1]).tolist() for row in per_image]
    raw_counts: dict[int, int] = {}
    for pair in checked["raw"]:
        for value, pixels in json.loads(pair).items():
            raw_counts[int(value)] = raw_counts.get(int(value), 0) + pixels
    band_mean = band_std = None
    if num_channels is not None:  # one pass: E[x] and E[x²] in float64 over every pixel of the split
        sums = np.asarray(checked["bands"], dtype=np.float64).sum(axis=0)
        pixels = max(sums[-1], 1.0)
        mean = sums[:num_channels] / pixels
        variance = np.maximum(sums[num_channels : 2 * num_channels] / pixels - np.square(mean), 0.0)
        band_mean, band_std = mean.tolist(), np.maximum(np.sqrt(variance), 1e-6).tolist()
    return SplitReport(len(dataset), [int(c) for c in counts], [tuple(s) for s in checked["size"]], image_classes,
                       dict(sorted(raw_counts.items())), band_mean, band_std)


def check_data(data: DatasetDict, decoder: LabelDecoder, num_labels: int, id2label: dict[int, str],
               num_proc: int | None = None, num_channels: int | None = None, num_channels_from: str = "") -> DataReport:
    """Check every split; returns the per-class pixel histogram of each. The problems of all splits are reported
    together in one DataError."""
    splits, failures = {}, []
    for name, ds in data.items():
        try:
            splits[name] = check_split(ds, name, decoder, num_labels, num_proc, num_channels)
        except DataError as err:
            failures.append(str(err))
    if failures:
        raise DataError("\n".join(failures))
    return data_report(decoder, num_labels, id2label, splits, num_channels, num_channels_from)
