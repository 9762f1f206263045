"""The dataset card of a published dataset, built with `huggingface_hub`'s DatasetCard and DatasetCardData from
the package's template, a hand-written card of `data_cards/` (its prose and metadata) and the tables the data
check measured (classes with their pixel shares per split, image sizes). Public text (`hub.redaction`).
"""

from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from hf_segformer.data.palettes import default_palette
from hf_segformer.data.preflight import DataReport
from hf_segformer.errors import DataError
from hf_segformer.hub.redaction import public_text

DATASET_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "dataset_card.md"  # package data
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))


@dataclass
class DatasetFacts:
    """A hand-written card of `data_cards/`: its YAML metadata, opening paragraph and `## ` sections (the
    published card reuses Source, Masks, License and citation, Caveats; it measures classes and splits itself)."""

    metadata: dict
    summary: str
    sections: dict[str, str]

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetFacts:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"Dataset card {path} does not exist (the cards of the recipes' datasets are in "
                            "data_cards/ of the hf-segformer repository).")
        text = path.read_text()
        match = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n(.*)$", text, re.DOTALL)
        metadata, body = (yaml.safe_load(match.group(1)) or {}, match.group(2)) if match else ({}, text)
        parts = re.split(r"^## +(.+?)\s*$", body, flags=re.MULTILINE)
        summary = re.sub(r"^# .*$", "", parts[0], count=1, flags=re.MULTILINE).strip()
        sections = {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
        return cls(metadata, summary, sections)


def _ordered_splits(report: DataReport) -> list[str]:
    order = {"train": 0, "validation": 1, "test": 2}
    return sorted(report.splits, key=lambda name: (order.get(name, 3), name))


def _class_table(report: DataReport, colours: dict[int, tuple[int, int, int]]) -> str:
    splits = _ordered_splits(report)
    lines = ["| id | name | colour | " + " | ".join(f"{s} share" for s in splits) + " |",
             "|---:|---|---|" + "---:|" * len(splits)]
    totals = {s: max(sum(r.pixel_counts[:-1]), 1) for s, r in report.splits.items()}
    for class_id in range(report.num_labels):
        shares = " | ".join(f"{100 * report.splits[s].pixel_counts[class_id] / totals[s]:.2f}%" for s in splits)
        colour = "#{:02X}{:02X}{:02X}".format(*colours[class_id]) if class_id in colours else "–"
        lines.append(f"| {class_id} | {report.id2label.get(class_id, class_id)} | {colour} | {shares} |")
    ignored = " | ".join(f"{report.splits[s].pixel_counts[-1]:,} px" for s in splits)
    lines.append(f"| {report.ignore_index} | *(ignored, not a class)* | – | {ignored} |")
    return "\n".join(lines)


def _min_median_max(values: list[int]) -> str:
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}"


def _split_table(report: DataReport) -> str:
    lines = ["| split | images | width min / median / max | height min / median / max | distinct sizes |",
             "|---|---:|---|---|---:|"]
    for name in _ordered_splits(report):
        split = report.splits[name]
        widths, heights = [w for w, _ in split.image_sizes], [h for _, h in split.image_sizes]
        lines.append(f"| {name} | {split.num_samples} | {_min_median_max(widths)} | {_min_median_max(heights)} | "
                     f"{len(set(split.image_sizes))} |")
    return "\n".join(lines)


def _with_label_map(masks: str, report: DataReport) -> str:
    """The source's raw mask values and the class each became: the published masks hold the class ids."""
    table = report.label_map_table()
    if not table:
        return masks
    return (f"{masks}\n\nThe published masks hold class ids, mapped from the source's raw mask values by a label "
            f"map (values sent to {report.ignore_index} are ignored, not a class). {table}")


def build_dataset_card(report: DataReport, repo_id: str, facts: DatasetFacts | None = None, *,
                       license: str | None = None, pretty_name: str | None = None,
                       source_colours: dict[int, tuple[int, int, int]] | None = None, mask_notes: str | None = None,
                       template_path: str | os.PathLike = DATASET_CARD_TEMPLATE) -> DatasetCard:
    """The published dataset's card: the facts card's metadata and prose plus tables measured by the data check."""
    if not Path(template_path).is_file():
        raise DataError(f"Dataset card template {template_path} not found: reinstall hf-segformer (the template "
                        "is package data, hf_segformer/hub/templates/) or pass template_path.")
    facts = facts or DatasetFacts({}, "", {})
    metadata = {key: value for key, value in facts.metadata.items() if key not in ("configs", "dataset_info")}
    if license:
        metadata = {k: v for k, v in metadata.items() if k not in ("license", "license_name", "license_link")}
        metadata["license"] = license
    if not metadata.get("license"):
        raise DataError("The dataset card needs a license: give --license (a Hub licence id such as cc-by-4.0, or "
                        "'other' with license_name/license_link in the card) or a card in data_cards/ that sets one.")
    total = sum(split.num_samples for split in report.splits.values())
    metadata.update(task_categories=["image-segmentation"], task_ids=["semantic-segmentation"],
                    size_categories=[next((name for limit, name in SIZE_CATEGORIES if total < limit), "n>10M")])
    metadata["pretty_name"] = pretty_name or metadata.get("pretty_name") or repo_id.split("/")[-1]
    metadata["tags"] = sorted(set(metadata.get("tags") or []) | {"semantic-segmentation"})
    card_data = DatasetCardData(**metadata)
    colours = source_colours or {i: tuple(int(c) for c in rgb)
                                 for i, rgb in enumerate(default_palette(report.num_labels))}
    colour_note = ("the mask colour in the source data" if source_colours else
                   "a display colour only: the masks store class ids")
    sections = facts.sections
    card = DatasetCard.from_template(
        card_data, template_path=str(template_path), repo_id=repo_id, summary=facts.summary,
        source=sections.get("Source", "Not described."),
        masks=_with_label_map(mask_notes or sections.get("Masks", "Not described."), report),
        license_text=sections.get("License and citation", f"License: `{metadata['license']}`."),
        caveats=sections.get("Caveats", "None recorded."),
        class_table=_class_table(report, colours), colour_note=colour_note, split_table=_split_table(report),
        num_labels=report.num_labels, ignore_index=report.ignore_index,
    )
    return DatasetCard(public_text(str(card)))
