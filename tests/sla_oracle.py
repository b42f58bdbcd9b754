"""A brute-force oracle for SLA policies on business calendars, for acceptance tests.

It answers the SLA parts of ``deskpulse kpis --json`` (``first_response`` with its
``business`` durations and its policy-based ``within_target``, ``next_response``, and
``sla.<metric>``) and the exact sets of ``sla.breached`` and ``sla.at_risk`` alerts, from
raw record values, straight from docs/kpis.md ("Business calendars and SLA policies"); the
chat and survey sections come from the v1 oracle (tests/oracle.py). It shares no code with
``streams/`` on purpose (only :func:`models.events.decode` to read records), and it works
differently from the engine so that one mistake cannot hide in both:

* **Business time** is measured by walking local calendar days. For each local date the
  schedule's open intervals (``24:00`` ending the day, holidays closed) become the UTC
  instants whose wall-clock time lies in them: the zone's offset is looked up hour by hour
  around the date and every change of offset is bisected to the millisecond, so a
  fall-back day's repeated hour counts twice and a spring-forward day's skipped hour not
  at all. The business time of ``[a, b)`` is the overlap of ``[a, b)`` with the pieces of
  every date around it; a deadline walks forward piece by piece, date by date.
* **A ticket** is read whole: its creation (the earliest ``ticket.created`` by
  ``(ms, event_id)``), its policy (the first whose ``match`` fits the dimensions at the
  creation), then its timeline (public agent and customer replies, status changes) sorted
  by ``(ms, event_id)`` is walked once per metric.

Decisions, as docs/kpis.md takes them:

* Instants are whole milliseconds (event times rounded down), targets ``seconds x 1000``.
* A status change dated before the creation acts at the creation; one equal to the current
  status changes nothing; after ``closed`` status changes are ignored. Events at one
  instant apply in ``event_id`` order, so "the status when a customer replies" is the one
  set by the timeline entries before the reply in that order.
* A solve (into ``solved``, or into ``closed`` from another status) or a close ends a
  running first or next response: cancelled if its deadline had not passed, else it stays
  breached. A reply or a solve exactly at the deadline is in time.
* A next-response instance starts at a public customer reply after the first public agent
  reply while none runs (a breached, unfulfilled one still runs) and the ticket is not
  solved or closed; the next public agent reply fulfils it. Instances are numbered as they
  start, cancelled ones included; every fulfilled one is a sample, with a target or not.
* The resolution clock runs while the status is not in the policy's ``pause``; with the
  clock paused and the target not reached there is no deadline.
* A warning at fraction ``f`` is due when the running elapsed time reaches
  ``ceil(f x target)`` if the instance still runs after that instant's events (paused for
  good afterwards or not); its ``due_at`` is the deadline had the clock kept running.
* Dimensions change (``ticket.updated``, :func:`tests.oracle.dims_at`): every sample and
  count goes to the dimensions in force at its instant (a breach at its deadline). An
  instance keeps the policy, priority and target of its start: the first response and
  the resolution those of the creation, each next response those at the customer reply
  that started it (its business time on that policy's schedule); its alerts carry them.
* Breaches count (and are published) only once breach detection claimed them: every breach
  whose deadline is at or before ``claimed_until_s`` (``None``: none, ``math.inf``: all);
  warnings likewise by their instant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from deskpulse.models.events import (
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
    TicketUpdated,
)

from .oracle import DEFAULT_TARGETS, compute, dims_at, distinct_events

__all__ = [
    "METRICS",
    "AtRisk",
    "Breach",
    "Instance",
    "OracleCalendar",
    "OraclePolicy",
    "Response",
    "SlaRules",
    "TicketSla",
    "evaluate_ticket",
    "evaluate_tickets",
    "expected_breaches",
    "expected_warnings",
    "kpi_document",
    "rfc3339_ms",
]

METRICS = ("first_response", "next_response", "resolution")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# a local date lies within this much of the UTC day of the same name (offsets are < 26 h)
_ZONE_REACH_MS = 30 * HOUR_MS
# a deadline further than this many days ahead means the walk is broken, not the schedule
_MAX_DAYS = 4000


def to_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, rounded down (exact integer arithmetic)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def rfc3339_ms(instant_ms: int) -> str:
    """An instant as RFC 3339 UTC with milliseconds, e.g. ``2026-11-02T08:00:00.000Z``."""
    moment = _EPOCH + timedelta(milliseconds=instant_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


# -- business calendars ---------------------------------------------------------------------


class OracleCalendar:
    """One schedule (``timezone``, ``hours`` per weekday, ``holidays``) as UTC pieces per
    local date."""

    def __init__(
        self, timezone: str, hours: Mapping[str, Sequence[str]], holidays: Sequence[str] = ()
    ) -> None:
        self.zone = ZoneInfo(timezone)
        self.hours: dict[int, list[tuple[int, int]]] = {}
        for day, texts in hours.items():
            intervals = []
            for text in texts:
                start, end = text.split("-")
                intervals.append((_minutes(start), _minutes(end)))  # "24:00" is 1440
            self.hours[WEEKDAYS.index(day)] = sorted(intervals)
        self.holidays = frozenset(date.fromisoformat(str(day)) for day in holidays)
        self._pieces: dict[date, list[tuple[int, int]]] = {}

    @classmethod
    def from_json(cls, schedule: Mapping[str, Any]) -> OracleCalendar:
        """From one value of ``DESKPULSE_SCHEDULES`` as JSON."""
        return cls(schedule["timezone"], schedule.get("hours", {}), schedule.get("holidays", ()))

    def offset_ms(self, instant_ms: int) -> int:
        """The zone's UTC offset at an instant."""
        local = (_EPOCH + timedelta(milliseconds=instant_ms)).astimezone(self.zone)
        offset = local.utcoffset()
        assert offset is not None
        return offset // timedelta(milliseconds=1)

    def local_date(self, instant_ms: int) -> date:
        """The local date an instant falls on."""
        return (_EPOCH + timedelta(milliseconds=instant_ms)).astimezone(self.zone).date()

    def _offset_spans(self, lo_ms: int, hi_ms: int) -> list[tuple[int, int, int]]:
        """``[lo, hi)`` cut into ``(start, end, offset)`` spans of one UTC offset each:
        looked up every hour, each change bisected to the millisecond."""
        spans = []
        start, offset = lo_ms, self.offset_ms(lo_ms)
        probe = lo_ms
        while probe < hi_ms:
            following = min(probe + HOUR_MS, hi_ms)
            if self.offset_ms(following) != offset:
                low, high = probe, following  # offset(low) is the old one, offset(high) not
                while high - low > 1:
                    middle = (low + high) // 2
                    if self.offset_ms(middle) == offset:
                        low = middle
                    else:
                        high = middle
                spans.append((start, high, offset))
                start, offset = high, self.offset_ms(high)
            probe = following
        spans.append((start, hi_ms, offset))
        return spans

    def pieces(self, day: date) -> list[tuple[int, int]]:
        """The UTC instants ``[start, end)`` whose wall-clock time is in an open interval of
        the local date ``day`` (none on a holiday), sorted."""
        found = self._pieces.get(day)
        if found is not None:
            return found
        found = []
        intervals = [] if day in self.holidays else self.hours.get(day.weekday(), [])
        if intervals:
            # wall-clock milliseconds of the date's midnight, as if the zone were UTC
            midnight = (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS
            spans = self._offset_spans(
                midnight - _ZONE_REACH_MS, midnight + DAY_MS + _ZONE_REACH_MS
            )
            for open_min, close_min in intervals:
                wall_open = midnight + open_min * MINUTE_MS
                wall_close = midnight + close_min * MINUTE_MS
                for span_start, span_end, offset in spans:
                    # instants t of the span show the wall clock t + offset
                    start = max(span_start, wall_open - offset)
                    end = min(span_end, wall_close - offset)
                    if start < end:
                        found.append((start, end))
        found.sort()
        self._pieces[day] = found
        return found

    def business_ms(self, start_ms: int, end_ms: int) -> int:
        """Open time in ``[start, end)``: the overlap with the pieces of every local date
        from the day before the start's to the day after the end's."""
        if end_ms <= start_ms:
            return 0
        total = 0
        day = self.local_date(start_ms) - timedelta(days=1)
        last = self.local_date(end_ms) + timedelta(days=1)
        while day <= last:
            for piece_start, piece_end in self.pieces(day):
                overlap = min(piece_end, end_ms) - max(piece_start, start_ms)
                if overlap > 0:
                    total += overlap
            day += timedelta(days=1)
        return total

    def deadline_ms(self, start_ms: int, need_ms: int) -> int:
        """The earliest instant at which the open time since ``start`` reaches ``need``:
        walk the dates forward, spending each piece after the start."""
        if need_ms <= 0:
            return start_ms
        day = self.local_date(start_ms) - timedelta(days=1)
        for _ in range(_MAX_DAYS):
            for piece_start, piece_end in self.pieces(day):
                if piece_end <= start_ms:
                    continue
                begin = max(piece_start, start_ms)
                if need_ms <= piece_end - begin:
                    return begin + need_ms
                need_ms -= piece_end - begin
            day += timedelta(days=1)
        raise AssertionError(f"no deadline within {_MAX_DAYS} days of {rfc3339_ms(start_ms)}")


def _business(calendar: OracleCalendar | None, start_ms: int, end_ms: int) -> int:
    """Elapsed time of ``[start, end)``: on the calendar, or plain time without one."""
    if calendar is None:
        return max(0, end_ms - start_ms)
    return calendar.business_ms(start_ms, end_ms)


def _deadline(calendar: OracleCalendar | None, start_ms: int, need_ms: int) -> int:
    if calendar is None:
        return start_ms + max(0, need_ms)
    return calendar.deadline_ms(start_ms, need_ms)


# -- policies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OraclePolicy:
    """One SLA policy as JSON gives it."""

    name: str
    match: Mapping[str, Sequence[str]]
    schedule: str | None
    targets: Mapping[str, Mapping[str, int]]
    pause: frozenset[str]
    warn_at: tuple[float, ...] = (0.75,)

    @classmethod
    def from_json(cls, policy: Mapping[str, Any]) -> OraclePolicy:
        return cls(
            name=policy["name"],
            match={key: list(values) for key, values in (policy.get("match") or {}).items()},
            schedule=policy.get("schedule"),
            targets={
                metric: dict(by_priority)
                for metric, by_priority in (policy.get("targets") or {}).items()
            },
            pause=frozenset(policy.get("pause", ["pending"])),
            warn_at=tuple(policy.get("warn_at", [0.75])),
        )

    def fits(self, dimensions: Mapping[str, str]) -> bool:
        return all(
            dimensions[key] in allowed for key, allowed in self.match.items() if allowed is not None
        )

    def target_s(self, metric: str, priority: str) -> int | None:
        return self.targets.get(metric, {}).get(priority)


@dataclass(frozen=True)
class SlaRules:
    """Schedules, policies (first match wins) and the v1 first-response targets."""

    calendars: Mapping[str, OracleCalendar]
    policies: Sequence[OraclePolicy]
    first_response_targets: Mapping[str, int] = field(default_factory=lambda: DEFAULT_TARGETS)

    @classmethod
    def from_json(
        cls,
        schedules: Mapping[str, Any],
        policies: Sequence[Mapping[str, Any]] | None,
        first_response_targets: Mapping[str, int] = DEFAULT_TARGETS,
    ) -> SlaRules:
        """From ``DESKPULSE_SCHEDULES`` and ``DESKPULSE_SLA_POLICIES`` as JSON values
        (policies ``None``: the one default policy, calendar time)."""
        if policies is None:
            policies = [
                {
                    "name": "default",
                    "targets": {"first_response": first_response_targets},
                    "warn_at": [],
                }
            ]
        return cls(
            calendars={name: OracleCalendar.from_json(value) for name, value in schedules.items()},
            policies=[OraclePolicy.from_json(policy) for policy in policies],
            first_response_targets=dict(first_response_targets),
        )

    @classmethod
    def from_settings(cls, settings: Any) -> SlaRules:
        """From a :class:`~models.settings.Settings` (its values dumped back to JSON)."""
        schedules = {
            name: schedule.model_dump(mode="json") for name, schedule in settings.schedules.items()
        }
        policies = (
            None
            if settings.sla_policies is None
            else [
                policy.model_dump(mode="json", exclude_none=True)
                for policy in settings.sla_policies
            ]
        )
        return cls.from_json(schedules, policies, dict(settings.first_response_targets))

    def policy_for(self, dimensions: Mapping[str, str]) -> OraclePolicy | None:
        for policy in self.policies:
            if policy.fits(dimensions):
                return policy
        return None


# -- one ticket ---------------------------------------------------------------------------------

ACHIEVED, BREACHED, CANCELLED, RUNNING = "achieved", "breached", "cancelled", "running"


@dataclass(frozen=True)
class Instance:
    """An SLA instance: ``ended_ms`` is its fulfilment (``fulfilled``) or the solve or close
    that ended it; ``deadline_ms`` ``None`` when never reached (a paused resolution).
    ``warnings`` are ``(fraction, instant, due)`` of the policy's ``warn_at`` reached while
    the instance ran (``due``: the deadline had the clock kept running from the instant)."""

    metric: str
    number: int
    started_ms: int
    target_s: int
    deadline_ms: int | None
    ended_ms: int | None
    fulfilled: bool
    warnings: tuple[tuple[float, int, int], ...] = ()
    #: the policy and dimensions it started under (``None``: the ticket's at the creation)
    policy: str | None = None
    dimensions: tuple[tuple[str, str], ...] | None = None

    @property
    def outcome(self) -> str:
        if self.ended_ms is not None and (
            self.deadline_ms is None or self.ended_ms <= self.deadline_ms
        ):
            return ACHIEVED if self.fulfilled else CANCELLED
        if self.deadline_ms is not None:
            return BREACHED
        return RUNNING


@dataclass(frozen=True)
class Response:
    """A fulfilled next response: calendar and elapsed (business) time."""

    number: int
    started_ms: int
    replied_ms: int
    calendar_ms: int
    business_ms: int


@dataclass
class TicketSla:
    """Everything the SLA KPIs and alerts need of one ticket."""

    ticket_id: str
    created_ms: int
    dimensions: dict[str, str]
    policy: str | None
    first_reply_ms: int | None = None
    first_calendar_ms: int | None = None
    first_business_ms: int | None = None
    first_within: bool = False
    responses: list[Response] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    #: the status changes in force, ``(instant, status)`` from the creation's ``new``
    statuses: list[tuple[int, str]] = field(default_factory=list)
    created: TicketCreated | None = None
    updates: tuple[TicketUpdated, ...] = ()

    def dims_at(self, instant_ms: int) -> dict[str, str]:
        """The dimensions in force for a sample at ``instant_ms``."""
        if self.created is None or not self.updates:
            return self.dimensions
        return dims_at(self.created, self.updates, instant_ms)


def _reach(
    calendar: OracleCalendar | None, running: Sequence[tuple[int, int | None]], need_ms: int
) -> int | None:
    """The earliest instant at which the running spans (``[start, end)``, the last one
    maybe open-ended) hold ``need`` of elapsed time; ``None`` if they never do."""
    for start, end in running:
        if end is None:
            return _deadline(calendar, start, need_ms)
        held = _business(calendar, start, end)
        if held >= need_ms:
            return _deadline(calendar, start, need_ms)
        need_ms -= held
    return None


def _instance(
    metric: str,
    number: int,
    started_ms: int,
    target_s: int,
    running: Sequence[tuple[int, int | None]],
    ended: tuple[int, bool] | None,
    calendar: OracleCalendar | None,
    warn_at: Sequence[float],
    policy: str | None = None,
    dimensions: Mapping[str, str] | None = None,
) -> Instance:
    target_ms = target_s * 1000
    ended_ms = None if ended is None else ended[0]
    warnings = []
    for fraction in warn_at:
        warn_ms = math.ceil(Fraction(str(fraction)) * target_ms)
        instant = _reach(calendar, running, warn_ms)
        # reached while running: events at the instant come first
        if instant is not None and (ended_ms is None or ended_ms > instant):
            warnings.append((fraction, instant, _deadline(calendar, instant, target_ms - warn_ms)))
    return Instance(
        metric,
        number,
        started_ms,
        target_s,
        _reach(calendar, running, target_ms),
        ended_ms,
        ended is not None and ended[1],
        tuple(warnings),
        policy,
        None if dimensions is None else tuple(sorted(dimensions.items())),
    )


_ENDING = ("solved", "closed")


def _status_walk(
    created_ms: int, entries: Sequence[tuple[int, str, str, str]]
) -> tuple[list[str], list[tuple[int, str]]]:
    """The status in force after each timeline entry (``entries[i]`` -> ``out[i]``), and
    the changes that took effect, ``(instant, status)`` from the creation's ``new`` on."""
    status = "new"
    after = []
    changes = [(created_ms, "new")]
    for ms, _, kind, value in entries:
        if kind == "status" and status != "closed" and value != status:
            status = value
            changes.append((max(ms, created_ms), value))
        after.append(status)
    return after, changes


def evaluate_ticket(
    ticket_id: str,
    created: TicketCreated,
    timeline: Iterable[TicketReplied | TicketStatusChanged],
    rules: SlaRules,
    updates: Sequence[TicketUpdated] = (),
) -> TicketSla:
    """One ticket's response samples and SLA instances (docs/kpis.md); ``updates``: its
    dimension changes."""
    created_ms = to_ms(created.occurred_at)
    dimensions = dims_at(created, updates, created_ms)
    priority = dimensions["priority"]
    policy = rules.policy_for(dimensions)
    calendar = None
    if policy is not None and policy.schedule is not None:
        calendar = rules.calendars[policy.schedule]
    ticket = TicketSla(
        ticket_id,
        created_ms,
        dimensions,
        None if policy is None else policy.name,
        created=created,
        updates=tuple(updates),
    )
    warn_at = () if policy is None else policy.warn_at

    entries: list[tuple[int, str, str, str]] = []  # (ms, event_id, kind, status or role)
    for event in timeline:
        if isinstance(event, TicketStatusChanged):
            entries.append((to_ms(event.occurred_at), event.event_id, "status", event.status))
        elif event.public and event.author_role in ("agent", "customer"):
            entries.append((to_ms(event.occurred_at), event.event_id, "reply", event.author_role))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    after, changes = _status_walk(created_ms, entries)
    ticket.statuses = changes

    def before(index: int) -> str:
        """The status in force just before entry ``index``."""
        return after[index - 1] if index else "new"

    # the entries that end a running response: a change into solved or closed
    endings = [
        index
        for index, (_, _, kind, value) in enumerate(entries)
        if kind == "status"
        and value in _ENDING
        and before(index) != value
        and before(index) != "closed"
    ]

    def first_ending_after(index: int) -> int | None:
        """The first entry after ``index`` (in timeline order) ending a response."""
        for ending in endings:
            if ending > index:
                return ending
        return None

    def ending_ms(index: int) -> int:
        return max(entries[index][0], created_ms)

    # -- first response: the first public agent reply
    agents = [index for index, entry in enumerate(entries) if entry[2:] == ("reply", "agent")]
    first_agent = agents[0] if agents else None
    if first_agent is not None:
        reply_ms = entries[first_agent][0]
        ticket.first_reply_ms = reply_ms
        ticket.first_calendar_ms = max(0, reply_ms - created_ms)
        ticket.first_business_ms = (
            _business(calendar, created_ms, reply_ms) if reply_ms > created_ms else 0
        )
        target_s = None if policy is None else policy.target_s("first_response", priority)
        if target_s is None:  # v1's rule: calendar time against the v1 targets
            ticket.first_within = (
                ticket.first_calendar_ms <= rules.first_response_targets[priority] * 1000
            )
        else:
            ticket.first_within = ticket.first_business_ms <= target_s * 1000
    target_s = None if policy is None else policy.target_s("first_response", priority)
    if target_s is not None:
        stop = first_ending_after(-1)
        if first_agent is not None and (stop is None or first_agent < stop):
            ended: tuple[int, bool] | None = (entries[first_agent][0], True)
        elif stop is not None:
            ended = (ending_ms(stop), False)
        else:
            ended = None
        ticket.instances.append(
            _instance(
                "first_response",
                1,
                created_ms,
                target_s,
                [(created_ms, None)],
                ended,
                calendar,
                warn_at,
            )
        )

    # -- next responses: customer reply after the first agent reply, ended by the next
    # agent reply (fulfilled) or the next solve or close (not); each under the policy and
    # priority of the dimensions in force when it started
    number = 0
    index = 0 if first_agent is None else first_agent + 1
    while first_agent is not None and index < len(entries):
        _, _, kind, value = entries[index]
        if kind != "reply" or value != "customer" or before(index) in _ENDING:
            index += 1
            continue
        number += 1
        started_ms = entries[index][0]
        started_dims = dims_at(created, updates, started_ms)
        started_policy = rules.policy_for(started_dims)
        started_calendar = None
        if started_policy is not None and started_policy.schedule is not None:
            started_calendar = rules.calendars[started_policy.schedule]
        target_s = (
            None
            if started_policy is None
            else started_policy.target_s("next_response", started_dims["priority"])
        )
        agent = next((a for a in agents if a > index), None)
        stop = first_ending_after(index)
        ended = None
        if agent is not None and (stop is None or agent < stop):
            ended, index = (entries[agent][0], True), agent + 1
        elif stop is not None:
            ended, index = (ending_ms(stop), False), stop + 1
        else:
            index = len(entries)
        if ended is not None and ended[1]:
            ticket.responses.append(
                Response(
                    number,
                    started_ms,
                    ended[0],
                    ended[0] - started_ms,
                    _business(started_calendar, started_ms, ended[0]),
                )
            )
        if target_s is not None and started_policy is not None:
            ticket.instances.append(
                _instance(
                    "next_response",
                    number,
                    started_ms,
                    target_s,
                    [(started_ms, None)],
                    ended,
                    started_calendar,
                    started_policy.warn_at,
                    started_policy.name,
                    started_dims,
                )
            )

    # -- resolution: the clock runs while the status is not paused, until the first solve
    target_s = None if policy is None else policy.target_s("resolution", priority)
    if policy is not None and target_s is not None:
        solve_ms = None
        previous = "new"
        for at_ms, status in changes[1:]:
            if status == "solved" or (status == "closed" and previous != "solved"):
                solve_ms = at_ms
                break
            previous = status
        running: list[tuple[int, int | None]] = []
        for position, (at_ms, status) in enumerate(changes):
            if status not in policy.pause:
                following = changes[position + 1][0] if position + 1 < len(changes) else None
                running.append((at_ms, following))
        ticket.instances.append(
            _instance(
                "resolution",
                1,
                created_ms,
                target_s,
                running,
                None if solve_ms is None else (solve_ms, True),
                calendar,
                warn_at,
            )
        )
    return ticket


def evaluate_tickets(values: Iterable[bytes], rules: SlaRules) -> dict[str, TicketSla]:
    """Every ticket of the raw record values (any order, repeats, rejects): id -> facts.

    A repeated ``event_id`` counts once; a ticket whose ``ticket.created`` never came has
    nothing (its events are held, then orphaned)."""
    openers: dict[str, TicketCreated] = {}
    timelines: dict[str, list[TicketReplied | TicketStatusChanged]] = {}
    updates: dict[str, list[TicketUpdated]] = {}
    for event in distinct_events(values):
        if isinstance(event, TicketCreated):
            current = openers.get(event.ticket_id)
            if current is None or (to_ms(event.occurred_at), event.event_id) < (
                to_ms(current.occurred_at),
                current.event_id,
            ):
                openers[event.ticket_id] = event
        elif isinstance(event, TicketReplied | TicketStatusChanged):
            timelines.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, TicketUpdated):
            updates.setdefault(event.ticket_id, []).append(event)
    return {
        ticket_id: evaluate_ticket(
            ticket_id, created, timelines.get(ticket_id, []), rules, updates.get(ticket_id, [])
        )
        for ticket_id, created in openers.items()
    }


