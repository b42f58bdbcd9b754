"""The agents' presence core (streams/presence.py) and its fold (streams/core.py): status
stretches, levels at an instant and time in status from level steps, exact in any order."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deskpulse.models.wire import AgentStatusChanged, event_ms
from deskpulse.streams.core import Conversation, CoreConfig, Pending, fold_batch
from deskpulse.streams.presence import (
    LEVEL_FIELDS,
    STATUS_CODES,
    TIME_FIELDS,
    compact,
    presence_document,
    presence_steps,
    status_at,
    time_in_status_ms,
)

R = 1000  # a retention of one second, in ms


def timeline(*events: tuple[int, str]) -> dict[str, tuple[int, str]]:
    return {f"e{i}": (ms, STATUS_CODES[value]) for i, (ms, value) in enumerate(events)}


@pytest.mark.parametrize(
    ("events", "at_ms", "expected"),
    [
        # (status events as (ms, status), instant, status at it)
        ([(100, "busy")], 100, None),  # an event counts only strictly after its instant
        ([(100, "busy")], 101, "busy"),
        ([(100, "busy")], 100 + R, "busy"),  # for the retention after it, inclusive
        ([(100, "busy")], 101 + R, None),  # then the agent is in no status
        ([(100, "busy"), (300, "away")], 300, "busy"),
        ([(100, "busy"), (300, "away")], 301, "away"),
        # the same status again within the retention: one stretch, to the retention after
        # the repeat
        ([(100, "busy"), (900, "busy")], 900 + R, "busy"),
        # a silence longer than the retention: out between the two
        ([(100, "busy"), (100 + 2 * R, "busy")], 101 + R, None),
        # two events at one instant: the later event id wins
        ([(100, "busy"), (100, "away")], 101, "away"),
    ],
)
def test_status_at(events: list[tuple[int, str]], at_ms: int, expected: str | None) -> None:
    assert status_at(timeline(*events).items(), R, at_ms) == expected


def level_at(steps: list[tuple[int, str, int]], name: str, at_ms: int) -> int:
    return sum(value for ms, field, value in steps if field == name and ms < at_ms)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5000), st.sampled_from(list(STATUS_CODES))),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 7000),
    st.integers(0, 7000),
)
def test_levels_and_time_in_status_agree_with_walking_the_events(
    events: list[tuple[int, str]], a_ms: int, b_ms: int
) -> None:
    entries = timeline(*events)
    steps = presence_steps(entries.items(), R)
    start_ms, end_ms = min(a_ms, b_ms), max(a_ms, b_ms)
    for name, code in STATUS_CODES.items():
        expected = status_at(entries.items(), R, end_ms) == name
        assert level_at(steps, LEVEL_FIELDS[code], end_ms) == int(expected)
    for code, timed in TIME_FIELDS.items():
        name = next(n for n, c in STATUS_CODES.items() if c == code)
        # the time in status, one millisecond at a time
        walked = sum(status_at(entries.items(), R, t + 1) == name for t in range(start_ms, end_ms))
        inside = [(ms, f, v) for ms, f, v in steps if start_ms <= ms < end_ms]
        got = time_in_status_ms(
            level_at(steps, LEVEL_FIELDS[code], end_ms),
            sum(v for _, f, v in inside if f == LEVEL_FIELDS[code]),
            sum(v for _, f, v in inside if f == timed),
            start_ms,
            end_ms,
        )
        assert got == walked


def test_compact_keeps_the_events_from_the_horizon_and_the_one_in_force_there() -> None:
    entries = timeline((100, "busy"), (200, "away"), (300, "busy"), (900, "available"))
    steps = presence_steps(entries.items(), R)
    assert compact(entries, 500)
    assert sorted(ms for ms, _ in entries.values()) == [300, 900]
    assert not compact(entries, 500)
    after = presence_steps(entries.items(), R)
    # nothing moved after the event kept (at its instant the stretch before ends, behind
    # the horizon), and the levels after are the same
    assert [s for s in steps if s[0] > 300] == [s for s in after if s[0] > 300]
    for name in LEVEL_FIELDS.values():
        assert level_at(steps, name, 10**6) == level_at(after, name, 10**6) == 0


def test_the_document_reads_counts_and_occupancy() -> None:
    # one agent busy all through [0, 10 s), another available from 5 s on
    levels = {"ag:b": 1, "ag:a": 1}
    window = {"ag:a": 1, "agt:a": 5000}
    doc = presence_document(levels, window, 0, 10)
    assert doc == {"available": 1, "busy": 1, "away": 0, "offline": 0, "occupancy_ratio": 10 / 15}
    assert presence_document({}, {}, 0, 10)["occupancy_ratio"] is None


def fold_all(
    batches: list[list[AgentStatusChanged]], config: CoreConfig
) -> tuple[Counter[str], Counter[str]]:
    """Fold batches as the store would apply them: the levels and the all-groups buckets."""
    states: dict[str, Conversation] = {}
    levels: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    watermark = 0
    for offset, batch in enumerate(batches):
        pending = [
            Pending(e, "agents", offset * 100 + i, event_ms(e), e.conversation_id)
            for i, e in enumerate(batch)
        ]
        result = fold_batch(
            pending,
            {p.event.conversation_id: states.get(p.event.conversation_id) for p in pending},
            watermark_ms=watermark,
            applied_offsets={},
            config=config,
        )
        watermark = result.watermark_ms
        states.update(result.states)
        levels.update(result.levels)
        for (level, start), fields in result.buckets.items():
            # never in a group's buckets: over all groups, and each agent's own (by agent)
            assert level in ("B", "R", "a", "A")
            if level == "B":
                buckets.update({f"{start}:{k}": v for k, v in fields.items()})
        assert result.held == dict.fromkeys(result.states, 0)
    return +levels, +buckets


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_order_and_batching_and_duplicates_give_the_same_levels_and_buckets(
    data: st.DataObject,
) -> None:
    config = CoreConfig(retention_seconds=3600)
    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    events = [
        AgentStatusChanged(
            event_id=f"e{i}",
            occurred_at=t0 + timedelta(seconds=data.draw(st.integers(0, 3000))),
            agent_id=data.draw(st.sampled_from(["A", "B"])),
            status=data.draw(st.sampled_from(list(STATUS_CODES))),  # type: ignore[arg-type]
        )
        for i in range(data.draw(st.integers(1, 10)))
    ]
    shuffled = data.draw(st.permutations(events + events[:2]))
    cut = data.draw(st.integers(1, len(shuffled)))
    one = fold_all([events], config)
    many = fold_all([shuffled[:cut], shuffled[cut:]] if cut < len(shuffled) else [shuffled], config)
    assert one == many
