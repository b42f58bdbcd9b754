"""The SLA oracle (tests/sla_oracle.py) on hand-made tickets, each answer worked out by
hand in the comments: office hours over a weekend, DST days in Berlin and New York,
holidays, a paused resolution clock, next-response cycles, and the KPI document."""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from typing import Any

import orjson
import pytest

from deskpulse.models.settings import Settings
from tests.sla_oracle import (
    ACHIEVED,
    BREACHED,
    CANCELLED,
    RUNNING,
    OracleCalendar,
    SlaRules,
    TicketSla,
    evaluate_tickets,
    expected_breaches,
    expected_warnings,
    kpi_document,
    rfc3339_ms,
    to_ms,
)

H = 3600
_ids = itertools.count()

EMEA = {  # the example office of docs/kpis.md
    "timezone": "Europe/Berlin",
    "hours": {
        "mon": ["09:00-17:30"],
        "tue": ["09:00-17:30"],
        "wed": ["09:00-17:30"],
        "thu": ["09:00-17:30"],
        "fri": ["09:00-13:00", "14:00-17:00"],
    },
    "holidays": ["2026-12-24", "2026-12-25", "2027-01-01"],
}
AMERICAS = {
    "timezone": "America/New_York",
    "hours": {day: ["08:00-18:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
    "holidays": ["2026-11-26"],
}
# open in the small hours of Sundays (where the clocks change) and across midnight
BERLIN_NIGHTS = {
    "timezone": "Europe/Berlin",
    "hours": {"sun": ["01:00-04:00", "22:00-24:00"], "mon": ["00:00-02:00"]},
}
NY_NIGHTS = {
    "timezone": "America/New_York",
    "hours": {"sat": ["22:00-24:00"], "sun": ["00:00-03:00"]},
}
NY_LATE = {"timezone": "America/New_York", "hours": {"sun": ["02:30-05:00"]}}


def ms(text: str) -> int:
    return to_ms(datetime.fromisoformat(text))


def event(event_type: str, when: str, **fields: Any) -> bytes:
    fields.setdefault("event_id", f"e{next(_ids):04d}")
    return orjson.dumps({"type": event_type, "occurred_at": when, **fields})


def created(when: str, ticket: str = "T", **dims: Any) -> bytes:
    dims = {"channel": "email", "queue": "billing", "priority": "high", **dims}
    return event("ticket.created", when, ticket_id=ticket, **dims)


def reply(when: str, role: str = "agent", ticket: str = "T", **fields: Any) -> bytes:
    return event("ticket.replied", when, ticket_id=ticket, author_role=role, **fields)


def status(when: str, value: str, ticket: str = "T", **fields: Any) -> bytes:
    return event("ticket.status_changed", when, ticket_id=ticket, status=value, **fields)


def rules(*policies: dict[str, Any], **schedules: Any) -> SlaRules:
    return SlaRules.from_json(schedules, list(policies))


def policy(name: str = "p", schedule: str | None = None, **targets: Any) -> dict[str, Any]:
    """A policy for every ticket; ``targets`` are metric -> seconds for priority high."""
    out: dict[str, Any] = {
        "name": name,
        "targets": {metric: {"high": seconds} for metric, seconds in targets.items()},
    }
    if schedule is not None:
        out["schedule"] = schedule
    return out


def one(values: list[bytes], sla: SlaRules, ticket: str = "T") -> TicketSla:
    return evaluate_tickets(values, sla)[ticket]


def outcomes(ticket: TicketSla) -> list[tuple[str, int, str, str | None]]:
    """``(metric, number, outcome, instant)``: the end for achieved/cancelled, the deadline
    for breached/running, as RFC 3339."""
    out = []
    for instance in ticket.instances:
        outcome = instance.outcome
        instant = instance.ended_ms if outcome in (ACHIEVED, CANCELLED) else instance.deadline_ms
        out.append(
            (
                instance.metric,
                instance.number,
                outcome,
                None if instant is None else rfc3339_ms(instant),
            )
        )
    return out


# -- business time on the calendar ------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "start", "end", "hours"),
    [
        # Friday 2026-11-27 in Berlin: 09:00-13:00 and 14:00-17:00 CET, i.e. 08-12 and 13-16 Z
        (EMEA, "2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z", 7),
        # Thursday 2026-12-24 is a holiday: closed although a Thursday
        (EMEA, "2026-12-24T00:00:00Z", "2026-12-25T00:00:00Z", 0),
        # Thanksgiving 2026-11-26 in New York: closed; the Wednesday before has its 10 h
        (AMERICAS, "2026-11-26T05:00:00Z", "2026-11-27T05:00:00Z", 0),
        (AMERICAS, "2026-11-25T05:00:00Z", "2026-11-26T05:00:00Z", 10),
        # Berlin's fall back on Sunday 2026-10-25 (03:00 CEST -> 02:00 CET at 01:00Z):
        # 01:00-04:00 local is 23:00Z-01:00Z summer time and 01:00Z-03:00Z winter time, 4 h;
        # plus 22:00-24:00 CET (21:00Z-23:00Z), 2 h; the whole local day holds 6 h
        (BERLIN_NIGHTS, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", 6),
        (BERLIN_NIGHTS, "2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z", 4),
        # Berlin's spring forward on Sunday 2026-03-29 (02:00 CET -> 03:00 CEST at 01:00Z):
        # 01:00-04:00 local is 00:00Z-01:00Z then 01:00Z-02:00Z, 2 h
        (BERLIN_NIGHTS, "2026-03-29T00:00:00Z", "2026-03-29T06:00:00Z", 2),
        # New York's fall back on Sunday 2026-11-01 (02:00 EDT -> 01:00 EST at 06:00Z):
        # 00:00-03:00 local is 04:00Z (EDT) to 08:00Z (EST), 4 h
        (NY_NIGHTS, "2026-11-01T04:00:00Z", "2026-11-01T12:00:00Z", 4),
        # ... and Saturday's 22:00-24:00 EDT (02:00Z-04:00Z) runs on into it: 6 h in a row
        (NY_NIGHTS, "2026-11-01T02:00:00Z", "2026-11-01T08:00:00Z", 6),
        # New York's spring forward on Sunday 2026-03-08 (02:00 EST -> 03:00 EDT at 07:00Z):
        # 00:00-03:00 local is 05:00Z (EST) to 07:00Z (EDT), 2 h
        (NY_NIGHTS, "2026-03-08T05:00:00Z", "2026-03-08T12:00:00Z", 2),
        # 02:30 does not exist that day: the interval opens at the change (07:00Z) and runs
        # to 05:00 EDT (09:00Z), 2 h
        (NY_LATE, "2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z", 2),
        # on the fall-back day 02:30-05:00 is 07:30Z-10:00Z (after the repeated hour): 2.5 h
        (NY_LATE, "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", 2.5),
    ],
)
def test_business_time_walks_local_days(
    schedule: dict[str, Any], start: str, end: str, hours: float
) -> None:
    calendar = OracleCalendar.from_json(schedule)
    assert calendar.business_ms(ms(start), ms(end)) == hours * H * 1000


def test_business_time_follows_the_docs_berlin_fall_back_example() -> None:
    # docs/kpis.md: 02:30-05:00 on 2026-10-25 in Berlin is 02:30-03:00 summer time, then
    # 02:30-05:00 winter time: 00:30Z-01:00Z and 01:30Z-04:00Z, three hours
    calendar = OracleCalendar("Europe/Berlin", {"sun": ["02:30-05:00"]})
    assert calendar.pieces(datetime(2026, 10, 25).date()) == [
        (ms("2026-10-25T00:30:00Z"), ms("2026-10-25T01:00:00Z")),
        (ms("2026-10-25T01:30:00Z"), ms("2026-10-25T04:00:00Z")),
    ]
    assert (
        calendar.business_ms(ms("2026-10-24T00:00:00Z"), ms("2026-10-26T00:00:00Z")) == 3 * H * 1000
    )


@pytest.mark.parametrize(
    ("schedule", "start", "target_s", "deadline"),
    [
        # Friday 16:30 CET (15:30Z): 30 min to 17:00, then Monday 09:00 CET (08:00Z) + 1:30
        (EMEA, "2026-11-27T15:30:00Z", 2 * H, "2026-11-30T09:30:00Z"),
        # Friday 12:30 CET: 30 min to the lunch break, 30 min after it: 14:30 CET
        (EMEA, "2026-11-27T11:30:00Z", H, "2026-11-27T13:30:00Z"),
        # reached exactly at a closing: due at the closing (Fri 17:00 CET), not on Monday
        (EMEA, "2026-11-27T15:30:00Z", 1800, "2026-11-27T16:00:00Z"),
        # Wednesday 2026-12-23 17:00 CET: 30 min, Christmas Eve and Day, the weekend, then
        # Monday 2026-12-28 09:00 CET (08:00Z) + 1:30
        (EMEA, "2026-12-23T16:00:00Z", 2 * H, "2026-12-28T09:30:00Z"),
        # Wednesday before Thanksgiving 17:00 EST (22:00Z): 1 h, Thursday closed, Friday
        # 08:00 EST (13:00Z) + 3 h
        (AMERICAS, "2026-11-25T22:00:00Z", 4 * H, "2026-11-27T16:00:00Z"),
        # Saturday 22:00 CEST in Berlin before the fall back: opens 01:00 CEST (23:00Z),
        # 2 h to the change (01:00Z), then 1 h of winter time: 02:00Z (03:00 CET; a clock
        # that ignored the change would say 04:00 local, 03:00Z)
        (BERLIN_NIGHTS, "2026-10-24T20:00:00Z", 3 * H, "2026-10-25T02:00:00Z"),
        # Sunday 2026-03-29 00:00 CET: 01:00-04:00 holds 2 h (00:00Z-02:00Z), the other 30 min
        # come from 22:00 CEST (20:00Z): due 20:30Z
        (BERLIN_NIGHTS, "2026-03-28T23:00:00Z", int(2.5 * H), "2026-03-29T20:30:00Z"),
        # 4 h from Saturday 23:00 EDT (03:00Z): 03:00Z-08:00Z is open (the repeated hour
        # included), so 07:00Z, which the wall clock shows as 02:00 EST
        (NY_NIGHTS, "2026-11-01T03:00:00Z", 4 * H, "2026-11-01T07:00:00Z"),
        # 24:00 runs on into Monday's 00:00 in Berlin: Sunday 2026-11-01 23:00 CET (22:00Z),
        # 1 h to midnight, 30 min of Monday: 00:30 CET (23:30Z)
        (BERLIN_NIGHTS, "2026-11-01T22:00:00Z", int(1.5 * H), "2026-11-01T23:30:00Z"),
    ],
)
def test_deadlines_walk_forward_day_by_day(
    schedule: dict[str, Any], start: str, target_s: int, deadline: str
) -> None:
    calendar = OracleCalendar.from_json(schedule)
    found = calendar.deadline_ms(ms(start), target_s * 1000)
    assert rfc3339_ms(found) == rfc3339_ms(ms(deadline))
    # the deadline is the earliest instant with that much open time
    assert calendar.business_ms(ms(start), found) == target_s * 1000
    assert calendar.business_ms(ms(start), found - 1) < target_s * 1000


# -- tickets ---------------------------------------------------------------------------------


OFFICE = rules(
    policy("office", "emea", first_response=2 * H, next_response=H, resolution=8 * H),
    emea=EMEA,
)


def test_a_friday_evening_ticket_is_answered_on_monday() -> None:
    # created Friday 16:30 CET (15:30Z), deadline Monday 10:30 CET (09:30Z, see above)
    replies = {
        "A": "2026-11-30T09:15:00Z",
        "B": "2026-11-30T09:30:00Z",
        "C": "2026-11-30T09:30:00.001Z",
    }
    values = []
    for ticket, when in replies.items():
        values += [created("2026-11-27T16:30:00+01:00", ticket), reply(when, ticket=ticket)]
    tickets = evaluate_tickets(values, OFFICE)
    a = tickets["A"]
    # calendar: Friday 15:30Z to Monday 09:15Z is 2 days 17:45, 236,700 s;
    # business: 30 min on Friday, 1:15 on Monday, 6,300 s
    assert (a.first_calendar_ms, a.first_business_ms, a.first_within) == (
        236_700_000,
        6_300_000,
        True,
    )
    assert a.policy == "office"
    fr = {ticket: outcomes(t)[0] for ticket, t in tickets.items()}
    assert fr["A"] == ("first_response", 1, ACHIEVED, "2026-11-30T09:15:00.000Z")
    # a reply exactly at the deadline is in time, a millisecond later is not
    assert fr["B"] == ("first_response", 1, ACHIEVED, "2026-11-30T09:30:00.000Z")
    assert fr["C"] == ("first_response", 1, BREACHED, "2026-11-30T09:30:00.000Z")
    assert tickets["C"].first_business_ms == 2 * H * 1000 + 1
    assert not tickets["C"].first_within
    # resolution: 8 business hours from Friday 16:30 CET = 30 min + Monday 09:00-16:30 CET,
    # no solve yet: due Monday 15:30Z
    assert outcomes(a)[-1] == ("resolution", 1, BREACHED, "2026-11-30T15:30:00.000Z")


def test_a_pending_status_pauses_the_resolution_clock() -> None:
    sla = rules(policy("calendar", resolution=4 * H))  # pause: pending (the default)
    t0 = "2026-11-02T10:00:00Z"

    def ticket(solved_at: str | None, name: str) -> list[bytes]:
        values = [
            created(t0, name),
            reply("2026-11-02T10:30:00Z", ticket=name),
            status("2026-11-02T11:00:00Z", "pending", ticket=name),
            status("2026-11-02T13:00:00Z", "open", ticket=name),
        ]
        if solved_at is not None:
            values.append(status(solved_at, "solved", ticket=name))
        return values

    tickets = evaluate_tickets(
        ticket("2026-11-02T15:00:00Z", "in-time")
        + ticket("2026-11-02T16:00:00.001Z", "late")
        + ticket(None, "open"),
        sla,
    )
    # running 10:00-11:00 (1 h), paused 11:00-13:00, running again from 13:00: the other
    # 3 h are due 16:00; solved 15:00 is in time, 16:00:00.001 not
    assert outcomes(tickets["in-time"]) == [("resolution", 1, ACHIEVED, "2026-11-02T15:00:00.000Z")]
    assert outcomes(tickets["late"]) == [("resolution", 1, BREACHED, "2026-11-02T16:00:00.000Z")]
    assert outcomes(tickets["open"]) == [("resolution", 1, BREACHED, "2026-11-02T16:00:00.000Z")]

    # pending for good after 1 h: no deadline, never breached
    forever = evaluate_tickets(ticket(None, "x")[:3], sla)["x"]
    assert outcomes(forever) == [("resolution", 1, RUNNING, None)]


def test_a_pause_on_business_hours() -> None:
    # Monday 2026-11-02 16:00 CET (15:00Z), pending at 17:00 CET, open Tuesday 10:00 CET:
    # 1 h on Monday (the office is open to 17:30, but the clock is paused), then 7 h from
    # Tuesday 10:00 CET: due 17:00 CET (16:00Z)
    values = [
        created("2026-11-02T16:00:00+01:00"),
        status("2026-11-02T17:00:00+01:00", "pending"),
        status("2026-11-03T10:00:00+01:00", "open"),
    ]
    assert outcomes(one(values, OFFICE))[-1] == (
        "resolution",
        1,
        BREACHED,
        "2026-11-03T16:00:00.000Z",
    )


def test_next_response_cycles() -> None:
    sla = rules(policy("calendar", next_response=H))

    def at(minutes: int) -> str:
        return rfc3339_ms(ms("2026-11-02T10:00:00Z") + minutes * 60_000)

    values = [
        created(at(0)),
        reply(at(10), "customer"),  # before any agent reply: starts nothing
        reply(at(15), "customer", public=False),  # private: no part
        reply(at(20)),  # the first response, 20 min
        reply(at(30), "customer"),  # next response 1 starts
        reply(at(40), "customer"),  # one runs: nothing new
        reply(at(45), "system"),  # not an agent
        reply(at(60)),  # fulfils 1 after 30 min (due 90): achieved
        reply(at(70)),  # none running: nothing
        reply(at(120), "customer"),  # 2 starts, due at 180
        reply(at(210)),  # fulfils 2 after 90 min: breached at 180, sampled
        reply(at(240), "customer"),  # 3 starts, due at 300
        status(at(270), "solved"),  # cancels 3 before its deadline: neither
        reply(at(300), "customer"),  # solved: starts nothing
        status(at(360), "open"),  # reopened
        reply(at(420), "customer"),  # 4 starts, due at 480
        status(at(540), "closed"),  # ends 4 after its deadline: breached, no sample
        reply(at(600), "customer"),  # closed: nothing
        reply(at(610)),
    ]
    ticket = one(values, sla)
    assert ticket.first_calendar_ms == 20 * 60_000
    assert [
        (r.number, r.calendar_ms // 60_000, r.business_ms // 60_000) for r in ticket.responses
    ] == [
        (1, 30, 30),
        (2, 90, 90),
    ]
    assert outcomes(ticket) == [
        ("next_response", 1, ACHIEVED, at(60)),
        ("next_response", 2, BREACHED, at(180)),
        ("next_response", 3, CANCELLED, at(270)),
        ("next_response", 4, BREACHED, at(480)),
    ]


def test_next_responses_in_business_time() -> None:
    # Thursday 2026-11-26 17:00 CET customer reply (16:00Z), agent reply Friday 09:30 CET:
    # 16:30 of calendar time, 30 + 30 = 60 min of business time (due 1 h: Friday 09:30 CET)
    values = [
        created("2026-11-26T10:00:00+01:00"),
        reply("2026-11-26T10:30:00+01:00"),
        reply("2026-11-26T17:00:00+01:00", "customer"),
        reply("2026-11-27T09:30:00+01:00"),
    ]
    ticket = one(values, OFFICE)
    assert [(r.calendar_ms, r.business_ms) for r in ticket.responses] == [
        (int(16.5 * H * 1000), H * 1000)
    ]
    assert outcomes(ticket)[1] == ("next_response", 1, ACHIEVED, "2026-11-27T08:30:00.000Z")


def test_status_before_the_creation_and_after_the_close() -> None:
    sla = rules(policy("calendar", first_response=H, resolution=2 * H))
    values = [
        status("2026-11-02T09:55:00Z", "pending"),  # before the creation: acts at it
        created("2026-11-02T10:00:00Z"),
        status("2026-11-02T11:00:00Z", "open"),  # the resolution clock starts here
        status("2026-11-02T11:30:00Z", "open"),  # no change
        status("2026-11-02T12:00:00Z", "closed"),  # a solve (from open): 1 h elapsed
        status("2026-11-02T13:00:00Z", "solved"),  # after the close: ignored
        status("2026-11-02T14:00:00Z", "open"),  # ignored
        reply("2026-11-02T14:30:00Z"),  # the first response, after the close
    ]
    ticket = one(values, sla)
    assert ticket.statuses == [
        (ms("2026-11-02T10:00:00Z"), "new"),
        (ms("2026-11-02T10:00:00Z"), "pending"),
        (ms("2026-11-02T11:00:00Z"), "open"),
        (ms("2026-11-02T12:00:00Z"), "closed"),
    ]
    # the close at 12:00 came an hour after the first response's 11:00 deadline: breached,
    # not cancelled; the reply after it still samples 4:30 of FRT. The resolution clock
    # ran 11:00-12:00 only (pending from the creation): solved in time
    assert outcomes(ticket) == [
        ("first_response", 1, BREACHED, "2026-11-02T11:00:00.000Z"),
        ("resolution", 1, ACHIEVED, "2026-11-02T12:00:00.000Z"),
    ]
    assert ticket.first_calendar_ms == int(4.5 * H * 1000)


def test_a_solve_before_any_agent_reply_cancels_the_first_response() -> None:
    sla = rules(policy("calendar", first_response=H, next_response=H))
    values = [
        created("2026-11-02T10:00:00Z"),
        reply("2026-11-02T10:10:00Z", "customer"),
        status("2026-11-02T10:50:00Z", "solved"),
        status("2026-11-02T12:00:00Z", "open"),
        reply("2026-11-02T12:30:00Z"),  # the first response: no instance left to fulfil
        reply("2026-11-02T12:40:00Z", "customer"),  # next response 1
        reply("2026-11-02T12:45:00Z"),
    ]
    ticket = one(values, sla)
    assert outcomes(ticket) == [
        ("first_response", 1, CANCELLED, "2026-11-02T10:50:00.000Z"),
        ("next_response", 1, ACHIEVED, "2026-11-02T12:45:00.000Z"),
    ]
    assert ticket.first_reply_ms == ms("2026-11-02T12:30:00Z")
    assert expected_breaches({"T": ticket}) == {}


def test_events_at_one_instant_apply_in_event_id_order() -> None:
    sla = rules(policy("calendar", next_response=H))
    same = "2026-11-02T11:00:00Z"
    values = [
        created("2026-11-02T10:00:00Z"),
        reply("2026-11-02T10:30:00Z"),
        # the solve (id "a...") comes before the customer's reply (id "b...") at one instant:
        # the ticket is solved when the customer writes, so nothing starts
        status(same, "solved", event_id="a-solve"),
        reply(same, "customer", event_id="b-reply"),
        reply("2026-11-02T11:30:00Z"),
    ]
    assert outcomes(one(values, sla)) == []
    # the other way round the reply starts a next response, which the solve then cancels
    values[2:4] = [
        status(same, "solved", event_id="b-solve"),
        reply(same, "customer", event_id="a-reply"),
    ]
    assert outcomes(one(values, sla)) == [
        ("next_response", 1, CANCELLED, same.replace("Z", ".000Z"))
    ]


def test_the_earliest_creation_picks_the_policy_and_replies_may_precede_it() -> None:
    sla = rules(
        {"name": "vip", "match": {"queue": ["vip"]}, "targets": {"first_response": {"high": H}}},
        {"name": "rest", "targets": {"first_response": {"high": 2 * H}}},
    )
    values = [
        created("2026-11-02T10:05:00Z", queue="general"),
        created("2026-11-02T10:00:00Z", queue="vip"),  # earlier: this one counts
        reply("2026-11-02T09:59:00Z"),  # before the creation: 0 s, in time
    ]
    ticket = one(values, sla)
    assert (ticket.policy, ticket.dimensions["queue"]) == ("vip", "vip")
    assert (ticket.first_calendar_ms, ticket.first_business_ms, ticket.first_within) == (0, 0, True)
    assert outcomes(ticket) == [("first_response", 1, ACHIEVED, "2026-11-02T09:59:00.000Z")]


def test_within_target_without_a_policy_target_keeps_the_v1_rule() -> None:
    # "low" has no first-response target here (the v1 one is 24 h); "normal" has no policy
    sla = SlaRules.from_json(
        {"emea": EMEA},
        [
            {
                "name": "partial",
                "match": {"priority": ["low", "high"]},
                "schedule": "emea",
                "targets": {"first_response": {"high": H}},
            }
        ],
    )
    values = [
        # Friday 16:30 CET to Monday 09:10 CET: 64:40 of calendar time, 40 min of business time
        created("2026-11-27T16:30:00+01:00", "low", priority="low"),
        reply("2026-11-30T09:10:00+01:00", ticket="low"),
        created("2026-11-27T16:30:00+01:00", "normal", priority="normal"),
        reply("2026-11-27T23:00:00+01:00", ticket="normal"),  # 6:30 <= 8 h
    ]
    tickets = evaluate_tickets(values, sla)
    low, normal = tickets["low"], tickets["normal"]
    assert (low.policy, low.first_business_ms, low.first_within) == ("partial", 40 * 60_000, False)
    assert low.instances == []
    assert (normal.policy, normal.first_business_ms, normal.first_within) == (
        None,
        int(6.5 * H * 1000),
        True,
    )


def test_settings_give_the_same_rules_as_json() -> None:
    settings = Settings(
        schedules={"emea": EMEA},
        sla_policies=[policy("office", "emea", first_response=2 * H, resolution=8 * H)],
    )
    from_settings = SlaRules.from_settings(settings)
    assert [p.name for p in from_settings.policies] == ["office"]
    assert from_settings.policies[0].pause == frozenset({"pending"})
    values = [created("2026-11-27T16:30:00+01:00"), reply("2026-11-30T10:15:00+01:00")]
    assert outcomes(one(values, from_settings)) == outcomes(one(values, OFFICE))
    # without policies: the one default policy, calendar time, v1's targets
    default = SlaRules.from_settings(Settings())
    assert [
        (p.name, p.schedule, p.target_s("first_response", "high")) for p in default.policies
    ] == [("default", None, 14400)]


# -- the KPI document and the alerts ---------------------------------------------------------


def test_the_document_counts_each_sample_at_its_instant() -> None:
    sla = rules(policy("calendar", first_response=H, next_response=H))
    values = [
        # A: first response 30 min (achieved 10:30), next response 20 min (at 11:20)
        created("2026-11-02T10:00:00Z", "A"),
        reply("2026-11-02T10:30:00Z", ticket="A"),
        reply("2026-11-02T11:00:00Z", "customer", ticket="A"),
        reply("2026-11-02T11:20:00Z", ticket="A"),
        # B (web): never answered, breaches its first response at 11:10
        created("2026-11-02T10:10:00Z", "B", channel="web"),
        # C: answered after 90 min at 11:30, breached at 11:00
        created("2026-11-02T10:00:00Z", "C"),
        reply("2026-11-02T11:30:00Z", ticket="C"),
    ]
    tickets = evaluate_tickets(values, sla)
    openers = [value for value in values if b"ticket.created" in value]

    def document(
        at: str, width_s: int, claimed: float | None = math.inf, by: tuple[str, ...] = ()
    ) -> Any:
        return kpi_document(
            tickets, openers, at_s=ms(at) / 1000, width_s=width_s, by=by, claimed_until_s=claimed
        )

    # 11:00-12:00: A's next response, C's first response, B's and C's breaches
    group = document("2026-11-02T11:59:30Z", H)["groups"][0]
    assert group["tickets_created"] == 0
    assert group["first_response"]["count"] == 1
    assert group["first_response"]["mean_seconds"] == 5400.0
    assert group["first_response"]["business"]["p50_seconds"] == 5400.0
    assert group["first_response"]["within_target"] == 0
    assert group["next_response"]["count"] == 1
    assert group["next_response"]["business"]["mean_seconds"] == 1200.0
    assert group["sla"]["first_response"] == {"achieved": 0, "breached": 2, "achieved_ratio": 0.0}
    assert group["sla"]["next_response"] == {"achieved": 1, "breached": 0, "achieved_ratio": 1.0}
    assert group["sla"]["resolution"] == {"achieved": 0, "breached": 0, "achieved_ratio": None}
    # breaches are counted once claimed: by 11:05 only C's
    claimed = document("2026-11-02T11:59:30Z", H, claimed=ms("2026-11-02T11:05:00Z") / 1000)
    assert claimed["groups"][0]["sla"]["first_response"]["breached"] == 1
    # by channel: B's breach is the web group's only count
    by_channel = document("2026-11-02T11:59:30Z", H, by=("channel",))
    assert [g["key"] for g in by_channel["groups"]] == [{"channel": "email"}, {"channel": "web"}]
    assert by_channel["groups"][1]["sla"]["first_response"]["breached"] == 1
    assert by_channel["groups"][1]["first_response"]["count"] == 0
    # 10:00-11:00: three creations, A's first response achieved
    early = document("2026-11-02T11:00:00Z", H)
    assert early["window"] == {
        "start": "2026-11-02T10:00:00Z",
        "end": "2026-11-02T11:00:00Z",
        "seconds": 3600,
    }
    group = early["groups"][0]
    assert group["tickets_created"] == 3
    assert group["sla"]["first_response"]["achieved"] == 1
    assert group["chats"]["requested"] == 0 and group["csat"]["ratio"] is None

    breaches = expected_breaches(tickets)
    assert sorted(breaches) == [("B", "first_response", 1), ("C", "first_response", 1)]
    b = breaches[("B", "first_response", 1)]
    assert (b.policy, b.channel, b.target_seconds) == ("calendar", "web", H)
    assert b.breached_ms == ms("2026-11-02T11:10:00Z") and b.started_ms == b.created_ms
    assert expected_breaches(tickets, ms("2026-11-02T11:05:00Z") / 1000).keys() == {
        ("C", "first_response", 1)
    }
    assert expected_breaches(tickets, None) == {}


def test_warnings_are_due_while_the_instance_runs() -> None:
    warned = rules(
        policy("office", "emea", first_response=2 * H, resolution=4 * H)
        | {"warn_at": [0.5, 0.75, 0.9], "pause": ["hold"]},
        emea=EMEA,
    )
    # created Friday 16:30 CET (15:30Z); 2 h of first response: 0.5 (1 h) is reached at
    # Monday 09:30 CET (08:30Z) after 30 min on Friday, 0.75 at 10:00 CET, 0.9 (1:48) at
    # 10:18 CET; each due at the deadline, 10:30 CET (09:30Z)
    values = [created("2026-11-27T16:30:00+01:00"), reply("2026-11-30T10:15:00+01:00")]
    (first, resolution) = one(values, warned).instances
    assert [(f, rfc3339_ms(at), rfc3339_ms(due)) for f, at, due in first.warnings] == [
        (0.5, "2026-11-30T08:30:00.000Z", "2026-11-30T09:30:00.000Z"),
        (0.75, "2026-11-30T09:00:00.000Z", "2026-11-30T09:30:00.000Z"),
    ]  # 0.9 came after the reply
    # a reply exactly at a warning's instant comes first: no warning then
    values[1] = reply("2026-11-30T10:00:00+01:00")
    assert [f for f, _, _ in one(values, warned).instances[0].warnings] == [0.5]
    # resolution, 4 h: 2 h reached Monday 10:30 CET; held from 11:00 CET for good: no
    # deadline, but the 0.5 warning was reached while it ran, due (had it kept running)
    # Monday 12:30 CET (11:30Z)
    values.append(status("2026-11-30T11:00:00+01:00", "hold"))
    resolution = one(values, warned).instances[1]
    assert resolution.deadline_ms is None
    assert [(f, rfc3339_ms(at), rfc3339_ms(due)) for f, at, due in resolution.warnings] == [
        (0.5, "2026-11-30T09:30:00.000Z", "2026-11-30T11:30:00.000Z")
    ]
    warnings = expected_warnings({"T": one(values, warned)})
    assert sorted((metric, fraction) for _, metric, _, fraction in warnings) == [
        ("first_response", 0.5),
        ("resolution", 0.5),
    ]
    w = warnings[("T", "resolution", 1, 0.5)]
    assert (w.remaining_seconds, w.target_seconds, w.policy) == (7200.0, 4 * H, "office")
    # by a claim clock before Monday 08:30Z nothing is due yet
    assert expected_warnings({"T": one(values, warned)}, ms("2026-11-30T08:29:59Z") / 1000) == {}
    # warn_at defaults to 0.75; the default policy (no settings) warns never
    assert OFFICE.policies[0].warn_at == (0.75,)
    assert SlaRules.from_json({}, None).policies[0].warn_at == ()
