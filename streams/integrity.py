"""Whether the Redis state is the state the input topics and the consumer group were applied to.

Per partition, Redis holds the fence: the last offset of each input topic applied to the
state (``off:<topic>`` in the partition's meta). Kafka offsets are committed only after
Redis holds a batch, so while the state is whole:

* the consumer group's committed offset (the next one it reads) is at most fence + 1;
* the fence lies inside the topic's log: the broker has a record at the fence or later.

A committed offset past fence + 1 — including no fence at all while the group has
committed offsets — means Redis lost state it had acknowledged: restarted without
persistence, flushed, restored from an older snapshot, keys evicted. A fence past the end
of the log means the topic is not the one the state was built from: recreated, a broker
that lost its log, a second demo on a fresh embedded broker. Applying on top of either
would be silently wrong (records at or below a stale fence skipped, or numbers restarting
from zero), so :func:`verify` raises :class:`~models.errors.StateLost` or
:class:`~models.errors.TopicsReplaced` instead, and :class:`StateGuard` makes the worker
stop applying and say so: once in the log, on ``/readyz`` and in ``deskpulse_state_ok``.

Some brokers report an end offset short of the last batch (the embedded one reports the
last batch's base offset), so a fence at or past the reported end is confirmed by reading
at the fence before it counts as past the end. Offsets are all this compares: a recreated
topic that already holds more records than the old fence is not told from the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, NoReturn

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.errors import Abandoned, StateError, StateLost, TopicsReplaced
from deskpulse.models.settings import Settings
from deskpulse.streams.store import FIX_LOST, Store

__all__ = [
    "FIX_TOPICS",
    "PartitionOffsets",
    "ResetSummary",
    "StateGuard",
    "TopicOffsets",
    "Verdict",
    "check_state",
    "judge",
    "reset_state",
    "verify",
]

log = logging.getLogger("deskpulse.state")

#: What an operator does when the topics are not the ones the state was built from.
FIX_TOPICS = (
    "if the topics were recreated on purpose, clear the old state with `deskpulse state "
    "reset --yes` (or use another DESKPULSE_REDIS_PREFIX); if the broker lost its log, "
    "restore it; then restart the worker (README: runbook-deskpulsestatelost)"
)

#: How long a read at the fence may bring nothing before the fence counts as past the end.
_CONFIRM_S = 5.0
#: How long one check of an assignment may take before it is given up and tried again
#: (a check reads a few offsets and at most :data:`_CONFIRM_S` of records).
_CHECK_TIMEOUT_S = 20.0
#: How long batches may wait for a check before the log says so.
_SLOW_CHECK_S = 15.0


class Verdict(Enum):
    """What the offsets of one input partition say about the state."""

    OK = "ok"
    #: the group committed past fence + 1: Redis lost acknowledged state
    LOST = "lost"
    #: the fence is at or past the end the broker reports: read there to be sure
    PAST_END = "past_end"
    #: the log starts past fence + 1: records were deleted unapplied (retention)
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One input topic partition: the fence, the group's committed offset, the log's bounds."""

    topic: str
    partition: int
    #: last offset applied to the state, ``None`` when none was
    fence: int | None
    #: the next offset the consumer group reads, ``None`` when it committed none
    committed: int | None
    #: first offset the log holds, and the end offset the broker reports
    low: int
    end: int


def judge(offsets: PartitionOffsets) -> Verdict:
    """The verdict on one partition's offsets (pure; :func:`verify` acts on it)."""
    applied_to = -1 if offsets.fence is None else offsets.fence
    if offsets.committed is not None and offsets.committed > applied_to + 1:
        return Verdict.LOST
    if offsets.fence is None:
        return Verdict.OK
    if offsets.fence >= offsets.end:
        return Verdict.PAST_END
    if offsets.low > offsets.fence + 1:
        return Verdict.EXPIRED
    return Verdict.OK


