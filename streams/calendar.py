"""Business time on a schedule: how much of ``[a, b)`` lies in open hours, and when a target
is reached (docs/kpis.md, "Business calendars and SLA policies").

Pure: every function takes instants as UTC epoch milliseconds and never reads the clock.
``None`` for a calendar means calendar time (around the clock): the plain difference.

An instant counts as business time when its local time, in the schedule's zone, lies in an
open interval of a weekday that is not a holiday. So an interval that spans a DST change is
an hour shorter (spring forward) or longer (fall back), as a clock on the wall would be.

How it stays fast: each local date's open intervals are turned into UTC pieces once (the
zone's offsets looked up there, not per call), and pieces are gathered into UTC-aligned
weekly blocks holding sorted starts and running sums. A measure or a deadline is then a
couple of cached block look-ups and a bisection, with no zone arithmetic.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from deskpulse.models.sla import Schedule

__all__ = ["BusinessCalendar", "business_ms", "calendars", "deadline_ms"]

_SECOND_MS = 1000
_MINUTE_MS = 60 * _SECOND_MS
_HOUR_MS = 60 * _MINUTE_MS
_DAY_MS = 24 * _HOUR_MS
_BLOCK_MS = 7 * _DAY_MS
# a local day lies within a day of its UTC counterpart (offsets are within ±26 h)
_MARGIN_MS = _DAY_MS + 2 * _HOUR_MS
# offsets are sampled this far apart when a day's pieces are built: a zone changes its
# offset at most once between samples (real zones change at most twice a year)
_SAMPLE_MS = 3 * _HOUR_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# instants datetime can hold, with a margin for the offset
_MIN_MS = (datetime(1, 1, 3, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_MAX_MS = (datetime(9999, 12, 29, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


class _Block(NamedTuple):
    """The open pieces of one UTC week: ``starts``/``ends`` sorted, ``before[i]`` the open
    time of the block before piece ``i``, ``reached[i]`` that plus piece ``i``."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    before: tuple[int, ...]
    reached: tuple[int, ...]
    total: int


