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

import asyncio
import sys
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, cast

from deskpulse.models.errors import InvalidQuery
from deskpulse.models.events import DIMENSIONS, parse_time
from deskpulse.streams import agent_kpis
from deskpulse.streams.core import (
    AT_RISK_NOW,
    LONGEST,
    OLDEST,
    PLACES,
    SEP,
    Conversation,
    current_dims,
    document_at,
    group_document,
    has_samples,
    split_dim_key,
)
from deskpulse.streams.lifecycle import BACKLOG_FIELDS, WAITING_FIELD
from deskpulse.streams.presence import LEVEL_FIELDS as PRESENCE_LEVELS
from deskpulse.streams.presence import PRESENCE_PREFIX, presence_document
from deskpulse.streams.sla import SHORT
from deskpulse.streams.store import (
    PRESENCE_FIELDS_MATCH,
    PRESENCE_MATCH,
    FreshBucket,
    FreshKey,
    SortedKeys,
    Store,
)
from deskpulse.streams.windows import cover, format_width, parse_width, window_bounds

__all__ = [
    "AGENT",
    "DIMENSIONS",
    "EARLIEST_S",
    "LATEST_S",
    "MAX_POINTS",
    "MAX_SLA_TICKETS",
    "AgentParts",
    "KpiQuery",
    "SeriesQuery",
    "SlaTicketsQuery",
    "build_document",
    "build_grouped_document",
    "classify_sla_ticket",
    "documents_ahead",
    "format_time",
    "group_fields",
    "parse_at",
    "parse_by",
    "parse_query",
    "parse_series",
    "parse_sla_tickets",
    "per_agent",
    "project_live",
    "query_kpis",
    "read_agent_groups",
    "read_agent_parts",
    "read_agents",
    "read_document",
    "read_grouped_windows",
    "read_live",
    "read_series",
    "read_sla_tickets",
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


#: the grouping by agent: a dimension of its own, never combined with the others
AGENT = "agent"


def parse_by(text: str | Sequence[str] | None) -> list[str]:
    """``"channel,queue"`` -> ``["channel", "queue"]``; unknown or repeated names raise
    ValueError (a repeated one is a caller's mistake, and would name a group key twice),
    and so does ``agent`` with any other name (an agent's fields are kept per agent alone,
    not per agent and queue)."""
    if not text:
        return []
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name not in DIMENSIONS and name != AGENT:
            raise ValueError(f"--by takes {', '.join(DIMENSIONS)} or agent; not {name!r}")
        if name in out:
            raise ValueError(f"--by names {name} twice")
        out.append(name)
    if AGENT in out and len(out) > 1:
        raise ValueError(
            "--by agent cannot be combined with other dimensions (agent's fields are kept "
            "per agent alone); ask for --by agent on its own"
        )
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
    return _retained(store, await store.read_meta())


def _retained(store: Store, metas: Mapping[int, Mapping[str, str]]) -> tuple[int, int] | None:
    """:func:`retained_since` of the partitions' metas."""
    newest_ms = [int(meta.get("wm", "0")) for meta in metas.values()]
    newest_ms = [ms for ms in newest_ms if ms]  # 0: the partition has no event yet
    if not newest_ms:
        return None
    retention_s = store.config.retention_seconds
    return min(newest_ms) // 1000 - retention_s, max(newest_ms) // 1000


async def read_document(store: Store, query: KpiQuery) -> dict[str, Any]:
    """The KPI document of ``query``; :class:`InvalidQuery` (``at``) for a window that ends
    where every partition has deleted its state (its numbers would all read zero).

    A window reaching only partly past that horizon is read: what is left of it. The
    partitions and their newest event times are read once, for the check and the read."""
    metas = await store.read_meta()
    retained = _retained(store, metas)
    if retained is not None and query.end_s <= retained[0]:
        horizon_s, newest_s = retained
        raise InvalidQuery(
            "at",
            f"ends the window at {format_time(query.end_s)}, but state is kept only for event "
            f"times after {format_time(horizon_s)} (DESKPULSE_RETENTION "
            f"{format_width(store.config.retention_seconds)} behind the newest event, "
            f"{format_time(newest_s)})",
        )
    return await query_kpis(
        store,
        width_s=query.width_s,
        at_s=query.end_s,
        by=query.by,
        partitions=list(metas),
        watermarks_ms={p: int(meta.get("wm", "0")) for p, meta in metas.items()},
    )


_LEVEL_FIELDS = (*BACKLOG_FIELDS.values(), WAITING_FIELD)


async def _partitions_and_watermarks(
    store: Store, partitions: Sequence[int] | None, watermarks_ms: Mapping[int, int] | None
) -> tuple[Sequence[int], Mapping[int, int]]:
    """The partitions and their newest event times as given, else read from the store."""
    if partitions is None:
        partitions = await store.partitions()
    if watermarks_ms is None:
        metas = await store.read_meta()
        watermarks_ms = {p: int(metas.get(p, {}).get("wm", "0")) for p in partitions}
    return partitions, watermarks_ms


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
    partitions, watermarks_ms = await _partitions_and_watermarks(store, partitions, watermarks_ms)
    end_ms = end_s * 1000
    stale_ms = cfg.chat_stale_after_s * 1000
    levels = await store.read_levels(partitions)
    horizon_s = _levels_horizon_s(store, watermarks_ms)
    later: Counter[str] = Counter()
    if end_s < horizon_s:
        (later,) = await store.sum_level_steps(
            partitions, [_suffixes(store, end_s, horizon_s, grouped=True)]
        )
    # from the levels and the steps after the instant on, what the last read at the same
    # instant worked out (else the store's last read at another: the present a minute
    # on) is moved along by the names that changed (a refresh and a read of the present
    # find the same levels, or a few groups' moved); the answer too, by the groups whose
    # levels or earliest instants changed
    key = (id(store), store.prefix, end_s)
    kept = _LIVE.get(key)
    if kept is None:
        kept = next((k for (i, p, _), k in reversed(_LIVE.items()) if key[:2] == (i, p)), None)
    kept = _Live.of(levels, later) if kept is None else kept.moved(levels, later)
    _LIVE[key] = kept
    _LIVE.move_to_end(key)
    while len(_LIVE) > LIVE_KEPT:
        _LIVE.popitem(last=False)
    if not kept.tickets and not kept.chats:
        found: dict[tuple[str, str], int] = {}
    else:
        found = await store.earliest(
            partitions,
            at_ms=end_ms,
            stale_ms=stale_ms,
            ticket_groups=list(kept.tickets),
            chat_groups=list(kept.chats),
            newest_ms=watermarks_ms,
        )
    return kept.answer(found)


#: the last :func:`read_live` of a store at an instant, kept (a few instants: a refresh
#: reads the present and its windows' end, the read process the ends it is asked)
LIVE_KEPT = 8


@dataclass(slots=True)
class _Live:
    """What :func:`read_live` worked out at an instant: from the levels and the steps
    after it (kept as read), the levels per group (:func:`_level_groups`) and the groups
    with tickets open and chats waiting; from the earliest instants found besides, the
    answer. Each group's dict is read only: a later read shares those it did not change."""

    levels: Counter[str]
    later: Counter[str]
    groups: dict[tuple[str, str, str], dict[str, int]]
    tickets: set[str]
    chats: set[str]
    found: dict[tuple[str, str], int] | None = None
    live: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, levels: Counter[str], later: Counter[str]) -> _Live:
        groups = dict(_level_groups(levels, later))
        tickets, chats = _open_groups(groups)
        return cls(levels, later, groups, set(tickets), set(chats))

    def moved(self, levels: Counter[str], later: Counter[str]) -> _Live:
        """This one at the levels and steps after the instant read now: the groups whose
        names changed worked out again, the others shared."""
        # (compared as dicts: a Counter compares key by key in Python, many times slower)
        if dict.__eq__(levels, self.levels) is True and dict.__eq__(later, self.later) is True:
            return self
        changed = [n for n in levels.keys() | self.levels.keys() if levels[n] != self.levels[n]]
        changed += [n for n in later.keys() | self.later.keys() if later[n] != self.later[n]]
        groups = dict(self.groups)
        tickets, chats = set(self.tickets), set(self.chats)
        copied: set[tuple[str, str, str]] = set()
        for name in changed:
            if name.startswith(PRESENCE_PREFIX):
                continue  # in no group
            found = _LEVEL_NAMES.get(name)
            if found is None:
                stored, _, field_name = name.rpartition(SEP)
                found = (split_dim_key(stored), field_name)
            dims, field_name = found
            value = levels[name] - (later[name] if name.endswith(_LEVEL_FIELDS) else 0)
            if dims not in copied:
                copied.add(dims)
                groups[dims] = dict(groups.get(dims, _NO_SUMS))
            if value:
                groups[dims][field_name] = value
            else:
                groups[dims].pop(field_name, None)
        for dims in copied:
            fields = groups[dims]
            if not fields:
                del groups[dims]
            group = SEP.join(dims)
            tickets.discard(group)
            chats.discard(group)
            open_tickets, waiting = _open_groups({dims: fields})
            tickets.update(open_tickets)
            chats.update(waiting)
        moved = _Live(levels, later, groups, tickets, chats)
        # the answer of the groups that did not change holds while their instants do
        moved.found, moved.live = (
            self.found,
            {dims: fields for dims, fields in self.live.items() if dims not in copied},
        )
        return moved

    def answer(
        self, found: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str, str], dict[str, int]]:
        """The groups' levels with their earliest instants ``found`` (the last answer when
        neither changed)."""
        if self.found is not None and found == self.found and len(self.live) == len(self.groups):
            return self.live
        earlier = self.found or {}
        moved = {group for _, group in found.keys() ^ earlier.keys()}
        moved.update(key[1] for key, ms in found.items() if earlier.get(key, ms) != ms)
        live: dict[tuple[str, str, str], dict[str, int]] = {}
        kept = self.live
        for dims, fields in self.groups.items():
            held = kept.get(dims)
            group = SEP.join(dims)
            if held is not None and group not in moved:
                live[dims] = held
                continue
            oldest, longest = found.get(("t", group)), found.get(("c", group))
            if oldest is None and longest is None:
                live[dims] = fields
            else:
                live[dims] = with_earliest = dict(fields)
                if oldest is not None:
                    with_earliest[OLDEST] = oldest
                if longest is not None:
                    with_earliest[LONGEST] = longest
        self.found, self.live = found, live
        return live


