"""SLA instances of one ticket, as a pure function of its timeline (docs/kpis.md, "SLA
policies").

Nothing here reads the clock or keeps state: :func:`evaluate` takes a ticket's creation,
priority, timeline (public replies and status changes, each ``event id -> (ms, code)``),
its policy and the policy's calendar, and walks the timeline once in ``(ms, event_id)``
order. The same inputs give the same instances whatever order the events arrived in.

Timeline codes: ``a`` a public agent reply, ``c`` a public customer reply, and a status
(:data:`STATUS_CODES`): ``n`` new, ``o`` open, ``p`` pending, ``h`` hold, ``s`` solved,
``x`` closed.

Ties, decided once for every metric: an event at an instant comes before a deadline or a
warning at that same instant. So a reply exactly at the deadline achieves the instance, a
solve or close exactly at the deadline cancels it (it never breached), and a warning is
due only while the instance is still running after the events at its instant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from math import ceil
from typing import NamedTuple

from deskpulse.models.sla import Policy, SlaMetric
from deskpulse.streams.calendar import BusinessCalendar, business_ms, deadline_ms

__all__ = [
    "ACHIEVED",
    "AGENT",
    "BREACHED",
    "CANCELLED",
    "CUSTOMER",
    "FULFILLED",
    "RUNNING",
    "STATUS_CODES",
    "Evaluation",
    "Instance",
    "Response",
    "Terms",
    "evaluate",
    "evaluate_terms",
    "first_response_deadline",
    "first_response_deadline_terms",
    "next_check_ms",
    "opening_alert_ms",
    "pending_alert_ms",
    "terms",
]

AGENT, CUSTOMER = "a", "c"
#: a ticket status as its one-letter timeline code
STATUS_CODES: dict[str, str] = {
    "new": "n",
    "open": "o",
    "pending": "p",
    "hold": "h",
    "solved": "s",
    "closed": "x",
}
_SOLVED, _CLOSED = "s", "x"
_ENDING = frozenset((_SOLVED, _CLOSED))

#: outcomes of an instance; FULFILLED is a next response of a ticket without a target
ACHIEVED, BREACHED, CANCELLED, RUNNING, FULFILLED = (
    "achieved",
    "breached",
    "cancelled",
    "running",
    "fulfilled",
)
#: the short metric names of claim keys (``fr:1``, ``nr:2``, ``rs:1``)
SHORT: dict[SlaMetric, str] = {
    "first_response": "fr",
    "next_response": "nr",
    "resolution": "rs",
}

Timeline = Iterable[tuple[str, tuple[int, str]]]
Span = tuple[int, int | None]  # a running part of the clock, [start, end) or open-ended


class Terms(NamedTuple):
    """What :func:`evaluate` needs of a policy for one priority, looked up once
    (:func:`terms`): the targets in ms (``None``: no instance), the statuses that pause the
    resolution clock (timeline codes), the warning fractions and the compiled calendar;
    last, the business time from a new ticket's creation to its earliest alert
    (:func:`opening_alert_ms`), which follows from the others."""

    first_response_ms: int | None
    next_response_ms: int | None
    resolution_ms: int | None
    pause: frozenset[str]
    warn_at: tuple[float, ...]
    calendar: BusinessCalendar | None
    opening_need_ms: int | None


def terms(policy: Policy | None, priority: str, calendar: BusinessCalendar | None) -> Terms:
    """A policy's terms for a priority (no policy: no targets, calendar as given)."""
    if policy is None:
        return Terms(None, None, None, frozenset(), (), calendar, None)
    first_response_ms = _target_ms(policy, "first_response", priority)
    resolution_ms = _target_ms(policy, "resolution", priority)
    pause = frozenset(STATUS_CODES[name] for name in policy.pause)
    return Terms(
        first_response_ms,
        _target_ms(policy, "next_response", priority),
        resolution_ms,
        pause,
        policy.warn_at,
        calendar,
        _opening_need_ms(first_response_ms, resolution_ms, pause, policy.warn_at),
    )


