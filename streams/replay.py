"""The fast path for backfills: aiokafka in large batches, the same engine, the same state.

``deskpulse replay`` reads the input topics without a consumer group, starting each
partition right after the offset the Redis state records as applied (or at the
beginning), and hands large batches to the same :class:`~streams.engine.Engine` the live
agents use. Because the engine folds with the same pure core and commits through the same
offset fence, Redis ends in exactly the state the live worker would leave, and a live
worker started afterwards skips everything the replay applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from exporters.kafka import KafkaPublisher, kafka_client_options
from exporters.prometheus import PipelineMetrics
from models.settings import Settings
from streams.core import CoreConfig
from streams.engine import Engine
from streams.store import Store
from streams.topics import ensure_topics

__all__ = ["ReplayStats", "replay"]

log = logging.getLogger("deskpulse.replay")

#: batches handed to the engine before the oldest is awaited (fetch and decode overlap the
#: commits in Redis)
_BATCHES_IN_FLIGHT = 3


@dataclass
class ReplayStats:
    """What a replay did."""

    records: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


async def replay(
    settings: Settings,
    *,
    max_records: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """Apply everything in the input topics up to their current ends; return the stats."""
    from prometheus_client import CollectorRegistry

    await ensure_topics(settings)
    redis = Redis.from_url(settings.redis_url.get_secret_value(), retry=Retry(NoBackoff(), 0))
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    await store.check_config()
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
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.input_topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = 0
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
        total = remaining
        started = time.perf_counter()
        idle_polls = 0
        # Up to _BATCHES_IN_FLIGHT batches in flight: the next ones are fetched and decoded
        # while the oldest one's commit runs in Redis. Order per partition is kept by the engine's
        # partition locks, which are first come, first served.
        in_flight: deque[tuple[asyncio.Task[None], int]] = deque()

        async def finish_oldest() -> None:
            task, size = in_flight.popleft()
            await task
            stats.records += size
            if progress is not None:
                progress(stats.records, max(total, stats.records))

        try:
            # Stop once every partition reached the end it had when we started and a poll
            # brings nothing more. (Some Kafka-compatible brokers report an end offset
            # short of the last batch, so records past it are read too rather than
            # trusted away.)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
                # aiokafka's records carry topic, partition, offset, key and value as they are
                records = [m for messages in batches.values() for m in messages]
                if records:
                    idle_polls = 0
                    in_flight.append((asyncio.ensure_future(engine.process(records)), len(records)))
                    if len(in_flight) >= _BATCHES_IN_FLIGHT:
                        await finish_oldest()
                    continue
                while in_flight:
                    await finish_oldest()
                positions = [await consumer.position(tp) for tp in partitions]
                if all(pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True)):
                    idle_polls += 1
                    if idle_polls >= 2:
                        break
        finally:
            for task, _ in in_flight:
                task.cancel()
        stats.seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
        await publisher.stop()
        await redis.aclose()
    return stats
