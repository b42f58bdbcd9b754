"""What machine a run is on, and how much of it other processes used meanwhile.

The CPU of a development machine is shared: :class:`CpuWatch` measures, per section, the
cores used by processes that are not this benchmark or its children (from ``/proc``), the
steal time of the VM and the load average, so a noisy number can be told from a slow one.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CpuWatch", "child_pids", "facts", "rss_kib", "tree_cpu_s"]

_HZ = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def facts(redis_version: str, broker_version: str) -> dict[str, Any]:
    """nproc, CPU model, RAM, kernel, versions, the code under test."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    mhz = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "cpu MHz" in line),
        "",
    )
    mem_kib = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if "MemTotal" in line
        ),
        0,
    )
    versions = {}
    for package in ("faust-streaming", "aiokafka", "redis", "hiredis", "pydantic", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    root = Path(__file__).resolve().parent.parent
    git = _git(root, "rev-parse", "--short", "HEAD")
    dirty = [line[3:] for line in _git(root, "status", "--porcelain").splitlines() if line]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "cpu_mhz": mhz,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis": redis_version,
        "broker": broker_version,
        "packages": versions,
        "commit": git,
        "uncommitted": dirty,
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.rstrip()  # not strip: porcelain lines start with a space
    except OSError:
        return ""


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (a worker's engine process included)."""
    return _tree_ticks(pid) / _HZ


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (a worker's engine process)."""
    return [child for child, fields in _all_stats().items() if int(fields[3]) == pid]


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # the command name is in parentheses and may contain spaces: split after it
    rest = text[text.rindex(")") + 2 :].split()
    return ["", "", *rest]  # index as in proc(5): fields[2] is the state


def _all_stats() -> dict[int, list[str]]:
    """The ``/proc/PID/stat`` fields of every process still there."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            stats[int(entry)] = fields
    return stats


def _tree_ticks(root_pid: int) -> int:
    """CPU ticks of ``root_pid`` and its descendants, reaped children included."""
    stats = _all_stats()
    parents = {pid: int(fields[3]) for pid, fields in stats.items()}
    # utime, stime, cutime, cstime: a reaped child's time moves into its parent's c*time
    ticks = {pid: sum(int(fields[i]) for i in (13, 14, 15, 16)) for pid, fields in stats.items()}
    total = 0
    for pid, value in ticks.items():
        node = pid
        for _ in range(64):
            if node == root_pid:
                total += value
                break
            node = parents.get(node, 0)
            if node <= 1:
                break
    return total


def _machine_ticks() -> tuple[int, int]:
    """(busy user+nice+system ticks, steal ticks) of the whole machine."""
    first = _read("/proc/stat").splitlines()[0].split()
    values = [int(v) for v in first[1:]]
    return values[0] + values[1] + values[2], values[7] if len(values) > 7 else 0


@dataclass
class CpuWatch:
    """CPU used by everything else while a section ran."""

    label: str
    started: float = field(default_factory=time.monotonic)
    _busy: int = 0
    _steal: int = 0
    _ours: int = 0
    _load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        self._busy, self._steal = _machine_ticks()
        self._ours = _tree_ticks(os.getpid())
        self._load = os.getloadavg()

    def finish(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        busy, steal = _machine_ticks()
        ours = _tree_ticks(os.getpid())
        machine_cores = (busy - self._busy) / _HZ / elapsed
        our_cores = (ours - self._ours) / _HZ / elapsed
        return {
            "section": self.label,
            "seconds": round(elapsed, 1),
            "machine_cores": round(machine_cores, 2),
            "our_cores": round(our_cores, 2),
            # kernel threads doing our loopback networking count here too: a floor of ~0.05
            "other_cores": round(max(0.0, machine_cores - our_cores), 2),
            "steal_pct": round(
                100 * (steal - self._steal) / _HZ / elapsed / (os.cpu_count() or 1), 1
            ),
            "load_start": self._load,
            "load_end": os.getloadavg(),
        }