class Instance(NamedTuple):
    """One SLA instance of a ticket (a metric with a target for the ticket's priority).

    ``end_ms`` is the fulfilment (``fulfilled``) or the cancelling solve or close, ``None``
    while neither came. ``deadline_ms`` is ``None`` while no deadline is reachable (a
    resolution clock paused for good). ``elapsed_ms``/``business_ms`` are calendar and
    business time from the start to the fulfilment (``None`` unless fulfilled); business
    time counts only the running parts. ``warnings`` are ``(fraction, instant)`` of the
    policy's ``warn_at`` reached while the instance was running.
    """

    metric: SlaMetric
    number: int
    start_ms: int
    target_ms: int
    deadline_ms: int | None
    outcome: str
    end_ms: int | None
    fulfilled: bool
    elapsed_ms: int | None
    business_ms: int | None
    warnings: tuple[tuple[float, int], ...]

    @property
    def key(self) -> str:
        """The instance's claim key: ``fr:1``, ``nr:<n>``, ``rs:1``."""
        return f"{SHORT[self.metric]}:{self.number}"

    def running_at(self, instant_ms: int) -> bool:
        """Whether the instance had neither ended nor been fulfilled by ``instant_ms``
        (events at the instant come first)."""
        return self.end_ms is None or self.end_ms > instant_ms


class Response(NamedTuple):
    """A fulfilled next response: started at a customer reply, fulfilled at ``at_ms``."""

    start_ms: int
    at_ms: int
    calendar_ms: int
    business_ms: int


class Evaluation(NamedTuple):
    """What a ticket's timeline says (see :func:`evaluate`)."""

    #: the first public agent reply, ``(ms, event_id)`` order; its time
    first_reply_ms: int | None
    #: business time from the creation to that reply (0 if it came first)
    first_business_ms: int | None
    #: every fulfilled next-response instance, with or without a target
    next_responses: tuple[Response, ...]
    #: every SLA instance (metrics with a target for the priority), in metric order
    instances: tuple[Instance, ...]
    #: status events after the close, which change nothing
    ignored: int


def _reach(calendar: BusinessCalendar | None, spans: list[Span], need_ms: int) -> int | None:
    """The instant the running spans' business time reaches ``need_ms``, if ever."""
    for start, end in spans:
        if end is None:
            return deadline_ms(calendar, start, need_ms)
        got = business_ms(calendar, start, end)
        if got >= need_ms:
            return deadline_ms(calendar, start, need_ms)
        need_ms -= got
    return None


def _elapsed(calendar: BusinessCalendar | None, spans: list[Span], until_ms: int) -> int:
    """Business time of the running spans before ``until_ms``."""
    total = 0
    for start, end in spans:
        if start >= until_ms:
            break
        stop = until_ms if end is None or end > until_ms else end
        total += business_ms(calendar, start, stop)
    return total


def _instance(
    metric: SlaMetric,
    number: int,
    start_ms: int,
    target_ms: int,
    spans: list[Span],
    end: tuple[int, bool] | None,
    warn_at: tuple[float, ...],
    calendar: BusinessCalendar | None,
    clock_ms: int | None,
    detail: bool = True,
    warn: bool | None = None,
) -> Instance:
    # the first and next responses run always: one open-ended span from the start (a
    # resolution clock paused while ``new`` also has one open-ended span, from a later instant)
    always = len(spans) == 1 and spans[0] == (start_ms, None)
    deadline = (
        deadline_ms(calendar, start_ms, target_ms) if always else _reach(calendar, spans, target_ms)
    )
    end_ms, fulfilled = end if end is not None else (None, False)
    if end_ms is not None and (deadline is None or end_ms <= deadline):
        outcome = ACHIEVED if fulfilled else CANCELLED
    elif deadline is not None and (clock_ms is None or deadline <= clock_ms):
        outcome = BREACHED
    else:
        outcome = RUNNING
    elapsed = business = None
    if warn is None:
        warn = detail
    if detail and fulfilled and end_ms is not None:
        elapsed = max(0, end_ms - start_ms)
        if always:
            business = business_ms(calendar, start_ms, end_ms) if end_ms > start_ms else 0
        else:
            business = max(0, _elapsed(calendar, spans, end_ms))
    warnings = []
    for fraction in warn_at if warn else ():
        instant = _reach(calendar, spans, ceil(fraction * target_ms))
        if instant is not None and (end_ms is None or instant < end_ms):
            warnings.append((fraction, instant))
    return Instance(
        metric,
        number,
        start_ms,
        target_ms,
        deadline,
        outcome,
        end_ms,
        fulfilled,
        elapsed,
        business,
        tuple(warnings),
    )


def _target_ms(policy: Policy | None, metric: SlaMetric, priority: str) -> int | None:
    if policy is None:
        return None
    seconds = policy.target_seconds(metric, priority)
    return None if seconds is None else seconds * 1000