class TopicOffsets:
    """Reads the consumer group's committed offsets and the logs' bounds from the broker.

    One client of the group that never joins it (it only asks for committed offsets), so
    reading does not disturb the group's members.
    """

    def __init__(self, settings: Settings, *, group: bool = True) -> None:
        self.settings = settings
        self.group = group
        self._consumer: AIOKafkaConsumer | None = None

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **kafka_client_options(self.settings),
                group_id=self.settings.app_id if self.group else None,
                enable_auto_commit=False,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def read(
        self, tps: Sequence[TopicPartition]
    ) -> tuple[
        dict[TopicPartition, int | None], dict[TopicPartition, int], dict[TopicPartition, int]
    ]:
        """``(committed, low, end)`` per partition (committed is ``None`` without a group)."""
        consumer = await self._client()
        await consumer.topics()  # metadata for every topic: the offsets requests need it
        lows = await consumer.beginning_offsets(list(tps))
        ends = await consumer.end_offsets(list(tps))
        committed: dict[TopicPartition, int | None] = dict.fromkeys(tps)
        if self.group:
            found = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
            committed = dict(zip(tps, found, strict=True))
        return committed, lows, ends

    async def in_log(self, fences: dict[TopicPartition, int]) -> set[TopicPartition]:
        """The partitions whose log has a record at their fence or later (read to see)."""
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",  # past the end: an error, not a quiet jump
            fetch_max_wait_ms=200,
        )
        await consumer.start()
        found: set[TopicPartition] = set()
        try:
            consumer.assign(list(fences))
            for tp, fence in fences.items():
                consumer.seek(tp, fence)
            waiting = set(fences)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _CONFIRM_S
            while waiting and loop.time() < deadline:
                try:
                    batches = await consumer.getmany(*waiting, timeout_ms=250, max_records=1000)
                except OffsetOutOfRangeError as error:  # the broker says it is not there
                    gone = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
                    for tp in gone:
                        waiting.discard(tp)
                    if not gone:
                        raise
                    continue
                for tp, records in batches.items():
                    if any(record.offset >= fences[tp] for record in records):
                        found.add(tp)
                        waiting.discard(tp)
                        consumer.pause(tp)
        finally:
            await consumer.stop()
        return found

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


def _where(o: PartitionOffsets) -> str:
    return f"partition {o.partition} of {o.topic}"


def _more(count: int) -> str:
    return f" (and {count} more partitions)" if count else ""


async def verify(
    store: Store,
    offsets: TopicOffsets,
    topics: Iterable[str],
    partitions: Iterable[int],
) -> list[str]:
    """Check these partitions of ``topics`` (see the module docstring).

    Raises :class:`StateLost` (the group is past the fence, or the partition's meta is not
    the state this store knows) or :class:`TopicsReplaced` (a fence past the log's end);
    returns warnings (records the log deleted before they were applied).
    """
    parts = sorted(set(partitions))
    tps = [TopicPartition(topic, p) for p in parts for topic in topics]
    if not tps:
        return []
    # the group's offsets first, the fences after: a fence only grows, and a group member
    # commits offsets only after Redis holds them, so no commit between the two reads can
    # make a whole state look lost
    committed, lows, ends = await offsets.read(tps)
    fences = {p: (await store.load(p, []))[0].offsets for p in parts}
    lost: list[PartitionOffsets] = []
    suspects: dict[TopicPartition, PartitionOffsets] = {}
    warnings: list[str] = []
    for tp in tps:
        found = PartitionOffsets(
            tp.topic,
            tp.partition,
            fences[tp.partition].get(tp.topic),
            committed.get(tp),
            lows[tp],
            ends[tp],
        )
        verdict = judge(found)
        if verdict is Verdict.LOST:
            lost.append(found)
        elif verdict is Verdict.PAST_END:
            suspects[tp] = found
        elif verdict is Verdict.EXPIRED:
            assert found.fence is not None
            warnings.append(
                f"{_where(found)}: offsets {found.fence + 1} to {found.low - 1} were deleted "
                "from the topic (retention) before they were applied; their events are not "
                "in the KPIs"
            )
    if lost:
        first = lost[0]
        applied = "none" if first.fence is None else f"offsets up to {first.fence}"
        raise StateLost(
            "behind_group",
            f"Redis lost state under prefix {store.prefix!r}: on {_where(first)} the "
            f"consumer group {offsets.settings.app_id!r} committed offset {first.committed} "
            f"but the state holds {applied} applied{_more(len(lost) - 1)}",
            FIX_LOST,
        )
    if suspects:
        present = await offsets.in_log(
            {tp: o.fence for tp, o in suspects.items() if o.fence is not None}
        )
        missing = [o for tp, o in suspects.items() if tp not in present]
        if missing:
            first = missing[0]
            raise TopicsReplaced(
                "beyond_log",
                f"the state under prefix {store.prefix!r} was built from other topics: on "
                f"{_where(first)} it applied offsets up to {first.fence} but the topic ends "
                f"at {first.end}{_more(len(missing) - 1)}",
                FIX_TOPICS,
            )
    return warnings


def _end(admission: asyncio.Future[None], _: object = None) -> None:
    """End ``admission`` unless it ended (a done callback's signature)."""
    if not admission.done():
        admission.set_result(None)


