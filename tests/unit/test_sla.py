"""SLA instances of a ticket as a pure function of its timeline (no services)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deskpulse.models.sla import Policy, Schedule, default_policy
from deskpulse.streams.calendar import BusinessCalendar
from deskpulse.streams.sla import (
    ACHIEVED,
    BREACHED,
    CANCELLED,
    RUNNING,
    Evaluation,
    Instance,
    evaluate,
    evaluate_terms,
    first_response_deadline,
    next_check_ms,
    opening_alert_ms,
    pending_alert_ms,
    terms,
)

S = 1000
M = 60 * S
H = 60 * M
T0 = 1_795_392_000_000  # 2026-11-23T00:00:00Z, a Monday

TARGETS = {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400}
DEFAULT = default_policy(TARGETS)  # type: ignore[arg-type]


def policy(**targets: int | None) -> Policy:
    """A calendar-time policy with the given targets (seconds) for priority ``normal``."""
    return Policy(
        name="p",
        targets={metric: {"normal": value} for metric, value in targets.items() if value},  # type: ignore[misc]
        warn_at=(),
    )


def timeline(*entries: tuple[float, str]) -> list[tuple[str, tuple[int, str]]]:
    """``(hours after T0, code)`` entries, ids in the order given."""
    return [(f"e{n:02d}", (T0 + int(hours * H), code)) for n, (hours, code) in enumerate(entries)]


def run(
    *entries: tuple[float, str],
    policy: Policy | None = DEFAULT,
    calendar: BusinessCalendar | None = None,
    clock_ms: int | None = None,
    created_ms: int = T0,
) -> Evaluation:
    return evaluate(created_ms, "normal", timeline(*entries), policy, calendar, clock_ms=clock_ms)


def only(view: Evaluation, metric: str) -> list[Instance]:
    return [instance for instance in view.instances if instance.metric == metric]


# --- first response -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "outcome", "end_h"),
    [
        ([(1, "a")], ACHIEVED, 1),
        ([(8, "a")], ACHIEVED, 8),  # a reply exactly at the deadline is in time
        ([(8 + 1 / H, "a")], BREACHED, 8 + 1 / H),  # a millisecond later it breached
        ([], BREACHED, None),  # no reply and no clock: the deadline counts as passed
        ([(2, "s"), (3, "a")], CANCELLED, 2),  # solved first: cancelled, never breaches
        ([(2, "x")], CANCELLED, 2),  # closed first: the same
        ([(8, "s")], CANCELLED, 8),  # a solve exactly at the deadline cancels (the tie rule)
        ([(9, "s")], BREACHED, 9),  # solved after the deadline: it had breached
        ([(1, "c"), (2, "o"), (3, "p")], BREACHED, None),  # customer replies, statuses: no end
    ],
)
def test_first_response(
    entries: list[tuple[float, str]], outcome: str, end_h: float | None
) -> None:
    (instance,) = only(run(*entries), "first_response")
    assert instance.deadline_ms == T0 + 8 * H
    assert instance.outcome == outcome
    assert instance.end_ms == (None if end_h is None else T0 + int(end_h * H))
    assert instance.key == "fr:1"


def test_first_response_running_until_the_clock_passes_the_deadline() -> None:
    (instance,) = only(run(clock_ms=T0 + 8 * H - 1), "first_response")
    assert instance.outcome == RUNNING
    (instance,) = only(run(clock_ms=T0 + 8 * H), "first_response")
    assert instance.outcome == BREACHED


def test_first_response_elapsed_and_the_sample_survive_a_cancel() -> None:
    view = run((1, "s"), (2, "a"))
    (instance,) = only(view, "first_response")
    assert instance.outcome == CANCELLED and instance.elapsed_ms is None
    # the response sample itself (v1's first response) does not depend on the status
    assert view.first_reply_ms == T0 + 2 * H
    assert view.first_business_ms == 2 * H


def test_reply_before_the_creation_takes_zero_time() -> None:
    view = run((-1, "a"))
    assert view.first_reply_ms == T0 - H
    assert view.first_business_ms == 0
    assert only(view, "first_response")[0].outcome == ACHIEVED


def test_no_policy_no_instances_but_samples() -> None:
    view = run((1, "a"), (2, "c"), (3, "a"), policy=None)
    assert view.instances == ()
    assert view.first_business_ms == H
    assert [(r.start_ms, r.at_ms, r.calendar_ms, r.business_ms) for r in view.next_responses] == [
        (T0 + 2 * H, T0 + 3 * H, H, H)
    ]


def test_a_priority_without_a_target_has_no_instance() -> None:
    assert run((1, "a"), policy=policy(next_response=600)).instances == ()


# --- next response --------------------------------------------------------------------

NR = policy(next_response=3600)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        # customer replies before the first agent reply start nothing
        ([(0.5, "c"), (1, "a")], []),
        # after it: one instance per customer reply while none runs, fulfilled by the agent
        ([(1, "a"), (2, "c"), (2.5, "c"), (2.75, "a")], [(1, 2, ACHIEVED, 2.75)]),
        ([(1, "a"), (2, "c"), (3, "a")], [(1, 2, ACHIEVED, 3)]),  # exactly at the deadline
        ([(1, "a"), (2, "c"), (4, "a")], [(1, 2, BREACHED, 4)]),
        # numbered in timeline order
        (
            [(1, "a"), (2, "c"), (2.5, "a"), (3, "c"), (5, "a")],
            [(1, 2, ACHIEVED, 2.5), (2, 3, BREACHED, 5)],
        ),
        # a solve cancels the running instance; a customer reply while solved starts none
        ([(1, "a"), (2, "c"), (2.5, "s"), (2.6, "c")], [(1, 2, CANCELLED, 2.5)]),
        # reopened: the next customer reply starts one again
        (
            [(1, "a"), (2, "s"), (3, "o"), (4, "c"), (4.5, "a")],
            [(1, 4, ACHIEVED, 4.5)],
        ),
        # a close exactly at the deadline cancels
        ([(1, "a"), (2, "c"), (3, "x")], [(1, 2, CANCELLED, 3)]),
        # still waiting, no clock: breached by the timeline
        ([(1, "a"), (2, "c")], [(1, 2, BREACHED, None)]),
    ],
)
def test_next_response(
    entries: list[tuple[float, str]], expected: list[tuple[int, float, str, float | None]]
) -> None:
    instances = only(run(*entries, policy=NR), "next_response")
    got = [
        (
            i.number,
            (i.start_ms - T0) / H,
            i.outcome,
            None if i.end_ms is None else (i.end_ms - T0) / H,
        )
        for i in instances
    ]
    assert got == [(n, float(s), o, None if e is None else float(e)) for n, s, o, e in expected]
    for instance in instances:
        assert instance.deadline_ms == instance.start_ms + H
        assert instance.key == f"nr:{instance.number}"


def test_next_response_samples_are_fulfilled_instances_whatever_their_outcome() -> None:
    view = run((1, "a"), (2, "c"), (2.5, "a"), (3, "c"), (5, "a"), (6, "c"), (6.5, "s"), policy=NR)
    assert [(r.calendar_ms, r.at_ms - T0) for r in view.next_responses] == [
        (H // 2, int(2.5 * H)),
        (2 * H, 5 * H),
    ]


# --- resolution and pauses ------------------------------------------------------------

RS = policy(resolution=4 * 3600)


@pytest.mark.parametrize(
    ("entries", "outcome", "deadline_h", "business_h"),
    [
        ([(3, "s")], ACHIEVED, 4, 3),
        ([(4, "s")], ACHIEVED, 4, 4),  # a solve exactly at the deadline is in time
        ([(5, "s")], BREACHED, 4, 5),
        # paused 1 h..3 h: 2 h do not count
        ([(1, "p"), (3, "o"), (5, "s")], ACHIEVED, 6, 3),
        ([(1, "p"), (3, "o"), (7, "s")], BREACHED, 6, 5),
        # paused for good before the target: no deadline, running
        ([(1, "p")], RUNNING, None, None),
        # closing from any status but solved is a solve
        ([(1, "p"), (2, "x")], ACHIEVED, 5, 1),
        # the first solve counts; reopening does not take it back
        ([(1, "s"), (2, "o"), (10, "s")], ACHIEVED, 4, 1),
        # a status dated before the creation applies at the creation
        ([(-1, "s")], ACHIEVED, 4, 0),
        # hold does not pause the default pause list
        ([(1, "h"), (5, "s")], BREACHED, 4, 5),
    ],
)
def test_resolution(
    entries: list[tuple[float, str]],
    outcome: str,
    deadline_h: float | None,
    business_h: float | None,
) -> None:
    (instance,) = only(run(*entries, policy=RS), "resolution")
    assert instance.outcome == outcome
    assert instance.deadline_ms == (None if deadline_h is None else T0 + int(deadline_h * H))
    assert instance.business_ms == (None if business_h is None else int(business_h * H))
    assert instance.key == "rs:1"


def test_pause_list_is_the_policys() -> None:
    hold = Policy(name="h", targets={"resolution": {"normal": 4 * 3600}}, pause=("hold",))
    (instance,) = only(run((1, "h"), (3, "o"), (5, "s"), policy=hold), "resolution")
    assert instance.deadline_ms == T0 + 6 * H and instance.outcome == ACHIEVED


def test_a_pause_on_new_starts_the_resolution_clock_at_the_first_change() -> None:
    # paused while new: the clock runs from the open at 1 h, so 4 h are due at 5 h (it once
    # counted from the creation when the open was the only change: due at 4 h)
    waits = Policy(name="w", targets={"resolution": {"normal": 4 * 3600}}, pause=("new",))
    (instance,) = only(run((1, "o"), policy=waits), "resolution")
    assert (instance.deadline_ms, instance.outcome) == (T0 + 5 * H, BREACHED)
    (instance,) = only(run((1, "o"), (4.5, "s"), policy=waits), "resolution")
    assert (instance.outcome, instance.business_ms) == (ACHIEVED, int(3.5 * H))
    assert run((1, "o"), policy=waits, clock_ms=T0 + 4 * H).instances[0].outcome == RUNNING
    # on business hours too: Monday 2026-11-23 in Berlin, new until 10:00 CET, open after
    office = BusinessCalendar(
        Schedule(timezone="Europe/Berlin", hours={"mon": ("09:00-17:00",), "tue": ("09:00-17:00",)})
    )
    created = T0 + 8 * H  # 09:00 CET
    (instance,) = only(
        run((9, "o"), policy=waits, calendar=office, created_ms=created), "resolution"
    )
    assert instance.deadline_ms == T0 + 13 * H  # 10:00 + 4 h = 14:00 CET


def test_closed_is_terminal_and_later_status_events_are_counted() -> None:
    view = run((1, "x"), (2, "o"), (3, "s"), (0.5, "c"), policy=RS)
    assert view.ignored == 2
    (instance,) = only(view, "resolution")
    assert instance.end_ms == T0 + H  # the close solved it; the later statuses did nothing
    # a same-status event is no change but is ignored after the close all the same
    assert run((1, "x"), (2, "x")).ignored == 1
    assert run((1, "s"), (2, "s")).ignored == 0


# --- business calendars ---------------------------------------------------------------

OFFICE = Schedule(
    timezone="Europe/Berlin",
    hours={day: ("09:00-17:00",) for day in ("mon", "tue", "wed", "thu", "fri")},
    holidays=("2026-12-24",),
)
SUNDAYS = Schedule(timezone="Europe/Berlin", hours={"sun": ("00:00-24:00",)})


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def business_policy(**targets: int) -> Policy:
    return Policy(
        name="b",
        schedule="office",
        targets={metric: {"normal": value} for metric, value in targets.items()},  # type: ignore[misc]
        warn_at=(0.5,),
    )


def test_created_while_closed_starts_the_clock_at_the_opening() -> None:
    created = ms("2026-11-21T12:00:00+01:00")  # a Saturday
    view = evaluate(
        created,
        "normal",
        [("r", (ms("2026-11-23T10:00:00+01:00"), "a"))],
        business_policy(first_response=2 * 3600),
        BusinessCalendar(OFFICE),
    )
    (instance,) = view.instances
    assert instance.deadline_ms == ms("2026-11-23T11:00:00+01:00")
    assert instance.outcome == ACHIEVED
    assert instance.business_ms == H and view.first_business_ms == H
    assert instance.elapsed_ms == ms("2026-11-23T10:00:00+01:00") - created
    assert instance.warnings == ()  # the reply came before half the target


def test_business_deadline_crosses_nights_and_a_holiday_with_a_warning() -> None:
    created = ms("2026-12-23T16:00:00+01:00")  # a Wednesday; the 24th is a holiday
    (instance,) = evaluate(
        created, "normal", [], business_policy(first_response=4 * 3600), BusinessCalendar(OFFICE)
    ).instances
    # 1 h on the 23rd, then the 25th (a Friday): 09:00 + 3 h
    assert instance.deadline_ms == ms("2026-12-25T12:00:00+01:00")
    assert instance.warnings == ((0.5, ms("2026-12-25T10:00:00+01:00")),)


@pytest.mark.parametrize(
    ("target_h", "deadline"),
    [
        (23, "2026-03-29T22:00:00+00:00"),  # the spring-forward Sunday has 23 real hours
        (24, "2026-04-04T23:00:00+00:00"),  # so 24 h need the next Sunday's first hour
    ],
)
def test_dst_day_is_an_hour_short(target_h: int, deadline: str) -> None:
    created = ms("2026-03-28T12:00:00+00:00")  # a Saturday: closed
    sundays = Policy(
        name="s", schedule="sundays", targets={"first_response": {"normal": target_h * 3600}}
    )
    (instance,) = evaluate(created, "normal", [], sundays, BusinessCalendar(SUNDAYS)).instances
    assert instance.deadline_ms == ms(deadline)


def test_resolution_pause_in_business_time() -> None:
    calendar = BusinessCalendar(OFFICE)
    created = ms("2026-11-23T09:00:00+01:00")  # Monday
    entries = [
        ("p", (ms("2026-11-23T10:00:00+01:00"), "p")),  # pending from 10:00
        ("o", (ms("2026-11-24T09:30:00+01:00"), "o")),  # open again Tuesday 09:30
    ]
    (instance,) = evaluate(
        created, "normal", entries, business_policy(resolution=3 * 3600), calendar
    ).instances
    # 1 h on Monday, 09:00-09:30 Tuesday paused, then 2 h more: 11:30
    assert instance.deadline_ms == ms("2026-11-24T11:30:00+01:00")


# --- the breach-check helpers ---------------------------------------------------------


def test_next_check_is_the_earliest_future_deadline_or_warning() -> None:
    warned = Policy(
        name="w",
        targets={"first_response": {"normal": 3600}, "resolution": {"normal": 7200}},
        warn_at=(0.5, 0.75),
    )
    view = run((0.25, "c"), policy=warned)
    assert next_check_ms(view) == T0 + H // 2
    assert next_check_ms(view, T0 + H // 2) == T0 + 3 * H // 4
    assert next_check_ms(view, T0 + H) == T0 + int(1.5 * H)  # the resolution's 0.75
    assert next_check_ms(view, T0 + 2 * H) is None
    # answered and solved: nothing left to look at
    assert next_check_ms(run((0.1, "a"), (0.2, "s"), policy=warned)) is None


codes = st.sampled_from(["a", "c", "n", "o", "p", "h", "s", "x"])


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(st.tuples(st.integers(-2 * H, 12 * H), codes), max_size=8),
    priority=st.sampled_from(["urgent", "high", "normal", "low"]),
)
def test_the_fast_first_response_deadline_is_the_instances(
    entries: list[tuple[int, str]], priority: str
) -> None:
    items = [(f"e{n}", (T0 + offset, code)) for n, (offset, code) in enumerate(entries)]
    view = evaluate(T0, priority, items, DEFAULT, None)
    (instance,) = view.instances
    expected = instance.deadline_ms if instance.running_at(instance.deadline_ms or 0) else None
    assert instance.outcome in (BREACHED, ACHIEVED, CANCELLED)
    assert (instance.outcome == BREACHED) == (expected is not None)
    assert first_response_deadline(T0, priority, items, DEFAULT, None) == expected
    # order of the input never matters
    assert evaluate(T0, priority, list(reversed(items)), DEFAULT, None) == view


@settings(max_examples=300, deadline=None)
@given(
    created=st.integers(0, 14 * 24 * H),
    targets=st.fixed_dictionaries(
        {
            metric: st.one_of(st.none(), st.integers(1, 48 * 3600))
            for metric in ("first_response", "next_response", "resolution")
        }
    ),
    warn_at=st.sampled_from([(), (0.5,), (0.75,), (0.5, 0.75, 0.9), (0.001,)]),
    pause=st.sampled_from([("pending",), ("new", "pending"), ()]),
    business=st.booleans(),
)
def test_a_new_tickets_first_alert_needs_no_evaluation(
    created: int,
    targets: dict[str, int | None],
    warn_at: tuple[float, ...],
    pause: tuple[str, ...],
    business: bool,
) -> None:
    # opening_alert_ms, what a batch computes for a ticket with nothing in its timeline,
    # is the full evaluation's earliest pending alert
    chosen = Policy(
        name="p",
        schedule="office" if business else None,
        targets={m: {"normal": v} for m, v in targets.items() if v},  # type: ignore[misc]
        warn_at=warn_at,
        pause=pause,  # type: ignore[arg-type]
    )
    calendar = BusinessCalendar(OFFICE) if business else None
    plan = terms(chosen, "normal", calendar)
    view = evaluate_terms(T0 + created, [], plan, detail=False, warn=True)
    assert opening_alert_ms(T0 + created, plan) == pending_alert_ms(view, set())
