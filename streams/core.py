"""The pure KPI core: conversation state, KPI contributions, and batch folding.

Nothing here reads the clock, awaits, or imports faust, redis or prometheus.

How exactness survives any processing order
-------------------------------------------
Each conversation (a ticket or a chat, with the surveys that rate it) is summarised by a
:class:`Conversation` whose fields only ever move one way — an earliest time can only get
earlier, a set only grows — so folding its events in any order, with any duplicates, ends
in the same state. The KPI samples a conversation contributes are a pure function of that
state (:func:`contributions`). Applying an event therefore means: take the contributions
before, fold the event, take the contributions after, and write the difference. An early
reply that arrives late retracts the sample of the later reply it replaces; a reply that
arrives before its ticket contributes nothing until the ticket is there ("held").

Every contribution is a set of integer fields (see :data:`FIELDS`) at one event time and
one ``(channel, queue, priority)`` group. Durations are whole milliseconds, so sums are
exact; quantile sketches are counts per log bucket, so they add and subtract too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from typing import Any, NamedTuple

import msgspec

from deskpulse.models.wire import (
    ChatAbandoned,
    ChatAccepted,
    ChatEnded,
    ChatRequested,
    SurveyResponded,
    TicketCreated,
    TicketReplied,
    WireEvent,
    event_ms,
)
from deskpulse.streams import sketch

__all__ = [
    "FIELDS",
    "HISTOGRAM_BOUNDS_S",
    "SEP",
    "BatchResult",
    "Contribution",
    "Conversation",
    "CoreConfig",
    "Pending",
    "breach_deadline",
    "contributions",
    "dim_key",
    "fold",
    "fold_batch",
    "group_document",
    "has_samples",
    "split_dim_key",
]

#: Separator inside a dimension key and between a dimension key and a field name.
#: Dimension values never contain control characters (the event models refuse them).
SEP = "\x1f"

#: The integer fields a contribution carries; ``*_sk:<index>`` are sketch counts. Every
#: stored code, with its unit: docs/architecture.md, "Stored field codes" (a test holds both).
FIELDS: dict[str, str] = {
    "tc": "tickets created",
    "fr": "first responses",
    "fr_ms": "sum of first response times, ms",
    "fr_in": "first responses within the priority's target",
    "cr": "chats requested",
    "ca": "chats answered",
    "ca_in": "chats answered within the answer target",
    "ca_ms": "sum of waits of answered chats, ms",
    "cab": "chats abandoned (short abandons excluded)",
    "cs": "chats short-abandoned",
    "cs_n": "CSAT responses",
    "cs_sat": "CSAT satisfied responses (score >= 4)",
    "cs_sum": "sum of CSAT scores",
    "np_n": "NPS responses",
    "np_pro": "NPS promoters (>= 9)",
    "np_det": "NPS detractors (<= 6)",
    "ce_n": "CES responses",
    "ce_sum": "sum of CES scores",
}

#: Bounds of the Prometheus-native first-response histogram (targets are added to these).
HISTOGRAM_BOUNDS_S: tuple[int, ...] = (
    60,
    300,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
    172800,
)

Dims = tuple[str, str, str]
Contribution = tuple[int, Dims, str, int]  # (event time ms, group, field, value)


@dataclass(frozen=True)
class CoreConfig:
    """The KPI settings the core needs; built from :class:`models.settings.Settings`."""

    bucket_seconds: int = 60
    rollup_seconds: int = 3600
    retention_seconds: int = 48 * 3600
    first_response_targets_s: Mapping[str, int] = field(
        default_factory=lambda: {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400}
    )
    short_abandon_s: int = 5
    chat_answer_target_s: int = 20

    @cached_property
    def histogram_bounds_s(self) -> tuple[int, ...]:
        """Histogram bucket bounds: the fixed ladder plus every configured target."""
        return tuple(sorted({*HISTOGRAM_BOUNDS_S, *self.first_response_targets_s.values()}))

    @classmethod
    def from_settings(cls, settings: Any) -> CoreConfig:
        """Take the KPI settings out of a :class:`models.settings.Settings`."""
        return cls(
            bucket_seconds=settings.bucket_seconds,
            rollup_seconds=settings.rollup_seconds,
            retention_seconds=settings.retention,
            first_response_targets_s=dict(settings.first_response_targets),
            short_abandon_s=settings.short_abandon,
            chat_answer_target_s=settings.chat_answer_target,
        )


def dim_key(dims: Sequence[str]) -> str:
    """The string form of a ``(channel, queue, priority)`` group."""
    return SEP.join(dims)


def split_dim_key(key: str) -> Dims:
    """Inverse of :func:`dim_key`."""
    channel, queue, priority = key.split(SEP)
    return (channel, queue, priority)


Survey = tuple[int, str, int, str | None, str | None, str | None]


class Conversation(msgspec.Struct, array_like=True, gc=False):
    """Order-independent summary of one conversation (see the module docstring).

    ``opened``, ``first_reply``, ``accepted`` and ``ended`` are earliest ``(ms, event_id)``
    pairs; ``surveys`` maps survey event ids to ``(ms, kind, score, channel, queue,
    priority)`` with ``None`` for dimensions the survey did not carry. Stored in Redis as
    the compact JSON array of these fields, in this order (:meth:`dumps`).
    """

    kind: str  # "t" ticket, "c" chat
    opened: tuple[int, str] | None = None
    dims: Dims | None = None
    first_reply: tuple[int, str] | None = None
    accepted: tuple[int, str] | None = None
    ended: tuple[int, str] | None = None
    surveys: dict[str, Survey] = msgspec.field(default_factory=dict)
    seen: set[str] = msgspec.field(default_factory=set)
    last_ms: int = 0

    def pending(self) -> int:
        """Events held for an opener that has not arrived (orphans if it never does)."""
        if self.opened is not None:
            return 0
        if not self.surveys:
            return len(self.seen)
        complete = sum(1 for s in self.surveys.values() if None not in s[3:])
        return len(self.seen) - complete

    def dumps(self) -> bytes:
        """Compact JSON for Redis; sets and maps in sorted order, so equal states are equal
        bytes whichever order their events came in."""
        return _ENCODE(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> Conversation:
        """Inverse of :meth:`dumps`."""
        return _DECODE(raw)


# a struct without reference cycles (it holds strings, ints and tuples), so gc=False above
_ENCODE = msgspec.json.Encoder(order="deterministic").encode
_DECODE = msgspec.json.Decoder(Conversation).decode


def _earliest(current: tuple[int, str] | None, candidate: tuple[int, str]) -> tuple[int, str]:
    return candidate if current is None or candidate < current else current


def fold(state: Conversation, event: WireEvent, at_ms: int | None = None) -> bool:
    """Fold one event into its conversation; ``False`` if its ``event_id`` was seen before."""
    event_id = event.event_id
    if event_id in state.seen:
        return False
    state.seen.add(event_id)
    at = (event_ms(event) if at_ms is None else at_ms, event_id)
    if at[0] > state.last_ms:
        state.last_ms = at[0]
    if type(event) is TicketCreated or type(event) is ChatRequested:
        if state.opened is None or at < state.opened:
            state.opened = at
            state.dims = (event.channel, event.queue, event.priority)
    elif type(event) is TicketReplied:
        if event.author_role == "agent" and event.public:
            state.first_reply = _earliest(state.first_reply, at)
    elif type(event) is ChatAccepted:
        state.accepted = _earliest(state.accepted, at)
    elif type(event) is ChatAbandoned or type(event) is ChatEnded:
        state.ended = _earliest(state.ended, at)
    elif type(event) is SurveyResponded:
        state.surveys[event_id] = (
            at[0],
            event.kind,
            event.score,
            event.channel,
            event.queue,
            event.priority,
        )
    # TicketStatusChanged: kept for the lifecycle, no KPI of v1 depends on it
    return True


def contributions(state: Conversation, config: CoreConfig) -> list[Contribution]:
    """Every KPI sample this conversation contributes, as a pure function of its state."""
    return _contributions(
        state.kind,
        state.opened,
        state.dims,
        state.first_reply,
        state.accepted,
        state.ended,
        state.surveys.values(),
        config,
    )


def _contributions(
    kind: str,
    opened: tuple[int, str] | None,
    dims: Dims | None,
    first_reply: tuple[int, str] | None,
    accepted: tuple[int, str] | None,
    ended: tuple[int, str] | None,
    surveys: Iterable[Survey],
    config: CoreConfig,
) -> list[Contribution]:
    out: list[Contribution] = []
    if opened is not None and dims is not None:
        opened_ms = opened[0]
        if kind == "t":
            out.append((opened_ms, dims, "tc", 1))
            if first_reply is not None:
                reply_ms = first_reply[0]
                frt_ms = max(0, reply_ms - opened_ms)
                target_ms = config.first_response_targets_s[dims[2]] * 1000
                out.append((reply_ms, dims, "fr", 1))
                out.append((reply_ms, dims, "fr_ms", frt_ms))
                out.append((reply_ms, dims, "fr_in", int(frt_ms <= target_ms)))
                out.append((reply_ms, dims, _FR_SK[sketch.index_of(frt_ms / 1000)], 1))
                bound = _histogram_bound(frt_ms, config.histogram_bounds_s)
                out.append((reply_ms, dims, "frh:" + bound, 1))
        else:
            out.append((opened_ms, dims, "cr", 1))
            outcome = _chat_outcome(accepted, ended)
            if outcome is not None:
                answered, outcome_ms = outcome
                wait_ms = max(0, outcome_ms - opened_ms)
                if answered:
                    in_target = wait_ms <= config.chat_answer_target_s * 1000
                    out.append((outcome_ms, dims, "ca", 1))
                    out.append((outcome_ms, dims, "ca_in", int(in_target)))
                    out.append((outcome_ms, dims, "ca_ms", wait_ms))
                    out.append((outcome_ms, dims, _CW_SK[sketch.index_of(wait_ms / 1000)], 1))
                elif config.short_abandon_s > 0 and wait_ms < config.short_abandon_s * 1000:
                    out.append((outcome_ms, dims, "cs", 1))
                else:
                    out.append((outcome_ms, dims, "cab", 1))
    for at_ms, survey_kind, score, channel, queue, priority in surveys:
        if channel is None or queue is None or priority is None:
            if dims is None:
                continue  # held until the rated conversation's opener arrives
            channel, queue, priority = (
                channel or dims[0],
                queue or dims[1],
                priority or dims[2],
            )
        out.extend(_survey_fields(at_ms, (channel, queue, priority), survey_kind, score))
    return out


class _FieldNames(dict[int, str]):
    """``prefix + index`` for sketch indexes, made once per index (a hot-path f-string)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, index: int) -> str:
        name = self[index] = f"{self.prefix}{index}"
        return name


