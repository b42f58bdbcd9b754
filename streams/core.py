"""The pure KPI core: conversation state, KPI contributions, and batch folding.

Nothing here reads the clock, awaits, or imports faust, redis or prometheus.

How exactness survives any processing order
-------------------------------------------
Each conversation (a ticket or a chat, with the surveys that rate it) is summarised by a
:class:`Conversation` whose fields only ever move one way — an earliest time can only get
earlier, a set only grows — so folding its events in any order, with any duplicates, ends
in the same state. The KPI samples a conversation contributes are a pure function of that
state (:func:`contributions`). Applying an event therefore means: take the contributions
before, fold the event, take the contributions after, and write the difference. An early
reply that arrives late retracts the sample of the later reply it replaces; a reply that
arrives before its ticket contributes nothing until the ticket is there ("held").

Every contribution is a set of integer fields (see :data:`FIELDS`) at one event time and
one ``(channel, queue, priority)`` group. Durations are whole milliseconds, so sums are
exact; quantile sketches are counts per log bucket, so they add and subtract too.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice, pairwise
from math import ceil
from typing import Any, ClassVar, NamedTuple, final

import msgspec

from deskpulse.models.sla import Policy, Schedule, SlaMetric, default_policy, policy_for
from deskpulse.models.wire import (
    AgentStatusChanged,
    ChatAbandoned,
    ChatAccepted,
    ChatEnded,
    ChatRequested,
    SurveyResponded,
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
    TicketUpdated,
    WireEvent,
    event_ms,
)
from deskpulse.streams import agent_kpis, presence, sketch
from deskpulse.streams.calendar import BusinessCalendar, business_ms, calendars, deadline_ms
from deskpulse.streams.lifecycle import (
    BACKLOG_FIELDS,
    OPEN_CODES,
    WAITING_FIELD,
    Lifecycle,
    chat_steps,
    lifecycle,
    status_steps,
)
from deskpulse.streams.sla import (
    ACHIEVED,
    AGENT,
    BREACHED,
    CUSTOMER,
    SHORT,
    STATUS_CODES,
    Evaluation,
    Instance,
    Response,
    Terms,
    evaluate,
    evaluate_terms,
    first_response_deadline_terms,
    opening_alert_ms,
    pending_alert_ms,
    terms,
)

__all__ = [
    "AT_RISK_FIELDS",
    "AT_RISK_NOW",
    "FIELDS",
    "HISTOGRAM_BOUNDS_S",
    "LIVE_DIGITS",
    "LONGEST",
    "NOT_COUNTED",
    "OLDEST",
    "PLACES",
    "RUNNING_FIELDS",
    "RUNNING_NOW",
    "SEP",
    "WAITING_DIGIT",
    "BatchResult",
    "Contribution",
    "Conversation",
    "CoreConfig",
    "OtherIds",
    "Pending",
    "SlaClaim",
    "Walk",
    "breach_deadline",
    "contributions",
    "current_dims",
    "dim_key",
    "dims_at",
    "dims_steps",
    "document_at",
    "fold",
    "fold_batch",
    "fold_claim",
    "group_document",
    "has_samples",
    "instances_now",
    "keep_until_ms",
    "live_entry",
    "live_key",
    "presence_contributions",
    "restore",
    "sla_dims",
    "split_dim_key",
    "ticket_terms",
    "timelines_needed",
    "walk_of",
]

#: Separator inside a dimension key and between a dimension key and a field name.
#: Dimension values never contain control characters (the event models refuse them).
SEP = "\x1f"

#: The integer fields a contribution carries; ``*_sk:<index>`` are sketch counts. Every
#: stored code, with its unit: docs/architecture.md, "Stored field codes" (a test holds both).
FIELDS: dict[str, str] = {
    "tc": "tickets created",
    "fr": "first responses",
    "fr_ms": "sum of first response times, ms",
    "fr_in": "first responses within the priority's target (business time under a policy)",
    "fb_ms": "sum of first response times in business time, ms",
    "nr": "next responses",
    "nr_ms": "sum of next response times, ms",
    "nb_ms": "sum of next response times in business time, ms",
    "sa_fr": "first-response SLA instances achieved",
    "sa_nr": "next-response SLA instances achieved",
    "sa_rs": "resolution SLA instances achieved",
    "sb_fr": "first-response SLA instances breached (and claimed)",
    "sb_nr": "next-response SLA instances breached (and claimed)",
    "sb_rs": "resolution SLA instances breached (and claimed)",
    "cr": "chats requested",
    "ca": "chats answered",
    "ca_in": "chats answered within the answer target",
    "ca_ms": "sum of waits of answered chats, ms",
    "cab": "chats abandoned (short abandons excluded)",
    "cs": "chats short-abandoned",
    "cs_n": "CSAT responses",
    "cs_sat": "CSAT satisfied responses (score >= 4)",
    "cs_sum": "sum of CSAT scores",
    "np_n": "NPS responses",
    "np_pro": "NPS promoters (>= 9)",
    "np_det": "NPS detractors (<= 6)",
    "ce_n": "CES responses",
    "ce_sum": "sum of CES scores",
    "rv": "tickets solved for good (a sample at the final solve; a reopen takes it back)",
    "rv_ms": "sum of full resolution times (creation to final solve), ms",
    "rb_ms": "sum of full resolution times in business time, ms",
    "ro": "tickets solved for good that were reopened before",
    "ot": "tickets solved for good with one public agent reply and no reopen",
    "ch": "answered chats ended (handle time samples)",
    "ch_ms": "sum of handle times (accept to end), ms",
    "svt": "solves (changes into solved, or into closed from another status); totals only",
    "rot": "reopens (changes from solved back to an open status); totals only",
    "bl:n": "level steps of tickets in status new (+1 in, -1 out); levels and buckets",
    "bl:o": "level steps of tickets in status open; levels and buckets",
    "bl:p": "level steps of tickets in status pending; levels and buckets",
    "bl:h": "level steps of tickets in status hold; levels and buckets",
    "bl:w": "level steps of waiting chats; levels and buckets",
    "ag:a": "level steps of agents available (+1 in, -1 out); levels and all-groups buckets",
    "ag:b": "level steps of agents busy; levels and all-groups buckets",
    "ag:w": "level steps of agents away; levels and all-groups buckets",
    "ag:o": "level steps of agents offline; levels and all-groups buckets",
    "agt:a": "sum of step x instant of the available level steps, ms; all-groups buckets",
    "agt:b": "sum of step x instant of the busy level steps, ms; all-groups buckets",
}

#: Bounds of the Prometheus-native first-response histogram (targets are added to these).
HISTOGRAM_BOUNDS_S: tuple[int, ...] = (
    60,
    300,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
    172800,
)

Dims = tuple[str, str, str]
Contribution = tuple[int, Dims, str, int]  # (event time ms, group, field, value)
#: a ``ticket.updated``: its event time (ms) and the values it sets (``None``: unchanged)
Move = tuple[int, str | None, str | None, str | None]


@dataclass(frozen=True)
class CoreConfig:
    """The KPI settings the core needs; built from :class:`models.settings.Settings`."""

    bucket_seconds: int = 60
    rollup_seconds: int = 3600
    retention_seconds: int = 48 * 3600
    first_response_targets_s: Mapping[str, int] = field(
        default_factory=lambda: {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400}
    )
    short_abandon_s: int = 5
    chat_answer_target_s: int = 20
    #: how long a ticket not solved or closed keeps its state after its creation
    open_ticket_max_age_s: int = 30 * 86400
    #: how long a chat without an accept, abandon or end counts as waiting
    chat_stale_after_s: int = 3600
    #: the SLA policies, first match wins; ``None``: the one default policy built from
    #: ``first_response_targets_s`` (calendar time, no warnings)
    policies: tuple[Policy, ...] | None = None
    #: the business calendars the policies name
    schedules: Mapping[str, Schedule] = field(default_factory=dict)

    @cached_property
    def histogram_bounds_s(self) -> tuple[int, ...]:
        """Histogram bucket bounds: the fixed ladder plus every configured target."""
        return tuple(sorted({*HISTOGRAM_BOUNDS_S, *self.first_response_targets_s.values()}))

    @cached_property
    def effective_policies(self) -> tuple[Policy, ...]:
        """The policies in force (the default policy when none are set)."""
        if self.policies is not None:
            return self.policies
        return (default_policy(self.first_response_targets_s),)  # type: ignore[arg-type]

    @cached_property
    def calendars(self) -> dict[str, BusinessCalendar]:
        """Every schedule compiled once (their caches live as long as this config)."""
        return calendars(self.schedules)

    @cached_property
    def _terms_cache(self) -> dict[Dims, Terms]:
        return {}

    @cached_property
    def _terms_keys(self) -> dict[Dims, str]:
        return {}

    def terms_key_of(self, dims: Dims) -> str:
        """A fingerprint of :meth:`terms_of` for ``dims``: its policy and schedule as
        configured and the ticket's priority (equal terms, equal keys, in any process)."""
        keys = self._terms_keys
        found = keys.get(dims)
        if found is None:
            policy = policy_for(self.effective_policies, *dims)
            schedule = None if policy is None or policy.schedule is None else policy.schedule
            described = [
                None if policy is None else policy.model_dump(mode="json"),
                None if schedule is None else self.schedules[schedule].model_dump(mode="json"),
                dims[2],
            ]
            digest = hashlib.blake2b(msgspec.json.encode(described, order="sorted"), digest_size=6)
            found = keys[dims] = digest.hexdigest()
        return found

    def terms_of(self, dims: Dims) -> Terms:
        """The terms of a ticket's policy (first match on its dimensions at creation) for
        its priority, with the policy's calendar (``None``: calendar time); looked up once
        per group."""
        cache = self._terms_cache
        found = cache.get(dims)
        if found is None:
            policy = policy_for(self.effective_policies, *dims)
            schedule = None if policy is None else policy.schedule
            calendar = None if schedule is None else self.calendars[schedule]
            found = cache[dims] = terms(policy, dims[2], calendar)
        return found

    @classmethod
    def from_settings(cls, settings: Any) -> CoreConfig:
        """Take the KPI settings out of a :class:`models.settings.Settings`."""
        return cls(
            bucket_seconds=settings.bucket_seconds,
            rollup_seconds=settings.rollup_seconds,
            retention_seconds=settings.retention,
            first_response_targets_s=dict(settings.first_response_targets),
            short_abandon_s=settings.short_abandon,
            chat_answer_target_s=settings.chat_answer_target,
            open_ticket_max_age_s=settings.open_ticket_max_age,
            chat_stale_after_s=settings.chat_stale_after,
            policies=tuple(settings.policies),
            schedules=dict(settings.schedules),
        )


def dim_key(dims: Sequence[str]) -> str:
    """The string form of a ``(channel, queue, priority)`` group."""
    return SEP.join(dims)


def split_dim_key(key: str) -> Dims:
    """Inverse of :func:`dim_key`."""
    channel, queue, priority = key.split(SEP)
    return (channel, queue, priority)


Survey = tuple[int, str, int, str | None, str | None, str | None]


# --- dimensions that change -----------------------------------------------------------------
#
# A ``ticket.updated`` changes some of a ticket's dimensions from its time on. The state
# keeps every change (``Conversation.moves``), so the dimensions in force at any instant
# follow from the state whatever order the changes came in, and every sample is
# attributed to the group of its own instant: the contributions of a ticket with changes
# are worked out as if its dimensions never changed, then each is moved to the group in
# force at its instant, and its backlog steps are taken from its status and its group
# together (:func:`_backlog_steps`). Its SLA terms stay those of its dimensions at the
# creation (first response, resolution), or at the start of each next response.


def dims_steps(
    opened_ms: int, dims: Dims, moves: Iterable[tuple[str, Move]]
) -> list[tuple[int, Dims]]:
    """A ticket's dimensions over its life, ``[(from ms, dims), ...]``: the opener's
    ``dims`` at the creation overlaid by each change of ``moves`` in ``(ms, event_id)``
    order, a change dated at or before the creation acting at the creation. A sample at an
    instant takes the entry from at or before it (a change counts from its own millisecond
    on); the backlog at ``E`` the entry from strictly before ``E``, like the status.
    Consecutive entries differ."""
    ordered = sorted([(ms, event_id, c, q, p) for event_id, (ms, c, q, p) in moves])
    steps: list[tuple[int, Dims]] = [(opened_ms, dims)]
    current = dims
    for ms, _, channel, queue, priority in ordered:
        current = (channel or current[0], queue or current[1], priority or current[2])
        at = ms if ms > opened_ms else opened_ms
        if at == steps[-1][0]:
            steps[-1] = (at, current)
            if len(steps) > 1 and steps[-2][1] == current:
                steps.pop()
        elif current != steps[-1][1]:
            steps.append((at, current))
    return steps


def dims_at(steps: Sequence[tuple[int, Dims]], at_ms: int) -> Dims:
    """The dimensions of :func:`dims_steps` in force for a sample at ``at_ms``."""
    if len(steps) == 1 or at_ms < steps[1][0]:
        return steps[0][1]
    return steps[bisect_right([at for at, _ in steps], at_ms) - 1][1]


def sla_dims(state: Conversation) -> Dims | None:
    """An opened ticket's dimensions at its creation (the opener's, or the changes dated at
    or before it): what chooses its SLA policy."""
    if not state.moves or state.opened is None or state.dims is None:
        return state.dims
    return dims_steps(state.opened[0], state.dims, state.moves.items())[0][1]


def current_dims(state: Conversation) -> Dims | None:
    """A conversation's dimensions now, as of its last commit (its group in the live
    indexes)."""
    return state.now if state.now is not None else state.dims


def ticket_terms(
    state: Conversation, config: CoreConfig
) -> tuple[Terms, Callable[[int], Terms] | None]:
    """An opened ticket's SLA terms: those of its dimensions at the creation, and for a
    ticket whose dimensions changed the terms of a next response started at an instant
    (``None``: the same terms throughout)."""
    assert state.opened is not None and state.dims is not None
    if not state.moves:
        return config.terms_of(state.dims), None
    steps = dims_steps(state.opened[0], state.dims, state.moves.items())
    return config.terms_of(steps[0][1]), _next_terms(steps, config)


def _next_terms(steps: Sequence[tuple[int, Dims]], config: CoreConfig) -> Callable[[int], Terms]:
    def started(at_ms: int) -> Terms:
        return config.terms_of(dims_at(steps, at_ms))

    return started


def _backlog_steps(
    changes: Sequence[tuple[int, str]], steps: Sequence[tuple[int, Dims]]
) -> list[Contribution]:
    """The backlog level steps of a ticket whose dimensions changed: in the backlog by its
    status and its group together, out of the old and into the new at each instant either
    changes (both from :func:`~streams.lifecycle.lifecycle` and :func:`dims_steps`)."""
    out: list[Contribution] = []
    points = sorted({at for at, _ in changes} | {at for at, _ in steps})
    c = d = 0
    status: str | None = None
    group: Dims | None = None
    for point in points:
        was_status, was_group = status, group
        while c < len(changes) and changes[c][0] <= point:
            status = changes[c][1]
            c += 1
        while d < len(steps) and steps[d][0] <= point:
            group = steps[d][1]
            d += 1
        if (status, group) == (was_status, was_group):
            continue
        name = None if was_status is None else BACKLOG_FIELDS.get(was_status)
        if name is not None and was_group is not None:
            out.append((point, was_group, name, -1))
        name = None if status is None else BACKLOG_FIELDS.get(status)
        if name is not None and group is not None:
            out.append((point, group, name, 1))
    return out