class BusinessCalendar:
    """A :class:`~deskpulse.models.sla.Schedule` compiled for measuring business time."""

    def __init__(self, schedule: Schedule, *, cache_blocks: int = 1024) -> None:
        self.zone = ZoneInfo(schedule.timezone)
        self._weekly = schedule.weekly_minutes()
        self._holidays = frozenset(day.toordinal() for day in schedule.holidays)
        # per-instance caches: a schedule's blocks never change
        self._day = lru_cache(maxsize=64)(self._day_pieces)
        self.block = lru_cache(maxsize=cache_blocks)(self._block)

    # -- building (zone arithmetic happens only here, once per date) --

    def _offset_ms(self, instant_ms: int) -> int:
        clamped = min(max(instant_ms, _MIN_MS), _MAX_MS)
        local = (_EPOCH + timedelta(milliseconds=clamped)).astimezone(self.zone)
        offset = local.utcoffset()
        assert offset is not None  # an aware datetime in a ZoneInfo zone
        return offset // timedelta(milliseconds=1)

    def _segments(self, lo_ms: int, hi_ms: int) -> list[tuple[int, int, int]]:
        """``[lo, hi)`` cut where the zone's offset changes: ``(start, end, offset)`` each."""
        segments = []
        start, offset = lo_ms, self._offset_ms(lo_ms)
        probe = lo_ms
        while probe < hi_ms:
            following = min(probe + _SAMPLE_MS, hi_ms)
            if self._offset_ms(following) != offset:
                # the first millisecond with the new offset, by bisection
                low, high = probe, following
                while high - low > 1:
                    middle = (low + high) // 2
                    if self._offset_ms(middle) == offset:
                        low = middle
                    else:
                        high = middle
                segments.append((start, high, offset))
                start, offset = high, self._offset_ms(high)
                probe = high
            else:
                probe = following
        segments.append((start, hi_ms, offset))
        return segments

    def _day_pieces(self, ordinal: int) -> tuple[tuple[int, int], ...]:
        """The instants whose local date is this one and local time is open, as sorted,
        disjoint UTC ``[start, end)`` pieces."""
        intervals = self._weekly[date.fromordinal(ordinal).weekday()]
        if ordinal in self._holidays or not intervals:
            return ()
        midnight = (ordinal - _EPOCH_ORDINAL) * _DAY_MS  # local midnight read as if UTC
        pieces: list[tuple[int, int]] = []
        for seg_start, seg_end, offset in self._segments(
            midnight - _MARGIN_MS, midnight + _DAY_MS + _MARGIN_MS
        ):
            # within one offset, local time = instant + offset: an interval maps to a span
            for start_min, end_min in intervals:
                start = max(seg_start, midnight + start_min * _MINUTE_MS - offset)
                end = min(seg_end, midnight + end_min * _MINUTE_MS - offset)
                if start < end:
                    pieces.append((start, end))
        return tuple(_merged(pieces))

    def _block(self, index: int) -> _Block:
        lo, hi = index * _BLOCK_MS, (index + 1) * _BLOCK_MS
        first = (lo - _MARGIN_MS) // _DAY_MS + _EPOCH_ORDINAL
        last = (hi + _MARGIN_MS) // _DAY_MS + _EPOCH_ORDINAL
        pieces = []
        for ordinal in range(first, last + 1):
            for start, end in self._day(ordinal):
                start, end = max(start, lo), min(end, hi)
                if start < end:
                    pieces.append((start, end))
        merged = _merged(pieces)
        before, reached, total = [], [], 0
        for start, end in merged:
            before.append(total)
            total += end - start
            reached.append(total)
        return _Block(
            tuple(start for start, _ in merged),
            tuple(end for _, end in merged),
            tuple(before),
            tuple(reached),
            total,
        )

    # -- measuring (no zone arithmetic) --

    def business_ms(self, start_ms: int, end_ms: int) -> int:
        """Business time in ``[start, end)``, milliseconds (negative when end < start)."""
        if end_ms < start_ms:
            return -self.business_ms(end_ms, start_ms)
        first, last = start_ms // _BLOCK_MS, end_ms // _BLOCK_MS
        block = self.block(last)
        i = bisect_right(block.starts, end_ms) - 1
        total = block.before[i] + min(end_ms, block.ends[i]) - block.starts[i] if i >= 0 else 0
        if first != last:
            for index in range(first, last):
                total += self.block(index).total
            block = self.block(first)
        i = bisect_right(block.starts, start_ms) - 1
        if i >= 0:
            total -= block.before[i] + min(start_ms, block.ends[i]) - block.starts[i]
        return total

    def deadline_ms(self, start_ms: int, target_ms: int) -> int:
        """The earliest instant ``t`` with ``business_ms(start, t) == target``."""
        if target_ms <= 0:
            return start_ms
        index = start_ms // _BLOCK_MS
        block = self.block(index)
        # the target counted from the block's start
        need = target_ms
        i = bisect_right(block.starts, start_ms) - 1
        if i >= 0:
            need += block.before[i] + min(start_ms, block.ends[i]) - block.starts[i]
        while block.total < need:
            need -= block.total
            index += 1
            block = self.block(index)
        # the first piece by whose end ``need`` is reached; ``before`` < need there
        i = bisect_left(block.reached, need)
        return block.starts[i] + need - block.before[i]


def _merged(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted pieces with touching or overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(pieces):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def business_ms(calendar: BusinessCalendar | None, start_ms: int, end_ms: int) -> int:
    """Business time of ``[start, end)`` in milliseconds; calendar time when ``calendar``
    is ``None``. Additive: ``f(a, b) + f(b, c) == f(a, c)``."""
    if calendar is None:
        return end_ms - start_ms
    return calendar.business_ms(start_ms, end_ms)


def deadline_ms(calendar: BusinessCalendar | None, start_ms: int, target_ms: int) -> int:
    """The earliest instant at which ``target_ms`` of business time has passed since
    ``start_ms`` (a start while closed counts from the next opening; a target of 0 is due
    at the start). Calendar time when ``calendar`` is ``None``."""
    if calendar is None:
        return start_ms + max(target_ms, 0)
    return calendar.deadline_ms(start_ms, target_ms)


def calendars(schedules: Mapping[str, Schedule]) -> dict[str, BusinessCalendar]:
    """Every schedule of the settings, compiled, by name."""
    return {name: BusinessCalendar(schedule) for name, schedule in schedules.items()}
