"""A conversation that never goes quiet: one ticket answered by an auto-responder loop at a
steady rate beside ordinary spread traffic, and what a batch costs as its history grows.

:func:`long_ticket` makes the ticket's records (its creation, then public replies by
``system``, the shape of an auto-responder answering itself); :func:`merged` puts them
among the simulator's records in event-time order; :func:`fold_in_spans` folds records
into a store as the engine does a batch (``Store.load`` with the batch's event ids,
``fold_batch``, ``Store.commit``), one batch per partition per span of event time (a worker
keeping up with live traffic commits what came in its ``DESKPULSE_BATCH_WITHIN``), timing
every batch of the ticket's partition; :func:`flatness` compares the batches of its first
and last replies.

:func:`long_timeline` makes a ticket whose every event goes into its timeline (public
replies alternating customer and agent, status changes among them); :func:`fold_batches`
folds records on one partition in batches of a fixed size, timing each and reading the
stored state's size after it; :func:`timeline_flatness` compares its first and last tenth.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from benchmark.sla_state import fold_commit
from deskpulse.models.sla import Policy
from deskpulse.models.wire import decode_record
from deskpulse.streams.core import Pending
from deskpulse.streams.devtools.simulate import Record
from deskpulse.streams.partitioner import ConversationPartitions
from deskpulse.streams.store import Store

__all__ = [
    "TIMELINE_POLICY",
    "flatness",
    "fold_batches",
    "fold_in_spans",
    "long_ticket",
    "long_timeline",
    "merged",
    "partition_of",
    "script_times_us",
    "timeline_flatness",
]


def partition_of(ticket: str, partitions: int) -> int:
    """The partition a ticket's state is kept on."""
    return ConversationPartitions(partitions).many(["t:" + ticket])[0]


