"""First-response SLA breach detection: one ``sla.breached`` per ticket, exactly once.

Tickets that may still breach sit in the partition's ``due`` set, scored by deadline (the
commit script keeps it). A check takes the due tickets whose deadline has passed on the
detection clock, decides from their stored state, and in one Redis script *claims* each
breach (``breached`` + the payload in ``breach_out``) and counts it. Claimed payloads are
published and, once the broker acknowledged them, dropped from ``breach_out``; a crash in
between re-sends them on the next check, so a breach is never lost, and the claim makes
sure no ticket is claimed twice — across restarts, rebalances and workers.

The detection clock is event time: the partition's newest event time, or the wall clock
when the worker has caught up with the partition (nothing left to read that could hold an
in-time reply). A backfill therefore never declares breaches its own later replies refute.
A reply a producer put on another partition reaches the ticket's partition later, through
the repartition topic, so each partition's clock is also held back by every other
partition's (see :class:`DetectionClocks`).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from deskpulse.models.outputs import SlaBreached
from deskpulse.streams.core import SEP, Conversation, CoreConfig, breach_deadline, dim_key
from deskpulse.streams.partitioner import forwarded_key
from deskpulse.streams.store import BreachVerdict, PartitionMeta, Store

__all__ = [
    "DetectionClocks",
    "ReadState",
    "check_breaches",
    "check_partitions",
    "decide",
    "detection_clock_ms",
    "progress_ms",
]

_BREACH_NAMESPACE = uuid.UUID("6f1c2f0e-5d8e-4b7e-9d0a-1e6c5f3a7b21")


def _rfc3339(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def decide(
    conv_id: str, state: Conversation | None, clock_ms: int, config: CoreConfig, prefix: str
) -> SlaBreached | None:
    """The breach of one due ticket at ``clock_ms``, or ``None`` if it has not breached."""
    if state is None or state.opened is None or state.dims is None:
        return None
    deadline = breach_deadline(state, config)
    if deadline is None or deadline > clock_ms:
        return None
    channel, queue, priority = state.dims
    ticket_id = conv_id[2:]
    return SlaBreached(
        event_id=str(uuid.uuid5(_BREACH_NAMESPACE, f"{prefix}/{ticket_id}")),
        ticket_id=ticket_id,
        priority=priority,
        channel=channel,
        queue=queue,
        target_seconds=config.first_response_targets_s[priority],
        created_at=_rfc3339(state.opened[0]),
        breached_at=_rfc3339(deadline),
    )


async def check_breaches(
    store: Store,
    partition: int,
    clock_ms: int,
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
    *,
    limit: int = 5000,
) -> int:
    """Claim and publish the breaches of one partition due by ``clock_ms``; how many."""
    await _flush_outbox(store, partition, publish)
    ids = await store.due_tickets(partition, clock_ms, limit=limit)
    if not ids:
        return 0
    _, states = await store.load(partition, ids)
    verdicts: list[BreachVerdict] = []
    for conv_id in ids:
        state = states.get(conv_id)
        breach = decide(conv_id, state, clock_ms, store.config, store.prefix)
        if breach is None:
            # still watched (its deadline moved past the clock) or answered in time
            watching = state is not None and breach_deadline(state, store.config) is not None
            verdicts.append(BreachVerdict(conv_id, "k" if watching else "x"))
            continue
        dims = (breach.channel, breach.queue, breach.priority)
        verdicts.append(
            BreachVerdict(conv_id, "b", dim_key(dims) + SEP + "sla", breach.model_dump_json())
        )
    claimed = await store.claim_breaches(partition, verdicts)
    await _flush_outbox(store, partition, publish)
    return len(claimed)


async def _flush_outbox(
    store: Store,
    partition: int,
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
) -> None:
    """Publish claimed breaches, then forget them (at most the last batch is re-sent)."""
    pending = await store.breach_outbox(partition)
    if not pending:
        return
    items = []
    for payload in pending.values():
        body = orjson.loads(payload)
        body.pop("schema_version", None)
        items.append((body["ticket_id"], body))
    await publish(items)
    await store.drop_from_outbox(partition, pending)


async def check_partitions(
    store: Store,
    clocks: Iterable[tuple[int, int]],
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
    lock_of: Callable[[int], AbstractAsyncContextManager[Any]],
) -> int:
    """:func:`check_breaches` for each ``(partition, clock ms)``, under the partition's lock
    (so a check never interleaves with a batch of that partition); how many in all."""
    published = 0
    for partition, clock_ms in sorted(clocks):
        async with lock_of(partition):
            published += await check_breaches(store, partition, clock_ms, publish)
    return published


class ReadState(NamedTuple):
    """What a breach check saw of one partition, as one target partition's clock needs it."""

    #: the newest event time applied from the partition's tickets topic
    tickets_ms: int
    #: nothing left to read on any of its topics and nothing applied since the last check
    idle: bool
    #: for another partition that forwarded records to the target: its progress as of the
    #: newest check whose forwards the target has applied since (0 until the target applied
    #: one); ``None`` while it forwarded nothing to the target
    forwards_ms: int | None = None


