"""What this machine offers a run: cores and free memory (container limits included).

Preprocessing sizes its worker pool from these, and training decides whether the
decoded records fit in memory (`cache=auto`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def available_memory(proc: Path = PROC, cgroup: Path = CGROUP) -> int | None:
    """Bytes of memory free for new work: MemAvailable (or free pages), capped by the memory limit of the
    process's cgroup (v2, or v1 and its ancestors) when it runs in a container; None when unknown."""
    found = None
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        with open(proc / "meminfo", encoding="ascii") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        found = int(line.split()[1]) * 1024
    if found is None and proc == PROC:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for free_in_group in (_cgroup_v2_free(cgroup), _cgroup_v1_free(proc, cgroup)):
        if free_in_group is not None:
            found = free_in_group if found is None else min(found, free_in_group)
    return None if found is None else max(0, found)


def _stat(folder: Path, key: str) -> int:
    """A counter of the group's memory.stat (0 when absent)."""
    with contextlib.suppress(OSError, ValueError):
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _cgroup_v2_free(cgroup: Path) -> int | None:
    """limit - working set; the working set leaves out inactive file pages (page cache the kernel drops
    first), as container runtimes count it, or reading the data once would look like using it."""
    with contextlib.suppress(OSError, ValueError):
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text()) - _stat(cgroup, "inactive_file")
            return int(limit) - used
    return None


def _cgroup_v1_free(proc: Path, cgroup: Path) -> int | None:
    """The tightest (limit - usage) from the process's v1 memory cgroup up to the hierarchy's root."""
    mount = cgroup / "memory"
    if not (mount / "memory.limit_in_bytes").is_file():
        return None
    own = ""
    with contextlib.suppress(OSError):
        for line in (proc / "self" / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                own = path
    # /proc shows the path from the host's root; the mount may start deeper (a container's own group).
    parts = [p for p in own.split("/") if p]
    here = next((mount.joinpath(*parts[k:]) for k in range(len(parts) + 1)
                 if (mount.joinpath(*parts[k:]) / "memory.limit_in_bytes").is_file()), mount)
    free = None
    while True:
        with contextlib.suppress(OSError, ValueError):
            limit = int((here / "memory.limit_in_bytes").read_text())
            if limit < NO_LIMIT:  # working set as in v2 (memory.stat counts the group's own pages)
                used = int((here / "memory.usage_in_bytes").read_text()) - _stat(here, "total_inactive_file")
                left = limit - used
                free = left if free is None else min(free, left)
        if here == mount:
            return free
        here = here.parent


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
