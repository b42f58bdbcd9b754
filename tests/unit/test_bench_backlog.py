"""The benchmark's backlog section, the parts that decide its verdict: the backlog it counts
from the events (benchmark/backlog_state.py), the comparison that fails the section when a
KPI document differs, and the lines it adds to the results table (benchmark/report.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from benchmark import sla_state
from benchmark.backlog_state import GROUPS, backlog_mismatches, counts_of, expected_backlog
from benchmark.report import backlog_rows
from deskpulse.streams.query import build_document

T0 = 1_795_000_000_000  # ms, a whole second
MINUTE = 60_000
BILLING = ("email", "billing", "low")
SALES = ("web", "sales", "urgent")


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _created(ticket: str, ms: int, dims: tuple[str, str, str], event: str) -> dict[str, Any]:
    channel, queue, priority = dims
    return {
        "event_id": event,
        "type": "ticket.created",
        "occurred_at": _stamp(ms),
        "ticket_id": ticket,
        "channel": channel,
        "queue": queue,
        "priority": priority,
    }


def _status(ticket: str, ms: int, status: str, event: str) -> dict[str, Any]:
    return {
        "event_id": event,
        "type": "ticket.status_changed",
        "occurred_at": _stamp(ms),
        "ticket_id": ticket,
        "status": status,
    }


def _events(bodies: list[dict[str, Any]]) -> list[tuple[Any, int]]:
    return list(sla_state.decoded(bodies))


EVENTS = [
    # new all along
    _created("A", T0, BILLING, "a1"),
    # open, then solved before the instant: gone
    _created("B", T0 + MINUTE, BILLING, "b1"),
    _status("B", T0 + 2 * MINUTE, "open", "b2"),
    _status("B", T0 + 3 * MINUTE, "solved", "b3"),
    # solved at the instant itself: still open then (the last change strictly before)
    _created("C", T0 + 2 * MINUTE, SALES, "c1"),
    _status("C", T0 + 4 * MINUTE, "pending", "c2"),
    _status("C", T0 + 10 * MINUTE, "solved", "c3"),
    # closed, then a later "open": closed is final
    _created("D", T0 + 3 * MINUTE, SALES, "d1"),
    _status("D", T0 + 4 * MINUTE, "closed", "d2"),
    _status("D", T0 + 5 * MINUTE, "open", "d3"),
    # a status dated before its creation: on hold from the creation
    _created("E", T0 + 5 * MINUTE, SALES, "e1"),
    _status("E", T0 + 4 * MINUTE, "hold", "e2"),
    # created at the instant: not yet
    _created("F", T0 + 10 * MINUTE, BILLING, "f1"),
    # reopened after a solve
    _created("G", T0 + 6 * MINUTE, BILLING, "g1"),
    _status("G", T0 + 7 * MINUTE, "solved", "g2"),
    _status("G", T0 + 8 * MINUTE, "open", "g3"),
]
END_MS = T0 + 10 * MINUTE


def test_the_backlog_counted_from_the_events_follows_the_documented_rules() -> None:
    got = expected_backlog(_events(EVENTS), END_MS)
    assert got == {
        BILLING: {"new": 1, "open": 1, "pending": 0, "hold": 0, "total": 2, "oldest_ms": T0},
        SALES: {
            "new": 0,
            "open": 0,
            "pending": 1,
            "hold": 1,
            "total": 2,
            "oldest_ms": T0 + 2 * MINUTE,
        },
    }
    assert counts_of(got) == {"new": 1, "open": 1, "pending": 1, "hold": 1, "total": 4}
    # one millisecond later, C's solve has happened and F exists
    later = expected_backlog(_events(EVENTS), END_MS + 1)
    assert later[SALES]["total"] == 1 and later[SALES]["oldest_ms"] == T0 + 5 * MINUTE
    assert later[BILLING]["new"] == 2


def _document(live: dict[tuple[str, str, str], dict[str, int]], by: tuple[str, ...]) -> Any:
    end_s = END_MS // 1000
    return build_document({}, start_s=end_s - 86400, end_s=end_s, by=by, live=live)


def _live_of(expected: dict[tuple[str, str, str], dict[str, int]]) -> dict[Any, dict[str, int]]:
    codes = {"new": "n", "open": "o", "pending": "p", "hold": "h"}
    return {
        dims: {"bl:" + codes[s]: v[s] for s in codes if v[s]} | {"oldest_ms": v["oldest_ms"]}
        for dims, v in expected.items()
    }


@pytest.mark.parametrize("by", [("channel", "queue", "priority"), ()])
def test_a_document_with_the_counted_backlog_passes_and_any_difference_is_named(
    by: tuple[str, ...],
) -> None:
    expected = expected_backlog(_events(EVENTS), END_MS)
    live = _live_of(expected)
    assert backlog_mismatches(_document(live, by), expected) == []

    one_less = {k: dict(v) for k, v in live.items()}
    one_less[SALES]["bl:h"] -= 1
    problems = backlog_mismatches(_document(one_less, by), expected)
    assert any("hold 0, expected 1" in p for p in problems)
    assert any("total 3, expected 4" in p or "total 1, expected 2" in p for p in problems)

    younger = {k: dict(v) for k, v in live.items()}
    younger[BILLING]["oldest_ms"] += 1000
    problems = backlog_mismatches(_document(younger, by), expected)
    if by:
        assert problems == ["email/billing/low: oldest age 599.0 s, expected 600.0"]
    else:  # the oldest of all is the billing ticket's too
        assert problems == ["all groups: oldest age 599.0 s, expected 600.0"]

    # a group the events never opened
    extra = live | {GROUPS[-1]: {"bl:n": 1, "oldest_ms": T0}}
    assert backlog_mismatches(_document(extra, by), expected)


def _results(p99: float, own_open: int, checked: bool = True) -> dict[str, Any]:
    latency = {"n": 30, "p50": p99 / 2, "p90": p99, "p99": p99, "max": p99}
    return {
        "reads": {
            "now_by": {
                "latency": latency,
                "backlog": {"total": own_open + 5},
                "groups_open": 120,
                "own_open": own_open,
                "checked": checked,
            }
        },
        "created": {
            "tickets": 1_000_000,
            "groups": 120,
            "used_memory_per_ticket": 600.0,
            "per_ticket_bytes": 550.0,
            "million_bytes": 600 * 2**20,
            "million_measured": True,
        },
    }


@pytest.mark.parametrize(
    ("p99", "own_open", "verdict"),
    [
        (0.150, 200_000, "**pass**"),
        (0.200, 200_000, "**FAIL**"),  # the budget is strictly under 200 ms
        (0.150, 199_999, "**FAIL**"),  # too few open tickets to count
    ],
)
def test_the_read_budget_line(p99: float, own_open: int, verdict: str) -> None:
    read, memory = backlog_rows(_results(p99, own_open))
    assert read[2] == "< 200 ms (≥ 200,000 open tickets)"
    assert read[3] == verdict
    assert f"p99 {p99 * 1000:,.1f} ms" in read[1]
    assert "600 B" in memory[1] and "600.0 MiB (measured)" in memory[1]
    assert memory[3] == "—"


def test_a_failed_section_is_one_failing_line_with_its_error() -> None:
    rows = backlog_rows({"error": "RuntimeError: backlog: the document counts 3 open tickets"})
    assert rows == [
        [
            "backlog",
            "error: RuntimeError: backlog: the document counts 3 open tickets",
            "",
            "**FAIL**",
        ]
    ]
