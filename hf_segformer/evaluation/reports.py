"""The per-class report written at the end of a run: table (Markdown + CSV) and the confusion matrix."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from hf_segformer.evaluation.metrics import metrics_from_confusion


def class_rows(confusion: np.ndarray, id2label: dict[int, str]) -> list[dict]:
    """One row per class: IoU, accuracy, Dice and the class's share of the labelled pixels."""
    results = metrics_from_confusion(confusion)
    pixels = confusion.sum(axis=1)
    share = pixels / max(pixels.sum(), 1)
    return [
        {"class_id": c, "class": id2label.get(c, str(c)), "iou": results["per_category_iou"][c],
         "accuracy": results["per_category_accuracy"][c], "dice": results["per_category_dice"][c],
         "pixel_share": share[c]}
        for c in range(confusion.shape[0])
    ]


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"


def class_table(confusion: np.ndarray, id2label: dict[int, str]) -> str:
    lines = ["| id | class | IoU | accuracy | Dice | pixel share |", "|---:|---|---:|---:|---:|---:|"]
    for row in class_rows(confusion, id2label):
        lines.append(f"| {row['class_id']} | {row['class']} | {_fmt(row['iou'])} | {_fmt(row['accuracy'])} | "
                     f"{_fmt(row['dice'])} | {100 * row['pixel_share']:.2f}% |")
    return "\n".join(lines)


ANNOTATE_MAX_CLASSES = 30  # per-cell percentages up to this many classes; beyond, colours only


def _short(name: str, limit: int = 24) -> str:
    """An axis label: long names cut with '…', and '$' escaped so matplotlib never reads it as maths."""
    name = name if len(name) <= limit else name[: limit - 1] + "…"
    return name.replace("$", r"\$")


def plot_confusion_matrix(confusion: np.ndarray, id2label: dict[int, str], path: str | os.PathLike,
                          title: str = "Confusion matrix") -> Path:
    """Write a row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG.

    Each row shows where the pixels of one true class went (rows sum to 100%; a class with no labelled
    pixels is a blank row). Class names label both axes; up to ANNOTATE_MAX_CLASSES classes every cell
    carries its percentage, beyond that (e.g. ADE20K's 150) the figure keeps colours and names only.
    Drawn with matplotlib's Agg canvas directly: no pyplot, no change to the global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion, dtype=np.float64)
    num_classes = confusion.shape[0]
    rows = confusion.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(rows > 0, confusion / rows, np.nan)
    names = [_short(str(id2label.get(c, c))) for c in range(num_classes)]

    annotate = num_classes <= ANNOTATE_MAX_CLASSES
    cell = 0.5 if annotate else max(0.14, min(0.3, 24.0 / num_classes))  # inches per class
    fontsize = 8 if annotate else max(4.0, min(8.0, 72 * cell * 0.8))
    label_room = 0.09 * max(len(n) for n in names) * fontsize / 8 + 0.6  # inches for the tick labels
    side = max(num_classes * cell, 3.0)
    width, height = side + label_room + 1.6, side + label_room + 0.8
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes(((label_room + 0.2) / width, (label_room + 0.2) / height, side / width, side / height))
    image = axes.imshow(np.ma.masked_invalid(normalised), cmap="Blues", vmin=0.0, vmax=1.0,
                        interpolation="nearest", aspect="equal")
    axes.set_xticks(range(num_classes))
    axes.set_yticks(range(num_classes))
    axes.set_xticklabels(names, rotation=90, fontsize=fontsize)
    axes.set_yticklabels(names, fontsize=fontsize)
    axes.set_xlabel("predicted class", fontsize=9)
    axes.set_ylabel("true class", fontsize=9)
    axes.set_title(f"{title} (row-normalised, % of each true class)", fontsize=10)
    axes.tick_params(length=2)
    if annotate:
        for r in range(num_classes):
            for c in range(num_classes):
                value = normalised[r, c]
                if np.isnan(value) or value < 0.005:
                    continue
                axes.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=6.5,
                          color="white" if value > 0.6 else "black")
    colour_bar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    colour_bar.ax.tick_params(labelsize=7)
    colour_bar.set_label("share of the true class", fontsize=8)
    path = Path(path)
    figure.savefig(path, format="png", bbox_inches="tight", pad_inches=0.15)
    return path


# What write_class_report writes, after its prefix.
CLASS_REPORT_SUFFIXES = ("_per_class.md", "_per_class.csv", "_confusion_matrix.npy", "_confusion_matrix.png")


def write_class_report(output_dir: str | os.PathLike, confusion: np.ndarray, id2label: dict[int, str],
                       prefix: str = "eval") -> Path:
    """Print and save `<prefix>_per_class.md/.csv` and `<prefix>_confusion_matrix.npy/.png` in output_dir.

    The PNG is a convenience: if drawing it fails the report is kept and a warning is issued.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = class_table(confusion, id2label)
    print(f"\nPer-class results ({prefix}):\n{table}\n")
    (out / f"{prefix}_per_class.md").write_text(table + "\n")
    with open(out / f"{prefix}_per_class.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["class_id", "class", "iou", "accuracy", "dice", "pixel_share"])
        writer.writeheader()
        writer.writerows(class_rows(confusion, id2label))
    np.save(out / f"{prefix}_confusion_matrix.npy", confusion)
    try:
        plot_confusion_matrix(confusion, id2label, out / f"{prefix}_confusion_matrix.png",
                              title=f"{prefix} confusion matrix")
    except Exception as error:  # noqa: BLE001 - a figure must never cost the end of a training run
        warnings.warn(f"Could not draw {prefix}_confusion_matrix.png: {error!r}", stacklevel=2)
    return out / f"{prefix}_per_class.md"