class Walk(msgspec.Struct, array_like=True, gc=False):
    """What a ticket's timeline, walked in ``(ms, event_id)`` order up to its latest entry,
    left for the entries after it (docs/architecture.md, "Conversation state").

    :func:`~streams.sla.evaluate_terms` and :func:`~streams.lifecycle.lifecycle` walk the
    whole timeline; a walk resumed from here with the entries after ``key`` reaches the
    same instances, samples, lifecycle and schedule, so a batch that only appends costs
    what it appends. Every sample a finished part of the walk decided (a response, a
    status step, a solve, an instance achieved) was written when it was walked; only the
    final solve's samples (:func:`_closing_fields`) and what runs now are worked out from
    here. Bounded: a few numbers, and the stretches the ticket spent out of the backlog.
    """

    #: the latest entry walked, ``(ms, event_id)``
    key: tuple[int, str]
    #: the status in force and the instant it came in (the creation's ``new`` at first)
    status: str
    since_ms: int
    #: whether any change came after the creation's ``new``
    changed: bool = False
    closed: bool = False
    ignored: int = 0
    #: the stretches out of the backlog before the last change (``from,to,...``)
    gaps: str = ""
    first_reply_ms: int | None = None
    #: the first response instance's end, ``(ms, fulfilled)``
    first_end: tuple[int, bool] | None = None
    #: the first solve (the resolution instance's end)
    solve_ms: int | None = None
    #: the start of the running next response, and how many next responses started
    asked: int | None = None
    asks: int = 0
    #: the lifecycle's final solve so far, whether it was ever reopened, the public agent
    #: replies so far and those at or before the final solve
    final_ms: int | None = None
    reopened: bool = False
    replies: int = 0
    touched: int = 0
    #: the resolution clock: business time of its finished running spans, and the instant
    #: each of its needs (the target, then each warning's) was reached in them, if it was
    clock_ms: int = 0
    reached: tuple[int | None, ...] = ()
    #: the earliest alert instant of the finished next responses not claimed (breach
    #: detection's schedule)
    alert_ms: int | None = None
    #: the terms it was walked under (:meth:`CoreConfig.terms_key_of`): a walk taken under
    #: others (a policy or schedule changed since, or another process's) is walked again
    #: from the whole timeline (:func:`timelines_needed`)
    terms: str = ""