_FR_SK = _FieldNames("fr_sk:")
_CW_SK = _FieldNames("cw_sk:")

_TO_TOTALS, _TO_BUCKETS = 1, 2


class _Routes(dict[str, int]):
    """Where a field goes: sketch counts only to time buckets, histogram counts only to
    the cumulative totals, every other field to both (looked up once per field name)."""

    def __missing__(self, name: str) -> int:
        if "_sk:" in name:
            route = _TO_BUCKETS
        elif name.startswith("frh:"):
            route = _TO_TOTALS
        else:
            route = _TO_TOTALS | _TO_BUCKETS
        self[name] = route
        return route


_ROUTES = _Routes()


def _histogram_bound(duration_ms: int, bounds_s: Sequence[int]) -> str:
    """The smallest histogram bound holding the duration, ``"+Inf"`` past the last."""
    for bound in bounds_s:
        if duration_ms <= bound * 1000:
            return str(bound)
    return "+Inf"


def breach_deadline(state: Conversation, config: CoreConfig) -> int | None:
    """The first-response deadline (ms) while a ticket may still breach, else ``None``.

    A ticket is watched from its creation until a public agent reply at or before
    ``created + target``; one whose first reply came later still breached.
    """
    if state.kind != "t" or state.opened is None or state.dims is None:
        return None
    deadline_ms = state.opened[0] + config.first_response_targets_s[state.dims[2]] * 1000
    if state.first_reply is not None and state.first_reply[0] <= deadline_ms:
        return None
    return deadline_ms


