"""The state the SLA and backlog sections measure: tickets folded into Redis as the engine
folds a batch.

No broker and no worker: the events are built here, decoded by the worker's decoder
(``models.wire.decode_record``), put on the partition the worker would put them on
(``streams.partitioner``), and loaded, folded and committed per partition in batches of the
worker's default size, as the engine does (``Store.load``, ``fold_batch``,
``add_retractions``, ``Store.commit``). Ids have the simulator's format with numbers
zero-padded to 10 digits (``sla-T0000000042``, events ``sla-e0000000042``), as the soak's
traffic has them.

Event times are fixed, not taken from the wall clock: the demo policies keep office hours,
and a fixed Monday morning (the Berlin office open, New York's not yet) makes every run
find the same deadlines.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from deskpulse.models.wire import WireEvent, decode_record
from deskpulse.streams.breaches import add_retractions
from deskpulse.streams.core import Conversation, Pending, SlaClaim, fold_batch, timelines_needed
from deskpulse.streams.devtools.simulate import SimConfig
from deskpulse.streams.partitioner import ConversationPartitions
from deskpulse.streams.sla import RUNNING, evaluate_terms
from deskpulse.streams.store import Store, text

__all__ = [
    "MONDAY_10_MS",
    "apply_decoded",
    "apply_events",
    "count_running",
    "decoded",
    "fold_commit",
    "key_memory",
    "opened_ticket_stream",
    "opened_tickets",
    "stored_states",
    "worked_tickets",
]

#: Monday 2026-11-23 10:00 UTC: 11:00 in Berlin (open), 05:00 in New York (closed)
MONDAY_10_MS = 1_795_428_000_000
_MINUTE = 60_000
_HOUR = 60 * _MINUTE
DIGITS = 10


class _Ids:
    """Ticket and event ids in the simulator's format (``<prefix>T<n>``, ``<prefix>e<n>``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._tickets = itertools.count(1)
        self._events = itertools.count(1)

    def ticket(self) -> str:
        return f"{self.prefix}T{next(self._tickets):0{DIGITS}}"

    def event(self) -> str:
        return f"{self.prefix}e{next(self._events):0{DIGITS}}"


def _stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _ticket_dims(rng: random.Random) -> dict[str, str]:
    """Channel, queue and priority drawn with the simulator's default weights (tickets
    only: no chat channel), so the demo policies are matched in their usual shares."""
    sim = SimConfig()
    channels = {k: w for k, w in sim.channels.items() if k != "chat"}

    def pick(weights: dict[str, float]) -> str:
        return rng.choices(list(weights), weights=list(weights.values()))[0]

    return {
        "channel": pick(channels),
        "queue": pick(dict(sim.queues)),
        "priority": pick(dict(sim.priorities)),
    }


def _event(ids: _Ids, kind: str, ms: int, ticket: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"event_id": ids.event(), "type": kind, "occurred_at": _stamp(ms), "ticket_id": ticket}
    return ms, body | fields


def opened_tickets(
    count: int,
    *,
    end_ms: int,
    span_ms: int,
    seed: int,
    prefix: str = "sla-",
    groups: Sequence[tuple[str, str, str]] | None = None,
) -> list[dict[str, Any]]:
    """``count`` ``ticket.created`` events spread evenly over ``span_ms`` up to ``end_ms``,
    nothing after them: every ticket's first response and resolution running (see
    :func:`opened_ticket_stream`)."""
    return list(
        opened_ticket_stream(
            count, end_ms=end_ms, span_ms=span_ms, seed=seed, prefix=prefix, groups=groups
        )
    )


