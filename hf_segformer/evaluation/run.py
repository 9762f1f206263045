"""The evaluation run behind `hf-segformer evaluate` (`run_evaluation`): a saved model on a dataset split, at each
mask's native resolution, with whole, slide or test-time augmented inference (`inference.Segmenter`), on one or
several processes.

Each process takes every n-th sample (its shard), sums one C×C confusion matrix (`metrics.confusion_matrices`
on the logits of `Segmenter.logits`), and the matrices are summed across processes with Accelerate's
`reduce`; every sample is counted once. The main process writes `eval_results.json` (the metrics of the
training evaluation: evaluate's `mean_iou` keys, Dice, per-class values), `eval_settings.json`, the
per-class report and confusion-matrix PNG (`reports.write_class_report`), and `eval_samples.png`, a grid of
image | ground truth | prediction | error, which also goes to TensorBoard (`runs/`). A split other than
validation is the prefix instead of `eval`, as in the Trainer: `--eval_split test` writes `test_results.json`
with `test_mean_iou`, `test_per_class.md`, ...

    hf-segformer evaluate --config recipes/aerial/segformer-b0.yaml --mode slide --slide_crop 512 --slide_stride 341
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml recipes/evaluate.py --config ... --flip true
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image as PILImage

from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import canonical_split, normalise_id2label
from hf_segformer.data.images import decoding, entry_name, open_image
from hf_segformer.data.labels import LabelDecoder, find_id2label_file
from hf_segformer.data.loading import load_split, spread_indices
from hf_segformer.data.palettes import dataset_palette
from hf_segformer.data.prepare import build_label_decoder
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.evaluation.metrics import confusion_matrices, flatten_metrics, metrics_from_confusion
from hf_segformer.evaluation.reports import write_class_report
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter, class_map
from hf_segformer.modeling.saved_label_map import with_saved_label_map
from hf_segformer.runtime import has_accelerator
from hf_segformer.visuals import sample_grid

logger = logging.getLogger(__name__)

Sample = tuple[PILImage.Image, np.ndarray, np.ndarray]  # image, label, prediction: a row of the sample grid


def _decode_pair(image_entry, label_entry, decoder: LabelDecoder, segmenter: Segmenter) -> tuple:
    image_name, label_name = entry_name(image_entry), entry_name(label_entry)
    with decoding(image_entry, label_entry):
        image = segmenter.read(image_entry, image_name)  # 8-bit RGB, or the bands of a band-stack model
        image.load()
        label = decoder(open_image(label_entry), label_name)
    if label.shape != (image.height, image.width):
        raise DataError(f"{image_name} is {image.width}×{image.height} but its mask {label_name} is "
                        f"{label.shape[1]}×{label.shape[0]}; they must match pixel for pixel.")
    return image, label, label_name


def evaluate_shard(segmenter: Segmenter, dataset: Dataset, decoder: LabelDecoder, batch_size: int = 8,
                   process_index: int = 0, num_processes: int = 1,
                   keep: tuple[int, ...] | list[int] = ()) -> tuple[torch.Tensor, dict[int, Sample]]:
    """Confusion matrix [C, C] (int64, rows label) of samples process_index, process_index + num_processes, ...,
    each at its mask's native size; and (image, label, prediction) of the samples whose index is in `keep`."""
    num_labels = segmenter.num_labels
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64, device=segmenter.device)
    kept: dict[int, Sample] = {}
    indices = list(range(process_index, len(dataset), num_processes))
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        rows = dataset[chunk]
        pairs = [_decode_pair(i, m, decoder, segmenter) for i, m in zip(rows["image"], rows["label"])]
        images = [image for image, _, _ in pairs]
        for index, (image, label, name), logits in zip(chunk, pairs, segmenter.logits(images)):
            target = torch.from_numpy(label.astype(np.int64))[None]
            try:
                confusion += confusion_matrices(logits[None], target, num_labels, decoder.ignore_index)[0]
            except ValueError as err:
                raise DataError(f"{name}: {err} The model has {num_labels} classes; check the data with "
                                "`hf-segformer check-data`.") from err
            if index in keep:
                kept[index] = (image, label, class_map(logits, label.shape).cpu().numpy())
    return confusion, kept


def metric_prefix(split: str) -> str:
    """The Trainer's convention: `eval_` for the validation split, the split's own name for any other
    (`test_mean_iou`), so results of different splits never read alike."""
    split = canonical_split(split)
    return "eval" if split == "validation" else split


