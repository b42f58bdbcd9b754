"""The offset-hole guard against the real broker and Redis (streams/holes.py).

A batch that starts past the fence + 1 (records the consumer skipped) has the records it
lacks read back from the log and applied with it, so the state equals applying every
record in order. Both engine modes: the engine in the worker's process
(:class:`LocalEngine`) and in a child (:class:`EngineProcess`, its own log reader).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from deskpulse.exporters.prometheus import KpiCollector, PipelineMetrics
from deskpulse.models.settings import Settings
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.engine import Engine, SourceRecord
from deskpulse.streams.holes import LogReader, LogSlice
from deskpulse.streams.kpi_engine import LocalEngine
from deskpulse.streams.offload import EngineProcess
from deskpulse.streams.store import Store
from tests.conftest import new_settings
from tests.integration.test_store import Letters, kpi_state, meta_of
from tests.support import consume_all, produce, stamp

T0 = 1_795_392_000  # 2026-11-23T00:00:00Z
HOLES = "deskpulse_offset_holes_total"


def event(event_type: str, t_s: float, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "type": event_type,
            "occurred_at": stamp(t_s),
            **fields,
        }
    )


def created(ticket: str, t_s: float) -> bytes:
    dims = {"channel": "email", "queue": "billing", "priority": "normal"}
    return event("ticket.created", t_s, ticket_id=ticket, **dims)


def replied(ticket: str, t_s: float) -> bytes:
    return event("ticket.replied", t_s, ticket_id=ticket, author_role="agent", public=True)


def thirty_tickets() -> list[tuple[bytes, bytes]]:
    """Offsets 0-9 open tickets A0-A9, 10-19 reply to them (15 is not JSON), 20-29 open
    and answer B0-B4: the first responses of A depend on the records 10-19 alone."""
    rows = [(f"A{n}".encode(), created(f"A{n}", T0 + n)) for n in range(10)]
    for n in range(10):
        value = b"not json" if n == 5 else replied(f"A{n}", T0 + 600 + 60 * n)
        rows.append((f"A{n}".encode(), value))
    for n in range(5):
        rows.append((f"B{n}".encode(), created(f"B{n}", T0 + 1000 + n)))
        rows.append((f"B{n}".encode(), replied(f"B{n}", T0 + 1200 + n)))
    return rows


def records_of(topic: str, rows: Sequence[tuple[bytes, bytes]], offsets: Sequence[int]) -> list:
    return [
        SourceRecord(topic, 0, offset, key, value)
        for (key, value), offset in zip(rows, offsets, strict=True)
    ]


async def apply_in_order(settings: Settings, batches: Sequence[list[SourceRecord]]) -> Letters:
    """Apply ``batches`` with an engine that has no log reader (nothing read back)."""
    letters = Letters()
    client = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        engine = Engine(settings, store, letters, PipelineMetrics(CollectorRegistry()))
        for batch in batches:
            await engine.process(batch)
    finally:
        await client.aclose()
    return letters


async def run_engine(
    mode: str, settings: Settings, metrics: PipelineMetrics, batches: Sequence[list[SourceRecord]]
) -> None:
    """Apply ``batches`` with the worker's engine in ``mode`` (``local`` or ``process``)."""
    if mode == "process":
        child = EngineProcess(settings, metrics)
        await child.start(1)
        try:
            for batch in batches:
                await child.process(batch)
        finally:
            await child.stop()
        return
    client = Redis.from_url(settings.redis_url.get_secret_value())
    store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
    local = LocalEngine(settings, store, metrics, KpiCollector(store, settings))
    await local.start(1)
    try:
        for batch in batches:
            await local.process(batch)
    finally:
        await local.stop()
        await client.aclose()


def other_prefix(settings: Settings) -> Settings:
    return settings.model_copy(update={"redis_prefix": f"r{uuid.uuid4().hex[:10]}"})