_LIVE: OrderedDict[tuple[int, str, int], _Live] = OrderedDict()


def _levels_horizon_s(store: Store, watermarks_ms: Mapping[int, int]) -> int:
    """The rollup boundary after the last level step written: at most the stale time after
    the newest event."""
    cfg = store.config
    newest_s = max((ms // 1000 for ms in watermarks_ms.values()), default=0)
    horizon_s = newest_s + cfg.chat_stale_after_s + cfg.bucket_seconds
    return horizon_s + -horizon_s % cfg.rollup_seconds


def _suffixes(store: Store, start_s: int, end_s: int, *, grouped: bool) -> list[str]:
    """The bucket key suffixes covering ``[start_s, end_s)``, fewest buckets."""
    cfg = store.config
    fine_level, rollup_level = ("b", "r") if grouped else ("B", "R")
    rollups, fines = cover(start_s, end_s, cfg.bucket_seconds, cfg.rollup_seconds)
    return [f"{rollup_level}:{s}" for s in rollups] + [f"{fine_level}:{s}" for s in fines]


def _level_groups(
    levels: Mapping[str, int], later: Mapping[str, int]
) -> dict[tuple[str, str, str], dict[str, int]]:
    """The levels less the steps written at or after the instant, per group (a group with
    every level at zero is left out)."""
    now = Counter(levels)
    for name, value in later.items():
        if name.endswith(_LEVEL_FIELDS):
            now[name] -= value
    groups: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    split = _LEVEL_NAMES
    if len(split) > LEVEL_NAMES_KEPT:
        split.clear()
    for name, value in now.items():
        # the agents' presence levels belong to no group (read_presence reads them)
        if value and not name.startswith(PRESENCE_PREFIX):
            found = split.get(name)
            if found is None:
                key, _, field = name.rpartition(SEP)
                found = split[name] = (split_dim_key(key), field)
            groups[found[0]][found[1]] = value
    return groups


#: level names split into group and field, kept: every read of the backlog splits the
#: same names (6,000 groups have some 20,000; splitting them was a sixth of a grouped 24 h
#: read's CPU), at most this many (about 200 bytes each)
LEVEL_NAMES_KEPT = 200_000
_LEVEL_NAMES: dict[str, tuple[tuple[str, str, str], str]] = {}


def _open_groups(
    groups: Mapping[tuple[str, str, str], Mapping[str, int]],
) -> tuple[list[str], list[str]]:
    """The group keys with tickets open, and with chats waiting."""
    backlog = _BACKLOG_NAMES
    tickets: list[str] = []
    chats: list[str] = []
    for dims, fields in groups.items():
        get = fields.get
        for name in backlog:
            if get(name, 0) > 0:
                tickets.append(SEP.join(dims))
                break
        if get(WAITING_FIELD, 0) > 0:
            chats.append(SEP.join(dims))
    return tickets, chats


_BACKLOG_NAMES = tuple(BACKLOG_FIELDS.values())


def _set_earliest(
    groups: dict[tuple[str, str, str], dict[str, int]], found: Mapping[tuple[str, str], int]
) -> None:
    known = _GROUP_DIMS
    if len(known) > GROUP_DIMS_KEPT:
        known.clear()
    for (kind, group), ms in found.items():
        dims = known.get(group)
        if dims is None:
            dims = known[group] = split_dim_key(group)
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
        # one string per field name, not one per group: thousands of groups hold the same
        # few hundred names
        field = sys.intern(field)
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
    partitions: Sequence[int] | None = None,
    watermarks_ms: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """The KPI document for the window of ``width_s`` ending at ``at_s`` (docs/kpis.md),
    over ``partitions`` with their newest event times ``watermarks_ms`` when the caller
    read them (else read here).

    By group, a group whose sums and live state are those of the last read of the same
    width and grouping keeps the document built then (its ages moved to the new end):
    a read builds the documents of the groups that changed, not of every group."""
    partitions, watermarks_ms = await _partitions_and_watermarks(store, partitions, watermarks_ms)
    if tuple(by) == (AGENT,):
        ((start_s, end_s, agents),) = await read_agent_groups(
            store,
            widths_s=[width_s],
            at_s=at_s,
            partitions=partitions,
            watermarks_ms=watermarks_ms,
        )
        return {
            "window": {
                "start": format_time(start_s),
                "end": format_time(end_s),
                "seconds": end_s - start_s,
            },
            "by": [AGENT],
            "groups": agents,
        }
    if not by:
        start_s, end_s, merged = await read_window(
            store, width_s=width_s, at_s=at_s, partitions=partitions, grouped=False
        )
        live = await read_live(
            store, end_s=end_s, partitions=partitions, watermarks_ms=watermarks_ms
        )
        document = build_document(merged, start_s=start_s, end_s=end_s, by=by, live=live)
        # the agents' presence is kept over all groups: the one group without `by` has it
        (document["groups"][0]["agents"],) = await read_agents(
            store, [(start_s, end_s)], partitions=partitions, watermarks_ms=watermarks_ms
        )
        return document
    ((start_s, end_s, groups),) = await read_grouped_windows(
        store, widths_s=[width_s], at_s=at_s, by=by, partitions=partitions
    )
    live = await read_live(store, end_s=end_s, partitions=partitions, watermarks_ms=watermarks_ms)
    slot = _slot(store, tuple(by), width_s)
    return build_grouped_document(
        groups,
        start_s=start_s,
        end_s=end_s,
        by=by,
        live=live,
        documents=slot.documents,
        ahead=slot.ahead,
        order=slot.order,
    )


def documents_ahead(
    store: Store, by: Sequence[str], width_s: int, end_s: int
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each group document the last grouped read of ``width_s`` by ``by`` kept, worked out
    at the later end ``end_s`` (:func:`~streams.core.document_at`: its ages moved), ahead
    of the read of that end: ``(kept document, document at end_s)`` for each with an age,
    not worked out before for that end. The read of ``end_s`` takes such a document where
    the group's sums and live state are those it was built from, as it would have worked
    it out itself.

    A read whose end crosses a minute moves the ages of every group with a ticket open or
    a chat waiting (4,100 of 6,000 groups in the benchmark: most of that read's time); the
    read process works them out while it waits for reads, in the seconds before. A
    generator, so its caller can stop between two groups; reads meanwhile are no harm (a
    group they built anew is not taken from here, its kept document being another)."""
    slot = _SLOTS.get((id(store), store.prefix, tuple(by), width_s))
    if slot is None:
        return
    ahead = slot.ahead
    for key, (_, state, built_end_s, document) in list(slot.documents.items()):
        if built_end_s >= end_s:
            continue
        held = ahead.get(key)
        if held is not None and held[0] is document and held[1] == end_s:
            continue
        moved = document_at(document, state, end_s)
        if moved is document:  # no age: the read takes the kept document as it is
            continue
        ahead[key] = (document, end_s, moved)
        yield document, moved


#: fields of grouped settled sums and documents the grouped reads keep at most, over every
#: store, width and grouping (a 24 h window by channel, queue and priority over 6,000
#: groups: 150,000 fields and 6,000 documents); the least recently read let go first
GROUPED_KEPT = 600_000
#: the fields a kept group document counts as
_DOCUMENT_WEIGHT = 40


#: a group's document with what it was built from: its fields, live state and end
_Built = tuple[Mapping[str, int], Mapping[str, int] | None, int, dict[str, Any]]
#: a kept document, a later end and the document at that end (:func:`documents_ahead`)
_Ahead = tuple[dict[str, Any], int, dict[str, Any]]


@dataclass(slots=True)
class _Slot:
    """What the grouped reads of one width and grouping keep from their last read: the
    settled sum the store handed out with its projection onto the groups (derived again
    only when the store hands out another, or moved along with it), the newest buckets
    the store handed out with theirs (each derived again only when the store hands out
    another), the groups those made, and each group's document with what it was built
    from (fields, live state, end)."""

    source: Mapping[str, int] | None = None
    projected: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    buckets: dict[FreshKey, tuple[FreshBucket, dict[tuple[str, ...], dict[str, int]]]] = field(
        default_factory=dict
    )
    groups: dict[tuple[str, ...], dict[str, int]] | None = None
    documents: dict[tuple[str, ...], _Built] = field(default_factory=dict)
    #: group key -> a kept document, a later end and the document at that end (its ages
    #: moved), worked out ahead of the read of that end (:func:`documents_ahead`)
    ahead: dict[tuple[str, ...], _Ahead] = field(default_factory=dict)
    #: the groups' sorted order (the document's), kept from one read to the next
    order: SortedKeys[tuple[str, ...]] = field(default_factory=SortedKeys)

    @property
    def weight(self) -> int:
        # (the groups' dicts are the projections' own, but for the groups several add to)
        return len(self.source or ()) + _DOCUMENT_WEIGHT * (len(self.documents) + len(self.ahead))


_SlotKey = tuple[int, str, tuple[str, ...], int]
_SLOTS: OrderedDict[_SlotKey, _Slot] = OrderedDict()


def _slot(store: Store, by: tuple[str, ...], width_s: int) -> _Slot:
    """The slot of ``store``'s reads of ``width_s`` by ``by`` (made when missing), moved
    to the most recently read; the least recently read let go past :data:`GROUPED_KEPT`."""
    # (a store made where a dead one was may find its slot: what a slot holds is checked
    # before use, the sum by identity, a document by what it was built from)
    key = (id(store), store.prefix, by, width_s)
    slot = _SLOTS.get(key)
    if slot is None:
        slot = _SLOTS[key] = _Slot()
    _SLOTS.move_to_end(key)
    total = sum(s.weight for s in _SLOTS.values())
    while total > GROUPED_KEPT and len(_SLOTS) > 1:
        _, dropped = _SLOTS.popitem(last=False)
        total -= dropped.weight
    return slot


async def read_grouped_windows(
    store: Store,
    *,
    widths_s: Sequence[int],
    at_s: float,
    by: Sequence[str],
    partitions: Sequence[int] | None = None,
) -> list[tuple[int, int, dict[tuple[str, ...], dict[str, int]]]]:
    """:func:`read_windows` by group: per width, ``(start, end, groups)``, the fields of
    each group projected onto ``by``.

    The sum of a window's settled buckets is projected once while the store keeps it
    (:meth:`~streams.store.Store.bucket_parts_by_group` hands out the same sum), and moved
    along when the store moved the sum along; each of the newest buckets likewise while
    its stamp holds. A read adds up again only the groups whose parts changed: the rest
    keep the dicts of the last read (the groups themselves too when nothing changed),
    which readers of them (the documents, the refresh's families) recognise by identity.
    Read only: the dicts are shared with later reads and with the store."""
    cfg = store.config
    bounds: list[tuple[int, int]] = []
    sets: list[list[str]] = []
    for width_s in widths_s:
        start_s, end_s = window_bounds(at_s, width_s, cfg.bucket_seconds)
        bounds.append((start_s, end_s))
        sets.append(_suffixes(store, start_s, end_s, grouped=True))
    if partitions is None:
        partitions = await store.partitions()
    parts = await store.bucket_parts_by_group(partitions, sets)
    out = []
    key = tuple(by)
    for width_s, (start_s, end_s), (kept, buckets) in zip(widths_s, bounds, parts, strict=True):
        slot = _slot(store, key, width_s)
        # the groups whose parts changed since the last read; None: any may have
        touched: set[tuple[str, ...]] | None = set()
        if kept is None:
            if slot.projected:
                touched = None
            slot.source, slot.projected = None, {}
        elif slot.source is not kept:
            move = store.take_move(kept)
            if move is not None and slot.source is not None and move[0] is slot.source:
                slot.projected, touched = _moved_groups(slot.projected, move[1], key)
                _move_in(slot, move[2], key, touched)
            else:
                slot.projected, touched = group_fields(kept, key), None
            slot.source = kept
        earlier, slot.buckets = slot.buckets, {}
        for bucket_key, bucket in buckets:
            held = earlier.pop(bucket_key, None)
            if held is None or held[0] is not bucket:
                projection = _project_bucket(bucket, key)
                if touched is not None:
                    touched.update(_differing(held[1] if held else {}, projection))
                held = (bucket, projection)
            slot.buckets[bucket_key] = held
        if touched is not None:
            for _, gone in earlier.values():  # buckets the window no longer reads apart
                touched.update(gone)
        out.append((start_s, end_s, _combine(slot, touched)))
    return out


def _differing(
    old: Mapping[tuple[str, ...], Mapping[str, int]],
    new: Mapping[tuple[str, ...], Mapping[str, int]],
) -> list[tuple[str, ...]]:
    """The groups whose fields differ between two projections of a bucket."""
    return [key for key in old.keys() | new.keys() if old.get(key) != new.get(key)]


def _combine(
    slot: _Slot, touched: set[tuple[str, ...]] | None
) -> dict[tuple[str, ...], dict[str, int]]:
    """The slot's groups: its settled projection plus its buckets', group by group. With
    ``touched`` (the groups whose parts changed since the slot's last groups), only those
    are added up again; a group that adds up to what it held keeps its dict."""
    previous = slot.groups
    projected = slot.projected
    projections = [projection for _, projection in slot.buckets.values()]
    if previous is not None and touched is not None:
        if not touched:
            return previous
        groups = dict(previous)
        for key in touched:
            base = projected.get(key)
            fields = _sum_fields(
                ([base] if base is not None else [])
                + [f for p in projections if (f := p.get(key)) is not None]
            )
            if fields is None:
                groups.pop(key, None)
            else:
                held = previous.get(key)
                groups[key] = (
                    held if held is not None and (held is fields or held == fields) else fields
                )
    else:
        extra: dict[tuple[str, ...], list[dict[str, int]]] = {}
        for projection in projections:
            for key, fields in projection.items():
                extra.setdefault(key, []).append(fields)
        groups = dict(projected)
        for key, more in extra.items():
            base = projected.get(key)
            groups[key] = _sum_fields([base, *more] if base is not None else more)  # type: ignore[assignment]
        if previous:
            for key, fields in groups.items():
                held = previous.get(key)
                if held is not None and held is not fields and held == fields:
                    groups[key] = held
    slot.groups = groups
    return groups


def _sum_fields(parts: Sequence[dict[str, int]]) -> dict[str, int] | None:
    """The fields of ``parts`` added up: the one part itself when there is one (read
    only), None for none."""
    if len(parts) <= 1:
        return parts[0] if parts else None
    total = dict(parts[0])
    get = total.get
    for part in parts[1:]:
        for name, value in part.items():
            total[name] = get(name, 0) + value
    return total


def _project_bucket(
    bucket: FreshBucket, by: tuple[str, ...]
) -> dict[tuple[str, ...], dict[str, int]]:
    """A bucket split by stored group projected onto ``by``: by every dimension, each
    group's own fields (the store's dicts, read only)."""
    dims = _GROUP_DIMS
    if len(dims) > GROUP_DIMS_KEPT:
        dims.clear()
    if by == DIMENSIONS:
        out: dict[tuple[str, ...], dict[str, int]] = {}
        for stored, fields in bucket.items():
            key = dims.get(stored)
            if key is None:
                key = dims[stored] = split_dim_key(stored)
            out[key] = fields
        return out
    positions = [DIMENSIONS.index(name) for name in by]
    projected: dict[tuple[str, ...], dict[str, int]] = {}
    for stored, fields in bucket.items():
        parts = stored.split(SEP)
        target = projected.setdefault(tuple(parts[i] for i in positions), {})
        get = target.get
        for name, value in fields.items():
            target[name] = get(name, 0) + value
    return projected


def _move_in(
    slot: _Slot,
    entered: Sequence[tuple[FreshKey, FreshBucket]],
    by: tuple[str, ...],
    touched: set[tuple[str, ...]],
) -> None:
    """Move ``slot``'s settled projection (already moved by the change read) along by the
    buckets that left the newest and ``entered`` the settled sum, each taken out of the
    slot's newest buckets. One the slot holds projected (the very bucket) adds its
    projection, and its groups add up as before (a group's parts moved from one to the
    other): they are not ``touched``, but for a group that lost a field (one ending at
    zero is left out of the projection, not of a bucket's). Any other is projected and
    its groups touched."""
    projected = slot.projected
    for bucket_key, bucket in entered:
        held = slot.buckets.get(bucket_key)
        if held is not None and held[0] is bucket:
            del slot.buckets[bucket_key]
            projection, quiet = held[1], True
        else:
            projection, quiet = _project_bucket(bucket, by), False
        for group, fields in projection.items():
            base = projected.get(group)
            if base is None:
                lost = 0 in fields.values()
                total = {name: value for name, value in fields.items() if value} if lost else fields
            else:
                total = dict(base)
                get = total.get
                lost = False
                for name, value in fields.items():
                    if not (added := get(name, 0) + value):
                        lost = True
                    total[name] = added
                if lost:
                    total = {name: value for name, value in total.items() if value}
            if lost or not quiet:
                touched.add(group)
            if total:
                projected[group] = total
            else:
                projected.pop(group, None)


def _moved_groups(
    projected: Mapping[tuple[str, ...], dict[str, int]],
    change: Mapping[str, int],
    by: tuple[str, ...],
) -> tuple[dict[tuple[str, ...], dict[str, int]], set[tuple[str, ...]]]:
    """``projected`` (:func:`group_fields` of a settled sum) moved along by ``change``
    (stored name -> amount, :meth:`~streams.store.Store.take_move`), and the groups it
    touched: those are new dicts, the others ``projected``'s own. A field that ends at
    zero is left out, and a group left with none (zero and missing read alike)."""
    positions = [DIMENSIONS.index(name) for name in by]
    out = dict(projected)
    copies: dict[tuple[str, ...], dict[str, int]] = {}
    stored_keys: dict[str, tuple[str, ...]] = {}
    for name, amount in change.items():
        stored, _, field_name = name.rpartition(SEP)
        key = stored_keys.get(stored)
        if key is None:
            parts = stored.split(SEP)
            key = stored_keys[stored] = tuple(parts[i] for i in positions)
        target = copies.get(key)
        if target is None:
            target = copies[key] = dict(projected.get(key, {}))
        total = target.get(field_name, 0) + amount
        if total:
            target[sys.intern(field_name)] = total
        else:
            target.pop(field_name, None)
    for key, fields in copies.items():
        if fields:
            out[key] = fields
        else:
            out.pop(key, None)
    return out, set(copies)


#: stored group keys split into their dimensions, kept: every read of the newest buckets
#: and of the earliest open tickets and waiting chats splits the same keys (6,000 groups),
#: at most this many
GROUP_DIMS_KEPT = 100_000
_GROUP_DIMS: dict[str, tuple[str, str, str]] = {}


async def read_agents(
    store: Store,
    windows: Sequence[tuple[int, int]],
    *,
    partitions: Sequence[int] | None = None,
    watermarks_ms: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The ``agents`` object of each window ``(start_s, end_s)`` (bucket boundaries): the
    agents by status at its end and the occupancy over it (:mod:`streams.presence`).

    The presence levels (``ag:<status>``) less the steps at or after each end, read from
    the all-groups buckets up to a retention past the newest event (an agent's last
    status is stepped out that long after it), and the presence fields of the window's
    all-groups buckets; both picked out of the buckets by Redis (:meth:`Store.
    sum_level_steps`), each bucket read again only once a commit changed it.
    """
    cfg = store.config
    partitions, watermarks_ms = await _partitions_and_watermarks(store, partitions, watermarks_ms)
    levels = await store.read_levels(partitions)
    newest_s = max((ms // 1000 for ms in watermarks_ms.values()), default=0)
    horizon_s = newest_s + cfg.retention_seconds + cfg.bucket_seconds
    horizon_s += -horizon_s % cfg.rollup_seconds
    ends = sorted({end_s for _, end_s in windows})
    later = await store.sum_level_steps(
        partitions,
        [_suffixes(store, end_s, max(end_s, horizon_s), grouped=False) for end_s in ends],
        match=PRESENCE_MATCH,
    )
    sums = await store.sum_level_steps(
        partitions,
        [_suffixes(store, start_s, end_s, grouped=False) for start_s, end_s in windows],
        match=PRESENCE_FIELDS_MATCH,
    )
    at_end = {
        end_s: {name: levels.get(name, 0) - steps.get(name, 0) for name in PRESENCE_LEVELS.values()}
        for end_s, steps in zip(ends, later, strict=True)
    }
    return [
        presence_document(at_end[end_s], window, start_s, end_s)
        for (start_s, end_s), window in zip(windows, sums, strict=True)
    ]


#: an agent's own presence fields in the agent buckets: its level steps
_AGENT_STEPS_MATCH = "*" + SEP + PRESENCE_MATCH


@dataclass(frozen=True)
class AgentParts:
    """What a read by agent needs of the store for some windows (:func:`read_agent_parts`)."""

    #: per window, in the order asked: the settled part of its agent buckets summed (the
    #: very dict the store keeps, or None) and the rest summed, both keyed ``agent␟field``
    parts: list[tuple[Mapping[str, int] | None, dict[str, int]]]
    #: each agent's own presence levels now (``ag:<code>`` -> level), nonzero ones
    own: dict[str, dict[str, int]]
    #: per window end: each agent's presence steps at or after it, up to a retention past
    #: the newest event (what the levels now less these make the levels at that end)
    steps_after: dict[int, dict[str, dict[str, int]]]


async def read_agent_parts(
    store: Store,
    bounds: Sequence[tuple[int, int]],
    *,
    partitions: Sequence[int] | None = None,
    watermarks_ms: Mapping[int, int] | None = None,
) -> AgentParts:
    """The agent buckets (``a:``/``A:``) of the windows ``bounds`` (``(start, end)``
    each) summed, the agents' own levels and their steps after each end: what
    :func:`read_agent_groups` builds its documents from, and what the KPI topic's
    publisher reads at its own pass."""
    cfg = store.config
    partitions, watermarks_ms = await _partitions_and_watermarks(store, partitions, watermarks_ms)
    sets = [_agent_suffixes(store, start_s, end_s) for start_s, end_s in bounds]
    parts = await store.sum_bucket_parts(partitions, sets)
    levels = await store.read_levels(partitions)
    newest_s = max((ms // 1000 for ms in watermarks_ms.values()), default=0)
    horizon_s = newest_s + cfg.retention_seconds + cfg.bucket_seconds
    horizon_s += -horizon_s % cfg.rollup_seconds
    ends = sorted({end_s for _, end_s in bounds})
    later = await store.sum_level_steps(
        partitions,
        [_agent_suffixes(store, end_s, max(end_s, horizon_s)) for end_s in ends],
        match=_AGENT_STEPS_MATCH,
    )
    own: dict[str, dict[str, int]] = {}
    for name, value in levels.items():
        if value and name.startswith(agent_kpis.LEVEL_PREFIX):
            agent, _, field_name = name[len(agent_kpis.LEVEL_PREFIX) :].rpartition(SEP)
            own.setdefault(agent, {})[field_name] = value
    steps_after = {end_s: per_agent(steps) for end_s, steps in zip(ends, later, strict=True)}
    return AgentParts(parts, own, steps_after)


async def read_agent_groups(
    store: Store,
    *,
    widths_s: Sequence[int],
    at_s: float,
    partitions: Sequence[int] | None = None,
    watermarks_ms: Mapping[int, int] | None = None,
) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """Per width, ``(start, end, groups)``: the groups of the document grouped by agent
    (:func:`~streams.agent_kpis.agent_document`), in agent order, over the window of that
    width ending at ``at_s``.

    An agent's fields are read from the agent buckets alone (``a:``/``A:``, keyed
    ``agent␟field``), the settled part of a window summed once while the store keeps it;
    its status at the end is its own levels (``ag@agent␟ag:<code>``) less its steps at or
    after the end, picked out of the agent buckets by Redis up to a retention past the
    newest event, like the presence over all groups (:func:`read_agents`). An agent
    appears with a sample in the window, a status at its end, or time in a status in it.
    """
    cfg = store.config
    bounds = [window_bounds(at_s, width_s, cfg.bucket_seconds) for width_s in widths_s]
    read = await read_agent_parts(store, bounds, partitions=partitions, watermarks_ms=watermarks_ms)
    own = read.own
    out = []
    for width_s, (start_s, end_s), (kept, rest) in zip(widths_s, bounds, read.parts, strict=True):
        slot = _agent_slot(store, width_s)
        # the settled sum is split per agent once while the store hands out the same one,
        # and moved along by what changed when the store moved it along (a window ending
        # a minute later: the buckets that left and entered); an agent the change and the
        # newest buckets do not touch keeps its dicts (read only), and with them its body
        if kept is None:
            slot.source, slot.projected = None, {}
        elif slot.source is not kept:
            move = store.take_move(kept)
            if move is not None and slot.source is not None and move[0] is slot.source:
                slot.projected = _moved_agents(slot.projected, move[1])
            else:
                slot.projected = _split_agents(kept)
            slot.source = kept
        fields = _moved_agents(slot.projected, rest) if rest else slot.projected
        steps = read.steps_after[end_s]
        earlier = slot.documents
        built: dict[str, _AgentBuilt] = {}
        groups = []
        for agent in sorted(set(fields) | set(own) | set(steps)):
            at_end = dict(own.get(agent, _NONE))
            for name, value in steps.get(agent, _NONE).items():
                at_end[name] = at_end.get(name, 0) - value
            counts, sketches, window = fields.get(agent, _NO_FIELDS)
            presence_part = agent_kpis.presence_of(at_end, window, start_s, end_s)
            held = earlier.get(agent)
            # the same fields: the very dicts, or equal ones (an agent the newest buckets
            # touch has new dicts at every read, but mostly the same sums)
            if held is not None and (
                (held[0] is counts and held[1] is sketches)
                or (held[0] == counts and held[1] == sketches)
            ):
                _, _, samples, body, document = held
                if document["presence"] != presence_part:
                    document = {**body, "presence": presence_part}
            else:
                samples = agent_kpis.has_agent_samples(counts)
                body = agent_kpis.body_of(agent, counts, sketches)
                document = {**body, "presence": presence_part}
            if (
                not samples
                and presence_part["status"] is None
                and presence_part["occupancy_ratio"] is None
            ):
                continue
            built[agent] = (counts, sketches, samples, body, document)
            groups.append(document)
        slot.documents = built
        out.append((start_s, end_s, groups))
    return out


#: an agent's fields split in three: its counts and sums, its sketches (``fr_sk:`` ... ->
#: index -> count) and its presence fields (``ag…``)
_Split = tuple[dict[str, int], dict[str, dict[int, int]], dict[str, int]]
#: what a read by agent kept of an agent's group: its counts and sketches (the very
#: dicts), whether they hold a sample, the group but its presence, and the group
_AgentBuilt = tuple[dict[str, int], dict[str, dict[int, int]], bool, dict[str, Any], dict[str, Any]]
#: no fields (read only)
_NONE: dict[str, int] = {}
_NO_FIELDS: _Split = ({}, {}, {})


@dataclass(slots=True)
class _AgentSlot:
    """What the reads by agent of one width keep from their last read: the settled sum
    the store handed out with its split per agent, and each agent's group with the KPI
    fields (the very dict) it was built from."""

    source: Mapping[str, int] | None = None
    projected: dict[str, _Split] = field(default_factory=dict)
    documents: dict[str, _AgentBuilt] = field(default_factory=dict)


#: the slots of the reads by agent, per store and width (a few widths per deployment: the
#: configured windows and what boards ask for); the least recently read let go past this
_AGENT_SLOTS_KEPT = 16
_AGENT_SLOTS: OrderedDict[tuple[int, str, int], _AgentSlot] = OrderedDict()


def _agent_slot(store: Store, width_s: int) -> _AgentSlot:
    key = (id(store), store.prefix, width_s)
    slot = _AGENT_SLOTS.get(key)
    if slot is None:
        slot = _AGENT_SLOTS[key] = _AgentSlot()
    _AGENT_SLOTS.move_to_end(key)
    while len(_AGENT_SLOTS) > _AGENT_SLOTS_KEPT:
        _AGENT_SLOTS.popitem(last=False)
    return slot


def _agent_suffixes(store: Store, start_s: int, end_s: int) -> list[str]:
    """The agent bucket key suffixes covering ``[start_s, end_s)``, fewest buckets."""
    cfg = store.config
    rollups, fines = cover(start_s, end_s, cfg.bucket_seconds, cfg.rollup_seconds)
    return [f"{agent_kpis.ROLLUP}:{s}" for s in rollups] + [f"{agent_kpis.FINE}:{s}" for s in fines]


def _split_agents(merged: Mapping[str, int]) -> dict[str, _Split]:
    """Stored ``agent␟field`` sums, per agent: its counts and sums, its sketches and its
    presence fields (:data:`_Split`)."""
    out: dict[str, _Split] = {}
    presence_prefix = PRESENCE_PREFIX
    sketch_of = agent_kpis.sketch_of
    for name, value in merged.items():
        agent, _, field_name = name.rpartition(SEP)
        entry = out.get(agent)
        if entry is None:
            entry = out[agent] = ({}, {}, {})
        found = sketch_of(field_name)
        if found is not None:
            held = entry[1].get(found[0])
            if held is None:
                held = entry[1][found[0]] = {}
            held[found[1]] = held.get(found[1], 0) + value
        else:
            target = entry[2] if field_name.startswith(presence_prefix) else entry[0]
            target[field_name] = target.get(field_name, 0) + value
    return out


def _moved_agents(base: Mapping[str, _Split], change: Mapping[str, int]) -> dict[str, _Split]:
    """``base`` (per agent, read only) plus ``change`` (stored ``agent␟field`` amounts): an
    agent's dict that ``change`` does not touch is ``base``'s own (its counts, its
    presence, its sketches and each sketch), one it touches a new one; a field that ends
    at zero is left out, and so are a sketch and an agent left with none."""
    out = dict(base)
    #: (agent, part) made here, free to change: "c" its counts, "p" its presence, "s" its
    #: dict of sketches, a sketch's prefix that sketch
    owned: set[tuple[str, str]] = set()
    presence_prefix = PRESENCE_PREFIX
    sketch_of = agent_kpis.sketch_of
    for name, value in change.items():
        if not value:
            continue
        agent, _, field_name = name.rpartition(SEP)
        entry = out.get(agent)
        if entry is None:
            entry = out[agent] = ({}, {}, {})
            owned.update(((agent, "c"), (agent, "p"), (agent, "s")))
        found = sketch_of(field_name)
        if found is not None:
            prefix, index = found
            if (agent, "s") not in owned:
                entry = out[agent] = (entry[0], dict(entry[1]), entry[2])
                owned.add((agent, "s"))
            sketches = entry[1]
            held = sketches.get(prefix)
            if held is None:
                held = sketches[prefix] = {}
                owned.add((agent, prefix))
            elif (agent, prefix) not in owned:
                held = sketches[prefix] = dict(held)
                owned.add((agent, prefix))
            total = held.get(index, 0) + value
            if total:
                held[index] = total
            else:
                held.pop(index, None)
                if not held:
                    del sketches[prefix]
            continue
        is_presence = field_name.startswith(presence_prefix)
        part = "p" if is_presence else "c"
        if (agent, part) not in owned:
            if is_presence:
                entry = out[agent] = (entry[0], entry[1], dict(entry[2]))
            else:
                entry = out[agent] = (dict(entry[0]), entry[1], entry[2])
            owned.add((agent, part))
        target = entry[2] if is_presence else entry[0]
        total = target.get(field_name, 0) + value
        if total:
            target[field_name] = total
        else:
            target.pop(field_name, None)
    for agent in {agent for agent, _ in owned}:
        entry = out[agent]
        if not entry[0] and not entry[1] and not entry[2]:
            del out[agent]
    return out


def per_agent(merged: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Stored ``agent␟field`` sums, per agent."""
    out: dict[str, dict[str, int]] = {}
    for name, value in merged.items():
        agent, _, field_name = name.rpartition(SEP)
        target = out.get(agent)
        if target is None:
            target = out[agent] = {}
        target[field_name] = target.get(field_name, 0) + value
    return out


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
    return build_grouped_document(
        group_fields(merged, by), start_s=start_s, end_s=end_s, by=by, live=live
    )


def build_grouped_document(
    groups: Mapping[tuple[str, ...], Mapping[str, int]],
    *,
    start_s: int,
    end_s: int,
    by: Sequence[str],
    live: Mapping[tuple[str, str, str], Mapping[str, int]] | None = None,
    documents: dict[tuple[str, ...], _Built] | None = None,
    ahead: dict[tuple[str, ...], _Ahead] | None = None,
    order: SortedKeys[tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """:func:`build_document` from fields already projected onto ``by``. With
    ``documents`` (a group key -> the fields, live state and end its document was built
    from, and the document), a group whose fields and live state are those kept takes the
    kept document (:func:`~streams.core.document_at` its end: from ``ahead`` when
    :func:`documents_ahead` worked it out for this end from that document), and
    ``documents`` is left holding this read's groups (``ahead`` what is still ahead).
    ``order`` keeps the groups' sorted order from one read to the next."""
    # by every dimension, each group's live state is its own (read only)
    states: Mapping[tuple[str, ...], Mapping[str, int]] = (
        cast(Mapping[tuple[str, ...], Mapping[str, int]], live or {})
        if tuple(by) == DIMENSIONS
        else project_live(live or {}, by)
    )
    earlier = dict(documents) if documents is not None else {}
    if documents is not None:
        documents.clear()
    built = []
    keys = set(groups)
    keys.update(states)
    for key in order.of(keys) if order is not None else sorted(keys):
        fields = groups.get(key, _NO_SUMS)
        state = states.get(key)
        held = earlier.get(key)
        # a group kept with the very fields dict (a read that found its parts unchanged)
        # and the same state was in the document then, and is now
        if held is not None and held[0] is fields and held[1] == state:
            document = _at_end(held, end_s, key, ahead)
        elif by and not has_samples(fields) and not state:
            continue
        elif held is not None and _same_sums(held[0], fields) and held[1] == state:
            document = _at_end(held, end_s, key, ahead)
        else:
            names = dict(zip(by, key, strict=True))
            document = group_document(names, fields, state, end_s)
        if documents is not None:
            documents[key] = (fields, state, end_s, document)
        built.append(document)
    if ahead:  # what was worked out for this end or one before is of no further use
        for key in [k for k, (_, ahead_end_s, _) in ahead.items() if ahead_end_s <= end_s]:
            del ahead[key]
    documents_list = built
    if not by and not documents_list:
        documents_list.append(group_document({}, {}, None, end_s))
    return {
        "window": {
            "start": format_time(start_s),
            "end": format_time(end_s),
            "seconds": end_s - start_s,
        },
        "by": list(by),
        "groups": documents_list,
    }


def _at_end(
    built: _Built, end_s: int, key: tuple[str, ...], ahead: dict[tuple[str, ...], _Ahead] | None
) -> dict[str, Any]:
    """The document ``built`` for group ``key``, at ``end_s``: as it is for the same end,
    else the one worked out ``ahead`` from it for that end, else
    :func:`~streams.core.document_at`."""
    _, state, built_end_s, document = built
    if built_end_s == end_s:
        return document
    early = ahead.get(key) if ahead else None
    if early is not None and early[0] is document and early[1] == end_s:
        return early[2]
    return document_at(document, state, end_s)


#: the fields of a group missing from a read's sums (shared: read only)
_NO_SUMS: Mapping[str, int] = MappingProxyType({})

#: The most points a series may ask for: 288 are a day of 5 minute windows.
MAX_POINTS = 288


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """``count`` windows of ``width_s``, ``step_s`` apart, the newest ending at the bucket
    boundary ``end_s``, grouped by ``by``: each point the document of the :class:`KpiQuery`
    of its width and end."""

    width_s: int
    step_s: int
    count: int
    end_s: int
    by: tuple[str, ...] = ()

    def ends_s(self) -> list[int]:
        """The points' ends, oldest first."""
        return [self.end_s - (self.count - 1 - i) * self.step_s for i in range(self.count)]


def parse_series(
    window: str | None,
    step: str | None,
    count: str | None,
    at: str | None,
    by: str | Sequence[str] | None,
    *,
    bucket_seconds: int,
    retention_s: int,
    max_future_s: int,
    now_s: float,
) -> SeriesQuery:
    """The series asked for, or :class:`InvalidQuery` naming the parameter: ``window``,
    ``at`` and ``by`` as :func:`parse_query` takes them (for the newest point), ``step`` a
    width (default the window's), ``count`` from 1 to :data:`MAX_POINTS` (default 24), and
    the oldest point's start writable in RFC 3339. Pure."""
    newest = parse_query(
        window,
        at,
        by,
        bucket_seconds=bucket_seconds,
        retention_s=retention_s,
        max_future_s=max_future_s,
        now_s=now_s,
    )
    if AGENT in newest.by:
        raise InvalidQuery("by", "a series is by channel, queue or priority; by agent, ask /kpis")
    if step is None:
        step_s = newest.width_s
    else:
        try:
            step_s = parse_width(step, bucket_seconds)
        except ValueError as error:
            raise InvalidQuery("step", str(error).removeprefix("window width ")) from None
    text = "24" if count is None else count.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_POINTS:
        raise InvalidQuery("count", f"{count!r} is not a whole number from 1 to {MAX_POINTS}")
    series = SeriesQuery(newest.width_s, step_s, int(text), newest.end_s, newest.by)
    if series.ends_s()[0] - series.width_s < EARLIEST_S:
        raise InvalidQuery("count", "reaches back before the year 1, which RFC 3339 cannot write")
    return series


#: The series points :func:`read_series` keeps built, with what they were built from.
POINTS_KEPT = 512
_POINTS: OrderedDict[
    tuple[str, int, int, tuple[str, ...]],
    tuple[Mapping[str, int], Mapping[tuple[str, str, str], Mapping[str, int]], dict[str, Any]],
] = OrderedDict()


async def read_series(store: Store, query: SeriesQuery) -> dict[str, Any]:
    """The documents of the series' points, oldest first, each equal to
    :func:`read_document`'s for its window; :class:`InvalidQuery` (``count``) when the
    oldest ends where every partition has deleted its state.

    One read of the partitions' metas and levels, one of the windows' buckets (each bucket
    once), one of the level steps after each point's end (Redis picks them out of their
    buckets), one of the live indexes at every end: O(partitions x buckets touched), not
    O(points x that).
    """
    cfg = store.config
    metas = await store.read_meta()
    partitions = sorted(metas)
    watermarks_ms = {p: int(metas[p].get("wm", "0")) for p in partitions}
    ends_s = query.ends_s()
    newest_ms = [ms for ms in watermarks_ms.values() if ms]
    if newest_ms and ends_s[0] <= min(newest_ms) // 1000 - cfg.retention_seconds:
        horizon_s = min(newest_ms) // 1000 - cfg.retention_seconds
        raise InvalidQuery(
            "count",
            f"reaches back to a window ending at {format_time(ends_s[0])}, but state is kept "
            f"only for event times after {format_time(horizon_s)} (DESKPULSE_RETENTION "
            f"{format_width(cfg.retention_seconds)} behind the newest event)",
        )
    grouped = bool(query.by)
    windows = [_suffixes(store, end_s - query.width_s, end_s, grouped=grouped) for end_s in ends_s]
    # the level steps from each end to the next (to the horizon for the newest): the steps
    # after a point's end are the sum of its segment and every later one
    horizon_s = _levels_horizon_s(store, watermarks_ms)
    bounds = [*ends_s[1:], horizon_s]
    segments = [
        _suffixes(store, start_s, min(end_s, horizon_s), grouped=True)
        if start_s < min(end_s, horizon_s)
        else []
        for start_s, end_s in zip(ends_s, bounds, strict=True)
    ]

    async def live_at_ends() -> tuple[
        list[dict[tuple[str, str, str], dict[str, int]]],
        list[tuple[int, list[str], list[str]]],
        list[dict[tuple[str, str], int]],
    ]:
        levels, segment_sums = await asyncio.gather(
            store.read_levels(partitions), store.sum_level_steps(partitions, segments)
        )
        lives = _levels_at_ends(levels, segment_sums)
        instants = [
            (end_s * 1000, *_open_groups(live)) for end_s, live in zip(ends_s, lives, strict=True)
        ]
        found = await store.earliest_at(
            partitions,
            [i for i in instants if i[1] or i[2]],
            stale_ms=cfg.chat_stale_after_s * 1000,
            newest_ms=watermarks_ms,
        )
        return lives, instants, found

    # the windows' buckets are read while the live state at each end is worked out
    window_sums, (lives, instants, found) = await asyncio.gather(
        store.sum_buckets(partitions, windows), live_at_ends()
    )
    whole = SEP * 3
    found_at = iter(found)
    points = []
    for (_, tickets, chats), end_s, live, merged in zip(
        instants, ends_s, lives, window_sums, strict=True
    ):
        if tickets or chats:
            _set_earliest(live, next(found_at))
        # a point whose window sums and live state are those of an earlier read is that
        # read's document (a board asks the same series every minute; most points settled)
        key = (store.prefix, query.width_s, end_s, query.by)
        built = _POINTS.get(key)
        if built is not None and _same_fields(built[0], merged) and built[1] == live:
            _POINTS.move_to_end(key)
            points.append(built[2])
            continue
        fields = merged if grouped else {whole + n: v for n, v in merged.items()}
        document = build_document(
            fields, start_s=end_s - query.width_s, end_s=end_s, by=query.by, live=live
        )
        _POINTS[key] = (merged, live, document)
        _POINTS.move_to_end(key)
        points.append(document)
    while len(_POINTS) > POINTS_KEPT:
        _POINTS.popitem(last=False)
    if not grouped:
        # the agents' presence is kept over all groups: each point's one group has it, as
        # the document of its window has (a kept document is shared: copied, not changed)
        presence = await read_agents(
            store,
            [(end_s - query.width_s, end_s) for end_s in ends_s],
            partitions=partitions,
            watermarks_ms=watermarks_ms,
        )
        points = [
            {**point, "groups": [{**point["groups"][0], "agents": agents}]}
            for point, agents in zip(points, presence, strict=True)
        ]
    return {
        "window_seconds": query.width_s,
        "step_seconds": query.step_s,
        "by": list(query.by),
        "points": points,
    }


def _same_sums(kept: Mapping[str, int], read: Mapping[str, int]) -> bool:
    """Whether two sums of fields are equal, a field at zero and a missing one alike (a
    sum moved along by the buckets that left holds no zeros, one read whole may)."""
    return kept == read or {n: v for n, v in kept.items() if v} == {
        n: v for n, v in read.items() if v
    }


def _same_fields(kept: Mapping[str, int], read: Mapping[str, int]) -> bool:
    """Whether two sums of fields are equal, compared as plain dicts: a Counter compares
    each key through its ``__getitem__`` (zero and missing alike), many times slower, and
    both come from the same reads (no zero fields)."""
    return len(kept) == len(read) and dict.__eq__(cast(dict[str, int], kept), read) is True


def _levels_at_ends(
    levels: Mapping[str, int], segments: Sequence[Mapping[str, int]]
) -> list[dict[tuple[str, str, str], dict[str, int]]]:
    """:func:`_level_groups` at every point's end, oldest first: ``segments[i]`` holds the
    level steps from point i's end to the next point's (to the horizon for the newest).
    Each field name is split once, not once per point."""
    now = dict(levels)
    parsed: dict[str, tuple[tuple[str, str, str], str]] = {}

    def split(name: str) -> tuple[tuple[str, str, str], str]:
        key, _, field = name.rpartition(SEP)
        parsed[name] = (split_dim_key(key), field)
        return parsed[name]

    out = []
    for segment in reversed(segments):
        for name, value in segment.items():
            if name.endswith(_LEVEL_FIELDS):
                now[name] = now.get(name, 0) - value
        groups: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
        for name, value in now.items():
            if value and not name.startswith(PRESENCE_PREFIX):  # in no group
                dims, field = parsed.get(name) or split(name)
                groups[dims][field] = value
        out.append(groups)
    out.reverse()
    return out


#: The most tickets :func:`read_sla_tickets` lists.
MAX_SLA_TICKETS = 100


@dataclass(frozen=True, slots=True)
class SlaTicketsQuery:
    """Up to ``limit`` tickets breached or at risk now whose dimensions match ``filters``
    (``(dimension, value)`` pairs, in :data:`DIMENSIONS` order)."""

    filters: tuple[tuple[str, str], ...] = ()
    limit: int = 20


def parse_sla_tickets(given: Mapping[str, str]) -> SlaTicketsQuery:
    """The :class:`SlaTicketsQuery` of ``channel``, ``queue``, ``priority`` (exact values)
    and ``limit`` (1 to :data:`MAX_SLA_TICKETS`, default 20), or :class:`InvalidQuery`."""
    for name, value in given.items():
        if name in DIMENSIONS and not value:
            raise InvalidQuery(name, "is empty; leave it out to match every value")
    text = given.get("limit", "20").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_SLA_TICKETS:
        raise InvalidQuery(
            "limit", f"{given.get('limit')!r} is not a whole number from 1 to {MAX_SLA_TICKETS}"
        )
    filters = tuple((d, given[d]) for d in DIMENSIONS if d in given)
    return SlaTicketsQuery(filters=filters, limit=int(text))


async def read_sla_tickets(
    store: Store, *, filters: Mapping[str, str], limit: int, now_ms: int
) -> dict[str, Any]:
    """Open tickets breached or at risk now, matching ``filters`` (dimension -> value), at
    most ``limit``: breached first (oldest first), then at risk (soonest deadline first).

    *Breached*: an open ticket with a breach claimed and not retracted. *At risk*: an open
    ticket with an SLA instance running past its first warning (its share of the
    ``deskpulse_sla_at_risk`` count, :func:`~streams.core.instances_now`). Bounded, not
    exhaustive: the candidates are, per partition, the ``limit`` tickets of breach
    detection's queue with the soonest instants (a warned ticket waits there for its
    deadline) and the oldest open tickets of each matching group, ``limit`` shared out
    over the groups (at least one each).
    """
    metas = await store.read_meta()
    partitions = sorted(metas)
    levels = await store.read_levels(partitions)
    groups = [
        key
        for key in _open_groups(_level_groups(levels, {}))[0]
        if all(split_dim_key(key)[DIMENSIONS.index(d)] == v for d, v in filters.items())
    ]
    # the oldest of every group, more of each when there are few groups
    per_group = -(-limit // max(len(groups), 1))
    candidates = (
        await store.sla_candidates(partitions, groups, limit=limit, per_group=per_group)
        if groups
        else []
    )
    tickets = []
    for _, conversation_id, due_ms, raw in candidates:
        state = Conversation.loads(raw)
        entry = classify_sla_ticket(state)
        group = current_dims(state)  # a ticket that moved: the group it is in now
        if entry is None or group is None or state.opened is None:
            continue
        dims: dict[str, str] = dict(zip(DIMENSIONS, group, strict=True))
        if any(dims[d] != v for d, v in filters.items()):
            continue
        status, metrics = entry
        tickets.append(
            {
                "ticket_id": conversation_id.removeprefix("t:"),
                **dims,
                "status": status,
                "metrics": metrics,
                "created": format_time(state.opened[0] / 1000),
                "age_seconds": max(0, now_ms - state.opened[0]) // 1000,
                "next_deadline": None
                if status == "breached" or due_ms is None
                else format_time(due_ms / 1000),
            }
        )
    tickets.sort(
        key=lambda t: (
            t["status"] != "breached",
            t["next_deadline"] or "",
            t["created"],
            t["ticket_id"],
        )
    )
    return {"at": format_time(now_ms / 1000), "limit": limit, "tickets": tickets[:limit]}


def classify_sla_ticket(state: Conversation) -> tuple[str, list[str]] | None:
    """``("breached", metrics)``, ``("at_risk", metrics)`` or ``None`` for a ticket's
    stored state: open now (its live digit) with a breach claimed and not retracted, or an
    instance at risk (its share of the instance counts, as of its last commit)."""
    if state.kind != "t" or (state.counted // 1000) % 10 == 0:
        return None
    breached: list[str] = sorted(
        {
            _METRIC_OF[claim.partition(":")[0]]
            for claim in state.claims
            if "@" not in claim
            and f"{claim}@r" not in state.claims
            and claim.partition(":")[0] in _METRIC_OF
        }
    )
    if breached:
        return "breached", breached
    at_risk: list[str] = [
        m for m, place in PLACES.items() if (state.counted // place) % 10 == AT_RISK_NOW
    ]
    return ("at_risk", at_risk) if at_risk else None


_METRIC_OF = {short: metric for metric, short in SHORT.items()}
