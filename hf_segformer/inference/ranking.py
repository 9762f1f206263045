"""Which unlabelled images to label next: the model's uncertainty, weighted towards rare classes.

Per image, from the softmax p of the model's logits (on the logits grid, 1/4 of the model's input size):

    uncertainty u   mean over pixels of the normalised entropy  -Σ_c p_c log p_c / log C   (method "entropy"),
                    or of 1 - (p_top1 - p_top2)                                                (method "margin");
                    both 0 for a sure pixel and 1 for a pixel split evenly (entropy: among all C classes)
    presence  q_c   max over pixels of p_c: how sure the model is that class c is somewhere in the image
    rarity    r     Σ_c w_c q_c  with  w_c = (1 / f_c) / Σ_k (1 / f_k)   (inverse class frequency, summing to 1;
                    f_c floored at 1e-4), so r is in [0, 1] and an image likely to hold a rare class scores high
    score           u × (1 + rarity_weight × r)

Class frequencies f come from the training data when known (a class_histogram.json written by training or
`check-data`, found in the model folder, or given), else from the pool itself (the mean of p over all images).
Images are ranked by score, highest first (ties by path). The top ones are drawn (image | prediction |
uncertainty) and can be written as pre-annotations, their confidence 1 - u as the prediction score, which Label
Studio can sort by, lowest first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hf_segformer.data.annotations.exporter import export_masks
from hf_segformer.data.annotations.layout import StagedFolder
from hf_segformer.data.annotations.preannotations import (
    DEFAULT_SUFFIX,
    FORMATS,
    LabelStudioOptions,
    MaskToExport,
)
from hf_segformer.data.bands import BandImage, display_image
from hf_segformer.data.images import load_image
from hf_segformer.data.palettes import colourise, default_palette, pixels_per_class
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.inference.predict import band_reader, decoded_batches, find_jobs
from hf_segformer.inference.predict_export import image_name
from hf_segformer.inference.segmenter import Segmenter, class_map

METHODS = ("entropy", "margin")
FREQUENCY_FLOOR = 1e-4
HISTOGRAM_FILE = "class_histogram.json"
TILE_HEIGHT = 160


def pixel_uncertainty(probabilities: torch.Tensor, method: str = "entropy") -> torch.Tensor:
    """[C, h, w] class probabilities → [h, w] uncertainty in [0, 1] (see the module docstring)."""
    if method not in METHODS:
        raise RecipeError(f"method must be one of {', '.join(METHODS)}; got '{method}'.")
    num_classes = probabilities.shape[0]
    if num_classes < 2:
        raise RecipeError("ranking by uncertainty needs a model with at least 2 classes.")
    if method == "entropy":
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(0)
        return (entropy / math.log(num_classes)).clamp(0, 1)
    top = probabilities.topk(2, dim=0).values
    return 1 - (top[0] - top[1])


def class_presence(probabilities: torch.Tensor) -> np.ndarray:
    """[C, h, w] → [C]: the highest probability of each class anywhere in the image."""
    return probabilities.flatten(1).max(1).values.double().cpu().numpy()


def rarity_weights(frequencies: Sequence[float] | np.ndarray) -> np.ndarray:
    """Class frequencies (any scale) → inverse-frequency weights summing to 1."""
    shares = np.asarray(frequencies, dtype=np.float64)
    if shares.ndim != 1 or (shares < 0).any() or shares.sum() <= 0:
        raise DataError(f"class frequencies must be non-negative numbers, not all 0; got {shares.tolist()}.")
    inverse = 1.0 / np.maximum(shares / shares.sum(), FREQUENCY_FLOOR)
    return inverse / inverse.sum()


def image_score(uncertainty: float, presence: np.ndarray, weights: np.ndarray,
                rarity_weight: float = 1.0) -> tuple[float, float]:
    """(score, rarity) of one image."""
    rarity = float(np.dot(weights, presence))
    return uncertainty * (1.0 + rarity_weight * rarity), rarity


def load_class_frequencies(source: str | os.PathLike | Sequence[float] | dict, id2label: dict[int, str]) -> np.ndarray:
    """Pixels (or shares) per class from a list in class-id order, a {class id or name: pixels} mapping, or a
    class_histogram.json (its train split, else all splits; the ignored count is left out)."""
    num_classes = len(id2label)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            payload = json.loads(path.read_text())
            splits = payload["splits"]
            chosen = [splits["train"]] if "train" in splits else list(splits.values())
            counts = np.sum([np.asarray(s["pixel_counts"][:num_classes], dtype=np.float64) for s in chosen], axis=0)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a class_histogram.json (as training and check-data write it): "
                            f"{err}.") from err
        if len(chosen[0]["pixel_counts"]) != num_classes + 1:
            raise DataError(f"{path} counts {len(chosen[0]['pixel_counts']) - 1} classes; the model has {num_classes}.")
        return counts
    if isinstance(source, dict):
        label2id = {name: i for i, name in id2label.items()}
        counts = np.zeros(num_classes)
        for key, value in source.items():
            class_id = label2id.get(key, key)
            try:
                counts[int(class_id)] = float(value)
            except (ValueError, IndexError) as err:
                raise DataError(f"class frequencies: '{key}' is not a class of the model ({id2label}).") from err
        return counts
    counts = np.asarray(source, dtype=np.float64)
    if counts.shape != (num_classes,):
        raise DataError(f"class frequencies: {counts.size} numbers for a model of {num_classes} classes.")
    return counts


@dataclass
class RankedImage:
    image: str  # path relative to the input folder (the file name for single files)
    score: float
    uncertainty: float
    rarity: float
    predicted: str  # predicted classes, largest first, with their share of the image
    source: Path | None = None


def _as_segmenter(model: Segmenter | str | os.PathLike | torch.nn.Module,
                  device: str | None) -> tuple[Segmenter, Path | None]:
    """A Segmenter (or anything with its `logits(images)` and `id2label`), a model module, or a saved model folder /
    Hub id (whose class_histogram.json, if any, gives the class frequencies)."""
    if isinstance(model, Segmenter) or (hasattr(model, "logits") and hasattr(model, "id2label")):
        return model, None
    if isinstance(model, torch.nn.Module):
        return Segmenter(model, device=device), None
    try:
        return Segmenter.from_pretrained(model, device=device), Path(model) if Path(model).is_dir() else None
    except OSError as err:
        raise RecipeError(f"Cannot load a model from {model}: {err}") from err


def _predicted_text(mask: np.ndarray, id2label: dict[int, str], limit: int = 3) -> str:
    """The largest predicted classes with their share of the image: "road 60%; car 30%; sky 10%"."""
    return "; ".join(f"{id2label.get(c, str(c))} {100 * pixels / mask.size:.0f}%"
                     for c, pixels in pixels_per_class(mask, len(id2label))[:limit])


def _heat(uncertainty: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] → RGB: black (sure) → red → yellow (unsure)."""
    u = np.clip(uncertainty, 0, 1)
    return (np.stack([np.minimum(1, 2 * u), np.clip(2 * u - 1, 0, 1), np.zeros_like(u)], -1) * 255).astype(np.uint8)


