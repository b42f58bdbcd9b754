"""Agents' presence as pure functions of their status events (docs/kpis.md, "Agents").

Nothing here reads the clock or keeps state. An agent's state is its status events, each
``event id -> (ms, code)`` (:data:`STATUS_CODES`), walked in ``(ms, event_id)`` order: a
status holds from its event until the agent's next status event, or for at most the
retention after it (an agent heard nothing of for that long is in no status: presence is
bounded by retention like conversations). An event setting the status in force changes
nothing.

Presence is a state at an instant, kept like the backlog (:mod:`streams.lifecycle`): each
stretch ``[a, b)`` in a status adds one to that status's level at ``a`` and takes it back at
``b`` (:func:`presence_steps`), so the agents in a status at ``E`` are the sum of the steps
before ``E``. Occupancy over a window needs the time spent in a status, the integral of its
level over ``[S, E)``; with each step ``d`` at ``t`` also kept as ``d x t``
(:data:`TIME_FIELDS`), that integral is exact from three sums (:func:`time_in_status_ms`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "LEVEL_FIELDS",
    "PRESENCE_PREFIX",
    "STATUS_CODES",
    "TIME_FIELDS",
    "Step",
    "compact",
    "occupancy_ratio",
    "presence_document",
    "presence_steps",
    "status_at",
    "time_in_status_ms",
]

#: an agent status's one-letter code, in the order documents list them
STATUS_CODES: dict[str, str] = {"available": "a", "busy": "b", "away": "w", "offline": "o"}
_NAMES = {code: name for name, code in STATUS_CODES.items()}
#: the prefix of every presence field: stored over all groups only, never per group
PRESENCE_PREFIX = "ag"
#: a status's field of level steps (``ag:a`` ... ``ag:o``), kept in the levels and buckets
LEVEL_FIELDS: dict[str, str] = {code: "ag:" + code for code in STATUS_CODES.values()}
#: the statuses occupancy reads, with their fields of ``step x ms`` (in the buckets only)
TIME_FIELDS: dict[str, str] = {"a": "agt:a", "b": "agt:b"}

#: ``(ms, field, value)``: a level step, or a step's ``step x ms``
Step = tuple[int, str, int]


def _stretches(
    entries: Iterable[tuple[str, tuple[int, str]]], retention_ms: int
) -> list[tuple[int, int, str]]:
    """The agent's stretches in a status, ``(from ms, to ms, code)``, in time order."""
    ordered = sorted((ms, event_id, code) for event_id, (ms, code) in entries)
    out: list[tuple[int, int, str]] = []
    start = code = None
    last_ms = 0
    for ms, _, new in ordered:
        if start is not None and code is not None:
            end = min(ms, last_ms + retention_ms)
            if new == code and ms <= last_ms + retention_ms:
                last_ms = ms  # the same status again: the stretch goes on
                continue
            if end > start:
                out.append((start, end, code))
        start, code, last_ms = ms, new, ms
    if start is not None and code is not None:
        out.append((start, last_ms + retention_ms, code))
    return out


def presence_steps(entries: Iterable[tuple[str, tuple[int, str]]], retention_ms: int) -> list[Step]:
    """An agent's level steps and, for available and busy, their ``step x ms``."""
    out: list[Step] = []
    for start, end, code in _stretches(entries, retention_ms):
        level = LEVEL_FIELDS[code]
        out.append((start, level, 1))
        out.append((end, level, -1))
        timed = TIME_FIELDS.get(code)
        if timed is not None:
            out.append((start, timed, start))
            out.append((end, timed, -end))
    return out


def status_at(
    entries: Iterable[tuple[str, tuple[int, str]]], retention_ms: int, at_ms: int
) -> str | None:
    """The agent's status at ``at_ms`` (the last status event strictly before it, for at
    most the retention), ``None`` if none."""
    # a step at t counts for every instant after t: in a stretch [a, b) at every E in (a, b]
    for start, end, code in _stretches(entries, retention_ms):
        if start < at_ms <= end:
            return _NAMES[code]
    return None


def compact(timeline: dict[str, tuple[int, str]], horizon_ms: int) -> bool:
    """Drop an agent's status events before ``horizon_ms`` but the latest of them (which
    sets the status in force at the horizon); ``True`` if any was dropped.

    What the dropped events contributed lies before that latest event, behind the horizon,
    and sums to nothing in the levels: the steps at and after the horizon are the same.
    """
    old = [(ms, event_id) for event_id, (ms, _) in timeline.items() if ms < horizon_ms]
    if len(old) < 2:
        return False
    old.sort()
    for _, event_id in old[:-1]:
        del timeline[event_id]
    return True


def time_in_status_ms(
    level_at_end: int, steps_in_window: int, timed_in_window: int, start_ms: int, end_ms: int
) -> int:
    """The agent-milliseconds spent in a status over ``[start_ms, end_ms)``: the integral
    of its level, from the level at the end, and the sums of its steps ``d`` and of
    ``d x t`` at the instants ``t`` within the window.

    With ``L(S) = L(E) - Σd``, the integral is ``L(S)·(E - S) + Σ d·(E - t)``, which is
    ``L(E)·(E - S) + S·Σd - Σ d·t``.
    """
    return level_at_end * (end_ms - start_ms) + start_ms * steps_in_window - timed_in_window


def occupancy_ratio(busy_ms: int, available_ms: int) -> float | None:
    """Busy time over available and busy time; ``None`` without either."""
    total = busy_ms + available_ms
    return busy_ms / total if total > 0 else None


def presence_document(
    levels: Mapping[str, int], window: Mapping[str, int], start_s: int, end_s: int
) -> dict[str, Any]:
    """The ``agents`` object of a document: agents by status at the window's end (from the
    levels at the end, ``levels``) and occupancy over the window (``window``: the presence
    fields summed over the window's buckets)."""
    out: dict[str, Any] = {
        name: int(levels.get(LEVEL_FIELDS[code], 0)) for name, code in STATUS_CODES.items()
    }
    start_ms, end_ms = start_s * 1000, end_s * 1000
    spent = {
        code: time_in_status_ms(
            int(levels.get(LEVEL_FIELDS[code], 0)),
            int(window.get(LEVEL_FIELDS[code], 0)),
            int(window.get(timed, 0)),
            start_ms,
            end_ms,
        )
        for code, timed in TIME_FIELDS.items()
    }
    out["occupancy_ratio"] = occupancy_ratio(spent["b"], spent["a"])
    return out