def _stamp(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def long_ticket(ticket: str, start_s: float, replies: int, rate: float) -> list[Record]:
    """``ticket``'s creation at ``start_s`` and ``replies`` public ``system`` replies after
    it, ``rate`` a second (event ids of one length, as a helpdesk's are)."""
    start_ms = int(start_s * 1000)
    key = ticket.encode()
    out: list[Record] = []
    body: dict[str, Any] = {
        "event_id": f"{ticket}-e{0:09d}",
        "type": "ticket.created",
        "occurred_at": _stamp(start_ms),
        "ticket_id": ticket,
        "channel": "api",
        "queue": "general",
        "priority": "normal",
    }
    out.append(Record("tickets", key, orjson.dumps(body), start_ms / 1000))
    for n in range(1, replies + 1):
        ms = start_ms + int(n * 1000 / rate)
        body = {
            "event_id": f"{ticket}-e{n:09d}",
            "type": "ticket.replied",
            "occurred_at": _stamp(ms),
            "ticket_id": ticket,
            "author_role": "system",
        }
        out.append(Record("tickets", key, orjson.dumps(body), ms / 1000))
    return out


def merged(*streams: Iterable[Record]) -> list[Record]:
    """The records of every stream in event-time order (each stream is in that order)."""
    return list(heapq.merge(*streams, key=lambda r: r.occurred_at_s or 0.0))


async def fold_in_spans(
    store: Store, records: Sequence[Record], *, partitions: int, ticket: str, span_ms: int
) -> list[dict[str, Any]]:
    """Fold ``records`` into ``store``, one batch per partition per ``span_ms`` of event
    time, in time order; for each batch of ``ticket``'s partition: how many of the
    ticket's events came before it (``before``), in it (``mine``), its events and its
    seconds (load, fold and commit)."""
    decoded = [decode_record(r.value) for r in records]
    parts = ConversationPartitions(partitions).many([event.conversation_id for event, _ in decoded])
    target = partition_of(ticket, partitions)
    by_span: dict[tuple[int, int], list[Pending]] = defaultdict(list)
    offsets: dict[tuple[int, str], int] = defaultdict(int)
    for record, (event, ms), partition in zip(records, decoded, parts, strict=True):
        topic = record.topic_kind
        by_span[(ms // span_ms, partition)].append(
            Pending(event, topic, offsets[partition, topic], ms, event.conversation_id)
        )
        offsets[partition, topic] += 1
    conversation = "t:" + ticket
    seen = 0
    out: list[dict[str, Any]] = []
    for (_, partition), batch in sorted(by_span.items()):
        started = time.perf_counter()
        await fold_commit(store, partition, batch)
        seconds = time.perf_counter() - started
        if partition == target:
            mine = sum(1 for p in batch if p.event.conversation_id == conversation)
            out.append({"before": seen, "mine": mine, "events": len(batch), "seconds": seconds})
            seen += mine
    return out


def flatness(batches: Sequence[dict[str, Any]], first: int, last_from: int) -> dict[str, Any]:
    """The mean seconds of the batches holding the ticket's events before ``first`` and
    from ``last_from`` on, and their ratio (last over first)."""
    early = [b["seconds"] for b in batches if b["mine"] and b["before"] < first]
    late = [b["seconds"] for b in batches if b["mine"] and b["before"] + b["mine"] > last_from]
    early_ms = 1000 * sum(early) / len(early)
    late_ms = 1000 * sum(late) / len(late)
    return {
        "first_batches": len(early),
        "last_batches": len(late),
        "first_ms": early_ms,
        "last_ms": late_ms,
        "ratio": late_ms / early_ms,
    }


def script_times_us(entries: Sequence[Any], sha: str) -> list[int]:
    """The durations (µs) of the runs of the script ``sha`` among ``SLOWLOG GET`` entries
    (as redis-py parses them: dicts with ``duration`` and ``command``)."""
    out: list[int] = []
    for entry in entries:
        command = entry["command"]
        words = command.decode() if isinstance(command, bytes) else str(command)
        if words.lower().startswith("evalsha " + sha):
            out.append(int(entry["duration"]))
    return out


#: the policy a long timeline is folded under: every SLA metric for its priority, the
#: resolution paused while pending or on hold, a warning at half of each target
TIMELINE_POLICY = Policy(
    name="bench-timeline",
    targets={
        "first_response": {"normal": 3600},
        "next_response": {"normal": 1800},
        "resolution": {"normal": 3 * 86400},
    },
    pause=("pending", "hold"),
    warn_at=(0.5,),
)

#: the statuses a long timeline's changes go through in turn (all in the backlog)
STATUS_CYCLE = ("open", "pending", "open", "hold")


def long_timeline(
    ticket: str, start_s: float, replies: int, rate: float, *, status_every: int = 50
) -> list[Record]:
    """``ticket``'s creation at ``start_s``, then ``replies`` public replies ``rate`` a
    second, customer and agent in turn (the customer first), and after every
    ``status_every`` of them a status change (:data:`STATUS_CYCLE` in turn)."""
    start_ms = int(start_s * 1000)
    key = ticket.encode()
    body: dict[str, Any] = {
        "event_id": f"{ticket}-e{0:09d}",
        "type": "ticket.created",
        "occurred_at": _stamp(start_ms),
        "ticket_id": ticket,
        "channel": "api",
        "queue": "general",
        "priority": "normal",
    }
    out = [Record("tickets", key, orjson.dumps(body), start_ms / 1000)]
    changes = 0
    for n in range(1, replies + 1):
        ms = start_ms + int(n * 1000 / rate)
        body = {
            "event_id": f"{ticket}-e{n:09d}",
            "type": "ticket.replied",
            "occurred_at": _stamp(ms),
            "ticket_id": ticket,
            "author_role": "customer" if n % 2 else "agent",
            "public": True,
        }
        out.append(Record("tickets", key, orjson.dumps(body), ms / 1000))
        if n % status_every == 0:
            body = {
                "event_id": f"{ticket}-s{n:09d}",
                "type": "ticket.status_changed",
                "occurred_at": _stamp(ms),
                "ticket_id": ticket,
                "status": STATUS_CYCLE[changes % len(STATUS_CYCLE)],
            }
            changes += 1
            out.append(Record("tickets", key, orjson.dumps(body), ms / 1000))
    return out


async def fold_batches(
    store: Store, records: Sequence[Record], *, partition: int, conversation: str, batch: int
) -> list[dict[str, Any]]:
    """Fold ``records`` into ``store`` on ``partition``, ``batch`` at a time in their order,
    as the engine does a batch (``Store.load``, the timelines a batch needs whole,
    ``fold_batch``, ``Store.commit``); for each batch its events, its seconds and the
    stored size of ``conversation``'s state after it."""
    out: list[dict[str, Any]] = []
    for first in range(0, len(records), batch):
        chunk = [decode_record(r.value) for r in records[first : first + batch]]
        items = [
            Pending(event, r.topic_kind, first + n, ms, event.conversation_id)
            for n, ((event, ms), r) in enumerate(zip(chunk, records[first:], strict=False))
        ]
        started = time.perf_counter()
        await fold_commit(store, partition, items)
        seconds = time.perf_counter() - started
        size = await store.redis.hstrlen(store.base(partition) + "conv", conversation)
        out.append({"events": len(items), "seconds": seconds, "state_bytes": int(size)})
    return out


def timeline_flatness(batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean seconds of the first and the last tenth of the batches (the first batch,
    which creates the ticket, left out), their ratio (last over first), and the stored
    state's size after the first tenth and at the end."""
    timed = list(batches[1:])
    tenth = max(1, len(timed) // 10)
    early, late = timed[:tenth], timed[-tenth:]
    early_ms = 1000 * sum(b["seconds"] for b in early) / len(early)
    late_ms = 1000 * sum(b["seconds"] for b in late) / len(late)
    return {
        "batches": len(batches),
        "tenth": tenth,
        "first_ms": early_ms,
        "last_ms": late_ms,
        "ratio": late_ms / early_ms,
        "state_bytes_first": early[-1]["state_bytes"],
        "state_bytes_last": late[-1]["state_bytes"],
        "state_bytes_max": max(b["state_bytes"] for b in timed),
    }