class Conversation(msgspec.Struct, array_like=True, gc=False):
    """Order-independent summary of one conversation (see the module docstring).

    ``opened``, ``accepted`` and ``ended`` are earliest ``(ms, event_id)`` pairs;
    ``surveys`` maps survey event ids to ``(ms, kind, score, channel, queue, priority)``
    with ``None`` for dimensions the survey did not carry; ``timeline`` maps the event id of
    each public reply and status change of a ticket to ``(ms, code)`` (codes:
    :mod:`deskpulse.streams.sla`); ``claims`` are the SLA breaches breach detection claimed
    (``fr:1``, ``nr:2``, ``rs:1``). The ids of every other event (later openers, notes,
    system replies, later chat outcomes) are kept beside the state, not in it
    (:class:`OtherIds`): ``others`` counts them. An id is stored once, where its event is
    kept, and a repeat is found in any of these places.
    ``moves`` maps the event id of each ``ticket.updated`` to ``(ms, channel, queue,
    priority)`` (``None`` for a value it leaves as it was); ``dims`` stay the opener's, and
    ``now`` holds the dimensions in force after the last change (``None`` without changes):
    the group the ticket is kept under in the live indexes (:func:`dims_steps`).
    ``live``, ``now`` and ``counted`` are no event's. ``live`` says where the conversation
    stands in its partition's live indexes as of its last commit (:func:`live_entry`):
    ``""`` nowhere, ``"o"`` among the open tickets or waiting chats of its group,
    ``"x<ms>"`` among those that left them at that instant (a ticket whose dimensions
    changed adds the stretches it spent in its earlier groups, :func:`_stints`). ``counted``
    is the ticket's share of its partition's instance counts as of its last commit
    (:func:`instances_now`), and in its thousands digit whether it is open or waiting now
    (:data:`LIVE_DIGITS`), kept so that a batch writes the difference and the commit
    script takes it back (or drops the ticket from the backlog) when it deletes the state.
    Stored in Redis as the compact JSON array of these fields, in this order (:meth:`dumps`).
    """

    kind: str  # "t" ticket, "c" chat
    opened: tuple[int, str] | None = None
    dims: Dims | None = None
    accepted: tuple[int, str] | None = None
    ended: tuple[int, str] | None = None
    surveys: dict[str, Survey] = msgspec.field(default_factory=dict)
    timeline: dict[str, tuple[int, str]] = msgspec.field(default_factory=dict)
    claims: set[str] = msgspec.field(default_factory=set)
    last_ms: int = 0
    live: str = ""
    #: the agents its events name, for the per-agent KPIs: event id -> ``(ms, role,
    #: agent_id)`` (:mod:`streams.agent_kpis`); empty when none is named. Here, not at the
    #: end: the commit and load scripts read the last three fields from the end of the JSON
    crew: dict[str, tuple[int, str, str]] = msgspec.field(default_factory=dict)
    #: a ticket's dimension changes, event id -> :data:`Move` (see above)
    moves: dict[str, Move] = msgspec.field(default_factory=dict)
    #: a ticket's dimensions now, when it has changes (the commit script reads its group
    #: here, thirteenth, when it drops the ticket at its maximum age; the scripts read
    #: ``stored``, ``others`` and ``counted`` from the end, so they stay last)
    now: Dims | None = None
    #: a ticket's timeline walked up to its latest entry (:class:`Walk`), when its entries
    #: are kept beside the state (``stored`` of them) and ``timeline`` holds only those a
    #: batch adds; ``None``: ``timeline`` is whole (the first ``stored`` of its entries are
    #: kept beside the state too, when it was restored with :func:`restore`)
    walk: Walk | None = None
    #: how many timeline entries are kept beside the state (the store's ``tl:<id>`` hash)
    stored: int = 0
    #: how many events :class:`OtherIds` holds for it (held counts need them)
    others: int = 0
    #: last in the array: the commit script reads it from the end of the stored JSON
    counted: int = 0

    def knows(self, event_id: str) -> bool:
        """Whether an event with this id was folded before and is kept in the state (the
        ids of the others are in :class:`OtherIds`)."""
        return (
            event_id in self.timeline
            or event_id in self.surveys
            or (self.opened is not None and self.opened[1] == event_id)
            or (self.accepted is not None and self.accepted[1] == event_id)
            or (self.ended is not None and self.ended[1] == event_id)
            or event_id in self.moves
        )

    def events(self) -> int:
        """How many distinct events were folded in (claims are no events)."""
        return (
            self.others
            + len(self.timeline)
            + (self.stored if self.walk is not None else 0)
            + len(self.surveys)
            + len(self.moves)
            + (self.opened is not None)
            + (self.accepted is not None)
            + (self.ended is not None)
        )

    def pending(self) -> int:
        """Events held for an opener that has not arrived (orphans if it never does)."""
        if self.opened is not None or self.kind == "a":  # an agent's presence needs none
            return 0
        complete = sum(1 for s in self.surveys.values() if None not in s[3:])
        return self.events() - complete

    @property
    def first_reply(self) -> tuple[int, str] | None:
        """The earliest public agent reply of a ticket, ``(ms, event_id)``."""
        replies = [(ms, eid) for eid, (ms, code) in self.timeline.items() if code == AGENT]
        return min(replies) if replies else None

    def dumps(self) -> bytes:
        """Compact JSON for Redis; sets and maps in sorted order, so equal states are equal
        bytes whichever order their events came in."""
        return _ENCODE(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> Conversation:
        """Inverse of :meth:`dumps`; reads a state of the previous layouts too (9: no
        ``moves`` and ``now``; 8: no ``crew`` either; 7: no ``walk`` and ``stored`` either,
        its timeline whole in it)."""
        try:
            return _DECODE(raw)
        except msgspec.ValidationError:
            pass
        try:
            return _taken_over(_DECODE_9_RAW(raw))
        except msgspec.ValidationError:
            pass
        try:
            # layout 8: no crew (its agents were not kept; they count from its next events)
            return _taken_over(_DECODE_8_RAW(raw))
        except msgspec.ValidationError:
            return _taken_over(_DECODE_7(raw))


class OtherIds(msgspec.Struct, gc=False):
    """The ids of a conversation's events that its state keeps in no field (later openers,
    private notes, system replies, later chat outcomes), as one batch sees them.

    They are stored beside the state, each with its event time, and looked up by id (the
    store's ``P:{pn}:ids``): a batch reads only those of its own events'
    ids found there (``known``) and writes only the ids it adds (``added``, id -> event
    time ms), so what it costs does not grow with the conversation's history. An id
    stays until its event time falls behind the retention: a repeat of an event that old
    is late, never folded, so no repeat goes unnoticed.
    """

    known: AbstractSet[str] = frozenset()
    added: dict[str, int] = msgspec.field(default_factory=dict)


def _remember(state: Conversation, others: OtherIds, event_id: str, at_ms: int) -> None:
    """Keep an event's id beside the state (and count it there)."""
    others.added[event_id] = at_ms
    state.others += 1


@final  # the fold tells a claim from an event by its type alone (`type(x) is SlaClaim`)
class SlaClaim(msgspec.Struct, frozen=True, gc=False):
    """A breach that breach detection claimed for one SLA instance of a ticket, folded into
    the ticket's state like an event (:func:`fold_claim`): idempotent, order independent.

    ``claim`` is the instance's key, ``fr:1``, ``nr:<n>`` or ``rs:1``.
    """

    type: ClassVar[str] = "sla.claimed"
    ticket_id: str
    claim: str

    @property
    def conversation_id(self) -> str:
        return "t:" + self.ticket_id


class _Conversation7(msgspec.Struct, array_like=True, gc=False):
    """A state as store layout 7 wrote it: its timeline whole in it (no walk)."""

    kind: str
    opened: tuple[int, str] | None = None
    dims: Dims | None = None
    accepted: tuple[int, str] | None = None
    ended: tuple[int, str] | None = None
    surveys: dict[str, Survey] = msgspec.field(default_factory=dict)
    timeline: dict[str, tuple[int, str]] = msgspec.field(default_factory=dict)
    claims: set[str] = msgspec.field(default_factory=set)
    last_ms: int = 0
    live: str = ""
    others: int = 0
    counted: int = 0


class _Conversation8(msgspec.Struct, array_like=True, gc=False):
    """A state as store layout 8 wrote it: no ``crew`` (read as a :class:`Conversation`
    with none, :func:`_taken_over`)."""

    kind: str
    opened: tuple[int, str] | None = None
    dims: Dims | None = None
    accepted: tuple[int, str] | None = None
    ended: tuple[int, str] | None = None
    surveys: dict[str, Survey] = msgspec.field(default_factory=dict)
    timeline: dict[str, tuple[int, str]] = msgspec.field(default_factory=dict)
    claims: set[str] = msgspec.field(default_factory=set)
    last_ms: int = 0
    live: str = ""
    walk: Walk | None = None
    stored: int = 0
    others: int = 0
    counted: int = 0


class _Conversation9(msgspec.Struct, array_like=True, gc=False):
    """A state as store layout 9 wrote it: no dimension changes (read as a
    :class:`Conversation` with none, :func:`_taken_over`)."""

    kind: str
    opened: tuple[int, str] | None = None
    dims: Dims | None = None
    accepted: tuple[int, str] | None = None
    ended: tuple[int, str] | None = None
    surveys: dict[str, Survey] = msgspec.field(default_factory=dict)
    timeline: dict[str, tuple[int, str]] = msgspec.field(default_factory=dict)
    claims: set[str] = msgspec.field(default_factory=set)
    last_ms: int = 0
    live: str = ""
    crew: dict[str, tuple[int, str, str]] = msgspec.field(default_factory=dict)
    walk: Walk | None = None
    stored: int = 0
    others: int = 0
    counted: int = 0


def _taken_over(old: _Conversation7 | _Conversation8 | _Conversation9) -> Conversation:
    """A state of an earlier layout as a :class:`Conversation`: the fields it has, the
    fields it lacks at their defaults (read only when a store of that layout is taken
    over, never on the hot path)."""
    return Conversation(**{name: getattr(old, name) for name in old.__struct_fields__})


# a struct without reference cycles (it holds strings, ints and tuples), so gc=False above
_ENCODE = msgspec.json.Encoder(order="deterministic").encode
_DECODE = msgspec.json.Decoder(Conversation).decode
_DECODE_7 = msgspec.json.Decoder(_Conversation7).decode
_DECODE_8_RAW = msgspec.json.Decoder(_Conversation8).decode
_DECODE_9_RAW = msgspec.json.Decoder(_Conversation9).decode


def _earliest(
    state: Conversation,
    others: OtherIds,
    current: tuple[int, str] | None,
    candidate: tuple[int, str],
) -> tuple[int, str]:
    """The earlier pair; the other one's id goes to ``others`` (kept once, in one place)."""
    if current is None:
        return candidate
    if candidate < current:
        _remember(state, others, current[1], current[0])
        return candidate
    _remember(state, others, candidate[1], candidate[0])
    return current


def fold_claim(state: Conversation, claim: str) -> bool:
    """Record a claimed breach; ``False`` if it was claimed before."""
    if claim in state.claims:
        return False
    state.claims.add(claim)
    return True


def fold(
    state: Conversation,
    event: WireEvent | SlaClaim,
    others: OtherIds,
    at_ms: int | None = None,
) -> bool:
    """Fold one event into its conversation (``others``: the ids kept beside its state);
    ``False`` if its ``event_id`` was seen before (or, for a claim, the claim was recorded
    before)."""
    # (not isinstance: on a msgspec struct's class it costs several times a type check)
    if type(event) is SlaClaim:
        return fold_claim(state, event.claim)
    event_id = event.event_id
    if event_id in others.known or event_id in others.added or state.knows(event_id):
        return False
    ms = event_ms(event) if at_ms is None else at_ms
    if ms > state.last_ms:
        state.last_ms = ms
    if type(event) is TicketCreated or type(event) is ChatRequested:
        at = (ms, event_id)
        if state.opened is None or at < state.opened:
            if state.opened is not None:
                _remember(state, others, state.opened[1], state.opened[0])
            state.opened = at
            state.dims = (event.channel, event.queue, event.priority)
        else:
            _remember(state, others, event_id, ms)
    elif type(event) is TicketReplied:
        # public agent and customer replies make the timeline; notes and system replies not
        if event.public and event.author_role != "system":
            state.timeline[event_id] = (ms, AGENT if event.author_role == "agent" else CUSTOMER)
            if event.agent_id is not None and event.author_role == "agent":
                state.crew[event_id] = (ms, agent_kpis.REPLY, event.agent_id)
        else:
            _remember(state, others, event_id, ms)
    elif type(event) is TicketStatusChanged:
        state.timeline[event_id] = (ms, STATUS_CODES[event.status])
    elif type(event) is TicketUpdated:
        state.moves[event_id] = (ms, event.channel, event.queue, event.priority)
    elif type(event) is ChatAccepted:
        was = state.accepted
        state.accepted = _earliest(state, others, state.accepted, (ms, event_id))
        if state.accepted[1] == event_id:
            # the crew keeps the agent of the accept that counts, the earliest, alone
            if was is not None:
                state.crew.pop(was[1], None)
            if event.agent_id is not None:
                state.crew[event_id] = (ms, agent_kpis.ACCEPT, event.agent_id)
    elif type(event) is ChatAbandoned or type(event) is ChatEnded:
        state.ended = _earliest(state, others, state.ended, (ms, event_id))
    elif type(event) is SurveyResponded:
        state.surveys[event_id] = (
            ms,
            event.kind,
            event.score,
            event.channel,
            event.queue,
            event.priority,
        )
        if event.agent_id is not None:
            state.crew[event_id] = (ms, agent_kpis.SURVEY, event.agent_id)
    elif type(event) is AgentStatusChanged:
        state.timeline[event_id] = (ms, presence.STATUS_CODES[event.status])
    else:
        _remember(state, others, event_id, ms)
    return True


def contributions(state: Conversation, config: CoreConfig) -> list[Contribution]:
    """Every KPI sample this conversation contributes, as a pure function of its state
    (whole: a ticket whose timeline is kept beside it is :func:`restore` d first; an
    agent's presence: :func:`presence_contributions`)."""
    if state.kind == "a":
        return []
    if state.walk is not None:
        raise ValueError("restore the ticket's timeline first")
    return _current(state, config)[0]


def presence_contributions(state: Conversation, config: CoreConfig) -> list[presence.Step]:
    """An agent's presence steps (:func:`streams.presence.presence_steps`), as ``(ms,
    field, value)``: kept over all groups, in no ``(channel, queue, priority)`` group."""
    return presence.presence_steps(state.timeline.items(), config.retention_seconds * 1000)


def _current(
    state: Conversation,
    config: CoreConfig,
    view: Evaluation | None = None,
    life: Lifecycle | None = None,
) -> tuple[list[Contribution], int]:
    """:func:`_contributions` of a state as it is now, and its ignored status events
    (``view``, ``life``: its timeline already evaluated, if it was)."""
    return _contributions(
        state.kind,
        state.opened,
        state.dims,
        state.accepted,
        state.ended,
        state.surveys.values(),
        state.timeline.items(),
        state.claims,
        config,
        view,
        life,
        state.moves,
    )


def ignored_status_events(state: Conversation) -> int:
    """A ticket's status events after its close (in timeline order): ignored, counted."""
    if state.walk is not None:
        return state.walk.ignored
    if state.kind != "t" or state.opened is None or not state.timeline:
        return 0
    return evaluate(state.opened[0], "normal", state.timeline.items(), None, None).ignored


def _contributions(
    kind: str,
    opened: tuple[int, str] | None,
    dims: Dims | None,
    accepted: tuple[int, str] | None,
    ended: tuple[int, str] | None,
    surveys: Iterable[Survey],
    timeline: Iterable[tuple[str, tuple[int, str]]],
    claims: AbstractSet[str],
    config: CoreConfig,
    view: Evaluation | None = None,
    life: Lifecycle | None = None,
    moves: Mapping[str, Move] | None = None,
    next_terms: Callable[[int], Terms] | None = None,
) -> tuple[list[Contribution], int]:
    """The contributions, and the count of a ticket's ignored status events (``view``,
    ``life``: the ticket's timeline already evaluated, if it was; ``moves``: a ticket's
    dimension changes; ``next_terms``: see :func:`ticket_terms`)."""
    out: list[Contribution] = []
    ignored = 0
    if moves and kind == "t" and opened is not None and dims is not None:
        return _moved_contributions(
            opened, dims, moves, surveys, timeline, claims, config, view, life
        )
    if opened is not None and dims is not None:
        opened_ms = opened[0]
        if kind == "t":
            out.append((opened_ms, dims, "tc", 1))
            entries = list(timeline)
            if entries:
                if life is None:
                    life = lifecycle(opened_ms, entries)
                _lifecycle_fields(opened_ms, dims, life, config.terms_of(dims), out, 1)
            else:
                out.append((opened_ms, dims, _NEW_STEP, 1))  # in the backlog as new
            # a ticket with neither replies nor statuses samples nothing, and breaches
            # nothing until a claim says so
            if entries or claims:
                ignored = _ticket_fields(
                    opened_ms, dims, entries, claims, config, out, view, next_terms
                )
        else:
            out.append((opened_ms, dims, "cr", 1))
            outcome = _chat_outcome(accepted, ended)
            for at_ms, step in chat_steps(
                opened_ms, None if outcome is None else outcome[1], config.chat_stale_after_s * 1000
            ):
                out.append((at_ms, dims, WAITING_FIELD, step))
            if outcome is not None:
                answered, outcome_ms = outcome
                wait_ms = max(0, outcome_ms - opened_ms)
                if answered:
                    in_target = wait_ms <= config.chat_answer_target_s * 1000
                    out.append((outcome_ms, dims, "ca", 1))
                    out.append((outcome_ms, dims, "ca_in", int(in_target)))
                    out.append((outcome_ms, dims, "ca_ms", wait_ms))
                    out.append((outcome_ms, dims, _CW_SK[sketch.index_of(wait_ms / 1000)], 1))
                    if ended is not None:
                        # answered, then ended (or abandoned after the accept): handled
                        handle_ms = ended[0] - outcome_ms
                        out.append((ended[0], dims, "ch", 1))
                        out.append((ended[0], dims, "ch_ms", handle_ms))
                        index = sketch.index_of(handle_ms / 1000)
                        out.append((ended[0], dims, _CH_SK[index], 1))
                elif config.short_abandon_s > 0 and wait_ms < config.short_abandon_s * 1000:
                    out.append((outcome_ms, dims, "cs", 1))
                else:
                    out.append((outcome_ms, dims, "cab", 1))
    for at_ms, survey_kind, score, channel, queue, priority in surveys:
        if channel is None or queue is None or priority is None:
            if dims is None:
                continue  # held until the rated conversation's opener arrives
            channel, queue, priority = (
                channel or dims[0],
                queue or dims[1],
                priority or dims[2],
            )
        out.extend(_survey_fields(at_ms, (channel, queue, priority), survey_kind, score))
    return out, ignored


def _moved_contributions(
    opened: tuple[int, str],
    dims: Dims,
    moves: Mapping[str, Move],
    surveys: Iterable[Survey],
    timeline: Iterable[tuple[str, tuple[int, str]]],
    claims: AbstractSet[str],
    config: CoreConfig,
    view: Evaluation | None,
    life: Lifecycle | None,
) -> tuple[list[Contribution], int]:
    """:func:`_contributions` of a ticket whose dimensions changed: worked out under its
    dimensions at the creation (its SLA terms; a next response's are those at its start),
    each then moved to the group in force at its instant, its backlog steps taken from its
    status and group together, a survey's missing dimensions from those at its instant."""
    steps = dims_steps(opened[0], dims, moves.items())
    first = steps[0][1]
    entries = list(timeline)
    if entries and life is None:
        life = lifecycle(opened[0], entries)
    out, ignored = _contributions(
        "t",
        opened,
        first,
        None,
        None,
        (),
        entries,
        claims,
        config,
        view,
        life,
        next_terms=_next_terms(steps, config) if len(steps) > 1 else None,
    )
    moved = [
        (at_ms, dims_at(steps, at_ms), name, value)
        for at_ms, _, name, value in out
        if not name.startswith("bl:")
    ]
    changes = life.changes if life is not None else ((opened[0], "n"),)
    moved.extend(_backlog_steps(changes, steps))
    for at_ms, survey_kind, score, channel, queue, priority in surveys:
        if channel is None or queue is None or priority is None:
            there = dims_at(steps, at_ms)
            channel, queue, priority = (
                channel or there[0],
                queue or there[1],
                priority or there[2],
            )
        moved.extend(_survey_fields(at_ms, (channel, queue, priority), survey_kind, score))
    return moved, ignored


def _lifecycle_fields(
    opened_ms: int,
    dims: Dims,
    life: Lifecycle,
    plan: Terms,
    out: list[Contribution],
    sign: int,
) -> None:
    """A ticket's lifecycle fields (appended to ``out``), each times ``sign``: its backlog
    level steps, its solves and reopens (cumulative counts), and its full resolution sample
    at the final solve."""
    for at_ms, name, step in status_steps(life.changes):
        out.append((at_ms, dims, name, sign * step))
    for at_ms in life.solves:
        out.append((at_ms, dims, "svt", sign))
    for at_ms in life.reopens:
        out.append((at_ms, dims, "rot", sign))
    _final_fields(
        opened_ms,
        dims,
        life.final_solve_ms,
        bool(life.reopens),
        life.agent_replies,
        plan,
        out,
        sign,
    )


def _final_fields(
    opened_ms: int,
    dims: Dims,
    final_ms: int | None,
    reopened: bool,
    touched: int,
    plan: Terms,
    out: list[Contribution],
    sign: int,
) -> None:
    """A ticket's full resolution sample at its final solve (none without), with its
    reopened or one-touch count; each times ``sign``."""
    if final_ms is None:
        return
    spent_ms = max(0, final_ms - opened_ms)
    business = business_ms(plan.calendar, opened_ms, final_ms) if final_ms > opened_ms else 0
    out.append((final_ms, dims, "rv", sign))
    out.append((final_ms, dims, "rv_ms", sign * spent_ms))
    index = sketch.index_of(spent_ms / 1000)
    out.append((final_ms, dims, _RV_SK[index], sign))
    out.append((final_ms, dims, "rb_ms", sign * business))
    if business != spent_ms:
        index = sketch.index_of(business / 1000)
    out.append((final_ms, dims, _RB_SK[index], sign))
    if reopened:
        out.append((final_ms, dims, "ro", sign))
    elif touched == 1:
        out.append((final_ms, dims, "ot", sign))


def _ticket_fields(
    opened_ms: int,
    dims: Dims,
    timeline: list[tuple[str, tuple[int, str]]],
    claims: AbstractSet[str],
    config: CoreConfig,
    out: list[Contribution],
    view: Evaluation | None = None,
    next_terms: Callable[[int], Terms] | None = None,
) -> int:
    """A ticket's response and SLA samples from its timeline (appended to ``out``); the
    count of its ignored status events."""
    plan = config.terms_of(dims)
    if view is None:
        view = evaluate_terms(opened_ms, timeline, plan, detail=False, next_terms=next_terms)
    _view_fields(opened_ms, dims, view, plan, claims, config, out)
    return view.ignored


def _view_fields(
    opened_ms: int,
    dims: Dims,
    view: Evaluation,
    plan: Terms,
    claims: AbstractSet[str],
    config: CoreConfig,
    out: list[Contribution],
) -> None:
    """The samples of a ticket's evaluated timeline (appended to ``out``)."""
    _first_fields(opened_ms, dims, view, plan, config, out, 1)
    for response in view.next_responses:
        _response_fields(dims, response, out, 1)
    for instance in view.instances:
        _instance_field(dims, instance, claims, out, 1)


def _first_fields(
    opened_ms: int,
    dims: Dims,
    view: Evaluation,
    plan: Terms,
    config: CoreConfig,
    out: list[Contribution],
    sign: int,
) -> None:
    """The first response's fields, each times ``sign`` (-1 takes them back)."""
    reply_ms = view.first_reply_ms
    if reply_ms is None or view.first_business_ms is None:
        return
    frt_ms = max(0, reply_ms - opened_ms)
    business = view.first_business_ms
    target_ms = plan.first_response_ms
    if target_ms is None:
        within = frt_ms <= config.first_response_targets_s[dims[2]] * 1000
    else:
        within = business <= target_ms
    out.append((reply_ms, dims, "fr", sign))
    out.append((reply_ms, dims, "fr_ms", sign * frt_ms))
    out.append((reply_ms, dims, "fr_in", sign * within))
    fr_index = sketch.index_of(frt_ms / 1000)
    out.append((reply_ms, dims, _FR_SK[fr_index], sign))
    bound = _histogram_bound(frt_ms, config.histogram_bounds_s)
    out.append((reply_ms, dims, "frh:" + bound, sign))
    out.append((reply_ms, dims, "fb_ms", sign * business))
    index = fr_index if business == frt_ms else sketch.index_of(business / 1000)
    out.append((reply_ms, dims, _FB_SK[index], sign))


def _response_fields(dims: Dims, response: Response, out: list[Contribution], sign: int) -> None:
    """A next response's fields, each times ``sign``."""
    at_ms = response.at_ms
    out.append((at_ms, dims, "nr", sign))
    out.append((at_ms, dims, "nr_ms", sign * response.calendar_ms))
    index = sketch.index_of(response.calendar_ms / 1000)
    out.append((at_ms, dims, _NR_SK[index], sign))
    out.append((at_ms, dims, "nb_ms", sign * response.business_ms))
    if response.business_ms != response.calendar_ms:
        index = sketch.index_of(response.business_ms / 1000)
    out.append((at_ms, dims, _NB_SK[index], sign))


def _instance_field(
    dims: Dims, instance: Instance, claims: AbstractSet[str], out: list[Contribution], sign: int
) -> None:
    """An SLA instance's count: achieved at its fulfilment, or breached at its deadline once
    claimed (a claim the timeline no longer shows breached counts nothing: the breach is
    taken back); times ``sign``."""
    if instance.outcome == ACHIEVED and instance.end_ms is not None:
        out.append((instance.end_ms, dims, _ACHIEVED[instance.metric], sign))
    elif (
        instance.outcome == BREACHED and instance.deadline_ms is not None and instance.key in claims
    ):
        out.append((instance.deadline_ms, dims, _BREACHED[instance.metric], sign))


_ACHIEVED = {metric: "sa_" + short for metric, short in SHORT.items()}
_BREACHED = {metric: "sb_" + short for metric, short in SHORT.items()}


# --- a timeline walked once -----------------------------------------------------------------
#
# A ticket's timeline entries are kept beside its state (the store's ``tl:<id>`` hash) and
# the state keeps a :class:`Walk`: the evaluation and the lifecycle walked up to the latest
# entry. A batch whose entries of the ticket all come after it resumes the walk with them
# (:func:`_walked_change`): what it costs follows the batch, not the history. A batch with
# an entry at or before it, a claim, an earlier creation, or a ticket with claims, has the
# whole timeline loaded back first (:func:`timelines_needed`, :func:`restore`) and is
# evaluated whole, as before; the walk is then taken again from the whole timeline.

_NEVER: tuple[int, str] = (-(1 << 62), "")
_SOLVED_CODE, _CLOSE = STATUS_CODES["solved"], STATUS_CODES["closed"]
_ENDING_CODES = frozenset((_SOLVED_CODE, _CLOSE))
_OPEN_SET = frozenset(OPEN_CODES)


def _needs(plan: Terms) -> tuple[int, ...]:
    """The elapsed times the resolution clock is watched for: its target, then each
    warning's (none without a resolution target)."""
    target = plan.resolution_ms
    if target is None:
        return ()
    return (target, *(ceil(fraction * target) for fraction in plan.warn_at))


def walk_of(
    opened_ms: int,
    timeline: Iterable[tuple[str, tuple[int, str]]],
    plan: Terms,
    claims: AbstractSet[str] = frozenset(),
    terms: str = "",
) -> Walk:
    """A ticket's whole timeline walked (:class:`Walk`) under ``plan`` (``terms``: its
    :meth:`CoreConfig.terms_key_of`), with its ``claims``."""
    walk = Walk(_NEVER, "n", opened_ms, reached=(None,) * len(_needs(plan)), terms=terms)
    entries = sorted([(ms, event_id, code) for event_id, (ms, code) in timeline])
    _advance(walk, opened_ms, ("", "", ""), plan, None, entries, [], claims)
    return walk


def _advance(
    walk: Walk,
    opened_ms: int,
    dims: Dims,
    plan: Terms,
    config: CoreConfig | None,
    entries: Sequence[tuple[int, str, str]],
    out: list[Contribution],
    claims: AbstractSet[str],
) -> None:
    """Walk ``entries`` (sorted, all after ``walk.key``) on from ``walk``, appending to
    ``out`` the samples they decide (``config`` ``None``: no samples wanted), with the rules
    of :func:`~streams.sla.evaluate_terms` and :func:`~streams.lifecycle.lifecycle`. The
    instances the entries end are none the ``claims`` name (:func:`_claims_settled`): a
    breach among them counts nothing."""
    calendar = plan.calendar
    first_target, next_target = plan.first_response_ms, plan.next_response_ms
    resolution_target = plan.resolution_ms
    needs = _needs(plan)
    reached = list(walk.reached)
    for ms, _, code in entries:
        if code == AGENT:
            walk.replies += 1
            if walk.final_ms is not None and ms <= walk.final_ms:
                walk.touched += 1
            if walk.first_reply_ms is None:
                walk.first_reply_ms = ms
                if config is not None:
                    business = business_ms(calendar, opened_ms, ms) if ms > opened_ms else 0
                    view = Evaluation(ms, business, (), (), 0)
                    _first_fields(opened_ms, dims, view, plan, config, out, 1)
                if walk.first_end is None:
                    walk.first_end = (ms, True)
                    if (
                        config is not None
                        and first_target is not None
                        and ms <= deadline_ms(calendar, opened_ms, first_target)
                    ):
                        out.append((ms, dims, _ACHIEVED["first_response"], 1))
            elif walk.asked is not None:
                start, walk.asked = walk.asked, None
                if config is not None:
                    response = Response(start, ms, ms - start, business_ms(calendar, start, ms))
                    _response_fields(dims, response, out, 1)
                if next_target is not None:
                    _next_ended(walk, start, ms, True, next_target, plan, dims, config, out, claims)
        elif code == CUSTOMER:
            if (
                walk.first_reply_ms is not None
                and walk.asked is None
                and walk.status not in _ENDING_CODES
            ):
                walk.asked = ms
                walk.asks += 1
        elif walk.closed:
            walk.ignored += 1
        elif code != walk.status:
            at = ms if ms > opened_ms else opened_ms
            status, since = walk.status, walk.since_ms
            if needs and status not in plan.pause:
                # a running span of the resolution clock ends
                got = business_ms(calendar, since, at)
                for index, need in enumerate(needs):
                    if reached[index] is None and walk.clock_ms + got >= need:
                        reached[index] = deadline_ms(calendar, since, need - walk.clock_ms)
                walk.clock_ms += got
            if status not in _OPEN_SET and at > since:
                walk.gaps += f",{since},{at}" if walk.gaps else f"{since},{at}"
            if config is not None:
                name = BACKLOG_FIELDS.get(status)
                if name is not None:
                    out.append((at, dims, name, -1))
                name = BACKLOG_FIELDS.get(code)
                if name is not None:
                    out.append((at, dims, name, 1))
            if code == _SOLVED_CODE or (code == _CLOSE and status != _SOLVED_CODE):
                if config is not None:
                    out.append((at, dims, "svt", 1))
                walk.final_ms = at
                walk.touched = walk.replies
            elif status == _SOLVED_CODE and code in _OPEN_SET:
                if config is not None:
                    out.append((at, dims, "rot", 1))
                walk.reopened = True
                walk.final_ms = None
                walk.touched = 0
            if code in _ENDING_CODES:
                if walk.first_end is None:
                    walk.first_end = (at, False)
                if walk.asked is not None:
                    start, walk.asked = walk.asked, None
                    if next_target is not None:
                        _next_ended(
                            walk, start, at, False, next_target, plan, dims, config, out, claims
                        )
                if walk.solve_ms is None and (code == _SOLVED_CODE or status != _SOLVED_CODE):
                    walk.solve_ms = at
                    # the deadline, if reached, was reached in the spans before the solve
                    if (
                        config is not None
                        and resolution_target is not None
                        and (reached[0] is None or reached[0] >= at)
                    ):
                        out.append((at, dims, _ACHIEVED["resolution"], 1))
                walk.closed = code == _CLOSE
            walk.status = code
            walk.since_ms = at
            walk.changed = True
    if entries:
        last = entries[-1]
        walk.key = (last[0], last[1])
    walk.reached = tuple(reached)


def _next_ended(
    walk: Walk,
    start_ms: int,
    end_ms: int,
    fulfilled: bool,
    target_ms: int,
    plan: Terms,
    dims: Dims,
    config: CoreConfig | None,
    out: list[Contribution],
    claims: AbstractSet[str],
) -> None:
    """A next-response instance ended: its count if achieved, its alerts not claimed yet
    into the walk's."""
    calendar = plan.calendar
    deadline = deadline_ms(calendar, start_ms, target_ms)
    best = walk.alert_ms
    key = f"nr:{walk.asks}"
    if end_ms <= deadline:
        if fulfilled and config is not None:
            out.append((end_ms, dims, _ACHIEVED["next_response"], 1))
    elif key not in claims and (best is None or deadline < best):
        best = deadline
    for fraction in plan.warn_at if key not in claims else ():
        instant = deadline_ms(calendar, start_ms, ceil(fraction * target_ms))
        if (
            instant < end_ms
            and f"{key}@{fraction}" not in claims
            and (best is None or instant < best)
        ):
            best = instant
    walk.alert_ms = best


def _clock_at(walk: Walk, plan: Terms, index: int) -> int | None:
    """When the resolution clock reaches its ``index``-th need (:func:`_needs`), if ever."""
    found = walk.reached[index]
    if found is not None or walk.status in plan.pause:
        return found
    return deadline_ms(plan.calendar, walk.since_ms, _needs(plan)[index] - walk.clock_ms)


def _walked_alert(walk: Walk, opened_ms: int, plan: Terms, claims: AbstractSet[str]) -> int | None:
    """:func:`next_alert_ms` of a ticket from its walk: the earliest deadline or warning
    instant of its instances not claimed yet (the finished next responses' kept in it)."""
    calendar = plan.calendar
    best = walk.alert_ms
    candidates: list[int] = []

    def watch(key: str, deadline: int | None, warnings: Iterable[tuple[float, int | None]]) -> None:
        if key in claims:
            return
        if deadline is not None:
            candidates.append(deadline)
        for fraction, instant in warnings:
            if instant is not None and f"{key}@{fraction}" not in claims:
                candidates.append(instant)

    target = plan.first_response_ms
    if target is not None:
        end = None if walk.first_end is None else walk.first_end[0]
        deadline = deadline_ms(calendar, opened_ms, target)
        warned = []
        for fraction in plan.warn_at:
            instant = deadline_ms(calendar, opened_ms, ceil(fraction * target))
            warned.append((fraction, instant if end is None or instant < end else None))
        watch("fr:1", deadline if end is None or end > deadline else None, warned)
    target = plan.next_response_ms
    if target is not None and walk.asked is not None:
        warned = [
            (fraction, deadline_ms(calendar, walk.asked, ceil(fraction * target)))
            for fraction in plan.warn_at
        ]
        watch(f"nr:{walk.asks}", deadline_ms(calendar, walk.asked, target), warned)
    if plan.resolution_ms is not None:
        solved = walk.solve_ms
        due = _clock_at(walk, plan, 0)
        warned = []
        for index, fraction in enumerate(plan.warn_at, 1):
            reached = _clock_at(walk, plan, index)
            if reached is not None and solved is not None and reached >= solved:
                reached = None
            warned.append((fraction, reached))
        watch("rs:1", due if due is not None and (solved is None or solved > due) else None, warned)
    for instant in candidates:
        if best is None or instant < best:
            best = instant
    return best


def _walked_share(walk: Walk, plan: Terms, claims: AbstractSet[str]) -> int:
    """:func:`_instances_now` of a ticket from its walk: its instances running now are the
    first response until its end, the next response asked last, the resolution until the
    first solve."""
    running: list[tuple[SlaMetric, str]] = []
    if plan.first_response_ms is not None and walk.first_end is None:
        running.append(("first_response", "fr:1"))
    if plan.next_response_ms is not None and walk.asked is not None:
        running.append(("next_response", f"nr:{walk.asks}"))
    if plan.resolution_ms is not None and walk.solve_ms is None:
        running.append(("resolution", "rs:1"))
    share = NOT_COUNTED
    for metric, key in running:
        digit = RUNNING_NOW
        if claims:
            if key in claims:
                continue  # breached
            marker = key + "@"
            if any(claim.startswith(marker) for claim in claims):
                digit = AT_RISK_NOW
        share += digit * PLACES[metric]
    return share


def _walked_live(walk: Walk) -> tuple[str, int]:
    """:func:`live_entry` of an opened ticket, from its walk."""
    gaps = walk.gaps
    if walk.status in _OPEN_SET:
        return ("o;" + gaps if gaps else "o"), LIVE_DIGITS[walk.status]
    if not walk.changed:
        return "", 0
    left = walk.since_ms
    return (f"x{left};{gaps}" if gaps else f"x{left}"), 0


def _walked_deadline(state: Conversation, walk: Walk, plan: Terms) -> int | None:
    """:func:`breach_deadline` of an opened ticket from its walk."""
    assert state.opened is not None
    opened_ms = state.opened[0]
    if not needs_view(state, plan):
        target = plan.first_response_ms
        if target is None:
            return None
        deadline = deadline_ms(plan.calendar, opened_ms, target)
        end = walk.first_end
        if end is not None and max(end[0], opened_ms) <= deadline:
            return None
        return deadline
    return _walked_alert(walk, opened_ms, plan, state.claims)


def _walked_change(
    state: Conversation,
    inputs: _KpiInputs,
    config: CoreConfig,
    plan: Terms,
) -> tuple[list[Contribution], int, Walk]:
    """:func:`_kpi_change` of a ticket whose timeline is kept beside its state and whose
    batch only appends to it: the samples its new entries decide, the final solve's moved,
    and its new surveys; the change of its ignored status events; its walk resumed."""
    old = state.walk
    assert old is not None and state.opened is not None and state.dims is not None
    opened_ms, dims = state.opened[0], state.dims
    if inputs[6] != state.claims or inputs[0] != state.opened or not _claims_settled(state):
        raise ValueError("a new claim or creation, or a claim not settled, needs it whole")
    entries = sorted([(ms, event_id, code) for event_id, (ms, code) in state.timeline.items()])
    if entries and entries[0][:2] <= old.key:
        raise ValueError("an entry before the ticket's walk needs its whole timeline")
    out: list[Contribution] = []
    walk = msgspec.structs.replace(old)
    _advance(walk, opened_ms, dims, plan, config, entries, out, state.claims)
    if (walk.final_ms, walk.reopened, walk.touched) != (old.final_ms, old.reopened, old.touched):
        _final_fields(opened_ms, dims, old.final_ms, old.reopened, old.touched, plan, out, -1)
        _final_fields(opened_ms, dims, walk.final_ms, walk.reopened, walk.touched, plan, out, 1)
    for at_ms, survey_kind, score, channel, queue, priority in islice(
        state.surveys.values(), inputs[4], None
    ):
        group = (channel or dims[0], queue or dims[1], priority or dims[2])
        out.extend(_survey_fields(at_ms, group, survey_kind, score))
    return out, walk.ignored - old.ignored, walk


def _claims_settled(state: Conversation) -> bool:
    """Whether every claim of a walked ticket is of an instance its walk has ended: the
    outcome of such an instance, and so what its claim counts, no later entry changes (a
    claim of one still running, or not started, is evaluated with the whole timeline)."""
    walk = state.walk
    if not state.claims or walk is None:
        return True
    for claim in state.claims:
        short, _, number = claim.partition("@")[0].partition(":")
        if short == "fr":
            ended = walk.first_end is not None
        elif short == "rs":
            ended = walk.solve_ms is not None
        else:
            n = int(number) if number.isdigit() else 0
            ended = n < walk.asks or (n == walk.asks and walk.asked is None)
        if not ended:
            return False
    return True


def timelines_needed(
    items: Iterable[Pending],
    states: Mapping[str, Conversation | None],
    known: Mapping[str, AbstractSet[str]] | None = None,
    config: CoreConfig | None = None,
) -> set[str]:
    """The tickets among ``states`` whose timeline kept beside the state a batch of
    ``items`` needs whole (:func:`restore` it before :func:`fold_batch`): one with a claim
    of an instance its walk has not ended (:func:`_claims_settled`), or with a claim, an
    earlier creation, a timeline entry at or before its walk, or a public agent reply naming
    an agent at the instant of its walk's latest entry among the items (a repeat found in
    ``known`` changes nothing and needs none). With ``config``, also one whose walk
    was taken under other terms than ``config`` gives it (:meth:`CoreConfig.terms_key_of`)."""
    needed: set[str] = set()
    known = known or {}
    for item in items:
        event, conv_id = item.event, item.conversation_id
        state = states.get(conv_id)
        if state is None or state.walk is None or conv_id in needed:
            continue
        if type(event) is SlaClaim or not _claims_settled(state):
            needed.add(conv_id)
            continue
        if (
            config is not None
            and state.dims is not None
            and state.walk.terms != config.terms_key_of(state.dims)
        ):
            needed.add(conv_id)  # walked under other terms: walked again, whole
            continue
        event_id = event.event_id
        if event_id in known.get(conv_id, _EMPTY):
            continue
        at = (item.ms, event_id)
        if isinstance(event, TicketUpdated):
            needed.add(conv_id)  # a ticket whose dimensions change keeps its timeline whole
        elif isinstance(event, TicketCreated):
            if state.opened is None or at < state.opened:
                needed.add(conv_id)
        elif (
            isinstance(event, TicketStatusChanged)
            or (isinstance(event, TicketReplied) and event.public and event.author_role != "system")
        ) and at <= state.walk.key:
            needed.add(conv_id)
        elif (
            isinstance(event, TicketReplied)
            and event.agent_id is not None
            and item.ms == state.walk.key[0]
            and event.public
            and event.author_role == "agent"
        ):
            # a reply naming an agent at the instant of the latest entry may name the agent
            # of a response sampled there (:func:`_responses_moved`): evaluated whole
            needed.add(conv_id)
    return needed


def restore(state: Conversation, entries: Mapping[str, tuple[int, str]]) -> None:
    """Put a ticket's timeline kept beside its state (``entries``, all ``state.stored`` of
    them) back in it, whole: it is then folded and evaluated whole."""
    if state.walk is None:
        return
    if len(entries) != state.stored:
        raise ValueError(
            f"{len(entries)} timeline entries found beside a state that counts {state.stored}"
        )
    state.timeline = {event_id: (ms, code) for event_id, (ms, code) in entries.items()}
    state.walk = None


def _set_aside(
    conv_id: str,
    state: Conversation,
    plan: Terms,
    walk: Walk | None,
    result: BatchResult,
    terms_key: str = "",
) -> None:
    """Move an opened ticket's timeline entries beside its state: those not kept there
    yet go to ``result.timelines``, the state keeps its walk (``walk``: resumed already)."""
    assert state.opened is not None
    timeline = state.timeline
    if walk is None:
        # whole: its first ``stored`` entries are beside it already (restored)
        walk = walk_of(state.opened[0], timeline.items(), plan, state.claims, terms_key)
        added = dict(islice(timeline.items(), state.stored, None))
        result.whole[conv_id] = timeline
        state.stored = len(timeline)
    else:
        added = timeline
        state.stored += len(timeline)
    if added:
        result.timelines[conv_id] = added
    state.timeline = {}
    state.walk = walk


# --- SLA instances now ----------------------------------------------------------------------
#
# How many SLA instances run now, and how many of those are at risk, is a state at an
# instant, not a sample in a bucket: each partition keeps the two counts per SLA metric in
# its meta hash (RUNNING_FIELDS, AT_RISK_FIELDS), and each ticket keeps its share of them
# in its state (``Conversation.counted``, :func:`instances_now`). A batch writes the
# difference between a touched ticket's share before and after into ``BatchResult.counters``
# (summed over the batch: at most one increment per count per commit), so the counts move
# in the same commit as the state, exactly once; the commit script takes a share back when
# it deletes a state past retention. Time alone moves nothing: a warning or a deadline
# passing changes a share only when breach detection claims it, on the detection clock, in
# the commit that parks the ``sla.at_risk`` or ``sla.breached`` payload. A scrape reads the
# counts from the partitions' metas: O(partitions), whatever the number of tickets.

#: the partition's count of running SLA instances per metric (a field of its meta hash)
RUNNING_FIELDS: dict[SlaMetric, str] = {metric: "sla_running:" + metric for metric in SHORT}
#: the partition's count of running SLA instances at risk per metric (meta hash)
AT_RISK_FIELDS: dict[SlaMetric, str] = {metric: "sla_at_risk:" + metric for metric in SHORT}
#: a metric's digit in a ticket's share: none, running, running and at risk
NOT_COUNTED, RUNNING_NOW, AT_RISK_NOW = 0, 1, 2
#: the decimal place of each metric's digit in a ticket's share (the commit script reads
#: the digits in this order: units, tens, hundreds)
PLACES: dict[SlaMetric, int] = {"first_response": 1, "next_response": 10, "resolution": 100}
_ENDS_FIRST = frozenset((AGENT, STATUS_CODES["solved"], STATUS_CODES["closed"]))


def instances_now(state: Conversation, config: CoreConfig) -> int:
    """A ticket's share of its partition's instance counts, a pure function of its state:
    one decimal digit per SLA metric (:data:`PLACES`), :data:`NOT_COUNTED`,
    :data:`RUNNING_NOW` or :data:`AT_RISK_NOW`.

    An SLA instance is *running* from the event that starts it until an event ends it
    (fulfils or cancels it, in time or late), or until breach detection claims its breach;
    a running instance is *at risk* once breach detection claimed one of its warnings,
    which it does when the detection clock reaches the first ``warn_at`` fraction of the
    target (a policy without warnings has no instance at risk). A ticket has at most one
    running instance per metric: a next response starts only while none runs. The
    thousands digit is the conversation's live digit (:data:`LIVE_DIGITS`).
    """
    if state.opened is None or state.dims is None:
        return NOT_COUNTED
    live = live_entry(state, config)[1] * 1000
    if state.kind != "t":
        return live
    plan, next_terms = ticket_terms(state, config)
    if state.walk is not None:
        return live + _instances_now(state, plan, None)
    view = final_view(state, plan, next_terms) if needs_view(state, plan) else None
    return live + _instances_now(state, plan, view)


def _instances_now(state: Conversation, plan: Terms, view: Evaluation | None) -> int:
    """:func:`instances_now` of an opened ticket, with its timeline evaluated when
    :func:`needs_view` says so (``view``), else ``None``; a walked ticket from its walk."""
    if state.walk is not None:
        return _walked_share(state.walk, plan, state.claims)
    if view is None:
        if not state.timeline and not state.claims:
            # a new ticket (no evaluation, see _add_deltas): its first response and its
            # resolution run from the creation (a resolution paused from the start too)
            share = NOT_COUNTED
            if plan.first_response_ms is not None:
                share += RUNNING_NOW * PLACES["first_response"]
            if plan.resolution_ms is not None:
                share += RUNNING_NOW * PLACES["resolution"]
            return share
        # the first response alone, no warnings, no claims: it runs until the first public
        # agent reply, solve or close (the first status into solved or closed is a change)
        if plan.first_response_ms is None:
            return NOT_COUNTED
        for _, code in state.timeline.values():
            if code in _ENDS_FIRST:
                return NOT_COUNTED
        return RUNNING_NOW
    claims = state.claims
    share = NOT_COUNTED
    for instance in view.instances:
        if instance.end_ms is not None:
            continue
        digit = RUNNING_NOW
        if claims:
            key = instance.key
            if key in claims:
                continue  # breached
            # a warning's claim is ``<key>@<fraction>`` (a retraction's ``<key>@r`` comes
            # only after the breach claim skipped above)
            marker = key + "@"
            if any(claim.startswith(marker) for claim in claims):
                digit = AT_RISK_NOW
        share += digit * PLACES[instance.metric]
    return share


# --- live indexes ---------------------------------------------------------------------------
#
# The backlog and the waiting chats are counted by level steps (streams/lifecycle.py); the
# oldest open ticket and the longest waiting chat need the conversations themselves, in
# order. Each partition keeps, per group, its tickets open now by creation (``lo:<group>``)
# and its chats without an outcome by request (``lw:<group>``), and the conversations that
# left those since the retention horizon by the instant they left (``lx``): the oldest open
# ticket at the present is the first of a sorted set, and at a past instant ``E`` the
# candidates are the first of each group still open and those that left after ``E``.
# A conversation's ``live`` field says where it stands, so a batch writes only the moves.

#: the thousands digit of a conversation's share (``Conversation.counted``): a ticket open
#: now, by its status (1 new, 2 open, 3 pending, 4 hold), or a chat still waiting (5);
#: the commit script drops an expired ticket with a digit from 1 to 4 from the backlog
LIVE_DIGITS: dict[str, int] = {code: place for place, code in enumerate(OPEN_CODES, 1)}
WAITING_DIGIT = 5


def live_entry(
    state: Conversation, config: CoreConfig, life: Lifecycle | None = None
) -> tuple[str, int]:
    """Where an opened conversation stands in the live indexes, and its live digit:
    ``("o", digit)`` open or waiting now, ``("x<ms>", 0)`` left at that instant, or
    ``("", 0)`` never there (a chat whose outcome came with its request). A ticket that
    was out of the backlog for a while before (solved, then reopened) carries those
    stretches after a ``;`` (``o;<from>,<to>,...``): a reader checks an instant against
    them (:data:`INFO`). ``life``: a ticket's lifecycle, if worked out already."""
    opened = state.opened
    if opened is None:
        return "", 0
    if state.kind == "t":
        if state.moves and state.dims is not None:
            return _moved_live(state, opened[0], state.dims, life)
        if state.walk is not None:
            return _walked_live(state.walk)
        if not state.timeline:
            return "o", LIVE_DIGITS["n"]
        if life is None:
            life = lifecycle(opened[0], state.timeline.items())
        gaps = _gaps(life.changes)
        code = life.open_now
        if code is not None:
            return ("o;" + gaps if gaps else "o"), LIVE_DIGITS[code]
        left = life.left_ms
        if left is None:
            return "", 0
        return (f"x{left};{gaps}" if gaps else f"x{left}"), 0
    outcome = _chat_outcome(state.accepted, state.ended)
    if outcome is None:
        return "o", WAITING_DIGIT
    steps = chat_steps(opened[0], outcome[1], config.chat_stale_after_s * 1000)
    return (f"x{steps[-1][0]}" if steps else ""), 0


#: separates a ticket's live place from its stints in earlier groups (:func:`_stints`), and
#: a ticket's id from a stint's number in the live indexes' members (no dimension value
#: holds a control character)
_STINT = "\x1e"
#: separates the parts of one stint
_STINT_PART = "\x1d"


def _moved_live(
    state: Conversation, opened_ms: int, dims: Dims, life: Lifecycle | None
) -> tuple[str, int]:
    """:func:`live_entry` of a ticket whose dimensions changed: its place under its group
    now, out of the backlog (for a reader) before it came into that group, then after
    :data:`_STINT` each earlier group's stretch, ``<until ms>`` ``<group>`` ``<gaps>``
    (:func:`_stints`)."""
    if life is None:
        life = lifecycle(opened_ms, state.timeline.items())
    steps = dims_steps(opened_ms, dims, state.moves.items())
    changes = life.changes
    gaps = _gaps(changes)
    since = steps[-1][0]
    if since > opened_ms:
        gaps = f"{opened_ms},{since},{gaps}" if gaps else f"{opened_ms},{since}"
    code = life.open_now
    if code is not None:
        main, digit = ("o;" + gaps if gaps else "o"), LIVE_DIGITS[code]
    else:
        left = life.left_ms
        main, digit = (f"x{left};{gaps}" if gaps else f"x{left}"), 0
    return main + "".join(_STINT + stint for stint in _stints(opened_ms, changes, steps)), digit


def _stints(
    opened_ms: int, changes: Sequence[tuple[int, str]], steps: Sequence[tuple[int, Dims]]
) -> list[str]:
    """A moved ticket's stretches in its earlier groups, each ``until`` (it left the group
    then), the group's key and the stretches out of the backlog a reader checks an instant
    against: those before it came into the group, and the ticket's own (its last one, if it
    left the backlog for good, up to ``until``)."""
    out: list[str] = []
    last_at, last_code = changes[-1]
    own = _gaps(changes)
    for (since, group), (until, _) in pairwise(steps):
        parts = [own] if own else []
        if since > opened_ms:
            parts.append(f"{opened_ms},{since}")
        if last_code not in LIVE_DIGITS and last_at < until:
            parts.append(f"{last_at},{until}")
        out.append(_STINT_PART.join((str(until), SEP.join(group), ",".join(parts))))
    return out


def _gaps(changes: Sequence[tuple[int, str]]) -> str:
    """The stretches a ticket spent out of the backlog before its last change,
    ``from,to,...``: out at every instant in ``(from, to]``."""
    out: list[str] = []
    for (at_ms, code), (until_ms, _) in pairwise(changes):
        if code not in LIVE_DIGITS and until_ms > at_ms:
            out += (str(at_ms), str(until_ms))
    return ",".join(out)


#: The separator of a conversation's live info (``P:{pn}:li``): ``<opened ms>␟<group>`` and
#: for a ticket its stretches out of the backlog (``␟<from>,<to>,...``): what a reader of a
#: past instant needs to tell whether it was open or waiting then, without its state.
INFO = SEP


def _info(state: Conversation, live: str, dims: Dims | None) -> str | None:
    """The live info a conversation keeps in ``P:{pn}:li`` with its place ``live`` (the
    part before any stint) under its group ``dims`` (``None``: none, an open ticket that
    never left the backlog or a waiting chat)."""
    if state.opened is None or dims is None or not (live[:1] == "x" or ";" in live):
        return None
    gaps = live.partition(";")[2]
    return INFO.join((str(state.opened[0]), SEP.join(dims), gaps))


def live_key(kind: str, dims: Sequence[str]) -> str:
    """The key suffix of a group's live index: open tickets or waiting chats."""
    return ("lo:" if kind == "t" else "lw:") + SEP.join(dims)


def _index_moves(
    conv_id: str,
    state: Conversation,
    live: str,
    was_dims: Dims | None,
    ops: list[tuple[str, str, int, str, str]],
    dims: Dims | None = None,
) -> None:
    """The live index changes that take a conversation from ``state.live`` (under
    ``was_dims``) to ``live`` (under ``dims``, default its opener's), appended to ``ops``:
    ``a`` adds to a sorted set, ``r`` removes from one, ``i`` sets the live info, ``d``
    deletes it. A moved ticket's stints in earlier groups are members of ``lx`` of their
    own (``<id>␞<n>``), each with its live info."""
    if dims is None:
        dims = state.dims
    was, *was_stints = state.live.split(_STINT)
    live, *stints = live.split(_STINT)
    if was[:1] == "o" and was_dims is not None:
        ops.append(("r", live_key(state.kind, was_dims), 0, conv_id, ""))
    elif was[:1] == "x" and live[:1] != "x":
        ops.append(("r", "lx", 0, conv_id, ""))
    if live[:1] == "o" and state.opened is not None and dims is not None:
        ops.append(("a", live_key(state.kind, dims), state.opened[0], conv_id, ""))
    elif live[:1] == "x":
        ops.append(("a", "lx", int(live[1:].partition(";")[0]), conv_id, ""))
    info = _info(state, live, dims)
    if info is not None:
        ops.append(("i", "li", 0, conv_id, info))
    elif _info(state, was, was_dims) is not None or was[:1] == "x" or ";" in was:
        ops.append(("d", "li", 0, conv_id, ""))
    if (stints or was_stints) and state.opened is not None:
        for number in range(len(stints), len(was_stints)):
            member = conv_id + _STINT + str(number)
            ops.append(("r", "lx", 0, member, ""))
            ops.append(("d", "li", 0, member, ""))
        opened = str(state.opened[0])
        for number, stint in enumerate(stints):
            if number < len(was_stints) and was_stints[number] == stint:
                continue
            until, group, gaps = stint.split(_STINT_PART)
            member = conv_id + _STINT + str(number)
            ops.append(("a", "lx", int(until), member, ""))
            ops.append(("i", "li", 0, member, INFO.join((opened, group, gaps))))


def keep_until_ms(state: Conversation, config: CoreConfig) -> int:
    """The score of a conversation in the expiry index: its state is deleted once the
    newest event time is more than the retention past it. That is its newest event time,
    but for a ticket open now, at least its creation plus the open ticket maximum age
    less the retention (so it stays until the maximum age). An agent's presence stays a
    retention longer than its newest event: its last status counts for a retention after
    it (:mod:`streams.presence`), so an event that finds it deleted comes later than that,
    and a fresh state steps exactly as the deleted one would have."""
    if state.kind == "a":
        return state.last_ms + config.retention_seconds * 1000
    if state.kind == "t" and state.opened is not None and 0 < state.counted // 1000 < WAITING_DIGIT:
        keep = state.opened[0] + (config.open_ticket_max_age_s - config.retention_seconds) * 1000
        if keep > state.last_ms:
            return keep
    return state.last_ms


def _move_counts(counters: dict[str, int], moves: Mapping[tuple[int, int], int]) -> None:
    """Add to ``counters`` the change of ``n`` tickets' shares of the instance counts from
    ``before`` to ``after``, for each ``(before, after): n`` of ``moves``."""
    for (before, after), n in moves.items():
        for metric, place in PLACES.items():
            was, now = before // place % 10, after // place % 10
            if was != now:
                running = (now != NOT_COUNTED) - (was != NOT_COUNTED)
                at_risk = (now == AT_RISK_NOW) - (was == AT_RISK_NOW)
                counters[RUNNING_FIELDS[metric]] += n * running
                counters[AT_RISK_FIELDS[metric]] += n * at_risk


class _FieldNames(dict[int, str]):
    """``prefix + index`` for sketch indexes, made once per index (a hot-path f-string)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, index: int) -> str:
        name = self[index] = f"{self.prefix}{index}"
        return name


class _GroupKeys(dict[str, str]):
    """A group's field keys, ``prefix + name`` (the group's key and :data:`SEP`), made once
    per name: the hot loop of :func:`_add_deltas` then hands the bucket hashes the same
    key objects, their hashes known, instead of a new string per change."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, name: str) -> str:
        key = self[name] = self.prefix + name
        return key


