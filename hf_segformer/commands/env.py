"""`hf-segformer env`: what a bug report needs, in one block to paste: versions, devices, the CPU and the flags
its speed depends on, usable cores, and what `precision: auto`, the torch threads and `dataloader_num_workers:
auto` choose on this machine and why (decided by `runtime`, the same calls a run makes). Imports torch only to
ask about devices, and no transformers."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata

PACKAGES = ("hf-segformer", "torch", "transformers", "datasets", "accelerate", "evaluate", "huggingface_hub",
            "safetensors", "onnxruntime", "onnx", "peft", "gradio")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
ENVIRONMENT = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "ACCELERATE_MIXED_PRECISION", "HF_HUB_OFFLINE",
               "HF_DATASETS_OFFLINE", "HF_SEGFORMER_ASSUME_NATIVE_BF16")


def package_versions() -> list[tuple[str, str]]:
    """Installed versions, read from the package metadata (nothing is imported)."""
    versions = []
    for name in PACKAGES:
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            versions.append((name, "not installed"))
    return versions


def device_lines() -> list[tuple[str, str]]:
    """CUDA devices with their names and bf16 support, MPS, and the torch build."""
    import torch

    from hf_segformer.runtime import accelerator_has_bf16

    lines = [("torch build", f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only (no CUDA)")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(("CUDA devices", f"{len(names)}: " + "; ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
                      + f" (native bf16: {'yes' if accelerator_has_bf16() else 'no'})"))
    else:
        lines.append(("CUDA devices", "none"))
    lines.append(("MPS", "available" if torch.backends.mps.is_available() else "not available"))
    return lines


def cpu_lines() -> list[tuple[str, str]]:
    """The CPU model, the flags that decide bf16 and INT8 speed, and the cores a run may use."""
    from hf_segformer.runtime import cpu_flags, cpu_info, usable_cores

    flags = cpu_flags()
    model = cpu_info("model name") or platform.processor() or "unknown"
    shown = ("unknown (no /proc/cpuinfo)" if flags is None
             else ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS))
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    cores = (f"{usable_cores()} (logical CPUs this process may use: {affinity}, of {os.cpu_count()}; "
             "hyper-threads not counted)")
    return [("CPU", model), ("CPU flags", shown), ("usable cores", cores)]


def choice_lines() -> list[tuple[str, str]]:
    """What a one-process run with `precision: auto` and `dataloader_num_workers: auto` picks here, and why."""
    from hf_segformer.runtime import (
        choose_loader_workers,
        choose_precision,
        choose_threads,
        has_accelerator,
        launcher_precision,
    )

    on_accelerator = has_accelerator()
    lines = [("run device", "accelerator (GPU/XPU/MPS)" if on_accelerator else "CPU")]
    try:
        precision = choose_precision("auto", False, False, on_cpu=not on_accelerator, launcher=launcher_precision())
        lines.append(("precision: auto", f"{precision.value} ({precision.why})"))
    except ValueError as err:
        lines.append(("precision: auto", f"refused: {err}"))
    threads = choose_threads()
    workers = choose_loader_workers("auto", on_accelerator=on_accelerator)
    lines += [("torch threads", f"{threads.value} ({threads.why})"),
              ("dataloader_num_workers: auto", f"{workers.value} ({workers.why})")]
    return lines


def environment_lines() -> list[tuple[str, str]]:
    """The environment variables that change what a run picks, where set."""
    return [(name, os.environ[name]) for name in ENVIRONMENT if name in os.environ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-segformer env", allow_abbrev=False,
        description="Print versions, devices, the CPU and its flags, usable cores, and what precision: auto, the "
                    "torch threads and dataloader_num_workers: auto choose on this machine, in one block to paste "
                    "into a bug report.")
    parser.parse_args(argv)
    print("Copy the block below into your bug report.\n")
    print("```")
    rows = [("python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
            ("platform", platform.platform())]
    rows += package_versions()
    for name, value in rows:  # before torch is imported: these lines come at once
        print(f"- {name}: {value}")
    sys.stdout.flush()
    for name, value in device_lines() + cpu_lines() + choice_lines() + environment_lines():
        print(f"- {name}: {value}")
    print("```")
    return 0
