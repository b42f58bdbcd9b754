"""Concurrent readers hammering ``GET /kpis``, as boards and services would, for a while.

``--readers`` clients each send a request as soon as their last one was answered (no think
time, a 503's ``Retry-After`` ignored unless ``--honour-retry-after``: the worst case)
until ``--seconds`` have passed, then one JSON line with every
answer's status and latency goes to ``--out``:

* ``--mode same``: every request asks the same window (24 h by every dimension, ending
  now), so the read gate's sharing and cache answer most of them;
* ``--mode distinct``: every request asks a window of its own (24 h ending at a different
  minute of the last day), so each one needs a computation of its own.

    python -m benchmark.readers --url http://127.0.0.1:6066 --readers 100 --seconds 30 \\
        --mode same --out readers.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

__all__ = ["query_of"]

BY = "channel,queue,priority"
#: distinct window ends: the minutes of the last day, visited in a scrambled order
_MINUTES = 1440
_STRIDE = 997  # prime to 1440: reader i, request k lands on minute (i * 7919 + k * 997) % 1440


def query_of(mode: str, reader: int, request: int, now_s: float) -> dict[str, str]:
    """The query string of request ``request`` of reader ``reader``."""
    query = {"window": "24h", "by": BY}
    if mode == "distinct":
        minutes_back = (reader * 7919 + request * _STRIDE) % _MINUTES + 1
        end_s = (now_s // 60 - minutes_back) * 60
        query["at"] = datetime.fromtimestamp(end_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return query


async def run(args: argparse.Namespace) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {"200": [], "503": [], "other": []}
    retry_after_missing = 0
    deadline = time.monotonic() + args.seconds
    connector = aiohttp.TCPConnector(limit=0)  # one connection per reader, none shared
    timeout = aiohttp.ClientTimeout(total=60)

    async def reader(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal retry_after_missing
        for request in itertools.count():
            if time.monotonic() >= deadline:
                return
            url = f"{args.url}/kpis?{urlencode(query_of(args.mode, index, request, time.time()))}"
            started = time.perf_counter()
            retry_after = None
            try:
                async with session.get(url) as response:
                    await response.read()
                    status = str(response.status)
                    retry_after = response.headers.get("Retry-After")
                    if status == "503" and retry_after is None:
                        retry_after_missing += 1
            except (aiohttp.ClientError, TimeoutError) as error:
                status = type(error).__name__
            elapsed = time.perf_counter() - started
            statuses[status] += 1
            latencies[status if status in latencies else "other"].append(elapsed)
            if status == "503" and args.honour_retry_after:
                await asyncio.sleep(float(retry_after or 1))
            elif status not in ("200", "503"):
                await asyncio.sleep(0.1)  # a refused connection must not spin

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        cpu_started = time.process_time()
        tasks = [asyncio.ensure_future(reader(i, session)) for i in range(args.readers)]
        # the phase ends on time: requests still unanswered a second after it are cut off
        _, late = await asyncio.wait(tasks, timeout=args.seconds + 1.0)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        wall_s = time.monotonic() - started
        cpu_s = time.process_time() - cpu_started
    return {
        "readers": args.readers,
        "mode": args.mode,
        "seconds": wall_s,
        "statuses": dict(statuses),
        "latencies": latencies,
        "retry_after_missing": retry_after_missing,
        "cut_off": len(late),
        "cores": cpu_s / max(wall_s, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.readers")
    parser.add_argument("--url", required=True)
    parser.add_argument("--readers", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--mode", choices=["same", "distinct"], default="same")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--honour-retry-after",
        action="store_true",
        help="after a 503, wait as long as its Retry-After says (default: ask again at once)",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
