"""Processing of one batch of source records: decode, fence, fold, dead-letter, commit.

Shared by the live Faust agents (:mod:`streams.app`) and the replay path, so both leave
Redis in the same state. The hot path does one Redis round trip to load and one to commit
per partition per batch, never one per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar, get_args

from aiokafka.errors import KafkaError
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.errors import RejectedEvent
from models.settings import Settings
from models.wire import WireEvent, decode_record
from streams.core import CoreConfig, Pending, fold_batch
from streams.store import Store

__all__ = ["DeadLetterSink", "Engine", "Record", "SourceRecord", "retry_forever"]

log = logging.getLogger("deskpulse.engine")

T = TypeVar("T")

#: Redis errors that mean "not now": the batch waits and is retried, never dropped.
#: Any error reply counts too (OOM, a failover's READONLY, MASTERDOWN, ...): holding the
#: batch with a warning per attempt and ``deskpulse_redis_up 0`` is better than both
#: losing it and a crash loop.
RETRIABLE_REDIS = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    TryAgainError,
    RedisError,
    OSError,
)

_new_tuple = tuple.__new__

_TOPIC_PREFIX = {"tickets": "ticket.", "chats": "chat.", "surveys": "survey."}


class Record(Protocol):
    """What the engine reads of a Kafka record; aiokafka's and Faust's records have it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A :class:`Record` of our own (the engine process and tests build these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class DeadLetterSink(Protocol):
    """Where rejected records go; ``send`` returns once the broker has them."""

    async def send(self, records: Sequence[tuple[Record, RejectedEvent]]) -> None: ...


class Metrics(Protocol):
    """The pipeline-health counters the engine reports to."""

    def processed(self, topic: str, event_type: str, count: int) -> None: ...
    def rejected(self, topic: str, reason: str, count: int) -> None: ...
    def flushed(self, seconds: float, events: int) -> None: ...
    def event_time(self, topic: str, t_s: float) -> None: ...
    def redis_up(self, up: bool) -> None: ...


async def retry_forever(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    retriable: tuple[type[BaseException], ...] = RETRIABLE_REDIS,
    on_state: Callable[[bool], None] | None = None,
    first_delay_s: float = 0.1,
    max_delay_s: float = 10.0,
) -> T:
    """Run ``operation`` until it succeeds, backing off exponentially on retriable errors.

    Every failure is logged with its attempt number; ``on_state(False)`` is called while
    failing and ``on_state(True)`` once it works again. Only cancellation stops it.
    """
    delay = first_delay_s
    attempt = 0
    while True:
        try:
            value = await operation()
        except retriable as error:
            attempt += 1
            if on_state is not None:
                on_state(False)
            log.warning(
                "%s failed (attempt %d, retrying in %.1fs): %s", what, attempt, delay, error
            )
            await asyncio.sleep(delay)
            delay = min(max_delay_s, delay * 2)
            continue
        if attempt and on_state is not None:
            log.info("%s works again after %d failed attempts", what, attempt)
        if on_state is not None:
            on_state(True)
        return value


class Engine:
    """Turns batches of source records into committed KPI state."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deadletter: DeadLetterSink,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deadletter = deadletter
        self.metrics = metrics
        self.config = CoreConfig.from_settings(settings)
        self.clock = clock
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kinds = {
            settings.topic_tickets: "tickets",
            settings.topic_chats: "chats",
            settings.topic_surveys: "surveys",
        }
        # the event classes each input topic may carry (a class test is cheaper per record
        # than comparing the type's prefix)
        self._allowed = {
            topic: frozenset(
                cls for cls in get_args(WireEvent) if cls.type.startswith(_TOPIC_PREFIX[kind])
            )
            for topic, kind in self._kinds.items()
        }

    def partition_lock(self, partition: int) -> asyncio.Lock:
        """Held while a partition's state is read and written (batches, breach checks)."""
        return self._locks[partition]

    async def process(self, records: Iterable[Record]) -> None:
        """Apply a batch; returns only when every record is committed or dead-lettered."""
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_partition[record.partition].append(record)
        now_s = self.clock()
        # Partitions run concurrently: one folds in Python while Redis runs another's
        # commit script on the other core.
        await asyncio.gather(
            *(self._locked(p, batch, now_s) for p, batch in sorted(by_partition.items()))
        )

    async def _locked(self, partition: int, batch: list[Record], now_s: float) -> None:
        # decoding needs no state: done before waiting, while another batch may commit
        pending, rejected = self._decode(batch, now_s)
        # the three co-partitioned topics share one partition's state: one batch at a time
        async with self._locks[partition]:
            await self._process_partition(partition, len(batch), pending, rejected)

    def _decode(
        self, batch: list[Record], now_s: float
    ) -> tuple[list[Pending], list[tuple[Record, RejectedEvent]]]:
        pending: list[Pending] = []
        rejected: list[tuple[Record, RejectedEvent]] = []
        max_bytes, max_future_s = self.settings.max_record_bytes, self.settings.max_future
        allowed_on = self._allowed
        for record in batch:
            topic = record.topic
            try:
                event, ms = decode_record(
                    record.value, max_bytes=max_bytes, now_s=now_s, max_future_s=max_future_s
                )
                allowed = allowed_on.get(topic)
                if allowed is not None and type(event) not in allowed:
                    raise RejectedEvent(
                        "wrong_topic",
                        f"{event.type} does not belong on {topic} ({self._kinds[topic]})",
                    )
            except RejectedEvent as error:
                rejected.append((record, error))
                continue
            # a NamedTuple's own constructor is a Python-level call; this one is not
            pending.append(_new_tuple(Pending, (event, topic, record.offset, ms)))
        return pending, rejected

    async def _process_partition(
        self,
        partition: int,
        size: int,
        pending: list[Pending],
        rejected: list[tuple[Record, RejectedEvent]],
    ) -> None:
        conversation_ids = [p.event.conversation_id for p in pending]
        started = time.perf_counter()
        sent_rejects = False
        fresh_rejects: list[tuple[Record, RejectedEvent]] = []
        while True:
            meta, states = await retry_forever(
                partial(self.store.load, partition, conversation_ids),
                what=f"loading partition {partition} state from Redis",
                on_state=self.metrics.redis_up,
            )
            result = fold_batch(
                pending,
                states,
                watermark_ms=meta.watermark_ms,
                applied_offsets=meta.offsets,
                config=self.config,
            )
            if not sent_rejects:
                fresh_rejects = [
                    (r, e) for r, e in rejected if r.offset > meta.offsets.get(r.topic, -1)
                ]
                if fresh_rejects:
                    # the broker has them before their offsets are recorded as applied
                    await retry_forever(
                        partial(self.deadletter.send, fresh_rejects),
                        what="dead-lettering rejected records",
                        retriable=(KafkaError, OSError),
                    )
                sent_rejects = True
            for record, _ in rejected:
                # only past the fence: a redelivered reject must never move it back
                fence = max(
                    meta.offsets.get(record.topic, -1), result.offsets.get(record.topic, -1)
                )
                if record.offset > fence:
                    result.offsets[record.topic] = record.offset
            if not result.offsets:
                return  # everything was applied before (redelivery after a crash)
            committed = await retry_forever(
                partial(self.store.commit, partition, meta.version, result),
                what=f"committing partition {partition} to Redis",
                on_state=self.metrics.redis_up,
            )
            if committed:
                break
            log.info("partition %d moved under this batch; folding it again", partition)
        self.metrics.flushed(time.perf_counter() - started, size)
        for (topic, event_type), count in result.fresh.items():
            self.metrics.processed(topic, event_type, count)
        for topic, ms in result.topic_watermarks.items():
            self.metrics.event_time(topic, ms / 1000)
        reasons: dict[tuple[str, str], int] = defaultdict(int)
        for record, rejection in fresh_rejects:
            reasons[(record.topic, rejection.reason)] += 1
        for (topic, reason), count in reasons.items():
            self.metrics.rejected(topic, reason, count)