# -- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breach:
    """The fields an ``sla.breached`` alert must carry (instants as ms)."""

    ticket_id: str
    metric: str
    instance: int
    policy: str
    priority: str
    channel: str
    queue: str
    target_seconds: int
    started_ms: int
    created_ms: int
    breached_ms: int


def _claimed_until_ms(claimed_until_s: float | None) -> float | None:
    if claimed_until_s is None or math.isinf(claimed_until_s):
        return claimed_until_s
    return math.floor(Fraction(claimed_until_s) * 1000)


def expected_breaches(
    tickets: Mapping[str, TicketSla], claimed_until_s: float | None = math.inf
) -> dict[tuple[str, str, int], Breach]:
    """The ``sla.breached`` alerts due by ``claimed_until_s``: ``(ticket, metric, instance)``
    -> the alert's fields."""
    until_ms = _claimed_until_ms(claimed_until_s)
    out: dict[tuple[str, str, int], Breach] = {}
    if until_ms is None:
        return out
    for ticket in tickets.values():
        for instance in ticket.instances:
            if instance.outcome != BREACHED:
                continue
            assert instance.deadline_ms is not None
            assert ticket.policy is not None or instance.policy is not None
            if instance.deadline_ms > until_ms:
                continue
            dims = ticket.dimensions if instance.dimensions is None else dict(instance.dimensions)
            out[(ticket.ticket_id, instance.metric, instance.number)] = Breach(
                ticket.ticket_id,
                instance.metric,
                instance.number,
                instance.policy or ticket.policy,  # type: ignore[arg-type]
                dims["priority"],
                dims["channel"],
                dims["queue"],
                instance.target_s,
                instance.started_ms,
                ticket.created_ms,
                instance.deadline_ms,
            )
    return out


