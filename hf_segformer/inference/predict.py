"""Prediction behind `hf-segformer predict`: images (folders, glob patterns or files) → class-id masks, streamed in
batches (`find_jobs`, then `predict_files`).

Each image `<stem>.<ext>` gives `<predictions_dir>/<stem>.png`, a palette PNG whose pixel values are class
ids and whose palette is the dataset's colours (16-bit PNG beyond 256 classes), and with `--overlays true`
`<predictions_dir>/overlays/<stem>.jpg` (the image blended with its mask, legend of class names). Sub-folders
of an input folder are kept. Only file paths are listed up front; images are decoded one batch ahead in a
background thread. Outputs are written under a temporary name and renamed, so an interrupted run leaves no
half-written file, and a rerun skips images whose outputs exist (resumable). An image that cannot be decoded
is reported and skipped; the exit status is 1 if any was. An image past PIL's decompression-bomb limit is not
broken: it stops the run with an error naming it and --max_image_pixels, which allows it. With
`--export label-studio|cvat-mask|coco` the masks are also written as pre-annotations for an annotation tool
(predict_export.py).

    hf-segformer predict --config recipes/my-data.yaml --inputs photos/ --predictions_dir outputs/masks --overlays true
    hf-segformer predict --model outputs/my-run --inputs "scans/**/*.tif" --predictions_dir out --mode slide
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from hf_segformer.data.images import IMAGE_EXTENSIONS, ImageTooLarge, as_rgb, is_image_file, open_image
from hf_segformer.data.palettes import mask_image
from hf_segformer.errors import DataError, problems_message
from hf_segformer.inference.segmenter import Segmenter
from hf_segformer.visuals import overlay


@dataclass
class Job:
    """One input image and the files it becomes."""

    source: Path
    mask: Path
    overlay: Path | None

    def done(self) -> bool:
        return self.mask.is_file() and (self.overlay is None or self.overlay.is_file())


def find_jobs(inputs: list[str], predictions_dir: str | os.PathLike, overlays: bool) -> list[Job]:
    """Every input image with its output paths; inputs matching nothing, and two images that would write the
    same output (same stem), are errors before any work. Files under predictions_dir itself are left out."""
    out = Path(predictions_dir).resolve()
    sources: dict[Path, Path] = {}  # output stem (relative) → image
    problems = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir() and path.resolve() == out:
            problems.append(f"{entry}: this is --predictions_dir itself; the masks would be written among its images "
                            "(and could replace a PNG of the same name): give another --predictions_dir")
            continue
        if path.is_dir():
            found = [(p, p.relative_to(path)) for p in sorted(path.rglob("*")) if is_image_file(p)]
        elif path.is_file():
            found = [(path, Path(path.name))] if is_image_file(path) else []
        else:
            matches = [Path(p) for p in sorted(glob.glob(entry, recursive=True))]
            found = [(p, Path(p.name)) for p in matches if is_image_file(p)]
        found = [(p, rel) for p, rel in found if out not in p.resolve().parents]
        if not found:
            problems.append(f"{entry}: no image here (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        for image, relative in found:
            stem = relative.with_suffix("")
            if stem in sources and sources[stem] != image:
                problems.append(f"{sources[stem]} and {image} would both be written as {stem}.png")
            sources[stem] = image
    if problems:
        raise DataError(problems_message("Cannot predict these inputs", problems, "Give existing folders, files or "
                                         "glob patterns; rename images whose stems clash."))
    return [Job(image, out / stem.with_name(stem.name + ".png"),
                out / "overlays" / stem.with_name(stem.name + ".jpg") if overlays else None)
            for stem, image in sources.items()]


def _decode(jobs: list[Job], said: set[str], read: Callable[[Any], Any] | None = None
            ) -> tuple[list[Job], list[Image.Image], list[str]]:
    """Decoded RGB images of a batch (`read`: a band-stack model's reader, `Segmenter.read`), and one message per
    image that could not be decoded."""
    decoded, images, failures = [], [], []
    for job in jobs:
        try:
            if read is not None:
                images.append(read(job.source))
                decoded.append(job)
                continue
            image = open_image(job.source)
            image.load()
            images.append(as_rgb(image, str(job.source), said))
            decoded.append(job)
        except (ImageTooLarge, DataError):  # not broken: refused until allowed, or another band count than the model's
            raise
        except Exception as err:  # noqa: BLE001 - whatever PIL raises for one file, the others go on
            failures.append(f"{job.source}: {type(err).__name__}: {err}")
    return decoded, images, failures


def band_reader(segmenter: Any) -> Callable[[Any], Any] | None:
    """`Segmenter.read` for a model trained on band stacks (`decoded_batches` reads its images with it), else None:
    the RGB path, which says once per image mode what it converted."""
    return segmenter.read if getattr(segmenter, "num_channels", None) is not None else None


def decoded_batches(jobs: list[Job], batch_size: int, read: Callable[[Any], Any] | None = None
                    ) -> Iterator[tuple[list[Job], list[Image.Image], list[str]]]:
    """`_decode` of consecutive batches, each decoded in a background thread while the previous one is predicted."""
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    said: set[str] = set()  # image modes whose conversion to RGB was logged
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(_decode, batches[0], said, read) if batches else None
        for i in range(len(batches)):
            current = upcoming.result()
            if i + 1 < len(batches):
                upcoming = pool.submit(_decode, batches[i + 1], said, read)
            yield current


def _save(image: Image.Image, path: Path, **params) -> None:
    """Write under a temporary name, then rename: a file that exists is always complete (resumable runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    image.save(partial, **params)
    os.replace(partial, path)


def predict_files(segmenter: Segmenter, jobs: list[Job], palette: np.ndarray, batch_size: int = 8,
                  overlay_alpha: float = 0.5, progress: bool = True) -> list[str]:
    """Predict and write every job; returns the messages of the images that could not be decoded."""
    failures: list[str] = []
    with tqdm(total=len(jobs), unit="image", disable=not progress or None) as bar:
        for batch, images, failed in decoded_batches(jobs, batch_size, band_reader(segmenter)):
            failures += failed
            for job, image, mask in zip(batch, images, segmenter.masks(images)):
                mask = mask.cpu().numpy()
                _save(mask_image(mask, palette), job.mask, format="PNG")
                if job.overlay is not None:
                    _save(overlay(image, mask, palette, segmenter.id2label, overlay_alpha), job.overlay,
                          format="JPEG", quality=90)
            bar.update(len(batch) + len(failed))
    return failures
