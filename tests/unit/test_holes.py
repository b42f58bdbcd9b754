"""The pure cover check of the offset-hole guard (streams/holes.py, ``offset_gaps``)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deskpulse.streams.holes import offset_gaps

# (batch offsets, fence, missing ranges)
CASES = [
    # the usual batch: fence + 1 onwards, in order
    ([10, 11, 12], 9, []),
    # a hole at the front: the consumer skipped 10-19
    ([20, 21, 22], 9, [(10, 19)]),
    # holes inside, out of order, repeats
    ([13, 10, 10, 15], 9, [(11, 12), (14, 14)]),
    # a repeat that makes the count right must not hide a hole
    ([10, 10, 12], 9, [(11, 11)]),
    # a redelivery wholly at or below the fence needs no cover
    ([3, 4, 5], 9, []),
    # partly below the fence: only what is past it counts
    ([8, 9, 10, 12], 9, [(11, 11)]),
    ([8, 9, 10, 11], 9, []),
    # fence 0 and an empty batch
    ([2], 0, [(1, 1)]),
    ([], 9, []),
]


@pytest.mark.parametrize(("offsets", "fence", "missing"), CASES)
def test_offset_gaps(offsets: list[int], fence: int, missing: list[tuple[int, int]]) -> None:
    assert offset_gaps(offsets, fence) == missing


@given(st.lists(st.integers(0, 60), max_size=40), st.integers(0, 40))
def test_the_gaps_are_exactly_the_offsets_missing_up_to_the_highest(
    offsets: list[int], fence: int
) -> None:
    gaps = offset_gaps(offsets, fence)
    missing = {o for first, last in gaps for o in range(first, last + 1)}
    highest = max([o for o in offsets if o > fence], default=fence)
    assert missing == set(range(fence + 1, highest + 1)) - set(offsets)
    assert gaps == sorted(gaps)
    # adjacent ranges are merged: between two ranges lies at least one offset of the batch
    assert all(a[1] + 1 < b[0] for a, b in pairwise(gaps))