def _chat_outcome(
    accepted: tuple[int, str] | None, ended: tuple[int, str] | None
) -> tuple[bool, int] | None:
    """``(answered, at_ms)`` from the earliest completing event; a tie goes to the accept."""
    if accepted is not None and (ended is None or accepted[0] <= ended[0]):
        return True, accepted[0]
    if ended is not None:
        return False, ended[0]
    return None


def _survey_fields(at_ms: int, group: Dims, kind: str, score: int) -> list[Contribution]:
    if kind == "csat":
        return [
            (at_ms, group, "cs_n", 1),
            (at_ms, group, "cs_sat", int(score >= 4)),
            (at_ms, group, "cs_sum", score),
        ]
    if kind == "nps":
        return [
            (at_ms, group, "np_n", 1),
            (at_ms, group, "np_pro", int(score >= 9)),
            (at_ms, group, "np_det", int(score <= 6)),
        ]
    return [(at_ms, group, "ce_n", 1), (at_ms, group, "ce_sum", score)]


class Pending(NamedTuple):
    """One decoded event with its source coordinates, waiting to be folded.

    ``offset`` -1 marks an event with no place in this partition's fence (``deskpulse
    replay`` applies a record read on another partition straight here): it is never
    skipped as applied and moves no offset; a repeat is absorbed by its ``event_id``.
    """

    event: WireEvent
    topic: str
    offset: int
    ms: int  # event time in whole ms (models.wire.event_ms), computed once at decode