@dataclass(frozen=True)
class AtRisk:
    """The fields an ``sla.at_risk`` alert must carry (instants as ms)."""

    ticket_id: str
    metric: str
    instance: int
    fraction: float
    policy: str
    priority: str
    channel: str
    queue: str
    target_seconds: int
    started_ms: int
    created_ms: int
    remaining_seconds: float
    due_ms: int


def expected_warnings(
    tickets: Mapping[str, TicketSla], claimed_until_s: float | None = math.inf
) -> dict[tuple[str, str, int, float], AtRisk]:
    """The ``sla.at_risk`` alerts due by ``claimed_until_s``: ``(ticket, metric, instance,
    fraction)`` -> the alert's fields."""
    until_ms = _claimed_until_ms(claimed_until_s)
    out: dict[tuple[str, str, int, float], AtRisk] = {}
    if until_ms is None:
        return out
    for ticket in tickets.values():
        for instance in ticket.instances:
            for fraction, instant, due_ms in instance.warnings:
                if instant > until_ms:
                    continue
                assert ticket.policy is not None or instance.policy is not None
                warn_ms = math.ceil(Fraction(str(fraction)) * instance.target_s * 1000)
                dims = (
                    ticket.dimensions if instance.dimensions is None else dict(instance.dimensions)
                )
                out[(ticket.ticket_id, instance.metric, instance.number, fraction)] = AtRisk(
                    ticket.ticket_id,
                    instance.metric,
                    instance.number,
                    fraction,
                    instance.policy or ticket.policy,  # type: ignore[arg-type]
                    dims["priority"],
                    dims["channel"],
                    dims["queue"],
                    instance.target_s,
                    instance.started_ms,
                    ticket.created_ms,
                    (instance.target_s * 1000 - warn_ms) / 1000,
                    due_ms,
                )
    return out


