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
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from deskpulse.models.wire import decode_record
from deskpulse.streams.core import Pending, fold_batch
from deskpulse.streams.devtools.simulate import Record
from deskpulse.streams.partitioner import ConversationPartitions
from deskpulse.streams.store import Store

__all__ = [
    "flatness",
    "fold_in_spans",
    "long_ticket",
    "merged",
    "partition_of",
    "script_times_us",
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
            Pending(event, topic, offsets[partition, topic], ms)
        )
        offsets[partition, topic] += 1
    conversation = "t:" + ticket
    seen = 0
    out: list[dict[str, Any]] = []
    for (_, partition), batch in sorted(by_span.items()):
        started = time.perf_counter()
        ids = [p.event.conversation_id for p in batch]
        event_ids = [(c, p.event.event_id) for c, p in zip(ids, batch, strict=True)]
        meta, states = await store.load(partition, ids, event_ids)
        result = fold_batch(
            batch,
            states,
            watermark_ms=meta.watermark_ms,
            applied_offsets=meta.offsets,
            config=store.config,
            known=meta.known,
        )
        if not await store.commit(partition, meta.version, result):
            raise RuntimeError(f"partition {partition} moved under the benchmark's batch")
        seconds = time.perf_counter() - started
        if partition == target:
            mine = sum(1 for c in ids if c == conversation)
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
