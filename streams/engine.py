"""Processing of one batch of source records: decode, fence, fold, dead-letter, commit.

Shared by the live Faust agents (:mod:`streams.app`) and the replay path, so both leave
Redis in the same state. The hot path does one Redis round trip to load and one to commit
per partition per batch, never one per event.

Records on the wrong partition
------------------------------
A conversation's state lives with one partition: the one its id maps to by Kafka's default
(murmur2) rule (:mod:`streams.partitioner`). A producer that partitions otherwise
(librdkafka's CRC32 default, a key that is not the conversation id, no key) puts some of a
conversation's events elsewhere. Once :meth:`Engine.route` was called, such a record is not
applied where it was read: the live worker forwards it byte for byte to the repartition
topic (co-partitioned with the inputs), at its conversation's partition, keyed by the
conversation id, and the worker owning that partition applies it from there. Like a dead
letter, the forward is acknowledged by the broker before the source offset is recorded as
applied; after a crash in between it is forwarded again, and the repeat is absorbed by the
event_id dedup of the conversation state (counted as a duplicate, changing no KPI).
``deskpulse replay`` applies such records straight to their partition's state instead.

Holes in a batch
----------------
The fence (the highest offset applied per topic of a partition) skips every record at or
below it as applied, so it may only move past records the engine saw. Faust's consumer
can skip records it fetched (a rebalance cancels a delivery and still marks its offset
read), and a later batch then starts past the fence + 1. With a ``reader``
(:class:`~streams.holes.LogReader`), the engine checks under the partition lock that each
topic's records, applied, rejected or forwarded alike, cover every offset from the fence
+ 1 to their highest; the offsets they lack are read back from the log and decoded,
applied, dead-lettered or forwarded with the batch (see :mod:`streams.holes` for what a
missing offset can turn out to be). The check costs two list comprehensions and one list
comparison per batch; a set is built only for a batch that does not continue the fence
in order. ``deskpulse replay`` reads each partition in order itself and has no reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar, get_args

from aiokafka.errors import KafkaError
from redis.exceptions import (
    BusyLoadingError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deskpulse.models.errors import Abandoned, DeadLetterUnavailable, RejectedEvent
from deskpulse.models.settings import RECORD_KINDS, Settings
from deskpulse.models.wire import WireEvent, decode_record
from deskpulse.streams.breaches import add_retractions
from deskpulse.streams.core import (
    BatchResult,
    CoreConfig,
    Pending,
    SlaClaim,
    fold_batch,
    timelines_needed,
)
from deskpulse.streams.holes import HoleReader, offset_gaps
from deskpulse.streams.partitioner import ConversationPartitions, applied_from_key, forwarded_key
from deskpulse.streams.store import PartitionMeta, Store

__all__ = [
    "DEADLETTER_OVERDUE_S",
    "DeadLetterSink",
    "DeadLetterTrouble",
    "Engine",
    "Forwarder",
    "Record",
    "SourceRecord",
    "retry_forever",
]

log = logging.getLogger("deskpulse.engine")

T = TypeVar("T")

#: Redis errors that mean "not now": the batch waits and is retried, never dropped.
#: Any error reply counts too (OOM, a failover's READONLY, MASTERDOWN, ...): holding the
#: batch with a warning per attempt and ``deskpulse_redis_up 0`` is better than both
#: losing it and a crash loop. So does what a Redis Cluster client raises beside them while
#: the cluster is down or its nodes are gone (its slots not all served, no node reachable).
RETRIABLE_REDIS = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    TryAgainError,
    RedisError,
    RedisClusterException,
    OSError,
)

#: How long dead letters may wait for the broker before ``/readyz`` reports them.
DEADLETTER_OVERDUE_S = 10.0

_new_tuple = tuple.__new__

_TOPIC_PREFIX = {"tickets": "ticket.", "chats": "chat.", "surveys": "survey.", "agents": "agent."}


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
    @property
    def headers(self) -> Any: ...  # (name, bytes) pairs; read on the repartition topic only


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A :class:`Record` of our own (the engine process and tests build these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[Sequence[Any]] | None = None


class DeadLetterSink(Protocol):
    """Where rejected records go; ``send`` returns once the broker has them."""

    async def send(self, records: Sequence[tuple[Record, RejectedEvent]]) -> None: ...


class DeadLetterTrouble(NamedTuple):
    """Dead letters the broker has not acknowledged: since when (Unix s) and what is wrong."""

    since_s: float
    detail: str


class Forwarder(Protocol):
    """Where records read on the wrong partition go: the repartition topic.

    ``forward`` takes ``(record, key, partition)`` and returns, in order, the offset each
    one got or the error that kept it from the broker.
    """

    async def forward(
        self, records: Sequence[tuple[Record, bytes, int]]
    ) -> list[int | BaseException]: ...


class Metrics(Protocol):
    """The pipeline-health counters the engine reports to."""

    def processed(self, topic: str, event_type: str, count: int) -> None: ...
    def rejected(self, topic: str, reason: str, count: int) -> None: ...
    def rerouted(self, topic: str, count: int) -> None: ...
    def flushed(self, seconds: float, events: int) -> None: ...
    def event_time(self, topic: str, t_s: float) -> None: ...
    def redis_up(self, up: bool) -> None: ...
    def skipped(self, topic: str, reason: str, count: int) -> None: ...
    def holes(self, topic: str, outcome: str, count: int) -> None: ...


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


class _Misrouted(NamedTuple):
    """A valid input record read on another partition than its conversation's."""

    record: Record
    conversation_id: str
    target: int
    event: WireEvent
    ms: int