class StateGuard:
    """The worker's watch over its state.

    Every assignment is checked (:func:`verify`) before a batch of it is applied; a
    periodic :meth:`check` notices state that vanishes while nothing flows. On a mismatch
    the worker stops applying — batches wait unacknowledged, so nothing moves the consumer
    group's offsets and the partitions stay with this worker rather than move to one that
    would apply them — and reports it once: one log line naming the fix, ``/readyz`` 503
    with the reason, ``deskpulse_state_ok 0``. It stays so until restarted.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        report_ok: Callable[[bool], None],
        *,
        started: Callable[[], bool] = lambda: True,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        from deskpulse.streams.engine import RETRIABLE_REDIS

        self.settings = settings
        self.store = store
        self.report_ok = report_ok
        self.started = started
        #: whether the worker is stopping (then held batches end, unacknowledged)
        self.stopping = stopping
        self.retriable = (*RETRIABLE_REDIS, KafkaError, asyncio.TimeoutError)
        #: the reason the worker stopped applying, once it did
        self.error: StateError | None = None
        self._checked = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Future[None] | None = None
        # the admission of the batch that asked last, while batches wait (see admit)
        self._last_admission: asyncio.Future[None] | None = None

    @property
    def checking(self) -> bool:
        """Whether the current assignment is being checked (batches wait meanwhile)."""
        return self.error is None and not self._checked.is_set()

    def assigned(self, partitions: Iterable[int]) -> None:
        """The consumer group assigned these input partitions: check them before applying."""
        if self.error is not None:
            return
        self._checked.clear()
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.ensure_future(self._check_assignment(sorted(set(partitions))))

    async def _check_assignment(self, partitions: list[int]) -> None:
        """Check the assignment, then open the gate; keeps trying until it can say.

        The gate must never stay shut without a word: a retriable error is retried with
        backoff by :func:`retry_forever` (logged per attempt), and anything else (a client
        left in a state nobody foresaw, a bug) is logged with its traceback and tried again
        on a fresh broker client. Batches waiting longer than :data:`_SLOW_CHECK_S` are said
        once in the log, naming the partitions.
        """
        while not self.started():
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        where = ",".join(map(str, partitions)) or "-"
        slow = asyncio.get_running_loop().call_later(
            _SLOW_CHECK_S,
            lambda: log.warning(
                "batches wait for the state check of partitions %s (%.0f s so far)",
                where,
                time.perf_counter() - started,
            ),
        )
        try:
            warnings = await self._verify_until_answered(partitions, where)
        except StateError as error:
            self.report(error)
            return
        finally:
            slow.cancel()
        for warning in warnings:
            log.warning("%s", warning)
        log.info(
            "state of partitions %s checked against the consumer group and the topics (%.0f ms)",
            where,
            (time.perf_counter() - started) * 1000,
        )
        self._checked.set()

    async def _verify_until_answered(self, partitions: list[int], where: str) -> list[str]:
        from deskpulse.streams.engine import retry_forever

        async def check() -> list[str]:
            # A client of its own per attempt: a check cut short (a timeout, or cancelled
            # by the next rebalance) can leave its client mid-request, and a later check
            # must not inherit that.
            offsets = TopicOffsets(self.settings)
            try:
                return await asyncio.wait_for(
                    verify(self.store, offsets, self.settings.input_topics, partitions),
                    _CHECK_TIMEOUT_S,
                )
            finally:
                try:
                    await asyncio.shield(offsets.close())
                except Exception as error:  # a broker gone: nothing left to close
                    log.debug("closing the state check's Kafka client: %r", error)

        delay = 0.5
        attempt = 0
        while True:
            try:
                return await retry_forever(
                    # a broker that never answers is a timeout to retry, not a check held
                    # forever
                    check,
                    what="checking the state against the consumer group and the topics",
                    retriable=self.retriable,
                )
            except StateError:
                raise
            except Exception:
                attempt += 1
                log.exception(
                    "checking the state of partitions %s failed unexpectedly "
                    "(attempt %d, again in %.1fs)",
                    where,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    def report(self, error: StateError) -> None:
        """Stop applying because of ``error``; said once, however often it is found."""
        if self.error is not None:
            return
        self.error = error
        self.report_ok(False)
        self._checked.set()  # waiting batches see the error and halt
        log.critical("stopped applying, nothing more is acknowledged: %s", error)

    async def admit(self) -> None:
        """Return when a batch may be applied: the assignment passed its check. Never
        returns once the state is found wrong (see :meth:`halt`).

        Batches are admitted in the order they asked: a partition's batches must reach the
        engine in the order they were taken (a later one applied first moves the fence past
        the earlier, which then counts as a hole, or as applied where the partition had no
        fence yet). So each waits for the one before it, not for the gate alone: waiters of
        an event that time out and wait again change places.
        """
        previous = self._last_admission
        if self._checked.is_set() and (previous is None or previous.done()):
            if self.error is not None:
                await self.halt()
            return
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_admission = mine
        try:
            if previous is not None and not previous.done():
                # the one before always ends (admitted, or abandoned at a stop); shielded,
                # so this batch's cancellation leaves it be
                await asyncio.shield(previous)
            if not self._checked.is_set() and not await self._until(self._checked):
                raise Abandoned("the worker stops before its state was checked")
        finally:
            if previous is not None and not previous.done():
                # cancelled while the one before waits: the next still waits for that one
                previous.add_done_callback(partial(_end, mine))
            elif not mine.done():
                mine.set_result(None)
        if self.error is not None:
            await self.halt()

    async def halt(self) -> NoReturn:
        """Hold a batch unapplied and unacknowledged until the worker stops; then raise
        :class:`Abandoned` (a stopping worker waits for nothing it will never apply)."""
        await self._until(self._stopping)
        raise Abandoned("the worker stops with its state lost or foreign")

    def release(self) -> None:
        """The worker stops: held batches are given up, unacknowledged."""
        self._stopping.set()

    async def _until(self, event: asyncio.Event) -> bool:
        """Wait for ``event``; ``False`` if the worker began stopping first."""
        while not event.is_set():
            if self._stopping.is_set() or self.stopping():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 0.25)
        return True

    async def check(self) -> None:
        """The periodic check: ``P:config`` vanished or changed, a partition's meta gone."""
        if self.error is not None or not self.started():
            return
        try:
            await self.store.check_generation()
        except StateError as error:
            self.report(error)
        except self.retriable as error:  # an unreachable Redis is reported on its own
            log.debug("state check failed: %s", error)

    async def stop(self) -> None:
        """Release held batches (they end unacknowledged); a check under way ends and
        closes its broker client."""
        self.release()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)