# -- the KPI document ---------------------------------------------------------------------------

QUANTILES = (
    ("p50_seconds", Fraction(1, 2)),
    ("p90_seconds", Fraction(9, 10)),
    ("p95_seconds", Fraction(19, 20)),
)


def _durations(samples_ms: Sequence[int]) -> dict[str, float | None]:
    """Mean and "lower" order-statistic quantiles of millisecond samples, in seconds."""
    ordered = sorted(samples_ms)
    out: dict[str, float | None] = {
        "mean_seconds": sum(ordered) / len(ordered) / 1000 if ordered else None
    }
    for name, q in QUANTILES:
        out[name] = ordered[math.floor(q * (len(ordered) - 1))] / 1000 if ordered else None
    return out


@dataclass
class _Group:
    tickets_created: int = 0
    first_calendar_ms: list[int] = field(default_factory=list)
    first_business_ms: list[int] = field(default_factory=list)
    first_within: int = 0
    next_calendar_ms: list[int] = field(default_factory=list)
    next_business_ms: list[int] = field(default_factory=list)
    achieved: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))
    breached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))

    def counted(self) -> bool:
        return bool(
            self.tickets_created
            or self.first_calendar_ms
            or self.next_calendar_ms
            or any(self.achieved.values())
            or any(self.breached.values())
        )

    def sections(self) -> dict[str, Any]:
        count = len(self.first_calendar_ms)
        return {
            "tickets_created": self.tickets_created,
            "first_response": {
                "count": count,
                **_durations(self.first_calendar_ms),
                "within_target": self.first_within,
                "within_target_ratio": self.first_within / count if count else None,
                "business": _durations(self.first_business_ms),
            },
            "next_response": {
                "count": len(self.next_calendar_ms),
                **_durations(self.next_calendar_ms),
                "business": _durations(self.next_business_ms),
            },
            "sla": {
                metric: {
                    "achieved": self.achieved[metric],
                    "breached": self.breached[metric],
                    "achieved_ratio": (
                        self.achieved[metric] / (self.achieved[metric] + self.breached[metric])
                        if self.achieved[metric] + self.breached[metric]
                        else None
                    ),
                }
                for metric in METRICS
            },
        }


