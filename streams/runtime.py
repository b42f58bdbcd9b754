"""Process-wide tuning shared by the worker, the replay path and the benchmark's bare agent."""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_gc"]

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
