"""Reading KPIs: the KPI document for any window within retention.

A read costs O(partitions x buckets touched) — a 24 h window touches the roll-up buckets
in its middle and fine buckets only at its ragged edges — never O(events).

What a read may ask for is decided before anything is read (:func:`parse_query`): a width
up to ``DESKPULSE_RETENTION``, a window whose bounds RFC 3339 can write, starting no further
ahead of the clock than ``DESKPULSE_MAX_FUTURE`` (no event can be stored past that). The
past is bounded by the data, not the clock — retention counts back from the newest *event*
time, so a backfill of last year is read like today — and :func:`read_document` refuses a
window that ends where every partition has already deleted its state.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deskpulse.models.errors import InvalidQuery
from deskpulse.models.events import DIMENSIONS, parse_time
from deskpulse.streams.core import (
    LONGEST,
    OLDEST,
    SEP,
    group_document,
    has_samples,
    split_dim_key,
)
from deskpulse.streams.lifecycle import BACKLOG_FIELDS, WAITING_FIELD
from deskpulse.streams.store import Store
from deskpulse.streams.windows import cover, format_width, parse_width, window_bounds

__all__ = [
    "DIMENSIONS",
    "EARLIEST_S",
    "LATEST_S",
    "KpiQuery",
    "build_document",
    "format_time",
    "group_fields",
    "parse_at",
    "parse_by",
    "parse_query",
    "project_live",
    "query_kpis",
    "read_document",
    "read_live",
    "read_window",
    "read_windows",
    "retained_since",
]


#: The first and last second RFC 3339 can write with its four-digit year
#: (0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z): a window's bounds must lie within.
EARLIEST_S = -62_135_596_800
LATEST_S = 253_402_300_799


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
    """``"channel,queue"`` -> ``["channel", "queue"]``; unknown or repeated names raise
    ValueError (a repeated one is a caller's mistake, and would name a group key twice)."""
    if not text:
        return []
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name not in DIMENSIONS:
            raise ValueError(f"--by takes {', '.join(DIMENSIONS)}; not {name!r}")
        if name in out:
            raise ValueError(f"--by names {name} twice")
        out.append(name)
    return out


@dataclass(frozen=True, slots=True)
class KpiQuery:
    """One read: the window of ``width_s`` ending at the bucket boundary ``end_s``, grouped
    by ``by``. Equal queries read the same buckets: the key of a shared computation."""

    width_s: int
    end_s: int
    by: tuple[str, ...] = ()

    @property
    def start_s(self) -> int:
        return self.end_s - self.width_s


def parse_query(
    window: str | None,
    at: str | None,
    by: str | Sequence[str] | None,
    *,
    bucket_seconds: int,
    retention_s: int,
    max_future_s: int,
    now_s: float,
) -> KpiQuery:
    """The read asked for by ``window``, ``at`` and ``by``, or :class:`InvalidQuery` naming
    the parameter that cannot be served. Pure: nothing is read, ``now_s`` is the clock.

    Refused: a malformed width, one longer than ``retention_s`` (state that old is deleted,
    so such a window could never be whole), a malformed ``at``, a window whose bounds RFC
    3339 cannot write (before year 1, after year 9999), a window that starts more than
    ``max_future_s`` ahead of ``now_s`` (no event so far ahead is ever stored), and unknown
    or repeated ``by`` names. ``window`` defaults to ``1h`` and ``at`` to ``now_s``.
    """
    text = "1h" if window is None else window
    try:
        width_s = parse_width(text, bucket_seconds)
    except ValueError as error:
        raise InvalidQuery("window", str(error).removeprefix("window width ")) from None
    if width_s > retention_s:
        raise InvalidQuery(
            "window",
            f"{text.strip()} is longer than the {format_width(retention_s)} of state kept "
            "(DESKPULSE_RETENTION): a wider window could not be read whole",
        )
    if at:
        try:
            at_s = parse_time(at).timestamp()
        except Exception:  # the parser's own errors and the overflows of odd offsets alike
            hint = " (in a URL, write + as %2B)" if " " in at else ""
            raise InvalidQuery(
                "at",
                f"{at!r} is not an RFC 3339 time with an offset, like 2026-11-23T05:00:00Z{hint}",
            ) from None
    else:
        at_s = now_s
    start_s, end_s = window_bounds(at_s, width_s, bucket_seconds)
    if start_s < EARLIEST_S or end_s > LATEST_S:
        raise InvalidQuery(
            "at",
            f"{at or format_time(now_s)} with a {format_width(width_s)} window reaches "
            "outside the years 1 to "
            "9999, which RFC 3339 cannot write",
        )
    if start_s > now_s + max_future_s:
        # the whole window lies where no event can be: a window that only reaches past the
        # horizon (a board whose clock runs a little ahead) is read, it is not empty
        raise InvalidQuery(
            "at",
            f"{at or format_time(now_s)} with a {format_width(width_s)} window starts more "
            f"than {format_width(max_future_s) if max_future_s else '0s'} "
            f"(DESKPULSE_MAX_FUTURE) ahead of the clock ({format_time(now_s)}); events "
            "further ahead are refused, so nothing is ever stored there",
        )
    try:
        dims = tuple(parse_by(by))
    except ValueError as error:
        raise InvalidQuery("by", str(error).removeprefix("--by ")) from None
    return KpiQuery(width_s=width_s, end_s=end_s, by=dims)


async def retained_since(store: Store) -> tuple[int, int] | None:
    """``(horizon_s, newest_s)``: the oldest event time any partition still keeps state for
    (its newest event time minus retention, the least over partitions) and the newest event
    time of all; ``None`` before the first event. One small read of the partitions' meta."""
    metas = await store.read_meta()
    newest_ms = [int(meta.get("wm", "0")) for meta in metas.values()]
    newest_ms = [ms for ms in newest_ms if ms]  # 0: the partition has no event yet
    if not newest_ms:
        return None
    retention_s = store.config.retention_seconds
    return min(newest_ms) // 1000 - retention_s, max(newest_ms) // 1000


async def read_document(store: Store, query: KpiQuery) -> dict[str, Any]:
    """The KPI document of ``query``; :class:`InvalidQuery` (``at``) for a window that ends
    where every partition has deleted its state (its numbers would all read zero).

    A window reaching only partly past that horizon is read: what is left of it."""
    retained = await retained_since(store)
    if retained is not None and query.end_s <= retained[0]:
        horizon_s, newest_s = retained
        raise InvalidQuery(
            "at",
            f"ends the window at {format_time(query.end_s)}, but state is kept only for event "
            f"times after {format_time(horizon_s)} (DESKPULSE_RETENTION "
            f"{format_width(store.config.retention_seconds)} behind the newest event, "
            f"{format_time(newest_s)})",
        )
    return await query_kpis(store, width_s=query.width_s, at_s=query.end_s, by=query.by)


_LEVEL_FIELDS = (*BACKLOG_FIELDS.values(), WAITING_FIELD)


async def read_live(
    store: Store,
    *,
    end_s: int,
    partitions: Sequence[int] | None = None,
    watermarks_ms: Mapping[int, int] | None = None,
) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per ``(channel, queue, priority)``: the backlog by status and the waiting chats at
    the bucket boundary ``end_s`` (``bl:*``), and the earliest creation of its open tickets
    (:data:`OLDEST`) and request of its waiting chats (:data:`LONGEST`), ms; groups with
    nothing open or waiting are left out.

    The levels are the running sums of every step written less the steps at or after the
    instant, read from the buckets from there on: none for a read of the present (steps are
    dated up to the newest event time, a waiting chat's at most its stale time later), a
    span for a read of the past. The oldest and longest come from the live indexes: the
    first entry of each group's for a partition whose every event is before the instant,
    and otherwise the first entries still open that were open then, and those that left
    since, each checked against its live info in Redis (:data:`~streams.core.INFO`).
    O(partitions x (groups + buckets after the instant)) for the present, plus the
    conversations that left since for a past instant; never O(conversations open).
    """
    cfg = store.config
    if partitions is None:
        partitions = await store.partitions()
    if watermarks_ms is None:
        metas = await store.read_meta()
        watermarks_ms = {p: int(metas.get(p, {}).get("wm", "0")) for p in partitions}
    end_ms = end_s * 1000
    stale_ms = cfg.chat_stale_after_s * 1000
    levels = await store.read_levels(partitions)
    newest_s = max((ms // 1000 for ms in watermarks_ms.values()), default=0)
    # the last step written is at most the stale time after the newest event
    horizon_s = newest_s + cfg.chat_stale_after_s + cfg.bucket_seconds
    horizon_s += -horizon_s % cfg.rollup_seconds
    if end_s < horizon_s:
        rollups, fines = cover(end_s, horizon_s, cfg.bucket_seconds, cfg.rollup_seconds)
        suffixes = [f"r:{s}" for s in rollups] + [f"b:{s}" for s in fines]
        (later,) = await store.sum_buckets(partitions, [suffixes])
        for name, value in later.items():
            if name.endswith(_LEVEL_FIELDS):
                levels[name] -= value
    groups: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for name, value in levels.items():
        if value:
            key, _, field = name.rpartition(SEP)
            groups[split_dim_key(key)][field] = value
    await _add_earliest(store, groups, partitions, watermarks_ms, end_ms, stale_ms)
    return dict(groups)


async def _add_earliest(
    store: Store,
    groups: dict[tuple[str, str, str], dict[str, int]],
    partitions: Sequence[int],
    watermarks_ms: Mapping[int, int],
    end_ms: int,
    stale_ms: int,
) -> None:
    """Set :data:`OLDEST` and :data:`LONGEST` of the groups (see :func:`read_live`)."""
    tickets = [
        SEP.join(dims)
        for dims, fields in groups.items()
        if any(fields.get(name, 0) > 0 for name in BACKLOG_FIELDS.values())
    ]
    chats = [SEP.join(dims) for dims, fields in groups.items() if fields.get(WAITING_FIELD, 0) > 0]
    if not tickets and not chats:
        return
    found = await store.earliest(
        partitions,
        at_ms=end_ms,
        stale_ms=stale_ms,
        ticket_groups=tickets,
        chat_groups=chats,
        newest_ms=watermarks_ms,
    )
    for (kind, group), ms in found.items():
        dims = split_dim_key(group)
        if dims in groups:
            groups[dims][OLDEST if kind == "t" else LONGEST] = ms


def group_fields(
    merged: Mapping[str, int], by: Sequence[str]
) -> dict[tuple[str, ...], dict[str, int]]:
    """Project stored ``channel␟queue␟priority␟field`` sums onto the ``by`` dimensions."""
    positions = [DIMENSIONS.index(name) for name in by]
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    # a few hundred stored groups hold hundreds of thousands of fields: each group's key
    # is split and projected once
    targets: dict[str, dict[str, int]] = {}
    for name, value in merged.items():
        stored, _, field = name.rpartition(SEP)
        target = targets.get(stored)
        if target is None:
            parts = stored.split(SEP)
            key = tuple(parts[i] for i in positions)
            target = targets[stored] = groups.setdefault(key, {})
        target[field] = target.get(field, 0) + value
    return groups


async def query_kpis(
    store: Store,
    *,
    width_s: int,
    at_s: float,
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """The KPI document for the window of ``width_s`` ending at ``at_s`` (docs/kpis.md)."""
    start_s, end_s, merged = await read_window(store, width_s=width_s, at_s=at_s, grouped=bool(by))
    live = await read_live(store, end_s=end_s)
    return build_document(merged, start_s=start_s, end_s=end_s, by=by, live=live)


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


def project_live(
    live: Mapping[tuple[str, str, str], Mapping[str, int]], by: Sequence[str]
) -> dict[tuple[str, ...], dict[str, int]]:
    """:func:`read_live`'s groups projected onto the ``by`` dimensions: levels added, the
    earliest instants the earliest."""
    positions = [DIMENSIONS.index(name) for name in by]
    out: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
    for dims, fields in live.items():
        target = out[tuple(dims[i] for i in positions)]
        for name, value in fields.items():
            if name in (OLDEST, LONGEST):
                if name not in target or value < target[name]:
                    target[name] = value
            else:
                target[name] = target.get(name, 0) + value
    return out


def build_document(
    merged: Mapping[str, int],
    *,
    start_s: int,
    end_s: int,
    by: Sequence[str],
    live: Mapping[tuple[str, str, str], Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Assemble the document from merged bucket fields and the live state at the window's
    end (shared with the snapshot publisher). A group appears when it has a sample in the
    window, or a ticket open or a chat waiting at its end."""
    groups = group_fields(merged, by)
    states = project_live(live or {}, by)
    documents = []
    for key in sorted(set(groups) | set(states)):
        fields = groups.get(key, {})
        state = states.get(key)
        if by and not has_samples(fields) and not state:
            continue
        names = dict(zip(by, key, strict=True))
        documents.append(group_document(names, fields, state, end_s))
    if not by and not documents:
        documents.append(group_document({}, {}, None, end_s))
    return {
        "window": {
            "start": format_time(start_s),
            "end": format_time(end_s),
            "seconds": end_s - start_s,
        },
        "by": list(by),
        "groups": documents,
    }