_FR_SK = _FieldNames("fr_sk:")
_CW_SK = _FieldNames("cw_sk:")
_FB_SK = _FieldNames("fb_sk:")
_NR_SK = _FieldNames("nr_sk:")
_NB_SK = _FieldNames("nb_sk:")
_RV_SK = _FieldNames("rv_sk:")
_RB_SK = _FieldNames("rb_sk:")
_CH_SK = _FieldNames("ch_sk:")
_NEW_STEP = BACKLOG_FIELDS["n"]

_TO_TOTALS, _TO_BUCKETS, _TO_LEVELS = 1, 2, 4
#: fields counted in the cumulative totals alone (Prometheus counters, never windowed)
_TOTALS_ONLY = frozenset(("svt", "rot"))


class _Routes(dict[str, int]):
    """Where a field goes: sketch counts only to time buckets, histogram counts and the
    solve and reopen counts only to the cumulative totals, level steps to the levels and
    the buckets, every other field to the totals and the buckets (looked up once per field
    name)."""

    def __missing__(self, name: str) -> int:
        if "_sk:" in name:
            route = _TO_BUCKETS
        elif name.startswith("frh:") or name in _TOTALS_ONLY:
            route = _TO_TOTALS
        elif name.startswith("bl:"):
            # level steps: their running sum (the level now) and their buckets (to take
            # the steps after a past instant back)
            route = _TO_LEVELS | _TO_BUCKETS
        else:
            route = _TO_TOTALS | _TO_BUCKETS
        self[name] = route
        return route


