"""Evaluation memory and speed: transformers' example (every logit kept) vs our streaming confusion matrices.

Setup: SegFormer-B0 built from config (random init, seeded: both sides get the same weights), a CamVid-like
validation set made on the fly (N images of 512×512, 11 classes plus void = 255; nothing held in memory),
per_device_eval_batch_size 8, CPU, torch threads 2. Per case (N, classes), side by side:

  baseline  transformers' run_semantic_segmentation.py: plain `transformers.Trainer`, batch_eval_metrics off,
            every logit accumulated; its compute_metrics upsamples all logits to the label size on the CPU
            (torch interpolate, bilinear), arg-maxes, and calls evaluate's `mean_iou`, which counts each image
            in numpy. The Hub module cannot be downloaded here: our offline module stands in (same arguments,
            same results, same Arrow encoding of the inputs).
  ours      `SegformerTrainer` + `SegmentationMetrics`, batch_eval_metrics on: one C×C matrix per sample.

Each case runs in a fresh subprocess, so peaks do not leak between cases: wall time of `trainer.evaluate()`,
peak RSS (VmHWM of the process, imports and model included; the RSS before `evaluate()` is printed too) and
the mIoU of both, which must agree up to float rounding. The metric's own overhead: the model's forward alone
vs forward + `confusion_matrices` (upsample + argmax + bincount) over the same batches, as a percentage.

    python benchmarks/bench_eval.py                       # N = 101, 202, 404 at 11 classes; N = 101 at 150
    python benchmarks/bench_eval.py --sizes 101 --many_labels 0 --threads 16
    python benchmarks/bench_eval.py --quick               # smoke test: N = 4, 8 at 64×64

The baseline's whole-set upsampling holds N × C × 512² float32 at once (4.7 GB for N = 404 at 11 classes,
15.9 GB for N = 101 at 150): a case killed for memory is reported as such. `--baseline_upsample per_image`
upsamples one image at a time instead (a fairer, lighter baseline than the example).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from workers import emit, fmt, memory_gb, run_worker

MEAN_IOU_RESULT_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


# ---------------------------------------------------------------------------------------------------------------
# Worker side (a fresh process per case; torch is imported only here)
# ---------------------------------------------------------------------------------------------------------------



def camvid_like(n: int, image_size: int, label_size: tuple[int, int], num_labels: int, seed: int = 0):
    """N deterministic image/label pairs, generated per item: a coarse random layout of classes (8×8 regions,
    nearest-upsampled), ~5 % void (255), and an image whose colour follows the class plus noise."""
    import torch
    import torch.nn.functional as F

    palette = torch.rand(num_labels, 3, generator=torch.Generator().manual_seed(seed))

    class CamVidLike(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, index):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            layout = torch.randint(0, num_labels, (8, 8), generator=generator)
            label = F.interpolate(layout[None, None].float(), size=label_size, mode="nearest")[0, 0].long()
            label[torch.rand(label_size, generator=generator) < 0.05] = 255
            colours = palette[layout].permute(2, 0, 1)[None]
            image = F.interpolate(colours, size=(image_size, image_size), mode="nearest")[0]
            image = image + 0.2 * torch.randn(image.shape, generator=generator)
            return {"pixel_values": ((image - 0.45) / 0.225).float(), "labels": label}

    return CamVidLike()


def example_compute_metrics(metric, id2label: dict[int, str], ignore_index: int, per_image: bool):
    """compute_metrics of transformers' run_semantic_segmentation.py (ignore_index and reduce_labels set for
    labels that are already class ids with void = 255)."""
    import torch
    from torch import nn

    @torch.no_grad()
    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        logits_tensor = torch.from_numpy(logits)
        if per_image:
            logits_tensor = torch.cat([nn.functional.interpolate(logits_tensor[i : i + 1], size=labels.shape[-2:],
                                                                 mode="bilinear", align_corners=False).argmax(dim=1)
                                       for i in range(len(logits_tensor))])
        else:  # as the example: every logit of the evaluation set upsampled at once
            logits_tensor = nn.functional.interpolate(logits_tensor, size=labels.shape[-2:], mode="bilinear",
                                                      align_corners=False).argmax(dim=1)
        pred_labels = logits_tensor.detach().cpu().numpy()
        metrics = metric.compute(predictions=pred_labels, references=labels, num_labels=len(id2label),
                                 ignore_index=ignore_index, reduce_labels=False)
        metrics = {k: metrics[k] for k in MEAN_IOU_RESULT_KEYS}  # what the Hub module returns
        per_category_accuracy = metrics.pop("per_category_accuracy").tolist()
        per_category_iou = metrics.pop("per_category_iou").tolist()
        metrics.update({f"accuracy_{id2label[i]}": v for i, v in enumerate(per_category_accuracy)})
        metrics.update({f"iou_{id2label[i]}": v for i, v in enumerate(per_category_iou)})
        return metrics

    return compute_metrics


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import evaluate
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_segformer.config.model import ModelArguments
    from hf_segformer.evaluation.metrics import MEAN_IOU_MODULE_PATH, SegmentationMetrics, confusion_matrices
    from hf_segformer.modeling.build import build_model
    from hf_segformer.training.arguments import SegformerTrainingArguments
    from hf_segformer.training.trainer import SegformerTrainer

    label_size = tuple(args.label_size or (args.image_size, args.image_size))
    dataset = camvid_like(args.n, args.image_size, label_size, args.num_labels)
    id2label = {i: f"class_{i}" for i in range(args.num_labels)}
    torch.manual_seed(0)
    model = build_model(ModelArguments(model_variant="b0"), id2label, ignore_index=255)

    if args.worker == "overhead":
        model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=default_data_collator)
        forward_s = metric_s = 0.0
        with torch.no_grad():
            warm = next(iter(loader))
            confusion_matrices(model(pixel_values=warm["pixel_values"]).logits, warm["labels"], args.num_labels, 255)
            for batch in loader:  # the data is made outside the timed spans
                start = time.perf_counter()
                logits = model(pixel_values=batch["pixel_values"]).logits
                middle = time.perf_counter()
                confusion_matrices(logits, batch["labels"], args.num_labels, 255)
                forward_s += middle - start
                metric_s += time.perf_counter() - middle
        return {"forward_s": forward_s, "metric_s": metric_s}

    with tempfile.TemporaryDirectory() as tmp:
        common = {"output_dir": tmp, "per_device_eval_batch_size": args.batch_size, "use_cpu": True,
                  "report_to": "none", "dataloader_num_workers": 0, "disable_tqdm": True}
        if args.worker == "baseline":
            metric = evaluate.load(MEAN_IOU_MODULE_PATH)  # stands in for evaluate.load("mean_iou")
            trainer = Trainer(model=model, args=TrainingArguments(**common, remove_unused_columns=False,
                                                                  batch_eval_metrics=False),
                              eval_dataset=dataset, data_collator=default_data_collator,
                              compute_metrics=example_compute_metrics(metric, id2label, 255,
                                                                      args.baseline_upsample == "per_image"))
        else:
            trainer = SegformerTrainer(model=model, args=SegformerTrainingArguments(**common), eval_dataset=dataset,
                                       data_collator=default_data_collator,
                                       compute_metrics=SegmentationMetrics(args.num_labels, id2label), ignore_index=255)
        rss_before = memory_gb("VmRSS")
        start = time.perf_counter()
        metrics = trainer.evaluate()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gb": memory_gb("VmHWM"), "rss_before_gb": rss_before,
            "mean_iou": metrics["eval_mean_iou"]}


# ---------------------------------------------------------------------------------------------------------------
# Driver side (no torch import: its own memory stays small)
# ---------------------------------------------------------------------------------------------------------------

def run_case(args: argparse.Namespace, mode: str, n: int, num_labels: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--n", str(n),
               "--num_labels", str(num_labels), "--image_size", str(args.image_size),
               "--batch_size", str(args.batch_size), "--threads", str(args.threads),
               "--baseline_upsample", args.baseline_upsample]
    if args.label_size:
        command += ["--label_size", *map(str, args.label_size)]
    return run_worker(command, args.threads, f"{mode} N={n} C={num_labels}", stderr_tail=2000)



def fmt_seconds(value: float | None) -> str:
    return "—" if value is None else format(value, ".1f" if value >= 10 else ".2f" if value >= 1 else ".3f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[101, 202, 404], help="validation set sizes N")
    parser.add_argument("--num_labels", type=int, default=11, help="classes for the --sizes cases (CamVid: 11)")
    parser.add_argument("--many_labels", type=int, default=150, help="classes of the extra case (ADE20K: 150; 0: none)")
    parser.add_argument("--many_size", type=int, default=101, help="N of the extra many-class case")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--label_size", type=int, nargs=2, metavar=("H", "W"),
                        help="native label size (default: the image size; CamVid's is 720 960)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline_upsample", choices=("all", "per_image"), default="all",
                        help="baseline: upsample every logit at once (the example) or one image at a time")
    parser.add_argument("--overhead_size", type=int, help="N for the overhead measurement (default: first of --sizes)")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 4, 8 at 64×64 (N = 4 at many_labels)")
    parser.add_argument("--worker", choices=("baseline", "ours", "overhead"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        emit(worker(args))
        return
    if args.quick:
        args.sizes, args.many_size, args.image_size, args.label_size = [4, 8], 4, 64, None
    cases = [(n, args.num_labels) for n in args.sizes]
    if args.many_labels:
        cases.append((args.many_size, args.many_labels))

    label_size = args.label_size or (args.image_size, args.image_size)
    print(f"SegFormer-B0 (random init), {args.image_size}² images, labels {label_size[0]}×{label_size[1]}, "
          f"eval batch {args.batch_size}, CPU ({platform.processor() or platform.machine()}), "
          f"{args.threads} torch threads; baseline upsampling: {args.baseline_upsample}\n")
    print("| N | classes | baseline s | ours s | speed-up × | baseline peak GB | ours peak GB "
          "| mIoU baseline | mIoU ours |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rss_before, differences = [], []
    for n, num_labels in cases:
        base, ours = run_case(args, "baseline", n, num_labels), run_case(args, "ours", n, num_labels)
        speedup = base["seconds"] / ours["seconds"] if "seconds" in base and "seconds" in ours else None
        if "mean_iou" in base and "mean_iou" in ours:
            differences.append(abs(base["mean_iou"] - ours["mean_iou"]))
        rss_before += [r["rss_before_gb"] for r in (base, ours) if "rss_before_gb" in r]
        print(f"| {n} | {num_labels} | {fmt_seconds(base.get('seconds'))} | {fmt_seconds(ours.get('seconds'))} | "
              f"{fmt(speedup, '.2f')} | {fmt(base.get('peak_gb'), '.2f')} | {fmt(ours.get('peak_gb'), '.2f')} | "
              f"{fmt(base.get('mean_iou'), '.8f')} | {fmt(ours.get('mean_iou'), '.8f')} |", flush=True)
    if rss_before:
        print(f"\nPeaks are whole-process: before evaluate() each process held {min(rss_before):.2f}–"
              f"{max(rss_before):.2f} GB (Python, torch, transformers, the model).")
    if differences:
        print(f"mIoU baseline vs ours: max |difference| {max(differences):.2e}")

    overhead_n = args.overhead_size or args.sizes[0]
    for num_labels in dict.fromkeys(c for _, c in cases):
        timing = run_case(args, "overhead", overhead_n, num_labels)
        if "forward_s" in timing:
            forward, metric = timing["forward_s"], timing["metric_s"]
            print(f"Metric overhead (N={overhead_n}, {num_labels} classes): forward alone {fmt_seconds(forward)} s, "
                  f"forward + confusion_matrices {fmt_seconds(forward + metric)} s: +{100 * metric / forward:.1f} %")


if __name__ == "__main__":
    main()
