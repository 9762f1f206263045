"""The per-class report written at the end of a run: table (Markdown + CSV) and the confusion matrix."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .metrics import metrics_from_confusion


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


def write_class_report(output_dir: str | os.PathLike, confusion: np.ndarray, id2label: dict[int, str],
                       prefix: str = "eval") -> Path:
    """Print and save `<prefix>_per_class.md/.csv` and `<prefix>_confusion_matrix.npy` in output_dir."""
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
    return out / f"{prefix}_per_class.md"
