"""Realistic, deterministic support traffic for tests, demos and benchmarks.

:func:`generate` turns a :class:`SimConfig` into the records a set of upstream producers
would send to the three input topics (docs/kpis.md), in delivery order. It is pure: no
Kafka, no Redis, no clock; the same config always gives the same bytes.

What the stream looks like:

* **Tickets** walk a status lifecycle: ``ticket.created`` (``new``) → sometimes a system
  auto-acknowledgement, customer chasers ("any news?") and private agent notes
  (``public=false``) → the first public agent reply after a lognormal delay whose median
  depends on the priority (a tail of them breaches the default first-response targets),
  unless the ticket is one of the ``unanswered_ratio`` that never get one (closed unsolved
  about 3 days later, or by a clean-up weeks later). About a quarter of the answered
  tickets are solved with that reply (one touch: submitted as ``solved`` at the reply's
  instant, or a moment later); the others are submitted ``pending``, ``hold`` or ``open``
  → rounds of a customer follow-up (which sets a ``pending`` ticket ``open`` and starts a
  next-response clock) and an agent reply, each again submitted with ``pending``,
  ``hold`` or ``open``; a ``hold`` (waiting on another team) lasts hours, sometimes days,
  and the customer may ask meanwhile; one customer answer in eight takes days → one in
  twenty is forgotten for days (an old ticket in the backlog) until an agent apologises
  and asks again → ``solved``: by the agent, after the customer confirms on a ``pending``
  ticket, or by the helpdesk's automation after 4 days ``pending`` without an answer; or
  (rarely) ``closed`` days later without a solve → sometimes a customer reply on the
  solved ticket reopens it (``open``) and it is solved again → ``closed`` 4 days after
  the last solve. With ``moves``, that share of tickets is escalated (``ticket.updated``
  with the next priority up) or transferred to another queue while they are open, now
  and then twice. Every ticket's statuses form a valid lifecycle: each change is a real
  change, ``closed`` is the last, and only ``solved`` is ever reopened. With
  ``agent_hours``, the agents of the listed queues work only while their schedule is
  open, so what arrives after hours waits for the next opening.
* **Chats**: ``chat.requested`` → ``chat.accepted`` after a short lognormal wait, or,
  when the customer's patience runs out first, ``chat.abandoned`` (some within 5 s:
  short abandons) or ``chat.ended`` by the customer before any accept → ``chat.ended``
  after a lognormal handle time (minutes). One chat in two hundred is lost: nobody answers,
  it waits until it is stale and the platform ends it hours later.
* **Surveys**: csat (1 to 5, skewed high, lower after a breached ticket), nps (0 to 10) or ces
  (1 to 7) for ``survey_ratio`` of solved tickets and answered chats, keyed by the rated
  conversation; usually without dimensions, sometimes with all or some of their own.
* **Agents**: each conversation goes to one of its queue's 24 agents on shift when it opens
  (three 8-hour shifts a day, eight agents each); most public replies name that agent,
  about one in seven a colleague of the same shift who took the ticket over, one in
  thirty-three none; accepts name the agent, two surveys in five name none (they count
  for the last agent who replied). With ``presence``, the agents' status changes too.

Time: conversations start in ``[start_s, start_s + duration_s)`` as a Poisson process
(shaped by ``diurnal`` and ``incident``) and only events *occurring* before the end are
sent, like a recording of that stretch of a live stream, so tickets still open at the end
stay open. With ``backlog_s`` the process starts that much earlier, and the conversations
still open at ``start_s`` are sent whole, their earlier events first: the backlog a running
helpdesk starts with. ``rate`` is the average number of distinct valid events per second
of that stretch (office hours included: the volume is calibrated on the lifecycles as they
are configured); faults come on top of it. Event times have millisecond precision and are
written with varied UTC offsets.

Faults: ``duplicate_ratio`` of events are re-sent byte for byte a little later;
``out_of_order`` of events are delivered late (for an opening event: after the
conversation's next event, so a reply or an accept arrives before its ticket or chat);
``malformed_ratio`` of events are followed by a record that :func:`models.events.decode`
must reject; ``orphan_ratio`` of conversations lose their opening event altogether.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import math
import random
import zlib
from bisect import bisect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from deskpulse.models.sla import Schedule
from deskpulse.streams.calendar import BusinessCalendar

__all__ = ["Record", "SimConfig", "generate", "read_jsonl", "write_jsonl"]

#: 2026-11-23T00:00:00Z, the default start of a simulated stretch.
DEFAULT_START_S = 1_795_392_000.0

# Median seconds to the first public agent reply, by priority. With sigma 0.9 about one
# ticket in nine misses the default targets (urgent 1h, high 4h, normal 8h, low 24h).
_FIRST_REPLY_MEDIAN_S = {"urgent": 1200.0, "high": 4800.0, "normal": 10800.0, "low": 28800.0}
_FIRST_REPLY_SIGMA = 0.9
_BREACH_AFTER_S = {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400}

# Offsets producers write occurred_at with: (suffix, offset in ms, weight out of 64).
_ZONES = (
    ("Z", 0, 24),
    ("+00:00", 0, 6),
    ("+01:00", 3_600_000, 6),
    ("+02:00", 7_200_000, 5),
    ("-05:00", -18_000_000, 7),
    ("-08:00", -28_800_000, 4),
    ("+05:30", 19_800_000, 4),
    ("+09:00", 32_400_000, 4),
    ("-03:30", -12_600_000, 2),
    ("+05:45", 20_700_000, 1),
    ("+14:00", 50_400_000, 1),
)
_ZONE_TABLE = tuple((suffix, offset) for suffix, offset, weight in _ZONES for _ in range(weight))
assert len(_ZONE_TABLE) == 64

_CSAT_WEIGHTS = {"happy": (3, 4, 8, 30, 55), "unhappy": (20, 20, 25, 20, 15)}
_NPS_WEIGHTS = {
    "happy": (1, 1, 1, 2, 2, 4, 5, 12, 18, 24, 30),
    "unhappy": (8, 6, 8, 10, 10, 12, 12, 12, 9, 7, 6),
}
_CES_WEIGHTS = {"happy": (2, 3, 5, 10, 20, 30, 30), "unhappy": (12, 15, 18, 20, 15, 12, 8)}

# Event codes of the internal schedule.
_TICKET_CREATED = 0
_TICKET_REPLIED = 1
_TICKET_STATUS = 2
_CHAT_REQUESTED = 3
_CHAT_ACCEPTED = 4
_CHAT_ABANDONED = 5
_CHAT_ENDED = 6
_SURVEY = 7
_TICKET_UPDATED = 8
_RESEND = 9  # an already built record, re-sent as a duplicate

_CHAT_OUTCOMES = (_CHAT_ACCEPTED, _CHAT_ABANDONED, _CHAT_ENDED)

_TOPIC = (
    "tickets",
    "tickets",
    "tickets",
    "chats",
    "chats",
    "chats",
    "chats",
    "surveys",
    "tickets",
)
_TYPE = (
    "ticket.created",
    "ticket.replied",
    "ticket.status_changed",
    "chat.requested",
    "chat.accepted",
    "chat.abandoned",
    "chat.ended",
    "survey.responded",
    "ticket.updated",
)
#: priorities in escalation order
_ESCALATION = ("low", "normal", "high", "urgent")
#: the statuses a ticket is no longer moved in
_DONE = frozenset(("solved", "closed"))

# ticket.replied variants: (author_role, public); public None leaves the field out (default).
_CUSTOMER = ("customer", True)
_AGENT = ("agent", True)
_NOTE = ("agent", False)
_SYSTEM = ("system", None)


@dataclass(frozen=True, slots=True)
class Record:
    """One record as a producer sends it: ``value`` is the exact message bytes.

    ``occurred_at_s`` is the event time in Unix seconds, ``None`` for a malformed record.
    """

    topic_kind: str  # "tickets" | "chats" | "surveys" | "agents"
    key: bytes
    value: bytes
    occurred_at_s: float | None


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Weights need not sum to 1; ratios are probabilities in [0, 1]."""

    seed: int = 0
    start_s: float = DEFAULT_START_S
    duration_s: float = 3600.0
    #: distinct valid events per second, averaged over the run (faults come on top)
    rate: float = 50.0
    #: conversation mix by channel; "chat" conversations are chats, every other one a ticket
    channels: Mapping[str, float] = field(
        default_factory=lambda: {
            "email": 0.30,
            "web": 0.20,
            "phone": 0.10,
            "social": 0.05,
            "api": 0.05,
            "chat": 0.30,
        }
    )
    queues: Mapping[str, float] = field(
        default_factory=lambda: {"billing": 0.25, "technical": 0.35, "sales": 0.15, "general": 0.25}
    )
    priorities: Mapping[str, float] = field(
        default_factory=lambda: {"low": 0.20, "normal": 0.55, "high": 0.18, "urgent": 0.07}
    )
    #: volume follows a day-shaped curve of the UTC hour (quiet nights, busy afternoons)
    diurnal: bool = False
    #: during the incident volume doubles and agents are three times slower
    incident: bool = False
    #: incident start, seconds after start_s (default: a third into the run)
    incident_start_s: float | None = None
    #: incident length in seconds (default: a third of the run)
    incident_duration_s: float | None = None
    #: share of events re-sent byte for byte (same event_id) shortly afterwards
    duplicate_ratio: float = 0.0
    #: share of events delivered after events that occurred later
    out_of_order: float = 0.0
    #: mean extra delivery delay of an out-of-order event, in seconds
    disorder_s: float = 30.0
    #: one malformed record (to be rejected) follows this share of events
    malformed_ratio: float = 0.0
    #: share of tickets that never get a public agent reply
    unanswered_ratio: float = 0.05
    #: share of conversations whose opening event is never sent
    orphan_ratio: float = 0.0
    #: share of solved tickets and answered chats that get a survey response
    survey_ratio: float = 0.3
    #: share of tickets escalated to a higher priority or transferred to another queue
    #: (``ticket.updated``) while they are open; 0 sends none
    moves: float = 0.0
    #: multiplies ticket response delays and the timers that run for days (closes, holds,
    #: customers who answer days later); < 1 squeezes lifecycles into short runs
    response_scale: float = 1.0
    #: multiplies the other gaps inside a conversation as well (customers' follow-ups,
    #: solves, reopens, surveys, chat lengths); with ``response_scale`` it squeezes whole
    #: lifecycles, days-later close included, into a short run (the benchmark's soak)
    lifecycle_scale: float = 1.0
    #: queues whose agents keep office hours: queue -> the schedule they work (a
    #: :class:`~deskpulse.models.sla.Schedule` or its JSON object). Their agents reply,
    #: write notes and solve only while it is open, and their work pauses while it is
    #: closed (a ticket created on Friday evening is answered on Monday). Other queues are
    #: staffed around the clock; the default is every queue
    agent_hours: Mapping[str, Schedule] = field(default_factory=dict)
    #: start with the backlog of a helpdesk that was running before: conversations started
    #: up to this many seconds before ``start_s`` that are still open at ``start_s``
    #: (tickets neither solved nor closed, chats with no accept or end yet) are sent too,
    #: their earlier events first (dated before ``start_s``), so that the backlog, its
    #: oldest tickets and the solves of older tickets are there from the first minute
    #: (the demo). What they send from ``start_s`` on counts in ``rate``; what they sent
    #: before does not. 0: the stretch starts empty, as a new helpdesk does
    backlog_s: float = 0.0
    #: prefix of every generated id (default ``s<seed>-``), to keep several runs apart
    id_prefix: str | None = None
    #: zero-pad the numbers in ids to this many digits (0: no padding). Real ids keep one
    #: length; a counter's gain a digit at every power of ten, which a soak would read as
    #: its state growing (the benchmark's soak pads)
    id_digits: int = 0
    #: agents' presence on the agents topic: each agent who answers conversations
    #: (``agent-<queue>-<n>``, 24 per queue) works an 8-hour shift a day (available and
    #: busy by turns, a break away now and then, offline after it); off: no agent events
    presence: bool = False

    def __post_init__(self) -> None:
        if (
            self.duration_s <= 0
            or self.rate <= 0
            or self.response_scale <= 0
            or self.lifecycle_scale <= 0
        ):
            raise ValueError(
                "duration_s, rate, response_scale and lifecycle_scale must be positive"
            )
        if self.disorder_s <= 0:
            raise ValueError("disorder_s must be positive")
        if not 0 <= self.backlog_s < math.inf:
            raise ValueError("backlog_s must be zero or positive")
        if not 0 <= self.id_digits <= 20:
            raise ValueError("id_digits must be between 0 and 20")
        for name in (
            "duplicate_ratio",
            "out_of_order",
            "malformed_ratio",
            "unanswered_ratio",
            "orphan_ratio",
            "survey_ratio",
            "moves",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in ("channels", "queues", "priorities"):
            weights = getattr(self, name)
            if not weights or any(w < 0 for w in weights.values()) or not sum(weights.values()):
                raise ValueError(f"{name} needs at least one positive weight")
        if set(self.priorities) - set(_FIRST_REPLY_MEDIAN_S):
            raise ValueError("priorities must be among low, normal, high, urgent")
        hours = {
            queue: schedule if isinstance(schedule, Schedule) else Schedule.model_validate(schedule)
            for queue, schedule in self.agent_hours.items()
        }
        object.__setattr__(self, "agent_hours", hours)  # frozen: set once, as if given


class _Chooser:
    """Weighted choice by bisecting cumulative weights: cheap enough for the hot path."""

    __slots__ = ("_cumulative", "_total", "_values")

    def __init__(self, weights: Mapping[Any, float] | Iterable[tuple[Any, float]]) -> None:
        pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        pairs = [(value, weight) for value, weight in pairs if weight > 0]
        self._values = [value for value, _ in pairs]
        self._cumulative = list(itertools.accumulate(weight for _, weight in pairs))
        self._total = self._cumulative[-1]

    def __call__(self, rng: random.Random) -> Any:
        return self._values[bisect(self._cumulative, rng.random() * self._total)]


def _scores(weights: tuple[int, ...], low: int) -> _Chooser:
    return _Chooser((low + index, weight) for index, weight in enumerate(weights))


_SURVEY_KIND = _Chooser({"csat": 0.6, "nps": 0.25, "ces": 0.15})
_SURVEY_SCORE = {
    (kind, mood): _scores(table[mood], low)
    for kind, table, low in (("csat", _CSAT_WEIGHTS, 1), ("nps", _NPS_WEIGHTS, 0))
    for mood in ("happy", "unhappy")
} | {("ces", mood): _scores(_CES_WEIGHTS[mood], 1) for mood in ("happy", "unhappy")}
_ROUNDS = _Chooser({0: 0.3, 1: 0.35, 2: 0.2, 3: 0.15})
# What an agent sets with a public reply: waiting on the customer, on someone else, or open.
_AFTER_FIRST_REPLY = _Chooser({"pending": 0.55, "hold": 0.07, "open": 0.38})
_AFTER_REPLY = _Chooser({"pending": 0.5, "hold": 0.08, "open": 0.42})
_ENDED_BY = _Chooser({"agent": 0.5, "customer": 0.45, "system": 0.05})


def _diurnal(hour: float) -> float:
    """Relative volume by UTC hour: 0.2 at night, 1.8 at the 14:00 peak."""
    return 0.2 + 1.6 * max(0.0, math.sin(math.pi * (hour - 7.0) / 14.0)) ** 2


class _Conversation:
    __slots__ = ("agent", "channel", "id", "is_chat", "key", "omit", "priority", "queue", "tags")

    def __init__(self, conversation_id: str, is_chat: bool) -> None:
        self.id = conversation_id
        self.key = conversation_id.encode()
        self.is_chat = is_chat
        self.channel = "chat"
        self.queue = "general"
        self.priority = "normal"
        self.agent = ""
        self.omit: str | None = None  # a dimension the opener leaves to its default
        self.tags = False


class _Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.start_ms = round(config.start_s * 1000)
        self.end_ms = self.start_ms + round(config.duration_s * 1000)
        # conversations start from here; those before start_ms only if open at start_ms
        self.first_ms = self.start_ms - round(config.backlog_s * 1000)
        incident_start = config.incident_start_s
        incident_length = config.incident_duration_s
        if incident_start is None:
            incident_start = config.duration_s / 3
        if incident_length is None:
            incident_length = config.duration_s / 3
        self.incident_from_ms = self.start_ms + round(incident_start * 1000)
        self.incident_to_ms = self.incident_from_ms + round(incident_length * 1000)
        self.prefix = config.id_prefix if config.id_prefix is not None else f"s{config.seed}-"
        self.channel = _Chooser(config.channels)
        self.queue = _Chooser(config.queues)
        self.priority = _Chooser(config.priorities)
        self.days: dict[int, str] = {}
        # queue -> the calendar its agents keep (one compiled calendar per schedule)
        compiled: dict[int, BusinessCalendar] = {}
        self.offices: dict[str, BusinessCalendar] = {
            queue: compiled.setdefault(id(schedule), BusinessCalendar(schedule))
            for queue, schedule in config.agent_hours.items()
        }
        self.max_shape = (1.8 if config.diurnal else 1.0) * (2.0 if config.incident else 1.0)
        self.moves_rng = random.Random(f"deskpulse-moves-{config.seed}")
        self.conversations_per_s = self._calibrate()
        #: the most scheduled deliveries held at once: the future events of the open
        #: conversations (and the duplicates due), bounded by how many are open at a time
        self.peak_pending = 0

    # -- volume -------------------------------------------------------------------------

    def _shape(self, at_ms: float) -> float:
        shape = 1.0
        if self.config.diurnal:
            shape = _diurnal((at_ms / 3_600_000.0) % 24.0)
        if self.config.incident and self.incident_from_ms <= at_ms < self.incident_to_ms:
            shape *= 2.0
        return shape

    def _slowness(self, at_ms: int) -> float:
        incident = self.config.incident and self.incident_from_ms <= at_ms < self.incident_to_ms
        return 3.0 if incident else 1.0

    def _calibrate(self) -> float:
        """Conversations per second (at shape 1) that give ``rate`` events per second.

        A pilot run of conversations, started at times drawn from the volume shape,
        counts the events each sends in the stretch (a conversation of the backlog only
        if it is open at the start); deterministic in the seed.
        """
        span_ms = self.end_ms - self.first_ms
        steps = max(200, min(20_000, span_ms // 60_000))
        shape_integral_s = (
            sum(self._shape(self.first_ms + (i + 0.5) * span_ms / steps) for i in range(steps))
            * (span_ms / steps)
            / 1000.0
        )
        rng = random.Random(f"deskpulse-pilot-{self.config.seed}")
        pilots = 3000
        events = 0
        for _ in range(pilots):
            while True:
                at_ms = self.first_ms + int(rng.random() * span_ms)
                if rng.random() * self.max_shape < self._shape(at_ms):
                    break
            conversation = self._open(rng, at_ms, 0)
            lifecycle = self._lifecycle(rng, at_ms, conversation)
            if at_ms < self.start_ms and not self._open_at(lifecycle, self.start_ms):
                continue  # over before the stretch: never sent
            events += sum(1 for t_ms, _, _ in lifecycle if self.start_ms <= t_ms < self.end_ms)
        per_conversation = max(events / pilots - self.config.orphan_ratio, 0.1)
        expected = self.config.rate * self.config.duration_s / per_conversation
        return expected / shape_integral_s

    def _arrivals(self, rng: random.Random) -> Iterator[int]:
        """Start times (ms) of conversations: a Poisson process thinned by the shape."""
        peak_per_ms = self.conversations_per_s * self.max_shape / 1000.0
        at_ms = float(self.first_ms)
        while True:
            at_ms += rng.expovariate(peak_per_ms)
            if at_ms >= self.end_ms:
                return
            if rng.random() * self.max_shape < self._shape(at_ms):
                yield int(at_ms)

    # -- lifecycles ---------------------------------------------------------------------

    def _open(self, rng: random.Random, at_ms: int, number: int) -> _Conversation:
        channel = self.channel(rng)
        is_chat = channel == "chat"
        conversation = _Conversation(
            f"{self.prefix}{'C' if is_chat else 'T'}{number:0{self.config.id_digits}}", is_chat
        )
        conversation.channel = channel
        conversation.queue = self.queue(rng)
        conversation.priority = self.priority(rng)
        # an agent of the queue on shift when it opens (shift n % 3 starts at hour 8 x (n %
        # 3) UTC, see presence_records), chosen by the id: the random stream stays the same
        shift = at_ms % 86_400_000 // 28_800_000
        seat = 3 * (zlib.crc32(conversation.id.encode()) % 8) + shift
        rng.randrange(24)  # the draw the agent once took, kept so the rest stays the same
        conversation.agent = f"agent-{conversation.queue}-{seat}"
        conversation.tags = number % 10 == 7
        if not is_chat:
            roll = rng.random()
            if roll < 0.02:  # producers that leave a dimension out get the default
                conversation.omit, conversation.queue = "queue", "unassigned"
            elif roll < 0.05:
                conversation.omit, conversation.priority = "priority", "normal"
            elif roll < 0.06:
                conversation.omit, conversation.channel = "channel", "other"
        return conversation

    def _lifecycle(
        self, rng: random.Random, t0: int, conversation: _Conversation
    ) -> list[tuple[int, int, Any]]:
        slow = self._slowness(t0)
        if conversation.is_chat:
            return self._chat(rng, t0, conversation, slow)
        events = self._ticket(rng, t0, conversation, slow)
        if self.config.moves:
            self._move(t0, conversation, events)
        return events

    def _move(
        self, t0: int, conversation: _Conversation, events: list[tuple[int, int, Any]]
    ) -> None:
        """Escalate or transfer ``moves`` of the tickets, once or twice, while they are
        open: drawn from a random stream of their own, so the other events stay as they
        are (the volume's calibration counts the moves: fewer conversations come)."""
        rng = self.moves_rng
        if rng.random() >= self.config.moves:
            return
        # while it is open: before its first solve or close
        ends = [t for t, code, extra in events if code == _TICKET_STATUS and extra in _DONE]
        until = min(ends, default=t0 + 86_400_000)
        if until - t0 < 2000:
            return
        queue, priority = conversation.queue, conversation.priority
        at = t0
        for _ in range(1 + (rng.random() < 0.2)):
            at += 1 + int(rng.uniform(0.05, 0.6) * (until - at))
            if at >= until:
                return
            if priority != "urgent" and rng.random() < 0.45:
                priority = _ESCALATION[_ESCALATION.index(priority) + 1]
                events.append((at, _TICKET_UPDATED, {"priority": priority}))
            else:
                others = [q for q in self.config.queues if q != queue]
                if not others:
                    return
                queue = others[rng.randrange(len(others))]
                events.append((at, _TICKET_UPDATED, {"queue": queue}))

    @staticmethod
    def _open_at(events: list[tuple[int, int, Any]], at_ms: int) -> bool:
        """Whether a conversation is open at ``at_ms``: a ticket neither solved nor closed
        (its status events come in time order), a chat nothing has answered or ended."""
        status = None
        for t_ms, code, extra in events:
            if t_ms < at_ms:
                if code == _TICKET_STATUS:
                    status = extra
                elif code in _CHAT_OUTCOMES:
                    return False
        return status not in ("solved", "closed")

    def _ticket(
        self, rng: random.Random, t0: int, conversation: _Conversation, slow: float
    ) -> list[tuple[int, int, Any]]:
        lognormal = rng.lognormvariate
        config = self.config
        scale = config.response_scale * slow
        life = config.lifecycle_scale
        # the timers that run for days (closes, holds, customers who take days) squeeze
        # with both scales, so that a squeezed run still sees whole lifecycles end
        days = config.response_scale * life
        office = self.offices.get(conversation.queue)
        events: list[tuple[int, int, Any]] = [(t0, _TICKET_CREATED, None)]
        status = "new"
        status_at = t0

        def agent_at(t_ms: int, work_ms: int) -> int:
            """When an agent who picks the ticket up at ``t_ms`` is done after ``work_ms``
            of work: office time only when the queue's agents keep office hours."""
            if office is None:
                return t_ms + work_ms
            # the last millisecond of that much open time, itself open
            return office.deadline_ms(t_ms, work_ms + 1) - 1

        def set_status(t_ms: int, new: str) -> None:
            nonlocal status, status_at
            if new != status and status != "closed":
                status_at = max(t_ms, status_at + 1)
                events.append((status_at, _TICKET_STATUS, new))
                status = new

        if rng.random() < 0.4:  # auto-acknowledgement: public, but not an agent reply
            events.append((t0 + rng.randint(300, 5000), _TICKET_REPLIED, _SYSTEM))
        answered = rng.random() >= config.unanswered_ratio
        median_s = _FIRST_REPLY_MEDIAN_S[conversation.priority]
        work_ms = int(lognormal(math.log(median_s), _FIRST_REPLY_SIGMA) * scale * 1000) + 1
        # an unanswered ticket is closed (spam, duplicates) after about 3 days, or never
        t = agent_at(t0, work_ms) if answered else t0 + int(3 * 86_400_000 * days) + 60_000
        waiting_ms = t - t0
        breached = not answered or waiting_ms > _BREACH_AFTER_S[conversation.priority] * 1000
        while rng.random() < (0.45 if breached else 0.2):  # "any news on this?"
            events.append((t0 + int(rng.random() * waiting_ms), _TICKET_REPLIED, _CUSTOMER))
        if rng.random() < 0.35:  # an internal note before anyone answers
            share = rng.uniform(0.05, 0.95)
            if answered:
                note_at = agent_at(t0, int(share * work_ms))
            else:
                note_at = agent_at(t0 + int(share * waiting_ms), 0)
            if note_at < t:
                events.append((note_at, _TICKET_REPLIED, _NOTE))
        if not answered:
            # spam, duplicates, tests: closed after about 3 days, or left until a clean-up
            # closes what nobody answered weeks later
            if rng.random() < 0.5:
                set_status(t, "closed")  # closed without ever being solved
            else:
                set_status(t0 + int(rng.uniform(14, 28) * 86_400_000 * days), "closed")
            return events
        events.append((t, _TICKET_REPLIED, _AGENT))
        if rng.random() < 0.28:
            # answered and solved in one go (one touch): submitted as solved, which the
            # helpdesk records at the reply's instant, or solved a moment after sending
            if rng.random() < 0.6:
                set_status(t, "solved")
            else:
                set_status(
                    agent_at(t, int(lognormal(math.log(45.0), 1.0) * life * 1000) + 1), "solved"
                )
            rounds = 0
        else:
            set_status(t + 800, _AFTER_FIRST_REPLY(rng))  # submitted with the reply
            rounds = _ROUNDS(rng)
        solves = 1 + (rng.random() < 0.08)  # some tickets are reopened once
        for solve in range(solves):
            if solve:
                rounds = 1  # the customer writes on the solved ticket, the agent answers
            done = 0
            while done < rounds or status == "hold":  # a hold ends before the solve
                done += 1
                if status == "hold":
                    # waiting on another team or a supplier: hours, sometimes days; the
                    # customer may ask meanwhile (a next-response clock starts)
                    hold_ms = int(lognormal(math.log(8 * 3600.0), 1.0) * days * 1000) + 2000
                    if rng.random() < 0.3:
                        asked_at = t + 1000 + int(rng.uniform(0.1, 0.9) * hold_ms)
                        events.append((asked_at, _TICKET_REPLIED, _CUSTOMER))
                    work_ms = int(lognormal(math.log(600.0), 0.8) * scale * 1000)
                    t = agent_at(t + 1000 + hold_ms, work_ms)
                else:
                    # the customer answers: usually within hours, sometimes days later
                    if rng.random() < 0.12:
                        wait_ms = int(lognormal(math.log(36 * 3600.0), 0.7) * days * 1000)
                    else:
                        wait_ms = int(lognormal(math.log(3600.0), 1.0) * life * 1000)
                    t += 2000 + wait_ms
                    events.append((t, _TICKET_REPLIED, _CUSTOMER))
                    if status in ("pending", "solved"):  # solved: the customer reopens it
                        set_status(t + 500, "open")
                    if rng.random() < 0.2:
                        events.append((agent_at(t, 60_000), _TICKET_REPLIED, _NOTE))
                    work_ms = int(lognormal(math.log(2400.0), 0.9) * scale * 1000)
                    t = agent_at(t, work_ms + int(120_000 * life))
                events.append((t, _TICKET_REPLIED, _AGENT))
                set_status(t + 800, _AFTER_REPLY(rng))
            if status != "solved":
                outcome = rng.random()
                if outcome < 0.03:  # the customer went silent; closed days later, never solved
                    closed_after_ms = int(lognormal(math.log(2 * 86400.0), 0.5) * days * 1000)
                    set_status(t + 1000 + closed_after_ms, "closed")
                    return events
                if outcome < 0.08:
                    # forgotten: open for days, until someone finds it, apologises and asks
                    # whether it is still a problem
                    forgotten_ms = int(lognormal(math.log(5 * 86400.0), 0.5) * days * 1000)
                    work_ms = int(lognormal(math.log(900.0), 0.8) * scale * 1000)
                    t = agent_at(t + 1000 + forgotten_ms, work_ms)
                    events.append((t, _TICKET_REPLIED, _AGENT))
                    set_status(t + 800, "pending")
                roll = rng.random()
                if status == "pending" and roll < 0.45:
                    # the customer confirms it works ("thanks!"); the agent solves it
                    t += 2000 + int(lognormal(math.log(3600.0), 1.0) * life * 1000)
                    events.append((t, _TICKET_REPLIED, _CUSTOMER))
                    set_status(t + 500, "open")
                    t = agent_at(t, int(lognormal(math.log(600.0), 1.0) * scale * 1000) + 1000)
                elif status == "pending" and roll < 0.65:
                    # no answer: the helpdesk's automation solves it after 4 days pending
                    # (in the queue's working hours, where it keeps office hours)
                    pending_ms = int(96 * 3_600_000 * days) + int(rng.randint(0, 3_600_000) * life)
                    t = agent_at(t + pending_ms, 0)
                else:
                    t = agent_at(t, int(lognormal(math.log(300.0), 1.0) * life * 1000) + 1000)
                set_status(t, "solved")
            t = max(t, status_at)
            if rng.random() < config.survey_ratio:
                at = t + int(lognormal(math.log(1800.0), 1.0) * life * 1000)
                events.append((at, _SURVEY, self._survey(rng, conversation, breached)))
            if solve + 1 < solves:
                t += int(lognormal(math.log(6 * 3600.0), 0.8) * life * 1000)
        # closed by the platform 4 days after the last solve
        close_after_ms = int(96 * 3_600_000 * days)
        close_after_ms += int(rng.randint(0, 3_600_000) * life)
        set_status(t + close_after_ms, "closed")
        return events

    def _chat(
        self, rng: random.Random, t0: int, conversation: _Conversation, slow: float
    ) -> list[tuple[int, int, Any]]:
        lognormal = rng.lognormvariate
        events: list[tuple[int, int, Any]] = [(t0, _CHAT_REQUESTED, None)]
        life = self.config.lifecycle_scale
        if rng.random() < 0.005:
            # lost: routed nowhere, and the customer left without the widget saying so; it
            # waits, goes stale, and the platform times the session out hours later
            timeout_s = lognormal(math.log(4 * 3600.0), 0.3) * life
            events.append((t0 + int(timeout_s * 1000) + 1, _CHAT_ENDED, "system"))
            return events
        wait_s = lognormal(math.log(12.0), 0.8) * slow
        if rng.random() < 0.04:  # opened by mistake and closed straight away
            patience_s = rng.uniform(0.3, 4.9)
        else:
            patience_s = lognormal(math.log(150.0), 1.0)
        if patience_s < wait_s:
            t = t0 + int(patience_s * 1000) + 1
            if rng.random() < 0.7:
                events.append((t, _CHAT_ABANDONED, None))
                if rng.random() < 0.5:  # the platform closes the session as well
                    events.append((t + rng.randint(500, 3000), _CHAT_ENDED, "system"))
            else:
                events.append((t, _CHAT_ENDED, "customer"))
            return events
        t = t0 + int(wait_s * 1000) + 1
        events.append((t, _CHAT_ACCEPTED, None))
        t += int(lognormal(math.log(300.0), 0.7) * slow * life * 1000)
        events.append((t, _CHAT_ENDED, _ENDED_BY(rng)))
        if rng.random() < self.config.survey_ratio:
            survey_at = t + int(rng.randint(5000, 120_000) * life)
            events.append((survey_at, _SURVEY, self._survey(rng, conversation, False)))
        return events

    def _survey(
        self, rng: random.Random, conversation: _Conversation, unhappy: bool
    ) -> tuple[str, int, dict[str, str] | None]:
        kind = _SURVEY_KIND(rng)
        score = _SURVEY_SCORE[kind, "unhappy" if unhappy else "happy"](rng)
        roll = rng.random()
        dimensions: dict[str, str] | None = None
        if roll < 0.12:  # the survey tool knows the dimensions; sometimes it sent by email
            channel = "email" if rng.random() < 0.3 else conversation.channel
            dimensions = {
                "channel": channel,
                "queue": conversation.queue,
                "priority": conversation.priority,
            }
        elif roll < 0.17:
            dimensions = {"queue": conversation.queue}
        return (kind, score, dimensions)

    # -- delivery -----------------------------------------------------------------------

    def records(self) -> Iterator[Record]:
        config = self.config
        rng = random.Random(config.seed)
        heap: list[tuple[int, int, int, int, Any, Any]] = []
        sequence = itertools.count()
        digits = config.id_digits
        # (a C-level map: a generator's frame per event cost 9 % of the generation)
        event_numbers = map(f"%0{digits}d".__mod__, itertools.count(1))
        start_ms, end_ms = self.start_ms, self.end_ms
        disorder_ms = config.disorder_s * 1000.0
        max_delay_ms = 20 * disorder_ms
        out_of_order = config.out_of_order
        orphan_ratio = config.orphan_ratio
        duplicate_ratio = config.duplicate_ratio
        malformed_ratio = config.malformed_ratio
        push, pop = heapq.heappush, heapq.heappop
        stamp = self._stamp
        payload_of = self._payload
        prefix = self.prefix
        dumps = orjson.dumps
        getrandbits = rng.getrandbits
        random_ = rng.random

        # a final None flushes the schedule once no conversation is left to start
        for number, t0 in enumerate(itertools.chain(self._arrivals(rng), (None,)), start=1):
            until_ms = end_ms * 2 if t0 is None else t0  # (later than any delivery)
            while heap and heap[0][0] <= until_ms:
                deliver_ms, _, t_ms, code, conversation, extra = pop(heap)
                if code == _RESEND:
                    yield conversation
                    continue
                event_id = f"{prefix}e{next(event_numbers)}"
                occurred_at = stamp(t_ms, _ZONE_TABLE[getrandbits(6)])
                payload = payload_of(code, event_id, occurred_at, conversation, extra)
                record = Record(_TOPIC[code], conversation.key, dumps(payload), t_ms / 1000)
                yield record
                if duplicate_ratio and random_() < duplicate_ratio:
                    again_ms = deliver_ms + 1 + int(rng.expovariate(1 / 20_000))
                    push(heap, (again_ms, next(sequence), t_ms, _RESEND, record, None))
                if malformed_ratio and random_() < malformed_ratio:
                    bad = self._malformed(rng, payload, code, f"{prefix}x{next(event_numbers)}")
                    yield Record(_TOPIC[code], conversation.key, bad, None)
            if t0 is None:
                return

            conversation = self._open(rng, t0, number)
            events = self._lifecycle(rng, t0, conversation)
            if t0 < start_ms and not self._open_at(events, start_ms):
                continue  # over before the stretch: not in the backlog
            events.sort(key=_time_of)
            orphan = bool(orphan_ratio) and random_() < orphan_ratio
            for index, (t_ms, code, extra) in enumerate(events):
                if t_ms >= end_ms:
                    break
                if index == 0 and orphan:
                    continue
                deliver_ms = t_ms
                if out_of_order and random_() < out_of_order:
                    deliver_ms += 1 + int(min(rng.expovariate(1 / disorder_ms), max_delay_ms))
                    if index == 0 and len(events) > 1 and events[1][0] < end_ms:
                        # the opener comes in after the conversation's next event
                        deliver_ms = max(deliver_ms, events[1][0] + rng.randint(1, 5000))
                push(heap, (deliver_ms, next(sequence), t_ms, code, conversation, extra))
            if len(heap) > self.peak_pending:
                self.peak_pending = len(heap)

    def _stamp(self, t_ms: int, zone: tuple[str, int]) -> str:
        """RFC 3339 with the zone's offset, milliseconds only when there are some."""
        suffix, offset_ms = zone
        day, rest = divmod(t_ms + offset_ms, 86_400_000)
        day_text = self.days.get(day)
        if day_text is None:
            day_text = self.days[day] = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
        hours, rest = divmod(rest, 3_600_000)
        minutes, rest = divmod(rest, 60_000)
        seconds, millis = divmod(rest, 1000)
        if millis:
            return f"{day_text}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}{suffix}"
        return f"{day_text}T{hours:02d}:{minutes:02d}:{seconds:02d}{suffix}"

    @staticmethod
    def _payload(
        code: int, event_id: str, occurred_at: str, conversation: _Conversation, extra: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "event_id": event_id,
            "type": _TYPE[code],
            "occurred_at": occurred_at,
        }
        if code == _TICKET_REPLIED:
            role, public = extra
            payload["ticket_id"] = conversation.id
            payload["author_role"] = role
            if public is not None:
                payload["public"] = public
            if role == "agent":
                # most replies by the conversation's agent, some by a colleague of the same
                # shift who took it over, a few from a tool that names no agent
                roll = zlib.crc32(event_id.encode()) % 100
                if roll >= 18:
                    payload["agent_id"] = conversation.agent
                elif roll >= 3:
                    queue, _, number = conversation.agent.rpartition("-")
                    payload["agent_id"] = f"{queue}-{(int(number) + 3) % 24}"
        elif code == _TICKET_STATUS:
            payload["ticket_id"] = conversation.id
            payload["status"] = extra
        elif code == _TICKET_UPDATED:
            payload["ticket_id"] = conversation.id
            payload.update(extra)
        elif code in (_TICKET_CREATED, _CHAT_REQUESTED):
            payload["ticket_id" if code == _TICKET_CREATED else "chat_id"] = conversation.id
            payload["channel"] = conversation.channel
            payload["queue"] = conversation.queue
            payload["priority"] = conversation.priority
            if conversation.omit is not None:
                del payload[conversation.omit]
            if code == _TICKET_CREATED:
                payload["requester_id"] = "cust-" + conversation.id
            if conversation.tags:  # an extra field consumers must ignore
                payload["tags"] = ["vip"]
        elif code == _SURVEY:
            kind, score, dimensions = extra
            payload["kind"] = kind
            payload["score"] = score
            payload["chat_id" if conversation.is_chat else "ticket_id"] = conversation.id
            if zlib.crc32(event_id.encode()) % 5 >= 2:  # two in five name no agent
                payload["agent_id"] = conversation.agent
            if dimensions:
                payload.update(dimensions)
        else:
            payload["chat_id"] = conversation.id
            if code == _CHAT_ACCEPTED:
                payload["agent_id"] = conversation.agent
            elif code == _CHAT_ENDED:
                payload["ended_by"] = extra
        return payload

    @staticmethod
    def _malformed(rng: random.Random, payload: dict[str, Any], code: int, event_id: str) -> bytes:
        """A record that must be rejected, derived from a real event (with its own id)."""
        bad = dict(payload, event_id=event_id)
        choices = list(_COMMON_FAULTS)
        choices.extend(_TYPE_FAULTS.get(code, ()))
        fault = choices[rng.randrange(len(choices))]
        if fault == "invalid_json":
            text = orjson.dumps(bad)
            return text[: rng.randint(1, len(text) - 1)]
        if fault == "single_quotes":
            return str(bad).encode()
        if fault == "not_an_object":
            return (b"[" + orjson.dumps(bad) + b"]", b'"ticket.created"', b"42", b"null")[
                rng.randrange(4)
            ]
        if fault == "invalid_encoding":
            return orjson.dumps(bad).replace(b'"type"', b'"\xff\xfetype"', 1)
        if fault == "empty":
            return b""
        if fault == "missing_field":
            required = ["event_id", "occurred_at", *_REQUIRED.get(code, ())]
            del bad[required[rng.randrange(len(required))]]
        elif fault == "missing_type":
            del bad["type"]
        elif fault == "unknown_type":
            bad["type"] = ("ticket.merged", "chat.transferred", "TICKET.CREATED", "")[
                rng.randrange(4)
            ]
        elif fault == "naive_timestamp":
            stamp = bad["occurred_at"]
            bad["occurred_at"] = stamp[:-1] if stamp.endswith("Z") else stamp[:-6]
        elif fault == "invalid_timestamp":
            bad["occurred_at"] = ("yesterday", "2026-13-45T25:61:00Z", 1795392000)[rng.randrange(3)]
        elif fault == "event_id_type":
            bad["event_id"] = rng.randrange(1, 10**9)
        elif fault == "event_id_long":
            bad["event_id"] = "e" * 129
        elif fault == "bad_priority":
            bad["priority"] = ("critical", "P1", "URGENT", "")[rng.randrange(4)]
        elif fault == "empty_queue":
            bad["queue"] = ""
        elif fault == "channel_type":
            bad["channel"] = 7
        elif fault == "bad_role":
            bad["author_role"] = "bot"
        elif fault == "public_type":
            bad["public"] = ("yes", 1, "false")[rng.randrange(3)]
        elif fault == "bad_status":
            bad["status"] = "archived"
        elif fault == "bad_ended_by":
            bad["ended_by"] = "robot"
        elif fault == "score_range":
            bad["score"] = {"csat": (0, 6), "nps": (-1, 11), "ces": (0, 8)}[bad["kind"]][
                rng.randrange(2)
            ]
        elif fault == "score_type":
            bad["score"] = (str(bad["score"]), bad["score"] + 0.5, True)[rng.randrange(3)]
        elif fault == "bad_kind":
            bad["kind"] = "ces2"
        elif fault == "no_conversation":
            bad.pop("ticket_id", None)
            bad.pop("chat_id", None)
        return orjson.dumps(bad)


_COMMON_FAULTS = (
    "invalid_json",
    "single_quotes",
    "not_an_object",
    "invalid_encoding",
    "empty",
    "missing_field",
    "missing_type",
    "unknown_type",
    "naive_timestamp",
    "invalid_timestamp",
    "event_id_type",
    "event_id_long",
)
_OPENER_FAULTS = ("bad_priority", "empty_queue", "channel_type")
_TYPE_FAULTS = {
    _TICKET_CREATED: _OPENER_FAULTS,
    _CHAT_REQUESTED: _OPENER_FAULTS,
    _TICKET_REPLIED: ("bad_role", "public_type"),
    _TICKET_STATUS: ("bad_status",),
    _CHAT_ENDED: ("bad_ended_by",),
    _SURVEY: ("score_range", "score_type", "bad_kind", "no_conversation", "bad_priority"),
}
_REQUIRED = {
    _TICKET_CREATED: ("ticket_id",),
    _TICKET_REPLIED: ("ticket_id", "author_role"),
    _TICKET_STATUS: ("ticket_id", "status"),
    _TICKET_UPDATED: ("ticket_id",),
    _CHAT_REQUESTED: ("chat_id",),
    _CHAT_ACCEPTED: ("chat_id",),
    _CHAT_ABANDONED: ("chat_id",),
    _CHAT_ENDED: ("chat_id",),
    _SURVEY: ("kind", "score"),
}


def _time_of(event: tuple[int, int, Any]) -> int:
    return event[0]


def generate(config: SimConfig) -> Iterator[Record]:
    """The records of ``config``'s simulated stretch, in delivery order.

    Roughly event-time order, with the configured disorder, duplicates and malformed
    records mixed in. Deterministic: the same config yields the same records.
    """
    records = _Simulation(config).records()
    if not config.presence:
        return records
    return heapq.merge(records, presence_records(config), key=_delivered_at)


def _delivered_at(record: Record) -> float:
    # a malformed record has no time: it comes where its stream puts it
    return record.occurred_at_s if record.occurred_at_s is not None else -math.inf


def presence_records(config: SimConfig) -> Iterator[Record]:
    """The agents' status changes of ``config``'s stretch (see ``SimConfig.presence``), in
    time order; from their own random stream, so the conversations are the same with or
    without them."""
    rng = random.Random(f"presence-{config.seed}")
    start_ms = round(config.start_s * 1000)
    end_ms = start_ms + round(config.duration_s * 1000)
    prefix = config.id_prefix if config.id_prefix is not None else f"s{config.seed}-"
    day_ms = 86_400_000
    events: list[tuple[int, str, str]] = []
    for queue in config.queues:
        for n in range(24):
            agent = f"agent-{queue}-{n}"
            # shifts start at one of three hours of the day, 8 hours long
            first = start_ms - start_ms % day_ms + (n % 3) * 8 * 3_600_000 - day_ms
            for shift in range(first, end_ms, day_ms):
                t = shift + rng.randint(0, 600_000)
                shift_end = shift + 8 * 3_600_000
                value = "available"
                while t < shift_end:
                    events.append((t, agent, value))
                    if value == "away":
                        t += int(rng.uniform(300_000, 1_200_000))
                        value = "available"
                    else:
                        t += 1 + int(rng.expovariate(1 / 240_000))
                        value = "away" if rng.random() < 0.03 else rng.choice(("available", "busy"))
                events.append((shift_end + rng.randint(0, 600_000), agent, "offline"))
    events.sort()
    for number, (t_ms, agent, value) in enumerate(events, 1):
        if not start_ms <= t_ms < end_ms:
            continue
        occurred_at = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")
        payload = {
            "event_id": f"{prefix}p{number}",
            "type": "agent.status_changed",
            "occurred_at": occurred_at.replace("+00:00", "Z"),
            "agent_id": agent,
            "status": value,
        }
        yield Record("agents", agent.encode(), orjson.dumps(payload), t_ms / 1000)


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write one JSON line per record; return how many were written.

    A line is ``{"topic": "tickets"|"chats"|"surveys", "key": "<conversation id>",
    "value": ...}`` where ``value`` is the event object for a well-formed record and the
    raw text (a JSON string) for a malformed one; a malformed record that is not even
    UTF-8 has ``"value_b64"`` (its bytes in base64) instead of ``value``.
    """
    count = 0
    with open(path, "wb") as out:
        for record in records:
            line: dict[str, Any] = {"topic": record.topic_kind, "key": record.key.decode()}
            if record.occurred_at_s is not None:
                line["value"] = orjson.Fragment(record.value)
            else:
                try:
                    line["value"] = record.value.decode("utf-8")
                except UnicodeDecodeError:
                    line["value_b64"] = base64.b64encode(record.value).decode("ascii")
            out.write(orjson.dumps(line))
            out.write(b"\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """The records written by :func:`write_jsonl`, byte for byte."""
    with open(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            item = orjson.loads(line)
            key = item["key"].encode()
            value = item.get("value")
            if isinstance(value, dict):
                occurred_at_s = datetime.fromisoformat(value["occurred_at"]).timestamp()
                yield Record(item["topic"], key, orjson.dumps(value), occurred_at_s)
            elif "value_b64" in item:
                yield Record(item["topic"], key, base64.b64decode(item["value_b64"]), None)
            else:
                yield Record(item["topic"], key, str(value).encode(), None)