def evaluate(
    created_ms: int,
    priority: str,
    timeline: Timeline,
    policy: Policy | None,
    calendar: BusinessCalendar | None,
    *,
    clock_ms: int | None = None,
) -> Evaluation:
    """Every SLA instance and response sample of a ticket (docs/kpis.md).

    ``timeline`` holds ``(event_id, (ms, code))`` pairs in any order. ``calendar`` is the
    policy's schedule compiled (``None``: calendar time). With ``clock_ms`` an instance
    whose deadline lies after it and that has not ended is ``running``; without, every
    deadline counts as passed (what the timeline alone shows).

    The walk, in ``(ms, event_id)`` order: a status event dated before the creation acts
    at the creation; a status equal to the current one changes nothing; after ``closed``
    status events are ignored (counted). A change into ``solved``/``closed`` cancels the
    running first and next response; the first *solve* (into ``solved``, or into
    ``closed`` from any status but ``solved``) fulfils the resolution. Replies keep their
    own time.
    """
    return evaluate_terms(created_ms, timeline, terms(policy, priority, calendar), clock_ms)


def evaluate_terms(
    created_ms: int,
    timeline: Timeline,
    terms: Terms,
    clock_ms: int | None = None,
    *,
    detail: bool = True,
    warn: bool | None = None,
    next_terms: Callable[[int], Terms] | None = None,
) -> Evaluation:
    """:func:`evaluate` with the policy's :class:`Terms` looked up beforehand. Without
    ``detail`` the instances carry their outcomes and deadlines only (no elapsed times, and
    no warnings unless ``warn``): all the KPI samples (and, with ``warn``, breach
    detection's schedule) need, for fewer calendar walks.

    ``next_terms``: the terms of a next response started at an instant (ms), for a ticket
    whose dimensions changed (an instance keeps the terms chosen when it started); without,
    every instance has ``terms``."""
    entries = sorted([(ms, event_id, code) for event_id, (ms, code) in timeline])
    status = "n"
    closed = False
    ignored = 0
    changes: list[tuple[int, str]] = [(created_ms, "n")]
    first_reply: int | None = None
    first_end: tuple[int, bool] | None = None
    solve_ms: int | None = None
    asked: int | None = None  # start of the running next response
    asks: list[tuple[int, tuple[int, bool] | None]] = []
    for ms, _, code in entries:
        if code == AGENT:
            if first_reply is None:
                first_reply = ms
                if first_end is None:
                    first_end = (ms, True)
            elif asked is not None:
                asks.append((asked, (ms, True)))
                asked = None
        elif code == CUSTOMER:
            if first_reply is not None and asked is None and status not in _ENDING:
                asked = ms
        elif closed:
            ignored += 1
        elif code != status:
            at = ms if ms > created_ms else created_ms
            if code in _ENDING:
                if first_end is None:
                    first_end = (at, False)
                if asked is not None:
                    asks.append((asked, (at, False)))
                    asked = None
                if solve_ms is None and (code == _SOLVED or status != _SOLVED):
                    solve_ms = at
                closed = code == _CLOSED
            status = code
            changes.append((at, code))
    if asked is not None:
        asks.append((asked, None))

    calendar = terms.calendar
    first_business = None
    if first_reply is not None:
        first_business = (
            business_ms(calendar, created_ms, first_reply) if first_reply > created_ms else 0
        )
    responses = tuple(
        Response(
            start,
            end[0],
            end[0] - start,
            business_ms(
                calendar if next_terms is None else next_terms(start).calendar, start, end[0]
            ),
        )
        for start, end in asks
        if end is not None and end[1]
    )
    instances: list[Instance] = []
    warn_at = terms.warn_at
    target = terms.first_response_ms
    if target is not None:
        instances.append(
            _instance(
                "first_response",
                1,
                created_ms,
                target,
                [(created_ms, None)],
                first_end,
                warn_at,
                calendar,
                clock_ms,
                detail,
                warn,
            )
        )
    target = terms.next_response_ms
    if target is not None or next_terms is not None:
        for number, (start, end) in enumerate(asks, 1):
            started = terms if next_terms is None else next_terms(start)
            if started.next_response_ms is None:
                continue
            instances.append(
                _instance(
                    "next_response",
                    number,
                    start,
                    started.next_response_ms,
                    [(start, None)],
                    end,
                    started.warn_at,
                    started.calendar,
                    clock_ms,
                    detail,
                    warn,
                )
            )
    target = terms.resolution_ms
    if target is not None:
        pause = terms.pause
        spans: list[Span] = []
        for index, (at, code) in enumerate(changes):
            if code not in pause:
                following = changes[index + 1][0] if index + 1 < len(changes) else None
                spans.append((at, following))
        solved = None if solve_ms is None else (solve_ms, True)
        instances.append(
            _instance(
                "resolution",
                1,
                created_ms,
                target,
                spans,
                solved,
                warn_at,
                calendar,
                clock_ms,
                detail,
                warn,
            )
        )
    return Evaluation(first_reply, first_business, responses, tuple(instances), ignored)


