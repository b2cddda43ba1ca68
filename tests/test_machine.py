"""Free memory as a container sees it: MemAvailable capped by cgroup v2 or v1 limits (fake /proc and /sys trees)."""
from __future__ import annotations

from pathlib import Path

from fingerspell import machine

GB = 10**9


def fake_proc(root: Path, available_kb: int, memory_cgroup: str = "/") -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(f"5:cpu,cpuacct:/\n4:memory:{memory_cgroup}\n0::/\n")
    return proc


def v1_group(folder: Path, limit: int, usage: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")


def test_without_limits_it_is_memavailable(tmp_path):
    proc = fake_proc(tmp_path, 8 * 10**6)
    v1_group(tmp_path / "cg" / "memory", 9223372036854771712, 5 * GB)  # v1's "no limit"
    assert machine.available_memory(proc, tmp_path / "cg") == 8 * 10**9 * 1024 // 1000


def test_a_cgroup_v2_limit_caps_it(tmp_path):
    proc = fake_proc(tmp_path, 8 * 10**6)
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "memory.max").write_text(f"{2 * GB}\n")
    (tmp_path / "cg" / "memory.current").write_text(f"{GB // 2}\n")
    assert machine.available_memory(proc, tmp_path / "cg") == 3 * GB // 2
    # Page cache the kernel drops first (the data just read) is not counted as used.
    (tmp_path / "cg" / "memory.stat").write_text(f"anon 100\ninactive_file {GB // 4}\nactive_file 7\n")
    assert machine.available_memory(proc, tmp_path / "cg") == 3 * GB // 2 + GB // 4


def test_a_cgroup_v1_limit_of_the_process_or_an_ancestor_caps_it(tmp_path):
    # /proc names the group from the host's root; the container's mount starts at its own group.
    proc = fake_proc(tmp_path, 8 * 10**6, memory_cgroup="/docker/abc123/training")
    mount = tmp_path / "cg" / "memory"
    v1_group(mount, 9223372036854771712, 3 * GB)
    v1_group(mount / "training", 2 * GB, GB // 4)
    assert machine.available_memory(proc, tmp_path / "cg") == 2 * GB - GB // 4
    v1_group(mount, 3 * GB, int(2.5 * GB))  # the parent's limit is tighter: it counts too
    assert machine.available_memory(proc, tmp_path / "cg") == GB // 2
    (mount / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {GB}\n")
    assert machine.available_memory(proc, tmp_path / "cg") == 3 * GB - (int(2.5 * GB) - GB)  # its cache is not used
