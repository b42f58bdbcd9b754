"""SLA breach detection: ``sla.breached``, ``sla.at_risk`` and ``sla.breach_retracted``,
each exactly once.

Tickets with something left to publish sit in the partition's ``due`` set, scored by the
instant breach detection must look at them next: the earliest deadline or warning instant
of their SLA instances not claimed yet (the commit script keeps it, from
:func:`~streams.core.breach_deadline`). A check takes the due tickets whose instant has
passed on the detection clock and evaluates each one's timeline at the clock. Every
breached instance and every reached warning not claimed before becomes a *claim*
(:class:`~streams.core.SlaClaim`: ``fr:1``, ``nr:2``, ``rs:1`` for a breach,
``<key>@<fraction>`` for a warning), folded into the ticket's state through the same fold
and commit as a batch, under the partition's lock, with no place in the offset fence. The
one commit adds the claim to the state, counts the breach (``sb_<metric>`` at the breach
instant, and the cumulative breach counter) and parks the payload in the partition's
outbox, so a crash can never count a breach that is not published, or the reverse.

Parked payloads are published and, once the broker acknowledged them, dropped from the
outbox; a crash in between re-sends them on the next check, and the claims in the state
make sure nothing is claimed twice — across restarts, rebalances and workers.

A retraction is found where a batch is folded (:func:`add_retractions`): a claimed breach
the timeline no longer shows breached (its instance was fulfilled or cancelled in time,
by an event that arrived after the claim). Its ``sla.breach_retracted`` payload goes to
the outbox in that batch's commit, and a marker (``<key>@r``) in the state makes it once.

A state rebuilt by ``deskpulse replay`` starts without claims; the replay adopts the
alerts already on the alerts topic (:func:`adopt_published`), so none goes out twice.

The detection clock is event time: the partition's newest event time, or the wall clock
when the worker has caught up with the partition (nothing left to read that could hold an
in-time reply). A backfill therefore never declares breaches its own later replies refute.
A reply a producer put on another partition reaches the ticket's partition later, through
the repartition topic, so each partition's clock is also held back by every other
partition's (see :class:`DetectionClocks`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from math import ceil
from typing import Any, NamedTuple

import orjson

from deskpulse.models.outputs import SlaAtRisk, SlaBreached, SlaBreachRetracted
from deskpulse.models.sla import policy_for
from deskpulse.streams.calendar import deadline_ms
from deskpulse.streams.core import (
    SEP,
    BatchResult,
    Conversation,
    CoreConfig,
    Pending,
    SlaClaim,
    breach_deadline,
    dim_key,
    dims_at,
    dims_steps,
    fold_batch,
    ticket_terms,
)
from deskpulse.streams.partitioner import forwarded_key
from deskpulse.streams.sla import (
    ACHIEVED,
    BREACHED,
    CANCELLED,
    SHORT,
    Instance,
    evaluate_terms,
)
from deskpulse.streams.store import PartitionMeta, Store

__all__ = [
    "CLAIMS_TOPIC",
    "CLAIM_CHUNK",
    "CLAIM_PASS",
    "DetectionClocks",
    "ReadState",
    "add_retractions",
    "adopt_published",
    "check_breaches",
    "check_partitions",
    "decide",
    "detection_clock_ms",
    "progress_ms",
    "published_marker",
]

_BREACH_NAMESPACE = uuid.UUID("6f1c2f0e-5d8e-4b7e-9d0a-1e6c5f3a7b21")
#: the ``topic`` of a claim's :class:`Pending` (no real topic: it moves no fence, and its
#: newest event time is never recorded)
CLAIMS_TOPIC = "\x1fsla-claims"
#: the cumulative breach counter's totals field per metric (``sla``: v1's, first response)
BREACH_TOTALS = {"first_response": "sla", "next_response": "sla_nr", "resolution": "sla_rs"}
#: the metric of a claim key's short name (``fr`` of ``fr:1``)
SHORT_METRICS = {short: metric for metric, short in SHORT.items()}
#: The most due tickets one claim loads, folds and commits under its partition's lock.
#: A claim is Python on the event loop that commits the batches: with several alerts due
#: a ticket (its warnings and breaches, more than one metric), up to a millisecond a
#: ticket. 5,000 at once held every partition's batches for seconds after a worker's start
#: over a day of history; 100 at a time, a batch waits some 0.1 s at most.
CLAIM_CHUNK = 100
#: The most due tickets of a partition one pass looks at (the next pass goes on).
CLAIM_PASS = 5000
#: the order parked payloads are published in, per type
_TYPE_ORDER = {"sla.at_risk": 0, "sla.breached": 1, "sla.breach_retracted": 2}


def _rfc3339(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _event_id(prefix: str, ticket_id: str, key: str, suffix: str = "") -> str:
    """Deterministic alert ids; the first-response breach keeps v1's id."""
    if key == "fr:1" and not suffix:
        return str(uuid.uuid5(_BREACH_NAMESPACE, f"{prefix}/{ticket_id}"))
    return str(uuid.uuid5(_BREACH_NAMESPACE, f"{prefix}/{ticket_id}/{key}{suffix}"))


