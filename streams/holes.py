"""Offset holes: records a batch should hold and does not, and the reader that fetches them.

The engine's fence (the highest input offset applied per topic of a partition) is only
sound if every batch continues the partition without a hole: a record at or below the
fence is skipped as applied, so a batch applied past a record it never saw would lose that
record for good when it is read again. Faust's consumer can skip records it fetched (a
rebalance cancels a delivery and still marks its offset read), so the engine checks each
batch against the fence with :func:`offset_gaps` and reads what is missing from the log
with a :class:`LogReader` before it applies the batch (see ``Engine`` in
:mod:`streams.engine`). Where a partition has no fence for a topic yet, the group reads it
from the log's start, so the check runs from offset 0 (below the log's start: history
before the deployment, not a hole).

A missing offset turns out to be one of three things, the ``outcome`` label of
``deskpulse_offset_holes_total``:

* ``filled``: a data record the consumer skipped; read from the log and applied.
* ``empty``: no data record there (a transaction marker, a record compaction removed).
* ``expired``: below the partition's log start (retention or a deletion moved it past
  the record before it was applied): lost, logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError, OffsetOutOfRangeError

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.settings import Settings

__all__ = [
    "READ_TIMEOUT_S",
    "HoleReader",
    "LogReader",
    "LogSlice",
    "offset_gaps",
]

log = logging.getLogger("deskpulse.holes")

#: How long one read of missing offsets may take before it is retried.
READ_TIMEOUT_S = 10.0
# records asked for per fetch: a hole is usually a handful of records
_FETCH_RECORDS = 10_000


def offset_gaps(offsets: Sequence[int], fence: int) -> list[tuple[int, int]]:
    """The offsets from ``fence + 1`` to the highest of ``offsets`` that ``offsets`` lacks,
    as inclusive ``(first, last)`` ranges in order; empty when they continue the fence.

    ``offsets`` are one topic partition's offsets in a batch, in any order, repeats
    allowed. Offsets at or below the fence (a redelivery) need no cover. The usual batch,
    ``fence + 1, fence + 2, ...`` in order, is recognised by comparing it with that range
    (no set is built).
    """
    count = len(offsets)
    if not count:
        return []
    if offsets[-1] == fence + count and offsets == list(range(fence + 1, fence + 1 + count)):
        return []
    past = sorted({offset for offset in offsets if offset > fence})
    gaps: list[tuple[int, int]] = []
    expected = fence + 1
    for offset in past:
        if offset > expected:
            gaps.append((expected, offset - 1))
        expected = offset + 1
    return gaps


class LogSlice(NamedTuple):
    """What a :class:`HoleReader` found in a range of a partition's log."""

    #: the data records in the range, in offset order (aiokafka's records)
    records: list[Any]
    #: the partition's first offset when read: records below it are gone
    log_start: int


class HoleReader(Protocol):
    """Reads records back from the log (the engine's view of a :class:`LogReader`)."""

    async def read(self, topic: str, partition: int, first: int, last: int) -> LogSlice: ...


class LogReader:
    """Reads ranges of a partition's log with an aiokafka consumer of no group.

    Started on its first read (most processes never need it) and used by one read at a
    time. A read that takes longer than :data:`READ_TIMEOUT_S` raises
    :class:`~aiokafka.errors.KafkaTimeoutError`; the caller retries it.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **kafka_client_options(self.settings),
                group_id=None,
                enable_auto_commit=False,
                # a position below the log start is an error to see, not a quiet jump
                auto_offset_reset="none",
                fetch_max_wait_ms=100,
                # a record up to the input limit fits in one fetch
                max_partition_fetch_bytes=max(1_048_576, self.settings.max_record_bytes + 65_536),
            )
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def read(self, topic: str, partition: int, first: int, last: int) -> LogSlice:
        """The data records with offsets ``first`` to ``last`` (inclusive) and the log start.

        Reads until the consumer's position passes ``last``: an offset it passed without
        returning a record holds none (a control marker, a compacted record).
        """
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._read(TopicPartition(topic, partition), first, last)
            except TimeoutError:
                raise KafkaTimeoutError(
                    f"offsets {first}-{last} of partition {partition} of {topic} not read "
                    f"within {self.timeout_s:g} s"
                ) from None

    async def _read(self, tp: TopicPartition, first: int, last: int) -> LogSlice:
        consumer = await self._client()
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        found: list[Any] = []
        if last < start:
            return LogSlice(found, start)
        consumer.seek(tp, max(first, start))
        while await consumer.position(tp) <= last:
            try:
                batches = await consumer.getmany(tp, timeout_ms=500, max_records=_FETCH_RECORDS)
            except OffsetOutOfRangeError:
                # the log start moved past the position meanwhile (retention)
                start = (await consumer.beginning_offsets([tp]))[tp]
                if last < start:
                    break
                consumer.seek(tp, max(await consumer.position(tp), start))
                continue
            for record in batches.get(tp, ()):
                if first <= record.offset <= last:
                    found.append(record)
        return LogSlice(found, start)

    async def stop(self) -> None:
        """Close the consumer, if it was started."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