_ROUTES = _Routes()


def _histogram_bound(duration_ms: int, bounds_s: Sequence[int]) -> str:
    """The smallest histogram bound holding the duration, ``"+Inf"`` past the last."""
    for bound in bounds_s:
        if duration_ms <= bound * 1000:
            return str(bound)
    return "+Inf"


def breach_deadline(
    state: Conversation,
    config: CoreConfig,
    view: Evaluation | None = None,
    plan: Terms | None = None,
) -> int | None:
    """When breach detection must look at a ticket next (ms), else ``None``: the earliest
    deadline or warning instant of its SLA instances not claimed yet (its score in the
    ``due`` set). With the first-response target alone and nothing claimed, that is the
    first-response deadline while the ticket may still breach it.

    The deadline is the creation plus the policy's first-response target for the ticket's
    priority, in the policy's business time. A ticket is watched from its creation until a
    public agent reply, a solve or a close at or before the deadline (one solved or closed
    first never breaches); one whose first reply came later still breached. A ticket with
    no first-response target is not watched. ``plan``: the ticket's terms, if looked up.
    """
    if state.kind != "t" or state.opened is None or state.dims is None:
        return None
    next_terms = None
    if plan is None or state.moves:
        plan, next_terms = ticket_terms(state, config)
    if state.walk is not None:
        return _walked_deadline(state, state.walk, plan)
    if not needs_view(state, plan):  # v1's quick answer
        return first_response_deadline_terms(state.opened[0], state.timeline.items(), plan)
    if view is None and not state.timeline and not state.claims:
        return opening_alert_ms(state.opened[0], plan)  # a new ticket: no evaluation
    return next_alert_ms(state, plan, view, next_terms)