def progress_ms(state: ReadState, now_ms: int) -> int:
    """How far a partition's tickets topic was read: its newest event time, or the wall
    clock once it is idle (no reply can still come from it that is not read yet)."""
    return max(state.tickets_ms, now_ms) if state.idle else state.tickets_ms


def detection_clock_ms(target: int, partitions: Mapping[int, ReadState], now_ms: int) -> int | None:
    """The event time up to which partition ``target`` may declare breaches, or ``None``
    when its state was not read (no clock, no check).

    The least of the target's own progress and, for every other partition, its progress
    (nothing forwarded to the target yet) or, once it forwarded, its ``forwards_ms``.
    """
    own = partitions.get(target)
    if own is None:
        return None
    clock = progress_ms(own, now_ms)
    for source, state in partitions.items():
        if source == target:
            continue
        held_at = progress_ms(state, now_ms) if state.forwards_ms is None else state.forwards_ms
        clock = min(clock, held_at)
    return clock


class DetectionClocks:
    """The event-time clock each partition's breach check runs at (pure: it is given
    what was observed, and keeps what it needs of earlier checks).

    A due ticket has breached once no in-time public agent reply can still come. Its
    replies come on its partition N's tickets topic, or, from a producer that partitions
    otherwise, on any other partition M's tickets topic, forwarded to N through the
    repartition topic. So N's clock is the least of:

    * how far N's tickets topic was read (its *progress*): the newest event time applied
      from it, or the wall clock once N is idle (nothing left to read on any of its topics,
      nothing applied since the last check);
    * for every other partition M, M's progress as of the newest check whose forwards from
      M to N partition N has applied since (M's fence records the newest repartition offset
      it forwarded to N; N's, the newest repartition offset it applied). Until N has applied
      one, that is 0: no breach is declared on N.

    Reading every partition in order of event time (the assumption of the one-partition
    clock too), no reply dated at or before the clock is then still unread anywhere.

    This class keeps what the checks saw (offsets, forwards per pair of partitions); the
    clock itself is :func:`detection_clock_ms` of that.
    """

    #: checks remembered per pair of partitions while the target catches up with forwards
    HISTORY = 512

    def __init__(self, tickets_topic: str, repartition_topic: str) -> None:
        self.tickets_topic = tickets_topic
        self.repartition_topic = repartition_topic
        self._previous_offsets: dict[int, tuple[tuple[str, int], ...]] = {}
        # (source, target) -> (forwarded offset, source progress) of checks not yet applied
        self._history: dict[tuple[int, int], deque[tuple[int, int]]] = {}
        self._safe: dict[tuple[int, int], int] = {}

    def update(
        self,
        now_ms: int,
        metas: Mapping[int, PartitionMeta],
        caught_up: Mapping[int, bool],
        owned: Iterable[int],
    ) -> dict[int, int]:
        """The clocks of the ``owned`` partitions.

        ``metas`` holds every input partition's meta (read before ``caught_up``);
        ``caught_up[p]`` says whether partition ``p`` had nothing left to read on any of
        its topics (inputs and repartition) when looked at after its meta was read.
        """
        read: dict[int, ReadState] = {}
        for partition, meta in metas.items():
            applied = tuple(sorted(meta.offsets.items()))
            # caught up by the broker's count AND nothing applied since the last check (some
            # brokers report end offsets short of the last batch)
            idle = caught_up.get(partition, False) and (
                self._previous_offsets.get(partition) == applied
            )
            self._previous_offsets[partition] = applied
            read[partition] = ReadState(meta.topic_watermarks.get(self.tickets_topic, 0), idle)
        targets = set(owned)
        for pair in [pair for pair in self._history if pair[1] not in targets]:
            del self._history[pair]  # no longer ours: begins again if it comes back
            self._safe.pop(pair, None)
        clocks: dict[int, int] = {}
        for target in sorted(targets):
            if target not in metas:
                continue
            applied_offset = metas[target].offsets.get(self.repartition_topic, -1)
            key = forwarded_key(self.repartition_topic, target)
            seen = dict(read)
            for source, source_meta in metas.items():
                forwarded = source_meta.offsets.get(key)
                if source == target or forwarded is None:
                    continue  # (nothing forwarded to the target yet: its progress counts)
                pair = (source, target)
                history = self._history.get(pair)
                if history is None:
                    history = self._history[pair] = deque(maxlen=self.HISTORY)
                history.append((forwarded, progress_ms(read[source], now_ms)))
                while history and applied_offset >= history[0][0]:
                    self._safe[pair] = history.popleft()[1]
                seen[source] = read[source]._replace(forwards_ms=self._safe.get(pair, 0))
            clock = detection_clock_ms(target, seen, now_ms)
            if clock is not None:
                clocks[target] = clock
        return clocks