def write_results(output_dir: Path, confusion: np.ndarray, id2label: dict[int, str], samples: list[Sample],
                  palette: np.ndarray, ignore_index: int, extra: dict[str, float | str],
                  prefix: str = "eval") -> dict[str, float | str]:
    """<prefix>_results.json, the per-class report, the confusion-matrix PNG, <prefix>_samples.png and
    TensorBoard; `extra` keys are written as given (the numbers to TensorBoard too)."""
    from torch.utils.tensorboard import SummaryWriter

    metrics = {f"{prefix}_{k}": v for k, v in flatten_metrics(metrics_from_confusion(confusion), id2label).items()}
    metrics.update(extra)
    (output_dir / f"{prefix}_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_class_report(output_dir, confusion, id2label, prefix=prefix)
    writer = SummaryWriter(log_dir=str(output_dir / "runs"))
    for key, value in metrics.items():
        if isinstance(value, (int, float)):  # not the precision's name
            writer.add_scalar(key.replace(f"{prefix}_", f"{prefix}/", 1), value, 0)
    if samples:
        grid = sample_grid(samples, palette, ignore_index)
        grid.save(output_dir / f"{prefix}_samples.png")
        writer.add_image(f"{prefix}/samples", np.asarray(grid), 0, dataformats="HWC")
    writer.close()
    return metrics


def check_model_matches_data(model: str, model_id2label: dict[int, str], data_args: DataArguments) -> None:
    """The model's classes are the data's: a 4-class model scored on 3-class masks would average over a class
    the data never has, and a renamed class would report its IoU under the wrong name."""
    data_id2label = data_args.id2label_map or normalise_id2label(find_id2label_file(data_args.data_dir,
                                                                                    data_args.image_dir))
    data_count = len(data_id2label) if data_id2label else data_args.num_labels
    source = ("the recipe's id2label" if data_args.id2label_map else
              "the data's id2label.json" if data_id2label else "the recipe's num_labels")
    if data_count and data_count != len(model_id2label):
        raise DataError(f"The model {model} has {len(model_id2label)} classes ({_names(model_id2label)}) but "
                        f"{source} has {data_count}" + (f" ({_names(data_id2label)})" if data_id2label else "")
                        + ": evaluate the model trained on this data, or fix id2label / num_labels.")
    if data_id2label:
        differ = [c for c in model_id2label if str(model_id2label[c]).lower() != str(data_id2label.get(c)).lower()]
        if differ and not all(model_id2label[c] == f"class_{c}" or data_id2label.get(c) == f"class_{c}" for c in differ):
            shown = ", ".join(f"{c}: model '{model_id2label[c]}' vs data '{data_id2label.get(c)}'" for c in differ[:5])
            raise DataError(f"The model {model} and {source} name the classes differently ({shown}): evaluate the "
                            "model trained on this data, or fix id2label.")


def _names(id2label: dict[int, str]) -> str:
    names = [str(id2label[c]) for c in sorted(id2label)]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def default_output_dir(model: str, split: str, settings: InferenceSettings) -> Path:
    """<model>/evaluation_<split>_<mode>[_tta]: results of different settings never overwrite each other."""
    if not Path(model).is_dir():
        raise RecipeError(f"{model} is not a local folder: set --eval_output_dir for the results.")
    tta = "_tta" if len(set(settings.tta_scales)) > 1 or settings.flip else ""
    return Path(model) / f"evaluation_{split}_{settings.mode}{tta}"


def run_evaluation(load_segmenter: Callable[[torch.device], Segmenter], model: str, data_args: DataArguments,
                   output_dir: Path, options: dict[str, Any], *, device: str | None = None, batch_size: int = 8,
                   grid_samples: int = 4, seed: int = 42) -> dict[str, float]:
    """Evaluate on every process Accelerate started (each its shard) and write the results on the main process;
    returns the metrics there ({} on the others). `load_segmenter(device)` loads the model on a process's device;
    `options`, the inference options as given, are recorded in <prefix>_settings.json."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    split = canonical_split(data_args.eval_split)
    # Without cpu=True, Accelerate starts no process group on a machine without GPUs: each process would do it all.
    accelerator = Accelerator(cpu=device == "cpu" or not has_accelerator())
    segmenter = load_segmenter(accelerator.device)
    check_model_matches_data(model, segmenter.id2label, data_args)
    data_args = with_saved_label_map(data_args, model, segmenter.num_labels)  # the recipe's map wins
    dataset = load_split(data_args, seed)
    decoder = build_label_decoder(data_args)
    keep = spread_indices(len(dataset), grid_samples)
    started = time.perf_counter()
    try:
        confusion, kept = evaluate_shard(segmenter, dataset, decoder, batch_size,
                                         accelerator.process_index, accelerator.num_processes, keep)
        failure = None
    except DataError as err:  # every process must learn of it, or the others would wait in `reduce` forever
        failure = str(err)
    failures = [f for f in gather_object([failure]) if f]
    if failures:
        raise DataError(failures[0])
    confusion = accelerator.reduce(confusion, reduction="sum").cpu().numpy()
    samples = {index: sample for shard in gather_object([kept]) for index, sample in shard.items()}
    runtime = time.perf_counter() - started

    prefix = metric_prefix(split)
    extra = {f"{prefix}_samples": len(dataset), f"{prefix}_runtime": round(runtime, 4),
             f"{prefix}_samples_per_second": round(len(dataset) / max(runtime, 1e-9), 3),
             f"{prefix}_precision": segmenter.precision}  # bf16 or fp16 figures differ from machine to machine
    metrics = {}
    if accelerator.is_main_process:
        settings = {"model": model, "split": split, "processes": accelerator.num_processes, **options,
                    "precision": segmenter.precision}  # as resolved, not `auto`
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{prefix}_settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        palette = dataset_palette(segmenter.num_labels, data_args)
        metrics = write_results(output_dir, confusion, segmenter.id2label, [samples[i] for i in sorted(samples)],
                                palette, data_args.ignore_index, extra, prefix)
        print(f"{split}: mIoU {metrics[f'{prefix}_mean_iou']:.4f}, "
              f"pixel accuracy {metrics[f'{prefix}_overall_accuracy']:.4f} "
              f"over {len(dataset)} images in {runtime:.1f} s ({segmenter.settings.mode}, {segmenter.precision}); "
              f"results in {output_dir}")
    accelerator.wait_for_everyone()
    return metrics
