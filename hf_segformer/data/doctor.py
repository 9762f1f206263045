"""The data doctor: from what the pre-flight check saw, name the likely cause of a problem and the recipe line
that fixes it.

The check finds *that* something is wrong (a value out of range, a class with no pixels); the doctor says *why*
in the terms a user saved their masks in: 0/255 binary masks, JPEG-compressed masks, ADE20K-style masks where
0 means "unlabelled".
"""

from __future__ import annotations

import numpy as np

UNLABELLED_NAMES = ("unlabeled", "unlabelled", "void", "ignore", "none", "other", "clutter")


def out_of_range_hint(values: np.ndarray, num_labels: int, ignore_index: int, reduce_labels: bool,
                      binary_masks: bool, mask_format: str | None = None) -> str:
    """A hint for one mask whose `values` (all its distinct values) include some outside the classes.
    `mask_format`: the file's format as PIL read it (a JPEG saved under a .png name is still "JPEG").

    reduce_labels is offered only where the values allow it (one extra value, N, and nothing like JPEG noise),
    and never alone: an id2label one class short shows the same values, and following reduce_labels then trains
    every class shifted by one."""
    present = {int(v) for v in values}
    bad = sorted(v for v in present if v != ignore_index and not 0 <= v < num_labels)
    if not bad:
        return ""
    jpeg_advice = ("save masks losslessly (PNG) from the original labels: JPEG blurs class ids at every edge, and "
                   "these values cannot be turned back into classes reliably.")
    if mask_format == "JPEG":
        return f" This mask is a JPEG file (whatever its name says): {jpeg_advice}"
    if num_labels == 2 and not binary_masks and present <= {0, 255}:
        return " These look like 0/255 binary masks: add `binary_masks: true` to the recipe (255 → class 1)."
    anchors = [*range(num_labels), 255, ignore_index]
    near = [v for v in bad if any(0 < abs(v - c) <= 8 for c in anchors)]
    if len(bad) >= 2 and len(near) == len(bad):
        return (f" {len(present)} distinct values for {num_labels} classes, the extra ones next to the class ids: "
                "these look like JPEG-compressed masks (or masks resized with smooth interpolation instead of "
                f"nearest); {jpeg_advice}")
    if bad == [num_labels] and 0 in present and not reduce_labels:
        return (f" Values run 0..{num_labels}: {num_labels + 1} values for {num_labels} classes. If id2label is one "
                f"class short, name class {num_labels} too (num_labels {num_labels + 1}). Only if 0 means 'not "
                "annotated' in these masks (ADE20K style) is `reduce_labels: true` right (0 → ignored, k → k-1).")
    return ""


def empty_class_problems(pixel_counts: list[int], id2label: dict[int, str], ignore_index: int,
                         binary_masks: bool, split: str) -> list[str]:
    """One problem per class with no pixels in the training split, each with its likely cause."""
    num_labels = len(id2label)
    empty = [c for c in range(num_labels) if pixel_counts[c] == 0]
    ignored = pixel_counts[num_labels]
    problems = []
    for c in empty:
        if num_labels == 2 and c == 1 and ignore_index == 255 and ignored > 0 and not binary_masks:
            cause = ("the masks hold only 0 and 255, and 255 is ignore_index: these look like 0/255 binary masks, "
                     "so every foreground pixel is ignored. Add `binary_masks: true` to the recipe (255 → class 1).")
        else:
            cause = ("is class_id → name in id2label right for these masks (num_labels, colour_map, reduce_labels), "
                     "or does this split lack that class? If it is meant to be absent, set `allow_empty_classes: true`.")
        problems.append(f"class {c} '{id2label.get(c, c)}' has no pixels in the '{split}' split: {cause}")
    return problems


def unlabelled_hint(id2label: dict[int, str], reduce_labels: bool) -> str:
    """Class 0 named like "unlabelled" while reduce_labels is off: it is trained as a class."""
    name = str(id2label.get(0, "")).strip().lower()
    if reduce_labels or not any(word == name or name.startswith(word) for word in UNLABELLED_NAMES):
        return ""
    return (f"class 0 is named '{id2label[0]}': if mask value 0 means 'not annotated' (ADE20K style), set "
            "`reduce_labels: true` so it is ignored instead of trained as a class.")
