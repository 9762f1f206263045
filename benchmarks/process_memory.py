"""Memory of the running process, for the benchmarks that measure peaks in fresh worker processes."""

from __future__ import annotations

import resource
from pathlib import Path


def memory_gb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process in GB, from /proc (ru_maxrss where there is no /proc)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