def first_response_deadline(
    created_ms: int,
    priority: str,
    timeline: Timeline,
    policy: Policy | None,
    calendar: BusinessCalendar | None,
) -> int | None:
    """The first-response deadline while the ticket may still breach it, else ``None``
    (no target, or a public agent reply, solve or close at or before the deadline).

    The same answer as the ``first_response`` instance of :func:`evaluate`, for less: the
    instance ends at the first entry in timeline order that is an agent reply or a status
    into ``solved``/``closed`` (the first such status is always a change).
    """
    return first_response_deadline_terms(created_ms, timeline, terms(policy, priority, calendar))


def first_response_deadline_terms(created_ms: int, timeline: Timeline, terms: Terms) -> int | None:
    """:func:`first_response_deadline` with the policy's :class:`Terms` looked up."""
    target = terms.first_response_ms
    if target is None:
        return None
    deadline = deadline_ms(terms.calendar, created_ms, target)
    if not timeline:
        return deadline
    end: tuple[int, str] | None = None
    for event_id, (ms, code) in timeline:
        if (code == AGENT or code in _ENDING) and (end is None or (ms, event_id) < end):
            end = (ms, event_id)
    if end is not None and max(end[0], created_ms) <= deadline:
        return None
    return deadline


def next_check_ms(evaluation: Evaluation, after_ms: int | None = None) -> int | None:
    """The earliest deadline or warning instant (after ``after_ms``) of an instance still
    running then: when breach detection must look at the ticket next; ``None``: never."""
    best: int | None = None
    for instance in evaluation.instances:
        instants = [instant for _, instant in instance.warnings]
        if instance.deadline_ms is not None:
            instants.append(instance.deadline_ms)
        for instant in instants:
            if after_ms is not None and instant <= after_ms:
                continue
            if instance.running_at(instant) and (best is None or instant < best):
                best = instant
    return best


def pending_alert_ms(evaluation: Evaluation, claims: AbstractSet[str]) -> int | None:
    """The earliest instant at which breach detection has something left to publish for
    the ticket: the deadline of an instance the timeline shows running at it (breached or
    running) that is not claimed yet (``claims`` holds its key), or a warning instant of an
    unclaimed instance whose marker (``<key>@<fraction>``) is not there; ``None``: none."""
    best: int | None = None
    for instance in evaluation.instances:
        key = instance.key
        if key in claims:
            continue
        deadline = instance.deadline_ms
        if deadline is not None and instance.running_at(deadline):
            best = deadline if best is None or deadline < best else best
        for fraction, instant in instance.warnings:
            if f"{key}@{fraction}" not in claims and (best is None or instant < best):
                best = instant
    return best


def opening_alert_ms(created_ms: int, terms: Terms) -> int | None:
    """:func:`pending_alert_ms` of a ticket with an empty timeline and no claims, for one
    calendar walk instead of an evaluation (most tickets a batch touches are new ones).

    Such a ticket's first-response instance runs from the creation, and so does its
    resolution unless the policy pauses ``new``; no next response has started. Each
    instance's earliest alert is its first warning (fractions are increasing and below 1),
    or its deadline without warnings, both reached on the same open-ended span, so the
    earliest of all is the instant the smaller of those elapsed times is reached.
    """
    need = terms.opening_need_ms
    return None if need is None else deadline_ms(terms.calendar, created_ms, need)


def _opening_need_ms(
    first_response_ms: int | None,
    resolution_ms: int | None,
    pause: frozenset[str],
    warn_at: tuple[float, ...],
) -> int | None:
    """The business time from a new ticket's creation to its earliest alert (see
    :func:`opening_alert_ms`), worked out once with the terms."""
    first = warn_at[0] if warn_at else None
    need: int | None = None
    for target_ms, running in (
        (first_response_ms, True),
        (resolution_ms, STATUS_CODES["new"] not in pause),
    ):
        if target_ms is None or not running:
            continue
        alert = target_ms if first is None else ceil(first * target_ms)
        if need is None or alert < need:
            need = alert
    return need
