"""Days of ticket lifecycles and chats for the lifecycle acceptance tests, and the instants
worth reading them at.

:func:`build_lifecycle_records` makes a seeded stretch of support traffic whose tickets go
through every turn the lifecycle KPIs and the backlog care about (see :data:`TICKET_STORIES`
and :data:`CHAT_STORIES`), as input events in :class:`Record` form, delivered out of
order with some sent twice. :func:`interesting_instants` picks the ``--at`` instants where
the rules have their edges: a status change or a creation exactly at a window's end, a
final solve on a bucket boundary, an unsolved ticket's drop, a chat going stale. The
expected answers come from tests/lifecycle_oracle.py, never from ``streams/``.

What the engine may rely on, so that the oracle's answer is the one docs/kpis.md gives
for a worker that saw these records: every record decodes; the delivery is shuffled only
locally (a record is at most ``2 x max_delay_s`` behind the newest event time delivered
before it, far less than the retention); and no event of a ticket comes after the ticket
could have left the state (more than the retention after its previous event, unless the
ticket is unsolved then and the event comes before ``open_ticket_max_age`` after the
creation), with the delivery's disorder and an hour to spare. A story that would break
this is cut short before the event that breaks it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from deskpulse.streams.devtools.simulate import Record

from .lifecycle_oracle import (
    DEFAULT_CHAT_STALE_AFTER_S,
    DEFAULT_OPEN_TICKET_MAX_AGE_S,
    DEFAULT_RETENTION_S,
    Lifecycle,
)
from .sla_oracle import rfc3339_ms

__all__ = [
    "CHAT_STORIES",
    "POLICIES",
    "SCHEDULES",
    "START_S",
    "TICKET_STORIES",
    "Instant",
    "LifecycleData",
    "build_lifecycle_records",
    "interesting_instants",
]

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
#: Thursday 2026-10-22 00:00Z: four days run over Berlin's fall back (Sunday 2026-10-25)
START_S = int(datetime(2026, 10, 22, tzinfo=UTC).timestamp())
#: the margin kept from every instant at which a ticket could leave the state
_MARGIN_MS = HOUR_MS

CHANNELS = ("email", "web", "phone", "social", "api")
QUEUES = ("billing", "technical", "general", "sales")
PRIORITIES = ("low", "normal", "high", "urgent")

#: The business calendars of the resolution's business time: an office in Berlin.
SCHEDULES: dict[str, Any] = {
    "berlin-office": {
        "timezone": "Europe/Berlin",
        "hours": {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
        "holidays": ["2026-10-23"],
    }
}
#: ``billing`` on the Berlin office, ``technical`` in calendar time, the rest without SLA.
POLICIES: list[dict[str, Any]] = [
    {
        "name": "billing-office",
        "match": {"queue": ["billing"]},
        "schedule": "berlin-office",
        "targets": {"resolution": {"urgent": 4 * 3600, "high": 8 * 3600, "normal": 16 * 3600}},
        "pause": ["pending", "hold"],
        "warn_at": [],
    },
    {
        "name": "technical-clock",
        "match": {"queue": ["technical"]},
        "targets": {"first_response": {"urgent": 3600, "high": 4 * 3600}},
        "warn_at": [],
    },
]


# -- stories --------------------------------------------------------------------------------


class _Timeline:
    """One conversation's events as they are made: a clock that moves forward, in
    milliseconds, landing on a whole minute (a bucket boundary) now and then."""

    def __init__(self, rng: random.Random, conversation: str, start_ms: int) -> None:
        self.rng = rng
        self.conversation = conversation
        self.now_ms = start_ms
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (ms, event_id, body)

    def wait(self, low_s: float, high_s: float) -> int:
        """Move on by a random stretch; a third of the time onto the next whole minute."""
        self.now_ms += round(self.rng.uniform(low_s, high_s) * 1000)
        if self.rng.random() < 0.35:
            self.now_ms = -(-self.now_ms // MINUTE_MS) * MINUTE_MS
        return self.now_ms

    def add(self, event_type: str, at_ms: int | None = None, **fields: Any) -> str:
        at_ms = self.now_ms if at_ms is None else at_ms
        event_id = fields.pop("event_id", None) or f"{self.conversation}/{len(self.events):02d}"
        self.events.append((at_ms, event_id, {"type": event_type, **fields}))
        return event_id


class _Ticket(_Timeline):
    def reply(self, role: str = "agent", public: bool = True, **fields: Any) -> None:
        self.add("ticket.replied", author_role=role, public=public, **fields)

    def status(self, value: str, at_ms: int | None = None, **fields: Any) -> None:
        self.add("ticket.status_changed", at_ms, status=value, **fields)

    def some_minutes(self) -> None:
        self.wait(60, 3 * 3600)


def _one_touch(t: _Ticket) -> None:
    t.some_minutes()
    t.reply()
    t.some_minutes()
    t.status("solved")
    if t.rng.random() < 0.5:  # closed from solved: no second solve
        t.wait(3600, 20 * 3600)
        t.status("closed")


def _same_instant(t: _Ticket) -> None:
    # the only agent reply and the solve at one millisecond, event ids either way round
    t.some_minutes()
    first, second = f"{t.conversation}/a", f"{t.conversation}/b"
    reply_first = t.rng.random() < 0.5
    t.reply(event_id=first if reply_first else second)
    t.status("solved", event_id=second if reply_first else first)


def _conversation(t: _Ticket) -> None:
    t.some_minutes()
    t.reply()
    for _ in range(t.rng.randrange(1, 4)):
        t.wait(300, 4 * 3600)
        t.reply("customer")
        if t.rng.random() < 0.4:
            t.wait(30, 600)
            t.reply(t.rng.choice(("agent", "customer")), public=False)  # a private note
        if t.rng.random() < 0.2:
            t.wait(1, 60)
            t.reply("system")
        t.wait(60, 2 * 3600)
        t.reply()
    t.some_minutes()
    t.status(t.rng.choice(("solved", "solved", "closed")))


def _pending_and_hold(t: _Ticket) -> None:
    t.some_minutes()
    t.status("open")
    t.reply()
    t.some_minutes()
    t.status("pending")
    t.wait(1800, 10 * 3600)
    t.reply("customer")
    t.status("open")
    t.some_minutes()
    t.status("hold")
    t.wait(1800, 8 * 3600)
    t.status("open")
    t.reply()
    t.some_minutes()
    t.status("solved")


def _reopened(t: _Ticket) -> None:
    t.some_minutes()
    t.reply()
    for _ in range(t.rng.choice((1, 1, 2))):
        t.some_minutes()
        t.status("solved")
        t.wait(600, 12 * 3600)
        t.reply("customer")
        t.status(t.rng.choice(("open", "open", "new", "pending", "hold")))
        t.some_minutes()
        t.reply()
    t.some_minutes()
    t.status(t.rng.choice(("solved", "closed")))


def _reopened_and_left(t: _Ticket) -> None:
    # solved, reopened, never solved again: no sample, in the backlog until dropped
    t.some_minutes()
    t.reply()
    t.some_minutes()
    t.status("solved")
    t.wait(600, 6 * 3600)
    t.reply("customer")
    t.status("open")
    if t.rng.random() < 0.5:
        t.some_minutes()
        t.reply()


def _closed_then_ignored(t: _Ticket) -> None:
    # closed from open (a solve); later statuses and replies change nothing
    t.some_minutes()
    t.reply()
    t.status("open")
    t.some_minutes()
    t.status("closed")
    t.wait(60, 3600)
    t.status(t.rng.choice(("solved", "open", "new")))
    t.wait(60, 3600)
    t.status("open")
    t.reply("customer")
    t.wait(60, 600)
    t.reply()


def _closed_untouched(t: _Ticket) -> None:
    # closed while new, no reply at all: a solve, never one touch
    t.some_minutes()
    if t.rng.random() < 0.5:
        t.reply("agent", public=False)
    t.status("closed")


def _before_creation(t: _Ticket) -> None:
    # status events dated before the creation act at it (in (time, event id) order)
    created_ms = t.now_ms
    early = created_ms - round(t.rng.uniform(1, 600) * 1000)
    if t.rng.random() < 0.3:
        t.status("solved", early)  # solved at the creation: a 0 s resolution
        t.wait(60, 3600)
        t.reply()
        return
    t.status("pending", early - 1000)
    t.status(t.rng.choice(("open", "hold")), early)
    t.some_minutes()
    t.reply()
    t.some_minutes()
    t.status("solved")


def _no_change(t: _Ticket) -> None:
    # a status equal to the current one changes nothing
    t.some_minutes()
    t.status("open")
    t.some_minutes()
    t.status("open")
    t.reply()
    t.some_minutes()
    t.status("solved")
    t.wait(60, 600)
    t.status("solved")


def _left_open(t: _Ticket) -> None:
    # never solved: in the backlog for days, dropped at last + retention or max age
    if t.rng.random() < 0.6:
        t.some_minutes()
        t.reply()
        if t.rng.random() < 0.5:
            t.status(t.rng.choice(("open", "pending", "hold")))


def _untouched(t: _Ticket) -> None:
    pass  # new until dropped


def _long_pending(t: _Ticket) -> None:
    # pending for a day or two, then the customer comes back: kept while unsolved
    t.some_minutes()
    t.reply()
    t.status("pending")
    t.wait(20 * 3600, 60 * 3600)
    t.reply("customer")
    t.status("open")
    t.some_minutes()
    t.reply()
    t.some_minutes()
    t.status("solved")


def _slow_solve(t: _Ticket) -> None:
    # a day or more to the solve: the long tail of the resolution time
    t.wait(4 * 3600, 30 * 3600)
    t.reply()
    t.wait(3600, 20 * 3600)
    t.status("solved")


#: name -> (weight, story)
TICKET_STORIES: dict[str, tuple[float, Callable[[_Ticket], None]]] = {
    "one-touch": (12, _one_touch),
    "same-instant": (3, _same_instant),
    "conversation": (14, _conversation),
    "pending-hold": (6, _pending_and_hold),
    "reopened": (8, _reopened),
    "reopened-left": (3, _reopened_and_left),
    "closed-ignored": (3, _closed_then_ignored),
    "closed-untouched": (2, _closed_untouched),
    "before-creation": (4, _before_creation),
    "no-change": (2, _no_change),
    "left-open": (6, _left_open),
    "untouched": (3, _untouched),
    "long-pending": (3, _long_pending),
    "slow-solve": (5, _slow_solve),
}


class _Chat(_Timeline):
    pass


def _handled(c: _Chat) -> None:
    c.wait(3, 120)
    c.add("chat.accepted", agent_id=f"A{c.rng.randrange(8)}")
    c.wait(60, 1800)
    c.add("chat.ended", ended_by=c.rng.choice(("agent", "customer", "system")))


def _abandoned(c: _Chat) -> None:
    c.wait(2, 300)
    c.add(c.rng.choice(("chat.abandoned", "chat.ended")))  # ended unanswered: abandoned


def _accepted_open(c: _Chat) -> None:
    c.wait(3, 120)
    c.add("chat.accepted")  # never ended: no handle time, not waiting


def _stale(c: _Chat) -> None:
    pass  # never answered: waiting for an hour, then stale


def _late_accept(c: _Chat) -> None:
    # accepted after it went stale
    c.wait(61 * 60, 100 * 60)
    c.add("chat.accepted")
    c.wait(60, 900)
    c.add("chat.ended")


def _abandoned_after_accept(c: _Chat) -> None:
    c.wait(3, 60)
    c.add("chat.accepted")
    c.wait(30, 600)
    c.add("chat.abandoned")


def _same_instant_chat(c: _Chat) -> None:
    # accepted and abandoned or ended at one millisecond: answered, handled in 0 s
    c.wait(3, 60)
    c.add("chat.accepted")
    c.add(c.rng.choice(("chat.abandoned", "chat.ended")))


def _twice(c: _Chat) -> None:
    # two accepts and two ends: the earliest of each counts
    c.wait(3, 60)
    c.add("chat.accepted")
    c.wait(1, 30)
    c.add("chat.accepted")
    c.wait(60, 900)
    c.add("chat.ended")
    c.wait(1, 30)
    c.add("chat.ended")


CHAT_STORIES: dict[str, tuple[float, Callable[[_Chat], None]]] = {
    "handled": (20, _handled),
    "abandoned": (5, _abandoned),
    "accepted-open": (2, _accepted_open),
    "stale": (4, _stale),
    "late-accept": (2, _late_accept),
    "abandoned-after-accept": (2, _abandoned_after_accept),
    "same-instant": (2, _same_instant_chat),
    "twice": (1, _twice),
}


def _pick(rng: random.Random, stories: dict[str, tuple[float, Any]]) -> str:
    names = list(stories)
    return rng.choices(names, weights=[stories[name][0] for name in names])[0]


def _cut(
    events: list[tuple[int, str, dict[str, Any]]],
    created_ms: int,
    retention_ms: int,
    max_age_ms: int,
    slack_ms: int,
) -> list[tuple[int, str, dict[str, Any]]]:
    """The ticket's events up to (not including) the first that comes within ``slack_ms``
    of when the ticket could have left the state, in timeline order (the creation is the
    first of ``events``): an event is delivered up to the delivery's disorder after newer
    ones, and the state may go as soon as the newest event time passes the limit."""
    ordered = sorted(events[1:], key=lambda item: (item[0], item[1]))
    kept = [events[0]]
    status = "new"
    last_ms = created_ms
    for item in ordered:
        at_ms, _, body = item
        if at_ms > created_ms:
            until_ms = last_ms + retention_ms
            if status not in ("solved", "closed"):
                until_ms = max(until_ms, created_ms + max_age_ms)
            if at_ms > until_ms - slack_ms:
                break
        kept.append(item)
        last_ms = max(last_ms, at_ms)
        value = body.get("status")
        if value is not None and status != "closed":
            status = value
    return kept


# -- the data set ---------------------------------------------------------------------------


@dataclass
class LifecycleData:
    """The records in delivery order and what they hold."""

    start_ms: int
    end_ms: int
    records: list[Record]
    tickets: Counter[str] = field(default_factory=Counter)
    chats: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    #: records delivered before the newest event time delivered earlier
    disordered: int = 0

    @property
    def values(self) -> list[bytes]:
        return [record.value for record in self.records]

    def summary(self) -> str:
        return (
            f"{len(self.records)} records ({self.duplicates} repeated, {self.disordered} "
            f"out of order), tickets per story {dict(sorted(self.tickets.items()))}, chats "
            f"per story {dict(sorted(self.chats.items()))}"
        )


def _record(
    kind: str, conversation: str, at_ms: int, event_id: str, body: dict[str, Any]
) -> Record:
    id_field = "ticket_id" if kind == "tickets" else "chat_id"
    value = {
        "event_id": event_id,
        "occurred_at": rfc3339_ms(at_ms),
        **body,
        id_field: conversation,
    }
    return Record(kind, conversation.encode(), orjson.dumps(value), at_ms / 1000)


def build_lifecycle_records(
    *,
    seed: int = 11,
    start_s: int = START_S,
    days: int = 4,
    tickets_per_hour: float = 4.0,
    chats_per_hour: float = 3.0,
    retention_s: int = DEFAULT_RETENTION_S,
    open_ticket_max_age_s: int = DEFAULT_OPEN_TICKET_MAX_AGE_S,
    duplicate_ratio: float = 0.05,
    max_delay_s: int = 2 * 3600,
    shuffle_all: bool = False,
    moves: float = 0.0,
) -> LifecycleData:
    """``days`` of tickets and chats from ``start_s``, deterministic for a ``seed``.

    Openers come at random instants (a third on a whole minute), each conversation follows
    a story picked by weight. Delivery: each record ``0..max_delay_s`` after its time, a
    tenth of the openers up to ``max_delay_s`` more (so their conversation's later events
    come first), and ``duplicate_ratio`` of the records again a little later; with
    ``shuffle_all`` the records are shuffled whole instead (only for an oracle that
    ignores retention). ``retention_s`` and ``open_ticket_max_age_s`` must be the worker's:
    stories are cut to what it keeps. ``moves`` of the tickets are moved to another queue
    or priority once or twice during their story (``ticket.updated``, drawn from a random
    stream of their own: the rest of the data set is the same with or without)."""
    if retention_s * 1000 < 2 * max_delay_s * 1000 + 6 * HOUR_MS:
        raise ValueError("the retention must hold the delivery's disorder and six hours more")
    rng = random.Random(seed)
    moving = random.Random(seed + 1_000_003)
    start_ms = start_s * 1000
    end_ms = start_ms + days * DAY_MS
    data = LifecycleData(start_ms, end_ms, [])
    made: list[tuple[float, Record]] = []  # (delivery key, record)

    def opener_time() -> int:
        at_ms = rng.randrange(start_ms, end_ms - 6 * HOUR_MS)
        return at_ms - at_ms % MINUTE_MS if rng.random() < 0.35 else at_ms

    def deliver(records: Sequence[tuple[int, Record]]) -> None:
        late_opener = rng.random() < 0.1
        for index, (at_ms, record) in enumerate(records):
            delay_ms = rng.uniform(0, max_delay_s * 1000)
            if index == 0 and late_opener:
                delay_ms += rng.uniform(0, max_delay_s * 1000)
            made.append((at_ms + delay_ms, record))

    for number in range(round(days * 24 * tickets_per_hour)):
        story = _pick(rng, TICKET_STORIES)
        ticket_id = f"T{number:04d}-{story}"
        created_ms = opener_time()
        ticket = _Ticket(rng, ticket_id, created_ms)
        ticket.add(
            "ticket.created",
            channel=rng.choice(CHANNELS),
            queue=rng.choice(QUEUES),
            priority=rng.choice(PRIORITIES),
            requester_id=f"R{rng.randrange(500)}",
        )
        TICKET_STORIES[story][1](ticket)
        if moves and moving.random() < moves:
            last_ms = max(at_ms for at_ms, _, _ in ticket.events)
            for _ in range(1 + (moving.random() < 0.4)):
                # anywhere in its story, now and then before its creation or on a minute
                at_ms = moving.randrange(created_ms - MINUTE_MS, last_ms + HOUR_MS)
                if moving.random() < 0.3:
                    at_ms -= at_ms % MINUTE_MS
                change = moving.choice(
                    [
                        {"queue": moving.choice(QUEUES)},
                        {"priority": moving.choice(PRIORITIES)},
                        {"queue": moving.choice(QUEUES), "priority": "urgent"},
                    ]
                )
                ticket.add("ticket.updated", at_ms, **change)
        events = _cut(
            ticket.events,
            created_ms,
            retention_s * 1000,
            open_ticket_max_age_s * 1000,
            2 * max_delay_s * 1000 + _MARGIN_MS,
        )
        data.tickets[story] += 1
        deliver(
            [
                (at_ms, _record("tickets", ticket_id, at_ms, event_id, body))
                for at_ms, event_id, body in events
            ]
        )
    for number in range(round(days * 24 * chats_per_hour)):
        story = _pick(rng, CHAT_STORIES)
        chat_id = f"C{number:04d}-{story}"
        chat = _Chat(rng, chat_id, opener_time())
        chat.add(
            "chat.requested",
            channel="chat",
            queue=rng.choice(QUEUES),
            priority=rng.choice(PRIORITIES),
        )
        CHAT_STORIES[story][1](chat)
        data.chats[story] += 1
        deliver(
            [
                (at_ms, _record("chats", chat_id, at_ms, event_id, body))
                for at_ms, event_id, body in chat.events
            ]
        )

    originals = list(made)
    for key, record in rng.sample(originals, round(len(originals) * duplicate_ratio)):
        assert record.occurred_at_s is not None
        latest = record.occurred_at_s * 1000 + 2 * max_delay_s * 1000
        made.append((min(key + rng.uniform(0, max_delay_s * 1000), latest), record))
    data.duplicates = len(made) - len(originals)
    if shuffle_all:
        records = [record for _, record in made]
        rng.shuffle(records)
    else:
        made.sort(key=lambda item: item[0])
        records = [record for _, record in made]
    newest = -math.inf
    for record in records:
        assert record.occurred_at_s is not None
        data.disordered += record.occurred_at_s < newest
        newest = max(newest, record.occurred_at_s)
    data.records = records
    return data


# -- instants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instant:
    """An ``--at`` instant (seconds) and why it is worth reading."""

    at_s: float
    why: str


def interesting_instants(
    data: LifecycleData,
    lifecycle: Lifecycle,
    *,
    bucket_seconds: int = 60,
    chat_stale_after_s: int = DEFAULT_CHAT_STALE_AFTER_S,
    per_kind: int = 2,
) -> list[Instant]:
    """Instants where the rules have their edges, in time order, ``per_kind`` of each kind
    (the earliest found after the first day, when the backlog has filled): a status change
    on a bucket boundary (read at it, when the change does not count yet, and a bucket
    later), a creation on a boundary, a final solve on a boundary (it belongs to the window
    that starts there), an unsolved ticket's drop on a boundary (read at it, when the ticket
    still counts, and a second later, which rounds up to the next bucket), a chat going
    stale (a bucket before, and at, the hour); and plain ones: mid-afternoon of every day,
    the end of the data, and three days after it."""
    bucket_ms = bucket_seconds * 1000
    settled_ms = data.start_ms + DAY_MS

    def on_boundary(instants: Sequence[int]) -> list[int]:
        found = sorted({at for at in instants if at % bucket_ms == 0 and at >= settled_ms})
        return found[:per_kind]

    out: list[Instant] = []
    tickets = list(lifecycle.tickets.values())
    changes = [
        at for t in tickets for at, _ in t.changes[1:] if at > t.created_ms and at < data.end_ms
    ]
    for at in on_boundary(changes):
        out.append(Instant(at / 1000, "a status change at the end"))
        out.append(Instant(at / 1000 + bucket_seconds, "a status change a bucket before the end"))
    for at in on_boundary([t.created_ms for t in tickets]):
        out.append(Instant(at / 1000, "a creation at the end"))
    solves = [t.final_solve_ms for t in tickets if t.final_solve_ms is not None]
    for at in on_boundary(solves):
        out.append(Instant(at / 1000, "a final solve at the end"))
        out.append(Instant(at / 1000 + bucket_seconds, "a final solve in the last bucket"))
    drops = [t.dropped_ms for t in tickets if t.dropped_ms is not None]
    for at in on_boundary(drops):
        out.append(Instant(at / 1000, "an unsolved ticket's last instant"))
        out.append(Instant(at / 1000 + 1, "an unsolved ticket just dropped"))
    if not any(at % bucket_ms == 0 for at in drops) and drops:
        at = min(drops)
        out.append(Instant(at / 1000, "an unsolved ticket's drop"))
        out.append(Instant(at / 1000 + bucket_seconds, "an unsolved ticket dropped"))
    stale = [
        c.requested_ms + chat_stale_after_s * 1000
        for c in lifecycle.chats.values()
        if c.first_outcome_ms is None
        or c.first_outcome_ms > c.requested_ms + chat_stale_after_s * 1000
    ]
    for at in on_boundary(stale):
        out.append(Instant(at / 1000 - bucket_seconds, "a chat waiting its last bucket"))
        out.append(Instant(at / 1000, "a chat just gone stale"))
    for day in range(round((data.end_ms - data.start_ms) / DAY_MS)):
        out.append(Instant((data.start_ms + day * DAY_MS) / 1000 + 15 * 3600 + 451, "afternoon"))
    out.append(Instant(data.end_ms / 1000, "the end of the data"))
    out.append(Instant(data.end_ms / 1000 + 3 * 86_400, "three days after the data"))
    return sorted(out, key=lambda instant: (instant.at_s, instant.why))
