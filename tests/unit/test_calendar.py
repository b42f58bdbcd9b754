"""Business time on schedules (docs/kpis.md, "Business calendars and SLA policies"): tables
of edge cases (DST days, holidays, split days, 24:00, half-hour zones) and hypothesis
properties against a brute-force oracle written here, sharing no code with the module."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from deskpulse.models.sla import Policy, Schedule, default_policy, policy_for
from deskpulse.streams import calendar as calendar_module
from deskpulse.streams.calendar import BusinessCalendar, business_ms, calendars, deadline_ms

H = 3_600_000  # one hour, in milliseconds
M = 60_000


def at(text: str) -> int:
    """An RFC 3339 instant (with its offset) as epoch milliseconds."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def cal(timezone: str, hours: dict[str, list[str]], holidays: tuple[str, ...] = ()) -> Any:
    return BusinessCalendar(Schedule(timezone=timezone, hours=hours, holidays=holidays))


WEEKDAYS_9_TO_1730 = {day: ["09:00-17:30"] for day in ("mon", "tue", "wed", "thu")}
OFFICE = cal(
    "Europe/Berlin",
    WEEKDAYS_9_TO_1730 | {"fri": ["09:00-13:00", "14:00-17:00"]},
    ("2026-12-24", "2026-12-25"),
)
BERLIN_SUN = cal("Europe/Berlin", {"sun": ["01:00-04:00"]})
BERLIN_SUN_LATE = cal("Europe/Berlin", {"sun": ["02:30-05:00"]})
NEW_YORK_SUN = cal("America/New_York", {"sun": ["00:00-06:00"]})
# open all Monday, contiguous with Sunday's 22:00-24:00 and Tuesday's 00:00-06:00
AROUND_MIDNIGHT = cal(
    "UTC", {"sun": ["22:00-24:00"], "mon": ["00:00-24:00"], "tue": ["00:00-06:00"]}
)
BERLIN_SUN_EARLY = cal("Europe/Berlin", {"sun": ["00:00-02:30"]})
TOUCHING = cal("UTC", {"mon": ["09:00-13:00", "13:00-17:00"]})
KOLKATA = cal("Asia/Kolkata", {"mon": ["09:00-17:00"]})
KATHMANDU = cal("Asia/Kathmandu", {"mon": ["09:00-17:00"]})


def test_public_surface() -> None:
    assert sorted(calendar_module.__all__) == [
        "BusinessCalendar",
        "business_ms",
        "calendars",
        "deadline_ms",
    ]


