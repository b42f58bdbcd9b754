"""Event-time window math (docs/kpis.md, "Windows and retention"), as pure functions.

Event time is cut into buckets of ``bucket_seconds``; bucket ``b`` holds event times in
``[b, b + bucket_seconds)``. A rolling window of width ``w`` read at time ``T`` covers
``[E - w, E)`` where ``E`` is ``T`` rounded *up* to a bucket boundary, so a live window
includes the current, partial bucket. Long reads are decomposed by :func:`cover` into
coarse rollup buckets plus fine buckets at the ragged edges.

Every time is in seconds since the Unix epoch; nothing here reads the clock. Bucket
starts and window bounds are ints and computed in integer arithmetic, so a float
timestamp a hair before a boundary never rounds into the next bucket.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "bucket_start",
    "cover",
    "format_width",
    "parse_width",
    "window_bounds",
]

_WIDTH = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _require_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _require_aligned(name: str, value: int, bucket_seconds: int) -> None:
    if value % bucket_seconds:
        raise ValueError(f"{name}={value} is not a multiple of the {bucket_seconds}s bucket")


def _floor_int(t_s: float) -> int:
    if not math.isfinite(t_s):
        raise ValueError(f"time must be finite, got {t_s!r}")
    return math.floor(t_s)


def bucket_start(t_s: float, bucket_seconds: int) -> int:
    """Start of the bucket holding event time ``t_s``: the largest boundary ``<= t_s``.

    A time exactly on a boundary belongs to the bucket starting there; negative times
    floor towards minus infinity (``-1`` with 60 s buckets is in the bucket at ``-60``).
    """
    _require_positive("bucket_seconds", bucket_seconds)
    # floor(floor(t) / b) == floor(t / b) for an integer b, and stays exact for big epochs.
    return _floor_int(t_s) // bucket_seconds * bucket_seconds


def window_bounds(at_s: float, width_seconds: int, bucket_seconds: int) -> tuple[int, int]:
    """``(start_s, end_s)`` of the rolling window of ``width_seconds`` read at ``at_s``.

    ``end_s`` is ``at_s`` rounded up to a bucket boundary (a time on a boundary stays
    put) and ``start_s = end_s - width_seconds``; the window covers ``[start_s, end_s)``.
    The width must be a positive multiple of the bucket.
    """
    _require_positive("bucket_seconds", bucket_seconds)
    _require_positive("width_seconds", width_seconds)
    _require_aligned("width_seconds", width_seconds, bucket_seconds)
    if not math.isfinite(at_s):
        raise ValueError(f"time must be finite, got {at_s!r}")
    end_s = -(-math.ceil(at_s) // bucket_seconds) * bucket_seconds
    return end_s - width_seconds, end_s


def cover(
    start_s: int, end_s: int, bucket_seconds: int, rollup_seconds: int
) -> tuple[list[int], list[int]]:
    """Split the bucket-aligned ``[start_s, end_s)`` into the fewest buckets.

    Returns ``(rollup_starts, bucket_starts)``: the starts of every rollup bucket (of
    ``rollup_seconds``, aligned to it) lying wholly inside the interval, and the starts of
    the fine buckets for the ragged edges left over. Both lists are ascending; together
    the pieces are disjoint and their union is exactly ``[start_s, end_s)``. With 60 s
    buckets and 1 h rollups a 24 h read touches at most 24 + 118 keys instead of 1440.
    """
    _require_positive("bucket_seconds", bucket_seconds)
    _require_positive("rollup_seconds", rollup_seconds)
    _require_aligned("rollup_seconds", rollup_seconds, bucket_seconds)
    _require_aligned("start_s", start_s, bucket_seconds)
    _require_aligned("end_s", end_s, bucket_seconds)
    if start_s > end_s:
        raise ValueError(f"start_s={start_s} is after end_s={end_s}")
    first_rollup_s = -(-start_s // rollup_seconds) * rollup_seconds
    last_rollup_end_s = end_s // rollup_seconds * rollup_seconds
    if first_rollup_s >= last_rollup_end_s:  # no whole rollup bucket fits
        return [], list(range(start_s, end_s, bucket_seconds))
    rollups = list(range(first_rollup_s, last_rollup_end_s, rollup_seconds))
    fine = [
        *range(start_s, first_rollup_s, bucket_seconds),
        *range(last_rollup_end_s, end_s, bucket_seconds),
    ]
    return rollups, fine


def parse_width(text: str, bucket_seconds: int) -> int:
    """Seconds in a window width written ``<int>(s|m|h|d)``: ``"5m"`` -> 300, ``"2d"`` -> 172800.

    Surrounding whitespace is ignored. Raises :class:`ValueError` naming the problem when
    the text is malformed (no unit, sign, upper case, ...), the width is zero, or it is not
    a multiple of ``bucket_seconds``.
    """
    _require_positive("bucket_seconds", bucket_seconds)
    match = _WIDTH.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"window width {text!r} is not like 90s, 5m, 1h or 2d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds == 0:
        raise ValueError(f"window width {text!r} must be longer than zero")
    if seconds % bucket_seconds:
        raise ValueError(
            f"window width {text!r} ({seconds}s) is not a multiple of the {bucket_seconds}s bucket"
        )
    return seconds


def format_width(seconds: int) -> str:
    """The spelling of a width: 300 -> ``"5m"``, 3600 -> ``"1h"``, 86400 -> ``"24h"``.

    90 -> ``"90s"``: uses the largest of h, m, s that divides the width; days are never used because
    ``24h`` reads better on a board than ``1d``. The inverse of :func:`parse_width`.
    """
    _require_positive("width seconds", seconds)
    for unit in ("h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
