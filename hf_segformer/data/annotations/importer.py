"""`import_annotations`: an annotation tool's export → a data_dir the recipes train on (layout.py).

    import_annotations("cvat-mask", ["task.zip"], "my_data", images="photos/")
    import_annotations("label-studio", ["project.json"], "my_data", images="photos/", unlabelled="background")
    import_annotations("coco", [("train", "instances_train.json"), ("validation", "instances_val.json")], "my_data")

Unlabelled pixels follow each tool's own meaning unless `unlabelled` says otherwise: CVAT paints them in its
background label (→ class 0), COCO's converter makes them class 0 too, Label Studio cannot tell unpainted from
background (→ ignore_index).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from hf_segformer.data.annotations import coco_format, cvat_mask, label_studio
from hf_segformer.data.annotations.layout import (
    UNLABELLED_CHOICES,
    ImportPlan,
    ImportSummary,
    claim_output,
    write_data_dir,
)
from hf_segformer.data.annotations.sources import export_folder, split_name
from hf_segformer.errors import DataError, RecipeError

FORMATS = ("cvat-mask", "label-studio", "coco")
TOOL_UNLABELLED = {"cvat-mask": "background", "label-studio": "ignore", "coco": "background"}
_SPLIT_PREFIX = re.compile(r"^([A-Za-z][\w-]*)=(.+)$")

Source = str | os.PathLike | tuple[str, str | os.PathLike]


def split_and_path(spec: Source) -> tuple[str | None, Path]:
    """'train=export.json' or ('train', 'export.json') → ('train', path); a plain path → (None, path). A path
    that exists as written is never split at its '='."""
    if isinstance(spec, tuple):
        return spec[0], Path(spec[1])
    text = os.fspath(spec)
    match = _SPLIT_PREFIX.match(text)
    if match and not Path(text).exists():
        return match.group(1), Path(match.group(2))
    return None, Path(text)


def _images_for(images: Source | list[Source] | dict[str, Source] | None, split: str | None) -> Path | None:
    """The image folder of a split: from {split: folder}, from 'SPLIT=FOLDER' entries, or the one folder."""
    if images is None:
        return None
    if isinstance(images, dict):
        entries = [(k, Path(v)) for k, v in images.items()]
    else:
        entries = [split_and_path(entry) for entry in (images if isinstance(images, list) else [images])]
    plain = [path for name, path in entries if name is None]
    named = {split_name(name): path for name, path in entries if name is not None}
    if split is not None and split_name(split) in named:
        return named[split_name(split)]
    if len(plain) > 1:
        raise RecipeError(f"--images: {len(plain)} folders without a split; give one, or SPLIT=FOLDER for each.")
    return plain[0] if plain else None


def _merge(plans: list[ImportPlan]) -> ImportPlan:
    first = plans[0]
    for plan in plans[1:]:
        if plan.classes.id2label != first.classes.id2label:
            raise DataError(f"{plan.sources[0]} has other classes than {first.sources[0]} "
                            f"({plan.classes.id2label} vs {first.classes.id2label}); import them separately or give "
                            "one --label_config / --labels for both.")
    if all(plan.counters is first.counters for plan in plans):  # one dict the renderers count into
        counters = first.counters
    else:
        counters = {key: sum(plan.counters.get(key, 0) for plan in plans) for plan in plans for key in plan.counters}
    merged = ImportPlan(first.tool, [s for p in plans for s in p.sources], first.classes,
                        [i for p in plans for i in p.images], [u for p in plans for u in p.unannotated],
                        list(dict.fromkeys(n for p in plans for n in p.notes)), first.rules, counters)
    return merged


def import_annotations(fmt: str, sources: list[Source], out: str | os.PathLike, *,
                       images: Source | list[Source] | dict[str, Source] | None = None, split: str | None = None,
                       unlabelled: str | None = None, overlaps: str = "ignore", label_config: str | None = None,
                       labels: list[str] | None = None, image_key: str | None = None, keep_unannotated: bool = False,
                       ignore_index: int = 255, overwrite: bool = False) -> ImportSummary:
    """Read the export(s) of an annotation tool and write the data_dir `out`; returns what was written."""
    if fmt not in FORMATS:
        raise RecipeError(f"--format must be one of {', '.join(FORMATS)}; got '{fmt}'.")
    unlabelled = unlabelled or TOOL_UNLABELLED[fmt]
    if unlabelled not in UNLABELLED_CHOICES:
        raise RecipeError(f"--unlabelled must be one of {', '.join(UNLABELLED_CHOICES)}; got '{unlabelled}'.")
    if not 0 <= ignore_index <= 65535:
        raise RecipeError(f"--ignore_index must be in 0..65535; got {ignore_index}.")
    if not sources:
        raise RecipeError("import-annotations needs --src, the tool's export.")
    out = Path(out)
    claim_output(out, overwrite)  # before reading anything
    specs = [split_and_path(spec) for spec in sources]
    with contextlib.ExitStack() as stack:
        if fmt == "coco":
            plan = coco_format.read_exports(
                [(split or name or "train", path, _images_for(images, split or name)) for name, path in specs],
                unlabelled, keep_unannotated, ignore_index)
        elif fmt == "cvat-mask":
            plans = []
            for name, path in specs:
                folder = stack.enter_context(export_folder(path))
                plans.append(cvat_mask.read_export(folder, _images_for(images, split or name), split or name,
                                                   unlabelled, keep_unannotated, ignore_index, str(path)))
            plan = _merge(plans) if len(plans) > 1 else plans[0]
        else:
            if label_config is None and not labels and len(specs) > 1:
                labels = sorted({n for _, path in specs for task in label_studio.load_tasks(path)
                                 for n in label_studio._names_in(task)})
            counters: dict[str, int] = {}  # shared, so that the renderers count into the merged report
            plans = [label_studio.read_export(path, _images_for(images, split or name), split_name(split or name or
                                              "train"), unlabelled, overlaps, label_config, labels, keep_unannotated,
                                              ignore_index, image_key, counters) for name, path in specs]
            plan = _merge(plans) if len(plans) > 1 else plans[0]
        return write_data_dir(plan, out, overwrite)