# fmt: off
BUSINESS_CASES = [
    # Berlin spring forward, 2026-03-29 02:00 CET -> 03:00 CEST: 01:00-04:00 is two hours
    (BERLIN_SUN, "2026-03-29T00:00+01:00", "2026-03-30T00:00+02:00", 2 * H),
    (BERLIN_SUN, "2026-03-29T01:30+01:00", "2026-03-29T03:30+02:00", 1 * H),
    # an interval starting in the skipped hour opens at the change: 03:00-05:00 CEST
    (BERLIN_SUN_LATE, "2026-03-29T00:00+01:00", "2026-03-30T00:00+02:00", 2 * H),
    # one ending in the skipped hour closes at the change: 00:00-02:00 CET
    (BERLIN_SUN_EARLY, "2026-03-29T00:00+01:00", "2026-03-30T00:00+02:00", 2 * H),
    # Berlin fall back, 2026-10-25 03:00 CEST -> 02:00 CET: 01:00-04:00 is four hours
    (BERLIN_SUN, "2026-10-25T00:00+02:00", "2026-10-26T00:00+01:00", 4 * H),
    (BERLIN_SUN, "2026-10-25T02:30+02:00", "2026-10-25T02:30+01:00", 1 * H),
    # 02:30-05:00 on that day: 02:30-03:00 CEST, then (02:00-02:30 CET is before 02:30,
    # closed) 02:30-05:00 CET: three hours in two pieces
    (BERLIN_SUN_LATE, "2026-10-25T00:00+02:00", "2026-10-26T00:00+01:00", 3 * H),
    (BERLIN_SUN_LATE, "2026-10-25T02:00+01:00", "2026-10-25T02:30+01:00", 0),
    # New York spring forward, 2026-03-08 02:00 EST -> 03:00 EDT: 00:00-06:00 is five hours
    (NEW_YORK_SUN, "2026-03-08T00:00-05:00", "2026-03-09T00:00-04:00", 5 * H),
    (NEW_YORK_SUN, "2026-03-08T01:00-05:00", "2026-03-08T04:00-04:00", 2 * H),
    # New York fall back, 2026-11-01 02:00 EDT -> 01:00 EST: seven hours
    (NEW_YORK_SUN, "2026-11-01T00:00-04:00", "2026-11-02T00:00-05:00", 7 * H),
    (NEW_YORK_SUN, "2026-11-01T01:30-04:00", "2026-11-01T01:30-05:00", 1 * H),
    # split day: Friday 12:00-15:00 holds 12-13 and 14-15
    (OFFICE, "2026-12-04T12:00+01:00", "2026-12-04T15:00+01:00", 2 * H),
    # intervals that touch make one stretch
    (TOUCHING, "2026-12-07T12:00Z", "2026-12-07T14:00Z", 2 * H),
    # lunch is closed
    (OFFICE, "2026-12-04T13:00+01:00", "2026-12-04T14:00+01:00", 0),
    # a weekend: Friday 16:00 to Monday 10:00 is Friday's last hour and Monday's first
    (OFFICE, "2026-12-04T16:00+01:00", "2026-12-07T10:00+01:00", 2 * H),
    # holidays: Wed 23rd 17:00 to Mon 28th 09:30; 24th and 25th closed, then the weekend
    (OFFICE, "2026-12-23T17:00+01:00", "2026-12-28T09:30+01:00", 1 * H),
    # a week: 4 days of 8.5 h and a Friday of 7 h
    (OFFICE, "2026-11-30T00:00+01:00", "2026-12-07T00:00+01:00", 41 * H),
    # the empty span and a reversed one
    (OFFICE, "2026-12-07T10:00+01:00", "2026-12-07T10:00+01:00", 0),
    (OFFICE, "2026-12-07T11:00+01:00", "2026-12-07T10:00+01:00", -1 * H),
    # 24:00 ends and a day open 00:00-24:00 run on across midnight
    (AROUND_MIDNIGHT, "2026-12-06T23:00Z", "2026-12-08T05:00Z", 30 * H),
    (AROUND_MIDNIGHT, "2026-12-06T00:00Z", "2026-12-09T00:00Z", 32 * H),
    # +05:30: 08:30-09:30 IST holds half an hour of Monday's hours
    (KOLKATA, "2026-12-07T03:00Z", "2026-12-07T04:00Z", 30 * M),
    (KOLKATA, "2026-12-07T00:00Z", "2026-12-08T00:00Z", 8 * H),
    # +05:45: 08:45-09:45 NPT holds three quarters of an hour
    (KATHMANDU, "2026-12-07T03:00Z", "2026-12-07T04:00Z", 45 * M),
    (KATHMANDU, "2026-12-07T11:00Z", "2026-12-07T12:00Z", 15 * M),
    # calendar time
    (None, "2026-12-04T18:00+01:00", "2026-12-07T09:00+01:00", 63 * H),
]
# fmt: on


@pytest.mark.parametrize(("calendar", "start", "end", "expected"), BUSINESS_CASES)
def test_business_ms(
    calendar: BusinessCalendar | None, start: str, end: str, expected: int
) -> None:
    assert business_ms(calendar, at(start), at(end)) == expected