def _header(record: Record, name: str) -> str | None:
    for key, value in getattr(record, "headers", None) or ():
        if key == name:
            return bytes(value).decode("utf-8", "replace")
    return None


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
        reader: HoleReader | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deadletter = deadletter
        self.metrics = metrics
        # reads back records a batch lacks (see "Holes in a batch"); None: no check (replay)
        self._reader = reader
        self.config = CoreConfig.from_settings(settings)
        self.clock = clock
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kinds = {settings.topic_for(kind): kind for kind in RECORD_KINDS}
        # the event classes each input topic may carry (a class test is cheaper per record
        # than comparing the type's prefix)
        self._allowed = {
            topic: frozenset(
                cls for cls in get_args(WireEvent) if cls.type.startswith(_TOPIC_PREFIX[kind])
            )
            for topic, kind in self._kinds.items()
        }
        self.repartition_topic = settings.topic_repartition
        # set by route(): which partition a conversation belongs on, and where to send
        # records read elsewhere (None: apply them there directly, as replay does)
        self._partition_of: ConversationPartitions | None = None
        self._forwarder: Forwarder | None = None
        self._source_fences: Mapping[tuple[str, int], int] | None = None
        # replay: batches of a partition in the order they came, while they apply records
        # to other partitions before their own (taken before the partition lock)
        self._order: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._warned: set[str] = set()
        #: told what is wrong while dead letters fail or wait (``None`` once they do not)
        self.on_deadletter: Callable[[DeadLetterTrouble | None], None] | None = None
        self._deadletter_troubles: dict[int, DeadLetterTrouble] = {}
        self._deadletter_reported: DeadLetterTrouble | None = None
        self._deadletter_sends = 0
        # stopping: the loop time by which batches in flight are given up (see abandon)
        self._abandon_at: float | None = None
        self._abandoned = False
        self._in_flight: set[asyncio.Timeout] = set()

    def route(
        self,
        partitions: int,
        forwarder: Forwarder | None,
        *,
        source_fences: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """From now on, apply each input record on the partition its conversation maps to.

        ``partitions`` is the input topics' partition count. A record read on another
        partition goes through ``forwarder`` to the repartition topic (the live worker);
        without one it is applied straight to its partition's state (``deskpulse replay``,
        which also passes ``source_fences``, the input offsets applied when it started: a
        forward on the repartition topic whose source record lies past them is passed over,
        as the replay applies that source record itself).
        """
        if forwarder is None and self._reader is not None and partitions > 1:
            # a record read back into a batch may belong elsewhere: it needs the forwarder
            raise ValueError("an engine that reads holes back must forward misrouted records")
        self._partition_of = ConversationPartitions(partitions) if partitions > 1 else None
        self._forwarder = forwarder
        self._source_fences = source_fences

    def partition_lock(self, partition: int) -> asyncio.Lock:
        """Held while a partition's state is read and written (batches, breach checks)."""
        return self._locks[partition]

    async def process(self, records: Iterable[Record]) -> None:
        """Apply a batch; returns only when every record is committed or dead-lettered.

        Raises :class:`Abandoned` if the batch was given up because the engine is
        stopping (see :meth:`abandon`).
        """
        if self._abandoned:
            raise Abandoned("the engine is stopping and gave up an earlier batch")
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_partition[record.partition].append(record)
        now_s = self.clock()
        deadline = asyncio.timeout_at(self._abandon_at)
        self._in_flight.add(deadline)
        try:
            async with deadline:
                # Partitions run concurrently: one folds in Python while Redis runs
                # another's commit script on the other core.
                await asyncio.gather(
                    *(self._locked(p, batch, now_s) for p, batch in sorted(by_partition.items()))
                )
        except TimeoutError:
            if not deadline.expired():
                raise
            # every later batch too: one of them committing would move the fence past this
            self._abandoned = True
            raise Abandoned(
                f"gave up a batch of {sum(map(len, by_partition.values()))} records at the "
                "stop; they are applied from the fence on the next start"
            ) from None
        finally:
            self._in_flight.discard(deadline)

    def abandon(self, grace_s: float) -> None:
        """Give the batches in flight ``grace_s`` more to finish, then give them up.

        For a stop: a batch stuck retrying Redis or the broker must not hold it. A batch
        given up raises :class:`Abandoned` from :meth:`process`, and so does every batch
        after it; none of it was acknowledged, so the next start applies it again from the
        fence (a dead letter sent meanwhile is sent once more).
        """
        at = asyncio.get_running_loop().time() + grace_s
        if self._abandon_at is not None and self._abandon_at <= at:
            return
        self._abandon_at = at
        for deadline in self._in_flight:
            deadline.reschedule(at)

    async def _locked(self, partition: int, batch: list[Record], now_s: float) -> None:
        # decoding needs no state: done before waiting, while another batch may commit
        pending, rejected, misrouted, passed = self._decode(batch, now_s)
        # every record counts toward the fence's cover: applied, rejected, forwarded alike
        offsets = _offsets_by_topic(batch) if self._reader is not None else None
        if self._partition_of is not None and pending:
            pending, misrouted = self._route(partition, batch, pending, misrouted)
        if self._forwarder is None and self._partition_of is not None:
            # replay: records read here that belong elsewhere are applied there first, then
            # this partition's fence passes them; its batches keep their order meanwhile
            async with self._order[partition]:
                if misrouted:
                    await self._apply_where_they_belong(partition, misrouted)
                async with self._locks[partition]:
                    await self._process_partition(
                        partition, len(batch), pending, rejected, misrouted, passed
                    )
            return
        # the three co-partitioned topics share one partition's state: one batch at a time
        async with self._locks[partition]:
            await self._process_partition(
                partition,
                len(batch),
                pending,
                rejected,
                misrouted,
                passed,
                offsets=offsets,
                now_s=now_s,
            )

    def _decode(
        self, batch: list[Record], now_s: float
    ) -> tuple[list[Pending], list[tuple[Record, RejectedEvent]], list[_Misrouted], list[Record]]:
        """Valid records, rejected ones, and forwards the replay passes over (see
        :meth:`route`); :meth:`_route` then takes out those that belong elsewhere."""
        pending: list[Pending] = []
        rejected: list[tuple[Record, RejectedEvent]] = []
        misrouted: list[_Misrouted] = []
        passed: list[Record] = []
        max_bytes, max_future_s = self.settings.max_record_bytes, self.settings.max_future
        allowed_on = self._allowed
        for record in batch:
            topic = record.topic
            try:
                event, ms = decode_record(
                    record.value, max_bytes=max_bytes, now_s=now_s, max_future_s=max_future_s
                )
                allowed = allowed_on.get(topic)
                if allowed is None:
                    if topic == self.repartition_topic and self._passed_over(record, event):
                        passed.append(record)
                        continue
                elif type(event) not in allowed:
                    raise RejectedEvent(
                        "wrong_topic",
                        f"{event.type} does not belong on {topic} ({self._kinds[topic]})",
                    )
            except RejectedEvent as error:
                rejected.append((record, error))
                continue
            # a NamedTuple's own constructor is a Python-level call; this one is not
            pending.append(
                _new_tuple(Pending, (event, topic, record.offset, ms, event.conversation_id))
            )
        return pending, rejected, misrouted, passed

    def _route(
        self,
        partition: int,
        batch: list[Record],
        pending: list[Pending],
        misrouted: list[_Misrouted],
    ) -> tuple[list[Pending], list[_Misrouted]]:
        """Take out of ``pending`` the input records whose conversation belongs on another
        partition; what stays, and those.

        One pass over the batch's conversation ids: cached ones are a dict hit, new ones
        are hashed together (:meth:`ConversationPartitions.many`).
        """
        partition_of = self._partition_of
        assert partition_of is not None
        targets = partition_of.many([item.conversation_id for item in pending])
        if targets.count(partition) == len(targets):
            return pending, misrouted  # every record is where it belongs
        records = {(r.topic, r.offset): r for r in batch}  # the pending ones' records
        inputs = self._kinds
        keep: list[Pending] = []
        for item, target in zip(pending, targets, strict=True):
            if target == partition or item.topic not in inputs:
                # (a forward is applied where it sits, even if it sits elsewhere)
                keep.append(item)
                continue
            record = records[(item.topic, item.offset)]
            misrouted.append(
                _new_tuple(_Misrouted, (record, item.conversation_id, target, item.event, item.ms))
            )
            if item.topic not in self._warned:
                self._warn_misrouted(record, item.conversation_id, target)
        return keep, misrouted

    def _passed_over(self, record: Record, event: WireEvent) -> bool:
        """Check a record of the repartition topic against the input topic it was read
        from (``wrong_topic`` if that topic may not carry it); ``True`` if the replay
        passes it over (its source record lies past the fence the replay started from)."""
        source = _header(record, "deskpulse-source-topic")
        allowed = None if source is None else self._allowed.get(source)
        if allowed is None or type(event) not in allowed:
            raise RejectedEvent(
                "wrong_topic",
                f"{event.type} on {record.topic} was forwarded from "
                f"{source or 'no topic named in a deskpulse-source-topic header'}, "
                "which may not carry it",
            )
        fences = self._source_fences
        if fences is None or source is None:
            return False
        try:
            source_partition = int(_header(record, "deskpulse-source-partition") or "")
            source_offset = int(_header(record, "deskpulse-source-offset") or "")
        except ValueError:
            return False  # no coordinates to compare: applied (a repeat changes nothing)
        return source_offset > fences.get((source, source_partition), -1)

    def _warn_misrouted(self, record: Record, conversation_id: str, target: int) -> None:
        self._warned.add(record.topic)
        how = (
            "forwards them through"
            if self._forwarder is not None
            else "applies them as if read from"
        )
        log.warning(
            "records on %s are not on the partition their conversation id maps to by Kafka's "
            "default (murmur2) partitioner, e.g. offset %d on partition %d (%s %r belongs on "
            "partition %d, key %r); deskpulse %s %s, at a cost per record. Producers avoid "
            "it by keying each record by its conversation id (ticket_id, chat_id or agent_id) and "
            "partitioning with murmur2: librdkafka/confluent-kafka partitioner=murmur2_random "
            "(the Java client, aiokafka and kafka-python do by default). Counted in "
            "deskpulse_events_rerouted_total; warned once per topic.",
            record.topic,
            record.offset,
            record.partition,
            {"t": "ticket", "c": "chat", "a": "agent"}.get(conversation_id[0], "conversation"),
            conversation_id[2:],
            target,
            record.key,
            how,
            self.repartition_topic,
        )

    async def _apply_where_they_belong(self, source: int, misrouted: list[_Misrouted]) -> None:
        """Replay: apply records read on partition ``source`` to their own partitions.

        Unfenced there (offset -1): this partition's fence, moved once they are committed,
        is what keeps them from being applied again. A crash in between repeats them; each
        target's commit also moves a fence entry of its own per source topic and partition
        (:func:`applied_from_key`), so the repeat passes over those it already has rather
        than counting them as duplicates (the batches of ``source`` apply in order).
        """
        meta, _ = await retry_forever(
            partial(self.store.load, source, []),
            what=f"loading partition {source} state from Redis",
            on_state=self.metrics.redis_up,
        )
        by_target: dict[int, list[Pending]] = defaultdict(list)
        sources: dict[int, list[tuple[str, int]]] = defaultdict(list)
        topic = self.repartition_topic  # counted as the live worker counts its forwards
        for item in misrouted:
            record = item.record
            if record.offset > meta.offsets.get(record.topic, -1):
                by_target[item.target].append(
                    _new_tuple(Pending, (item.event, topic, -1, item.ms, item.conversation_id))
                )
                sources[item.target].append((applied_from_key(record.topic, source), record.offset))
        for target, items in sorted(by_target.items()):
            async with self._locks[target]:
                await self._process_partition(
                    target, len(items), items, [], sources=sources[target]
                )

    async def _forward(self, misrouted: Sequence[_Misrouted]) -> dict[int, int]:
        """Forward to the repartition topic until the broker has each record once; the
        newest offset each of its partitions gave them."""
        forwarder = self._forwarder
        assert forwarder is not None
        remaining = list(misrouted)
        newest: dict[int, int] = {}

        async def attempt() -> None:
            nonlocal remaining
            outcomes = await forwarder.forward(
                [
                    (m.record, m.conversation_id[2:].encode("utf-8", "surrogatepass"), m.target)
                    for m in remaining
                ]
            )
            failed: list[_Misrouted] = []
            error: BaseException | None = None
            for item, outcome in zip(remaining, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed.append(item)
                    error = error or outcome
                elif outcome > newest.get(item.target, -1):
                    newest[item.target] = outcome
            # acknowledged ones are never sent again, whatever a retry does
            remaining = failed
            if error is not None:
                raise error

        await retry_forever(
            attempt,
            what=f"forwarding records to {self.repartition_topic}",
            retriable=(KafkaError, OSError),
        )
        return newest

    def _fence_forwarded(
        self,
        result: BatchResult,
        meta: PartitionMeta,
        records: Iterable[Record],
        forwarded: Mapping[int, int],
    ) -> None:
        """Move the fence past records forwarded (or passed over) from this partition, and
        note the newest repartition offset each target got (the breach clock reads it)."""
        offsets, applied = result.offsets, meta.offsets
        for record in records:
            # only past the fence: a redelivered record must never move it back
            fence = max(applied.get(record.topic, -1), offsets.get(record.topic, -1))
            if record.offset > fence:
                offsets[record.topic] = record.offset
        for target, offset in forwarded.items():
            offsets[forwarded_key(self.repartition_topic, target)] = offset

    async def _process_partition(
        self,
        partition: int,
        size: int,
        pending: list[Pending],
        rejected: list[tuple[Record, RejectedEvent]],
        misrouted: Sequence[_Misrouted] = (),
        passed: Sequence[Record] = (),
        *,
        offsets: Mapping[str, list[int]] | None = None,
        now_s: float = 0.0,
        sources: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        """Apply one partition's records (under its lock). ``offsets``: the batch's offsets
        by topic, checked against the fence (see "Holes in a batch"); ``now_s`` decodes
        the records read back to fill a hole. ``sources``: the fence entry and offset of
        each of ``pending`` (unfenced records the replay read elsewhere, see
        :meth:`_apply_where_they_belong`): those at or below it are passed over."""
        started = time.perf_counter()
        sent_rejects = False
        fresh_rejects: list[tuple[Record, RejectedEvent]] = []
        sent_forwards = False
        fresh_misrouted: list[_Misrouted] = []
        forwarded: dict[int, int] = {}
        elsewhere = [m.record for m in misrouted] + list(passed)
        holes: dict[tuple[str, str], int] = {}
        while True:
            # each event's id, to find a repeat of one kept beside its state
            event_ids = [
                (p.conversation_id, p.event.event_id)
                for p in pending
                if type(p.event) is not SlaClaim  # (isinstance costs more on a struct)
            ]
            meta, states = await retry_forever(
                partial(
                    self.store.load, partition, [p.conversation_id for p in pending], event_ids
                ),
                what=f"loading partition {partition} state from Redis",
                on_state=self.metrics.redis_up,
            )
            if offsets is not None:
                # Once, against the first fence read: the fence only grows, so a batch
                # that continues it up to its highest offset continues any later one.
                gaps = _gaps(meta.offsets, offsets)
                offsets = None
                if gaps:
                    unfenced = {topic for topic in gaps if topic not in meta.offsets}
                    found = await self._fill(partition, gaps, holes, unfenced)
                    if found:
                        more, more_rejected, more_misrouted, more_passed = self._decode(
                            found, now_s
                        )
                        if self._partition_of is not None and more:
                            more, more_misrouted = self._route(
                                partition, found, more, more_misrouted
                            )
                        pending = pending + more
                        rejected = rejected + more_rejected
                        misrouted = [*misrouted, *more_misrouted]
                        elsewhere += [m.record for m in more_misrouted] + more_passed
                        size += len(found)
                        continue  # the states of the conversations they touch too
            folding, passed_over = pending, 0
            source_offsets: dict[str, int] = {}
            if sources is not None:
                folding, passed_over, source_offsets = _past_source_fences(
                    pending, sources, meta.offsets
                )
            # a ticket whose batch does not only append to its timeline gets it whole
            needed = timelines_needed(folding, states, meta.known, self.store.config)
            if needed and not await retry_forever(
                partial(self.store.load_timelines, partition, states, needed, meta.version),
                what=f"loading partition {partition} timelines from Redis",
                on_state=self.metrics.redis_up,
            ):
                log.info("partition %d moved under this batch's read; reading it again", partition)
                continue
            result = fold_batch(
                folding,
                states,
                watermark_ms=meta.watermark_ms,
                applied_offsets=meta.offsets,
                config=self.config,
                known=meta.known,
            )
            # a claimed breach this batch shows was not one: its retraction, same commit
            add_retractions(result, self.config, self.store.prefix)
            if not sent_forwards:
                fresh_misrouted = [
                    m for m in misrouted if m.record.offset > meta.offsets.get(m.record.topic, -1)
                ]
                if fresh_misrouted and self._forwarder is not None:
                    # the broker has them before their offsets are recorded as applied
                    forwarded = await self._forward(fresh_misrouted)
                sent_forwards = True
            if not sent_rejects:
                fresh_rejects = [
                    (r, e) for r, e in rejected if r.offset > meta.offsets.get(r.topic, -1)
                ]
                if fresh_rejects:
                    # the broker has them before their offsets are recorded as applied
                    await self._dead_letter(partition, fresh_rejects)
                sent_rejects = True
            for record, _ in rejected:
                # only past the fence: a redelivered reject must never move it back
                fence = max(
                    meta.offsets.get(record.topic, -1), result.offsets.get(record.topic, -1)
                )
                if record.offset > fence:
                    result.offsets[record.topic] = record.offset
            if elsewhere:
                self._fence_forwarded(result, meta, elsewhere, forwarded)
            if source_offsets:
                result.offsets.update(source_offsets)
            if passed_over:
                skipped = result.skipped
                skipped[self.repartition_topic] = (
                    skipped.get(self.repartition_topic, 0) + passed_over
                )
            # (records with no place in the fence, replay's from elsewhere, still commit)
            if not result.offsets and not result.fresh:
                # everything was applied before (a redelivery after a crash); with replicas
                # to wait for, the commit that applied it may be on its master alone (the
                # process that made it died before its WAIT): acknowledged only once held
                if self.store.min_replicas and not await retry_forever(
                    partial(self.store.replicated, partition, int(meta.version)),
                    what=f"waiting for partition {partition}'s replicas",
                    on_state=self.metrics.redis_up,
                ):
                    log.info("partition %d lost a commit with its master; folding again", partition)
                    continue
                self._count_skipped(result.skipped, rejected, fresh_rejects)
                self._count_rerouted(misrouted, fresh_misrouted)
                self._count_holes(holes)
                return
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
        self._count_rerouted(misrouted, fresh_misrouted)
        self._count_skipped(result.skipped, rejected, fresh_rejects)
        self._count_holes(holes)

    async def _fill(
        self,
        partition: int,
        gaps: Mapping[str, list[tuple[int, int]]],
        holes: dict[tuple[str, str], int],
        unfenced: Set[str] = frozenset(),
    ) -> list[Record]:
        """Read the offsets ``gaps`` names from the log; the data records found there.

        Counts each missing offset in ``holes`` by ``(topic, outcome)``: ``filled`` (a
        record found), ``expired`` (below the log start: gone before it was applied, an
        error) or ``empty`` (no data record there: a transaction marker, a compacted
        record). Below the log start of an ``unfenced`` topic (nothing of it applied to the
        partition yet) lies history from before the deployment: neither. Retried with
        backoff until the broker answers.
        """
        reader = self._reader
        assert reader is not None
        found: list[Record] = []
        for topic, ranges in gaps.items():
            first, last = ranges[0][0], ranges[-1][1]
            read = await retry_forever(
                partial(reader.read, topic, partition, first, last),
                what=f"reading offsets {first}-{last} of partition {partition} of {topic}",
                retriable=(KafkaError, OSError),
            )
            starts = [start for start, _ in ranges]
            filled: list[int] = []
            for record in read.records:
                offset = record.offset
                at = bisect_right(starts, offset) - 1
                if at >= 0 and offset <= ranges[at][1]:
                    found.append(record)
                    filled.append(offset)
            missing = sum(end - start + 1 for start, end in ranges)
            expired = [
                (start, min(end, read.log_start - 1))
                for start, end in ranges
                if start < read.log_start
            ]
            gone = sum(end - start + 1 for start, end in expired)
            if topic in unfenced:  # before the log's start: never this deployment's
                missing, expired, gone = missing - gone, [], 0
            counts = {
                "filled": len(filled),
                "expired": gone,
                "empty": missing - len(filled) - gone,
            }
            for outcome, count in counts.items():
                if count:
                    holes[(topic, outcome)] = holes.get((topic, outcome), 0) + count
            if filled:
                log.warning(
                    "partition %d of %s: the batch lacked offsets %s (the consumer never "
                    "delivered them); read %d records there back from the log and applied "
                    "them with the batch. Counted in deskpulse_offset_holes_total.",
                    partition,
                    topic,
                    _spans(_runs(filled)),
                    len(filled),
                )
            if gone:
                log.error(
                    "partition %d of %s: offsets %s were deleted from the log (it starts at "
                    "%d now) before they were applied: %d records are missing from the KPIs "
                    'for good. Counted in deskpulse_offset_holes_total{outcome="expired"}.',
                    partition,
                    topic,
                    _spans(expired),
                    read.log_start,
                    gone,
                )
            if counts["empty"]:
                log.debug(
                    "partition %d of %s: %d offsets of %s hold no data record (transaction "
                    "markers or compacted records)",
                    partition,
                    topic,
                    counts["empty"],
                    _spans(ranges),
                )
        return found

    def _count_holes(self, holes: Mapping[tuple[str, str], int]) -> None:
        for (topic, outcome), count in holes.items():
            self.metrics.holes(topic, outcome, count)

    async def _dead_letter(
        self, partition: int, rejects: list[tuple[Record, RejectedEvent]]
    ) -> None:
        """Send ``rejects`` until the broker has each one; a retry sends only those it has
        not acknowledged. Reported through ``on_deadletter`` while they fail, or wait for
        the broker longer than :data:`DEADLETTER_OVERDUE_S`."""
        self._deadletter_sends += 1
        token, since_s = self._deadletter_sends, time.time()
        remaining = rejects
        attempts = 0
        overdue = asyncio.get_running_loop().call_later(
            DEADLETTER_OVERDUE_S,
            self._deadletter_trouble,
            token,
            DeadLetterTrouble(
                since_s,
                f"dead letters of partition {partition} ({len(rejects)}) not acknowledged by "
                f"{self.settings.topic_deadletter} within {DEADLETTER_OVERDUE_S:g}s",
            ),
        )

        async def attempt() -> None:
            nonlocal remaining, attempts
            try:
                await self.deadletter.send(remaining)
            except DeadLetterUnavailable as error:
                attempts += 1
                remaining = error.pending  # the others are on the topic: never sent again
                detail = f"{error} (partition {partition}, attempt {attempts})"
                self._deadletter_trouble(token, DeadLetterTrouble(since_s, detail))
                raise

        try:
            await retry_forever(
                attempt,
                what=f"dead-lettering {len(rejects)} rejected records of partition {partition}",
                retriable=(DeadLetterUnavailable,),
            )
        finally:
            overdue.cancel()
            self._deadletter_trouble(token, None)

    def _deadletter_trouble(self, token: int, trouble: DeadLetterTrouble | None) -> None:
        """Note (or clear) one send's trouble; report the oldest when that changes."""
        if trouble is None:
            self._deadletter_troubles.pop(token, None)
        else:
            self._deadletter_troubles[token] = trouble
        troubles = self._deadletter_troubles
        oldest = min(troubles.values()) if troubles else None
        if oldest is not None and len(troubles) > 1:
            oldest = oldest._replace(detail=f"{oldest.detail}; {len(troubles) - 1} more waiting")
        if oldest != self._deadletter_reported:
            self._deadletter_reported = oldest
            if self.on_deadletter is not None:
                self.on_deadletter(oldest)

    def _count_rerouted(
        self, misrouted: Sequence[_Misrouted], fresh_misrouted: Sequence[_Misrouted]
    ) -> None:
        counts: dict[str, int] = defaultdict(int)
        for item in fresh_misrouted:
            counts[item.record.topic] += 1
        for topic, count in counts.items():
            self.metrics.rerouted(topic, count)
        if len(fresh_misrouted) < len(misrouted):  # redelivered: forwarded before
            stale: dict[str, int] = defaultdict(int)
            fresh = {id(item) for item in fresh_misrouted}
            for item in misrouted:
                if id(item) not in fresh:
                    stale[item.record.topic] += 1
            for topic, count in stale.items():
                self.metrics.skipped(topic, "already_applied", count)

    def _count_skipped(
        self,
        skipped: dict[str, int],
        rejected: list[tuple[Record, RejectedEvent]],
        fresh_rejects: list[tuple[Record, RejectedEvent]],
    ) -> None:
        # Counted once per record per process, from the attempt that committed: the
        # records at or below the fence that attempt folded against, rejects among them.
        counts = dict(skipped)
        if len(fresh_rejects) < len(rejected):
            fresh = {id(record) for record, _ in fresh_rejects}
            for record, _ in rejected:
                if id(record) not in fresh:
                    counts[record.topic] = counts.get(record.topic, 0) + 1
        for topic, count in counts.items():
            self.metrics.skipped(topic, "already_applied", count)


def _past_source_fences(
    pending: list[Pending], sources: Sequence[tuple[str, int]], applied: Mapping[str, int]
) -> tuple[list[Pending], int, dict[str, int]]:
    """Of ``pending`` (each with its fence entry and offset in ``sources``), those past
    their entry in ``applied``; how many were not; the newest offset of each entry."""
    folding: list[Pending] = []
    newest: dict[str, int] = {}
    for item, (key, offset) in zip(pending, sources, strict=True):
        if offset <= applied.get(key, -1):
            continue
        folding.append(item)
        if offset > newest.get(key, -1):
            newest[key] = offset
    return folding, len(pending) - len(folding), newest


def _offsets_by_topic(batch: list[Record]) -> dict[str, list[int]]:
    """The batch's offsets by topic, in batch order."""
    offsets = [record.offset for record in batch]
    topics = [record.topic for record in batch]
    if topics.count(topics[0]) == len(topics):  # one agent's batch: one topic
        return {topics[0]: offsets}
    by_topic: dict[str, list[int]] = defaultdict(list)
    for topic, offset in zip(topics, offsets, strict=True):
        by_topic[topic].append(offset)
    return by_topic


def _gaps(
    fences: Mapping[str, int], offsets: Mapping[str, list[int]]
) -> dict[str, list[tuple[int, int]]]:
    """The offsets each topic's records lack between its fence and their highest offset
    (:func:`~streams.holes.offset_gaps`).

    Without a fence (nothing of the topic applied to the partition yet), from offset 0:
    the group reads a partition it has no offset for from the log's start, so the records
    between that start and the batch's first were skipped (the read back finds where the
    log starts; what lies below is not the deployment's, not a loss).
    """
    found: dict[str, list[tuple[int, int]]] = {}
    for topic, topic_offsets in offsets.items():
        if gaps := offset_gaps(topic_offsets, fences.get(topic, -1)):
            found[topic] = gaps
    return found


def _runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct offsets as inclusive ``(first, last)`` runs."""
    runs: list[tuple[int, int]] = []
    for offset in offsets:
        if runs and offset == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], offset)
        else:
            runs.append((offset, offset))
    return runs


def _spans(runs: Sequence[tuple[int, int]], shown: int = 5) -> str:
    """``10-19, 25`` (and how many more runs past the first ``shown``)."""
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs[:shown])
    return text if len(runs) <= shown else f"{text} and {len(runs) - shown} more runs"
