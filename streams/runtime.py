"""Process-wide tuning shared by the worker, the replay path and the benchmark's bare agent,
and the one-shot commands' garbage collector pause."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["GC_THRESHOLDS", "one_shot_gc", "tune_gc"]

#: Net allocations between young-generation collections, then the usual ratios. Python's
#: default (700, 10, 10) makes one batch of thousands of events set off hundreds of
#: collections, and every tenth of those walks all the batch's live objects again; with
#: two batches in flight that cost the replay path a fifth of its time. Garbage from
#: reference cycles (rare here: the hot path frees by reference counting) lives a little
#: longer, which is all this trades.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Move what start-up allocated out of the collector's way; collect less often."""
    gc.collect()
    gc.freeze()  # modules, settings, Faust's app graph: long-lived, never garbage
    gc.set_threshold(*GC_THRESHOLDS)


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