@dataclass
class BatchResult:
    """What one batch of one partition changes: everything the store writes atomically.

    ``buckets`` maps ``(level, bucket start s)`` — level ``"b"`` fine, ``"r"`` roll-up — to
    field deltas keyed ``dimkey + SEP + field``, and levels ``"B"`` and ``"R"`` to the same
    summed over all groups, keyed by ``field`` alone (a read without grouping touches only
    those: a tenth of the fields); ``totals`` holds the cumulative family
    (no time), including first-response histogram counts ``frh:<bound>``. Sketch counts
    (``*_sk:<index>``) live only in the time buckets, histogram counts only in the totals.
    Deltas may be zero (a sample that moved within its bucket); the store skips those.
    """

    states: dict[str, Conversation] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    deadlines: dict[str, int | None] = field(default_factory=dict)
    buckets: dict[tuple[str, int], dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    offsets: dict[str, int] = field(default_factory=dict)
    watermark_ms: int = 0
    topic_watermarks: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    #: records past the fence by (topic, event type): applied, duplicate or late alike
    fresh: dict[tuple[str, str], int] = field(default_factory=dict)
    #: records at or below the fence by topic: applied before (a redelivery), not again
    skipped: dict[str, int] = field(default_factory=dict)


_KpiInputs = tuple[
    tuple[int, str] | None,
    Dims | None,
    tuple[int, str] | None,
    tuple[int, str] | None,
    tuple[int, str] | None,
    int,
]


def _kpi_inputs(state: Conversation) -> _KpiInputs:
    """Everything :func:`contributions` reads of a state (its kind never changes, and the
    surveys only gain entries, so their count stands for them)."""
    return (
        state.opened,
        state.dims,
        state.first_reply,
        state.accepted,
        state.ended,
        len(state.surveys),
    )


def fold_batch(
    pending: Iterable[Pending],
    states: Mapping[str, Conversation | None],
    *,
    watermark_ms: int,
    applied_offsets: Mapping[str, int],
    config: CoreConfig,
) -> BatchResult:
    """Fold one partition's batch against the stored states of the conversations it touches.

    Records at or below ``applied_offsets[topic]`` were applied by an earlier transaction
    and are skipped (counted in ``skipped``). Events older than the retention behind the
    partition's newest event time are counted as late and not applied; a repeated
    ``event_id`` is counted as a duplicate. Counters: ``dup:<topic>``, ``late:<topic>``.

    In phases: the records past the fence (:func:`_past_fence`), the watermark and the
    late cut, the events folded into their conversations (:func:`_fold_events`), and each
    touched conversation's change of KPI contributions written as field deltas
    (:func:`_add_deltas`).
    """
    result = BatchResult(watermark_ms=watermark_ms)
    items = _past_fence(pending, applied_offsets, result)
    if not items:
        return result
    # The watermark moves first, so the late cut does not depend on the order in the batch.
    result.watermark_ms = max(watermark_ms, *result.topic_watermarks.values())
    cutoff_ms = result.watermark_ms - config.retention_seconds * 1000
    working, before = _fold_events(items, states, cutoff_ms, result)
    _add_deltas(working, before, cutoff_ms, config, result)
    return result


def _past_fence(
    pending: Iterable[Pending], applied_offsets: Mapping[str, int], result: BatchResult
) -> list[Pending]:
    """The records not applied before; counts them (``fresh``) and the others
    (``skipped``), and moves the batch's offsets and per-topic newest event times."""
    offsets, topic_watermarks, fresh = result.offsets, result.topic_watermarks, result.fresh
    skipped = result.skipped
    items: list[Pending] = []
    for item in pending:
        topic, offset, ms = item.topic, item.offset, item.ms
        # an unfenced record (offset -1, see Pending) is never skipped nor fenced
        if offset <= applied_offsets.get(topic, -1) and offset >= 0:
            skipped[topic] = skipped.get(topic, 0) + 1
            continue
        items.append(item)
        kind = (topic, item.event.type)
        fresh[kind] = fresh.get(kind, 0) + 1
        if offset > offsets.get(topic, -1):
            offsets[topic] = offset
        # per topic too: breach detection follows the tickets topic alone
        if ms > topic_watermarks.get(topic, -1):
            topic_watermarks[topic] = ms
    return items


def _fold_events(
    items: list[Pending],
    states: Mapping[str, Conversation | None],
    cutoff_ms: int,
    result: BatchResult,
) -> tuple[dict[str, Conversation], dict[str, tuple[_KpiInputs, int]]]:
    """Fold the events not older than ``cutoff_ms`` into their conversations (counting late
    events and duplicates); the conversations touched, and for stored ones what their KPIs
    depended on (and their held count) before the batch."""
    working: dict[str, Conversation] = {}
    before: dict[str, tuple[_KpiInputs, int]] = {}
    counters = result.counters
    applied = 0
    for event, topic, _, ms in items:
        if ms < cutoff_ms:
            counters["late:" + topic] += 1
            continue
        conv_id = event.conversation_id
        state = working.get(conv_id)
        if state is None:
            stored = states.get(conv_id)
            if stored is None:
                state = Conversation(kind=conv_id[0])
            else:
                state = stored
                before[conv_id] = (_kpi_inputs(state), state.pending())
            working[conv_id] = state
        if fold(state, event, ms):
            applied += 1
        else:
            counters["dup:" + topic] += 1
    result.applied += applied
    return working, before


def _kpi_change(state: Conversation, inputs: _KpiInputs, config: CoreConfig) -> list[Contribution]:
    """What a stored conversation contributes now less what it contributed before the batch,
    as ``(time, group, field, delta)`` (empty when the two are the same)."""
    opened, dims_before, first_reply, accepted, ended, surveys_before = inputs
    # surveys only ever gain entries, at the end: the first ones are the old
    old = _contributions(
        state.kind,
        opened,
        dims_before,
        first_reply,
        accepted,
        ended,
        islice(state.surveys.values(), surveys_before),
        config,
    )
    new = contributions(state, config)
    if new == old:
        return []  # e.g. a chat ending after it was answered
    delta: dict[tuple[int, Dims, str], int] = defaultdict(int)
    for at_ms, dims, name, value in new:
        delta[(at_ms, dims, name)] += value
    for at_ms, dims, name, value in old:
        delta[(at_ms, dims, name)] -= value
    return [(at, dims, name, value) for (at, dims, name), value in delta.items()]


def _add_deltas(
    working: Mapping[str, Conversation],
    before: Mapping[str, tuple[_KpiInputs, int]],
    cutoff_ms: int,
    config: CoreConfig,
    result: BatchResult,
) -> None:
    """Write each touched conversation's KPI change into the totals and the bucket hashes
    (skipping buckets older than ``cutoff_ms``), with its state, held count and deadline."""
    bucket_s, rollup_s = config.bucket_seconds, config.rollup_seconds
    bucket_ms = bucket_s * 1000
    totals, buckets = result.totals, result.buckets
    prefixes: dict[Dims, str] = {}
    # the four bucket hashes (fine, roll-up, and both over all groups) of each fine bucket
    targets: dict[int, tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]] = {}
    held_delta = 0
    for conv_id, state in working.items():
        previous = before.get(conv_id)
        changes: Iterable[Contribution]
        if previous is None:
            changes = contributions(state, config)  # a new conversation: nothing to take back
            held_before = 0
        else:
            inputs, held_before = previous
            # most events (a customer reply, a status change) move no KPI
            unchanged = inputs == _kpi_inputs(state)
            changes = () if unchanged else _kpi_change(state, inputs, config)
        # the hot loop: one pass over the changed fields, routed to the totals and buckets
        for at_ms, dims, name, value in changes:
            if value == 0:
                continue
            prefix = prefixes.get(dims)
            if prefix is None:
                prefix = prefixes[dims] = SEP.join(dims) + SEP
            key = prefix + name
            route = _ROUTES[name]
            if route & _TO_TOTALS:
                totals[key] += value
            if not route & _TO_BUCKETS:
                continue  # histogram counts are cumulative only
            if at_ms < cutoff_ms:
                continue  # an expired bucket is gone
            index = at_ms // bucket_ms
            target = targets.get(index)
            if target is None:
                fine = index * bucket_s  # == bucket_start(at_ms / 1000, bucket_s)
                rollup = fine - fine % rollup_s
                target = targets[index] = (
                    buckets[("b", fine)],
                    buckets[("r", rollup)],
                    buckets[("B", fine)],
                    buckets[("R", rollup)],
                )
            target[0][key] += value
            target[1][key] += value
            # the same over all groups: what a read without grouping needs
            target[2][name] += value
            target[3][name] += value
        held = state.pending()
        result.held[conv_id] = held
        held_delta += held - held_before
        result.states[conv_id] = state
        result.deadlines[conv_id] = breach_deadline(state, config)
    if working:
        result.counters["held"] += held_delta


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _quantiles(counts: Mapping[int, int], qs: Sequence[float]) -> list[float | None]:
    merged = sketch.Sketch.from_counts(counts)
    return [merged.quantile(q) for q in qs]


