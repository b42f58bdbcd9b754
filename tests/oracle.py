"""A brute-force KPI oracle written straight from docs/kpis.md, for end-to-end tests.

:func:`compute` reads every record value, keeps what :func:`models.events.decode`
accepts, and answers ``deskpulse kpis --json`` for one window by looking at whole
conversations at once: no buckets, no sketches, no state machines. It shares nothing
with ``streams/`` on purpose, so a bug there cannot hide here.

Decisions docs/kpis.md spells out, as this oracle (and the project) takes them:

* A repeated ``event_id`` changes nothing: the first occurrence in record order counts.
* A conversation's opener is the ``ticket.created`` / ``chat.requested`` with the smallest
  ``(occurred_at, event_id)``; its dimensions and time are the conversation's.
* Durations are whole milliseconds, ``floor(later - earlier)``, never below 0.
* A chat's outcome is its earliest ``chat.accepted`` / ``chat.abandoned`` / ``chat.ended``
  by ``occurred_at``; on a tie ``chat.accepted`` wins.
* Dimensions change: a ``ticket.updated`` sets the values it names from its millisecond
  on (one dated at or before the creation from the creation), in ``(ms, event_id)``
  order (:func:`dims_at`). Every sample goes to the dimensions in force at its own
  instant; a first response's target is the creation's priority's.
* Replies, chat outcomes and surveys whose conversation never opens are not counted
  (held, then orphaned). A survey needs its conversation whenever it lacks one of
  ``channel``, ``queue``, ``priority``; with all three it stands alone.
* Quantiles are the "lower" order statistic ``sorted(xs)[floor(q * (n - 1))]``; the real
  system's sketch must land within 1 % of it (:func:`quantile_close`).
* SLA: the one default policy (first response within the targets, calendar time, no
  warnings): business time is calendar time. A ticket's timeline is its public agent and
  customer replies and its status changes, ordered by whole-millisecond time, then
  ``event_id``. A breach counts only once breach detection claimed it; the oracle takes
  ``claimed_until_s``: every breach whose instant is at or before it counts as claimed
  (``None``: none, as in a run that delivered no claim).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import (
    ChatAbandoned,
    ChatAccepted,
    ChatEnded,
    ChatRequested,
    SurveyResponded,
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
    TicketUpdated,
    decode,
)

__all__ = ["DEFAULT_TARGETS", "compare", "compute", "dims_at", "distinct_events", "quantile_close"]

DEFAULT_TARGETS: dict[str, int] = {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400}
DIMENSIONS = ("channel", "queue", "priority")
QUANTILE_FIELDS = frozenset(
    {
        "p50_seconds",
        "p90_seconds",
        "p95_seconds",
        "wait_p50_seconds",
        "wait_p90_seconds",
        "handle_p50_seconds",
        "handle_p90_seconds",
    }
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: The last two data sets' distinct events: a test reads its data set at many instants,
#: widths and groupings, and decoding it was most of each oracle document's time. Events
#: are frozen models, so the oracles cannot change what they share.
_DISTINCT: OrderedDict[int, tuple[tuple[bytes, ...], tuple[Any, ...]]] = OrderedDict()
_DISTINCT_KEPT = 2


def distinct_events(values: Iterable[bytes]) -> Iterator[Any]:
    """The events of raw record values as the oracles count them: the rejected left out,
    and each ``event_id`` once (its first record; a repeat changes nothing)."""
    raws = tuple(values)
    key = hash(raws)
    found = _DISTINCT.get(key)
    if found is None or found[0] != raws:
        found = _DISTINCT[key] = (raws, tuple(_decode_distinct(raws)))
        while len(_DISTINCT) > _DISTINCT_KEPT:
            _DISTINCT.popitem(last=False)
    _DISTINCT.move_to_end(key)
    return iter(found[1])


def _decode_distinct(values: Iterable[bytes]) -> Iterator[Any]:
    seen: set[str] = set()
    for raw in values:
        try:
            event = decode(raw)
        except RejectedEvent:
            continue
        if event.event_id not in seen:
            seen.add(event.event_id)
            yield event


def _micros(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _millis_between(earlier_us: int, later_us: int) -> int:
    return max(0, (later_us - earlier_us) // 1000)


def _quantile(values: Sequence[float], q: str) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.floor(Fraction(q) * (len(ordered) - 1))]


def dims_at(
    created: TicketCreated, updates: Iterable[TicketUpdated], instant_ms: int
) -> dict[str, str]:
    """A ticket's dimensions for a sample at ``instant_ms``: its creation's, overwritten in
    ``(ms, event_id)`` order by every ``ticket.updated`` dated at or before that instant
    (or at or before the creation, whatever the instant)."""
    created_ms = _micros(created.occurred_at) // 1000
    until_ms = max(instant_ms, created_ms)
    dims = {name: getattr(created, name) for name in DIMENSIONS}
    dated = sorted(
        ((_micros(update.occurred_at) // 1000, update.event_id, update) for update in updates),
        key=lambda item: (item[0], item[1]),
    )
    for ms, _, update in dated:
        if ms > until_ms:
            break
        for name in DIMENSIONS:
            value = getattr(update, name)
            if value is not None:
                dims[name] = value
    return dims


def _stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Group:
    def __init__(self) -> None:
        self.tickets_created = 0
        self.first_response_ms: list[int] = []
        self.first_response_within = 0
        self.next_response_ms: list[int] = []
        self.sla_achieved = {"first_response": 0, "next_response": 0, "resolution": 0}
        self.sla_breached = {"first_response": 0, "next_response": 0, "resolution": 0}
        self.chats_requested = 0
        self.answered_wait_ms: list[int] = []
        self.answered_in_target = 0
        self.abandoned = 0
        self.short_abandoned = 0
        self.csat: list[int] = []
        self.nps: list[int] = []
        self.ces: list[int] = []

    def has_samples(self) -> bool:
        return bool(
            self.tickets_created
            or self.first_response_ms
            or self.next_response_ms
            or any(self.sla_achieved.values())
            or any(self.sla_breached.values())
            or self.chats_requested
            or self.answered_wait_ms
            or self.abandoned
            or self.short_abandoned
            or self.csat
            or self.nps
            or self.ces
        )

    def document(self, key: dict[str, str]) -> dict[str, Any]:
        frt_s = [ms / 1000 for ms in self.first_response_ms]
        frt_count = len(frt_s)
        nrt_s = [ms / 1000 for ms in self.next_response_ms]
        nrt_count = len(nrt_s)

        def durations(values_s: list[float], total_ms: int) -> dict[str, Any]:
            return {
                "mean_seconds": total_ms / len(values_s) / 1000 if values_s else None,
                "p50_seconds": _quantile(values_s, "0.5"),
                "p90_seconds": _quantile(values_s, "0.9"),
                "p95_seconds": _quantile(values_s, "0.95"),
            }

        sla = {}
        for metric in ("first_response", "next_response", "resolution"):
            achieved, breached = self.sla_achieved[metric], self.sla_breached[metric]
            sla[metric] = {
                "achieved": achieved,
                "breached": breached,
                "achieved_ratio": achieved / (achieved + breached) if achieved + breached else None,
            }
        answered = len(self.answered_wait_ms)
        offered = answered + self.abandoned
        waits_s = [ms / 1000 for ms in self.answered_wait_ms]
        csat_n, nps_n, ces_n = len(self.csat), len(self.nps), len(self.ces)
        satisfied = sum(1 for score in self.csat if score >= 4)
        promoters = sum(1 for score in self.nps if score >= 9)
        detractors = sum(1 for score in self.nps if score <= 6)
        return {
            "key": key,
            "tickets_created": self.tickets_created,
            "first_response": {
                "count": frt_count,
                "mean_seconds": (
                    sum(self.first_response_ms) / frt_count / 1000 if frt_count else None
                ),
                "p50_seconds": _quantile(frt_s, "0.5"),
                "p90_seconds": _quantile(frt_s, "0.9"),
                "p95_seconds": _quantile(frt_s, "0.95"),
                "within_target": self.first_response_within,
                "within_target_ratio": (
                    self.first_response_within / frt_count if frt_count else None
                ),
                # no schedule: business time is calendar time
                "business": durations(frt_s, sum(self.first_response_ms)),
            },
            "next_response": {
                "count": nrt_count,
                **durations(nrt_s, sum(self.next_response_ms)),
                "business": durations(nrt_s, sum(self.next_response_ms)),
            },
            "chats": {
                "requested": self.chats_requested,
                "answered": answered,
                "abandoned": self.abandoned,
                "short_abandoned": self.short_abandoned,
                "abandonment_ratio": self.abandoned / offered if offered else None,
                "service_level_ratio": self.answered_in_target / offered if offered else None,
                "wait_p50_seconds": _quantile(waits_s, "0.5"),
                "wait_p90_seconds": _quantile(waits_s, "0.9"),
            },
            "csat": {
                "responses": csat_n,
                "satisfied": satisfied,
                "ratio": satisfied / csat_n if csat_n else None,
                "average": sum(self.csat) / csat_n if csat_n else None,
            },
            "nps": {
                "responses": nps_n,
                "promoters": promoters,
                "detractors": detractors,
                "score": 100 * (promoters - detractors) / nps_n if nps_n else None,
            },
            "ces": {
                "responses": ces_n,
                "average": sum(self.ces) / ces_n if ces_n else None,
            },
            "sla": sla,
        }


def _opener_wins(candidate: Any, current: Any | None) -> bool:
    if current is None:
        return True
    return (_micros(candidate.occurred_at), candidate.event_id) < (
        _micros(current.occurred_at),
        current.event_id,
    )


def compute(
    records_values: Iterable[bytes],
    *,
    at_s: float,
    width_s: int,
    by: Sequence[str],
    bucket_seconds: int = 60,
    targets: Mapping[str, float] = DEFAULT_TARGETS,
    short_abandon_s: float = 5,
    answer_target_s: float = 20,
    claimed_until_s: float | None = None,
) -> dict[str, Any]:
    """The KPI document (docs/kpis.md) for the window of ``width_s`` ending at ``at_s``.

    ``records_values`` are raw record values from all three topics, in any order.
    """
    for dimension in by:
        if dimension not in DIMENSIONS:
            raise ValueError(f"cannot group by {dimension!r}")
    end_s = math.ceil(Fraction(at_s) / bucket_seconds) * bucket_seconds
    start_s = end_s - width_s
    start_us, end_us = start_s * 1_000_000, end_s * 1_000_000

    def in_window(moment_us: int) -> bool:
        return start_us <= moment_us < end_us

    tickets: dict[str, TicketCreated] = {}
    chats: dict[str, ChatRequested] = {}
    replies: dict[str, list[TicketReplied]] = {}
    timelines: dict[str, list[TicketReplied | TicketStatusChanged]] = {}
    outcomes: dict[str, list[ChatAccepted | ChatAbandoned | ChatEnded]] = {}
    surveys: list[SurveyResponded] = []
    updates: dict[str, list[TicketUpdated]] = {}
    for event in distinct_events(records_values):
        if isinstance(event, TicketCreated):
            if _opener_wins(event, tickets.get(event.ticket_id)):
                tickets[event.ticket_id] = event
        elif isinstance(event, ChatRequested):
            if _opener_wins(event, chats.get(event.chat_id)):
                chats[event.chat_id] = event
        elif isinstance(event, TicketReplied):
            if event.author_role == "agent" and event.public:
                replies.setdefault(event.ticket_id, []).append(event)
            if event.public and event.author_role in ("agent", "customer"):
                timelines.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, TicketStatusChanged):
            timelines.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, TicketUpdated):
            updates.setdefault(event.ticket_id, []).append(event)
        elif isinstance(event, ChatAccepted | ChatAbandoned | ChatEnded):
            outcomes.setdefault(event.chat_id, []).append(event)
        elif isinstance(event, SurveyResponded):
            surveys.append(event)

    groups: dict[tuple[str, ...], _Group] = {}

    def group_of(dimensions: Mapping[str, str]) -> _Group:
        key = tuple(dimensions[name] for name in by)
        return groups.setdefault(key, _Group())

    def dimensions_of(opener: Any) -> dict[str, str]:
        return {name: getattr(opener, name) for name in DIMENSIONS}

    claimed_until_us: float | None = None  # math.inf: every breach claimed
    if claimed_until_s is not None:
        claimed_until_us = (
            claimed_until_s if math.isinf(claimed_until_s) else round(claimed_until_s * 1_000_000)
        )

    for ticket_id, created in tickets.items():
        created_us = _micros(created.occurred_at)
        moves = updates.get(ticket_id, [])

        def group_at(
            instant_ms: int, created: TicketCreated = created, moves: Any = moves
        ) -> _Group:
            return group_of(dims_at(created, moves, instant_ms))

        priority = dims_at(created, moves, created_us // 1000)["priority"]
        if in_window(created_us):
            group_at(created_us // 1000).tickets_created += 1
        _ticket_sla(
            created,
            priority,
            timelines.get(ticket_id, []),
            targets,
            claimed_until_us,
            in_window,
            group_at,
        )
        agent_replies = replies.get(ticket_id)
        if not agent_replies:
            continue
        first_us = min(_micros(reply.occurred_at) for reply in agent_replies)
        if not in_window(first_us):
            continue
        duration_ms = _millis_between(created_us, first_us)
        group = group_at(first_us // 1000)
        group.first_response_ms.append(duration_ms)
        if duration_ms / 1000 <= targets[priority]:
            group.first_response_within += 1

    for chat_id, requested in chats.items():
        requested_us = _micros(requested.occurred_at)
        dimensions = dimensions_of(requested)
        if in_window(requested_us):
            group_of(dimensions).chats_requested += 1
        completing = outcomes.get(chat_id)
        if not completing:
            continue
        outcome = min(
            completing,
            key=lambda e: (_micros(e.occurred_at), 0 if e.type == "chat.accepted" else 1),
        )
        outcome_us = _micros(outcome.occurred_at)
        if not in_window(outcome_us):
            continue
        wait_ms = _millis_between(requested_us, outcome_us)
        group = group_of(dimensions)
        if outcome.type == "chat.accepted":
            group.answered_wait_ms.append(wait_ms)
            if wait_ms / 1000 <= answer_target_s:
                group.answered_in_target += 1
        elif short_abandon_s > 0 and wait_ms / 1000 < short_abandon_s:
            group.short_abandoned += 1
        else:
            group.abandoned += 1

    for survey in surveys:
        if not in_window(_micros(survey.occurred_at)):
            continue
        own = {name: getattr(survey, name) for name in DIMENSIONS}
        if any(value is None for value in own.values()):
            opener: TicketCreated | ChatRequested | None
            if survey.ticket_id is not None:
                opener = tickets.get(survey.ticket_id)
            else:
                opener = chats.get(str(survey.chat_id))  # the decoder requires one of them
            if opener is None:
                continue  # orphaned: held until retention, never applied
            if isinstance(opener, TicketCreated):
                # those in force when the survey came
                inherited = dims_at(
                    opener,
                    updates.get(opener.ticket_id, []),
                    _micros(survey.occurred_at) // 1000,
                )
            else:
                inherited = dimensions_of(opener)
            own = {name: inherited[name] if value is None else value for name, value in own.items()}
        getattr(group_of(own), survey.kind).append(survey.score)

    if by:
        kept = sorted(
            ((key, group) for key, group in groups.items() if group.has_samples()),
            key=lambda item: item[0],
        )
    else:
        kept = [((), groups.get((), _Group()))]
    return {
        "window": {"start": _stamp(start_s), "end": _stamp(end_s), "seconds": width_s},
        "by": list(by),
        "groups": [group.document(dict(zip(by, key, strict=True))) for key, group in kept],
    }


def _ticket_sla(
    created: TicketCreated,
    priority: str,
    timeline: list[TicketReplied | TicketStatusChanged],
    targets: Mapping[str, float],
    claimed_until_us: float | None,
    in_window: Any,
    group_at: Any,
) -> None:
    """Next responses and the default policy's first-response SLA of one ticket, walking
    its timeline event by event (docs/kpis.md, "SLA policies"); ``priority`` is the
    ticket's at the creation, ``group_at`` the group of an instant (ms)."""
    created_ms = _micros(created.occurred_at) // 1000
    events = sorted(
        ((_micros(event.occurred_at) // 1000, event.event_id, event) for event in timeline),
        key=lambda item: (item[0], item[1]),
    )
    deadline_ms = created_ms + round(targets[priority] * 1000)
    status = "new"
    seen_agent = False
    first_outcome: tuple[str, int] | None = None  # ("reply" | "cancel", ms)
    waiting_since: int | None = None  # a customer's next response, if one is running
    for ms, _, event in events:
        if isinstance(event, TicketStatusChanged):
            if status == "closed" or event.status == status:
                continue
            at = max(ms, created_ms)
            if event.status in ("solved", "closed"):
                if first_outcome is None:
                    first_outcome = ("cancel", at)
                waiting_since = None  # cancelled, never a sample
            status = event.status
        elif event.author_role == "agent":
            if not seen_agent:
                seen_agent = True
                if first_outcome is None:
                    first_outcome = ("reply", ms)
            elif waiting_since is not None:
                if in_window(ms * 1000):
                    group_at(ms).next_response_ms.append(ms - waiting_since)
                waiting_since = None
        elif seen_agent and waiting_since is None and status not in ("solved", "closed"):
            waiting_since = ms
    if first_outcome is not None and first_outcome[1] <= deadline_ms:
        if first_outcome[0] == "reply" and in_window(first_outcome[1] * 1000):
            group_at(first_outcome[1]).sla_achieved["first_response"] += 1
    elif (
        claimed_until_us is not None
        and deadline_ms * 1000 <= claimed_until_us
        and in_window(deadline_ms * 1000)
    ):
        group_at(deadline_ms).sla_breached["first_response"] += 1


def quantile_close(actual: float | None, expected: float | None, rel: float = 0.01) -> bool:
    """Whether a sketched quantile is within ``rel`` of the exact one (1e-3 absolute near 0)."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if abs(expected) < 1e-3:
        return abs(actual - expected) <= 1e-3
    return abs(actual - expected) <= rel * abs(expected)


def _compare_values(path: str, name: str, actual: Any, expected: Any, out: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected an object, got {actual!r}")
            return
        for field in expected.keys() | actual.keys():
            where = f"{path}.{field}"
            if field not in actual:
                out.append(f"{where}: missing (expected {expected[field]!r})")
            elif field not in expected:
                out.append(f"{where}: unexpected (got {actual[field]!r})")
            else:
                _compare_values(where, field, actual[field], expected[field], out)
        return
    if expected is None or actual is None:
        if expected is not actual:
            out.append(f"{path}: got {actual!r}, expected {expected!r}")
        return
    if isinstance(expected, bool | str | list):
        if actual != expected:
            out.append(f"{path}: got {actual!r}, expected {expected!r}")
        return
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        out.append(f"{path}: got {actual!r}, expected the number {expected!r}")
        return
    if name in QUANTILE_FIELDS:
        if not quantile_close(actual, expected):
            out.append(f"{path}: got {actual!r}, expected {expected!r} within 1 %")
    elif isinstance(expected, int):
        if not isinstance(actual, int) or actual != expected:
            out.append(f"{path}: got {actual!r}, expected exactly {expected!r}")
    elif not math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12):
        out.append(f"{path}: got {actual!r}, expected {expected!r}")


def compare(actual_doc: Mapping[str, Any], expected_doc: Mapping[str, Any]) -> list[str]:
    """Every difference between a KPI document and the oracle's, one line each.

    Counts must match exactly, means and ratios to 1e-9 relative, quantiles within 1 %.
    Groups are matched by their ``key``; an empty list means the documents agree.
    """
    out: list[str] = []
    for field in ("window", "by"):
        _compare_values(field, field, actual_doc.get(field), expected_doc.get(field), out)
    for field in actual_doc.keys() - {"window", "by", "groups"}:
        out.append(f"{field}: unexpected (got {actual_doc[field]!r})")

    def by_key(doc: Mapping[str, Any]) -> dict[tuple[tuple[str, Any], ...], Any]:
        return {tuple(sorted(group.get("key", {}).items())): group for group in doc["groups"]}

    actual_groups = by_key(actual_doc) if "groups" in actual_doc else {}
    expected_groups = by_key(expected_doc)
    for key, expected in expected_groups.items():
        label = "groups[" + ",".join(f"{k}={v}" for k, v in key) + "]"
        if key not in actual_groups:
            out.append(f"{label}: missing")
        else:
            _compare_values(label, "", actual_groups[key], expected, out)
    for key in actual_groups.keys() - expected_groups.keys():
        out.append("groups[" + ",".join(f"{k}={v}" for k, v in key) + "]: unexpected")
    actual_keys = [g.get("key") for g in actual_doc.get("groups", [])]
    expected_keys = [g.get("key") for g in expected_doc["groups"]]
    if not out and actual_keys != expected_keys:
        out.append(f"groups: order {actual_keys!r}, expected {expected_keys!r}")
    return out
