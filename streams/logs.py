"""Log hygiene for the worker: a client library's repeated errors are summarised, not flooded.

With the broker unreachable, aiokafka logs the same ERROR every ``retry_backoff_ms``
(100 ms): hundreds of lines a minute that bury the dozen that say what is wrong.
:class:`RepeatThrottle` lets the first occurrence of a message through at once, counts the
repeats that follow, and reports them as one line per :data:`REPEAT_INTERVAL_S` per
message. deskpulse's own loggers are left alone: their retries already back off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "REPEAT_INTERVAL_S",
    "THROTTLED_LOGGERS",
    "RepeatThrottle",
    "install_repeat_throttle",
    "repeat_throttle",
]

#: Seconds between two lines of the same repeated message.
REPEAT_INTERVAL_S = 30.0

#: How often the counts are looked at for intervals that ran out (seconds).
FLUSH_EVERY_S = 5.0

#: Logger names (and their children) whose repeats are throttled: the Kafka client and the
#: stream-processing framework, which retry on their own schedules.
THROTTLED_LOGGERS = ("aiokafka", "faust", "mode")

#: At most this many distinct messages are tracked (messages built with f-strings are
#: all distinct); past it, the ones whose interval has run out are forgotten, and while
#: none has, a new message passes without being tracked.
MAX_TRACKED = 1024

# A record is seen once per handler: the first decision is stored on it, so a record that
# two handlers emit is counted once and every handler makes the same choice.
_DECISION = "_deskpulse_repeat_decision"
# Summary lines written by flush() carry this attribute, so they are never throttled.
_SUMMARY = "_deskpulse_repeat_summary"

_Key = tuple[str, int, str]


@dataclass
class _Repeats:
    window_start_s: float  # when the current interval began (the clock of RepeatThrottle)
    suppressed: int = 0  # occurrences held back since then
    last_message: str = ""  # the newest of them, formatted


class RepeatThrottle(logging.Filter):
    """A handler filter: the first of a message passes, repeats are counted and summarised.

    Two records are the same message when they come from the same logger at the same level
    with the same format string (the arguments, e.g. an address or an errno, may differ).
    Within ``interval_s`` of a message's last line, its repeats are held back and counted;
    the first repeat after that passes with ``(repeated N times in the last S s)``
    appended, and starts a new interval. :meth:`flush` reports counts whose interval ran out
    with no further repeat to carry them. Records below ``min_level`` (floods are errors
    and warnings; a library's info lines, such as a rebalance, are news each time) and
    records of other loggers always pass.

    ``clock`` is the monotonic time in seconds (a parameter so tests can drive it).
    """

    def __init__(
        self,
        *,
        loggers: tuple[str, ...] = THROTTLED_LOGGERS,
        interval_s: float = REPEAT_INTERVAL_S,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.loggers = loggers
        self.interval_s = interval_s
        self.min_level = min_level
        self.clock = clock
        self._repeats: dict[_Key, _Repeats] = {}
        # the Kafka consumer logs from its own thread
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECISION, None)
        if decided is None:
            decided = self._decide(record)
            setattr(record, _DECISION, decided)
        return bool(decided)

    def _throttled(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or getattr(record, _SUMMARY, False):
            return False
        name = record.name
        return any(name == root or name.startswith(root + ".") for root in self.loggers)

    def _decide(self, record: logging.LogRecord) -> bool:
        if not self._throttled(record):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now_s = self.clock()
        with self._lock:
            repeats = self._repeats.get(key)
            if repeats is None:
                self._forget_quiet(now_s)
                if len(self._repeats) < MAX_TRACKED:  # else it passes, uncounted
                    self._repeats[key] = _Repeats(window_start_s=now_s)
                return True
            elapsed_s = now_s - repeats.window_start_s
            if elapsed_s < self.interval_s:
                repeats.suppressed += 1
                repeats.last_message = _formatted(record)
                return False
            suppressed = repeats.suppressed
            self._repeats[key] = _Repeats(window_start_s=now_s)
        if suppressed:
            # this occurrence carries the count of the ones held back before it
            record.msg = f"{_formatted(record)} ({_repeated(suppressed, elapsed_s)})"
            record.args = ()  # not None: some formatters turn None into (None,)
        return True

    def _forget_quiet(self, now_s: float) -> None:
        if len(self._repeats) < MAX_TRACKED:
            return
        for key, repeats in list(self._repeats.items()):
            if now_s - repeats.window_start_s >= self.interval_s:
                del self._repeats[key]

    @property
    def tracked(self) -> int:
        """How many distinct messages are being counted."""
        return len(self._repeats)

    def flush(self) -> None:
        """Log a summary for each message whose interval ran out with repeats uncounted.

        A message with nothing held back is forgotten once its interval is over: its next
        occurrence is logged at once, as a first one.
        """
        now_s = self.clock()
        due: list[tuple[_Key, _Repeats, float]] = []
        with self._lock:
            for key, repeats in list(self._repeats.items()):
                elapsed_s = now_s - repeats.window_start_s
                if elapsed_s < self.interval_s:
                    continue
                if repeats.suppressed:
                    due.append((key, repeats, elapsed_s))
                    self._repeats[key] = _Repeats(window_start_s=now_s)
                else:
                    del self._repeats[key]
        for (name, level, _), repeats, elapsed_s in due:
            logging.getLogger(name).log(
                level,
                "%s (%s)",
                repeats.last_message,
                _repeated(repeats.suppressed, elapsed_s),
                extra={_SUMMARY: True},
            )


def _formatted(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a broken format string in a library: show it as it is
        return str(record.msg)


def _repeated(count: int, elapsed_s: float) -> str:
    times = "once" if count == 1 else f"{count} times"
    return f"repeated {times} in the last {elapsed_s:.0f} s"


_THROTTLE = RepeatThrottle()
_flusher: threading.Thread | None = None
_flusher_lock = threading.Lock()


def repeat_throttle() -> RepeatThrottle:
    """The process's throttle (one, so every handler shares its counts)."""
    return _THROTTLE


def install_repeat_throttle(logger: logging.Logger | None = None) -> RepeatThrottle:
    """Add the process's throttle to every handler of ``logger`` (the root logger).

    Call it again after anything replaces the handlers (Faust's worker sets up logging
    anew when it starts): handlers that have it already are left as they are. The first
    call starts a daemon thread that calls :meth:`RepeatThrottle.flush` every interval,
    so a flood that stops still gets its last count reported.
    """
    global _flusher
    throttle = repeat_throttle()
    for handler in (logger or logging.getLogger()).handlers:
        if throttle not in handler.filters:
            handler.addFilter(throttle)
    with _flusher_lock:
        if _flusher is None:
            _flusher = threading.Thread(
                target=_flush_forever, args=(throttle,), name="deskpulse-log-repeats", daemon=True
            )
            _flusher.start()
    return throttle


def _flush_forever(throttle: RepeatThrottle) -> None:
    # a thread, not a task: the engine process and the CLI have no Faust loop to run it.
    # It looks more often than the interval, so a count is reported soon after its end.
    while not _stop_flushing.wait(min(FLUSH_EVERY_S, throttle.interval_s)):
        throttle.flush()


_stop_flushing = threading.Event()  # never set: the daemon thread ends with the process