def holes(metrics: PipelineMetrics, topic: str, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(HOLES, {"topic": topic, "outcome": outcome})


@pytest.fixture
def one_partition(broker: str, redis_url: str, make_topics: Callable[[Settings], Any]) -> Settings:
    settings = new_settings(broker, redis_url, topic_partitions=1)
    make_topics(settings)
    return settings


@pytest.mark.parametrize("mode", ["local", "process"])
def test_a_hole_is_read_back_and_the_kpis_equal_applying_everything(
    mode: str, one_partition: Settings, redis_client: redis.Redis
) -> None:
    settings = one_partition
    topic = settings.topic_tickets
    rows = thirty_tickets()
    landed = asyncio.run(produce(settings, topic, rows))
    assert [m.offset for m in landed] == list(range(30))
    records = records_of(topic, rows, range(30))
    metrics = PipelineMetrics(CollectorRegistry(), settings.input_topics)
    for name in settings.input_topics:  # exported from 0
        assert [holes(metrics, name, o) for o in ("filled", "empty", "expired")] == [0, 0, 0]

    # 0-9, then 20-29 only: 10-19 were never delivered
    asyncio.run(run_engine(mode, settings, metrics, [records[:10], records[20:]]))

    reference = other_prefix(settings)
    letters = asyncio.run(apply_in_order(reference, [records]))
    unguarded = other_prefix(settings)
    asyncio.run(apply_in_order(unguarded, [records[:10], records[20:]]))

    state = kpi_state(redis_client, settings.redis_prefix)
    assert state == kpi_state(redis_client, reference.redis_prefix)
    # the same hole without the guard loses the first responses of A0-A9 (the test can fail)
    assert kpi_state(redis_client, unguarded.redis_prefix) != state
    assert meta_of(redis_client, settings.redis_prefix)[f"off:{topic}"] == "29"
    assert holes(metrics, topic, "filled") == 10  # nine applied, one dead-lettered
    assert holes(metrics, topic, "empty") == holes(metrics, topic, "expired") == 0
    # the malformed record of the hole is dead-lettered, as the in-order run did
    assert [record.offset for record, _ in letters.sent] == [15]
    dead = asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic_deadletter, 1, 10))
    assert [dict(r.headers)["deskpulse-source-offset"] for r in dead] == [b"15"]
    assert dict(dead[0].headers)["deskpulse-reason"] == b"invalid_json"


def transactional_produce(settings: Settings, topic: str, transactions: Sequence[list[bytes]]):
    """Each list of values in a transaction of its own (a commit marker after each)."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "transactional.id": f"holes-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(15)
    for values in transactions:
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value=value, partition=0)
        producer.commit_transaction(15)


def test_transaction_markers_are_accepted_as_empty(
    one_partition: Settings, redis_client: redis.Redis
) -> None:
    settings = one_partition
    topic = settings.topic_tickets
    values = [created("C0", T0), replied("C0", T0 + 60), created("C1", T0 + 1)]
    values += [replied("C1", T0 + 120), created("C2", T0 + 2), replied("C2", T0 + 180)]
    # three transactions of two records: data at 0, 1, 3, 4, 6, 7; commit markers at 2, 5, 8
    transactional_produce(settings, topic, [values[0:2], values[2:4], values[4:6]])
    offsets = [0, 1, 3, 4, 6, 7]
    records = records_of(topic, [(b"k", v) for v in values], offsets)
    metrics = PipelineMetrics(CollectorRegistry(), settings.input_topics)

    # 0-1, then 6-7: 3 and 4 are records, 2 and 5 markers
    asyncio.run(run_engine("local", settings, metrics, [records[:2], records[4:]]))
    reference = other_prefix(settings)
    asyncio.run(apply_in_order(reference, [records]))

    assert kpi_state(redis_client, settings.redis_prefix) == kpi_state(
        redis_client, reference.redis_prefix
    )
    assert holes(metrics, topic, "filled") == 2
    assert holes(metrics, topic, "empty") == 2
    assert holes(metrics, topic, "expired") == 0


class MovedStart:
    """A log reader whose log starts at ``start``: what retention would leave. The broker
    under test refuses DeleteRecords, so the real log cannot be cut; the records read are
    the real reader's, less those below ``start``."""

    def __init__(self, reader: LogReader, start: int) -> None:
        self.reader, self.start = reader, start

    async def read(self, topic: str, partition: int, first: int, last: int) -> LogSlice:
        found = await self.reader.read(topic, partition, first, last)
        kept = [r for r in found.records if r.offset >= self.start]
        return LogSlice(kept, max(found.log_start, self.start))