# -- the operator's commands: deskpulse state check | reset ----------------------------------


@dataclass(frozen=True)
class ResetSummary:
    """What ``deskpulse state reset`` did."""

    deleted_keys: int
    generation: str
    #: partitions that start after the consumer group's committed offsets
    started_at_group: int


async def _input_partitions(offsets: TopicOffsets) -> list[TopicPartition]:
    consumer = await offsets._client()
    await consumer.topics()
    return [
        TopicPartition(topic, p)
        for topic in offsets.settings.input_topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


def _redis(settings: Settings) -> Any:
    from deskpulse.streams.redis_client import connect

    return connect(settings, purpose="command")


async def check_state(settings: Settings) -> tuple[Store, list[str]]:
    """``deskpulse state check``: the stored state against the consumer group and the
    topics, writing nothing; raises :class:`StateError` naming the fix, else the store
    (its generation) and warnings."""
    from deskpulse.streams.core import CoreConfig

    redis = _redis(settings)
    offsets = TopicOffsets(settings)
    try:
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_readable()
        partitions = {tp.partition for tp in await _input_partitions(offsets)}
        warnings = await verify(store, offsets, settings.input_topics, partitions)
        return store, warnings
    finally:
        await offsets.close()
        await redis.aclose()


async def reset_state(settings: Settings, *, note: str) -> ResetSummary:
    """``deskpulse state reset --yes``: delete the prefix's state and start it empty.

    Each input partition the consumer group has committed offsets for starts right
    after them (its fence is set to the committed offset - 1), so a worker accepts the
    empty state and goes on from where the group is: the events before are not in the
    KPIs, which is what the operator accepts. The acceptance is recorded in ``P:config``
    (``reset_at``, ``reset_note``). The group's offsets are read before anything is
    deleted, so an unreachable broker leaves the state as it was.
    """
    import time

    from deskpulse.streams.core import CoreConfig
    from deskpulse.streams.query import format_time

    redis = _redis(settings)
    offsets = TopicOffsets(settings)
    try:
        tps = await _input_partitions(offsets)
        committed, _, ends = await offsets.read(tps) if tps else ({}, {}, {})
        starts: dict[TopicPartition, int] = {
            tp: offset - 1 for tp, offset in committed.items() if offset is not None and offset > 0
        }
        # group offsets past the end of the log (the topics were recreated): the consumer
        # starts over at the beginning, so the state must not start past it
        beyond = {tp: fence for tp, fence in starts.items() if fence >= ends[tp]}
        if beyond:
            present = await offsets.in_log(beyond)
            for tp in set(beyond) - present:
                del starts[tp]
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        deleted = await store.clear()
        await store.check_config()
        assert store.generation is not None
        await store.record_reset(reset_at=format_time(time.time()), note=note)
        by_partition: dict[int, dict[str, int]] = {}
        for tp, fence in starts.items():
            by_partition.setdefault(tp.partition, {})[tp.topic] = fence
        for partition, fences in sorted(by_partition.items()):
            await store.start_at(partition, fences)
        return ResetSummary(deleted, store.generation, len(by_partition))
    finally:
        await offsets.close()
        await redis.aclose()
