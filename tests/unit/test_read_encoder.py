"""The read process's encoder: each group's JSON kept, and moved to new ages, byte for byte
what ``orjson.dumps`` makes of the whole document."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from deskpulse.streams.core import document_at, group_document
from deskpulse.streams.reads import _Encoder

BY = ["channel", "queue", "priority"]


def grouped(groups: list[dict[str, Any]], end: str = "2026-12-06T10:01:00Z") -> dict[str, Any]:
    window = {"start": "2026-12-05T10:01:00Z", "end": end, "seconds": 86400}
    return {"window": window, "by": BY, "groups": groups}


def group(queue: str, tickets: int, waiting: int, created: int, end_s: int) -> dict[str, Any]:
    live = {"bl:o": tickets, "bl:w": waiting, "oldest_ms": 1_000_000, "longest_ms": 2_000_500}
    key = {"channel": "email", "queue": queue, "priority": "normal"}
    return group_document(key, {"tc": created, "cr": waiting}, live, end_s)


@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=6
    ),
    minutes=st.integers(1, 90),
)
def test_groups_whose_ages_alone_moved_take_their_last_json_with_the_new_ages(
    rows: list[tuple[int, int, int]], minutes: int
) -> None:
    """A read a few minutes on, the groups moved to the new end (their ages alone new):
    those with an age are written from their last JSON, the rest kept, none encoded; the
    bytes are the whole document's. A group whose counts changed is encoded anew."""
    end_s = 10_000
    later_s = end_s + 60 * minutes
    # queue names that hold the ages' keys, quotes and all, change nothing
    names = ['q"oldest_age_seconds":1.0', "q", "longest_wait_seconds", "q4", "q5", "q6"]
    first = [
        group(names[i], tickets, waiting, created, end_s)
        for i, (tickets, waiting, created) in enumerate(rows)
    ]
    encoder = _Encoder()
    assert encoder.encode("kpis", grouped(first)) == orjson.dumps(grouped(first))
    assert encoder.encoded == len(first)
    live = {"bl:o": 0, "bl:w": 0, "oldest_ms": 1_000_000, "longest_ms": 2_000_500}
    moved = [
        document_at(g, {**live, "bl:o": t, "bl:w": w}, later_s)
        for g, (t, w, _) in zip(first, rows, strict=True)
    ]
    later = grouped(moved, "2026-12-06T11:00:00Z")
    assert encoder.encode("kpis", later) == orjson.dumps(later)
    with_age = sum(1 for t, w, _ in rows if t or w)
    assert (encoder.encoded, encoder.moved) == (0, with_age)
    # one group's counts changed besides: that one is encoded whole
    tickets, waiting, created = rows[0]
    changed = [group(names[0], tickets, waiting, created + 1, later_s), *moved[1:]]
    again = grouped(changed, "2026-12-06T11:00:00Z")
    assert encoder.encode("kpis", again) == orjson.dumps(again)
    assert encoder.encoded == 1
