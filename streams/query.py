"""Reading KPIs: the document of CONTRACT §4 for any window within retention.

A read costs O(partitions x buckets touched) — a 24 h window touches the roll-up buckets
in its middle and fine buckets only at its ragged edges — never O(events).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from models.events import parse_time
from streams.core import SEP, group_document, has_samples
from streams.store import Store
from streams.windows import cover, window_bounds

__all__ = [
    "DIMENSIONS",
    "build_document",
    "format_time",
    "group_fields",
    "parse_at",
    "parse_by",
    "query_kpis",
    "read_window",
    "read_windows",
]

DIMENSIONS: tuple[str, ...] = ("channel", "queue", "priority")


def format_time(t_s: float) -> str:
    """RFC 3339 in UTC with a ``Z``, whole seconds."""
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_at(text: str | None) -> float:
    """``--at`` / ``at=``: RFC 3339 with an offset, in Unix seconds; now when empty."""
    if not text:
        return time.time()
    try:
        return parse_time(text).timestamp()
    except Exception as error:
        raise ValueError(f"--at must be RFC 3339 with an offset: {error}") from None


def parse_by(text: str | Sequence[str] | None) -> list[str]:
    """``"channel,queue"`` -> ``["channel", "queue"]``; unknown names raise ValueError."""
    if not text:
        return []
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name not in DIMENSIONS:
            raise ValueError(f"--by takes channel, queue, priority; not {name!r}")
        if name not in out:
            out.append(name)
    return out


def group_fields(
    merged: Mapping[str, int], by: Sequence[str]
) -> dict[tuple[str, ...], dict[str, int]]:
    """Project stored ``channel␟queue␟priority␟field`` sums onto the ``by`` dimensions."""
    positions = [DIMENSIONS.index(name) for name in by]
    groups: dict[tuple[str, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, value in merged.items():
        parts = name.split(SEP)
        key = tuple(parts[i] for i in positions)
        groups[key][parts[3]] += value
    return groups


async def query_kpis(
    store: Store,
    *,
    width_s: int,
    at_s: float,
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """The KPI document for the window of ``width_s`` ending at ``at_s`` (CONTRACT §3-§4)."""
    start_s, end_s, merged = await read_window(store, width_s=width_s, at_s=at_s, grouped=bool(by))
    return build_document(merged, start_s=start_s, end_s=end_s, by=by)


async def read_window(
    store: Store,
    *,
    width_s: int,
    at_s: float,
    partitions: Sequence[int] | None = None,
    grouped: bool = True,
) -> tuple[int, int, Counter[str]]:
    """``(start, end, fields)``: the stored fields of a window summed over partitions."""
    (window,) = await read_windows(
        store, widths_s=[width_s], at_s=at_s, partitions=partitions, grouped=grouped
    )
    return window


async def read_windows(
    store: Store,
    *,
    widths_s: Sequence[int],
    at_s: float,
    partitions: Sequence[int] | None = None,
    grouped: bool = True,
) -> list[tuple[int, int, Counter[str]]]:
    """:func:`read_window` for several widths ending at the same time, in one read.

    Fields are named ``channel␟queue␟priority␟field``; with ``grouped=False`` the read
    takes the all-groups buckets instead (a tenth of the fields) and every field comes
    under one empty group, ``␟␟␟field``, which is all a document without ``by`` needs.
    """
    cfg = store.config
    fine_level, rollup_level = ("b", "r") if grouped else ("B", "R")
    bounds: list[tuple[int, int]] = []
    sets: list[list[str]] = []
    for width_s in widths_s:
        start_s, end_s = window_bounds(at_s, width_s, cfg.bucket_seconds)
        rollups, fines = cover(start_s, end_s, cfg.bucket_seconds, cfg.rollup_seconds)
        bounds.append((start_s, end_s))
        sets.append([f"{rollup_level}:{s}" for s in rollups] + [f"{fine_level}:{s}" for s in fines])
    if partitions is None:
        partitions = await store.partitions()
    sums = await store.sum_buckets(partitions, sets)
    if not grouped:
        whole = SEP * 3
        sums = [Counter({whole + name: value for name, value in m.items()}) for m in sums]
    return [(start, end, merged) for (start, end), merged in zip(bounds, sums, strict=True)]


def build_document(
    merged: Mapping[str, int], *, start_s: int, end_s: int, by: Sequence[str]
) -> dict[str, Any]:
    """Assemble the document from merged bucket fields (shared with the snapshot publisher)."""
    groups = group_fields(merged, by)
    documents = []
    for key in sorted(groups):
        fields = groups[key]
        if by and not has_samples(fields):
            continue
        documents.append(group_document(dict(zip(by, key, strict=True)), fields))
    if not by and not documents:
        documents.append(group_document({}, {}))
    return {
        "window": {
            "start": format_time(start_s),
            "end": format_time(end_s),
            "seconds": end_s - start_s,
        },
        "by": list(by),
        "groups": documents,
    }