class Alert(NamedTuple):
    """One alert of a ticket to claim and publish: the claim (or marker) that makes it
    once, its payload, and the breach counter it counts in (breaches only)."""

    marker: str
    event_id: str
    payload: str
    dims: tuple[str, str, str]
    totals_field: str | None


def _dims_at(state: Conversation, at_ms: int) -> tuple[str, str, str]:
    """A ticket's dimensions in force at ``at_ms`` (they may have changed)."""
    assert state.opened is not None and state.dims is not None
    if not state.moves:
        return state.dims
    return dims_at(dims_steps(state.opened[0], state.dims, state.moves.items()), at_ms)


def _fields(
    conv_id: str, state: Conversation, instance: Instance, config: CoreConfig
) -> dict[str, Any]:
    # an instance keeps the policy, priority and group of its start
    channel, queue, priority = _dims_at(state, instance.start_ms)
    assert state.opened is not None
    policy = policy_for(config.effective_policies, channel, queue, priority)
    return {
        "ticket_id": conv_id[2:],
        "metric": instance.metric,
        "instance": instance.number,
        "policy": "" if policy is None else policy.name,
        "priority": priority,
        "channel": channel,
        "queue": queue,
        "target_seconds": instance.target_ms // 1000,
        "started_at": _rfc3339(instance.start_ms),
        "created_at": _rfc3339(state.opened[0]),
    }


def alerts_due(
    conv_id: str, state: Conversation | None, clock_ms: int, config: CoreConfig, prefix: str
) -> list[Alert]:
    """What one due ticket has to publish at ``clock_ms`` and has not claimed: each
    breached instance (deadline at or before the clock, not fulfilled nor cancelled by
    then) and each warning instant of an unclaimed instance reached by then."""
    if state is None or state.kind != "t" or state.opened is None or state.dims is None:
        return []
    if state.walk is not None:
        raise ValueError(f"{conv_id}: load its timeline first (Store.load_timelines)")
    plan, next_terms = ticket_terms(state, config)
    view = evaluate_terms(
        state.opened[0], state.timeline.items(), plan, clock_ms, next_terms=next_terms
    )
    claims = state.claims
    found: list[Alert] = []
    for instance in view.instances:
        key = instance.key
        if key in claims:
            continue
        for fraction, instant in instance.warnings:
            marker = f"{key}@{fraction}"
            if instant > clock_ms or marker in claims:
                continue
            event_id = _event_id(prefix, conv_id[2:], key, f"@{fraction}")
            remaining_ms = instance.target_ms - _warn_ms(fraction, instance)
            # the deadline if the clock keeps running from the warning on: a resolution
            # clock paused later (even for good, with no deadline at all) warned all the same
            calendar = plan.calendar
            if next_terms is not None and instance.metric == "next_response":
                calendar = next_terms(instance.start_ms).calendar
            due_ms = deadline_ms(calendar, instant, remaining_ms)
            warning = SlaAtRisk(
                event_id=event_id,
                fraction=fraction,
                remaining_seconds=remaining_ms / 1000,
                due_at=_rfc3339(due_ms),
                **_fields(conv_id, state, instance, config),
            )
            found.append(
                Alert(marker, event_id, warning.model_dump_json(), _dims_at(state, instant), None)
            )
        if instance.outcome == BREACHED and instance.deadline_ms is not None:
            event_id = _event_id(prefix, conv_id[2:], key)
            breach = SlaBreached(
                event_id=event_id,
                breached_at=_rfc3339(instance.deadline_ms),
                **_fields(conv_id, state, instance, config),
            )
            found.append(
                Alert(
                    key,
                    event_id,
                    breach.model_dump_json(),
                    # counted in the group of its breach instant
                    _dims_at(state, instance.deadline_ms),
                    BREACH_TOTALS[instance.metric],
                )
            )
    return found


