"""Process-wide tuning shared by the worker, the replay path and the benchmark's bare agent,
and the one-shot commands' garbage collector pause."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

__all__ = [
    "BATCH_GC_THRESHOLDS",
    "GC_THRESHOLDS",
    "MALLOC_ARENAS",
    "SWITCH_INTERVAL_S",
    "end_with_parent",
    "one_malloc_arena",
    "one_shot_gc",
    "release_memory",
    "short_switch_interval",
    "tune_gc",
]

#: Net allocations between young-generation collections, then the usual ratios. Python's
#: default (700, 10, 10) makes one batch of thousands of events set off hundreds of
#: collections, and every tenth of those walks all the batch's live objects again; with
#: two batches in flight that cost the replay path a fifth of its time. Garbage from
#: reference cycles (rare here: the hot path frees by reference counting) lives a little
#: longer, which is all this trades.
GC_THRESHOLDS = (50_000, 20, 100)

#: The replay's: a backfill keeps a dozen batches of ten thousand records in flight (fetched,
#: decoded, folded, committing), so at 50,000 net allocations every young collection still
#: walks a hundred thousand live objects and finds nothing (measured: 25 collections of
#: 10 - 80 ms in a replay of 300,000 events, none with garbage, 6 - 15 % of its CPU). At a
#: million a collection comes every few seconds and most of what it would have walked is
#: freed by then. A batch job trades no latency for it; what cycles make waits longer.
BATCH_GC_THRESHOLDS = (1_000_000, 20, 100)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Move what start-up allocated out of the collector's way; collect less often."""
    gc.collect()
    gc.freeze()  # modules, settings, Faust's app graph: long-lived, never garbage
    gc.set_threshold(*thresholds)


#: How long a thread holds the interpreter while another waits for it (Python's default is
#: 5 ms). The worker and the engine process share theirs between a loop that mostly waits
#: (on Redis, the pipe, the broker) and threads that compute (the KPI refresh, the
#: consumer's): a waiting thread back from a system call waits up to this long for the
#: interpreter, once per round trip, so a commit's dozen round trips beside a refresh
#: waited up to 60 ms. The computing thread loses only the handover (microseconds).
SWITCH_INTERVAL_S = 0.001


def short_switch_interval(interval_s: float = SWITCH_INTERVAL_S) -> None:
    """Hand the interpreter over sooner to a thread that waits for it."""
    sys.setswitchinterval(interval_s)


@contextmanager
def one_shot_gc() -> Iterator[None]:
    """No collections while a short command runs, and none over what it built at exit.

    A one-shot command (``deskpulse kpis``) spends most of its life importing: some 75,000
    tracked objects that all live to the end, which the collector walks again and again
    (about 20 ms), then once more when the interpreter shuts down (about 30 ms).
    Its own garbage is freed by reference counting. Frozen at the end, what it built is
    skipped by the collection at exit; the process ends right after, which frees it all.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


#: prctl(2) option: the signal the kernel sends a process when the thread that started it ends
_PR_SET_PDEATHSIG = 1


def end_with_parent(signum: int) -> None:
    """Have the kernel send this process ``signum`` when its parent dies (Linux; a no-op
    elsewhere). The setting outlives ``exec``, and follows the parent's *thread* that
    started this process. Raises OSError (or AttributeError, a C library without
    ``prctl``) when it cannot be set. Safe between ``fork`` and ``exec`` (no lookup of the
    C library on disk: the process's own symbols)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


#: glibc's ``mallopt`` parameter for the most arenas ``malloc`` makes (``M_ARENA_MAX``)
_M_ARENA_MAX = -8

#: the arenas the engine process's ``malloc`` may use (:func:`one_malloc_arena`)
MALLOC_ARENAS = 1


@cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """The C library's function ``name``, or None where it has none."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    function: Callable[..., int] | None = getattr(ctypes.CDLL(library), name, None)
    return function


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    return _libc_function("malloc_trim")


def one_malloc_arena() -> None:
    """Have ``malloc`` serve every thread of this process from :data:`MALLOC_ARENAS`
    arena, before any thread starts (glibc; a no-op elsewhere, or where
    ``MALLOC_ARENA_MAX`` is set: the operator's choice holds).

    glibc gives each thread that allocates an arena of its own (up to 8 per core), kept
    for good. In the engine process the refresh loop's thread, the thread that builds and
    renders the families and the Kafka client's threads each got one, and what one thread
    frees in its arena another cannot reuse: partly used pages that :func:`release_memory`
    cannot give back (measured with 6,000 groups: the process's RSS 254 MiB at most with
    the arenas glibc chose, 236 MiB with one). The threads take the interpreter's lock in
    turns anyway; Python's small objects come from its own allocator, not ``malloc``.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def release_memory() -> None:
    """Give the C heap's free pages back to the system.

    A KPI refresh over thousands of groups builds dicts of hundreds of thousands of fields
    and frees them; their tables come from ``malloc``, which keeps the freed pages, so the
    process would stay at its peak between refreshes (measured: 230 MB against 165 MB
    with 6,000 groups). A no-op where the C library has no ``malloc_trim``.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