def top_grid(rows: list[tuple[str, Image.Image | BandImage, np.ndarray, np.ndarray]], palette: np.ndarray,
             tile_height: int = TILE_HEIGHT) -> Image.Image:
    """One row per (title, image, class-id mask, uncertainty map): image (a band stack: its display bands) |
    prediction | uncertainty, titled."""
    font = ImageFont.load_default()
    title, gap = 16, 4
    tiles = []
    for caption, image, mask, uncertainty in rows:
        width = max(1, round(image.width * tile_height / image.height))
        tiles.append((caption, [display_image(image).resize((width, tile_height), Image.BILINEAR),
                                Image.fromarray(colourise(mask, palette)).resize((width, tile_height), Image.NEAREST),
                                Image.fromarray(_heat(uncertainty)).resize((width, tile_height), Image.BILINEAR)]))
    column = max((row[0].width for _, row in tiles), default=tile_height)
    grid = Image.new("RGB", (3 * (column + gap) - gap, title + len(tiles) * (title + tile_height + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(("image", "prediction", "uncertainty (black sure, yellow unsure)")):
        draw.text((c * (column + gap) + 2, 2), name, fill="black", font=font)
    for r, (caption, row) in enumerate(tiles):
        top = title + r * (title + tile_height + gap)
        draw.text((2, top + 2), caption, fill="black", font=font)
        for c, tile in enumerate(row):
            grid.paste(tile, (c * (column + gap), top + title))
    return grid


def rank_unlabelled(model: Segmenter | str | os.PathLike | torch.nn.Module, images: str | os.PathLike | list,
                    top_k: int = 20, *, out_dir: str | os.PathLike | None = None, method: str = "entropy",
                    rarity_weight: float = 1.0, class_frequencies=None, batch_size: int = 4,
                    export: str | None = None, export_path: str | os.PathLike | None = None,
                    model_version: str | None = None, label_studio: LabelStudioOptions | None = None,
                    device: str | None = None, overwrite: bool = False) -> list[RankedImage]:
    """Rank the images (folders, glob patterns or files) for labelling, highest score first; with `out_dir`, write
    ranking.csv, ranking.json, top.png (the top_k) and, with `export`, the top_k as pre-annotations."""
    if top_k < 1:
        raise RecipeError(f"--top must be at least 1; got {top_k}.")
    if rarity_weight < 0:
        raise RecipeError(f"rarity_weight must be ≥ 0; got {rarity_weight}.")
    if export is not None and export not in FORMATS:
        raise RecipeError(f"--export must be one of {', '.join(FORMATS)}; got '{export}'.")
    pixel_uncertainty(torch.full((2, 1, 1), 0.5), method)  # an unknown method fails before any work
    staging = StagedFolder(Path(out_dir), overwrite) if out_dir is not None else None
    inputs = [os.fspath(p) for p in (images if isinstance(images, list) else [images])]
    listing_root = Path(out_dir) if out_dir is not None else Path.cwd() / ".rank-unlabelled"
    jobs = find_jobs(inputs, listing_root, overlays=False)
    segmenter, model_dir = _as_segmenter(model, device)
    id2label = segmenter.id2label

    measured, failures = [], []
    read = band_reader(segmenter)  # None: 8-bit RGB images
    for batch, pictures, failed in decoded_batches(jobs, batch_size, read):
        failures += failed
        for job, logits in zip(batch, segmenter.logits(pictures)):
            probabilities = logits.float().softmax(0)
            uncertainty = float(pixel_uncertainty(probabilities, method).mean())
            measured.append((job, image_name(job, listing_root.resolve()), uncertainty,
                             class_presence(probabilities), probabilities.mean((1, 2)).double().cpu().numpy(),
                             _predicted_text(probabilities.argmax(0).cpu().numpy(), id2label)))
    if not measured:
        raise DataError("None of the images could be read:\n" + "\n".join(failures[:20]))

    if class_frequencies is not None:
        frequencies, origin = load_class_frequencies(class_frequencies, id2label), str(class_frequencies)
    elif model_dir is not None and (model_dir / HISTOGRAM_FILE).is_file():
        origin = str(model_dir / HISTOGRAM_FILE)
        frequencies = load_class_frequencies(origin, id2label)
    else:
        frequencies, origin = np.mean([m[4] for m in measured], axis=0), "the ranked images (mean predicted share)"
    weights = rarity_weights(frequencies)
    ranked = []
    for job, relative, uncertainty, presence, _, predicted in measured:
        score, rarity = image_score(uncertainty, presence, weights, rarity_weight)
        ranked.append(RankedImage(relative.as_posix(), score, uncertainty, rarity, predicted,
                                  job.source))
    ranked.sort(key=lambda r: (-r.score, r.image))
    if staging is None:
        return ranked

    top = ranked[:top_k]
    rows, exports = [], []
    for rank, item in enumerate(top, 1):
        image = read(item.source) if read is not None else load_image(item.source)
        logits = next(iter(segmenter.logits([image])))
        mask = class_map(logits, (image.height, image.width)).cpu().numpy()
        uncertainty = pixel_uncertainty(logits.float().softmax(0), method)
        heat = Image.fromarray(uncertainty.cpu().numpy().astype(np.float32)).resize(image.size, Image.BILINEAR)
        heat = np.asarray(heat)
        rows.append((f"{rank}. {item.image}  score {item.score:.3f} (uncertainty {item.uncertainty:.3f}, "
                     f"rarity {item.rarity:.3f})", image, mask, heat))
        exports.append(MaskToExport(item.source, PurePosixPath(item.image), mask, 1.0 - item.uncertainty))

    settings = {"method": method, "rarity_weight": rarity_weight, "top_k": top_k, "class_frequencies_from": origin,
                "class_frequencies": {id2label[c]: float(f) for c, f in enumerate(frequencies)},
                "rarity_weights": {id2label[c]: float(w) for c, w in enumerate(weights)}}
    with staging as folder:
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["rank", "image", "score", "uncertainty", "rarity", "predicted"])
        for rank, item in enumerate(ranked, 1):
            writer.writerow([rank, item.image, f"{item.score:.6f}", f"{item.uncertainty:.6f}", f"{item.rarity:.6f}",
                             item.predicted])
        (folder / "ranking.csv").write_text(table.getvalue())
        listed = [{k: v for k, v in asdict(item).items() if k != "source"} for item in ranked]
        (folder / "ranking.json").write_text(json.dumps({"settings": settings, "unreadable": failures,
                                                         "ranking": listed}, indent=1) + "\n")
        top_grid(rows, default_palette(len(id2label))).save(folder / "top.png")
        if export is not None:
            target = Path(export_path) if export_path else folder / f"top_{export}{DEFAULT_SUFFIX[export]}"
            export_masks(export, exports, target, id2label, model_version=model_version, overwrite=overwrite,
                         label_studio=label_studio)
    return ranked

