"""The lifecycle oracle (tests/lifecycle_oracle.py) on hand-made tickets and chats, each
answer worked out by hand in the comments: reopens, one touch, the status at an instant,
statuses before the creation and after a close, drops, stale chats, handle time and the
windows; then order independence and the traffic of tests/lifecycle_support.py."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deskpulse.models.events import TicketReplied, TicketStatusChanged, decode
from tests.lifecycle_oracle import (
    Lifecycle,
    compare,
    evaluate,
    lifecycle_document,
    merge_documents,
    window_end_ms,
)
from tests.lifecycle_support import (
    POLICIES,
    SCHEDULES,
    build_lifecycle_records,
    interesting_instants,
)
from tests.sla_oracle import SlaRules, evaluate_tickets, kpi_document, rfc3339_ms, to_ms

H = 3600
M = 60
#: Monday 2026-11-02 10:00Z
T0_MS = to_ms(datetime.fromisoformat("2026-11-02T10:00:00+00:00"))
_ids = itertools.count()


def at(minutes: float, plus_ms: int = 0) -> str:
    """``T0`` plus some minutes (and milliseconds), as RFC 3339."""
    return rfc3339_ms(T0_MS + round(minutes * 60_000) + plus_ms)


def at_s(minutes: float) -> float:
    return (T0_MS + minutes * 60_000) / 1000


def event(event_type: str, when: str, **fields: Any) -> bytes:
    fields.setdefault("event_id", f"e{next(_ids):05d}")
    return orjson.dumps({"type": event_type, "occurred_at": when, **fields})


def created(when: str, ticket: str = "T", **dims: Any) -> bytes:
    dims = {"channel": "email", "queue": "billing", "priority": "high", **dims}
    return event("ticket.created", when, ticket_id=ticket, **dims)


def reply(when: str, role: str = "agent", ticket: str = "T", **fields: Any) -> bytes:
    return event("ticket.replied", when, ticket_id=ticket, author_role=role, **fields)


def status(when: str, value: str, ticket: str = "T", **fields: Any) -> bytes:
    return event("ticket.status_changed", when, ticket_id=ticket, status=value, **fields)


def chat(event_type: str, when: str, chat_id: str = "C", **fields: Any) -> bytes:
    if event_type == "chat.requested":
        fields = {"queue": "billing", "priority": "normal", **fields}
    return event(event_type, when, chat_id=chat_id, **fields)


def document(lifecycle: Lifecycle, minutes: float, width_s: int = H, **kwargs: Any) -> Any:
    return lifecycle_document(lifecycle, at_s=at_s(minutes), width_s=width_s, **kwargs)


def group(lifecycle: Lifecycle, minutes: float, width_s: int = H, **kwargs: Any) -> Any:
    return document(lifecycle, minutes, width_s, **kwargs)["groups"][0]


def backlog(lifecycle: Lifecycle, minutes: float, **kwargs: Any) -> dict[str, Any]:
    found: dict[str, Any] = group(lifecycle, minutes, **kwargs)["backlog"]
    return found


# -- full resolution ----------------------------------------------------------------------------


def test_a_reopen_retracts_the_sample_and_the_next_solve_adds_it_again() -> None:
    values = [
        created(at(0)),
        reply(at(10)),
        status(at(60), "solved"),  # a solve: 1 h after the creation
        reply(at(90), "customer"),
        status(at(120), "open"),  # a reopen
        reply(at(150)),
        status(at(240), "solved"),  # the final solve: 4 h
    ]
    solved = evaluate(values[:3]).tickets["T"]
    assert (solved.final_solve_ms, solved.resolution_ms) == (T0_MS + H * 1000, H * 1000)
    assert (solved.reopened, solved.one_touch) == (False, True)
    assert group(evaluate(values[:3]), 61)["resolution"]["count"] == 1

    reopened = evaluate(values[:5])
    assert reopened.tickets["T"].final_solve_ms is None
    assert reopened.tickets["T"].reopens == (T0_MS + 120 * 60_000,)
    # no sample anywhere any more; back in the backlog once the reopen is before E
    assert group(reopened, 600, width_s=86_400)["resolution"]["count"] == 0
    assert backlog(reopened, 120)["total"] == 0  # the reopen at exactly E: still solved
    assert backlog(reopened, 121) == {
        "new": 0,
        "open": 1,
        "pending": 0,
        "hold": 0,
        "total": 1,
        "oldest_age_seconds": 121 * 60.0,
    }

    whole = evaluate(values)
    ticket = whole.tickets["T"]
    assert ticket.solves == (T0_MS + 60 * 60_000, T0_MS + 240 * 60_000)
    assert (ticket.resolution_ms, ticket.reopened, ticket.one_touch) == (4 * H * 1000, True, False)
    # the window [13:00, 14:00) misses the solve at 14:00; [13:01, 14:01) has it
    assert group(whole, 240)["resolution"]["count"] == 0
    assert group(whole, 241)["resolution"] == {
        "count": 1,
        "mean_seconds": 14400.0,
        "p50_seconds": 14400.0,
        "p90_seconds": 14400.0,
        "p95_seconds": 14400.0,
        "business": {
            "mean_seconds": 14400.0,
            "p50_seconds": 14400.0,
            "p90_seconds": 14400.0,
            "p95_seconds": 14400.0,
        },
        "reopened": 1,
        "reopen_ratio": 1.0,
        "one_touch": 0,
        "one_touch_ratio": 0.0,
    }
    # the first solve's hour holds nothing
    assert group(whole, 90)["resolution"]["count"] == 0


def test_one_touch_is_one_public_agent_reply_by_the_final_solve() -> None:
    values = [
        # the reply and the solve at one millisecond, the reply's event id sorting last:
        # dated at the solve, so it counts
        created(at(0), "same-ms"),
        reply(at(30), ticket="same-ms", event_id="z-reply"),
        status(at(30), "solved", ticket="same-ms", event_id="a-solve"),
        # a millisecond after the solve: no reply by the solve
        created(at(0), "after"),
        reply(at(30, 1), ticket="after"),
        status(at(30), "solved", ticket="after"),
        # two agent replies
        created(at(0), "two"),
        reply(at(10), ticket="two"),
        reply(at(20), ticket="two"),
        status(at(30), "solved", ticket="two"),
        # private notes, a system reply and the customer's do not count
        created(at(0), "notes"),
        reply(at(5), ticket="notes", public=False),
        reply(at(6), "system", ticket="notes"),
        reply(at(7), "customer", ticket="notes"),
        reply(at(8), ticket="notes"),
        reply(at(9), "agent", ticket="notes", public=False),
        status(at(30), "solved", ticket="notes"),
        # a reply after the solve does not either
        created(at(0), "later"),
        reply(at(10), ticket="later"),
        status(at(30), "solved", ticket="later"),
        reply(at(40), ticket="later"),
        # one reply, but reopened before the final solve
        created(at(0), "reopened"),
        reply(at(10), ticket="reopened"),
        status(at(20), "solved", ticket="reopened"),
        status(at(25), "hold", ticket="reopened"),
        status(at(30), "solved", ticket="reopened"),
        # closed while new, no reply: a solve, not one touch
        created(at(0), "untouched"),
        status(at(30), "closed", ticket="untouched"),
    ]
    tickets = evaluate(values).tickets
    assert {name: t.one_touch for name, t in tickets.items()} == {
        "same-ms": True,
        "after": False,
        "two": False,
        "notes": True,
        "later": True,
        "reopened": False,
        "untouched": False,
    }
    assert {name: t.reopened for name, t in tickets.items() if t.reopened} == {"reopened": True}
    resolution = group(evaluate(values), 31)["resolution"]
    # seven samples of 30 min each; three one touch, one reopened
    assert (resolution["count"], resolution["mean_seconds"]) == (7, 1800.0)
    assert (resolution["one_touch"], resolution["one_touch_ratio"]) == (3, 3 / 7)
    assert (resolution["reopened"], resolution["reopen_ratio"]) == (1, 1 / 7)


def test_quantiles_are_the_lower_order_statistic() -> None:
    # five tickets solved after 10, 20, 30, 40 and 50 minutes: p50 floor(0.5 * 4) = 2 -> 30,
    # p90 floor(0.9 * 4) = 3 -> 40, p95 floor(0.95 * 4) = 3 -> 40
    values = []
    for n, minutes in enumerate((50, 10, 40, 20, 30)):
        values += [created(at(0), f"T{n}"), status(at(minutes), "solved", ticket=f"T{n}")]
    resolution = group(evaluate(values), 60)["resolution"]
    assert (resolution["mean_seconds"], resolution["p50_seconds"]) == (1800.0, 1800.0)
    assert (resolution["p90_seconds"], resolution["p95_seconds"]) == (2400.0, 2400.0)
    assert resolution["business"]["p95_seconds"] == 2400.0


OFFICE_RULES = SlaRules.from_json(
    {"office": {"timezone": "UTC", "hours": {d: ["09:00-17:00"] for d in ("mon", "fri")}}},
    [
        {
            "name": "office",
            "match": {"queue": ["billing"]},
            "schedule": "office",
            "targets": {"resolution": {"high": 8 * H}},
            "pause": ["pending"],
        },
        {"name": "clock", "match": {"queue": ["technical"]}, "targets": {}},
    ],
)


def test_business_resolution_time_is_measured_on_the_policy_schedule() -> None:
    friday, monday = "2026-11-06T16:00:00Z", "2026-11-09T10:00:00Z"
    values = []
    for queue in ("billing", "technical", "general"):
        values += [
            created(friday, queue, queue=queue),
            # pending for the weekend: pauses are not deducted from this span
            status("2026-11-06T16:30:00Z", "pending", ticket=queue),
            status("2026-11-09T09:30:00Z", "open", ticket=queue),
            status(monday, "solved", ticket=queue),
        ]
    tickets = evaluate(values, OFFICE_RULES).tickets
    # calendar: Friday 16:00 to Monday 10:00 is 66 h; the office is open Friday 16:00-17:00
    # and Monday 09:00-10:00: 2 h. A policy without a schedule, and no policy: calendar time.
    assert {q: (t.resolution_ms, t.resolution_business_ms) for q, t in tickets.items()} == {
        "billing": (66 * H * 1000, 2 * H * 1000),
        "technical": (66 * H * 1000, 66 * H * 1000),
        "general": (66 * H * 1000, 66 * H * 1000),
    }
    without_rules = evaluate(values).tickets["billing"]
    assert without_rules.resolution_business_ms == 66 * H * 1000
    by_queue = lifecycle_document(
        evaluate(values, OFFICE_RULES),
        at_s=to_ms(datetime.fromisoformat(monday)) / 1000 + 1,
        width_s=H,
        by=("queue",),
    )
    billing = by_queue["groups"][0]
    assert billing["key"] == {"queue": "billing"}
    assert billing["resolution"]["mean_seconds"] == 66 * H
    assert billing["resolution"]["business"]["mean_seconds"] == 2 * H


# -- the status at an instant -------------------------------------------------------------------


def test_the_status_at_an_instant_is_set_strictly_before_it() -> None:
    values = [
        created(at(0), "A"),
        status(at(30), "open", ticket="A"),
        status(at(60), "pending", ticket="A"),
        created(at(60), "B", channel="web"),  # created exactly at 11:00
    ]
    lifecycle = evaluate(values)
    a = lifecycle.tickets["A"]
    assert [a.status_at(T0_MS + round(m * 60_000)) for m in (0, 0.001, 30, 31, 60, 61)] == [
        None,  # at its creation it does not exist yet
        "new",
        "new",
        "open",
        "open",
        "pending",
    ]
    # read at 11:00 (and at 10:59:30, which rounds up to it): A still open, B not there
    for minutes in (60, 59.5):
        assert backlog(lifecycle, minutes) == {
            "new": 0,
            "open": 1,
            "pending": 0,
            "hold": 0,
            "total": 1,
            "oldest_age_seconds": 3600.0,
        }
    assert backlog(lifecycle, 61) == {
        "new": 1,
        "open": 0,
        "pending": 1,
        "hold": 0,
        "total": 2,
        "oldest_age_seconds": 3660.0,
    }
    by_channel = document(lifecycle, 61, by=("channel",))["groups"]
    assert [(g["key"], g["backlog"]["total"]) for g in by_channel] == [
        ({"channel": "email"}, 1),
        ({"channel": "web"}, 1),
    ]
    assert by_channel[1]["backlog"]["oldest_age_seconds"] == 60.0


def test_statuses_dated_before_the_creation_act_at_it_in_timeline_order() -> None:
    values = [
        # two at one instant before the creation: event ids "a" then "b" decide the order
        status(at(-10), "hold", ticket="A", event_id="b"),
        status(at(-10), "pending", ticket="A", event_id="a"),
        created(at(0), "A"),
        # solved before the creation: a solve at the creation, 0 s; the reply after it
        # is not by the solve
        status(at(-5), "solved", ticket="S"),
        created(at(0), "S"),
        reply(at(20), ticket="S"),
        # closed and then open at one instant: the close first (id order), the open ignored
        created(at(0), "C"),
        status(at(5), "open", ticket="C", event_id="y"),
        status(at(5), "closed", ticket="C", event_id="x"),
    ]
    lifecycle = evaluate(values)
    a, s, c = (lifecycle.tickets[name] for name in "ASC")
    assert a.changes == ((T0_MS, "new"), (T0_MS, "pending"), (T0_MS, "hold"))
    assert a.status_at(T0_MS) is None and a.status_at(T0_MS + 1) == "hold"
    assert (s.final_solve_ms, s.resolution_ms, s.one_touch) == (T0_MS, 0, False)
    assert c.changes == ((T0_MS, "new"), (T0_MS + 5 * 60_000, "closed"))
    resolution = group(lifecycle, 6)["resolution"]
    assert (resolution["count"], resolution["mean_seconds"], resolution["p50_seconds"]) == (
        2,
        150.0,  # 0 s and 300 s
        0.0,
    )
    # at 10:01: A on hold, C still new, S solved
    assert backlog(lifecycle, 1) == {
        "new": 1,
        "open": 0,
        "pending": 0,
        "hold": 1,
        "total": 2,
        "oldest_age_seconds": 60.0,
    }


def test_closed_is_terminal_and_a_close_after_a_solve_is_no_second_solve() -> None:
    values = [
        # open -> closed is a solve; the solve and the reopen after it are ignored
        created(at(0), "A"),
        status(at(10), "open", ticket="A"),
        status(at(20), "closed", ticket="A"),
        status(at(30), "solved", ticket="A"),
        status(at(40), "open", ticket="A"),
        # solved, then closed: one solve, at 20
        created(at(0), "B"),
        status(at(20), "solved", ticket="B"),
        status(at(50), "closed", ticket="B"),
        status(at(60), "new", ticket="B"),
    ]
    lifecycle = evaluate(values)
    a, b = lifecycle.tickets["A"], lifecycle.tickets["B"]
    assert (a.solves, a.reopens, a.final_solve_ms) == ((T0_MS + 1_200_000,), (), T0_MS + 1_200_000)
    assert (b.solves, b.reopens, b.final_solve_ms) == ((T0_MS + 1_200_000,), (), T0_MS + 1_200_000)
    assert a.dropped_ms is None and b.dropped_ms is None
    assert backlog(lifecycle, 120)["total"] == 0
    assert group(lifecycle, 21)["resolution"]["count"] == 2
    assert group(lifecycle, 120)["resolution"]["count"] == 0


# -- dropping unsolved tickets ----------------------------------------------------------------


def test_an_unsolved_ticket_is_dropped_at_its_max_age_or_after_its_last_activity() -> None:
    values = [
        # pending from 10:30: kept to max(10:00 + 10 h, 10:30 + 1 h) = 20:00
        created(at(0), "A"),
        status(at(30), "pending", ticket="A"),
        # a customer reply at 19:30: kept to 20:30
        created(at(0), "B", channel="web"),
        reply(at(570), "customer", ticket="B"),
        # a private note at 19:40 is activity too: kept to 20:40
        created(at(0), "C", channel="web"),
        reply(at(580), ticket="C", public=False),
        # solved, then reopened: unsolved, dropped at 20:00
        created(at(0), "D"),
        status(at(30), "solved", ticket="D"),
        status(at(45), "open", ticket="D"),
        # solved for good: never dropped, never in the backlog
        created(at(0), "E"),
        status(at(30), "solved", ticket="E"),
    ]
    lifecycle = evaluate(values, retention_s=H, open_ticket_max_age_s=10 * H)
    dropped = {name: t.dropped_ms for name, t in lifecycle.tickets.items()}
    assert dropped == {
        "A": T0_MS + 600 * 60_000,
        "B": T0_MS + 630 * 60_000,
        "C": T0_MS + 640 * 60_000,
        "D": T0_MS + 600 * 60_000,
        "E": None,
    }

    def counts(minutes: float) -> tuple[int, int, int, int, float | None]:
        found = backlog(lifecycle, minutes)
        return (
            found["new"],
            found["open"],
            found["pending"],
            found["total"],
            found["oldest_age_seconds"],
        )

    # at 20:00 exactly everything still counts; a minute later A and D are gone
    assert counts(600) == (2, 1, 1, 4, 36_000.0)
    assert counts(601) == (2, 0, 0, 2, 36_060.0)
    assert counts(630) == (2, 0, 0, 2, 37_800.0)
    assert counts(631) == (1, 0, 0, 1, 37_860.0)
    assert counts(641) == (0, 0, 0, 0, None)
    # the web group is listed while it has a backlog, then not at all
    assert [g["key"] for g in document(lifecycle, 631, by=("channel",))["groups"]] == [
        {"channel": "web"}
    ]
    assert document(lifecycle, 641, by=("channel",))["groups"] == []
    # with the defaults (48 h, 30 days) the ticket is kept for its 30 days
    defaults = evaluate(values).tickets["A"]
    assert defaults.dropped_ms == T0_MS + 30 * 86_400_000


# -- chats --------------------------------------------------------------------------------------


def test_a_chat_waits_until_its_first_outcome_or_for_an_hour() -> None:
    values = [
        chat("chat.requested", at(0), "C1"),  # never answered
        chat("chat.requested", at(30), "C2"),
        chat("chat.accepted", at(45), "C2"),
        chat("chat.requested", at(59), "C3", queue="sales"),  # at exactly 10:59
        chat("chat.abandoned", at(70), "C3"),
        chat("chat.accepted", at(1), "orphan"),  # never requested: nothing
    ]
    lifecycle = evaluate(values)
    assert set(lifecycle.chats) == {"C1", "C2", "C3"}

    def waiting(minutes: float, **kwargs: Any) -> tuple[int, float | None]:
        chats = group(lifecycle, minutes, **kwargs)["chats"]
        return chats["waiting"], chats["longest_wait_seconds"]

    assert waiting(0) == (0, None)
    # C2's accept at exactly 10:45 does not count yet; from 10:46 it does
    assert waiting(45) == (2, 2700.0)
    assert waiting(46) == (1, 2760.0)
    assert waiting(59) == (1, 3540.0)  # C3 requested at exactly E: not yet
    # C1 is stale at 11:00 (an hour exactly); C3 waits
    assert waiting(60) == (1, 60.0)
    assert waiting(71) == (0, None)
    # a shorter stale limit
    assert waiting(9, chat_stale_after_s=600) == (1, 540.0)
    assert waiting(10, chat_stale_after_s=600) == (0, None)
    # by queue at 11:00: only sales is listed (no samples, no backlog elsewhere)
    assert [g["key"] for g in document(lifecycle, 60, by=("queue",))["groups"]] == [
        {"queue": "sales"}
    ]


def test_handle_time_runs_from_the_first_accept_to_the_first_end_or_abandon() -> None:
    values = [
        chat("chat.requested", at(0), "H1"),
        chat("chat.accepted", at(1), "H1"),
        chat("chat.ended", at(8), "H1", ended_by="customer"),  # 420 s at 10:08
        chat("chat.requested", at(0), "H2"),
        chat("chat.accepted", at(2), "H2"),
        chat("chat.abandoned", at(5), "H2"),  # 180 s at 10:05
        chat("chat.requested", at(0), "H3"),
        chat("chat.abandoned", at(1), "H3"),  # abandoned first: not answered
        chat("chat.accepted", at(3), "H3"),
        chat("chat.ended", at(9), "H3"),
        chat("chat.requested", at(0), "H4"),
        chat("chat.ended", at(4), "H4", event_id="a"),  # one instant: answered, 0 s
        chat("chat.accepted", at(4), "H4", event_id="b"),
        chat("chat.requested", at(0), "H5"),
        chat("chat.accepted", at(1), "H5"),  # never ended
        chat("chat.requested", at(0), "H6"),
        chat("chat.ended", at(7), "H6"),
        chat("chat.accepted", at(2), "H6"),
        chat("chat.ended", at(6), "H6"),  # the first end: 300 s at 10:06
        chat("chat.accepted", at(1), "H6"),
    ]
    lifecycle = evaluate(values)
    assert {name: c.handled for name, c in lifecycle.chats.items() if c.handled} == {
        "H1": (T0_MS + 60_000, T0_MS + 480_000),
        "H2": (T0_MS + 120_000, T0_MS + 300_000),
        "H4": (T0_MS + 240_000, T0_MS + 240_000),
        "H6": (T0_MS + 60_000, T0_MS + 360_000),
    }
    # [10:00, 10:10): 420, 180, 0, 300: mean 225; p50 floor(0.5 * 3) = 1 -> 180, p90 -> 300
    chats = group(lifecycle, 10, width_s=600)["chats"]
    assert chats == {
        "waiting": 0,
        "longest_wait_seconds": None,
        "handle_mean_seconds": 225.0,
        "handle_p50_seconds": 180.0,
        "handle_p90_seconds": 300.0,
    }
    # [09:58, 10:08): H1's end at 10:08 is not in it
    assert group(lifecycle, 8, width_s=600)["chats"]["handle_mean_seconds"] == 160.0
    assert group(lifecycle, 4, width_s=240)["chats"]["handle_mean_seconds"] is None


# -- reading records ----------------------------------------------------------------------------


def test_repeats_orphans_and_second_openers() -> None:
    values = [
        status(at(20), "solved", event_id="s"),
        status(at(20), "open", event_id="s"),  # a repeat of "s": ignored
        created(at(5), "T", channel="web"),  # a later second creation changes nothing
        created(at(0), "T"),
        reply(at(10)),
        b'{"type": "ticket.replied", "event_id": "bad"',  # not JSON: ignored
        status(at(30), "open", ticket="never-created"),
        reply(at(40), ticket="never-created"),
    ]
    lifecycle = evaluate(values)
    assert set(lifecycle.tickets) == {"T"}
    ticket = lifecycle.tickets["T"]
    assert (ticket.created_ms, ticket.dimensions["channel"]) == (T0_MS, "email")
    assert (ticket.final_solve_ms, ticket.one_touch, ticket.last_event_ms) == (
        T0_MS + 1_200_000,
        True,
        T0_MS + 1_200_000,
    )


def test_without_grouping_there_is_always_one_group_and_the_window_is_rounded_up() -> None:
    empty = lifecycle_document(Lifecycle({}, {}), at_s=at_s(59.5), width_s=H)
    assert empty["window"] == {
        "start": "2026-11-02T10:00:00Z",
        "end": "2026-11-02T11:00:00Z",
        "seconds": 3600,
    }
    assert window_end_ms(at_s(59.5)) == T0_MS + H * 1000 == window_end_ms(at_s(60))
    (only,) = empty["groups"]
    assert only["key"] == {}
    assert only["resolution"]["count"] == 0 and only["resolution"]["reopen_ratio"] is None
    assert only["backlog"]["total"] == 0 and only["backlog"]["oldest_age_seconds"] is None
    assert only["chats"]["handle_p90_seconds"] is None
    assert lifecycle_document(Lifecycle({}, {}), at_s=0, width_s=60, by=("queue",))["groups"] == []
    with pytest.raises(ValueError, match="agent"):
        lifecycle_document(Lifecycle({}, {}), at_s=0, width_s=60, by=("agent",))


# -- the whole document and comparing -----------------------------------------------------------


def test_merged_documents_list_every_group_with_every_section() -> None:
    values = [
        created(at(10), "A"),  # email: created in the window
        created(at(-120), "B", channel="web"),  # web: only a backlog
        chat("chat.requested", at(50), "C", channel="chat", queue="general"),
    ]
    lifecycle = evaluate(values)
    tickets = evaluate_tickets(values, SlaRules.from_json({}, None))
    for by in ((), ("channel",)):
        base = kpi_document(tickets, values, at_s=at_s(60), width_s=H, by=by)
        merged = merge_documents(
            base, lifecycle_document(lifecycle, at_s=at_s(60), width_s=H, by=by)
        )
        assert compare(merged, merged) == []
        groups = {tuple(g["key"].values()): g for g in merged["groups"]}
        if not by:
            (whole,) = groups.values()
            assert whole["tickets_created"] == 1 and whole["backlog"]["total"] == 2
            assert whole["chats"]["requested"] == 1 and whole["chats"]["waiting"] == 1
            continue
        assert list(groups) == [("chat",), ("email",), ("web",)]
        assert groups[("web",)]["tickets_created"] == 0
        assert groups[("web",)]["backlog"]["oldest_age_seconds"] == 3 * H
        assert groups[("web",)]["first_response"]["count"] == 0
        assert groups[("chat",)]["chats"]["longest_wait_seconds"] == 600.0
        assert groups[("chat",)]["chats"]["requested"] == 1
        assert set(groups[("email",)]["chats"]) == set(base["groups"][0]["chats"]) | {
            "waiting",
            "longest_wait_seconds",
            "handle_mean_seconds",
            "handle_p50_seconds",
            "handle_p90_seconds",
        }
    with pytest.raises(ValueError, match="different windows"):
        merge_documents(
            kpi_document(tickets, values, at_s=at_s(60), width_s=H, by=()),
            lifecycle_document(lifecycle, at_s=at_s(120), width_s=H),
        )


def test_compare_allows_a_sketch_1_percent_on_quantiles_only() -> None:
    values = [chat("chat.requested", at(0), "H"), chat("chat.accepted", at(1), "H")]
    values += [chat("chat.ended", at(11), "H"), created(at(0)), status(at(30), "solved")]
    expected = lifecycle_document(evaluate(values), at_s=at_s(60), width_s=H)

    def changed(section: str, name: str, value: Any) -> Any:
        actual = orjson.loads(orjson.dumps(expected))
        actual["groups"][0][section][name] = value
        return actual

    assert compare(expected, expected) == []
    assert compare(changed("chats", "handle_p90_seconds", 605.9), expected) == []
    assert compare(changed("resolution", "p95_seconds", 1817.0), expected) == []
    for section, name, value in (
        ("chats", "handle_p90_seconds", 606.1),
        ("chats", "handle_p50_seconds", None),
        ("chats", "handle_mean_seconds", 600.5),  # means are exact
        ("resolution", "count", 2),
        ("resolution", "p95_seconds", 1819.0),
        ("backlog", "total", 1),
        ("backlog", "oldest_age_seconds", 0.0),
    ):
        problems = compare(changed(section, name, value), expected)
        assert len(problems) == 1 and f"{section}.{name}" in problems[0], (name, problems)
    missing = orjson.loads(orjson.dumps(expected))
    del missing["groups"][0]["backlog"]["hold"]
    assert compare(missing, expected) == ["groups[].backlog.hold: missing (expected 0)"]
    assert compare({**expected, "groups": []}, expected) == ["groups[]: missing"]


# -- order independence -------------------------------------------------------------------------


@st.composite
def lifecycles(draw: st.DrawFn) -> list[bytes]:
    """A few tickets and chats on a grid of minutes (so events meet at one instant and on
    window ends), with statuses before creations, after closes, and repeats."""
    values: list[bytes] = []
    minutes = st.integers(-5, 90)
    for n in range(draw(st.integers(1, 4))):
        ticket = f"T{n}"
        channel = draw(st.sampled_from(["email", "web"]))
        values.append(created(at(draw(st.integers(0, 30))), ticket, channel=channel))
        for r in range(draw(st.integers(0, 8))):
            when = at(draw(minutes), draw(st.sampled_from([0, 0, 1])))
            if draw(st.booleans()):
                value = draw(
                    st.sampled_from(["new", "open", "pending", "hold", "solved", "closed"])
                )
                values.append(status(when, value, ticket, event_id=f"s{n}.{r}"))
            else:
                role = draw(st.sampled_from(["agent", "agent", "customer", "system"]))
                public = draw(st.sampled_from([True, True, False]))
                values.append(reply(when, role, ticket, public=public, event_id=f"r{n}.{r}"))
    for n in range(draw(st.integers(0, 3))):
        chat_id = f"C{n}"
        values.append(chat("chat.requested", at(draw(st.integers(0, 40))), chat_id))
        for r in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["chat.accepted", "chat.abandoned", "chat.ended"]))
            values.append(chat(kind, at(draw(minutes)), chat_id, event_id=f"o{n}.{r}"))
    return values


@settings(max_examples=200, deadline=None)
@given(values=lifecycles(), data=st.data())
def test_arrival_order_and_repeats_change_nothing(values: list[bytes], data: st.DataObject) -> None:
    reference = evaluate(values, retention_s=H, open_ticket_max_age_s=2 * H)
    shuffled = list(data.draw(st.permutations(values)))
    shuffled += data.draw(st.lists(st.sampled_from(values), max_size=4))
    again = evaluate(shuffled, retention_s=H, open_ticket_max_age_s=2 * H)
    assert again == reference
    for minutes, by in itertools.product((1, 30, 31, 60, 91, 200), ((), ("channel",))):
        assert lifecycle_document(again, at_s=at_s(minutes), width_s=H, by=by) == (
            lifecycle_document(reference, at_s=at_s(minutes), width_s=H, by=by)
        )


@settings(max_examples=200, deadline=None)
@given(values=lifecycles(), minutes=st.integers(-5, 95))
def test_the_status_at_e_is_the_last_status_of_the_events_before_e(
    values: list[bytes], minutes: int
) -> None:
    """A second way to the status at ``E``: evaluate only the events dated before ``E``
    (the creation among them) and take the status they end with; and a ticket has a final
    solve exactly when it ends solved or closed."""
    end_ms = T0_MS + minutes * 60_000
    whole = evaluate(values)
    before = evaluate([v for v in values if to_ms(decode(v).occurred_at) < end_ms])
    for ticket_id, ticket in whole.tickets.items():
        last = ticket.changes[-1][1]
        assert (ticket.final_solve_ms is not None) == (last in ("solved", "closed"))
        if ticket.created_ms >= end_ms:
            assert ticket.status_at(end_ms) is None
            continue
        assert ticket.status_at(end_ms) == before.tickets[ticket_id].changes[-1][1]


# -- the traffic ----------------------------------------------------------------------------------


def test_the_traffic_goes_through_every_turn_and_its_order_changes_nothing() -> None:
    retention_s, max_age_s, max_delay_s = 86_400, 2 * 86_400, 2 * H
    data = build_lifecycle_records(
        retention_s=retention_s, open_ticket_max_age_s=max_age_s, max_delay_s=max_delay_s
    )
    again = build_lifecycle_records(
        retention_s=retention_s, open_ticket_max_age_s=max_age_s, max_delay_s=max_delay_s
    )
    assert again.values == data.values, "not deterministic"
    assert build_lifecycle_records(seed=12).values != data.values
    events = [decode(value) for value in data.values]
    by_id = {event.event_id: event for event in events}
    assert data.duplicates > 0 and len(events) - len(by_id) == data.duplicates
    assert data.disordered > len(events) // 4
    # delivered at most twice the delay behind the newest event time before it
    newest = -math.inf
    for record in data.records:
        assert record.occurred_at_s is not None
        assert record.occurred_at_s >= newest - 2 * max_delay_s
        newest = max(newest, record.occurred_at_s)

    rules = SlaRules.from_json(SCHEDULES, POLICIES)
    lifecycle = evaluate(
        data.values, rules, retention_s=retention_s, open_ticket_max_age_s=max_age_s
    )
    first: dict[str, tuple[datetime, str, bytes]] = {}
    for value, event in zip(data.values, events, strict=True):
        first.setdefault(event.event_id, (event.occurred_at, event.event_id, value))
    in_order = [value for _, _, value in sorted(first.values())]
    assert (
        evaluate(in_order, rules, retention_s=retention_s, open_ticket_max_age_s=max_age_s)
        == lifecycle
    )

    tickets = lifecycle.tickets
    seen = Counter[str]()
    for t in tickets.values():
        seen["sampled"] += t.final_solve_ms is not None
        seen["reopened"] += t.reopened
        seen["reopened, unsolved"] += bool(t.reopens) and t.final_solve_ms is None
        seen["one touch"] += t.one_touch
        seen["solved at the creation"] += t.resolution_ms == 0
        seen["off hours"] += (t.resolution_business_ms or 0) < (t.resolution_ms or 0)
        seen["dropped in the data"] += t.dropped_ms is not None and t.dropped_ms < data.end_ms
        for _, into in t.changes:
            seen[f"into {into}"] += 1
    for c in lifecycle.chats.values():
        seen["handled"] += c.handled is not None
        seen["handled in 0 s"] += c.handled is not None and c.handled[0] == c.handled[1]
        seen["stale"] += c.first_outcome_ms is None
    for e in by_id.values():
        if isinstance(e, TicketReplied):
            seen["private notes"] += not e.public
        if isinstance(e, TicketStatusChanged):
            t = tickets[e.ticket_id]
            seen["status before the creation"] += to_ms(e.occurred_at) < t.created_ms
            closed_ms = t.changes[-1][0] if t.changes[-1][1] == "closed" else math.inf
            seen["status after the close"] += to_ms(e.occurred_at) > closed_ms
    for needed in (
        "sampled",
        "reopened",
        "reopened, unsolved",
        "one touch",
        "solved at the creation",
        "off hours",
        "dropped in the data",
        "into pending",
        "into hold",
        "into closed",
        "handled",
        "handled in 0 s",
        "stale",
        "private notes",
        "status before the creation",
        "status after the close",
    ):
        assert seen[needed] > 0, (needed, data.summary())

    instants = interesting_instants(data, lifecycle)
    whys = Counter(instant.why for instant in instants)
    for why in (
        "a status change at the end",
        "a creation at the end",
        "a final solve at the end",
        "an unsolved ticket just dropped",
        "a chat just gone stale",
        "the end of the data",
    ):
        assert whys[why] > 0, (why, whys)
    # each edge is what it says: the status change at E does not count yet, the drop does
    for instant in instants:
        end_ms = window_end_ms(instant.at_s)
        if instant.why == "a status change at the end":
            assert any(at_ms == end_ms for t in tickets.values() for at_ms, _ in t.changes[1:])
        if instant.why == "an unsolved ticket just dropped":
            assert any(t.dropped_ms == end_ms - 60_000 for t in tickets.values())
    rng = random.Random(3)
    for instant in rng.sample(instants, 4):
        for by in ((), ("queue", "priority")):
            doc = lifecycle_document(lifecycle, at_s=instant.at_s, width_s=86_400, by=by)
            assert compare(doc, doc) == []
