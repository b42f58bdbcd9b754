"""Profiles of a hot path: py-spy on another process, pyinstrument in this one, summarised.

py-spy (``py-spy record --format raw``) samples a running worker without slowing it much
(``--nonblocking``); :func:`summarize` turns its collapsed stacks into the functions that
take the time (self and inclusive) and the share of each component (Faust, aiokafka,
pydantic decoding, the pure core, the Redis client, the event loop, ...).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["PySpy", "py_spy_bin", "pyinstrument_text", "record_command", "summarize"]

# (component, path fragment): the first fragment found in a frame's file names it
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("deskpulse: decode (models/wire.py, models/events.py)", "models/wire.py"),
    ("deskpulse: decode (models/wire.py, models/events.py)", "models/events.py"),
    ("deskpulse: pure core (streams/core.py, sketch, windows)", "streams/core.py"),
    ("deskpulse: pure core (streams/core.py, sketch, windows)", "streams/sketch.py"),
    ("deskpulse: pure core (streams/core.py, sketch, windows)", "streams/windows.py"),
    ("deskpulse: store (streams/store.py)", "streams/store.py"),
    ("deskpulse: engine (streams/engine.py)", "streams/engine.py"),
    ("deskpulse: query (streams/query.py)", "streams/query.py"),
    ("deskpulse: exporter (exporters/)", "exporters/"),
    ("deskpulse: app (streams/app.py)", "streams/app.py"),
    ("deskpulse: replay (streams/replay.py)", "streams/replay.py"),
    ("pydantic", "pydantic"),
    ("prometheus_client", "prometheus_client"),
    ("redis-py client", "/redis/"),
    ("aiokafka", "aiokafka"),
    ("faust", "/faust/"),
    ("mode (faust's service runtime)", "/mode/"),
    ("asyncio event loop", "asyncio/"),
    ("orjson", "orjson"),
)
_WRAPPERS = (
    "<module> (",
    "main (",
    "run (asyncio/runners.py)",
    "Runner.run (",
    "run_worker (",
    "BaseEventLoop.",
    "Handle._run (",
    "Worker.execute_from_commandline (",
    "Worker._execute_from_commandline (",
    "Worker.start (",
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy_bin() -> str | None:
    """The py-spy next to this Python, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`; raw collapsed stacks."""

    def __init__(self, pid: int, out: Path, *, rate: int = 100) -> None:
        self.out = out
        binary = py_spy_bin()
        if binary is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        self.log = out.with_suffix(".log")
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(out),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, timeout_s: float = 60.0) -> Path | None:
        """Stop sampling (SIGINT, as Ctrl-C) and wait for the file to be written."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGINT)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        return self.out if self.out.exists() and self.out.stat().st_size else None


def _parse(line: str) -> tuple[list[str], int] | None:
    line = line.rstrip("\n")
    if not line or " " not in line:
        return None
    stack, _, count = line.rpartition(" ")
    if not count.isdigit():
        return None
    return stack.split(";"), int(count)


def _name(frame: str) -> tuple[str, str]:
    """(``function (file)`` without the line number, the file)."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    file = match.group("file")
    short = _shorten(file)
    return f"{match.group('func')} ({short})", file


def _shorten(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _component(files: list[str]) -> str:
    for file in reversed(files):  # leaf first
        for name, fragment in _COMPONENTS:
            if fragment in file:
                return name
    return "other (stdlib, interpreter)"


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Top self and inclusive functions and the component shares of a raw py-spy file."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        named = [_name(frame) for frame in frames]
        total += count
        self_counts[named[-1][0]] += count
        for name in {n for n, _ in named}:
            inclusive[name] += count
        components[_component([file for _, file in named])] += count

    def table(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / max(total, 1)) for name, c in counter.most_common(top)]

    for name in list(inclusive):  # frames every stack passes through say nothing
        if name.startswith(_WRAPPERS) or "<frozen " in name:
            del inclusive[name]
    return {
        "samples": total,
        "self": table(self_counts),
        "inclusive": table(inclusive),
        "components": table(components),
    }


async def pyinstrument_text(
    work: Callable[[], Awaitable[Any]],
    *,
    repeat: int = 1,
    max_lines: int = 60,
    show_all: bool = False,
) -> str:
    """pyinstrument's text tree of ``repeat`` runs of ``work`` in this event loop."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="enabled")
    profiler.start()
    for _ in range(repeat):
        await work()
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=show_all)
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("Profile at")), 0)
    lines = lines[start:]  # after pyinstrument's banner
    return "\n".join(lines[:max_lines])


def record_command(
    argv: list[str], out: Path, *, env: dict[str, str], cwd: Path, rate: int = 1000
) -> Path | None:
    """``py-spy record`` of one command from start to exit (e.g. the ``kpis`` CLI)."""
    binary = py_spy_bin()
    if binary is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    subprocess.run(
        [binary, "record", "--rate", str(rate), "--format", "raw", "-o", str(out), "--", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=300,
        check=False,
        start_new_session=True,
    )
    return out if out.exists() and out.stat().st_size else None
