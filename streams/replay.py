"""The fast path for backfills: aiokafka in large batches, the same engine, the same state.

``deskpulse replay`` reads the input topics without a consumer group, starting each
partition right after the offset the Redis state records as applied (or at the
beginning), and hands large batches to the same :class:`~streams.engine.Engine` the live
agents use. Because the engine folds with the same pure core and commits through the same
offset fence, Redis ends in exactly the state the live worker would leave, and a live
worker started afterwards skips everything the replay applied.

Each partition (its three co-partitioned topics) has a pipeline of its own in the one
event loop, so while Redis runs one partition's commit script the others are fetched,
decoded and folded. It stops at the end offsets the topics had when it started.

A record a producer put on another partition than its conversation's is applied straight
to its own partition's state (the live worker forwards it through the repartition topic
instead: a produce and a consume the replay does without), before the fence of the
partition it was read on passes it. Its own partition keeps a fence of such records per
source topic and partition, moved in the same commit: a replay killed between the two
commits and run again passes over those it applied, rather than counting them again as
duplicates. The repartition topic is read too, from each
partition's fence: what a live worker forwarded and did not apply yet. A forward whose
source record lies past the fence the replay started from is passed over, since the
replay reads that source record and applies it itself; so whatever mix of runs came
before, each record is applied once and the KPIs are the live worker's.

Last, it reads the alerts topic and adopts each SLA alert published there as a claim of
its ticket (:func:`~streams.breaches.adopt_published`): a state rebuilt under a new prefix
holds none of the old one's claims, and the worker on it would otherwise publish every
passed warning and breach again, under new event ids.

It is the way to rebuild a state Redis lost (see :mod:`streams.integrity`): the fences it
leaves are at the topics' ends, past every offset the consumer group committed, so the
worker accepts the state afterwards. It refuses a state that is damaged (a partition's
meta gone, or of another generation) or was built from other topics (a fence past the end
of a topic's log): replaying on top of those would skip or double records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from deskpulse.exporters.kafka import KafkaPublisher, kafka_client_options
from deskpulse.exporters.prometheus import PipelineMetrics
from deskpulse.models.errors import DeskpulseError
from deskpulse.models.settings import Settings
from deskpulse.streams.breaches import adopt_published, published_marker
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.engine import Engine
from deskpulse.streams.integrity import TopicOffsets, verify
from deskpulse.streams.partitioner import ConversationPartitions
from deskpulse.streams.redis_client import connect
from deskpulse.streams.store import Store
from deskpulse.streams.topics import ensure_topics

__all__ = ["ReplayFailed", "ReplayStats", "replay", "replay_in_processes"]

log = logging.getLogger("deskpulse.replay")

#: batches of one partition handed to the engine before the oldest is awaited (fetch and
#: decode overlap the commits in Redis)
_BATCHES_IN_FLIGHT = 3
#: how long a partition at its end offset must bring nothing more before it is done
_END_QUIET_MS = 250


@dataclass
class ReplayStats:
    """What a replay did.

    ``seconds`` runs from the start of reading to the end check; ``active_seconds`` from
    the first record in hand to the last batch committed, which leaves out the wait for
    the first fetch and what of the end check outlasts the last commit (a fixed cost,
    whatever the size): the rate a long backfill runs at, measured as the benchmark
    measures the live worker.
    """

    records: int = 0
    seconds: float = 0.0
    active_seconds: float = 0.0
    #: SLA alerts found on the alerts topic whose claims the state did not hold
    adopted: int = 0

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def active_per_second(self) -> float:
        return self.records / self.active_seconds if self.active_seconds > 0 else 0.0


async def replay(
    settings: Settings,
    *,
    max_records: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    only: Collection[int] | None = None,
    fences: Mapping[tuple[str, int], int] | None = None,
    adopt: bool = True,
) -> ReplayStats:
    """Apply everything in the input topics up to their current ends; return the stats.

    ``only``: only these partitions' records (of the three input topics and the
    repartition topic), as one of :func:`replay_in_processes`' processes does; a record
    read there that belongs to another partition is applied there all the same.
    ``fences``: the applied offsets of every partition when the replay started (see
    :func:`start_fences`), which decide the forwards it passes over; read here when
    not given. The processes of one replay must share one reading: taken by each at its
    own start, a process starting late would see fences another one already moved and
    apply forwards of records that one applied itself. ``adopt``: at the end, adopt the
    SLA alerts already published (:func:`adopt_all_published`); a process of several
    leaves it to the parent, once all of them are done, since a ticket of its partitions
    may still come from a record another process reads.
    """
    from prometheus_client import CollectorRegistry

    counts = await ensure_topics(settings)
    redis = connect(settings, purpose="replay")
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    try:
        await store.check_config()
        await store.check_partition_count(counts[settings.topic_tickets])
        await store.check_generation()
    except BaseException:
        await redis.aclose()
        raise
    publisher = KafkaPublisher(settings)
    await publisher.start()
    engine = Engine(settings, store, publisher, PipelineMetrics(CollectorRegistry()))
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    stats = ReplayStats()
    try:
        every = [
            TopicPartition(topic, p)
            for topic in (*settings.input_topics, settings.topic_repartition)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        wanted = None if only is None else set(only)
        partitions = [tp for tp in every if wanted is None or tp.partition in wanted]
        consumer.assign(partitions)
        # state built from other topics would make the replay skip what these hold
        offsets = TopicOffsets(settings, group=False)
        try:
            for warning in await verify(
                store, offsets, settings.input_topics, {tp.partition for tp in partitions}
            ):
                log.warning("%s", warning)
        finally:
            await offsets.close()
        ends = await consumer.end_offsets(partitions)
        remaining = 0
        if fences is None:
            fences = await start_fences(store, settings, counts)
        for tp in partitions:
            meta, _ = await store.load(tp.partition, [])
            applied = meta.offsets.get(tp.topic)
            if applied is None:
                await consumer.seek_to_beginning(tp)
                start = (await consumer.beginning_offsets([tp]))[tp]
            else:
                consumer.seek(tp, applied + 1)
                start = applied + 1
            remaining += max(0, ends[tp] - start)
        # records on the wrong partition: applied where they belong (module docstring)
        engine.route(counts[settings.topic_tickets], None, source_fences=fences)
        total = remaining
        started = time.perf_counter()
        first_in_hand: float | None = None
        last_committed = started

        def committed(task: asyncio.Future[None]) -> None:
            # when the batch's commit ended, not when it was awaited (after the end check)
            nonlocal last_committed
            if not task.cancelled() and task.exception() is None:
                last_committed = time.perf_counter()

        groups: dict[int, list[TopicPartition]] = defaultdict(list)
        for tp in partitions:
            groups[tp.partition].append(tp)

        async def replay_partition(tps: list[TopicPartition]) -> None:
            nonlocal first_in_hand
            # Up to _BATCHES_IN_FLIGHT batches in flight: the next ones are fetched and
            # decoded while the oldest one's commit runs in Redis. Their order is kept by
            # the engine's partition lock, which is first come, first served.
            in_flight: deque[tuple[asyncio.Task[None], int]] = deque()

            async def finish_oldest() -> None:
                task, size = in_flight.popleft()
                await task
                stats.records += size
                if progress is not None:
                    progress(stats.records, max(total, stats.records))

            try:
                while True:
                    positions = [await consumer.position(tp) for tp in tps]
                    at_end = all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True))
                    # At the end offsets it had when we started, a partition is done once a
                    # poll brings nothing more for a moment. (Tansu reports the base offset
                    # of the last batch as the end, so records past it are read too rather
                    # than trusted away.)
                    batches = await consumer.getmany(
                        *tps,
                        timeout_ms=_END_QUIET_MS if at_end else 500,
                        max_records=max_records,
                    )
                    records = [m for messages in batches.values() for m in messages]
                    if records:
                        if first_in_hand is None:
                            first_in_hand = time.perf_counter()
                        task = asyncio.ensure_future(engine.process(records))
                        task.add_done_callback(committed)
                        in_flight.append((task, len(records)))
                        if len(in_flight) >= _BATCHES_IN_FLIGHT:
                            await finish_oldest()
                    elif at_end:
                        break
                while in_flight:
                    await finish_oldest()
            finally:
                for task, _ in in_flight:
                    task.cancel()

        # One pipeline per partition (its three topics share its state and its lock): when
        # batches came in arrival order, consecutive ones were mostly of one partition and
        # waited on each other's commits; side by side, one partition folds in Python while
        # Redis runs another's commit.
        pipelines = [
            asyncio.ensure_future(replay_partition(tps)) for _, tps in sorted(groups.items())
        ]
        try:
            await asyncio.gather(*pipelines)
        finally:  # one failed (or we were cancelled): stop the others before the clients
            for pipeline in pipelines:
                pipeline.cancel()
            await asyncio.gather(*pipelines, return_exceptions=True)
        stats.seconds = time.perf_counter() - started
        if first_in_hand is not None and stats.records:
            stats.active_seconds = last_committed - first_in_hand
        if adopt:
            stats.adopted = await adopt_all_published(settings, store, counts)
    finally:
        await consumer.stop()
        await publisher.stop()
        await redis.aclose()
    return stats


async def adopt_all_published(settings: Settings, store: Store, counts: Mapping[str, int]) -> int:
    """Adopt as claims the SLA alerts published before (read back from the alerts topic)
    into every partition's tickets, so the state rebuilt does not publish them again; run
    once every record is applied. How many were adopted. ``counts``: partitions by topic."""
    published = await _published_alerts(
        settings, counts[settings.topic_alerts], counts[settings.topic_tickets]
    )
    adopted = 0
    for partition, markers in sorted(published.items()):
        adopted += await adopt_published(store, partition, markers)
    if adopted:
        log.info("%d published SLA alerts adopted as claims", adopted)
    return adopted


async def start_fences(
    store: Store, settings: Settings, counts: Mapping[str, int]
) -> dict[tuple[str, int], int]:
    """The applied offset (-1: none) of every partition of the input topics and the
    repartition topic, not only a process's own: a forward read anywhere may come from
    any of them. ``counts``: partitions by topic."""
    fences: dict[tuple[str, int], int] = {}
    for topic in (*settings.input_topics, settings.topic_repartition):
        for partition in range(counts[topic]):
            meta, _ = await store.load(partition, [])
            fences[(topic, partition)] = meta.offsets.get(topic, -1)
    return fences


class ReplayFailed(DeskpulseError):
    """A process of a replay in several processes stopped before its end."""


async def replay_in_processes(
    settings: Settings,
    processes: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """:func:`replay` in ``processes`` processes side by side (at most one per partition),
    each with its share of the partitions, round robin: the fold is Python, one core per
    process, while Redis applies the commits on its own.

    Each process is :func:`replay` with ``only`` its partitions, so each record is applied
    once by the same fences and a record read on the wrong partition is applied where it
    belongs (its partition's state may be another process's: the commit's version check
    makes the two take turns). When one process fails, the others are stopped and
    :class:`ReplayFailed` names it; what was committed stays, and a new replay resumes at
    the fences. One process (or one partition): :func:`replay` in this one.
    """
    counts = await ensure_topics(settings)
    partitions = counts[settings.topic_tickets]
    count = max(1, min(processes, partitions))
    if count == 1:
        return await replay(settings, progress=progress)
    shares = [list(range(first, partitions, count)) for first in range(count)]
    started = time.perf_counter()
    # one reading of the fences for all, before any of them commits (see replay's fences)
    redis = connect(settings, purpose="replay")
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    try:
        await store.check_config()
        await store.check_partition_count(partitions)
        await store.check_generation()
        fences = await start_fences(store, settings, counts)
        children: list[asyncio.subprocess.Process] = []
        for share in shares:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "deskpulse.streams.replay",
                ",".join(map(str, share)),
                logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdin is not None
            child.stdin.write(pickle.dumps((settings, fences)))  # our own child, our own pipe
            await child.stdin.drain()
            child.stdin.close()
            children.append(child)
        done, totals = [0] * count, [0] * count
        results: list[dict[str, Any]] = [{} for _ in shares]

        async def follow(i: int) -> None:
            child = children[i]
            assert child.stdout is not None
            async for line in child.stdout:
                message = orjson.loads(line)
                if "stats" in message:
                    results[i] = message["stats"]
                    continue
                done[i], totals[i] = message["done"], message["total"]
                if progress is not None:
                    progress(sum(done), sum(totals))
            status = await child.wait()
            if status != 0 or not results[i]:
                raise ReplayFailed(
                    f"the replay process of partitions {', '.join(map(str, shares[i]))} stopped "
                    f"with status {status} (its reason is above); the others were stopped too. "
                    "What was committed stays: run the replay again, it resumes at the fences"
                )

        try:
            await asyncio.gather(*(follow(i) for i in range(count)))
        finally:
            for child in children:
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.terminate()
            await asyncio.gather(*(child.wait() for child in children), return_exceptions=True)
        # every record applied, by whichever process read it: now the tickets are all there
        adopted = await adopt_all_published(settings, store, counts)
    finally:
        await redis.aclose()
    return ReplayStats(
        records=sum(r["records"] for r in results),
        seconds=time.perf_counter() - started,
        active_seconds=max(r["active_seconds"] for r in results),
        adopted=adopted,
    )


def _child(only: list[int]) -> int:
    """One process of :func:`replay_in_processes`: the settings and the replay's fences
    come pickled on stdin; progress and, last, the stats go to stdout as JSON lines."""
    from deskpulse.streams.record_batches import install as report_undecodable_batches
    from deskpulse.streams.runtime import BATCH_GC_THRESHOLDS, tune_gc

    settings: Settings
    fences: dict[tuple[str, int], int]
    settings, fences = pickle.loads(sys.stdin.buffer.read())
    report_undecodable_batches()
    tune_gc(BATCH_GC_THRESHOLDS)
    out = sys.stdout.buffer
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= 0.2 or done >= total:
            last = now
            out.write(orjson.dumps({"done": done, "total": total}) + b"\n")
            out.flush()

    try:
        stats = asyncio.run(
            replay(settings, progress=progress, only=only, fences=fences, adopt=False)
        )
    except DeskpulseError as error:
        print(f"deskpulse: replay of partitions {only}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stats_line = {"records": stats.records, "active_seconds": stats.active_seconds}
    out.write(orjson.dumps({"stats": stats_line}) + b"\n")
    out.flush()
    return 0


async def _published_alerts(
    settings: Settings, alert_partitions: int, partitions: int
) -> dict[int, dict[str, set[str]]]:
    """The SLA alerts on the alerts topic as claim markers per ticket (conversation id),
    by the input partition (of ``partitions``) whose state holds the ticket. Read from the
    beginning to the end offsets it has now; a record that is no SLA alert is passed over."""
    found: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    partition_of = ConversationPartitions(partitions) if partitions > 1 else None
    tps = [TopicPartition(settings.topic_alerts, p) for p in range(alert_partitions)]
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            at_end = all([await consumer.position(tp) >= ends[tp] for tp in tps])
            batches = await consumer.getmany(*tps, timeout_ms=_END_QUIET_MS if at_end else 500)
            records = [m for messages in batches.values() for m in messages]
            if not records and at_end:  # (Tansu: the end may be the last batch's base offset)
                return found
            for record in records:
                try:
                    payload = orjson.loads(record.value or b"")
                except orjson.JSONDecodeError:
                    continue
                marker = published_marker(payload) if isinstance(payload, dict) else None
                if marker is not None:
                    conv_id = "t:" + marker[0]
                    partition = 0 if partition_of is None else partition_of(conv_id)
                    found[partition][conv_id].add(marker[1])
    finally:
        await consumer.stop()


def main() -> None:
    """``python -m deskpulse.streams.replay 0,2 [LOG LEVEL]``: one process of
    :func:`replay_in_processes`, for the partitions named."""
    logging.basicConfig(
        level=sys.argv[2] if len(sys.argv) > 2 else "INFO",
        format="%(asctime)s %(levelname)s %(name)s[replay] %(message)s",
    )
    raise SystemExit(_child([int(p) for p in sys.argv[1].split(",")]))


if __name__ == "__main__":
    main()
