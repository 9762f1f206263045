"""How thin each class's structures are, in pixels: the pre-flight check measures it on a bounded sample of
training masks, and the automatic scale (`data.scale_choice`) keeps the thinnest class visible to the model.

The measure is the local half-width: for every pixel of a class, the radius of the largest disc inside the class
that covers the pixel, less half a pixel (a 1 px line: 0.5; a 9 px stripe: 4.5 at every pixel of it, its edges
included). The distance is octagonal (3×3 square and cross erosions in turn: within 6 % of Euclidean) and capped
at `MAX_HALF_WIDTH`; ignored pixels count as another class, the image border does not (a structure continues
past the frame). Per class the median and the 10th percentile are taken over its pixels, so a thin class's
boundary pixels are not mistaken for thin structures, and a thick class's few thin corners do not dominate.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_segformer.data.images import entry_name, open_image
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.loading import spread_indices

MAX_HALF_WIDTH = 16  # px of the measured mask: wider structures count as this wide (31 px: thick at any scale here)
SAMPLE_MASKS = 16  # training masks measured, spread evenly over the split
MAX_MEASURED_PIXELS = 1024 * 1024  # larger masks are measured every k-th pixel (widths scaled back by k)


@dataclass
class ClassThinness:
    """One class's local half-widths over its pixels in the measured masks (px at the native image size)."""

    median: float
    p10: float
    pixels: int

    @property
    def capped(self) -> bool:
        return self.p10 >= MAX_HALF_WIDTH - 0.5


@dataclass
class Thinness:
    """Per class id (classes present in the sample only), and how many masks were measured."""

    classes: dict[int, ClassThinness]
    masks: int

    def thinnest(self) -> tuple[int, ClassThinness] | None:
        """The class whose 10th-percentile half-width is smallest (its median breaks ties), or None."""
        if not self.classes:
            return None
        return min(self.classes.items(), key=lambda item: (item[1].p10, item[1].median))

    def to_json(self) -> dict[str, Any]:
        return {"masks": self.masks, "max_half_width": MAX_HALF_WIDTH,
                "classes": {str(c): {"median_half_width": t.median, "p10_half_width": t.p10, "pixels": t.pixels}
                            for c, t in self.classes.items()}}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Thinness:
        return cls({int(c): ClassThinness(v["median_half_width"], v["p10_half_width"], int(v["pixels"]))
                    for c, v in payload["classes"].items()}, int(payload["masks"]))

    def table(self, id2label: dict[int, str]) -> str:
        """A Markdown table: per class, the median and 10th-percentile half-width and the full width they imply."""
        rows = [(f"Structure half-widths (px, native size; {self.masks} training masks; ≥ {MAX_HALF_WIDTH - 0.5:g} "
                "means at least that):"), "",
                "| class | median half-width | 10th-percentile half-width | thin width (2 × p10) |",
                "|---|---:|---:|---:|"]
        for c, t in sorted(self.classes.items()):
            at_least = "≥ " if t.capped else ""
            rows.append(f"| {c} {id2label.get(c, str(c))} | {t.median:g} | {at_least}{t.p10:g} | "
                        f"{at_least}{2 * t.p10:g} |")
        return "\n".join(rows)


SQUARE = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
CROSS = ((-1, 0), (0, -1), (0, 1), (1, 0))


def _neighbour(values: np.ndarray, dy: int, dx: int, fill: int) -> np.ndarray:
    """values[y + dy, x + dx] at every (y, x); `fill` where that falls outside the image."""
    out = np.full_like(values, fill)
    h, w = values.shape
    out[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = \
        values[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
    return out


def local_thickness(label: np.ndarray, cap: int = MAX_HALF_WIDTH) -> np.ndarray:
    """Per pixel of a class-id mask: the radius (1..cap) of the largest disc inside its class that covers it
    (half-width = radius - 0.5). Discs grow by a 3×3 square and a cross in turn (octagonal distance); every class
    at once, so the cost does not grow with the number of classes."""
    # same[d]: the neighbour in direction d has this pixel's label (outside the image: yes for the erosion)
    same = {d: _neighbour(label, *d, fill=-1) == label for d in SQUARE}
    inside = {d: same[d] | (_neighbour(np.zeros(label.shape, np.uint8), *d, fill=1) > 0) for d in SQUARE}
    element = [SQUARE if step % 2 else CROSS for step in range(cap)]
    survives = np.logical_and.reduce([inside[d] for d in element[1]])  # the first disc fits in the class
    distance = 1 + survives.astype(np.uint8)
    for step in range(2, cap):  # how many erosions each pixel survives, plus one
        if not survives.any():
            break
        survives = survives & np.logical_and.reduce([_neighbour(survives, *d, fill=1) for d in element[step]])
        distance += survives
    thickness = distance
    for step in range(1, cap):  # each disc's radius spreads over the disc: value r travels r - 1 steps
        if int(thickness.max()) <= step:
            break
        grown = thickness.copy()
        for d in element[step]:
            value = np.where(same[d], _neighbour(thickness, *d, fill=0), 0)
            np.maximum(grown, np.where(value > step, value, 0), out=grown)
        thickness = grown
    return thickness


def half_width_counts(label: np.ndarray, num_labels: int, cap: int = MAX_HALF_WIDTH,
                      ) -> dict[int, Counter]:
    """Per class present in one class-id mask: how many of its pixels have each half-width (px, native size).
    Masks over MAX_MEASURED_PIXELS are measured every k-th pixel and their widths scaled back by k."""
    stride = max(1, math.ceil(math.sqrt(label.size / MAX_MEASURED_PIXELS)))
    label = np.ascontiguousarray(label[::stride, ::stride]).astype(np.int64)
    thickness = local_thickness(label, cap)
    counts = {}
    for c in np.unique(label):
        if 0 <= c < num_labels:
            radii, pixels = np.unique(thickness[label == c], return_counts=True)
            counts[int(c)] = Counter()
            for r, n in zip(radii, pixels):  # at most the cap, whatever the stride
                counts[int(c)][min((int(r) - 0.5) * stride, cap - 0.5)] += int(n)
    return counts


def _quantile(counts: Counter, q: float) -> float:
    """The lower q-quantile of values given with their counts."""
    values = sorted(counts)
    cumulative = np.cumsum([counts[v] for v in values])
    return float(values[int(np.searchsorted(cumulative, q * cumulative[-1]))])


def summarise(per_mask: list[dict[int, Counter]]) -> Thinness:
    """Pool the masks' counts per class into its median and 10th-percentile half-width."""
    pooled: dict[int, Counter] = {}
    for counts in per_mask:
        for c, values in counts.items():
            pooled.setdefault(c, Counter()).update(values)
    return Thinness({c: ClassThinness(_quantile(v, 0.5), _quantile(v, 0.1), sum(v.values()))
                     for c, v in sorted(pooled.items())}, len(per_mask))


def measure_thinness(pairs: Any, decoder: LabelDecoder, num_labels: int, sample: int = SAMPLE_MASKS) -> Thinness:
    """The thinness of `sample` masks spread evenly over a split's undecoded rows (a `label` column)."""
    entries = [pairs[i]["label"] for i in spread_indices(len(pairs), sample)]
    return summarise([half_width_counts(decoder(open_image(entry), entry_name(entry)), num_labels)
                      for entry in entries])
