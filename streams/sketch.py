"""A mergeable quantile sketch for durations (DDSketch-style, log-bucketed).

A duration ``x`` (seconds, ``>= 0``) is counted in the bucket ``index_of(x)``:

* ``x < MIN_VALUE`` (1 ms) goes to index ``0``, the zero bucket, represented by ``0.0``;
* otherwise ``index = ceil(log(x) / log(GAMMA)) + INDEX_OFFSET``, the bucket covering
  ``(GAMMA**(i - 1), GAMMA**i]`` for the un-offset ``i``, represented by
  ``2 * GAMMA**i / (GAMMA + 1)``, which is within ``RELATIVE_ACCURACY`` of every value in
  the bucket.

``INDEX_OFFSET = 461`` is chosen so that ``MIN_VALUE`` itself lands on index ``1``
(``ceil(log(1e-3) / log(GAMMA)) == -460``): every index is an int ``>= 0``, index ``1`` is
the first non-zero bucket and one second is index ``461``. Indexes are persisted (Redis
hash fields ``index -> count``), so ``RELATIVE_ACCURACY``, ``MIN_VALUE`` and
``INDEX_OFFSET`` must never change.

Sketches merge by adding counts, so buckets, partitions and workers combine in any order,
and a retracted sample is a decrement. Counts form a group: an entry may go negative
while a retraction is ahead of its addition, and entries that reach zero are dropped.
Quantiles ignore entries whose net count is not positive, so a partially retracted state
gives an answer, never a crash.

Because ``index_of`` is monotone, the bucket found for rank ``floor(q * (n - 1))`` is the
one holding the exact order statistic ``sorted(values)[floor(q * (n - 1))]``; its
representative is within ``RELATIVE_ACCURACY`` (0.75 %) of it, under the 1 % promised by
docs/kpis.md ("Quantile accuracy"), or, in the zero bucket, within 1 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "GAMMA",
    "INDEX_OFFSET",
    "MIN_VALUE",
    "RELATIVE_ACCURACY",
    "ZERO_INDEX",
    "Sketch",
    "index_of",
    "value_of",
]

#: Relative error of a representative; a margin under the 1 % deskpulse promises.
RELATIVE_ACCURACY = 0.0075
#: Ratio between consecutive bucket bounds.
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
#: Durations below this many seconds (1 ms) all count in the zero bucket.
MIN_VALUE = 1e-3
#: Index of the zero bucket.
ZERO_INDEX = 0
#: Added to ``ceil(log(x) / log(GAMMA))`` so that ``index_of(MIN_VALUE) == 1``. Persisted:
#: never change it.
INDEX_OFFSET = 461

_LOG_GAMMA = math.log(GAMMA)


def index_of(value_s: float) -> int:
    """The bucket index of a duration: ``0`` below ``MIN_VALUE``, else ``>= 1``.

    Monotone: a larger duration never gets a smaller index. Raises :class:`ValueError`
    for a negative or non-finite duration (callers clamp clock skew before sketching).
    """
    if not math.isfinite(value_s) or value_s < 0:
        raise ValueError(f"a duration must be finite and >= 0, got {value_s!r}")
    if value_s < MIN_VALUE:
        return ZERO_INDEX
    return math.ceil(math.log(value_s) / _LOG_GAMMA) + INDEX_OFFSET


def value_of(index: int) -> float:
    """The representative duration of a bucket index: ``0.0`` for the zero bucket.

    For index ``>= 1`` this is ``2 * GAMMA**i / (GAMMA + 1)`` with ``i = index -
    INDEX_OFFSET``, within ``RELATIVE_ACCURACY`` of every duration in the bucket (``inf``
    past the float range). Raises :class:`ValueError` for a negative index.
    """
    if index < 0:
        raise ValueError(f"a sketch index is >= 0, got {index}")
    if index == ZERO_INDEX:
        return 0.0
    try:
        return 2 * GAMMA ** (index - INDEX_OFFSET) / (GAMMA + 1)
    except OverflowError:
        return math.inf


def _require_positive_count(count: int) -> None:
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")


class Sketch:
    """Counts of durations per bucket index; merge by adding counts.

    ``counts`` maps index to net count and never holds a zero; entries may be negative
    while retractions are ahead of additions.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    @classmethod
    def from_counts(cls, counts: Mapping[int, int]) -> Sketch:
        """A sketch holding ``counts`` (index -> count) as read back from the store.

        Zero entries are dropped; negative ones are kept, so that the sketch still merges
        exactly, and are ignored by :attr:`count` and :meth:`quantile`. Raises
        :class:`ValueError` for a negative index.
        """
        sketch = cls()
        for index, count in counts.items():
            if index < 0:
                raise ValueError(f"a sketch index is >= 0, got {index}")
            sketch._bump(index, count)
        return sketch

    def to_counts(self) -> dict[int, int]:
        """A copy of the non-zero counts (index -> count), for the store."""
        return dict(self.counts)

    def _bump(self, index: int, delta: int) -> None:
        total = self.counts.get(index, 0) + delta
        if total:
            self.counts[index] = total
        else:
            self.counts.pop(index, None)

    def add(self, value_s: float, count: int = 1) -> None:
        """Count ``count`` samples of duration ``value_s`` (seconds, ``>= 0``)."""
        _require_positive_count(count)
        self._bump(index_of(value_s), count)

    def remove(self, value_s: float, count: int = 1) -> None:
        """Retract ``count`` samples of duration ``value_s``: the inverse of :meth:`add`."""
        _require_positive_count(count)
        self._bump(index_of(value_s), -count)

    def merge(self, other: Sketch) -> None:
        """Add the counts of ``other`` into this sketch (``other`` is left unchanged)."""
        for index, count in other.counts.items():
            self._bump(index, count)

    def _positive(self) -> Iterator[tuple[int, int]]:
        # Defensive: a net count <= 0 (a retraction ahead of its addition) holds no sample.
        for index in sorted(self.counts):
            count = self.counts[index]
            if count > 0:
                yield index, count

    @property
    def count(self) -> int:
        """Number of samples: the sum of the positive counts."""
        return sum(count for _, count in self._positive())

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (``0 <= q <= 1``) of the durations, or ``None`` when empty.

        Rank ``q * (count - 1)``; the answer is the representative of the first index, in
        ascending order, whose cumulative count exceeds the rank. It is within
        ``RELATIVE_ACCURACY`` of ``sorted(values)[floor(q * (n - 1))]`` (within
        ``MIN_VALUE`` absolutely in the zero bucket).
        """
        if not 0 <= q <= 1:  # also rejects NaN
            raise ValueError(f"a quantile is between 0 and 1, got {q!r}")
        total = self.count
        if total == 0:
            return None
        rank = q * (total - 1)
        cumulative = 0
        for index, count in self._positive():
            cumulative += count
            if cumulative > rank:
                return value_of(index)
        raise AssertionError("unreachable: the cumulative count reaches the total")

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """:meth:`quantile` of each of ``qs``, from one pass over the sorted counts (a KPI
        document asks three of every sketch)."""
        for q in qs:
            if not 0 <= q <= 1:  # also rejects NaN
                raise ValueError(f"a quantile is between 0 and 1, got {q!r}")
        positive = list(self._positive())
        total = sum(count for _, count in positive)
        if total == 0:
            return [None] * len(qs)
        out: list[float | None] = []
        for q in qs:
            rank = q * (total - 1)
            cumulative = 0
            for index, count in positive:
                cumulative += count
                if cumulative > rank:
                    out.append(value_of(index))
                    break
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return self.counts == other.counts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Sketch.from_counts({self.counts!r})"
