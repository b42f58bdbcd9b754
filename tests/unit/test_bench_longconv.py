"""The benchmark's long conversation section, the parts that decide its verdict: the ticket's
records (benchmark/long_conversation.py) are valid events in time order, its batches are
compared first against last, and the results-table lines (benchmark/report.py) pass only
within budget."""

from __future__ import annotations

from typing import Any

import pytest

from benchmark.long_conversation import (
    flatness,
    long_ticket,
    long_timeline,
    merged,
    script_times_us,
    timeline_flatness,
)
from benchmark.report import budget_rows, render
from deskpulse.models.wire import (
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
    decode_record,
)
from deskpulse.streams.devtools.simulate import Record

T0 = 1_796_000_000.0


def test_the_long_tickets_records_are_its_creation_then_system_replies_at_the_rate() -> None:
    records = long_ticket("T1", T0, 2000, 1000.0)
    events = [decode_record(r.value) for r in records]
    assert isinstance(events[0][0], TicketCreated)
    replies = [event for event, _ in events[1:]]
    assert all(isinstance(e, TicketReplied) and e.author_role == "system" for e in replies)
    assert len({e.event_id for e, _ in events}) == 2001
    assert events[-1][1] - events[0][1] == 2000  # ms: 2,000 replies at 1,000/s
    # merged with other records by event time
    other = [Record("tickets", b"x", b"{}", T0 + 0.5)]
    assert merged(records, other).index(other[0]) == 501


def test_flatness_compares_the_batches_of_the_first_and_the_last_replies() -> None:
    batches = [
        {"before": before, "mine": 100, "events": 120, "seconds": 0.01 + before / 1e6}
        for before in range(0, 1000, 100)
    ] + [{"before": 1000, "mine": 0, "events": 30, "seconds": 9.0}]  # not the ticket's
    result = flatness(batches, 200, 800)
    assert (result["first_batches"], result["last_batches"]) == (2, 2)
    assert result["first_ms"] == pytest.approx(10.05)
    assert result["last_ms"] == pytest.approx(10.85)
    assert result["ratio"] == pytest.approx(10.85 / 10.05)


def test_only_the_commit_scripts_runs_are_timed() -> None:
    entries = [
        {"duration": 900, "command": b"EVALSHA abc 1 P:{p0}: 7"},
        {"duration": 50, "command": "evalsha def 1 P:{p0}:"},
        {"duration": 4000, "command": b"HGETALL x"},
    ]
    assert script_times_us(entries, "abc") == [900]


def _longconv(ratio: float, live_ratio: float, p99_us: int) -> dict[str, Any]:
    return {
        "replies": 100_000,
        "rate": 1000.0,
        "records": {"long": 200_000, "spread": 199_000},
        "live": {"long": [9000.0, 9100.0], "spread": [9500.0, 9400.0]},
        "live_ratios": [live_ratio, live_ratio],
        "live_ratio": live_ratio,
        "batches": {
            "first_batches": 80,
            "last_batches": 80,
            "first_ms": 10.0,
            "last_ms": 10.0 * ratio,
            "ratio": ratio,
            "count": 1000,
            "events_mean": 125.0,
        },
        "commit_script_us": {"count": 4000, "p50": 500, "p99": p99_us, "max": 9000},
        "state_bytes": 135,
    }


@pytest.mark.parametrize(
    ("ratio", "live_ratio", "p99_us", "marks"),
    [
        (1.1, 0.9, 2000, ["**pass**"] * 3),
        (1.6, 0.9, 2000, ["**FAIL**", "**pass**", "**pass**"]),
        (1.0, 0.6, 5000, ["**pass**", "**FAIL**", "**FAIL**"]),
    ],
)
def test_the_results_lines_pass_only_within_budget(
    ratio: float, live_ratio: float, p99_us: int, marks: list[str]
) -> None:
    rows = budget_rows({"longconv": _longconv(ratio, live_ratio, p99_us)})
    assert [row[-1] for row in rows] == marks
    text = render(
        {"sections": {"longconv": _longconv(ratio, live_ratio, p99_us)}, "config": {}},
        command="python -m benchmark.run longconv",
        analysis="",
    )
    assert "## 12. A conversation that never goes quiet" in text


def test_the_long_timeline_alternates_public_replies_with_status_changes_among_them() -> None:
    records = long_timeline("T1", T0, 200, 1.0, status_every=50)
    events = [decode_record(r.value)[0] for r in records]
    assert isinstance(events[0], TicketCreated)
    replies = [e for e in events if isinstance(e, TicketReplied)]
    assert [e.author_role for e in replies[:4]] == ["customer", "agent", "customer", "agent"]
    assert all(e.public for e in replies) and len(replies) == 200
    changes = [e for e in events if isinstance(e, TicketStatusChanged)]
    assert [e.status for e in changes] == ["open", "pending", "open", "hold"]
    times = [decode_record(r.value)[1] for r in records]
    assert times == sorted(times) and len({e.event_id for e in events}) == len(events)


def test_timeline_flatness_compares_the_first_and_the_last_tenth_without_the_first_batch() -> None:
    batches = [{"events": 1000, "seconds": 5.0, "state_bytes": 100}]  # the creation's
    batches += [
        {"events": 1000, "seconds": 0.010 + n / 1000, "state_bytes": 300 + n} for n in range(20)
    ]
    result = timeline_flatness(batches)
    assert (result["batches"], result["tenth"]) == (21, 2)
    assert result["first_ms"] == pytest.approx(10.5)
    assert result["last_ms"] == pytest.approx(28.5)
    assert result["ratio"] == pytest.approx(28.5 / 10.5)
    assert (result["state_bytes_first"], result["state_bytes_last"]) == (301, 319)
    assert result["state_bytes_max"] == 319


@pytest.mark.parametrize(("ratio", "last_bytes", "marks"), [(1.2, 300, 2), (1.7, 300, 1)])
def test_the_timeline_lines_pass_only_within_budget(
    ratio: float, last_bytes: int, marks: int
) -> None:
    lc = _longconv(1.1, 0.9, 2000)
    lc["timeline"] = {
        "replies": 20_000,
        "records": 20_401,
        "batch": 1000,
        "batches": 21,
        "tenth": 2,
        "first_ms": 40.0,
        "last_ms": 40.0 * ratio,
        "ratio": ratio,
        "state_bytes_first": 290,
        "state_bytes_last": last_bytes,
        "state_bytes_max": 300,
        "entries_bytes": 1_500_000,
    }
    rows = [r for r in budget_rows({"longconv": lc}) if "status changes" in r[0]]
    assert len(rows) == 2
    assert sum(r[3] == "**pass**" for r in rows) == marks
