"""The breach-detection clock as a pure function: every branch a row of a table."""

from __future__ import annotations

import pytest

from deskpulse.streams.breaches import ReadState, detection_clock_ms, progress_ms

NOW = 10_000_000  # the wall clock, ms


def busy(tickets_ms: int, forwards_ms: int | None = None) -> ReadState:
    """A partition with records left to read (lagging), or one that applied some since the
    last check."""
    return ReadState(tickets_ms, idle=False, forwards_ms=forwards_ms)


def idle(tickets_ms: int, forwards_ms: int | None = None) -> ReadState:
    """A partition read to its end with nothing applied since the last check."""
    return ReadState(tickets_ms, idle=True, forwards_ms=forwards_ms)


@pytest.mark.parametrize(
    ("state", "now_ms", "expected"),
    [
        # lagging: as far as its tickets topic was read
        (busy(5000), NOW, 5000),
        # idle: no reply can still come from it, the wall clock
        (idle(5000), NOW, NOW),
        # idle with event times ahead of the wall clock: those, never back in time
        (idle(NOW + 700), NOW, NOW + 700),
        # never read anything, lagging: 0 (no breach)
        (busy(0), NOW, 0),
        # never read anything, nothing to read: the wall clock
        (idle(0), NOW, NOW),
    ],
)
def test_progress(state: ReadState, now_ms: int, expected: int) -> None:
    assert progress_ms(state, now_ms) == expected


@pytest.mark.parametrize(
    ("target", "partitions", "expected"),
    [
        # no partitions read: no clock
        (0, {}, None),
        # the target's own state was not read (another worker's partitions only): no clock
        (0, {1: idle(9000)}, None),
        # one partition, lagging: its newest event time
        (0, {0: busy(5000)}, 5000),
        # one partition, idle: the wall clock
        (0, {0: idle(5000)}, NOW),
        # another partition lagging behind the target: held back to it (a reply for the
        # target may still be unread there)
        (0, {0: busy(9000), 1: busy(7000)}, 7000),
        # another partition ahead: the target's own progress
        (0, {0: busy(7000), 1: busy(9000)}, 7000),
        # the target idle, another lagging: the other's progress
        (0, {0: idle(9000), 1: busy(8000)}, 8000),
        # the target lagging, another idle: the target's progress
        (0, {0: busy(8000), 1: idle(9000)}, 8000),
        # every partition idle: the wall clock
        (0, {0: idle(8000), 1: idle(9000), 2: idle(0)}, NOW),
        # another partition that never read anything and has records left: no breach
        (0, {0: busy(9000), 1: busy(0)}, 0),
        # the least over all the other partitions
        (1, {0: busy(9000), 1: busy(9500), 2: busy(6000), 3: idle(100)}, 6000),
        # another partition forwarded to the target, none of it applied yet: no breach
        (0, {0: busy(9000), 1: busy(8000, forwards_ms=0)}, 0),
        # forwards applied: held back to that partition's progress when it forwarded them,
        # not its progress now
        (0, {0: busy(9000), 1: busy(8800, forwards_ms=8000)}, 8000),
        (0, {0: idle(9000), 1: idle(9900, forwards_ms=8000)}, 8000),
        # forwards applied from a check past the target's own progress: the target's
        (0, {0: busy(9000), 1: busy(9900, forwards_ms=9500)}, 9000),
        # a forwarding partition and a lagging one: the least of both
        (0, {0: busy(9000), 1: busy(9900, forwards_ms=8500), 2: busy(7500)}, 7500),
        # the target's own forwards_ms means nothing (it does not forward to itself)
        (0, {0: busy(9000, forwards_ms=0)}, 9000),
    ],
)
def test_detection_clock(
    target: int, partitions: dict[int, ReadState], expected: int | None
) -> None:
    assert detection_clock_ms(target, partitions, NOW) == expected