def group_document(key: Mapping[str, str], fields: Mapping[str, int]) -> dict[str, Any]:
    """One group of the KPI document (docs/kpis.md) from its merged integer fields.

    Counts are integers (0 when none); a value with no samples is ``None``; ratios are
    full precision.
    """

    def get(name: str) -> int:
        return int(fields.get(name, 0))

    fr_sketch: dict[int, int] = {}
    wait_sketch: dict[int, int] = {}
    for name, value in fields.items():
        if name.startswith("fr_sk:"):
            fr_sketch[int(name[6:])] = int(value)
        elif name.startswith("cw_sk:"):
            wait_sketch[int(name[6:])] = int(value)
    fr_n, ca, cab = get("fr"), get("ca"), get("cab")
    fr_p50, fr_p90, fr_p95 = _quantiles(fr_sketch, (0.5, 0.9, 0.95)) if fr_n else [None] * 3
    wait_p50, wait_p90 = _quantiles(wait_sketch, (0.5, 0.9)) if ca else [None] * 2
    cs_n, np_n, ce_n = get("cs_n"), get("np_n"), get("ce_n")
    nps = _ratio(100 * (get("np_pro") - get("np_det")), np_n)
    return {
        "key": dict(key),
        "tickets_created": get("tc"),
        "first_response": {
            "count": fr_n,
            "mean_seconds": None if not fr_n else get("fr_ms") / fr_n / 1000,
            "p50_seconds": fr_p50,
            "p90_seconds": fr_p90,
            "p95_seconds": fr_p95,
            "within_target": get("fr_in"),
            "within_target_ratio": _ratio(get("fr_in"), fr_n),
        },
        "chats": {
            "requested": get("cr"),
            "answered": ca,
            "abandoned": cab,
            "short_abandoned": get("cs"),
            "abandonment_ratio": _ratio(cab, ca + cab),
            "service_level_ratio": _ratio(get("ca_in"), ca + cab),
            "wait_p50_seconds": wait_p50,
            "wait_p90_seconds": wait_p90,
        },
        "csat": {
            "responses": cs_n,
            "satisfied": get("cs_sat"),
            "ratio": _ratio(get("cs_sat"), cs_n),
            "average": _ratio(get("cs_sum"), cs_n),
        },
        "nps": {
            "responses": np_n,
            "promoters": get("np_pro"),
            "detractors": get("np_det"),
            "score": nps,
        },
        "ces": {"responses": ce_n, "average": _ratio(get("ce_sum"), ce_n)},
    }


def has_samples(fields: Mapping[str, int]) -> bool:
    """Whether a group has any count in its window (groups without are left out)."""
    return any(value > 0 and "_sk:" not in name for name, value in fields.items())
