"""What the backlog section needs besides :mod:`benchmark.sla_state`: the groups its open
tickets are spread over, the backlog its events should give (counted here, by brute force
from the events, not by deskpulse's code), and a sample of the stored states.

The expected backlog follows docs/kpis.md ("Lifecycle and live state") in its plainest
form: a ticket is in the backlog at ``E`` when its creation is before ``E`` and its status
— ``new`` at the creation, then each ``ticket.status_changed`` strictly before ``E`` in
``(occurred_at, event_id)`` order, none after ``closed`` — is new, open, pending or hold.
The section's data lies within ``DESKPULSE_OPEN_TICKET_MAX_AGE``, so no ticket is dropped.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from deskpulse.models.events import parse_time
from deskpulse.models.wire import WireEvent
from deskpulse.streams.core import BatchResult
from deskpulse.streams.store import Store, text

__all__ = [
    "GROUPS",
    "OPEN_STATUSES",
    "backlog_mismatches",
    "counts_of",
    "expected_backlog",
    "sample_states",
    "trim_caught_up",
]

CHANNELS = ("email", "web", "phone", "social", "api")
QUEUES = ("billing", "technical", "sales", "general", "returns", "accounts")
PRIORITIES = ("low", "normal", "high", "urgent")
#: channel x queue x priority: the 120 groups the section's tickets are spread over evenly
GROUPS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(CHANNELS, QUEUES, PRIORITIES))
#: the statuses of the backlog, in the document's order
OPEN_STATUSES = ("new", "open", "pending", "hold")
_ALL = ("", "", "")


def expected_backlog(
    events: Iterable[tuple[WireEvent, int]], end_ms: int
) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per ``(channel, queue, priority)`` of the ticket's creation: the tickets of
    ``events`` in the backlog at ``end_ms`` by status, their ``total`` and the earliest
    creation among them (``oldest_ms``); groups with none are left out."""
    created: dict[str, tuple[int, str, tuple[str, str, str]]] = {}
    changes: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for event, ms in events:
        kind = event.type
        if kind == "ticket.created":
            ticket = event.ticket_id
            first = created.get(ticket)
            if first is None or (ms, event.event_id) < first[:2]:
                dims = (event.channel, event.queue, event.priority)
                created[ticket] = (ms, event.event_id, dims)
        elif kind == "ticket.status_changed":
            changes[event.ticket_id].append((ms, event.event_id, event.status))
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for ticket, (created_ms, _, dims) in created.items():
        if created_ms >= end_ms:
            continue
        status = "new"
        for ms, _, new in sorted(set(changes.get(ticket, ()))):
            if ms >= end_ms or status == "closed":
                break
            status = new
        if status not in OPEN_STATUSES:
            continue
        group = out.setdefault(dims, dict.fromkeys((*OPEN_STATUSES, "total"), 0))
        group[status] += 1
        group["total"] += 1
        group["oldest_ms"] = min(group.get("oldest_ms", created_ms), created_ms)
    return out


def backlog_mismatches(
    document: Mapping[str, Any],
    expected: Mapping[tuple[str, str, str], Mapping[str, int]],
    *,
    limit: int = 5,
) -> list[str]:
    """Where ``document`` (a KPI document grouped by channel, queue and priority, or not
    grouped) differs from ``expected`` (:func:`expected_backlog` at the document's window
    end): each group's count per status, its total and its oldest age; at most ``limit``
    of them, and how many more."""
    by = tuple(document["by"])
    if by not in (("channel", "queue", "priority"), ()):
        raise ValueError(f"a document grouped by {by} is not checked here")
    end_ms = int(parse_time(document["window"]["end"]).timestamp()) * 1000
    want: dict[tuple[str, ...], dict[str, int]] = {}
    for dims, counts in expected.items():
        key = dims if by else _ALL
        group = want.setdefault(key, dict.fromkeys((*OPEN_STATUSES, "total"), 0))
        for name in (*OPEN_STATUSES, "total"):
            group[name] += counts[name]
        if "oldest_ms" in counts:
            group["oldest_ms"] = min(
                group.get("oldest_ms", counts["oldest_ms"]), counts["oldest_ms"]
            )
    found: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for group in document["groups"]:
        key = tuple(group["key"][name] for name in by) if by else _ALL
        found[key] = group["backlog"]
    problems: list[str] = []
    for key in sorted(set(want) | set(found)):
        wanted = want.get(key, dict.fromkeys((*OPEN_STATUSES, "total"), 0))
        got = found.get(key) or {}
        name = "/".join(key) if by else "all groups"
        for field in (*OPEN_STATUSES, "total"):
            if int(got.get(field, 0)) != wanted[field]:
                problems.append(f"{name}: {field} {got.get(field, 0)}, expected {wanted[field]}")
        age = None if "oldest_ms" not in wanted else (end_ms - wanted["oldest_ms"]) / 1000
        if got.get("oldest_age_seconds") != age:
            problems.append(f"{name}: oldest age {got.get('oldest_age_seconds')} s, expected {age}")
    if len(problems) > limit:
        problems[limit:] = [f"and {len(problems) - limit} more"]
    return problems


async def sample_states(store: Store, partitions: int, per_partition: int) -> dict[str, bytes]:
    """Up to ``per_partition`` stored states of each partition (the first ``HSCAN`` finds:
    the hash table's order, which is no order of creation), id -> the stored bytes."""
    out: dict[str, bytes] = {}
    for partition in range(partitions):
        key = store.base(partition) + "conv"
        taken = 0
        async for field, raw in store.redis.hscan_iter(key, count=1000):
            out[text(field)] = raw if isinstance(raw, bytes) else raw.encode()
            taken += 1
            if taken >= per_partition:
                break
    return out


def counts_of(expected: Mapping[Any, Mapping[str, int]]) -> dict[str, int]:
    """The backlog of every group together, by status and in total."""
    return {
        name: sum(group[name] for group in expected.values()) for name in (*OPEN_STATUSES, "total")
    }


async def trim_caught_up(store: Store, partitions: int) -> int:
    """Commit nothing on each partition until its buckets past the retention are deleted;
    how many commits that took.

    Each commit deletes at most 500 old buckets. A live worker commits many times a minute
    and never falls behind; a week of events folded in a few hundred commits leaves days
    of buckets that a live worker would have deleted, and they would be weighed here as
    if every open ticket kept them."""
    commits = 0
    for partition in range(partitions):
        while True:
            meta, _ = await store.load(partition, [])
            cutoff_s = meta.watermark_ms // 1000 - store.config.retention_seconds
            if not await store.redis.zcount(store.base(partition) + "bidx", "-inf", cutoff_s):
                break
            result = BatchResult(watermark_ms=meta.watermark_ms)
            commits += await store.commit(partition, meta.version, result)
    return commits
