"""A ticket's lifecycle and a chat's wait as pure functions (streams/lifecycle.py), each
case worked out by hand; the brute-force comparison is tests/unit/test_lifecycle_oracle.py
and tests/system/test_lifecycle_acceptance.py."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from deskpulse.streams.lifecycle import chat_steps, lifecycle, status_steps

C = 1_000_000  # the creation, ms


def timeline(*entries: tuple[str, int, str]) -> list[tuple[str, tuple[int, str]]]:
    return [(event_id, (ms, code)) for event_id, ms, code in entries]


def test_a_reopen_takes_the_final_solve_back_and_the_next_solve_sets_it_again() -> None:
    life = lifecycle(C, timeline(("a", C + 10, "s"), ("b", C + 20, "o")))
    assert (life.solves, life.reopens, life.final_solve_ms) == ((C + 10,), (C + 20,), None)
    assert life.open_now == "o" and life.left_ms is None and not life.reopened
    life = lifecycle(C, timeline(("a", C + 10, "s"), ("b", C + 20, "o"), ("c", C + 30, "s")))
    assert life.final_solve_ms == C + 30 and life.reopened and not life.one_touch
    assert life.open_now is None and life.left_ms == C + 30


def test_solved_then_closed_is_one_solve_and_closed_is_final() -> None:
    life = lifecycle(
        C,
        timeline(
            ("a", C + 10, "s"),
            ("b", C + 20, "x"),  # from solved: no second solve
            ("c", C + 30, "o"),  # after the close: ignored, no reopen
        ),
    )
    assert life.solves == (C + 10,) and life.reopens == () and life.final_solve_ms == C + 10
    # closed straight from open is a solve
    assert lifecycle(C, timeline(("a", C + 5, "o"), ("b", C + 9, "x"))).solves == (C + 9,)


def test_one_touch_counts_a_reply_at_the_instant_of_the_solve() -> None:
    same = lifecycle(C, timeline(("r", C + 60, "a"), ("s", C + 60, "s")))
    assert same.agent_replies == 1 and same.one_touch
    # a customer reply is no touch; a second agent reply after the solve does not count
    later = lifecycle(
        C, timeline(("r", C + 60, "a"), ("c", C + 70, "c"), ("s", C + 80, "s"), ("z", C + 90, "a"))
    )
    assert later.one_touch
    two = lifecycle(C, timeline(("r", C + 60, "a"), ("q", C + 70, "a"), ("s", C + 80, "s")))
    assert two.agent_replies == 2 and not two.one_touch


def test_a_status_before_the_creation_acts_at_the_creation() -> None:
    life = lifecycle(C, timeline(("p", C - 500, "p")))
    assert life.changes == ((C, "n"), (C, "p"))
    # the steps: new in and out at the creation (nothing between), pending from then on
    assert status_steps(life.changes) == [(C, "bl:n", 1), (C, "bl:n", -1), (C, "bl:p", 1)]


def test_status_steps_take_each_open_status_back_at_the_next_change() -> None:
    life = lifecycle(
        C,
        timeline(("o", C + 10, "o"), ("o2", C + 15, "o"), ("h", C + 20, "h"), ("s", C + 30, "s")),
    )
    assert status_steps(life.changes) == [
        (C, "bl:n", 1),
        (C + 10, "bl:n", -1),
        (C + 10, "bl:o", 1),  # the repeated open changes nothing
        (C + 20, "bl:o", -1),
        (C + 20, "bl:h", 1),
        (C + 30, "bl:h", -1),
    ]


def test_a_chat_waits_until_its_outcome_or_until_it_goes_stale() -> None:
    assert chat_steps(C, C + 5_000, 3_600_000) == [(C, 1), (C + 5_000, -1)]
    assert chat_steps(C, None, 3_600_000) == [(C, 1), (C + 3_599_999, -1)]
    assert chat_steps(C, C + 7_200_000, 3_600_000) == [(C, 1), (C + 3_599_999, -1)]
    assert chat_steps(C, C, 3_600_000) == []  # answered at the request: never waited
    assert chat_steps(C, C - 10, 3_600_000) == []


CODES = st.sampled_from(["a", "c", "n", "o", "p", "h", "s", "x"])


@given(
    st.lists(st.tuples(st.integers(-100, 1_000), CODES), max_size=12),
    st.randoms(use_true_random=False),
)
def test_any_arrival_order_gives_the_same_lifecycle_and_steps_that_sum_to_the_status(
    entries: list[tuple[int, str]], rng: random.Random
) -> None:
    events = [(f"e{n:02d}", (C + ms, code)) for n, (ms, code) in enumerate(entries)]
    life = lifecycle(C, events)
    shuffled = list(events)
    rng.shuffle(shuffled)
    assert lifecycle(C, shuffled) == life
    # the steps sum to one ticket in its last status while it is open, to none once not
    level: dict[str, int] = {}
    for _, name, step in status_steps(life.changes):
        level[name] = level.get(name, 0) + step
    open_now = {k: v for k, v in level.items() if v}
    assert open_now == ({} if life.open_now is None else {"bl:" + life.open_now: 1})