def opened_ticket_stream(
    count: int,
    *,
    end_ms: int,
    span_ms: int,
    seed: int,
    prefix: str = "sla-",
    groups: Sequence[tuple[str, str, str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The events of :func:`opened_tickets` one at a time, in time order (within a second):
    a million of them need not be held at once. Each ticket's channel, queue and priority
    are drawn with the simulator's weights, or uniformly from ``groups`` when given."""
    rng = random.Random(seed)
    ids = _Ids(prefix)
    for n in range(count):
        ms = end_ms - span_ms + (span_ms * n) // max(count, 1) + rng.randrange(1000)
        ticket = ids.ticket()
        yield _event(
            ids,
            "ticket.created",
            ms,
            ticket,
            requester_id="cust-" + ticket,
            **_dims(rng, groups),
        )[1]


def _dims(rng: random.Random, groups: Sequence[tuple[str, str, str]] | None) -> dict[str, str]:
    if groups is None:
        return _ticket_dims(rng)
    channel, queue, priority = rng.choice(groups)
    return {"channel": channel, "queue": queue, "priority": priority}


def worked_tickets(
    count: int,
    *,
    start_ms: int,
    seed: int,
    prefix: str = "sla-",
    span_ms: int = _HOUR,
    solve: bool = True,
    groups: Sequence[tuple[str, str, str]] | None = None,
) -> list[dict[str, Any]]:
    """``count`` tickets of 10 events each, created within ``span_ms`` (an hour) from
    ``start_ms``: the creation, 5 public replies (agent, customer, agent, customer, agent)
    and 4 status changes (open, pending, open, solved) over about a day; gaps drawn around
    typical values, times with milliseconds. Without ``solve``, the last change is left
    out: 9 events, and the ticket stays open. Channel, queue and priority as in
    :func:`opened_ticket_stream`."""
    rng = random.Random(seed)
    ids = _Ids(prefix)
    # (minutes after the creation, what happens)
    plan: Sequence[tuple[float, str, dict[str, Any]]] = (
        (4, "ticket.status_changed", {"status": "open"}),
        (25, "ticket.replied", {"author_role": "agent"}),
        (120, "ticket.replied", {"author_role": "customer"}),
        (180, "ticket.replied", {"author_role": "agent"}),
        (181, "ticket.status_changed", {"status": "pending"}),
        (1200, "ticket.replied", {"author_role": "customer"}),
        (1201, "ticket.status_changed", {"status": "open"}),
        (1320, "ticket.replied", {"author_role": "agent"}),
        (1325, "ticket.status_changed", {"status": "solved"}),
    )
    events: list[tuple[int, dict[str, Any]]] = []
    if not solve:
        plan = plan[:-1]
    for _ in range(count):
        t0 = start_ms + rng.randrange(span_ms)
        ticket = ids.ticket()
        dims = _dims(rng, groups)
        agent = f"agent-{dims['queue']}-{rng.randrange(24)}"
        events.append(
            _event(ids, "ticket.created", t0, ticket, requester_id="cust-" + ticket, **dims)
        )
        scale = rng.uniform(0.5, 1.5)
        for minutes, kind, fields in plan:
            ms = t0 + int(minutes * scale * _MINUTE) + rng.randrange(1000)
            extra = dict(fields)
            if extra.get("author_role") == "agent":
                extra["agent_id"] = agent
            events.append(_event(ids, kind, ms, ticket, **extra))
    events.sort(key=lambda e: e[0])
    return [body for _, body in events]


async def apply_events(
    store: Store,
    bodies: Iterable[dict[str, Any]],
    *,
    partitions: int,
    topic: str,
    batch: int = 5000,
) -> dict[str, Any]:
    """Decode, route and fold ``bodies`` into ``store`` batch by batch, per partition;
    what it took (events, commits, seconds: the folding, the decoding done before)."""
    items = [(topic, event, ms) for event, ms in decoded(bodies)]
    return await apply_decoded(store, items, partitions=partitions, batch=batch)


def decoded(bodies: Iterable[dict[str, Any]]) -> Iterator[tuple[WireEvent, int]]:
    """Each body as the worker decodes its record: ``(event, event time ms)``."""
    for body in bodies:
        yield decode_record(orjson.dumps(body))


async def apply_decoded(
    store: Store,
    items: Iterable[tuple[str, WireEvent, int]],
    *,
    partitions: int,
    batch: int = 5000,
    window: int | None = None,
    max_span_ms: int | None = None,
) -> dict[str, Any]:
    """Route and fold decoded events, ``(topic, event, ms)``, into ``store``: per
    partition, in the order given, in batches of up to ``batch``, each loaded, folded and
    committed as the engine does. With ``window``, that many events are taken from
    ``items`` at a time (a million events need not be held at once); every partition's
    offsets go on counting across windows, per topic. With ``max_span_ms``, a batch also
    ends before an event that many ms after its first: a batch's newest event sets the
    late cut for all of it, and a live worker's batch spans seconds, but a few thousand
    events spread over a week would fall in one batch here, and its oldest would count as
    late. What it took."""
    route = ConversationPartitions(partitions)
    offsets: Counter[tuple[int, str]] = Counter()
    per_partition: Counter[int] = Counter()
    commits = events = 0
    started = time.perf_counter()
    source = iter(items)
    while True:
        chunk = list(itertools.islice(source, window)) if window else list(source)
        if not chunk:
            break
        events += len(chunk)
        by_partition: dict[int, list[Pending]] = defaultdict(list)
        parts = route.many([event.conversation_id for _, event, _ in chunk])
        for (topic, event, ms), partition in zip(chunk, parts, strict=True):
            by_partition[partition].append(
                Pending(event, topic, offsets[partition, topic], ms, event.conversation_id)
            )
            offsets[partition, topic] += 1
        del chunk
        for partition, pending in sorted(by_partition.items()):
            per_partition[partition] += len(pending)
            for chunk in _batches(pending, batch, max_span_ms):
                commits += await fold_commit(store, partition, chunk)
        if not window:
            break
    return {
        "events": events,
        "commits": commits,
        "seconds": time.perf_counter() - started,
        "per_partition": dict(sorted(per_partition.items())),
    }


def _batches(
    pending: Sequence[Pending], size: int, max_span_ms: int | None
) -> Iterator[Sequence[Pending]]:
    """``pending`` cut into batches of up to ``size``, each spanning less than
    ``max_span_ms`` of event time from its first event (when given)."""
    first = 0
    while first < len(pending):
        end = min(first + size, len(pending))
        if max_span_ms is not None:
            limit = pending[first].ms + max_span_ms
            cut = first + 1
            while cut < end and pending[cut].ms < limit:
                cut += 1
            end = cut
        yield pending[first:end]
        first = end


async def fold_commit(store: Store, partition: int, chunk: Sequence[Pending]) -> int:
    """One batch as the engine applies it, folded again from fresh state until its commit
    finds the version it was folded against; the commits made (1)."""
    while True:
        ids = [p.event.conversation_id for p in chunk]
        event_ids = [
            (c, p.event.event_id)
            for c, p in zip(ids, chunk, strict=True)
            if not isinstance(p.event, SlaClaim)
        ]
        meta, states = await store.load(partition, ids, event_ids)
        await store.load_timelines(
            partition, states, timelines_needed(chunk, states, meta.known, store.config)
        )
        result = fold_batch(
            chunk,
            states,
            watermark_ms=meta.watermark_ms,
            applied_offsets=meta.offsets,
            config=store.config,
            known=meta.known,
        )
        add_retractions(result, store.config, store.prefix)
        if await store.commit(partition, meta.version, result):
            return 1


async def stored_states(store: Store, partitions: int) -> dict[str, bytes]:
    """Every conversation state under the store's prefix: id -> the stored bytes."""
    out: dict[str, bytes] = {}
    for partition in range(partitions):
        key = store.base(partition) + "conv"
        async for field, raw in store.redis.hscan_iter(key, count=1000):
            out[text(field)] = raw if isinstance(raw, bytes) else raw.encode()
    return out


async def count_running(store: Store, partitions: int, clock_ms: int) -> dict[str, Any]:
    """The SLA instances of every stored ticket evaluated at ``clock_ms`` (the ticket's
    policy and calendar, as breach detection evaluates it): how many are running, by
    metric, and the outcomes of the rest."""
    running: Counter[str] = Counter()
    other: Counter[str] = Counter()
    tickets = 0
    for partition in range(partitions):
        async for field, raw in store.redis.hscan_iter(store.base(partition) + "conv", count=1000):
            conv_id = text(field)
            state = Conversation.loads(raw)
            if not conv_id.startswith("t:") or state.opened is None or state.dims is None:
                continue
            tickets += 1
            # its timeline whole, as breach detection reads it
            await store.load_timelines(partition, {conv_id: state}, [conv_id])
            _count(store, state, clock_ms, running, other)
    return {
        "tickets": tickets,
        "running": sum(running.values()),
        "by_metric": dict(running),
        "not_running": dict(other),
    }


def _count(
    store: Store, state: Conversation, clock_ms: int, running: Counter[str], other: Counter[str]
) -> None:
    """Count one ticket's instances at ``clock_ms`` (running by metric, the rest by outcome)."""
    assert state.opened is not None and state.dims is not None
    plan = store.config.terms_of(state.dims)
    view = evaluate_terms(state.opened[0], state.timeline.items(), plan, clock_ms)
    for instance in view.instances:
        if instance.outcome == RUNNING:
            running[instance.metric] += 1
        else:
            other[instance.outcome] += 1


def _kind(prefix: str, key: str) -> str:
    """What a key of the store is, from its name (``conv``, ``due``, ``buckets``, ``lo``
    for every group's index of open tickets, ``lw`` for the waiting chats', ...)."""
    rest = key[len(prefix) + 1 :]
    if rest.startswith("{p"):
        name = rest.split("}:", 1)[1]
        if name[:2] in ("b:", "r:", "B:", "R:"):
            return "buckets"
        if name[:3] in ("lo:", "lw:", "tl:"):
            return name[:2]
        return name
    return rest


async def key_memory(store: Store) -> dict[str, dict[str, int]]:
    """``MEMORY USAGE`` (every element counted: ``SAMPLES 0``) of each key under the
    store's prefix, summed by kind of key; with the number of keys of each kind."""
    keys = [text(k) async for k in store.redis.scan_iter(match=store.prefix + ":*", count=1000)]
    sizes: list[Any] = []
    for first in range(0, len(keys), 1000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for key in keys[first : first + 1000]:
                pipe.memory_usage(key, samples=0)
            sizes += await pipe.execute()
    out: dict[str, dict[str, int]] = {}
    for key, size in zip(keys, sizes, strict=True):
        entry = out.setdefault(_kind(store.prefix, key), {"keys": 0, "bytes": 0})
        entry["keys"] += 1
        entry["bytes"] += int(size or 0)
    return out