def _warn_ms(fraction: float, instance: Instance) -> int:
    # the elapsed time a warning is due at, as streams.sla reaches it
    return ceil(fraction * instance.target_ms)


def decide(
    conv_id: str, state: Conversation | None, clock_ms: int, config: CoreConfig, prefix: str
) -> SlaBreached | None:
    """The first-response breach of one due ticket at ``clock_ms`` not claimed yet, or
    ``None``."""
    for alert in alerts_due(conv_id, state, clock_ms, config, prefix):
        if alert.marker == "fr:1":
            return SlaBreached.model_validate_json(alert.payload)
    return None


def add_retractions(result: BatchResult, config: CoreConfig, prefix: str) -> int:
    """After a batch is folded: for each claimed breach of a touched ticket that the
    timeline now shows fulfilled or cancelled in time, and not retracted before, park an
    ``sla.breach_retracted`` in ``result.outbox`` and mark it (``<key>@r``) in the state,
    so it goes out in the batch's commit, once. How many."""
    found = 0
    for conv_id, state in result.states.items():
        if not state.claims or state.opened is None or state.dims is None:
            continue
        open_claims = [c for c in state.claims if "@" not in c and f"{c}@r" not in state.claims]
        if not open_claims:
            continue
        timeline = result.whole.get(conv_id, state.timeline)
        if state.walk is not None and conv_id not in result.whole:
            # walked on from its walk: its claims are all of instances ended before
            # (core.timelines_needed), whose outcomes no later entry changes
            continue
        plan, next_terms = ticket_terms(state, config)
        view = evaluate_terms(state.opened[0], timeline.items(), plan, next_terms=next_terms)
        by_key = {instance.key: instance for instance in view.instances}
        for key in sorted(open_claims):
            instance = by_key.get(key)
            if instance is None or instance.outcome not in (ACHIEVED, CANCELLED):
                continue
            if instance.deadline_ms is None:
                continue
            event_id = _event_id(prefix, conv_id[2:], key, "@r")
            retraction = SlaBreachRetracted(
                event_id=event_id,
                breached_at=_rfc3339(instance.deadline_ms),
                **_fields(conv_id, state, instance, config),
            )
            state.claims.add(f"{key}@r")
            result.outbox[event_id] = retraction.model_dump_json()
            found += 1
    return found


async def check_breaches(
    store: Store,
    partition: int,
    clock_ms: int,
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
    *,
    limit: int = 5000,
) -> int:
    """Claim and publish the alerts of one partition due by ``clock_ms`` (call it under
    the partition's lock), of at most ``limit`` due tickets; how many breaches were
    claimed now."""
    return (await _check_due(store, partition, clock_ms, publish, limit))[0]


