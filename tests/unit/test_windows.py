"""Window math (docs/kpis.md, "Windows and retention"): tables of edge cases and hypothesis
properties."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deskpulse.streams import windows
from deskpulse.streams.windows import (
    bucket_start,
    cover,
    format_width,
    parse_width,
    window_bounds,
)

D = 1_795_392_000  # 2026-11-23T00:00:00Z: a day, hour and minute boundary
H = 3600
US = 1e-6  # one microsecond; still resolvable in a float epoch of this size


def test_public_surface() -> None:
    assert sorted(windows.__all__) == [
        "bucket_start",
        "cover",
        "format_width",
        "parse_width",
        "window_bounds",
    ]


# fmt: off
BUCKET_START_CASES = [
    (0, 60, 0),                         # the epoch itself is a boundary
    (59.999999, 60, 0),                 # just before a boundary
    (60, 60, 60),                       # on a boundary: the bucket starting there
    (60 + US, 60, 60),                  # one microsecond after a boundary
    (D, 60, D),                         # a real epoch on a boundary
    (D + US, 60, D),                    # ... one microsecond after
    (D - US, 60, D - 60),               # ... one microsecond before: previous bucket
    (D + 59.999999, 60, D),             # last microsecond of the bucket
    (-US, 60, -60),                     # negative epochs floor towards -inf
    (-1, 60, -60),
    (-60, 60, -60),                     # a negative boundary is its own bucket
    (-60 - US, 60, -120),
    (D + 30, 1, D + 30),                # one-second buckets
    (D + 30.5, 1, D + 30),
    (D + 1800, H, D),                   # hour buckets
    (D + 30, 7, (D + 30) // 7 * 7),     # a bucket that does not divide the hour
]
# fmt: on


@pytest.mark.parametrize(("t_s", "bucket_seconds", "expected"), BUCKET_START_CASES)
def test_bucket_start(t_s: float, bucket_seconds: int, expected: int) -> None:
    assert bucket_start(t_s, bucket_seconds) == expected


@pytest.mark.parametrize(
    ("t_s", "bucket_seconds"),
    [
        (0.0, 0),  # no bucket
        (0.0, -60),
        (float("nan"), 60),
        (float("inf"), 60),
    ],
)
def test_bucket_start_rejects(t_s: float, bucket_seconds: int) -> None:
    with pytest.raises(ValueError):
        bucket_start(t_s, bucket_seconds)


# fmt: off
WINDOW_BOUNDS_CASES = [
    (D, H, 60, (D - H, D)),                     # T on a boundary: E = T
    (D + US, H, 60, (D - H + 60, D + 60)),      # one microsecond after: a whole bucket up
    (D + 59.999999, H, 60, (D - H + 60, D + 60)),
    (D + 60, H, 60, (D - H + 60, D + 60)),      # the next boundary
    (D, 60, 60, (D - 60, D)),                   # width = bucket, on a boundary
    (D + 0.5, 60, 60, (D, D + 60)),             # width = bucket: just the partial bucket
    (D + 1820, 24 * H, 60, (D + 1860 - 24 * H, D + 1860)),
    (D + 1, 5 * 60, 300, (D, D + 300)),         # 5-minute buckets
    (0, 300, 60, (-300, 0)),                    # the epoch
    (-1, 300, 60, (-300, 0)),                   # negative T rounds up towards zero
    (-59.5, 300, 60, (-300, 0)),
    (-60, 300, 60, (-360, -60)),                # a negative boundary stays put
    (-60 - US, 300, 60, (-360, -60)),
]
# fmt: on


@pytest.mark.parametrize(
    ("at_s", "width_seconds", "bucket_seconds", "expected"), WINDOW_BOUNDS_CASES
)
def test_window_bounds(
    at_s: float, width_seconds: int, bucket_seconds: int, expected: tuple[int, int]
) -> None:
    assert window_bounds(at_s, width_seconds, bucket_seconds) == expected


@pytest.mark.parametrize(
    ("width_seconds", "bucket_seconds"),
    [
        (0, 60),  # empty window
        (-60, 60),
        (90, 60),  # not a bucket multiple
        (60, 0),
    ],
)
def test_window_bounds_rejects(width_seconds: int, bucket_seconds: int) -> None:
    with pytest.raises(ValueError):
        window_bounds(D, width_seconds, bucket_seconds)


def _minutes(start_s: int, end_s: int) -> list[int]:
    return list(range(start_s, end_s, 60))


# fmt: off
COVER_CASES = [
    (D, D, H, [], []),                                  # start == end
    (D, D + H, H, [D], []),                             # exactly one rollup
    (D, D + 24 * H, H, list(range(D, D + 24 * H, H)), []),  # aligned both edges
    (D - 120, D + H + 180, H, [D],                      # ragged both edges
     [D - 120, D - 60, D + H, D + H + 60, D + H + 120]),
    (D, D + H + 60, H, [D], [D + H]),                   # rollup edge at start only
    (D - 60, D + H, H, [D], [D - 60]),                  # rollup edge at end only
    (D, D + H - 60, H, [], _minutes(D, D + H - 60)),    # one bucket short of a rollup
    (D + 60, D + H - 60, H, [], _minutes(D + 60, D + H - 60)),  # inside one rollup
    (D - 60, D + 60, H, [], [D - 60, D]),               # straddles an edge, no whole rollup
    (D, D + 180, 60, [D, D + 60, D + 120], []),         # rollup == bucket
    (-H - 120, 60, H, [-H], [-H - 120, -H - 60, 0]),    # negative epochs
    (D - 24 * H + 1860, D + 1860, H,                    # a live 24h window at 00:30:20
     list(range(D - 23 * H, D, H)),
     _minutes(D - 24 * H + 1860, D - 23 * H) + _minutes(D, D + 1860)),
]
# fmt: on


@pytest.mark.parametrize(("start_s", "end_s", "rollup_seconds", "rollups", "fine"), COVER_CASES)
def test_cover(
    start_s: int, end_s: int, rollup_seconds: int, rollups: list[int], fine: list[int]
) -> None:
    assert cover(start_s, end_s, 60, rollup_seconds) == (rollups, fine)


def test_cover_of_a_day_touches_far_fewer_keys() -> None:
    start_s, end_s = window_bounds(D + 1820, 24 * H, 60)
    rollups, fine = cover(start_s, end_s, 60, H)
    assert len(rollups) + len(fine) <= 24 + 2 * 59  # instead of 1440


@pytest.mark.parametrize(
    ("start_s", "end_s", "bucket_seconds", "rollup_seconds"),
    [
        (D + 1, D + 60, 60, H),  # start not bucket-aligned
        (D, D + 61, 60, H),  # end not bucket-aligned
        (D, D + H, 60, 90),  # rollup not a bucket multiple
        (D, D + H, 60, 0),
        (D, D + H, 0, H),
        (D + 60, D, 60, H),  # reversed
    ],
)
def test_cover_rejects(start_s: int, end_s: int, bucket_seconds: int, rollup_seconds: int) -> None:
    with pytest.raises(ValueError):
        cover(start_s, end_s, bucket_seconds, rollup_seconds)


# fmt: off
PARSE_WIDTH_CASES = [
    ("5m", 60, 300),
    ("15m", 60, 900),
    ("1h", 60, 3600),
    ("3h", 60, 10800),
    ("24h", 60, 86400),
    ("2d", 60, 172800),
    ("90s", 30, 90),
    ("60s", 60, 60),        # width = bucket
    ("90s", 1, 90),
    (" 1h\n", 60, 3600),    # surrounding whitespace is forgiven
]
# fmt: on


@pytest.mark.parametrize(("text", "bucket_seconds", "expected"), PARSE_WIDTH_CASES)
def test_parse_width(text: str, bucket_seconds: int, expected: int) -> None:
    assert parse_width(text, bucket_seconds) == expected


# fmt: off
PARSE_WIDTH_REJECTS_CASES = [
    ("", 60, "not like"),
    ("5", 60, "not like"),              # a unit is required
    ("m", 60, "not like"),
    ("5 m", 60, "not like"),
    ("-5m", 60, "not like"),            # no sign
    ("+5m", 60, "not like"),
    ("5M", 60, "not like"),             # units are lower case
    ("1.5h", 60, "not like"),
    ("5min", 60, "not like"),
    ("1h30m", 60, "not like"),
    ("\u0665m", 60, "not like"),        # only ASCII digits
    ("0m", 60, "longer than zero"),
    ("0s", 60, "longer than zero"),
    ("90s", 60, "not a multiple of the 60s bucket"),
    ("30s", 60, "not a multiple"),
    ("1h", 7, "not a multiple"),
    ("1h", 0, "must be positive"),
]
# fmt: on


@pytest.mark.parametrize(("text", "bucket_seconds", "problem"), PARSE_WIDTH_REJECTS_CASES)
def test_parse_width_rejects(text: str, bucket_seconds: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_width(text, bucket_seconds)


# fmt: off
FORMAT_WIDTH_CASES = [
    (300, "5m"),
    (3600, "1h"),
    (86400, "24h"),     # h over d
    (172800, "48h"),
    (90, "90s"),
    (60, "1m"),
    (1, "1s"),
    (5400, "90m"),
    (3660, "61m"),
    (3601, "3601s"),
]
# fmt: on


@pytest.mark.parametrize(("seconds", "expected"), FORMAT_WIDTH_CASES)
def test_format_width(seconds: int, expected: str) -> None:
    assert format_width(seconds) == expected


@pytest.mark.parametrize("seconds", [0, -60])
def test_format_width_rejects(seconds: int) -> None:
    with pytest.raises(ValueError):
        format_width(seconds)


# --- properties -------------------------------------------------------------------------

times = st.floats(min_value=-1e11, max_value=1e11, allow_nan=False, allow_infinity=False)
buckets = st.sampled_from([1, 5, 7, 10, 60, 300, 900, 3600, 86400]) | st.integers(1, 10_000)


@given(t_s=times, bucket_seconds=buckets)
def test_a_bucket_contains_its_timestamp(t_s: float, bucket_seconds: int) -> None:
    start_s = bucket_start(t_s, bucket_seconds)
    assert start_s % bucket_seconds == 0
    assert start_s <= t_s < start_s + bucket_seconds  # int/float comparisons are exact


@given(at_s=times, bucket_seconds=buckets, n_buckets=st.integers(1, 2000))
def test_window_has_width_w_and_ends_within_a_bucket_after_t(
    at_s: float, bucket_seconds: int, n_buckets: int
) -> None:
    width_seconds = n_buckets * bucket_seconds
    start_s, end_s = window_bounds(at_s, width_seconds, bucket_seconds)
    assert end_s - start_s == width_seconds
    assert end_s % bucket_seconds == 0
    assert 0 <= Fraction(end_s) - Fraction(at_s) < bucket_seconds


@given(
    first_bucket=st.integers(-100_000, 100_000),
    n_buckets=st.integers(0, 3000),
    bucket_seconds=st.sampled_from([1, 10, 60, 300]),
    buckets_per_rollup=st.integers(1, 120),
)
def test_cover_is_an_exact_minimal_partition(
    first_bucket: int, n_buckets: int, bucket_seconds: int, buckets_per_rollup: int
) -> None:
    start_s = first_bucket * bucket_seconds
    end_s = start_s + n_buckets * bucket_seconds
    rollup_seconds = buckets_per_rollup * bucket_seconds
    rollups, fine = cover(start_s, end_s, bucket_seconds, rollup_seconds)

    assert rollups == sorted(rollups) and fine == sorted(fine)
    assert all(r % rollup_seconds == 0 for r in rollups)
    assert all(f % bucket_seconds == 0 for f in fine)
    pieces = sorted(
        [(r, r + rollup_seconds) for r in rollups] + [(f, f + bucket_seconds) for f in fine]
    )
    # Sorted pieces that chain end to start are disjoint and have no gaps.
    position_s = start_s
    for piece_start_s, piece_end_s in pieces:
        assert piece_start_s == position_s
        position_s = piece_end_s
    assert position_s == end_s
    # Minimal: every rollup-aligned rollup bucket lying inside the interval is used.
    first_inside_s = -(-start_s // rollup_seconds) * rollup_seconds
    assert rollups == list(range(first_inside_s, end_s - rollup_seconds + 1, rollup_seconds))


@given(bucket_seconds=buckets, n_buckets=st.integers(1, 1_000_000))
def test_parse_width_inverts_format_width(bucket_seconds: int, n_buckets: int) -> None:
    seconds = n_buckets * bucket_seconds
    assert parse_width(format_width(seconds), bucket_seconds) == seconds