# fmt: off
DEADLINE_CASES = [
    # a Friday-evening ticket with an 8 h target is due Monday 17:00
    (OFFICE, "2026-12-04T18:00+01:00", 8 * H, "2026-12-07T17:00+01:00"),
    # created on a Saturday (closed): counting starts Monday 09:00
    (OFFICE, "2026-12-05T10:00+01:00", 1 * H, "2026-12-07T10:00+01:00"),
    # created at lunch on Friday: counting starts at 14:00
    (OFFICE, "2026-12-04T13:30+01:00", 1 * H, "2026-12-04T15:00+01:00"),
    (TOUCHING, "2026-12-07T12:30Z", 1 * H, "2026-12-07T13:30Z"),
    # across lunch: 30 min before, 30 after
    (OFFICE, "2026-12-04T12:30+01:00", 1 * H, "2026-12-04T14:30+01:00"),
    # across two holidays and a weekend
    (OFFICE, "2026-12-23T17:00+01:00", 1 * H, "2026-12-28T09:30+01:00"),
    # reached exactly at a closing: due then, not at the next opening
    (OFFICE, "2026-12-07T17:00+01:00", 30 * M, "2026-12-07T17:30+01:00"),
    # a target of 0 is due at the start, open or closed
    (OFFICE, "2026-12-05T10:00+01:00", 0, "2026-12-05T10:00+01:00"),
    (OFFICE, "2026-12-07T10:00+01:00", 0, "2026-12-07T10:00+01:00"),
    # several weeks ahead: 41 h a week
    (OFFICE, "2026-11-30T00:00+01:00", 82 * H, "2026-12-11T17:00+01:00"),
    # DST: the skipped hour does not count, the repeated hour counts twice
    (NEW_YORK_SUN, "2026-03-08T00:00-05:00", 3 * H, "2026-03-08T04:00-04:00"),
    (NEW_YORK_SUN, "2026-11-01T00:00-04:00", 150 * M, "2026-11-01T01:30-05:00"),
    (BERLIN_SUN, "2026-03-29T00:00+01:00", 90 * M, "2026-03-29T03:30+02:00"),
    (BERLIN_SUN, "2026-10-25T00:00+02:00", 150 * M, "2026-10-25T02:30+01:00"),
    # the second piece of a fall-back day's split interval
    (BERLIN_SUN_LATE, "2026-10-25T00:00+02:00", 1 * H, "2026-10-25T03:00+01:00"),
    # on past the spring-forward Sunday to the next one
    (BERLIN_SUN, "2026-03-28T00:00+01:00", 3 * H, "2026-04-05T02:00+02:00"),
    # across midnight in one stretch
    (AROUND_MIDNIGHT, "2026-12-06T22:00Z", 2 * H, "2026-12-07T00:00Z"),
    (AROUND_MIDNIGHT, "2026-12-06T22:00Z", 31 * H, "2026-12-08T05:00Z"),
    (AROUND_MIDNIGHT, "2026-12-06T22:00Z", 32 * H, "2026-12-08T06:00Z"),
    (AROUND_MIDNIGHT, "2026-12-06T22:00Z", 33 * H, "2026-12-13T23:00Z"),
    (KATHMANDU, "2026-12-07T03:00Z", 1 * H, "2026-12-07T04:15Z"),
    (KOLKATA, "2026-12-07T03:00Z", 1 * H, "2026-12-07T04:30Z"),
    (None, "2026-12-04T18:00+01:00", 8 * H, "2026-12-05T02:00+01:00"),
]
# fmt: on


@pytest.mark.parametrize(("calendar", "start", "target_ms", "due"), DEADLINE_CASES)
def test_deadline_ms(
    calendar: BusinessCalendar | None, start: str, target_ms: int, due: str
) -> None:
    deadline = deadline_ms(calendar, at(start), target_ms)
    assert deadline == at(due)
    assert business_ms(calendar, at(start), deadline) == target_ms


def test_calendars_compiles_every_schedule() -> None:
    schedule = Schedule(timezone="Asia/Kolkata", hours={"mon": ["09:00-17:00"]})
    compiled = calendars({"india": schedule})
    assert list(compiled) == ["india"]
    assert business_ms(compiled["india"], at("2026-12-07T03:00Z"), at("2026-12-07T04:00Z")) == (
        30 * M
    )


# --- policies ------------------------------------------------------------------------