async def _check_due(
    store: Store,
    partition: int,
    clock_ms: int,
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
    limit: int,
) -> tuple[int, int]:
    """:func:`check_breaches`: the breaches claimed, and how many due tickets it looked at
    (each of them leaves the head of ``due``: claimed, or its next instant set)."""
    await _flush_outbox(store, partition, publish)
    ids = await store.due_tickets(partition, clock_ms, limit=limit)
    if not ids:
        return 0, 0
    while True:
        meta, states = await store.load(partition, ids)
        # the due tickets' timelines whole: their instances at the clock need every entry
        # (a batch committed between the two reads: read again)
        if not await store.load_timelines(partition, states, ids, meta.version):
            continue
        result, breaches = _claim(meta, states, clock_ms, store.config, store.prefix)
        if await store.commit(partition, meta.version, result):
            break
    await _flush_outbox(store, partition, publish)
    return breaches, len(ids)


def _claim(
    meta: PartitionMeta,
    states: Mapping[str, Conversation | None],
    clock_ms: int,
    config: CoreConfig,
    prefix: str,
) -> tuple[BatchResult, int]:
    """The commit of one check: the claims folded like a batch (unfenced, at the stored
    watermark so never late and moving nothing), their payloads for the outbox, the
    breach counter, and the next check instant of every due ticket looked at."""
    claims: list[tuple[str, str]] = []
    outbox: dict[str, str] = {}
    counts: dict[str, int] = {}
    for conv_id, state in states.items():
        for alert in alerts_due(conv_id, state, clock_ms, config, prefix):
            claims.append((conv_id, alert.marker))
            outbox[alert.event_id] = alert.payload
            if alert.totals_field is not None:
                name = dim_key(alert.dims) + SEP + alert.totals_field
                counts[name] = counts.get(name, 0) + 1
    result = _fold_claims(meta, states, claims, config)
    result.outbox.update(outbox)
    for name, count in counts.items():
        result.totals[name] += count
    for conv_id, state in states.items():
        if conv_id not in result.states:
            # looked at, nothing to claim: its next instant (or none: it leaves ``due``)
            result.deadlines[conv_id] = None if state is None else breach_deadline(state, config)
    return result, sum(counts.values())


def _fold_claims(
    meta: PartitionMeta,
    states: Mapping[str, Conversation | None],
    claims: Sequence[tuple[str, str]],
    config: CoreConfig,
) -> BatchResult:
    """``(conversation id, marker)`` claims folded into their tickets' states like a batch:
    unfenced, at the stored watermark (so never late, and moving nothing)."""
    pending = [
        Pending(
            SlaClaim(ticket_id=conv_id[2:], claim=marker),
            CLAIMS_TOPIC,
            -1,
            meta.watermark_ms,
            conv_id,
        )
        for conv_id, marker in claims
    ]
    result = fold_batch(
        pending,
        states,
        watermark_ms=meta.watermark_ms,
        applied_offsets=meta.offsets,
        config=config,
    )
    # claims are no events: no fence, no event time, no applied count
    result.offsets.pop(CLAIMS_TOPIC, None)
    result.topic_watermarks.pop(CLAIMS_TOPIC, None)
    result.watermark_ms = max(result.watermark_ms, meta.watermark_ms)
    result.fresh.clear()
    result.applied = 0
    return result