def needs_view(state: Conversation, plan: Terms) -> bool:
    """Whether :func:`breach_deadline` evaluates the ticket's whole timeline (else v1's
    quick answer does)."""
    first_only = plan.next_response_ms is None and plan.resolution_ms is None
    # a ticket whose dimensions changed may start next responses under other terms
    return not (first_only and not plan.warn_at and not state.claims and not state.moves)


def final_view(
    state: Conversation, plan: Terms, next_terms: Callable[[int], Terms] | None = None
) -> Evaluation:
    """An opened ticket's timeline evaluated as the samples and breach detection's
    schedule need it (outcomes, deadlines, warnings; no elapsed times); ``next_terms``:
    see :func:`ticket_terms`."""
    assert state.opened is not None
    return evaluate_terms(
        state.opened[0],
        state.timeline.items(),
        plan,
        detail=False,
        warn=True,
        next_terms=next_terms,
    )


def next_alert_ms(
    state: Conversation,
    plan: Terms,
    view: Evaluation | None = None,
    next_terms: Callable[[int], Terms] | None = None,
) -> int | None:
    """When breach detection must look at an opened ticket next: the earliest deadline or
    warning instant it has not claimed yet (:func:`~streams.sla.pending_alert_ms`)."""
    if view is None:
        view = final_view(state, plan, next_terms)
    return pending_alert_ms(view, state.claims)


def _chat_outcome(
    accepted: tuple[int, str] | None, ended: tuple[int, str] | None
) -> tuple[bool, int] | None:
    """``(answered, at_ms)`` from the earliest completing event; a tie goes to the accept."""
    if accepted is not None and (ended is None or accepted[0] <= ended[0]):
        return True, accepted[0]
    if ended is not None:
        return False, ended[0]
    return None


def _survey_fields(at_ms: int, group: Dims, kind: str, score: int) -> list[Contribution]:
    if kind == "csat":
        return [
            (at_ms, group, "cs_n", 1),
            (at_ms, group, "cs_sat", int(score >= 4)),
            (at_ms, group, "cs_sum", score),
        ]
    if kind == "nps":
        return [
            (at_ms, group, "np_n", 1),
            (at_ms, group, "np_pro", int(score >= 9)),
            (at_ms, group, "np_det", int(score <= 6)),
        ]
    return [(at_ms, group, "ce_n", 1), (at_ms, group, "ce_sum", score)]


class Pending(NamedTuple):
    """One decoded event with its source coordinates, waiting to be folded.

    ``offset`` -1 marks an event with no place in this partition's fence (``deskpulse
    replay`` applies a record read on another partition straight here): it is never
    skipped as applied and moves no offset; a repeat is absorbed by its ``event_id``.
    """

    event: WireEvent | SlaClaim
    topic: str
    offset: int
    ms: int  # event time in whole ms (models.wire.event_ms), computed once at decode
    #: ``event.conversation_id``, also worked out once: the engine routes and loads by it
    #: and every pass of the fold reads it (the property joins two strings at each call)
    conversation_id: str


