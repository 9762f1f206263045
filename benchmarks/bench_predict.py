"""Inference speed and memory: `hf-segformer predict` / `Segmenter` vs transformers' pipeline("image-segmentation").

Setup: SegFormer-B0 built from config (random init, seeded; saved with its image processor, 512×512 resize, as
training saves it), `--num_labels` classes (ADE20K: 150), CPU, `--threads` torch threads. Each case runs in a
fresh subprocess (clean peak memory, no compile cache shared), side by side in one run:

  throughput  N JPEG images of H×W on disk → class-id PNG masks on disk, for each size in --sizes:
              pipeline 1      `pipe(paths, batch_size=1)`: one image at a time; each result's per-class PIL masks
                              put together into one class-id mask and saved as a palette PNG (what a user must do)
              pipeline 8      the same with `batch_size=8` (--batch_size)
              predict ...     `predict.predict_files` (what `hf-segformer predict` runs): decode one batch ahead in
                              a thread, batched forward, upsample + arg-max, palette PNG; fp32, bf16 autocast, and
                              torch.compile (fp32)
              The masks of every method are compared pixel for pixel with the pipeline's: predict fp32 (whose
              decode head is folded, the same logits up to float rounding) must agree with the batched
              pipeline's on all but near-tie pixels (at most MAX_NEAR_TIES of them or 10; the script fails otherwise). Against
              one at a time, batched float arithmetic flips a few near-tie pixels too, and bf16 / compile are
              approximations: all reported as % of pixels that agree.
  slide       one H×W image (--slide_size, Cityscapes-like 1024×2048): whole (the processor's 512²), whole at
              native size, and slide windows (crop/stride/window_batch as MMSegmentation's Cityscapes setting and
              a 512 one): median time and peak memory above the loaded model (VmHWM − RSS before inference).
  latency     ms/image of `Segmenter.masks` (normalise, forward, upsample, arg-max) on decoded 512×512 images in
              batches of 8: fp32, bf16 autocast, torch.compile, torch.compile + bf16; median of --repeats.

    python benchmarks/bench_predict.py                      # the full run (minutes; compiles once per compile case)
    python benchmarks/bench_predict.py --quick              # smoke test: tiny images, few of them
    python benchmarks/bench_predict.py --skip compile       # leave out the torch.compile cases
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from workers import emit, fmt, memory_gb, run_worker

MAX_NEAR_TIES = 1e-5  # share of pixels whose class may flip between mathematically equal computations
PREDICT_VARIANTS = {"predict fp32": ("fp32", False), "predict bf16": ("bf16", False), "predict compile": ("fp32", True)}
LATENCY_VARIANTS = {"fp32": ("fp32", False), "bf16 autocast": ("bf16", False), "torch.compile": ("fp32", True),
                    "torch.compile + bf16": ("bf16", True)}


# ---------------------------------------------------------------------------------------------------------------
# Worker side (a fresh process per case; torch is imported only here)
# ---------------------------------------------------------------------------------------------------------------



def make_image(seed: int, height: int, width: int):
    """A photo-like test image: a smooth random colour field plus noise (JPEG-friendly, deterministic)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (12, 24, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(field, dtype=np.float32) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def worker_setup(args: argparse.Namespace) -> dict:
    """Save the model and processor, and write the test images of every size."""
    import torch
    from transformers import SegformerForSemanticSegmentation

    from hf_segformer.modeling.build import build_image_processor, init_encoder_like_mit, variant_config

    torch.manual_seed(0)
    id2label = {i: f"class_{i}" for i in range(args.num_labels)}
    model = SegformerForSemanticSegmentation(variant_config("b0", num_labels=args.num_labels, id2label=id2label,
                                                            label2id={v: k for k, v in id2label.items()}))
    init_encoder_like_mit(model)
    model.save_pretrained(args.work / "model")
    build_image_processor(args.processor_size).save_pretrained(args.work / "model")
    for size in args.sizes:
        folder = args.work / f"images_{size}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = parse_size(size)
        for i in range(args.n):
            make_image(i, height, width).save(folder / f"{i:04d}.jpg", quality=90)
    return {}


def worker_pipeline(args: argparse.Namespace) -> dict:
    import numpy as np
    from transformers import pipeline

    from hf_segformer.data.palettes import default_palette, mask_image

    pipe = pipeline("image-segmentation", model=str(args.work / "model"), device="cpu")
    label2id = {name: int(i) for i, name in pipe.model.config.id2label.items()}
    palette = default_palette(len(label2id))
    paths = sorted(str(p) for p in (args.work / f"images_{args.size}").glob("*.jpg"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe(paths[0])  # warm-up
    start = time.perf_counter()
    for path, segments in zip(paths, pipe(paths, batch_size=args.batch)):
        size = segments[0]["mask"].size
        mask = np.zeros((size[1], size[0]), dtype=np.int64)
        for segment in segments:
            mask[np.asarray(segment["mask"]) > 0] = label2id[segment["label"]]
        mask_image(mask, palette).save(out / (Path(path).stem + ".png"))
    return {"seconds": time.perf_counter() - start, "images": len(paths)}


def worker_predict(args: argparse.Namespace) -> dict:
    from hf_segformer.data.images import load_image
    from hf_segformer.data.palettes import default_palette
    from hf_segformer.inference.predict import find_jobs, predict_files
    from hf_segformer.inference.segmenter import Segmenter

    segmenter = Segmenter.from_pretrained(args.work / "model", precision=args.precision, compile=args.compile)
    jobs = find_jobs([str(args.work / f"images_{args.size}")], args.out, overlays=False)
    warm = [load_image(job.source) for job in jobs[: args.batch]]
    list(segmenter.masks(warm))  # warm-up (and compilation) on a full batch; nothing is written
    start = time.perf_counter()
    failures = predict_files(segmenter, jobs, default_palette(segmenter.num_labels), args.batch, progress=False)
    assert not failures, failures
    return {"seconds": time.perf_counter() - start, "images": len(jobs)}


def worker_slide(args: argparse.Namespace) -> dict:
    from hf_segformer.inference.segmenter import InferenceSettings, Segmenter

    height, width = parse_size(args.size)
    settings = InferenceSettings(**json.loads(args.settings))
    segmenter = Segmenter.from_pretrained(args.work / "model", settings)
    image = make_image(0, height, width)
    rss_before = memory_gb("VmRSS")
    times = []
    for _ in range(args.repeats + 1):  # the first run is a warm-up
        start = time.perf_counter()
        next(segmenter.masks([image])).numpy()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * statistics.median(times[1:]), "peak_gb": memory_gb("VmHWM") - rss_before,
            "rss_before_gb": rss_before}


def worker_latency(args: argparse.Namespace) -> dict:
    from hf_segformer.inference.segmenter import Segmenter

    segmenter = Segmenter.from_pretrained(args.work / "model", precision=args.precision, compile=args.compile)
    height, width = parse_size(args.size)
    images = [make_image(i, height, width) for i in range(args.batch)]
    times = []
    for _ in range(args.repeats + 1):  # the first run is a warm-up (and compiles)
        start = time.perf_counter()
        for mask in segmenter.masks(images):
            mask.numpy()
        times.append((time.perf_counter() - start) / len(images))
    return {"ms": 1000 * statistics.median(times[1:])}


WORKERS = {"setup": worker_setup, "pipeline": worker_pipeline, "predict": worker_predict, "slide": worker_slide,
           "latency": worker_latency}


# ---------------------------------------------------------------------------------------------------------------
# Driver side (no torch import)
# ---------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def run_case(args: argparse.Namespace, worker: str, **options) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--work", str(args.work),
               "--n", str(args.n), "--num_labels", str(args.num_labels), "--processor_size", str(args.processor_size),
               "--repeats", str(args.repeats), "--sizes", *args.sizes]
    for key, value in options.items():
        command += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return run_worker(command, args.threads, f"{worker} {options}")


def compare_masks(reference: Path, other: Path) -> tuple[int, int]:
    """(differing pixels, total pixels) between the PNG masks of two output folders."""
    import numpy as np
    from PIL import Image

    differing = total = 0
    for path in sorted(reference.glob("*.png")):
        a, b = np.asarray(Image.open(path)), np.asarray(Image.open(other / path.name))
        differing += int((a != b).sum())
        total += a.size
    return differing, total



def throughput_table(args: argparse.Namespace) -> list[str]:
    """pipeline one at a time and batched, predict in each variant; masks compared with the pipeline's."""
    batched = f"pipeline {args.batch_size}"
    folders = {"pipeline 1": "pipeline_1", batched: "pipeline_batched"}
    folders.update({name: name.replace(" ", "_") for name in PREDICT_VARIANTS})
    problems = []
    print("\n### Throughput: JPEG files → class-id PNG files\n")
    print(f"| size | method | s | images/s | × pipeline 1 | × {batched} | masks vs pipeline 1 | masks vs {batched} |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for size in args.sizes:
        out = {name: args.work / f"out_{size}_{folder}" for name, folder in folders.items()}
        runs = {name: run_case(args, "pipeline", size=size, batch=batch, out=out[name])
                for name, batch in (("pipeline 1", 1), (batched, args.batch_size))}
        for name, (precision, compile_) in PREDICT_VARIANTS.items():
            if not (compile_ and "compile" in args.skip):
                runs[name] = run_case(args, "predict", size=size, batch=args.batch_size, precision=precision,
                                      out=out[name], **({"compile": True} if compile_ else {}))
        rate = {name: r["images"] / r["seconds"] for name, r in runs.items() if "seconds" in r}
        for name, run in runs.items():
            agreement = []
            for reference in ("pipeline 1", batched):
                if name == reference or name not in rate or reference not in rate:
                    agreement.append("—")
                    continue
                differing, total = compare_masks(out[reference], out[name])
                agreement.append("identical" if differing == 0 else f"{100 * (1 - differing / total):.4f} % agree")
                if differing > max(MAX_NEAR_TIES * total, 10) and reference == batched and name == "predict fp32":
                    problems.append(f"{size}: predict fp32 masks differ from {batched}'s in {differing} of {total} "
                                    "pixels, more than float rounding explains")
            ratios = [fmt(rate[name] / rate[r] if name in rate and r in rate else None, ".2f")
                      for r in ("pipeline 1", batched)]
            print(f"| {size} | {name} | {fmt(run.get('seconds'), '.2f')} | {fmt(rate.get(name), '.2f')} | "
                  f"{' | '.join(ratios)} | {' | '.join(agreement)} |", flush=True)
    print(f"\npredict fp32 (folded decode head: the same logits up to float rounding) must agree with {batched} on "
          f"all but near-tie pixels (at most {MAX_NEAR_TIES:.0e} of them or 10; the script fails otherwise). The batched "
          f"pipeline itself differs from one-at-a-time in such pixels: matrix products round differently.")
    return problems


def slide_table(args: argparse.Namespace) -> None:
    height, width = parse_size(args.slide_size)
    big, small = min(height, width, 1024), min(height, width, args.processor_size)
    cases = {
        f"whole ({args.processor_size}² input)": {},
        f"whole (native {height}×{width})": {"scale": [max(height, width), min(height, width)]},
        f"slide crop {big} stride {big * 3 // 4}, 2 windows/pass":
            {"mode": "slide", "slide_crop": [big], "slide_stride": [big * 3 // 4], "window_batch": 2},
        f"slide crop {small} stride {small * 2 // 3}, 8 windows/pass":
            {"mode": "slide", "slide_crop": [small], "slide_stride": [small * 2 // 3], "window_batch": 8},
    }
    print(f"\n### One {height}×{width} image: whole vs slide (median of {args.repeats})\n")
    print("| inference | ms | × whole native | peak GB above the loaded model |")
    print("|---|---:|---:|---:|")
    results = {name: run_case(args, "slide", size=args.slide_size, settings=json.dumps(s)) for name, s in cases.items()}
    native = results[f"whole (native {height}×{width})"].get("ms")
    for name, run in results.items():
        ratio = run["ms"] / native if native and "ms" in run else None
        print(f"| {name} | {fmt(run.get('ms'), '.0f')} | {fmt(ratio, '.2f')} | {fmt(run.get('peak_gb'), '.2f')} |",
              flush=True)


def latency_table(args: argparse.Namespace) -> None:
    size = f"{args.processor_size}x{args.processor_size}"
    print(f"\n### ms/image, {size} images in batches of {args.batch_size} (median of {args.repeats})\n")
    print("| precision | ms/image | × fp32 speed |")
    print("|---|---:|---:|")
    results = {}
    for name, (precision, compile_) in LATENCY_VARIANTS.items():
        if compile_ and "compile" in args.skip:
            continue
        results[name] = run_case(args, "latency", size=size, batch=args.batch_size, precision=precision,
                                 **({"compile": True} if compile_ else {}))
    reference = results["fp32"].get("ms")
    for name, run in results.items():
        print(f"| {name} | {fmt(run.get('ms'), '.1f')} | "
              f"{fmt(reference / run['ms'] if reference and 'ms' in run else None, '.2f')} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"], help="throughput image sizes HxW")
    parser.add_argument("--n", type=int, default=16, help="images per throughput case (a multiple of --batch_size)")
    parser.add_argument("--num_labels", type=int, default=150)
    parser.add_argument("--processor_size", type=int, default=512, help="the saved image processor's resize")
    parser.add_argument("--slide_size", default="1024x2048", help="image of the slide-vs-whole case, HxW")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=("compile", "throughput", "slide", "latency"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 tiny images, 64² processor, 20 classes")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    for name in ("size", "out", "precision", "settings"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        emit(WORKERS[args.worker](args))
        return
    if args.quick:
        args.sizes, args.n, args.num_labels, args.processor_size = ["64x64", "96x160"], 4, 20, 64
        args.slide_size, args.batch_size, args.repeats = "96x160", 2, 2
    print(f"SegFormer-B0 (random init), {args.num_labels} classes, processor resize {args.processor_size}², "
          f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch threads")
    problems = []
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        if "error" in run_case(args, "setup"):
            sys.exit("setup failed")
        if "throughput" not in args.skip:
            problems = throughput_table(args)
        if "slide" not in args.skip:
            slide_table(args)
        if "latency" not in args.skip:
            latency_table(args)
    if problems:
        sys.exit("Masks differ:\n" + "\n".join(problems))


if __name__ == "__main__":
    main()
