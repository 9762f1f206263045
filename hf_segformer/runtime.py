"""What a run runs on: device, torch threads, loader workers and precision, chosen so that every launch is fast.

However a run is started (`python recipes/finetune.py`, `accelerate launch` with or without a config file,
`torchrun`, `hf-segformer ...`), it should use the cores it was given and the fastest precision that is safe on
the machine. Two launchers get in the way: `accelerate launch` without `use_cpu` and `torchrun` export
`OMP_NUM_THREADS=1` to their children unless the user set it, so a CPU run would use one core of many; and
Accelerate's `mixed_precision: 'no'` is also its default, so an unset precision looks like an explicit fp32.

This module only decides; it imports nothing of the package, so the recipe dataclasses can use it.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENV_MIXED_PRECISION = "ACCELERATE_MIXED_PRECISION"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
LAUNCHER_ENV = ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID", "LOCAL_RANK")
# For tests and CI only: "1" makes this machine count as one with native bf16 (auto then picks bf16, emulated and
# slow where the CPU lacks it), so the suite can run as it would on an AVX-512 BF16/AMX CPU.
ENV_ASSUME_NATIVE_BF16 = "HF_SEGFORMER_ASSUME_NATIVE_BF16"


def has_accelerator() -> bool:
    """A CUDA, XPU or MPS device is there (where Accelerate puts the model unless use_cpu)."""
    return (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
            or torch.backends.mps.is_available())


def accelerator_has_bf16() -> bool:
    """bf16 runs natively on the accelerator (Ampere or newer GPUs, XPU); fp16 with loss scaling otherwise."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def cpu_info(field: str, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str | None:
    """One field of Linux's `/proc/cpuinfo` for the first core ("flags", "model name"); "" where the file lacks
    it, None where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.split(":", 1)[0].strip() == field), "")
    return line.split(":", 1)[1].strip() if ":" in line else ""


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags; None where /proc/cpuinfo is absent."""
    flags = cpu_info("flags", cpuinfo)
    return None if flags is None else set(flags.split())


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU computes in bf16 natively (AVX-512 BF16 or AMX); None where /proc/cpuinfo is absent.

    Without them bf16 autocast is emulated: measured 9× slower than fp32 for a SegFormer-B0 step on an AVX2 CPU.
    HF_SEGFORMER_ASSUME_NATIVE_BF16=1 (tests and CI) answers True for this machine whatever its CPU."""
    if str(cpuinfo) == "/proc/cpuinfo" and os.environ.get(ENV_ASSUME_NATIVE_BF16, "").strip() == "1":
        return True
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & set(CPU_BF16_FLAGS))


def cpu_int8_features() -> dict[str, bool]:
    """Which x86 dot-product extensions the CPU has (Linux): INT8 speed on the CPU depends on them, and ONNX
    Runtime advises reduce_range on CPUs without VNNI (u8×s8 products can saturate 16-bit sums there)."""
    flags = cpu_flags() or set()
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}), "amx_int8": "amx_int8" in flags}


def usable_cores() -> int:
    """Cores this process may compute on: its CPU affinity (which containers and `taskset` narrow), counting
    physical cores only where the machine has hyper-threads (a second thread per core slows GEMMs down)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:
        logical = os.cpu_count() or 1
    try:
        import psutil  # a dependency of accelerate

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = logical
    return max(1, min(logical, physical))


def available_memory() -> int | None:
    """Bytes of memory that new allocations can take now without swapping (psutil), None where unknown."""
    try:
        import psutil  # a dependency of accelerate

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError):
        return None


def local_processes() -> int:
    """Processes of this run on this machine (set by accelerate/torchrun), 1 for a plain `python` run."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def launcher_precision() -> str | None:
    """The precision the Accelerate launcher exported, or None when not launched by it."""
    value = os.environ.get(ENV_MIXED_PRECISION, "").strip().lower()
    return value or None


def _parent_environment() -> dict[str, str] | None:
    """The environment the launcher itself was started with (Linux), to tell a user's OMP_NUM_THREADS from the
    launcher's default; None where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def launched() -> bool:
    """This process was started by accelerate launch or torchrun."""
    return any(name in os.environ for name in LAUNCHER_ENV)


@dataclass(frozen=True)
class Choice:
    """A decided value and why, for the first lines of the log."""

    value: int | str
    why: str