_V1_COUNTS = (
    ("tickets_created",),
    ("first_response", "count"),
    ("chats", "requested"),
    ("chats", "answered"),
    ("chats", "abandoned"),
    ("chats", "short_abandoned"),
    ("csat", "responses"),
    ("nps", "responses"),
    ("ces", "responses"),
)


def _v1_counted(group: Mapping[str, Any]) -> bool:
    for path in _V1_COUNTS:
        value: Any = group
        for name in path:
            value = value[name]
        if value:
            return True
    return False


def kpi_document(
    tickets: Mapping[str, TicketSla],
    v1_values: Iterable[bytes],
    *,
    at_s: float,
    width_s: int,
    by: Sequence[str],
    bucket_seconds: int = 60,
    claimed_until_s: float | None = math.inf,
) -> dict[str, Any]:
    """``deskpulse kpis --json`` for the window of ``width_s`` ending at ``at_s``.

    The SLA sections (``tickets_created``, ``first_response``, ``next_response``, ``sla``)
    come from ``tickets``; the rest (chats, surveys) from :func:`tests.oracle.compute` over
    ``v1_values`` (give it the records of openers, chats and surveys: its SLA parts are
    replaced here, so it needs no replies or status changes).
    """
    end_ms = math.ceil(Fraction(at_s) / bucket_seconds) * bucket_seconds * 1000
    start_ms = end_ms - width_s * 1000
    until_ms = _claimed_until_ms(claimed_until_s)

    def inside(instant_ms: int) -> bool:
        return start_ms <= instant_ms < end_ms

    groups: dict[tuple[str, ...], _Group] = {}

    def group(ticket: TicketSla, instant_ms: int) -> _Group:
        dims = ticket.dims_at(instant_ms)
        return groups.setdefault(tuple(dims[name] for name in by), _Group())

    for ticket in tickets.values():
        if inside(ticket.created_ms):
            group(ticket, ticket.created_ms).tickets_created += 1
        if ticket.first_reply_ms is not None and inside(ticket.first_reply_ms):
            assert ticket.first_calendar_ms is not None and ticket.first_business_ms is not None
            target = group(ticket, ticket.first_reply_ms)
            target.first_calendar_ms.append(ticket.first_calendar_ms)
            target.first_business_ms.append(ticket.first_business_ms)
            target.first_within += ticket.first_within
        for response in ticket.responses:
            if inside(response.replied_ms):
                target = group(ticket, response.replied_ms)
                target.next_calendar_ms.append(response.calendar_ms)
                target.next_business_ms.append(response.business_ms)
        for instance in ticket.instances:
            outcome = instance.outcome
            if outcome == ACHIEVED and instance.ended_ms is not None and inside(instance.ended_ms):
                group(ticket, instance.ended_ms).achieved[instance.metric] += 1
            elif (
                outcome == BREACHED
                and instance.deadline_ms is not None
                and until_ms is not None
                and instance.deadline_ms <= until_ms
                and inside(instance.deadline_ms)
            ):
                group(ticket, instance.deadline_ms).breached[instance.metric] += 1

    v1 = compute(
        v1_values,
        at_s=at_s,
        width_s=width_s,
        by=by,
        bucket_seconds=bucket_seconds,
        claimed_until_s=None,
    )
    v1_groups = {tuple(g["key"][name] for name in by): g for g in v1["groups"]}
    empty_v1 = compute([], at_s=at_s, width_s=width_s, by=(), bucket_seconds=bucket_seconds)
    if by:
        keys = sorted(
            {key for key, g in v1_groups.items() if _v1_counted(g)}
            | {key for key, g in groups.items() if g.counted()}
        )
    else:
        keys = [()]
    documents = []
    for key in keys:
        base = dict(v1_groups.get(key) or empty_v1["groups"][0])
        base["key"] = dict(zip(by, key, strict=True))
        base.update(groups.get(key, _Group()).sections())
        documents.append(base)
    return {"window": v1["window"], "by": list(by), "groups": documents}
