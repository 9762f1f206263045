"""Parallel test workers (`pytest -n auto`, pytest-xdist) sharing one machine.

Each worker is pinned to its own share of the cores (the processes its tests start inherit it), so the project's
thread and loader-worker choices, which read the CPU affinity, give each test the cores it really has instead of
every worker oversubscribing all of them. A test marked `whole_machine` (it measures wall-clock time: a time
budget decides its length) runs alone on every core: it waits for the tests in flight to end, and none starts
until it is done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so whole_machine tests share the machine there
    fcntl = None

CAN_PIN = hasattr(os, "sched_setaffinity")  # Linux; elsewhere the workers share every core
CAN_LOCK = fcntl is not None

GIB = 1024**3
WORKER_MEMORY = 3 * GIB  # a worker's peak: torch + transformers + a tiny training run, with the processes it starts
MAX_WORKERS = 8


def all_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if CAN_PIN else list(range(os.cpu_count() or 1))


def auto_workers(cores: int, memory_bytes: int | None) -> int:
    """As many workers as cores, as memory allows (where it is known), at most MAX_WORKERS (beyond that, process
    start-up dominates)."""
    by_memory = cores if memory_bytes is None else memory_bytes // WORKER_MEMORY
    return max(1, min(cores, by_memory, MAX_WORKERS))


def worker_share(worker: int, workers: int, cores: list[int]) -> set[int]:
    """The cores of worker `worker` of `workers`: every workers-th core from its own index (one core each where
    there are as many workers as cores); a worker beyond the core count shares a core."""
    share = cores[worker::workers]
    return set(share) if share else {cores[worker % len(cores)]}


def set_cores(cores: set[int]) -> None:
    """Pin this process (and the processes it starts from now on) to `cores`, with as many torch threads."""
    if not CAN_PIN:
        return
    os.sched_setaffinity(0, cores)
    if "torch" in sys.modules:  # already imported by a support module: its thread pool was sized to every core
        sys.modules["torch"].set_num_threads(len(cores))


class MachineLock:
    """A readers-writer lock on two files shared by the workers, writers first: a `whole_machine` test takes the
    gate (no test starts after it) and then the room alone (the tests in flight have ended); other tests pass the
    gate and share the room."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._gate = open(folder / "machine-gate.lock", "a+")  # noqa: SIM115 - held for the worker's life
        self._room = open(folder / "machine-room.lock", "a+")  # noqa: SIM115

    @contextmanager
    def shared(self) -> Iterator[None]:
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._room, fcntl.LOCK_SH)
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._room, fcntl.LOCK_UN)

    @contextmanager
    def alone(self) -> Iterator[None]:
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._room, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._room, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