def fair_threads(local: int | None = None) -> Choice:
    """Each of `local` processes on this machine (default: this run's) gets an equal share of the usable cores."""
    cores, local = usable_cores(), local or local_processes()
    return Choice(max(1, cores // local), f"{cores} usable core(s) / {local} local process(es)")


def choose_threads(requested: int | None = None) -> Choice:
    """Torch threads: the recipe's `torch_threads`, else OMP_NUM_THREADS if the user set it, else a fair share of
    the usable cores per local process. A value the launcher exported on its own (accelerate and torchrun export 1
    unless told otherwise) is not the user's choice and is replaced by the fair share."""
    fair = fair_threads()
    if requested:
        return Choice(int(requested), "torch_threads in the recipe")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not env.isdigit() or int(env) < 1:
        return fair
    if not launched():
        return Choice(int(env), "OMP_NUM_THREADS set by you")
    parent = _parent_environment()
    if parent is not None and "OMP_NUM_THREADS" in parent:
        return Choice(int(env), "OMP_NUM_THREADS set by you")
    if parent is None and int(env) > 1:
        return Choice(int(env), "OMP_NUM_THREADS from the launch")
    return Choice(fair.value, f"{fair.why}; the launcher's OMP_NUM_THREADS={env} replaced (set torch_threads "
                              "to choose)")


def apply_threads(requested: int | None = None) -> Choice:
    """Set torch's intra-op threads (and OMP_NUM_THREADS, which child processes inherit) to the chosen count."""
    choice = choose_threads(requested)
    torch.set_num_threads(int(choice.value))
    os.environ["OMP_NUM_THREADS"] = str(choice.value)
    return choice


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory(enabled: bool = True) -> Choice:
    """On a CPU, let glibc keep freed memory for reuse instead of handing it back to the system.

    glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so each step's large
    activations are faulted in again, page by page, zero-filled by the kernel: elementwise ops on a batch-8 B0's
    1/4-resolution maps ran 4× slower than on reused memory, and a whole training step 1.4× slower
    (benchmarks/bench_train_speed.py). With mmap off and no trimming, freed blocks stay in the heap; the peak
    RSS grows by about one step's transient memory. Settings apply to allocations made after the call."""
    if not enabled:
        return Choice("released", "reuse_freed_memory: false")
    if platform.libc_ver()[0] != "glibc":  # Linux's usual C library; elsewhere the allocator is left alone
        return Choice("released", "not glibc")
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        return Choice("released", "mallopt refused")
    return Choice("kept for reuse", "glibc mallopt: no mmap, no trimming")


def choose_loader_workers(requested: str | int, on_accelerator: bool) -> Choice:
    """DataLoader worker processes. `auto`: on a CPU run the model's threads take every core, so a worker process
    competes with them; it pays only where it is a small share of the cores: one worker from 3 cores per process up,
    none on 1–2 (measured on 2 cores, batch 8: 1.35 s/step without a worker against 1.45 with one at 256² crops,
    where decoding and augmenting is ~20 % of a step); on an accelerator the CPU only feeds it, so up to 8 workers,
    one core left to the main process."""
    if str(requested).strip().lower() != "auto":
        try:
            workers = int(requested)
        except ValueError:
            workers = -1
        if workers < 0:
            raise ValueError(f"dataloader_num_workers must be 'auto' or a number ≥ 0; got {requested!r}.")
        return Choice(workers, "dataloader_num_workers in the recipe")
    cores = max(1, usable_cores() // local_processes())
    if on_accelerator:
        return Choice(max(1, min(8, cores - 1)), f"auto: {cores} core(s) per process feeding an accelerator")
    return Choice(0 if cores <= 2 else 1, f"auto: CPU training on {cores} core(s) per process")


def choose_precision(requested: str, fp16: bool, bf16: bool, on_cpu: bool,
                     launcher: str | None = None) -> Choice:
    """One source of truth for mixed precision: `precision` and the fp16/bf16 flags of the recipe, and the
    Accelerate config's mixed_precision, must agree; what none of them sets is chosen for speed.

    Raises ValueError with the contradiction spelled out (the caller turns it into a RecipeError)."""
    requested = (requested or "auto").strip().lower()
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got '{requested}'.")
    if fp16 and bf16:
        raise ValueError("fp16 and bf16 are both true in the recipe: keep one (or set precision: auto|fp32|bf16|fp16).")
    flag = "fp16" if fp16 else "bf16" if bf16 else None
    if flag and requested not in ("auto", flag):
        raise ValueError(f"The recipe says precision: {requested} and {flag}: true; keep one of the two.")
    recipe = flag or (None if requested == "auto" else requested)
    config = launcher if launcher in ("fp16", "bf16") else None
    if config and recipe and recipe != config:
        raise ValueError(
            f"Mixed precision is set twice and the two disagree: the Accelerate config says mixed_precision: "
            f"{config} ({ENV_MIXED_PRECISION}={config}) but the recipe says {recipe_words(flag, requested)}. "
            f"transformers would silently use the recipe's. Keep one source of truth: remove it from the recipe "
            f"(the Accelerate config then decides), or launch with a config whose mixed_precision is {recipe} "
            f"(e.g. accelerate_configs/*_{recipe}.yaml, or `accelerate launch --mixed_precision {recipe}`).")
    if recipe:
        return Choice(recipe, f"set in the recipe ({recipe_words(flag, requested)})")
    if config:
        return Choice(config, f"the Accelerate config's mixed_precision: {config}")
    if not on_cpu:
        if accelerator_has_bf16():
            return Choice("bf16", "auto: the GPU computes in bf16 natively (fp32 range, no loss scaling)")
        return Choice("fp16", "auto: the GPU has no native bf16; fp16 with loss scaling")
    if cpu_has_native_bf16():
        return Choice("bf16", "auto: the CPU has AVX-512 BF16/AMX (bf16 autocast ~1.7× faster than fp32)")
    return Choice("fp32", "auto: the CPU has no native bf16 (emulated bf16 is several times slower than fp32)")


def recipe_words(flag: str | None, requested: str) -> str:
    return f"{flag}: true" if flag else f"precision: {requested}"
