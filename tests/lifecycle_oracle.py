"""A brute-force oracle for the ticket lifecycle KPIs and the live state, for acceptance tests.

It answers the ``resolution`` and ``backlog`` sections of ``deskpulse kpis --json`` and the
``waiting``, ``longest_wait_seconds`` and ``handle_*`` fields of its ``chats`` section, from
raw record values, straight from docs/kpis.md. It shares no code with ``streams/`` on
purpose (only :func:`models.events.decode` to read records, and the SLA oracle's own
business calendar and policy matching, tests/sla_oracle.py), and it works differently from
an engine that folds events one by one: each conversation is read whole, sorted, and
every question is answered by looking at the whole sorted timeline at once.

Decisions, as this oracle takes them:

* Instants are whole milliseconds (event times rounded down); a repeated ``event_id``
  counts once (its first occurrence in record order); records that do not decode are
  ignored. A ticket or chat whose opener (``ticket.created`` / ``chat.requested``) never
  came has nothing: its events are held, then orphaned. The opener is the one with the
  smallest ``(ms, event_id)``; its time and dimensions are the conversation's.
* **Status.** A ticket's status events are ordered by ``(ms, event_id)``. It is ``new``
  from its creation ``c``; each status event sets the status from its time on, one dated
  at or before ``c`` from ``c`` (after the creation); one equal to the current status
  changes nothing; after ``closed`` every later one is ignored. The status *at* ``T`` is
  the one set by the last change strictly before ``T``; the ticket exists at ``T`` only
  if ``c < T``.
* **Solve and reopen.** A solve is a change into ``solved``, or into ``closed`` from any
  status but ``solved``; a reopen is a change from ``solved`` to ``new``, ``open``,
  ``pending`` or ``hold``. The *final solve* is the last solve not followed by a reopen
  (none if a reopen follows the last solve, or there is no solve).
* **Full resolution.** One sample per ticket with a final solve, at its instant ``S``:
  ``S - c`` of calendar time, and the business time of ``[c, S)`` on the schedule of the
  ticket's policy (the first whose ``match`` fits the creation's dimensions; pauses are
  not deducted), calendar time with no policy or no schedule. ``reopened``: a sampled
  ticket with at least one reopen before its final solve. ``one_touch``: a sampled ticket
  with no reopen and exactly one public agent reply dated at or before ``S`` (a reply at
  the solve's very millisecond counts, whatever the event ids).
* **Backlog at** ``E``: tickets with ``c < E``, whose status at ``E`` is ``new``,
  ``open``, ``pending`` or ``hold``, and not dropped before ``E``. A ticket whose last
  status (after all its events) is neither ``solved`` nor ``closed`` is dropped at
  ``X = max(c + open_ticket_max_age, last event + retention)``, where the last event is
  the latest dated event of the ticket of any kind (replies and private notes included);
  it is in no backlog at an ``E > X``. ``oldest_age_seconds = E -`` the earliest creation
  among the tickets counted.
* **Chats waiting at** ``E``: requested at ``r < E``, no ``chat.accepted``,
  ``chat.abandoned`` or ``chat.ended`` dated before ``E``, and ``E - r <`` the stale
  limit; ``longest_wait_seconds = E -`` the earliest such ``r``.
* **Handle time.** A chat whose earliest accept is at or before its earliest end or
  abandon (either kind) has a sample at that end or abandon: end minus accept.
* **Dimensions change** (``ticket.updated``, :func:`tests.oracle.dims_at`): a full
  resolution goes to the group in force at its final solve; a ticket in the backlog at
  ``E`` to the group set by the changes strictly before ``E`` (as its status is), so a
  ticket moved at ``M`` is in the old group's backlog at ``E <= M`` and in the new one's
  after. The business time stays on the schedule of the policy at the creation.
* Samples count in ``[E - width, E)`` by their instant, ``E`` being ``at`` rounded up to a
  bucket boundary; the backlog and the waiting chats are read at ``E``. A group (the
  creation's dimensions projected onto ``by``) is listed when it has a sample in the
  window, a backlog or a waiting chat; without ``by`` the one group always is.
* Quantiles are the "lower" order statistic ``sorted(xs)[floor(q * (n - 1))]``, as the
  other oracles take them; :func:`compare` allows a sketch 1 % of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from deskpulse.models.events import (
    ChatAbandoned,
    ChatAccepted,
    ChatEnded,
    ChatRequested,
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
    TicketUpdated,
)

# one comparison for every oracle's documents: the lifecycle's quantiles (handle time's
# included) are among its quantile fields
from .oracle import compare, dims_at, distinct_events
from .sla_oracle import SlaRules, kpi_document, to_ms

__all__ = [
    "BACKLOG_STATUSES",
    "DEFAULT_CHAT_STALE_AFTER_S",
    "DEFAULT_OPEN_TICKET_MAX_AGE_S",
    "DEFAULT_RETENTION_S",
    "ChatFacts",
    "Lifecycle",
    "TicketFacts",
    "compare",
    "evaluate",
    "lifecycle_document",
    "merge_documents",
    "window_end_ms",
]

DEFAULT_OPEN_TICKET_MAX_AGE_S = 30 * 86_400
DEFAULT_RETENTION_S = 48 * 3600
DEFAULT_CHAT_STALE_AFTER_S = 3600
DIMENSIONS = ("channel", "queue", "priority")
BACKLOG_STATUSES = ("new", "open", "pending", "hold")
_DONE = ("solved", "closed")
_QUANTILES = (
    ("p50_seconds", Fraction(1, 2)),
    ("p90_seconds", Fraction(9, 10)),
    ("p95_seconds", Fraction(19, 20)),
)


def _lower(ordered: Sequence[int], q: Fraction) -> float | None:
    """The "lower" order statistic of sorted millisecond samples, in seconds."""
    return ordered[math.floor(q * (len(ordered) - 1))] / 1000 if ordered else None


def _durations(samples_ms: Sequence[int], quantiles: int = 3, prefix: str = "") -> dict[str, Any]:
    """Mean and the first ``quantiles`` of p50, p90, p95 of millisecond samples, in seconds."""
    ordered = sorted(samples_ms)
    out: dict[str, Any] = {
        prefix + "mean_seconds": sum(ordered) / len(ordered) / 1000 if ordered else None
    }
    for name, q in _QUANTILES[:quantiles]:
        out[prefix + name] = _lower(ordered, q)
    return out


def window_end_ms(at_s: float, bucket_seconds: int = 60) -> int:
    """``E``: ``at_s`` rounded up to a bucket boundary (a boundary stays put), in ms."""
    return math.ceil(Fraction(at_s) / bucket_seconds) * bucket_seconds * 1000


# -- one ticket ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TicketFacts:
    """What the lifecycle KPIs need of one ticket (instants in ms).

    ``changes`` are the status changes in force, ``(instant, status)``, from the creation's
    ``new`` on, in timeline order; ``solves`` and ``reopens`` their instants."""

    ticket_id: str
    created_ms: int
    dimensions: dict[str, str]
    changes: tuple[tuple[int, str], ...]
    solves: tuple[int, ...]
    reopens: tuple[int, ...]
    final_solve_ms: int | None
    resolution_ms: int | None
    resolution_business_ms: int | None
    reopened: bool
    one_touch: bool
    last_event_ms: int
    #: when it leaves the state unsolved; ``None`` if it ends solved or closed
    dropped_ms: int | None
    created: TicketCreated | None = None
    updates: tuple[TicketUpdated, ...] = ()

    def dims_at(self, instant_ms: int) -> dict[str, str]:
        """The dimensions in force for a sample at ``instant_ms`` (for the backlog at
        ``E``: ``E - 1``, the changes strictly before ``E``)."""
        if self.created is None or not self.updates:
            return self.dimensions
        return dims_at(self.created, self.updates, instant_ms)

    def status_at(self, instant_ms: int) -> str | None:
        """The status set by the last change strictly before ``instant_ms``; ``None`` when
        the ticket does not exist yet (created at or after it)."""
        if self.created_ms >= instant_ms:
            return None
        current = None
        for at_ms, status in self.changes:
            if at_ms >= instant_ms:
                break
            current = status
        return current

    def backlog_status(self, end_ms: int) -> str | None:
        """The status under which the ticket counts in the backlog at ``end_ms``, if any."""
        if self.dropped_ms is not None and end_ms > self.dropped_ms:
            return None
        status = self.status_at(end_ms)
        return status if status in BACKLOG_STATUSES else None


def _ticket(
    created: TicketCreated,
    statuses: Sequence[TicketStatusChanged],
    replies: Sequence[TicketReplied],
    last_event_ms: int,
    rules: SlaRules | None,
    retention_ms: int,
    max_age_ms: int,
    updates: Sequence[TicketUpdated] = (),
) -> TicketFacts:
    created_ms = to_ms(created.occurred_at)
    dimensions = dims_at(created, updates, created_ms)
    ordered = sorted((to_ms(e.occurred_at), e.event_id, e.status) for e in statuses)
    status = "new"
    changes = [(created_ms, "new")]
    marks: list[tuple[str, int]] = []  # ("solve" | "reopen", instant) in timeline order
    for at_ms, _, value in ordered:
        if status == "closed" or value == status:
            continue
        at_ms = max(at_ms, created_ms)
        if value == "solved" or (value == "closed" and status != "solved"):
            marks.append(("solve", at_ms))
        elif status == "solved" and value in BACKLOG_STATUSES:
            marks.append(("reopen", at_ms))
        status = value
        changes.append((at_ms, value))

    solve_positions = [index for index, (kind, _) in enumerate(marks) if kind == "solve"]
    final: int | None = None
    if solve_positions:
        last = solve_positions[-1]
        if not any(kind == "reopen" for kind, _ in marks[last + 1 :]):
            final = last
    final_ms = None if final is None else marks[final][1]
    resolution_ms = business_ms = None
    reopened = one_touch = False
    if final is not None and final_ms is not None:
        resolution_ms = final_ms - created_ms
        calendar = None
        policy = None if rules is None else rules.policy_for(dimensions)
        if rules is not None and policy is not None and policy.schedule is not None:
            calendar = rules.calendars[policy.schedule]
        business_ms = (
            resolution_ms if calendar is None else calendar.business_ms(created_ms, final_ms)
        )
        reopens_before = sum(1 for kind, _ in marks[:final] if kind == "reopen")
        reopened = reopens_before > 0
        agent_replies = [
            reply
            for reply in replies
            if reply.public
            and reply.author_role == "agent"
            and to_ms(reply.occurred_at) <= final_ms
        ]
        one_touch = reopens_before == 0 and len(agent_replies) == 1
    dropped_ms = None
    if status not in _DONE:
        dropped_ms = max(created_ms + max_age_ms, last_event_ms + retention_ms)
    return TicketFacts(
        ticket_id=created.ticket_id,
        created_ms=created_ms,
        dimensions=dimensions,
        changes=tuple(changes),
        solves=tuple(at for kind, at in marks if kind == "solve"),
        reopens=tuple(at for kind, at in marks if kind == "reopen"),
        final_solve_ms=final_ms,
        resolution_ms=resolution_ms,
        resolution_business_ms=business_ms,
        reopened=reopened,
        one_touch=one_touch,
        last_event_ms=last_event_ms,
        dropped_ms=dropped_ms,
        created=created,
        updates=tuple(updates),
    )


# -- one chat -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatFacts:
    """What the live chat state and handle time need of one chat (instants in ms)."""

    chat_id: str
    requested_ms: int
    dimensions: dict[str, str]
    #: the earliest accept, abandon or end: the chat stops waiting from then on
    first_outcome_ms: int | None
    #: ``(accepted, finished)`` when answered and ended or abandoned afterwards
    handled: tuple[int, int] | None

    def waiting_at(self, end_ms: int, stale_after_ms: int) -> bool:
        """Requested before ``end_ms``, no outcome before it, and not stale yet."""
        return (
            self.requested_ms < end_ms
            and (self.first_outcome_ms is None or self.first_outcome_ms >= end_ms)
            and end_ms - self.requested_ms < stale_after_ms
        )


def _chat(requested: ChatRequested, accepts: Sequence[int], finishes: Sequence[int]) -> ChatFacts:
    outcomes = [*accepts, *finishes]
    handled = None
    if accepts and finishes and min(accepts) <= min(finishes):
        handled = (min(accepts), min(finishes))
    return ChatFacts(
        chat_id=requested.chat_id,
        requested_ms=to_ms(requested.occurred_at),
        dimensions={name: getattr(requested, name) for name in DIMENSIONS},
        first_outcome_ms=min(outcomes) if outcomes else None,
        handled=handled,
    )


# -- the whole data set -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """Every ticket and chat of a data set, by id."""

    tickets: dict[str, TicketFacts]
    chats: dict[str, ChatFacts]


def _earlier(candidate: Any, current: Any | None) -> bool:
    if current is None:
        return True
    return (to_ms(candidate.occurred_at), candidate.event_id) < (
        to_ms(current.occurred_at),
        current.event_id,
    )


def evaluate(
    values: Iterable[bytes],
    rules: SlaRules | None = None,
    *,
    retention_s: int = DEFAULT_RETENTION_S,
    open_ticket_max_age_s: int = DEFAULT_OPEN_TICKET_MAX_AGE_S,
) -> Lifecycle:
    """Every ticket and chat of the raw record values (any order, repeats, rejects).

    ``rules`` give the business calendars of the resolution's ``business`` time (``None``:
    calendar time for every ticket); ``retention_s`` and ``open_ticket_max_age_s`` decide
    when an unsolved ticket leaves the state."""
    ticket_openers: dict[str, TicketCreated] = {}
    chat_openers: dict[str, ChatRequested] = {}
    statuses: dict[str, list[TicketStatusChanged]] = {}
    replies: dict[str, list[TicketReplied]] = {}
    last_ms: dict[str, int] = {}
    accepts: dict[str, list[int]] = {}
    finishes: dict[str, list[int]] = {}
    updates: dict[str, list[TicketUpdated]] = {}
    for event in distinct_events(values):
        if isinstance(event, TicketCreated | TicketReplied | TicketStatusChanged | TicketUpdated):
            event_ms = to_ms(event.occurred_at)
            last_ms[event.ticket_id] = max(last_ms.get(event.ticket_id, event_ms), event_ms)
        if isinstance(event, TicketCreated):
            if _earlier(event, ticket_openers.get(event.ticket_id)):
                ticket_openers[event.ticket_id] = event
        elif isinstance(event, TicketStatusChanged):
            statuses.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, TicketUpdated):
            updates.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, TicketReplied):
            replies.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, ChatRequested):
            if _earlier(event, chat_openers.get(event.chat_id)):
                chat_openers[event.chat_id] = event
        elif isinstance(event, ChatAccepted):
            accepts.setdefault(event.chat_id, []).append(to_ms(event.occurred_at))
        elif isinstance(event, ChatAbandoned | ChatEnded):
            finishes.setdefault(event.chat_id, []).append(to_ms(event.occurred_at))
    tickets = {
        ticket_id: _ticket(
            created,
            statuses.get(ticket_id, []),
            replies.get(ticket_id, []),
            last_ms[ticket_id],
            rules,
            retention_s * 1000,
            open_ticket_max_age_s * 1000,
            updates.get(ticket_id, []),
        )
        for ticket_id, created in ticket_openers.items()
    }
    chats = {
        chat_id: _chat(requested, accepts.get(chat_id, []), finishes.get(chat_id, []))
        for chat_id, requested in chat_openers.items()
    }
    return Lifecycle(tickets, chats)


# -- the KPI document ---------------------------------------------------------------------------


@dataclass
class _Group:
    resolution_ms: list[int] = field(default_factory=list)
    business_ms: list[int] = field(default_factory=list)
    reopened: int = 0
    one_touch: int = 0
    backlog: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BACKLOG_STATUSES, 0))
    oldest_created_ms: int | None = None
    waiting: int = 0
    earliest_request_ms: int | None = None
    handle_ms: list[int] = field(default_factory=list)

    def listed(self) -> bool:
        return bool(
            self.resolution_ms or self.handle_ms or any(self.backlog.values()) or self.waiting
        )

    def sections(self, end_ms: int) -> dict[str, Any]:
        count = len(self.resolution_ms)
        total = sum(self.backlog.values())
        return {
            "resolution": {
                "count": count,
                **_durations(self.resolution_ms),
                "business": _durations(self.business_ms),
                "reopened": self.reopened,
                "reopen_ratio": self.reopened / count if count else None,
                "one_touch": self.one_touch,
                "one_touch_ratio": self.one_touch / count if count else None,
            },
            "backlog": {
                **self.backlog,
                "total": total,
                "oldest_age_seconds": (
                    None
                    if self.oldest_created_ms is None
                    else (end_ms - self.oldest_created_ms) / 1000
                ),
            },
            "chats": {
                "waiting": self.waiting,
                "longest_wait_seconds": (
                    None
                    if self.earliest_request_ms is None
                    else (end_ms - self.earliest_request_ms) / 1000
                ),
                **_durations(self.handle_ms, quantiles=2, prefix="handle_"),
            },
        }


def _stamp(instant_ms: int) -> str:
    return datetime.fromtimestamp(instant_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lifecycle_document(
    lifecycle: Lifecycle,
    *,
    at_s: float,
    width_s: int,
    by: Sequence[str] = (),
    bucket_seconds: int = 60,
    chat_stale_after_s: int = DEFAULT_CHAT_STALE_AFTER_S,
) -> dict[str, Any]:
    """The lifecycle parts of ``deskpulse kpis --json`` for the window of ``width_s``
    ending at ``at_s``: ``{"window", "by", "groups"}``, each group ``{"key", "resolution",
    "backlog", "chats"}`` with only the lifecycle fields in ``chats``."""
    for dimension in by:
        if dimension not in DIMENSIONS:
            raise ValueError(f"cannot group by {dimension!r}")
    end_ms = window_end_ms(at_s, bucket_seconds)
    start_ms = end_ms - width_s * 1000
    stale_ms = chat_stale_after_s * 1000

    def inside(instant_ms: int) -> bool:
        return start_ms <= instant_ms < end_ms

    groups: dict[tuple[str, ...], _Group] = {}

    def group(dimensions: Mapping[str, str]) -> _Group:
        return groups.setdefault(tuple(dimensions[name] for name in by), _Group())

    for ticket in lifecycle.tickets.values():
        if ticket.final_solve_ms is not None and inside(ticket.final_solve_ms):
            assert ticket.resolution_ms is not None and ticket.resolution_business_ms is not None
            target = group(ticket.dims_at(ticket.final_solve_ms))
            target.resolution_ms.append(ticket.resolution_ms)
            target.business_ms.append(ticket.resolution_business_ms)
            target.reopened += ticket.reopened
            target.one_touch += ticket.one_touch
        status = ticket.backlog_status(end_ms)
        if status is not None:
            target = group(ticket.dims_at(end_ms - 1))
            target.backlog[status] += 1
            if target.oldest_created_ms is None or ticket.created_ms < target.oldest_created_ms:
                target.oldest_created_ms = ticket.created_ms
    for chat in lifecycle.chats.values():
        if chat.waiting_at(end_ms, stale_ms):
            target = group(chat.dimensions)
            target.waiting += 1
            if target.earliest_request_ms is None or chat.requested_ms < target.earliest_request_ms:
                target.earliest_request_ms = chat.requested_ms
        if chat.handled is not None and inside(chat.handled[1]):
            group(chat.dimensions).handle_ms.append(chat.handled[1] - chat.handled[0])

    keys = sorted(key for key, value in groups.items() if value.listed()) if by else [()]
    return {
        "window": {"start": _stamp(start_ms), "end": _stamp(end_ms), "seconds": width_s},
        "by": list(by),
        "groups": [
            {
                "key": dict(zip(by, key, strict=True)),
                **groups.get(key, _Group()).sections(end_ms),
            }
            for key in keys
        ],
    }


def _empty_group() -> dict[str, Any]:
    """A whole group without a single sample, as the other oracles write one."""
    group: dict[str, Any] = kpi_document({}, [], at_s=0, width_s=60, by=())["groups"][0]
    return group


def merge_documents(base: Mapping[str, Any], lifecycle: Mapping[str, Any]) -> dict[str, Any]:
    """The whole expected document: ``base`` (e.g. from :func:`tests.sla_oracle.kpi_document`
    for the same window and ``by``) with the lifecycle sections of ``lifecycle`` in every
    group. A group listed by either is listed; its missing parts are those of no samples."""
    if base["window"] != lifecycle["window"] or base["by"] != lifecycle["by"]:
        raise ValueError("the documents are for different windows or groupings")
    by = list(base["by"])
    empty_lifecycle = lifecycle_document(Lifecycle({}, {}), at_s=0, width_s=60, by=())["groups"][0]

    def key_of(group: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(group["key"][name] for name in by)

    base_groups = {key_of(group): group for group in base["groups"]}
    lifecycle_groups = {key_of(group): group for group in lifecycle["groups"]}
    keys = sorted(base_groups.keys() | lifecycle_groups.keys()) if by else [()]
    documents = []
    for key in keys:
        merged = dict(base_groups.get(key) or _empty_group())
        merged["key"] = dict(zip(by, key, strict=True))
        extra = lifecycle_groups.get(key, empty_lifecycle)
        merged["resolution"] = extra["resolution"]
        merged["backlog"] = extra["backlog"]
        merged["chats"] = {**merged["chats"], **extra["chats"]}
        documents.append(merged)
    return {"window": dict(base["window"]), "by": by, "groups": documents}