@dataclass
class BatchResult:
    """What one batch of one partition changes: everything the store writes atomically.

    ``buckets`` maps ``(level, bucket start s)`` — level ``"b"`` fine, ``"r"`` roll-up — to
    field deltas keyed ``dimkey + SEP + field``, and levels ``"B"`` and ``"R"`` to the same
    summed over all groups, keyed by ``field`` alone (a read without grouping touches only
    those: a tenth of the fields); ``totals`` holds the cumulative family
    (no time), including first-response histogram counts ``frh:<bound>``. Sketch counts
    (``*_sk:<index>``) live only in the time buckets, histogram counts only in the totals.
    Deltas may be zero (a sample that moved within its bucket); the store skips those.
    """

    states: dict[str, Conversation] = field(default_factory=dict)
    #: the ids a conversation's events add beside its state (:class:`OtherIds`), id ->
    #: event time ms, for the conversations that added any
    others: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the timeline entries of tickets to keep beside their states (the store's
    #: ``tl:<id>``), event id -> ``(ms, code)``, for the tickets that add any; none (an
    #: empty map): drop those kept (a ticket that moved keeps its timeline in its state)
    timelines: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    #: the whole timeline of each ticket this batch evaluated whole, whose state now keeps
    #: it beside (what a later look at the batch, like a retraction, reads)
    whole: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    #: next breach check ms of a ticket (``None``: none, it leaves the ``due`` set); a
    #: state in ``states`` without an entry here keeps its ``due`` entry as it is
    deadlines: dict[str, int | None] = field(default_factory=dict)
    buckets: dict[tuple[str, int], dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: the running sums of the level steps (``bl:*``), keyed ``dimkey + SEP + field``
    levels: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: the live indexes' changes, ``(op, key suffix, score, member, info)``: op ``"a"``
    #: adds (or moves) the member with the score, ``"r"`` removes it, ``"i"`` sets the
    #: member's live info to ``info``, ``"d"`` deletes it (see :func:`live_entry`)
    index: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    #: the earliest event time (ms) of the batch's events of the conversations ``index``
    #: moves: what a reader of the live indexes at an instant before it read stays true
    #: (a conversation's place at an instant follows from its events up to that instant)
    index_from_ms: int | None = None
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    offsets: dict[str, int] = field(default_factory=dict)
    watermark_ms: int = 0
    topic_watermarks: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    #: records past the fence by (topic, event type): applied, duplicate or late alike
    fresh: dict[tuple[str, str], int] = field(default_factory=dict)
    #: records at or below the fence by topic: applied before (a redelivery), not again
    skipped: dict[str, int] = field(default_factory=dict)
    #: alert payloads (JSON) to park in the partition's outbox in the same commit, by
    #: event id (breach detection and retractions fill it)
    outbox: dict[str, str] = field(default_factory=dict)


_KpiInputs = tuple[
    tuple[int, str] | None,
    Dims | None,
    tuple[int, str] | None,
    tuple[int, str] | None,
    int,
    int,
    frozenset[str],
    int,
    Dims | None,
]
_EMPTY: frozenset[str] = frozenset()


def _kpi_inputs(state: Conversation) -> _KpiInputs:
    """Everything :func:`contributions` reads of a state (its kind never changes; the
    surveys, the timeline and the dimension changes only gain entries, at the end, so
    their counts stand for them; the claims, rare, are copied), and its group now."""
    return (
        state.opened,
        state.dims,
        state.accepted,
        state.ended,
        len(state.surveys),
        len(state.timeline),
        frozenset(state.claims) if state.claims else _EMPTY,
        len(state.moves),
        state.now,
    )


def fold_batch(
    pending: Iterable[Pending],
    states: Mapping[str, Conversation | None],
    *,
    watermark_ms: int,
    applied_offsets: Mapping[str, int],
    config: CoreConfig,
    known: Mapping[str, AbstractSet[str]] | None = None,
) -> BatchResult:
    """Fold one partition's batch against the stored states of the conversations it touches.

    ``known`` holds, per conversation, the ids among the batch's events that are stored
    beside its state (:class:`OtherIds`; all of them will do as well): a repeat of an event
    its state keeps in no field is found there.

    Records at or below ``applied_offsets[topic]`` were applied by an earlier transaction
    and are skipped (counted in ``skipped``). Events older than the retention behind the
    partition's newest event time are counted as late and not applied; a repeated
    ``event_id`` is counted as a duplicate. Counters: ``dup:<topic>``, ``late:<topic>``,
    ``ignored:closed`` (the change in tickets' status events after their close, a count
    taken from the states, so it ends the same whatever order the events came in).

    In phases: the records past the fence (:func:`_past_fence`), the watermark and the
    late cut, the events folded into their conversations (:func:`_fold_events`), and each
    touched conversation's change of KPI contributions written as field deltas
    (:func:`_add_deltas`).
    """
    result = BatchResult(watermark_ms=watermark_ms)
    items = _past_fence(pending, applied_offsets, result)
    if not items:
        return result
    # The watermark moves first, so the late cut does not depend on the order in the batch.
    result.watermark_ms = max(watermark_ms, *result.topic_watermarks.values())
    cutoff_ms = result.watermark_ms - config.retention_seconds * 1000
    crew_before: dict[str, _CrewInputs] = {}
    working, before = _fold_events(items, states, known or {}, cutoff_ms, result, crew_before)
    _add_deltas(working, before, cutoff_ms, config, result, crew_before)
    if result.index:
        moved = {op[3] for op in result.index}
        result.index_from_ms = min(
            (item.ms for item in items if item.conversation_id in moved), default=0
        )
    return result


def _past_fence(
    pending: Iterable[Pending], applied_offsets: Mapping[str, int], result: BatchResult
) -> list[Pending]:
    """The records not applied before; counts them (``fresh``) and the others
    (``skipped``), and moves the batch's offsets and per-topic newest event times."""
    offsets, topic_watermarks, fresh = result.offsets, result.topic_watermarks, result.fresh
    skipped = result.skipped
    items: list[Pending] = []
    for item in pending:
        topic, offset, ms = item.topic, item.offset, item.ms
        # an unfenced record (offset -1, see Pending) is never skipped nor fenced
        if offset <= applied_offsets.get(topic, -1) and offset >= 0:
            skipped[topic] = skipped.get(topic, 0) + 1
            continue
        items.append(item)
        kind = (topic, item.event.type)
        fresh[kind] = fresh.get(kind, 0) + 1
        if offset > offsets.get(topic, -1):
            offsets[topic] = offset
        # per topic too: breach detection follows the tickets topic alone
        if ms > topic_watermarks.get(topic, -1):
            topic_watermarks[topic] = ms
    return items


def _fold_events(
    items: list[Pending],
    states: Mapping[str, Conversation | None],
    known: Mapping[str, AbstractSet[str]],
    cutoff_ms: int,
    result: BatchResult,
    crew_before: dict[str, _CrewInputs] | None = None,
) -> tuple[dict[str, Conversation], dict[str, tuple[_KpiInputs, int]]]:
    """Fold the events not older than ``cutoff_ms`` into their conversations (counting late
    events and duplicates, ``known``: see :func:`fold_batch`); the conversations touched,
    and for stored ones what their KPIs depended on (and their held count) before the
    batch. The ids the batch keeps beside the states go to ``result.others``; the
    per-agent fields of the stored ones that name agents read, as they were, to
    ``crew_before`` (:func:`_crew_inputs`)."""
    working: dict[str, Conversation] = {}
    ids_of: dict[str, OtherIds] = {}
    before: dict[str, tuple[_KpiInputs, int]] = {}
    counters = result.counters
    applied = 0
    for event, topic, _, ms, conv_id in items:
        if ms < cutoff_ms:
            counters["late:" + topic] += 1
            continue
        state = working.get(conv_id)
        if state is None:
            stored = states.get(conv_id)
            if stored is None:
                state = Conversation(kind=conv_id[0])
            else:
                state = stored
                if state.kind == "a":
                    # an agent's events behind the horizon but the one in force there go
                    # before anything is compared: what they stepped is behind it too
                    presence.compact(state.timeline, cutoff_ms)
                before[conv_id] = (_kpi_inputs(state), state.pending())
                if state.crew and crew_before is not None:
                    crew_before[conv_id] = _crew_inputs(state, None, copy=True)
            working[conv_id] = state
            others = ids_of[conv_id] = OtherIds(known.get(conv_id, _EMPTY))
        else:
            others = ids_of[conv_id]
        if fold(state, event, others, ms):
            applied += 1
        elif type(event) is not SlaClaim:  # a claim made twice is no duplicate event
            counters["dup:" + topic] += 1
    result.applied += applied
    for conv_id, others in ids_of.items():
        if others.added:
            result.others[conv_id] = others.added
    return working, before


def _kpi_change(
    state: Conversation,
    inputs: _KpiInputs,
    config: CoreConfig,
    view: Evaluation | None = None,
    life: Lifecycle | None = None,
) -> tuple[list[Contribution], int]:
    """What a stored conversation contributes now less what it contributed before the batch,
    as ``(time, group, field, delta)`` (empty when the two are the same), and the change
    of its count of ignored status events."""
    opened, dims_before, accepted, ended, surveys_before, timeline_before, claims = inputs[:7]
    moves_before = inputs[7]
    if (
        state.kind == "t"
        and not state.moves
        and opened == state.opened
        and dims_before == state.dims
        and surveys_before == len(state.surveys)
        and opened is not None
        and dims_before is not None
    ):
        # only the timeline or the claims moved: compare what they say first (most
        # timeline events, like a customer reply or a status change, change no sample)
        return _timeline_change(
            state, opened[0], dims_before, timeline_before, claims, config, view, life
        )
    # surveys and timeline entries only ever come in at the end: the first ones are the old
    old, ignored_old = _contributions(
        state.kind,
        opened,
        dims_before,
        accepted,
        ended,
        islice(state.surveys.values(), surveys_before),
        islice(state.timeline.items(), timeline_before),
        claims,
        config,
        moves=dict(islice(state.moves.items(), moves_before)) if moves_before else None,
    )
    new, ignored_new = _current(state, config, view, life)
    if new == old:
        return [], ignored_new - ignored_old  # e.g. a chat ending after it was answered
    delta: dict[tuple[int, Dims, str], int] = defaultdict(int)
    for at_ms, dims, name, value in new:
        delta[(at_ms, dims, name)] += value
    for at_ms, dims, name, value in old:
        delta[(at_ms, dims, name)] -= value
    # (what both hold sums to nothing: left out, as every reader of the changes skips it)
    changes = [(at, dims, name, value) for (at, dims, name), value in delta.items() if value]
    return changes, ignored_new - ignored_old


def _timeline_change(
    state: Conversation,
    opened_ms: int,
    dims: Dims,
    timeline_before: int,
    claims_before: frozenset[str],
    config: CoreConfig,
    view: Evaluation | None = None,
    new_life: Lifecycle | None = None,
) -> tuple[list[Contribution], int]:
    """:func:`_kpi_change` of an opened ticket whose timeline or claims alone moved: the
    two evaluations compared part by part, and only the parts that differ written (taken
    back at their old place, added at their new one)."""
    claims = state.claims
    plan = config.terms_of(dims)
    out: list[Contribution] = []
    # the lifecycle first: a status change moves the backlog even where no sample moves
    old_life = lifecycle(opened_ms, islice(state.timeline.items(), timeline_before))
    if new_life is None:
        new_life = lifecycle(opened_ms, state.timeline.items())
    if old_life != new_life:
        was: list[Contribution] = []
        _lifecycle_fields(opened_ms, dims, old_life, plan, was, 1)
        now: list[Contribution] = []
        _lifecycle_fields(opened_ms, dims, new_life, plan, now, 1)
        _difference(out, was, now)
    if not claims and timeline_before and _only_waits_appended(state.timeline, timeline_before):
        return out, 0
    new = view or evaluate_terms(opened_ms, state.timeline.items(), plan, detail=False)
    if not timeline_before and not claims_before:
        _view_fields(opened_ms, dims, new, plan, claims, config, out)
        return out, new.ignored
    old = evaluate_terms(
        opened_ms, islice(state.timeline.items(), timeline_before), plan, detail=False
    )
    if (old.first_reply_ms, old.first_business_ms) != (new.first_reply_ms, new.first_business_ms):
        _first_fields(opened_ms, dims, old, plan, config, out, -1)
        _first_fields(opened_ms, dims, new, plan, config, out, 1)
    if old.next_responses != new.next_responses:
        kept = set(old.next_responses) & set(new.next_responses)
        for response in old.next_responses:
            if response not in kept:
                _response_fields(dims, response, out, -1)
        for response in new.next_responses:
            if response not in kept:
                _response_fields(dims, response, out, 1)
    if old.instances != new.instances or claims_before != claims:
        # only the counts that moved: an instance whose deadline moved but whose outcome
        # did not (a resolution clock paused) writes nothing
        was = []
        for instance in old.instances:
            _instance_field(dims, instance, claims_before, was, 1)
        now = []
        for instance in new.instances:
            _instance_field(dims, instance, claims, now, 1)
        if was != now:
            same = set(was) & set(now)  # one count per instance: no repeats within a list
            out.extend(
                (at, group, name, -value)
                for at, group, name, value in was
                if (at, group, name, value) not in same
            )
            out.extend(c for c in now if c not in same)
    return out, new.ignored - old.ignored


def _difference(out: list[Contribution], was: list[Contribution], now: list[Contribution]) -> None:
    """Append to ``out`` what takes ``was`` to ``now`` (each the same field at the same
    time and group summed), leaving out what both hold."""
    if was == now:
        return
    delta: dict[tuple[int, Dims, str], int] = defaultdict(int)
    for at_ms, dims, name, value in now:
        delta[(at_ms, dims, name)] += value
    for at_ms, dims, name, value in was:
        delta[(at_ms, dims, name)] -= value
    out.extend((at, dims, name, value) for (at, dims, name), value in delta.items() if value)


#: timeline codes that fulfil, end or count nothing when they come last: a customer reply
#: (it can only start a next response, which samples nothing until an agent answers) and a
#: status that neither solves nor closes (it can only move a running clock's deadline)
_WAITS = frozenset((CUSTOMER, *(STATUS_CODES[s] for s in ("new", "open", "pending", "hold"))))
_CLOSED_CODE = STATUS_CODES["closed"]


def _only_waits_appended(timeline: Mapping[str, tuple[int, str]], before: int) -> bool:
    """Whether the entries after the first ``before`` change none of a ticket's samples:
    all of them waits (:data:`_WAITS`), all later in timeline order than every earlier
    entry, and no earlier close (after which a status counts as ignored).

    Then, with no claims, the evaluation differs from the old one only in instances still
    running or breached-but-unclaimed (which contribute nothing) and in a resolution clock's
    course after its solve (which cannot move an outcome decided at the solve): the most
    common ticket events — a customer's message, a move to pending or on hold — cost a
    scan instead of two evaluations.
    """
    entries = iter(timeline.items())
    latest: tuple[int, str] | None = None
    for event_id, (ms, code) in islice(entries, before):
        if code == _CLOSED_CODE:
            return False
        if latest is None or (ms, event_id) > latest:
            latest = (ms, event_id)
    for event_id, (ms, code) in entries:
        if code not in _WAITS or latest is None or (ms, event_id) < latest:
            return False
    return True


def _add_deltas(
    working: Mapping[str, Conversation],
    before: Mapping[str, tuple[_KpiInputs, int]],
    cutoff_ms: int,
    config: CoreConfig,
    result: BatchResult,
    crew_before: Mapping[str, _CrewInputs] | None = None,
) -> None:
    """Write each touched conversation's KPI change into the totals and the bucket hashes
    (skipping buckets older than ``cutoff_ms``), with its state, held count and deadline;
    and the change of its per-agent fields (``crew_before``: those of the stored states
    that named agents, as they were before the batch) into the agent buckets."""
    crew_before = crew_before or {}
    # the two agent bucket hashes of each fine bucket (:func:`_add_crew`)
    agent_targets: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
    bucket_s, rollup_s = config.bucket_seconds, config.rollup_seconds
    bucket_ms = bucket_s * 1000
    totals, buckets, counters = result.totals, result.buckets, result.counters
    levels = result.levels
    group_keys: dict[Dims, _GroupKeys] = {}
    # the group of the last change (a conversation's changes mostly share one)
    last_dims: Dims | None = None
    keys = _GroupKeys("")
    # the four bucket hashes (fine, roll-up, and both over all groups) of each fine bucket
    targets: dict[int, tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]] = {}
    held_delta = ignored = 0
    # tickets whose share of the instance counts moved, by (share before, share after)
    moves: dict[tuple[int, int], int] = {}
    for conv_id, state in working.items():
        previous = before.get(conv_id)
        if state.kind == "a":
            _add_presence(conv_id, state, previous, cutoff_ms, config, result)
            continue
        changes: Iterable[Contribution]
        # some events (a private note, a system reply, a repeat) move nothing a KPI or the
        # breach schedule reads: no samples change and the ticket's due entry stays
        unchanged = previous is not None and previous[0] == _kpi_inputs(state)
        # a ticket whose breach schedule needs its timeline evaluated: evaluated once, for
        # the samples too (a new ticket's schedule needs no evaluation: opening_alert_ms)
        view = None
        plan = None
        life = None
        walk = None  # a walked ticket's walk resumed with the batch's entries
        if (
            not unchanged
            and state.kind == "t"
            and state.opened is not None
            and state.dims is not None
        ):
            next_terms = None
            if state.moves:
                if state.walk is not None:
                    raise ValueError(f"{conv_id}: restore its timeline first (timelines_needed)")
                plan, next_terms = ticket_terms(state, config)
                state.now = dims_steps(state.opened[0], state.dims, state.moves.items())[-1][1]
                # its timeline is whole in it from now on: the entries kept beside it
                # before go (an empty entry of ``timelines``)
                if state.stored:
                    result.timelines[conv_id] = {}
                    state.stored = 0
            else:
                plan = config.terms_of(state.dims)
            # a walked ticket is walked on below from its new entries alone
            if state.walk is None:
                if (state.timeline or state.claims) and needs_view(state, plan):
                    view = final_view(state, plan, next_terms)
                if state.timeline:
                    # the lifecycle once, for the samples, the backlog and the live indexes
                    life = lifecycle(state.opened[0], state.timeline.items())
        if previous is not None and state.walk is not None and not unchanged:
            assert plan is not None
            held_before = previous[1]
            changes, ignored_change, walk = _walked_change(state, previous[0], config, plan)
            ignored += ignored_change
            state.walk = walk  # what the live place, the share and the schedule read
        elif previous is None:
            # a new conversation: nothing to take back
            held_before = 0
            opened, dims = state.opened, state.dims
            if (
                plan is not None
                and opened is not None
                and dims is not None
                and not (state.timeline or state.claims or state.surveys or state.moves)
            ):
                # a ticket with its creation alone (the most common case): created, and new
                # in the backlog
                changes = ((opened[0], dims, "tc", 1), (opened[0], dims, _NEW_STEP, 1))
            else:
                changes, ignored_now = _current(state, config, view, life)
                ignored += ignored_now
        else:
            inputs, held_before = previous
            if unchanged:
                changes = ()
            else:
                changes, ignored_change = _kpi_change(state, inputs, config, view, life)
                ignored += ignored_change
        if not unchanged and state.opened is not None and state.dims is not None:
            live, digit = live_entry(state, config, life)
            share = digit * 1000
            if plan is not None:
                # what the ticket adds to the partition's instance counts (its share
                # stored with it is what it added before)
                share += _instances_now(state, plan, view)
                if share % 1000 != state.counted % 1000:
                    move = (state.counted, share)
                    moves[move] = moves.get(move, 0) + 1
            state.counted = share
            was_opened = was_dims = None
            if previous is not None:
                was_opened = previous[0][0]
                was_dims = previous[0][8] or previous[0][1]  # its group now, as it was
            dims_now = current_dims(state)
            if live != state.live or was_opened != state.opened or was_dims != dims_now:
                _index_moves(conv_id, state, live, was_dims, result.index, dims_now)
                state.live = live
        if not unchanged and (state.crew or conv_id in crew_before):
            before_crew = crew_before.get(conv_id)
            if before_crew is None and previous is not None:
                # stored, naming no agent before the batch: its fields of before are none
                was = previous[0]
                before_crew = _CrewInputs(*was[:5], crew={}, final_ms=None, timeline=was[5])
            _add_crew(state, changes, before_crew, life, cutoff_ms, config, result, agent_targets)
        # the hot loop: one pass over the changed fields, routed to the totals and buckets
        for at_ms, dims, name, value in changes:
            if value == 0:
                continue
            if dims is not last_dims:
                found = group_keys.get(dims)
                if found is None:
                    found = group_keys[dims] = _GroupKeys(SEP.join(dims) + SEP)
                keys, last_dims = found, dims
            key = keys[name]
            route = _ROUTES[name]
            if route & _TO_TOTALS:
                totals[key] += value
            elif route & _TO_LEVELS:
                levels[key] += value
            if not route & _TO_BUCKETS:
                continue  # histogram counts are cumulative only
            if at_ms < cutoff_ms:
                continue  # an expired bucket is gone
            index = at_ms // bucket_ms
            target = targets.get(index)
            if target is None:
                fine = index * bucket_s  # == bucket_start(at_ms / 1000, bucket_s)
                rollup = fine - fine % rollup_s
                target = targets[index] = (
                    buckets[("b", fine)],
                    buckets[("r", rollup)],
                    buckets[("B", fine)],
                    buckets[("R", rollup)],
                )
            target[0][key] += value
            target[1][key] += value
            # the same over all groups: what a read without grouping needs
            target[2][name] += value
            target[3][name] += value
        held = state.pending()
        result.held[conv_id] = held
        held_delta += held - held_before
        result.states[conv_id] = state
        if not unchanged:  # (absent: the due entry is left as it is)
            result.deadlines[conv_id] = breach_deadline(state, config, view, plan)
        if (
            state.kind == "t"
            and state.opened is not None
            and state.dims is not None
            and not state.moves  # a ticket whose dimensions changed keeps its timeline
        ):
            if walk is not None:
                # the walk already holds the new entries: they only move beside the state
                _set_aside(conv_id, state, config.terms_of(state.dims), walk, result)
            elif state.walk is None and state.timeline:
                terms_key = config.terms_key_of(state.dims)
                _set_aside(conv_id, state, config.terms_of(state.dims), None, result, terms_key)
    if moves:
        _move_counts(counters, moves)
    if working:
        counters["held"] += held_delta
    if ignored:
        counters["ignored:closed"] += ignored


def _add_presence(
    conv_id: str,
    state: Conversation,
    previous: tuple[_KpiInputs, int] | None,
    cutoff_ms: int,
    config: CoreConfig,
    result: BatchResult,
) -> None:
    """Write an agent's change of presence steps: the levels, and the all-groups buckets
    (``B``, ``R``) alone, skipping buckets older than ``cutoff_ms``."""
    retention_ms = config.retention_seconds * 1000
    now = presence.presence_steps(state.timeline.items(), retention_ms)
    delta: dict[tuple[int, str], int] = defaultdict(int)
    for at_ms, name, value in now:
        delta[(at_ms, name)] += value
    if previous is not None:
        # status events only ever come in at the end: the first ones are the old
        kept = previous[0][5]
        was = presence.presence_steps(islice(state.timeline.items(), kept), retention_ms)
        for at_ms, name, value in was:
            delta[(at_ms, name)] -= value
    bucket_s, rollup_s = config.bucket_seconds, config.rollup_seconds
    levels, buckets = result.levels, result.buckets
    # the same steps per agent: its own levels, and its fields in the agent buckets
    agent = conv_id[2:]
    own = agent + SEP
    own_level = agent_kpis.LEVEL_PREFIX + own
    for (at_ms, name), value in delta.items():
        if not value:
            continue
        if name in _PRESENCE_LEVELS:
            levels[name] += value
            levels[own_level + name] += value
        if at_ms < cutoff_ms:
            continue  # an expired bucket is gone
        fine = at_ms // (bucket_s * 1000) * bucket_s
        rollup = fine - fine % rollup_s
        buckets[("B", fine)][name] += value
        buckets[("R", rollup)][name] += value
        buckets[(agent_kpis.FINE, fine)][own + name] += value
        buckets[(agent_kpis.ROLLUP, rollup)][own + name] += value
    result.held[conv_id] = 0
    result.states[conv_id] = state


_PRESENCE_LEVELS = frozenset(presence.LEVEL_FIELDS.values())


def _final_solve_ms(state: Conversation, life: Lifecycle | None = None) -> int | None:
    """An opened ticket's final solve (``life``: its timeline's lifecycle, if taken)."""
    if state.kind != "t" or state.opened is None:
        return None
    if state.walk is not None:
        return state.walk.final_ms
    if life is not None:
        return life.final_solve_ms
    if not state.timeline:
        return None
    return lifecycle(state.opened[0], state.timeline.items()).final_solve_ms


class _CrewInputs(NamedTuple):
    """Everything :func:`streams.agent_kpis.state_fields` reads of a state (the surveys
    only gain entries, at the end, so their count stands for them)."""

    opened: tuple[int, str] | None
    dims: Dims | None
    accepted: tuple[int, str] | None
    ended: tuple[int, str] | None
    surveys: int
    crew: Mapping[str, tuple[int, str, str]]
    final_ms: int | None
    #: how many timeline entries the state held (a whole timeline's first ones are the old)
    timeline: int = 0


def _crew_inputs(state: Conversation, life: Lifecycle | None, *, copy: bool) -> _CrewInputs:
    """A state's :class:`_CrewInputs` (``copy``: its crew copied, for a state about to
    change)."""
    return _CrewInputs(
        state.opened,
        state.dims,
        state.accepted,
        state.ended,
        len(state.surveys),
        dict(state.crew) if copy else state.crew,
        _final_solve_ms(state, life),
        len(state.timeline),
    )


def _crew_fields(state: Conversation, inputs: _CrewInputs) -> list[agent_kpis.AgentField]:
    """:func:`streams.agent_kpis.state_fields` of a state as ``inputs`` saw it."""
    if not inputs.crew:
        return []
    surveys = state.surveys
    if inputs.surveys != len(surveys):
        surveys = dict(islice(surveys.items(), inputs.surveys))
    return agent_kpis.state_fields(
        state.kind,
        inputs.opened,
        inputs.dims,
        inputs.accepted,
        inputs.ended,
        surveys,
        inputs.crew,
        inputs.final_ms,
    )


def _responses_moved(
    state: Conversation, before: _CrewInputs, config: CoreConfig
) -> list[agent_kpis.AgentField]:
    """The responses a ticket sampled before the batch at an instant whose agent the
    batch changed (a reply naming an agent came at the instant of another reply): taken
    from the agent of before, given to the agent of now. The responses that moved or came
    are :func:`streams.agent_kpis.response_fields`' (with the agents of now).

    Such an instant is at most the latest entry of a walked ticket, which then has its
    whole timeline (:func:`timelines_needed`): the samples of before are evaluated from
    its first ``before.timeline`` entries. Rare (two replies of a ticket in one
    millisecond): none is looked for unless the agents of some instant differ."""
    was_at, now_at = agent_kpis.replies_at(before.crew), agent_kpis.replies_at(state.crew)
    moved = {ms for ms, agent in was_at.items() if now_at.get(ms) != agent}
    moved |= {ms for ms in now_at if ms not in was_at}
    if not moved or state.walk is not None or state.opened is None or state.dims is None:
        return []  # a walked ticket's new entries all come after every sample it has
    opened_ms, dims = state.opened[0], state.dims
    plan = config.terms_of(dims)
    old = evaluate_terms(
        opened_ms, islice(state.timeline.items(), before.timeline), plan, detail=False
    )
    samples: list[Contribution] = []
    if old.first_reply_ms in moved:
        _first_fields(opened_ms, dims, old, plan, config, samples, 1)
    for response in old.next_responses:
        if response.at_ms in moved:
            _response_fields(dims, response, samples, 1)
    out: list[agent_kpis.AgentField] = []
    for at_ms, _, name, value in samples:
        if name.startswith("frh:"):
            continue
        was, now = was_at.get(at_ms), now_at.get(at_ms)
        if was is not None:
            out.append((at_ms, was, name, -value))
        if now is not None:
            out.append((at_ms, now, name, value))
    return out


def _add_crew(
    state: Conversation,
    changes: Iterable[Contribution],
    before: _CrewInputs | None,
    life: Lifecycle | None,
    cutoff_ms: int,
    config: CoreConfig,
    result: BatchResult,
    targets: dict[int, tuple[dict[str, int], dict[str, int]]],
) -> None:
    """Write a conversation's change of per-agent fields into the agent buckets (skipping
    buckets older than ``cutoff_ms``; ``targets``: the agent buckets of each fine bucket
    index, found once per batch): its responses' changes moved onto their agents, and
    its other per-agent fields before the batch (as ``before`` saw the state) taken back
    and those of now added (worked out only when what they read moved; what both hold
    adds up to nothing in the buckets, whose zero fields the store skips)."""
    now = _crew_inputs(state, life, copy=False)
    if state.kind == "t" and now.final_ms is None and not now.surveys:
        # a ticket neither solved nor rated (most of a ticket's life) has no such fields
        quiet = before is None or (before.final_ms is None and not before.surveys)
    else:
        # the crew only gains entries (an accept replaced changes ``accepted`` too): the
        # same count is the same crew
        quiet = (
            before is not None
            and before[:5] == now[:5]
            and len(before.crew) == len(now.crew)
            and before.final_ms == now.final_ms
        )
    writes: list[agent_kpis.AgentField] = []
    if not quiet:
        writes = _crew_fields(state, now)
        if before is not None:
            was = _crew_fields(state, before)
            if was == writes:
                writes = []
            else:
                writes.extend((at_ms, agent, name, -value) for at_ms, agent, name, value in was)
    if state.kind == "t" and state.crew:
        writes.extend(agent_kpis.response_fields(changes, state.crew))
        if before is not None and len(before.crew) != len(now.crew):
            writes.extend(_responses_moved(state, before, config))
    if not writes:
        return
    bucket_s, rollup_s = config.bucket_seconds, config.rollup_seconds
    bucket_ms = bucket_s * 1000
    buckets = result.buckets
    for at_ms, agent, name, value in writes:
        if at_ms < cutoff_ms:
            continue  # an expired bucket is gone
        index = at_ms // bucket_ms
        target = targets.get(index)
        if target is None:
            fine = index * bucket_s
            target = targets[index] = (
                buckets[(agent_kpis.FINE, fine)],
                buckets[(agent_kpis.ROLLUP, fine - fine % rollup_s)],
            )
        key = agent + SEP + name
        target[0][key] += value
        target[1][key] += value


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _quantiles(counts: Mapping[int, int], qs: Sequence[float]) -> list[float | None]:
    return sketch.quantiles_of(counts, qs)


def _durations(count: int, sum_ms: int, counts: Mapping[int, int]) -> dict[str, float | None]:
    """Mean and quantiles in seconds of ``count`` durations, ``None`` without samples."""
    if not count:
        return dict.fromkeys(("mean_seconds", "p50_seconds", "p90_seconds", "p95_seconds"))
    p50, p90, p95 = _quantiles(counts, (0.5, 0.9, 0.95))
    return {
        "mean_seconds": sum_ms / count / 1000,
        "p50_seconds": p50,
        "p90_seconds": p90,
        "p95_seconds": p95,
    }


_SKETCHES = ("fr_sk:", "cw_sk:", "fb_sk:", "nr_sk:", "nb_sk:", "rv_sk:", "rb_sk:", "ch_sk:")
#: a group's live state at the window's end (:func:`~streams.query.read_live`): the level
#: fields, and the earliest creation of its open tickets and request of its waiting chats
OLDEST, LONGEST = "oldest_ms", "longest_ms"
_BACKLOG_NAMES = {"new": "n", "open": "o", "pending": "p", "hold": "h"}


def _age(end_ms: int, since_ms: int | None) -> float | None:
    return None if since_ms is None else (end_ms - since_ms) / 1000


def group_document(
    key: Mapping[str, str],
    fields: Mapping[str, int],
    live: Mapping[str, int] | None = None,
    end_s: int | None = None,
) -> dict[str, Any]:
    """One group of the KPI document (docs/kpis.md) from its merged integer fields, and its
    live state at the window's end ``end_s`` (``live``; none: nothing open or waiting).

    Counts are integers (0 when none); a value with no samples is ``None``; ratios are
    full precision.
    """
    live = live or {}
    end_ms = 0 if end_s is None else end_s * 1000

    def get(name: str) -> int:
        return int(fields.get(name, 0))

    sketches: dict[str, dict[int, int]] = {prefix: {} for prefix in _SKETCHES}
    for name, value in fields.items():
        prefix = name[:6]
        if prefix in sketches:
            sketches[prefix][int(name[6:])] = int(value)
    fr_n, ca, cab, nr_n = get("fr"), get("ca"), get("cab"), get("nr")
    rv_n, ch_n = get("rv"), get("ch")
    handle_p50, handle_p90 = _quantiles(sketches["ch_sk:"], (0.5, 0.9)) if ch_n else [None] * 2
    backlog: dict[str, Any] = {
        name: int(live.get("bl:" + code, 0)) for name, code in _BACKLOG_NAMES.items()
    }
    backlog["total"] = sum(backlog.values())
    backlog["oldest_age_seconds"] = _age(end_ms, live.get(OLDEST)) if backlog["total"] else None
    waiting = int(live.get("bl:w", 0))
    fr_p50, fr_p90, fr_p95 = (
        _quantiles(sketches["fr_sk:"], (0.5, 0.9, 0.95)) if fr_n else [None] * 3
    )
    wait_p50, wait_p90 = _quantiles(sketches["cw_sk:"], (0.5, 0.9)) if ca else [None] * 2
    cs_n, np_n, ce_n = get("cs_n"), get("np_n"), get("ce_n")
    nps = _ratio(100 * (get("np_pro") - get("np_det")), np_n)
    sla: dict[str, dict[str, Any]] = {}
    for metric, short in SHORT.items():
        achieved, breached = get("sa_" + short), get("sb_" + short)
        sla[metric] = {
            "achieved": achieved,
            "breached": breached,
            "achieved_ratio": _ratio(achieved, achieved + breached),
        }
    return {
        "key": dict(key),
        "tickets_created": get("tc"),
        "first_response": {
            "count": fr_n,
            "mean_seconds": None if not fr_n else get("fr_ms") / fr_n / 1000,
            "p50_seconds": fr_p50,
            "p90_seconds": fr_p90,
            "p95_seconds": fr_p95,
            "within_target": get("fr_in"),
            "within_target_ratio": _ratio(get("fr_in"), fr_n),
            "business": _durations(fr_n, get("fb_ms"), sketches["fb_sk:"]),
        },
        "next_response": {
            "count": nr_n,
            **_durations(nr_n, get("nr_ms"), sketches["nr_sk:"]),
            "business": _durations(nr_n, get("nb_ms"), sketches["nb_sk:"]),
        },
        "chats": {
            "requested": get("cr"),
            "answered": ca,
            "abandoned": cab,
            "short_abandoned": get("cs"),
            "abandonment_ratio": _ratio(cab, ca + cab),
            "service_level_ratio": _ratio(get("ca_in"), ca + cab),
            "wait_p50_seconds": wait_p50,
            "wait_p90_seconds": wait_p90,
            "waiting": waiting,
            "longest_wait_seconds": _age(end_ms, live.get(LONGEST)) if waiting else None,
            "handle_mean_seconds": None if not ch_n else get("ch_ms") / ch_n / 1000,
            "handle_p50_seconds": handle_p50,
            "handle_p90_seconds": handle_p90,
        },
        "csat": {
            "responses": cs_n,
            "satisfied": get("cs_sat"),
            "ratio": _ratio(get("cs_sat"), cs_n),
            "average": _ratio(get("cs_sum"), cs_n),
        },
        "nps": {
            "responses": np_n,
            "promoters": get("np_pro"),
            "detractors": get("np_det"),
            "score": nps,
        },
        "ces": {"responses": ce_n, "average": _ratio(get("ce_sum"), ce_n)},
        "sla": sla,
        "resolution": {
            "count": rv_n,
            **_durations(rv_n, get("rv_ms"), sketches["rv_sk:"]),
            "business": _durations(rv_n, get("rb_ms"), sketches["rb_sk:"]),
            "reopened": get("ro"),
            "reopen_ratio": _ratio(get("ro"), rv_n),
            "one_touch": get("ot"),
            "one_touch_ratio": _ratio(get("ot"), rv_n),
        },
        "backlog": backlog,
    }


def document_at(
    document: dict[str, Any], live: Mapping[str, int] | None, end_s: int
) -> dict[str, Any]:
    """``document``, a :func:`group_document` of some fields and ``live``, as built for
    the same at the end ``end_s``: only its ages (the oldest open ticket, the longest
    waiting chat) depend on the end. A new document when it has an age; else ``document``
    itself (documents are never changed once built: a reader that keeps what it made of
    one, its JSON, recognises it by identity). ``document`` is left as it is."""
    if not document["backlog"]["total"] and not document["chats"]["waiting"]:
        return document
    live = live or {}
    end_ms = end_s * 1000
    moved = dict(document)
    if document["backlog"]["total"]:
        age = _age(end_ms, live.get(OLDEST))
        moved["backlog"] = {**document["backlog"], "oldest_age_seconds": age}
    if document["chats"]["waiting"]:
        longest = _age(end_ms, live.get(LONGEST))
        moved["chats"] = {**document["chats"], "longest_wait_seconds": longest}
    return moved


def has_samples(fields: Mapping[str, int]) -> bool:
    """Whether a group has any count in its window (groups without are left out; the level
    steps of the backlog and the waiting chats are no samples)."""
    return any(
        value > 0 and "_sk:" not in name and not name.startswith("bl:")
        for name, value in fields.items()
    )
