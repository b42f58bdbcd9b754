"""``streams.replay.replay`` in a process of its own; prints its stats as one JSON line.

A process of its own keeps the benchmark's memory (and garbage collector) out of the
measurement, as a real ``deskpulse replay`` would have it.

    python -m benchmark.replay_child        (settings from DESKPULSE_*)
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from deskpulse.models.settings import load_settings
from deskpulse.streams.replay import replay
from deskpulse.streams.runtime import BATCH_GC_THRESHOLDS, tune_gc


def main() -> None:
    settings = load_settings()
    tune_gc(BATCH_GC_THRESHOLDS)  # as `deskpulse replay` does
    started = time.perf_counter()
    stats = asyncio.run(replay(settings))
    wall = time.perf_counter() - started
    line = {
        "records": stats.records,
        "seconds": stats.seconds,
        "per_second": stats.per_second,
        "active_seconds": stats.active_seconds,
        "active_per_second": stats.active_per_second,
        "wall_seconds": wall,
        "cpu_seconds": time.process_time(),
    }
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")


if __name__ == "__main__":
    main()