async def apply_from(
    settings: Settings,
    metrics: PipelineMetrics,
    start: int,
    batches: Sequence[list[SourceRecord]],
) -> None:
    """Apply ``batches`` with an engine whose log reader finds the log starting at
    ``start``."""
    client = Redis.from_url(settings.redis_url.get_secret_value())
    reader = LogReader(settings)
    try:
        store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
        engine = Engine(settings, store, Letters(), metrics, reader=MovedStart(reader, start))
        for batch in batches:
            await engine.process(batch)
    finally:
        await reader.stop()
        await client.aclose()


def test_records_deleted_before_they_were_applied_are_counted_as_expired(
    one_partition: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = one_partition
    topic = settings.topic_tickets
    rows = thirty_tickets()
    asyncio.run(produce(settings, topic, rows))
    records = records_of(topic, rows, range(30))
    metrics = PipelineMetrics(CollectorRegistry(), settings.input_topics)

    with caplog.at_level(logging.WARNING, logger="deskpulse.engine"):
        asyncio.run(apply_from(settings, metrics, 14, [records[:10], records[20:]]))
    assert holes(metrics, topic, "expired") == 4  # 10-13
    assert holes(metrics, topic, "filled") == 6  # 14-19
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"partition 0 of {topic}: offsets 10-13 were deleted" in errors[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lacked offsets 14-19" in message for message in warnings), warnings
    # the batch is applied: the fence moves on past what is lost
    assert meta_of(redis_client, settings.redis_prefix)[f"off:{topic}"] == "29"


@pytest.mark.parametrize("mode", ["local", "process"])
def test_records_skipped_before_a_partitions_first_batch_are_read_back(
    mode: str, one_partition: Settings, redis_client: redis.Redis
) -> None:
    """Nothing of the topic applied to the partition yet (no fence): the group reads from
    the log's start, so a first batch that starts later had records skipped before it —
    a delivery a rebalance cancelled, batches that passed each other. They are read back
    as a hole after a fence is, not taken for history before the deployment."""
    settings = one_partition
    topic = settings.topic_tickets
    rows = thirty_tickets()
    asyncio.run(produce(settings, topic, rows))
    records = records_of(topic, rows, range(30))
    metrics = PipelineMetrics(CollectorRegistry(), settings.input_topics)

    # 10-29, then 0-9 (as applied already: at or below the fence)
    asyncio.run(run_engine(mode, settings, metrics, [records[10:], records[:10]]))

    reference = other_prefix(settings)
    asyncio.run(apply_in_order(reference, [records]))
    unguarded = other_prefix(settings)
    asyncio.run(apply_in_order(unguarded, [records[10:], records[:10]]))
    state = kpi_state(redis_client, settings.redis_prefix)
    assert state == kpi_state(redis_client, reference.redis_prefix)
    # without the read back, A0-A9 are never opened (the test can fail)
    assert kpi_state(redis_client, unguarded.redis_prefix) != state
    assert holes(metrics, topic, "filled") == 10
    assert holes(metrics, topic, "empty") == holes(metrics, topic, "expired") == 0


def test_history_below_the_log_start_of_a_partitions_first_batch_is_not_a_loss(
    one_partition: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = one_partition
    topic = settings.topic_tickets
    rows = thirty_tickets()
    asyncio.run(produce(settings, topic, rows))
    records = records_of(topic, rows, range(30))
    metrics = PipelineMetrics(CollectorRegistry(), settings.input_topics)

    # retention left 14-29 before the deployment's first batch, 20-29: 14-19 are read back,
    # 0-13 were never the deployment's to apply
    with caplog.at_level(logging.WARNING, logger="deskpulse.engine"):
        asyncio.run(apply_from(settings, metrics, 14, [records[20:]]))
    assert holes(metrics, topic, "filled") == 6
    assert holes(metrics, topic, "empty") == holes(metrics, topic, "expired") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert meta_of(redis_client, settings.redis_prefix)[f"off:{topic}"] == "29"
    reference = other_prefix(settings)
    asyncio.run(apply_in_order(reference, [records[14:]]))
    assert kpi_state(redis_client, settings.redis_prefix) == kpi_state(
        redis_client, reference.redis_prefix
    )
