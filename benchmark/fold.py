"""The replay's per-record work without a broker: decode, load, fold, commit, timed.

Folds a fixed simulated stream (the throughput data set's simulator, ``seed`` 1, the demo's
SLA policies) through :meth:`streams.engine.Engine.process` as ``deskpulse replay`` calls
it (one partition's records a batch, misrouted records applied where they belong), into
a redis-server of its own, and prints the CPU seconds of this process per record as one
JSON line. What the replay spends besides (aiokafka's fetch and record parsing, the
asyncio loop's polling) is left out, so the figure is the part that compiling or
rewriting the fold can change.

    python -m benchmark.fold [--records 200000] [--batch 5000] [--profile out.txt]

With ``--redis-url`` it folds into that Redis (under a prefix of its own) instead of
starting one; ``--prefix`` names the prefix (each run should have its own). ``--profile``
samples the fold with py-spy (the ``bench`` extra) into that file (raw collapsed stacks).

To compare two builds of the code (a compiled one, another commit), put each tree holding
a ``deskpulse`` package first on ``PYTHONPATH``, run from outside the repository (whose
own ``deskpulse/`` would come first), and alternate the runs:
``cd /tmp && PYTHONPATH=TREE:REPO python -m benchmark.fold``. The line says which core
module was imported (``core``, ``compiled``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from benchmark.stack import make_settings
from deskpulse.streams.devtools import policies
from deskpulse.streams.devtools.embedded import free_port, start_redis
from deskpulse.streams.devtools.simulate import SimConfig, generate


class _NoDeadLetters:
    async def send(self, records: Any) -> None:
        raise AssertionError(f"the simulated stream had {len(records)} rejects")


def batches(records: int, batch: int, partitions: int, settings: Any) -> list[list[Any]]:
    """The simulated stream as the replay reads it: each partition's records in offset
    order (its three topics interleaved as produced, keyed by conversation as the
    benchmark's producer partitions them), cut into batches of ``batch``, partitions
    taking turns."""
    from deskpulse.streams.engine import SourceRecord
    from deskpulse.streams.partitioner import java_partition

    span = 3000.0
    # the throughput section's data set: the same events each run, ending two minutes ago
    start = time.time() - span - 120
    sim = SimConfig(seed=1, start_s=start, duration_s=span, rate=records / span)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for record in generate(sim):
        topic = settings.topic_for(record.topic_kind)
        partition = java_partition(record.key, partitions)
        offset = offsets[(topic, partition)]
        offsets[(topic, partition)] += 1
        by_partition[partition].append(
            SourceRecord(topic, partition, offset, record.key, record.value)
        )
    cut = {
        p: [rs[i : i + batch] for i in range(0, len(rs), batch)] for p, rs in by_partition.items()
    }
    out: list[list[Any]] = []
    for turn in range(max(len(c) for c in cut.values())):
        out.extend(c[turn] for _, c in sorted(cut.items()) if turn < len(c))
    return out


async def fold(redis_url: str, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from deskpulse.exporters.prometheus import PipelineMetrics
    from deskpulse.streams import core
    from deskpulse.streams.core import CoreConfig
    from deskpulse.streams.engine import Engine
    from deskpulse.streams.redis_client import connect
    from deskpulse.streams.replay import start_fences
    from deskpulse.streams.runtime import BATCH_GC_THRESHOLDS, tune_gc
    from deskpulse.streams.store import Store

    settings = make_settings(
        redis_url=redis_url,
        redis_prefix=prefix,
        topic_tickets="fold.tickets",
        topic_chats="fold.chats",
        topic_surveys="fold.surveys",
        topic_agents="fold.agents",
        topic_partitions=args.partitions,
        **policies.settings_values(),
    )
    work = batches(args.records, args.batch, args.partitions, settings)
    tune_gc(BATCH_GC_THRESHOLDS)  # as `deskpulse replay` does
    redis = connect(settings, purpose="replay")
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    await store.check_config()
    engine = Engine(settings, store, _NoDeadLetters(), PipelineMetrics(CollectorRegistry()))
    counts = dict.fromkeys((*settings.input_topics, settings.topic_repartition), args.partitions)
    engine.route(args.partitions, None, source_fences=await start_fences(store, settings, counts))
    sampler = None
    if args.profile:
        from benchmark.profiles import PySpy

        sampler = PySpy(os.getpid(), Path(args.profile_path))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # as many batches in flight as partitions: the replay's pipelines overlap them too
    pending: list[asyncio.Task[None]] = []
    for batch in work:
        pending.append(asyncio.ensure_future(engine.process(batch)))
        if len(pending) >= args.partitions:
            await pending.pop(0)
    await asyncio.gather(*pending)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if sampler is not None:
        sampler.stop()
    n = sum(len(b) for b in work)
    totals = {}
    for p in range(args.partitions):
        meta, _ = await store.load(p, [])
        totals[str(p)] = dict(meta.offsets)
    await redis.aclose()
    return {
        "records": n,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_record": cpu / n * 1e6,
        "per_cpu_second": n / cpu,
        "compiled": core.__file__.endswith((".so", ".pyd")),
        "core": core.__file__,
        "offsets": totals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--redis-url")
    parser.add_argument("--prefix", default=f"fold-{time.time_ns()}")
    parser.add_argument("--profile", dest="profile_path")
    args = parser.parse_args()
    args.profile = args.profile_path is not None
    if args.redis_url:
        result = asyncio.run(fold(args.redis_url, args.prefix, args))
    else:
        with tempfile.TemporaryDirectory(prefix="deskpulse-fold-") as workdir:
            port = free_port()
            server = start_redis("127.0.0.1", port, workdir)
            try:
                result = asyncio.run(fold(f"redis://127.0.0.1:{port}/0", args.prefix, args))
            finally:
                server.stop()
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
