"""What this machine offers a run: cores and free memory (container limits included).

Preprocessing sizes its worker pool from these, and training decides whether the
decoded records fit in memory (`cache=auto`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def available_memory() -> int | None:
    """Bytes of memory free for new work: MemAvailable (or free pages), capped by a cgroup v2
    limit when the process runs in a container; None when unknown."""
    found = None
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        found = int(line.split()[1]) * 1024
    if found is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free_in_group = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            found = free_in_group if found is None else min(found, free_in_group)
    return None if found is None else max(0, found)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
