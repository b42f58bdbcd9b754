"""The stuck-partition watchdog's rule: when an assigned input partition has stopped.

Faust's consumer can drop records it already fetched without seeking back (a partition
briefly neither active nor buffered, a generation change mid-batch): the partition then
sits with lag and nothing to apply until the worker restarts. A partition is *stuck* when
it has lag, neither Faust's committed offset nor its read position moved for the stall
timeout, and nothing of it is taken and unacknowledged; never while Faust's flow is
stopped (a rebalance) or the broker does not answer. The app's timer (streams/app.py)
measures, asks :class:`StallWatch`, and seeks a stuck partition back to its committed
offset; re-read records below the Redis fence are skipped as after a restart.

Pure: time is an argument, nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ATTEMPTS_BEFORE_ERROR", "Progress", "Stall", "StallWatch", "is_stuck"]

#: recoveries logged as warnings before a partition that stays stuck is logged as an error
ATTEMPTS_BEFORE_ERROR = 3
#: the longest wait between two recoveries of a partition that stays stuck (seconds)
MAX_BACKOFF_S = 600.0

Key = TypeVar("Key")


@dataclass(frozen=True)
class Progress:
    """One measurement of a partition."""

    committed: int | None  # Faust's committed offset (the next to read once applied)
    read: int | None  # the offset of the last record Faust handed to the agent
    end: int  # the partition's end offset (high watermark)
    busy: bool  # records of it were taken and are not acknowledged yet (a batch in flight)

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


@dataclass(frozen=True)
class Stall:
    """A stuck partition to recover: how long it was stuck, and the how-many-th time."""

    committed: int | None  # None: Faust has committed nothing for it yet
    end: int
    stuck_s: float  # since its offsets last moved
    attempt: int


def is_stuck(
    lag: int,
    unmoved_s: float,
    timeout_s: float,
    *,
    busy: bool,
    flow_active: bool,
    broker_up: bool,
) -> bool:
    """Whether a partition with ``lag`` whose offsets have not moved for ``unmoved_s`` is
    stuck: records wait, nothing of it is in flight, and the consumer could deliver."""
    if lag <= 0 or busy or not flow_active or not broker_up:
        return False
    return unmoved_s >= timeout_s


@dataclass
class _Watched:
    committed: int | None
    read: int | None
    since_s: float  # when its offsets last moved, or it was last recovered
    moved_s: float  # when its offsets last moved
    attempts: int = 0


class StallWatch(Generic[Key]):
    """Per-partition memory of when offsets last moved, and of recoveries tried.

    :meth:`observe` takes every assigned partition's :class:`Progress` at ``now_s`` and
    returns the ones to recover. After a recovery the partition is given another timeout;
    from the :data:`ATTEMPTS_BEFORE_ERROR`-th on, that wait doubles (up to
    :data:`MAX_BACKOFF_S`) until its offsets move again.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._watched: dict[Key, _Watched] = {}

    def observe(
        self,
        progress: dict[Key, Progress],
        now_s: float,
        *,
        flow_active: bool,
        broker_up: bool,
    ) -> dict[Key, Stall]:
        """The partitions of ``progress`` found stuck at ``now_s`` (partitions no longer
        assigned are forgotten)."""
        for key in [k for k in self._watched if k not in progress]:
            del self._watched[key]
        stalls: dict[Key, Stall] = {}
        for key, now in progress.items():
            seen = self._watched.get(key)
            moved = seen is None or (seen.committed, seen.read) != (now.committed, now.read)
            if seen is None or moved or now.lag == 0 or now.busy:
                # progress, nothing to read or work in flight: the clock starts again
                self._watched[key] = _Watched(now.committed, now.read, now_s, now_s)
                continue
            if not (flow_active and broker_up):
                # a rebalance or a silent broker is not a stall: the clock starts again
                seen.since_s = seen.moved_s = now_s
                continue
            if not is_stuck(
                now.lag,
                now_s - seen.since_s,
                self._wait_s(seen.attempts),
                busy=now.busy,
                flow_active=flow_active,
                broker_up=broker_up,
            ):
                continue
            seen.attempts += 1
            stalls[key] = Stall(now.committed, now.end, now_s - seen.moved_s, seen.attempts)
            seen.since_s = now_s
        return stalls

    def _wait_s(self, attempts: int) -> float:
        doublings = max(0, attempts - ATTEMPTS_BEFORE_ERROR + 1)
        wait_s: float = self.timeout_s * 2.0**doublings
        return min(wait_s, max(self.timeout_s, MAX_BACKOFF_S))