VIP = Policy.model_validate(
    {
        "name": "vip",
        "match": {"queue": ["billing"], "priority": ["urgent", "high"]},
        "targets": {"first_response": {"urgent": 3600}},
    }
)
EMAIL = Policy.model_validate(
    {"name": "email", "match": {"channel": ["Email"]}, "targets": {"resolution": {"low": 60}}}
)
REST = default_policy({"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400})


@pytest.mark.parametrize(
    ("channel", "queue", "priority", "expected"),
    [
        ("email", "billing", "urgent", "vip"),  # the first match wins over email
        ("email", "billing", "normal", "email"),  # vip wants urgent or high
        ("email", "sales", "high", "email"),  # the channel list was lowercased
        ("web", "sales", "low", "default"),  # no key: matches everything
    ],
)
def test_policy_for_takes_the_first_match(
    channel: str, queue: str, priority: str, expected: str
) -> None:
    policy = policy_for((VIP, EMAIL, REST), channel, queue, priority)
    assert policy is not None and policy.name == expected


def test_policy_for_without_a_match_is_none() -> None:
    assert policy_for((VIP, EMAIL), "web", "billing", "low") is None
    assert policy_for((), "web", "billing", "low") is None


def test_the_default_policy_is_v1() -> None:
    assert REST.name == "default"
    assert REST.schedule is None
    assert REST.warn_at == ()
    assert REST.target_seconds("first_response", "high") == 14400
    assert REST.target_seconds("next_response", "high") is None
    assert REST.target_seconds("resolution", "high") is None


# --- properties against a brute-force oracle --------------------------------------------
#
# The oracle walks UTC minutes and asks zoneinfo for each one's local date and time. Every
# zone below has whole-minute offsets and every interval ends on a whole minute, so a UTC
# minute is open or closed as a whole.

# each zone with instants at its 2026 offset changes (UTC), and a quiet one
QUIET = "2026-06-15T12:00Z"
ANCHORS = {
    "Europe/Berlin": ["2026-03-29T01:00Z", "2026-10-25T01:00Z", QUIET],
    "America/New_York": ["2026-03-08T07:00Z", "2026-11-01T06:00Z", QUIET],
    "Australia/Lord_Howe": ["2026-04-04T15:00Z", "2026-10-03T15:30Z", QUIET],  # 30 min DST
    "America/St_Johns": ["2026-03-08T05:30Z", "2026-11-01T04:30Z", QUIET],  # -03:30 with DST
    "Asia/Kolkata": ["2026-12-07T03:30Z", QUIET],
    "Asia/Kathmandu": ["2026-12-07T03:15Z", QUIET],
    "UTC": ["2026-12-07T00:00Z", QUIET],
}
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@st.composite
def weekly_hours(draw: st.DrawFn) -> dict[str, list[tuple[int, int]]]:
    """0 to 3 disjoint intervals a day, on a 30-minute grid, touching 00:00 and 24:00 often."""
    hours = {}
    for day in DAY_NAMES:
        points = draw(st.lists(st.integers(0, 48), max_size=6, unique=True))
        points = sorted(points)[: len(points) // 2 * 2]
        if points:
            hours[day] = [(points[i] * 30, points[i + 1] * 30) for i in range(0, len(points), 2)]
    return hours


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Oracle:
    def __init__(self, zone: str, hours: dict[str, list[tuple[int, int]]], holidays: set[date]):
        self.zone = ZoneInfo(zone)
        self.hours = hours
        self.holidays = holidays

    def is_open(self, minute_ms: int) -> bool:
        local = datetime.fromtimestamp(minute_ms / 1000, UTC).astimezone(self.zone)
        if local.date() in self.holidays:
            return False
        of_day = local.hour * 60 + local.minute
        intervals = self.hours.get(DAY_NAMES[local.weekday()], [])
        return any(start <= of_day < end for start, end in intervals)

    def business(self, a: int, b: int) -> int:
        total = 0
        minute = a - a % M
        while minute < b:
            if self.is_open(minute):
                total += min(b, minute + M) - max(a, minute)
            minute += M
        return total


@st.composite
def cases(draw: st.DrawFn) -> tuple[BusinessCalendar, Oracle, int]:
    zone = draw(st.sampled_from(sorted(ANCHORS)))
    hours = draw(weekly_hours())
    assume(any(hours.values()))
    anchor = at(draw(st.sampled_from(ANCHORS[zone])))
    holidays = {
        (datetime.fromtimestamp(anchor / 1000, UTC) + timedelta(days=shift)).date()
        for shift in draw(st.lists(st.integers(-3, 3), max_size=2))
    }
    schedule = Schedule(
        timezone=zone,
        hours={day: [f"{clock(s)}-{clock(e)}" for s, e in spans] for day, spans in hours.items()},
        holidays=tuple(day.isoformat() for day in holidays),
    )
    return BusinessCalendar(schedule), Oracle(zone, hours, holidays), anchor


SPAN = 3 * 24 * H


@settings(max_examples=120, deadline=None)
@given(cases(), st.lists(st.integers(-SPAN // 2, SPAN), min_size=3, max_size=3))
def test_business_ms_is_the_oracles_and_adds_up(
    case: tuple[BusinessCalendar, Oracle, int], shifts: list[int]
) -> None:
    calendar, oracle, anchor = case
    a, b, c = sorted(anchor + shift for shift in shifts)
    assert business_ms(calendar, a, c) == oracle.business(a, c)
    assert business_ms(calendar, a, b) + business_ms(calendar, b, c) == business_ms(calendar, a, c)
    assert business_ms(calendar, c, a) == -business_ms(calendar, a, c)


@settings(max_examples=120, deadline=None)
@given(cases(), st.integers(-SPAN // 2, SPAN // 2), st.fractions(0, 1))
def test_deadline_is_the_oracles_first_instant_at_the_target(
    case: tuple[BusinessCalendar, Oracle, int], shift: int, share: Any
) -> None:
    calendar, oracle, anchor = case
    start = anchor + shift
    # a target reached within the span, so the oracle's walk stays short
    available = oracle.business(start, start + SPAN)
    target = int(available * share)
    due = deadline_ms(calendar, start, target)
    assert start <= due <= start + SPAN
    assert oracle.business(start, due) == target
    if target > 0:
        assert oracle.business(start, due - 1) == target - 1  # minimal
    else:
        assert due == start
