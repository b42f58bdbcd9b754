"""The read process's encoder: each group's JSON kept, and moved to new ages, byte for byte
what ``orjson.dumps`` makes of the whole document."""

from __future__ import annotations

import contextlib
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


@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=6
    ),
    rebuilt=st.sets(st.integers(0, 5)),
)
def test_json_worked_out_ahead_is_taken_for_the_very_documents_it_was_worked_out_for(
    rows: list[tuple[int, int, int]], rebuilt: set[int]
) -> None:
    """The JSON of documents worked out ahead at the next minute's end (the read process,
    while it waits) is what the read of that end takes for each of those very documents; a
    group the read built anew is encoded as usual; the bytes are the whole document's, and
    what was worked out is let go once read."""
    end_s, next_s = 10_020, 10_080
    live = {"bl:o": 0, "bl:w": 0, "oldest_ms": 1_000_000, "longest_ms": 2_000_500}
    first = [
        group(f"q{i}", tickets, waiting, created, end_s)
        for i, (tickets, waiting, created) in enumerate(rows)
    ]
    states = [{**live, "bl:o": t, "bl:w": w} for t, w, _ in rows]
    encoder = _Encoder()
    encoder.encode("kpis", grouped(first))
    ahead = [document_at(g, state, next_s) for g, state in zip(first, states, strict=True)]
    for before, moved in zip(first, ahead, strict=True):
        if moved is not before:
            encoder.ahead(before, moved, next_s)
    # the read of the next end: its own documents for the groups it built anew
    read = [
        group(f"q{i}", t, w, c + 1, next_s) if i in rebuilt else moved
        for i, (moved, (t, w, c)) in enumerate(zip(ahead, rows, strict=True))
    ]
    later = grouped(read, "2026-12-06T10:02:00Z")
    assert encoder.encode("kpis", later) == orjson.dumps(later)
    taken = sum(1 for i, (t, w, _) in enumerate(rows) if (t or w) and i not in rebuilt)
    assert encoder.taken_ahead == taken
    assert encoder.encoded == sum(1 for i in range(len(rows)) if i in rebuilt)
    assert encoder._ahead == ({} if taken else encoder._ahead)


def test_the_read_process_works_ahead_only_idle_in_the_seconds_before_a_present_reads_end(
    monkeypatch: Any,
) -> None:
    """``_work_ahead`` works out the next end's documents only while no read is in hand,
    in the last ``AHEAD_S`` before the end of the last grouped read of the present, and
    stops between two chunks when a read comes in."""
    import asyncio
    from types import SimpleNamespace

    from deskpulse.streams import query, reads

    calls: list[tuple[tuple[str, ...], int, int]] = []
    yielded: list[int] = []

    def fake_ahead(store: Any, by: Any, width_s: int, end_s: int) -> Any:
        calls.append((tuple(by), width_s, end_s))
        for i in range(reads.AHEAD_CHUNK * 3):
            yielded.append(i)
            yield {"i": i}, {"i": i, "moved": True}

    monkeypatch.setattr(query, "documents_ahead", fake_ahead)
    store = SimpleNamespace(config=SimpleNamespace(bucket_seconds=60))
    encoder = _Encoder()
    taken: list[Any] = []
    encoder.ahead = lambda document, moved, end_s: taken.append(moved)  # type: ignore[method-assign]
    # (clock, busy) at each look; a read comes in during the last look's second chunk
    looks = iter(
        [
            (1_000.0, False),  # no read yet
            (1_000.0, False),  # set below: a read of the past (end 900)
            (1_051.0, True),  # in the window, but a read is in hand
            (1_045.0, False),  # too early: 15 s before the end
            (1_051.0, False),  # in the window: worked out whole
            (1_055.0, False),  # again: a read stops it after a chunk
        ]
    )
    state = {"clock": 0.0, "busy": False, "look": 0}

    async def sleep(seconds: float) -> None:
        if seconds == 0:  # between two chunks: the last look sees a read come in
            state["busy"] = state["look"] == 6
            return
        try:
            state["clock"], state["busy"] = next(looks)
        except StopIteration:
            raise asyncio.CancelledError from None
        state["look"] += 1
        encoder.last = (
            None
            if state["look"] == 1
            else (("channel",), 86_400, 900 if state["look"] == 2 else 1_060)
        )

    async def run() -> None:
        await reads._work_ahead(
            store, encoder, lambda: bool(state["busy"]), lambda: state["clock"], sleep
        )

    with contextlib.suppress(asyncio.CancelledError):  # the looks ran out
        asyncio.run(run())
    assert calls == [(("channel",), 86_400, 1_120)] * 2
    assert len(taken) == reads.AHEAD_CHUNK * 3 + reads.AHEAD_CHUNK
