"""A brute-force oracle for the agents' presence KPIs, for acceptance tests.

It answers the ``agents`` object of ``deskpulse kpis --json`` (no ``by``) from raw record
values, straight from docs/kpis.md ("Agents"). It shares no code with ``streams/`` on purpose
(only :func:`models.events.decode` to read records), and works differently from the engine,
which keeps level steps and their time-weighted sums: here each agent's events are sorted
and every question is answered by walking them.

Decisions, as this oracle takes them:

* Instants are whole milliseconds (event times rounded down); a repeated ``event_id``
  counts once (its first occurrence); records that do not decode, and events of other
  types, are ignored.
* An agent's status events are ordered by ``(ms, event_id)``. Each one sets the agent's
  status from its instant until the agent's next event, but for at most the retention:
  an agent silent for longer than that is in no status until its next event.
* **Agents at** ``E``: an agent counts in the status of its last event strictly before
  ``E``, if ``E`` is at most the retention after that event.
* **Occupancy over** ``[S, E)``: the time agents spent busy over the time they spent
  available or busy, each status's time being the length of its intervals above clipped
  to the window; ``None`` when both are 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from deskpulse.models.events import AgentStatusChanged
from tests.oracle import distinct_events

STATUSES = ("available", "busy", "away", "offline")


def _agents(records: Iterable[bytes]) -> dict[str, list[tuple[int, str, str]]]:
    """Each agent's status events, ``(ms, event_id, status)``, sorted."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    for event in distinct_events(records):
        if isinstance(event, AgentStatusChanged):
            ms = math.floor(event.occurred_at.timestamp() * 1000)
            out.setdefault(event.agent_id, []).append((ms, event.event_id, event.status))
    for events in out.values():
        events.sort()
    return out


def _intervals(events: list[tuple[int, str, str]], retention_ms: int) -> list[tuple[int, int, str]]:
    """``(from, to, status)``: each event's status until the next event, at most the
    retention."""
    out = []
    for i, (ms, _, status) in enumerate(events):
        until = ms + retention_ms
        if i + 1 < len(events):
            until = min(until, events[i + 1][0])
        out.append((ms, until, status))
    return out


def with_agents(
    document: dict[str, Any],
    records: Iterable[bytes],
    *,
    at_s: float,
    width_s: int,
    bucket_seconds: int = 60,
    retention_s: int = 48 * 3600,
) -> dict[str, Any]:
    """``document`` (an oracle's, for ``at_s`` and ``width_s``) with the ``agents`` object
    in its one group when it has no grouping."""
    if not document["by"]:
        end_ms = math.ceil(at_s / bucket_seconds) * bucket_seconds * 1000
        document["groups"][0]["agents"] = agents_document(
            records,
            start_ms=end_ms - width_s * 1000,
            end_ms=end_ms,
            retention_ms=retention_s * 1000,
        )
    return document


def agents_document(
    records: Iterable[bytes], *, start_ms: int, end_ms: int, retention_ms: int
) -> dict[str, Any]:
    """The ``agents`` object for the window ``[start_ms, end_ms)``."""
    counts = dict.fromkeys(STATUSES, 0)
    spent = {"available": 0, "busy": 0}
    for events in _agents(records).values():
        before = [e for e in events if e[0] < end_ms]
        if before and end_ms - before[-1][0] <= retention_ms:
            counts[before[-1][2]] += 1
        for since, until, status in _intervals(events, retention_ms):
            if status in spent:
                spent[status] += max(0, min(until, end_ms) - max(since, start_ms))
    total = spent["busy"] + spent["available"]
    return {**counts, "occupancy_ratio": spent["busy"] / total if total else None}