def published_marker(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ticket id and the claim marker an SLA alert read back from the alerts topic
    stands for (``fr:1`` a breach, ``nr:2@0.5`` a warning, ``rs:1@r`` a retraction; a v1
    breach, without metric and instance, is the first response's), or ``None`` for any
    other payload."""
    ticket_id = payload.get("ticket_id")
    short = SHORT.get(payload.get("metric", "first_response"))
    instance = payload.get("instance", 1)
    if not isinstance(ticket_id, str) or short is None or not isinstance(instance, int):
        return None
    key = f"{short}:{instance}"
    kind = payload.get("type")
    if kind == "sla.breached":
        return ticket_id, key
    if kind == "sla.breach_retracted":
        return ticket_id, f"{key}@r"
    fraction = payload.get("fraction")
    if kind == "sla.at_risk" and isinstance(fraction, int | float):
        return ticket_id, f"{key}@{float(fraction)}"
    return None


async def adopt_published(
    store: Store, partition: int, markers: Mapping[str, Iterable[str]], *, limit: int = 5000
) -> int:
    """Fold into the tickets of one partition the claims of alerts already published
    (``conversation id -> markers``, from :func:`published_marker`) that their states do
    not hold: a state rebuilt under a new prefix then publishes none of them again. An
    adopted breach counts like a claimed one (KPIs and the breach counter), and one the
    state shows fulfilled or cancelled in time gets its retraction parked, as a batch
    would. Tickets the state does not hold are passed over. How many were adopted."""
    adopted = 0
    ids = sorted(markers)
    for start in range(0, len(ids), limit):
        chunk = ids[start : start + limit]
        while True:
            meta, states = await store.load(partition, chunk)
            # claims: evaluated whole (a batch committed between the two reads: read again)
            if not await store.load_timelines(partition, states, chunk, meta.version):
                continue
            result, count = _adopt(meta, states, markers, store.config, store.prefix)
            if not count or await store.commit(partition, meta.version, result):
                break
        adopted += count
    return adopted


def _adopt(
    meta: PartitionMeta,
    states: Mapping[str, Conversation | None],
    markers: Mapping[str, Iterable[str]],
    config: CoreConfig,
    prefix: str,
) -> tuple[BatchResult, int]:
    claims: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for conv_id, state in states.items():
        if state is None or state.kind != "t" or state.opened is None or state.dims is None:
            continue
        deadlines: dict[str, int | None] = {}
        if state.moves:
            # counted in the group of the breach instant, as detection counts it
            plan, next_terms = ticket_terms(state, config)
            view = evaluate_terms(
                state.opened[0], state.timeline.items(), plan, next_terms=next_terms
            )
            deadlines = {instance.key: instance.deadline_ms for instance in view.instances}
        for marker in sorted(set(markers.get(conv_id, ())) - state.claims):
            claims.append((conv_id, marker))
            if "@" not in marker:
                metric = SHORT_METRICS[marker.split(":", 1)[0]]
                deadline = deadlines.get(marker)
                dims = state.dims if deadline is None else _dims_at(state, deadline)
                name = dim_key(dims) + SEP + BREACH_TOTALS[metric]
                counts[name] = counts.get(name, 0) + 1
    if not claims:
        return BatchResult(watermark_ms=meta.watermark_ms), 0
    result = _fold_claims(meta, states, claims, config)
    for name, count in counts.items():
        result.totals[name] += count
    add_retractions(result, config, prefix)
    return result, len(claims)


async def _flush_outbox(
    store: Store,
    partition: int,
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
) -> None:
    """Publish parked alerts, then forget them (at most the last batch is re-sent)."""
    pending = await store.breach_outbox(partition)
    if not pending:
        return
    bodies = []
    for payload in pending.values():
        body = orjson.loads(payload)
        body.pop("schema_version", None)
        bodies.append(body)
    bodies.sort(
        key=lambda b: (
            b["ticket_id"],
            b.get("metric", ""),
            b.get("instance", 1),
            _TYPE_ORDER.get(b["type"], 3),
            b.get("fraction", 0),
        )
    )
    await publish([(body["ticket_id"], body) for body in bodies])
    await store.drop_from_outbox(partition, pending)


async def check_partitions(
    store: Store,
    clocks: Iterable[tuple[int, int]],
    publish: Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]],
    lock_of: Callable[[int], AbstractAsyncContextManager[Any]],
) -> int:
    """:func:`check_breaches` for each ``(partition, clock ms)``, under the partition's lock
    (so a check never interleaves with a batch of that partition); how many in all.

    A partition's due tickets are claimed :data:`CLAIM_CHUNK` at a time, up to
    :data:`CLAIM_PASS`, the lock let go and the event loop given up in between: batches
    that wait for either go between two chunks, not after the whole pass."""
    published = 0
    for partition, clock_ms in sorted(clocks):
        for _ in range(0, CLAIM_PASS, CLAIM_CHUNK):
            async with lock_of(partition):
                claimed, looked_at = await _check_due(
                    store, partition, clock_ms, publish, CLAIM_CHUNK
                )
            published += claimed
            if looked_at < CLAIM_CHUNK:
                break
            await asyncio.sleep(0)
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
