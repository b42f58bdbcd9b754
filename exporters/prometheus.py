"""Prometheus exposition: per-process pipeline counters and the KPI collector.

:class:`KpiCollector` is one class with one ``collect()`` that yields metric families
built from an in-memory snapshot. ``collect()`` never does I/O — the aiohttp handler calls
it on the worker's event loop — and :meth:`KpiCollector.refresh` rebuilds the snapshot
from Redis in a background task. The collector is stateless beyond that snapshot: any
worker, or a separate process, reading the same Redis exports the same numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from deskpulse import __version__
from deskpulse.exporters.cardinality import OTHER, Fold, Guard, Rule, share
from deskpulse.exporters.catalog import AGENTS, CATALOG, HOLE_OUTCOMES, client_args
from deskpulse.models.events import DIMENSIONS
from deskpulse.models.settings import Settings, format_duration
from deskpulse.streams.compat import gauge_value, value_text
from deskpulse.streams.core import (
    AT_RISK_FIELDS,
    LONGEST,
    OLDEST,
    RUNNING_FIELDS,
    SEP,
    group_document,
    has_samples,
)
from deskpulse.streams.lifecycle import BACKLOG_FIELDS, WAITING_FIELD
from deskpulse.streams.query import read_agent_groups, read_agents, read_grouped_windows, read_live
from deskpulse.streams.sla import SHORT
from deskpulse.streams.store import Store

__all__ = ["KpiCollector", "PipelineMetrics", "agent_volume", "build_registry", "render"]


class PipelineMetrics:
    """The worker process's own counters (the engine's ``Metrics``)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        input_topics: Sequence[str] = (),
        settings: Settings | None = None,
    ) -> None:
        """``settings``, when given, are the worker's: the intervals its freshness alerts
        scale with are exported from them."""
        self.registry = registry

        def spec(name: str) -> tuple[str, str, list[str]]:
            return client_args(CATALOG[name])

        self._processed = PromCounter(*spec("deskpulse_events_processed_total"), registry=registry)
        self._rejected = PromCounter(*spec("deskpulse_events_rejected_total"), registry=registry)
        self._rerouted = PromCounter(*spec("deskpulse_events_rerouted_total"), registry=registry)
        for topic in input_topics:  # 0 from the start: the healthy value, rate() needs it
            self._rerouted.labels(topic)
        self._skipped = PromCounter(*spec("deskpulse_events_skipped_total"), registry=registry)
        for topic in input_topics:
            self._skipped.labels(topic, "already_applied")
        flush = CATALOG["deskpulse_flush_duration_seconds"]
        self._flush = Histogram(flush.name, flush.help, registry=registry, buckets=flush.buckets)
        batch = CATALOG["deskpulse_batch_events"]
        self._batch = Histogram(batch.name, batch.help, registry=registry, buckets=batch.buckets)
        Gauge(*spec("deskpulse_build_info"), registry=registry).labels(__version__).set(1)
        self._event_time = Gauge(*spec("deskpulse_last_event_timestamp_seconds"), registry=registry)
        self._redis_up = Gauge(*spec("deskpulse_redis_up"), registry=registry)
        self.broker_up = Gauge(*spec("deskpulse_broker_up"), registry=registry)
        self.deadletter_up = Gauge(*spec("deskpulse_deadletter_up"), registry=registry)
        self.deadletter_up.set(1)
        self.lag = Gauge(*spec("deskpulse_consumer_lag_messages"), registry=registry)
        self._stalls = PromCounter(*spec("deskpulse_partition_stalls_total"), registry=registry)
        self._holes = PromCounter(*spec("deskpulse_offset_holes_total"), registry=registry)
        for topic in input_topics:  # 0 from the start: the first hole is an increase
            for outcome in HOLE_OUTCOMES:
                self._holes.labels(topic, outcome)
        self.refresh_duration = Gauge(
            *spec("deskpulse_kpi_refresh_duration_seconds"), registry=registry
        )
        self._breach_check_time = Gauge(
            *spec("deskpulse_breach_check_timestamp_seconds"), registry=registry
        )
        # the start until the first check completes: a worker that never completes one
        # ages like one whose checks stopped
        self._breach_check_time.set(time.time())
        self._breach_check_duration = Gauge(
            *spec("deskpulse_breach_check_duration_seconds"), registry=registry
        )
        self._snapshot_time = Gauge(
            *spec("deskpulse_snapshot_publish_timestamp_seconds"), registry=registry
        )
        self._snapshot_time.set(time.time())  # the start, as the breach check's above
        if settings is not None:
            for name, seconds in (
                ("deskpulse_kpi_refresh_interval_seconds", settings.metrics_refresh_interval),
                ("deskpulse_breach_check_interval_seconds", settings.breach_check_interval),
                ("deskpulse_snapshot_interval_seconds", settings.snapshot_interval),
            ):
                Gauge(*spec(name), registry=registry).set(seconds)
        self._state_ok = Gauge(*spec("deskpulse_state_ok"), registry=registry)
        self._state_ok.set(1)
        self._redis_up.set(1)
        self.broker_up.set(1)

    def processed(self, topic: str, event_type: str, count: int) -> None:
        self._processed.labels(topic, event_type).inc(count)

    def rejected(self, topic: str, reason: str, count: int) -> None:
        self._rejected.labels(topic, reason).inc(count)

    def rerouted(self, topic: str, count: int) -> None:
        self._rerouted.labels(topic).inc(count)

    def skipped(self, topic: str, reason: str, count: int) -> None:
        self._skipped.labels(topic, reason).inc(count)

    def holes(self, topic: str, outcome: str, count: int) -> None:
        self._holes.labels(topic, outcome).inc(count)

    def stalled(self, topic: str, partition: int) -> None:
        self._stalls.labels(topic, str(partition)).inc()

    def watched(self, topic: str, partition: int) -> None:
        """A partition the watchdog looks at: its stall counter is exported from 0, so the
        first stall is an increase an alert's ``increase()`` sees."""
        self._stalls.labels(topic, str(partition))

    def state_ok(self, ok: bool) -> None:
        self._state_ok.set(1 if ok else 0)

    def flushed(self, seconds: float, events: int) -> None:
        self._flush.observe(seconds)
        self._batch.observe(events)

    def event_time(self, topic: str, t_s: float) -> None:
        gauge = self._event_time.labels(topic)
        if t_s > gauge_value(gauge):
            gauge.set(t_s)

    def redis_up(self, up: bool) -> None:
        self._redis_up.set(1 if up else 0)

    def outputs_published(self) -> None:
        """A pass of the outputs (KPI snapshots, alert rules) completed now."""
        self._snapshot_time.set(time.time())

    def breach_checked(self, seconds: float) -> None:
        """An SLA breach check completed now, in ``seconds``."""
        self._breach_check_time.set(time.time())
        self._breach_check_duration.set(seconds)


# windowed gauge -> its path in the group document, and the fields one of which must be
# positive for it to have a value (none: every group with samples has one). HELP, type and
# labels: the catalog. The cardinality guard counts series by the last column; a test holds
# it against group_document.
_ANY: tuple[str, ...] = ()
_WINDOWED: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("deskpulse_tickets_created", ("tickets_created",), _ANY),
    ("deskpulse_chats_requested", ("chats", "requested"), _ANY),
    ("deskpulse_chats_answered", ("chats", "answered"), _ANY),
    ("deskpulse_chats_abandoned", ("chats", "abandoned"), _ANY),
    ("deskpulse_chats_short_abandoned", ("chats", "short_abandoned"), _ANY),
    ("deskpulse_first_responses", ("first_response", "count"), _ANY),
    ("deskpulse_first_response_average_seconds", ("first_response", "mean_seconds"), ("fr",)),
    (
        "deskpulse_first_response_within_target_ratio",
        ("first_response", "within_target_ratio"),
        ("fr",),
    ),
    ("deskpulse_chat_abandonment_ratio", ("chats", "abandonment_ratio"), ("ca", "cab")),
    ("deskpulse_chat_service_level_ratio", ("chats", "service_level_ratio"), ("ca", "cab")),
    ("deskpulse_csat_responses", ("csat", "responses"), _ANY),
    ("deskpulse_csat_ratio", ("csat", "ratio"), ("cs_n",)),
    ("deskpulse_csat_score_average", ("csat", "average"), ("cs_n",)),
    ("deskpulse_nps_responses", ("nps", "responses"), _ANY),
    ("deskpulse_nps_score", ("nps", "score"), ("np_n",)),
    ("deskpulse_ces_responses", ("ces", "responses"), _ANY),
    ("deskpulse_ces_score_average", ("ces", "average"), ("ce_n",)),
    ("deskpulse_reopen_ratio", ("resolution", "reopen_ratio"), ("rv",)),
    ("deskpulse_one_touch_ratio", ("resolution", "one_touch_ratio"), ("rv",)),
)
# windowed summary -> (path of its document section, quantile fields, count field,
# sum-in-ms field); it has series where its count field is positive: each quantile, _count
# and _sum
_P50_P90_P95 = (("0.5", "p50_seconds"), ("0.9", "p90_seconds"), ("0.95", "p95_seconds"))
_SUMMARIES: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...], str, str], ...] = (
    ("deskpulse_first_response_seconds", ("first_response",), _P50_P90_P95, "fr", "fr_ms"),
    (
        "deskpulse_chat_wait_seconds",
        ("chats",),
        (("0.5", "wait_p50_seconds"), ("0.9", "wait_p90_seconds")),
        "ca",
        "ca_ms",
    ),
    (
        "deskpulse_first_response_business_seconds",
        ("first_response", "business"),
        _P50_P90_P95,
        "fr",
        "fb_ms",
    ),
    ("deskpulse_next_response_seconds", ("next_response",), _P50_P90_P95, "nr", "nr_ms"),
    ("deskpulse_resolution_seconds", ("resolution",), _P50_P90_P95, "rv", "rv_ms"),
    (
        "deskpulse_chat_handle_seconds",
        ("chats",),
        (("0.5", "handle_p50_seconds"), ("0.9", "handle_p90_seconds")),
        "ch",
        "ch_ms",
    ),
)
# the windowed SLA ratio: a series per group and SLA metric (the `metric` label) that has an
# achieved or a breached instance in the window
_SLA_RATIO = "deskpulse_sla_achieved_ratio"
_SLA_RATIO_REQUIRES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (metric, ("sa_" + short, "sb_" + short)) for metric, short in SHORT.items()
)
# the cumulative SLA counter (exposed name without _total): stored field per SLA metric
_SLA_ACHIEVED = "deskpulse_sla_achieved"
_SLA_ACHIEVED_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (metric, "sa_" + short) for metric, short in SHORT.items()
)
# cumulative counter (exposed name without _total) -> stored field
_TOTALS: tuple[tuple[str, str], ...] = (
    ("deskpulse_tickets_created", "tc"),
    ("deskpulse_chats_requested", "cr"),
    ("deskpulse_first_responses", "fr"),
    ("deskpulse_chats_answered", "ca"),
    ("deskpulse_chats_answered_in_target", "ca_in"),
    ("deskpulse_chats_abandoned", "cab"),
    ("deskpulse_chats_short_abandoned", "cs"),
    ("deskpulse_csat_responses", "cs_n"),
    ("deskpulse_csat_satisfied_responses", "cs_sat"),
    ("deskpulse_tickets_solved", "svt"),
    ("deskpulse_tickets_reopened", "rot"),
)
#: ``deskpulse_sla_breaches_total{metric}``: the breaches breach detection claimed and
#: published, per SLA metric -> stored totals field (``sla``: v1's, the first response)
_SLA_BREACH_TOTALS: tuple[tuple[str, str], ...] = (
    ("first_response", "sla"),
    ("next_response", "sla_nr"),
    ("resolution", "sla_rs"),
)

# Every windowed family shows the same groups (a queue is on every panel or on none, and
# "other" is the same groups everywhere), as many as the costliest label set allows: the
# first-response summary's quantiles, _count and _sum. Each family's own rule (its series
# per label set, and the groups it has series for) counts what the guard folded of it.
# Families are named as in the catalog: the `metric` label of those counts. The SLA ratio
# has one rule per SLA metric (a group may have a series for one and not another).
_WINDOWED_RULES: list[Rule] = []
_WINDOWED_RULE_OF: dict[str, list[int]] = defaultdict(list)
for _name, _rule in (
    *((name, Rule(1, requires)) for name, _, requires in _WINDOWED),
    *((name, Rule(len(qs) + 2, (count,))) for name, _, qs, count, _ in _SUMMARIES),
    *((_SLA_RATIO, Rule(1, requires)) for _, requires in _SLA_RATIO_REQUIRES),
):
    if _rule not in _WINDOWED_RULES:
        _WINDOWED_RULES.append(_rule)
    _WINDOWED_RULE_OF[_name].append(_WINDOWED_RULES.index(_rule))
_WINDOWED_LABEL_SET = Rule(max(rule.series for rule in _WINDOWED_RULES))
#: the most series a group has in one window over every windowed family (the total budget
#: counts a group-window at this)
_WINDOWED_SERIES = (
    len(_WINDOWED) + sum(len(qs) + 2 for _, _, qs, _, _ in _SUMMARIES) + len(_SLA_RATIO_REQUIRES)
)
#: the backlog and waiting chats now: a group's series (one per status, the oldest age, the
#: waiting chats and the longest wait); the guard ranks groups by their levels
_STATE_STATUSES = {"new": "n", "open": "o", "pending": "p", "hold": "h"}
_STATE_RULE = Rule(len(_STATE_STATUSES) + 3)
_STATE_FAMILIES = (
    "deskpulse_backlog_tickets",
    "deskpulse_backlog_oldest_age_seconds",
    "deskpulse_chats_waiting",
    "deskpulse_chat_longest_wait_seconds",
)
_CUMULATIVE_COUNTERS: tuple[str, ...] = (
    *(name + "_total" for name, _ in _TOTALS),
    "deskpulse_sla_breaches_total",
    "deskpulse_first_response_breaches_total",
    "deskpulse_chats_offered_total",
)
#: the most series a group has in the cumulative families but the histogram (whose buckets
#: are the store's): the counters, one per SLA metric of the breaches and achievements
_CUMULATIVE_SERIES = len(_TOTALS) + len(_SLA_BREACH_TOTALS) + 2 + len(_SLA_ACHIEVED_FIELDS)
#: series kept out of DESKPULSE_MAX_SERIES for the process's own pipeline counters (records
#: processed, rejected, ... per topic and type: under a hundred), rendered at each scrape
PIPELINE_RESERVE = 200
_GUARDED: tuple[str, ...] = (
    *_WINDOWED_RULE_OF,
    *_STATE_FAMILIES,
    *_CUMULATIVE_COUNTERS,
    _SLA_ACHIEVED + "_total",
    "deskpulse_first_response_duration_seconds",
)


#: the per-agent families (DESKPULSE_AGENT_METRICS=true), the status last
_AGENT_FAMILIES: tuple[str, ...] = tuple(spec.name for spec in AGENTS)
#: an agent's series in one window (its status counted in each: an upper bound)
_AGENT_SERIES = len(_AGENT_FAMILIES)


def agent_volume(group: Mapping[str, Any]) -> int:
    """How many samples an agent holds in a window (its rank for the series budget and
    the KPI snapshots)."""
    return int(
        group["first_response"]["count"]
        + group["next_response"]["count"]
        + group["chats"]["answered"]
        + group["csat"]["responses"]
        + group["tickets_solved"]
    )


def _agent_values(group: Mapping[str, Any]) -> list[tuple[str, float | None]]:
    """An agent's per-window gauge values, family by family (``None``: no samples)."""
    first, following = group["first_response"], group["next_response"]
    chats, csat = group["chats"], group["csat"]
    return [
        ("deskpulse_agent_first_responses", first["count"]),
        ("deskpulse_agent_first_response_mean_seconds", first["mean_seconds"]),
        ("deskpulse_agent_next_responses", following["count"]),
        ("deskpulse_agent_next_response_mean_seconds", following["mean_seconds"]),
        ("deskpulse_agent_chats_answered", chats["answered"]),
        ("deskpulse_agent_chat_handle_mean_seconds", chats["handle_mean_seconds"]),
        ("deskpulse_agent_csat_ratio", csat["ratio"]),
        ("deskpulse_agent_tickets_solved", group["tickets_solved"]),
        ("deskpulse_agent_occupancy_ratio", group["presence"]["occupancy_ratio"]),
    ]


_WINDOWED_LABELS = ("window", *DIMENSIONS)
#: a sample and the family it belongs to
_Sample = tuple[str, Sample]
#: a group's fields in one window, its windowed samples and their lines of text
_Windowed = tuple[Mapping[str, int], list[_Sample], list[str]]
#: a group's live fields, its levels, its earliest instants, whether a label value of it
#: is over the length limit
_Live = tuple[Mapping[str, int], dict[str, int], dict[str, int], bool]
#: samples of one family and their lines of text
_Made = list[tuple[Sample, str]]
#: a group's state samples and lines: its levels, those of the levels (the backlog, the
#: waiting chats), its earliest instants, the newest event time, those of the ages (the
#: oldest ticket, the longest wait)
_State = tuple[Mapping[str, int], tuple[_Made, _Made], Mapping[str, int], int, tuple[_Made, _Made]]
_FIRSTS = (OLDEST, LONGEST)
_NO_FIRSTS: Mapping[str, int] = {}
#: the stored fields of the backlog by status
_BACKLOG_NAMES = tuple(BACKLOG_FIELDS[code] for code in _STATE_STATUSES.values())


def _help(name: str) -> str:
    """HELP of a family, from the catalog."""
    return CATALOG[name].help


@dataclass(frozen=True)
class WindowRead:
    """One window's summed fields as of the last refresh (shared with the publishers)."""

    name: str
    start_s: int
    end_s: int
    #: the summed fields per ``(channel, queue, priority)``: read only (a group the newest
    #: buckets did not touch is the dict the next refresh shows too)
    groups: Mapping[tuple[str, ...], Mapping[str, int]]
    #: the backlog and the waiting chats at ``end_s`` (:func:`~streams.query.read_live`)
    live: Mapping[tuple[str, str, str], Mapping[str, int]] = dataclasses.field(default_factory=dict)
    #: the agents by status at ``end_s`` and the occupancy over the window
    #: (:func:`~streams.query.read_agents`), for the total's snapshot
    agents: Mapping[str, Any] | None = None
    #: the groups of the document grouped by agent (:func:`~streams.query.
    #: read_agent_groups`), for the per-agent families (``DESKPULSE_AGENT_METRICS``;
    #: empty without)
    agent_groups: Sequence[Mapping[str, Any]] = ()


#: :class:`_Shown` flags of a group: it is shown; a label value of it is over the limit
_SHOWN, _LONG = 1, 2


class _Shown:
    """One view's groups as of the last refresh (:meth:`KpiCollector._view`)."""

    __slots__ = ("fields", "flags", "long", "view")

    def __init__(self) -> None:
        #: key -> its dict
        self.fields: dict[tuple[str, ...], Mapping[str, int]] = {}
        #: key -> its flags (ints, not one more tuple a group for the collector to walk)
        self.flags: dict[tuple[str, ...], int] = {}
        #: the groups shown, by key (label values not cut)
        self.view: dict[tuple[str, ...], Mapping[str, int]] = {}
        #: how many groups shown have a label value over the limit
        self.long = 0


@dataclass(frozen=True)
class _Snapshot:
    """Families to render with ``generate_latest`` (anything with ``collect()`` will do)."""

    families: list[Metric]

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class KpiCollector(Collector):
    """Windowed event-time gauges, the cumulative family, the SLA instances now and
    Redis-held pipeline counters."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._families: list[Metric] = []
        #: the snapshot already in the text format: a scrape appends it as it is
        self.exposition = b""
        self.windows: list[WindowRead] = []
        self.refreshed_at: float | None = None
        #: series folded by the cardinality guard, added up over refreshes (a real counter)
        self.folded_total: Counter[str] = Counter()
        #: (window, group) -> its fields, windowed samples and their lines of text as of
        #: the last refresh
        self._windowed_cache: dict[tuple[str, tuple[str, ...]], _Windowed] = {}
        #: group -> its totals, cumulative samples and their lines of text as of the last
        #: refresh
        self._cumulative_cache: dict[tuple[str, ...], _Windowed] = {}
        #: id of a family of the refresh being built -> the lines of text of its samples,
        #: in their order (rendered once per group while its fields hold)
        self._lines_of: dict[int, list[str]] = {}
        #: the highest value of each deskpulse_sla_achieved_total series exported so far:
        #: a late event can take an achievement back in Redis, the counter never goes down
        self.achieved_high: dict[tuple[str, ...], int] = {}
        # The guard of each kind of family, kept from one refresh to the next: a refresh
        # ranks and sums again only the groups that moved. The cumulative counters show
        # the histogram's groups: as many as its buckets, _count and _sum allow (every
        # group has all of its series, as it has each counter).
        bounds = len(store.config.histogram_bounds_s) + 1
        self._windowed_guard = Guard(_WINDOWED_LABEL_SET, _WINDOWED_RULES)
        self._cumulative_guard = Guard(Rule(bounds + 2))
        self._state_guard = Guard(_STATE_RULE)
        #: per view (a window's name, "" the totals) its groups as of the last refresh
        self._shown: dict[str, _Shown] = {}
        #: the live state per group as of the last refresh, and its samples and lines
        self._live_seen: dict[tuple[str, ...], _Live] = {}
        self._state_cache: dict[tuple[str, ...], _State] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._families

    def describe(self) -> Iterator[Metric]:
        return iter(())

    async def refresh(self, now_s: float | None = None, *, store: Store | None = None) -> None:
        """Rebuild the snapshot from Redis (the only I/O of this class), read through
        ``store`` when given (a store whose Redis client belongs to the running event loop:
        the engine refreshes on a loop of its own), else the collector's."""
        now_s = time.time() if now_s is None else now_s
        store = self.store if store is None else store
        parts = await store.partitions()
        windows: list[WindowRead] = []
        per_window: list[tuple[str, dict[tuple[str, ...], dict[str, int]]]] = []
        # by group: each window's settled sum is projected onto the groups once while the
        # store keeps it, and a refresh adds the newest buckets to the groups they touch
        reads = await read_grouped_windows(
            store, widths_s=self.settings.windows, at_s=now_s, by=DIMENSIONS, partitions=parts
        )
        meta = await store.read_meta()
        watermarks = {p: int(meta.get(p, {}).get("wm", "0")) for p in parts}
        # the backlog and the waiting chats at the windows' end (they end together), for the
        # snapshots, and as of the newest event applied (read at the bucket boundary after
        # it: nothing is dated between the two), for the gauges; one read when they agree
        newest_ms = max(watermarks.values(), default=0)
        bucket_s = store.config.bucket_seconds
        newest_end_s = (newest_ms // (bucket_s * 1000) + 1) * bucket_s
        at_end: dict[int, Mapping[tuple[str, str, str], Mapping[str, int]]] = {}
        for end in {newest_end_s, *(end for _, end, _ in reads)}:
            at_end[end] = await read_live(
                store, end_s=end, partitions=parts, watermarks_ms=watermarks
            )
        agents = await read_agents(
            store,
            [(start, end) for start, end, _ in reads],
            partitions=parts,
            watermarks_ms=watermarks,
        )
        # the groups by agent for the per-agent families only: the KPI topic's publisher
        # reads the agents at its own pass (exporters/publish.py)
        by_agent = (
            await read_agent_groups(
                store,
                widths_s=self.settings.windows,
                at_s=now_s,
                partitions=parts,
                watermarks_ms=watermarks,
            )
            if self.settings.agent_metrics
            else [(start, end, []) for start, end, _ in reads]
        )
        per_agent: list[tuple[str, Sequence[Mapping[str, Any]]]] = []
        for width, (start, end, groups), presence, (_, _, agent_groups) in zip(
            self.settings.windows, reads, agents, by_agent, strict=True
        ):
            name = format_duration(width)
            windows.append(
                WindowRead(name, start, end, groups, at_end[end], presence, agent_groups)
            )
            per_window.append((name, groups))
            per_agent.append((name, agent_groups))
        totals = await store.read_totals_by_group()
        firing = await store.alert_states()
        live = at_end[newest_end_s]
        # Building and rendering the families is CPU work (tens of ms at 10,000 series): a
        # thread keeps the event loop (agents, scrapes) turning meanwhile.
        families, exposition = await asyncio.to_thread(
            self._build_and_render,
            per_window,
            totals,
            meta,
            firing,
            (live, newest_ms),
            per_agent if self.settings.agent_metrics else (),
        )
        self._families = families
        self.exposition = exposition
        self.windows = windows
        self.refreshed_at = now_s

    def _build_and_render(
        self,
        per_window: Sequence[tuple[str, dict[tuple[str, ...], dict[str, int]]]],
        totals: dict[tuple[str, ...], dict[str, int]],
        meta: dict[int, dict[str, str]],
        firing: dict[str, str],
        state: tuple[Mapping[tuple[str, str, str], Mapping[str, int]], int] = ({}, 0),
        per_agent: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = (),
    ) -> tuple[list[Metric], bytes]:
        live, newest_ms = state
        self._lines_of = {}
        windowed = [self._view(name, groups, samples=True) for name, groups in per_window]
        cumulative = self._view("", totals, samples=False)
        counts, firsts = self._state_groups(live)
        pipeline = _pipeline_families(meta) + _instance_families(meta)
        alerts = self._alert_family(firing)
        # the families without channel/queue/priority groups, the guard's own and the
        # refresh time are spent first; the groups share the rest of DESKPULSE_MAX_SERIES
        guarded = (*_GUARDED, *_AGENT_FAMILIES) if per_agent else _GUARDED
        fixed = _samples([*pipeline, alerts]) + 2 * len(guarded) + 1 + PIPELINE_RESERVE
        caps = share(
            [len(view) for view in windowed]
            + [len(counts), len(cumulative)]
            + [len(groups) for _, groups in per_agent],
            [_WINDOWED_SERIES] * len(windowed)
            + [_STATE_RULE.series, self._cumulative_series]
            + [_AGENT_SERIES] * len(per_agent),
            max(0, self.settings.max_series - fixed),
        )
        agent_caps = caps[len(windowed) + 2 :]
        caps = caps[: len(windowed) + 2]
        folded: Counter[str] = Counter()
        families = self._windowed_families(
            [name for name, _ in per_window], windowed, folded, caps[: len(windowed)]
        )
        families += self._cumulative_families(cumulative, folded, caps[-1])
        families += pipeline
        families += self._state_families(counts, firsts, newest_ms, folded, caps[-2])
        if per_agent:
            families += self._agent_families(per_agent, folded, agent_caps)
        families += self._guard_families(folded, guarded)
        families.append(alerts)
        refresh = GaugeMetricFamily(
            "deskpulse_kpi_refresh_timestamp_seconds",
            _help("deskpulse_kpi_refresh_timestamp_seconds"),
        )
        refresh.add_metric([], time.time())
        families.append(refresh)
        return families, self._render(families)

    def _render(self, families: Sequence[Metric]) -> bytes:
        """``generate_latest`` of ``families``, those of the groups from the lines kept
        per group (a group's lines are rendered again only when its fields changed)."""
        parts: list[str] = []
        for family in families:
            lines = self._lines_of.get(id(family))
            if lines is None or len(lines) != len(family.samples):
                parts.append(generate_latest(_Snapshot([family])).decode())
                continue
            parts.append(_header(family.name, family.documentation, family.type))
            parts.extend(lines)
        return "".join(parts).encode()

    @property
    def _cumulative_series(self) -> int:
        """The most series a group has in the cumulative families."""
        return _CUMULATIVE_SERIES + len(self.store.config.histogram_bounds_s) + 3

    def _alert_family(self, firing: dict[str, str]) -> Metric:
        family = GaugeMetricFamily(
            "deskpulse_alert_firing",
            _help("deskpulse_alert_firing"),
            labels=["rule", "window", *DIMENSIONS],
        )
        for key, stored in firing.items():
            rule, window, channel, queue, priority = key.split(SEP)
            state = 1.0 if stored == "firing" else 0.0
            family.add_metric([rule, window, channel, queue, priority], state)
        return family

    def _view(
        self, name: str, groups: Mapping[tuple[str, ...], Mapping[str, int]], *, samples: bool
    ) -> Mapping[tuple[str, ...], Mapping[str, int]]:
        """``groups`` (those with samples when ``samples``), label values cut to the length
        limit (:meth:`_cut`).

        Kept per view from one refresh to the next, with whether each group is shown and
        needs a cut: a refresh works them out for the groups that moved. A group whose
        fields are those of the last refresh in a new dict is shown with the last
        refresh's dict, so what follows (the guard, the lines kept per group) tells it
        unchanged by identity. Read only: the next refresh moves it.
        """
        shown = self._shown.get(name)
        if shown is None:
            shown = self._shown[name] = _Shown()
        seen, flags, view = shown.fields, shown.flags, shown.view
        cut = self.settings.label_max_length
        for key, fields in groups.items():
            before = seen.get(key)
            if before is not None and (before is fields or before == fields):
                continue
            if before is not None:
                shown.long -= flags[key] == _SHOWN | _LONG
            seen[key] = fields
            flag = _SHOWN if not samples or has_samples(fields) else 0
            if max(map(len, key), default=0) > cut:
                flag |= _LONG
            flags[key] = flag
            shown.long += flag == _SHOWN | _LONG
            if flag & _SHOWN:
                view[key] = fields
            else:
                view.pop(key, None)
        if len(seen) > len(groups):  # groups gone
            for key in seen.keys() - groups.keys():
                del seen[key]
                shown.long -= flags.pop(key) == _SHOWN | _LONG
                view.pop(key, None)
        return self._cut(view) if shown.long else view

    def _cut(
        self, groups: Mapping[tuple[str, ...], Mapping[str, int]]
    ) -> dict[tuple[str, ...], Mapping[str, int]]:
        """Label values cut to the length limit: groups sharing the cut prefix are one.

        A group whose labels need no cut is kept as it is, not copied; a label set that
        several groups share is a new dict (the groups' own are read only).
        """
        cut = self.settings.label_max_length
        merged: dict[tuple[str, ...], Mapping[str, int]] = {}
        own: dict[tuple[str, ...], dict[str, int]] = {}  # label sets whose dict is made here
        for key, fields in groups.items():
            short = tuple(v[:cut] for v in key)
            if short == key and key not in merged:
                merged[key] = fields
                continue
            target = own.get(short)
            if target is None:
                # a group's own dict is read only (shared with the next refresh's reads)
                target = merged[short] = own[short] = dict(merged.get(short, {}))
            for name, value in fields.items():
                target[name] = target.get(name, 0) + value
        return merged

    def _agent_families(
        self,
        per_agent: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
        folded: Counter[str],
        caps: Sequence[int],
    ) -> list[Metric]:
        """The per-agent gauges (``DESKPULSE_AGENT_METRICS=true``): in each window the
        ``caps[w]`` most active agents (by their samples, then their id); the rest left out
        and counted in ``folded``. An agent's status comes from the first window (they all
        end together)."""
        cut = self.settings.label_max_length
        gauges = {
            name: GaugeMetricFamily(name, _help(name), labels=["window", "agent"])
            for name in _AGENT_FAMILIES[:-1]
        }
        status = GaugeMetricFamily(
            _AGENT_FAMILIES[-1], _help(_AGENT_FAMILIES[-1]), labels=["agent", "status"]
        )
        statuses: set[str] = set()
        for index, ((window, groups), cap) in enumerate(zip(per_agent, caps, strict=True)):
            ranked = sorted(groups, key=lambda g: (-agent_volume(g), g["key"]["agent"]))
            if len(ranked) > cap:
                for name in _AGENT_FAMILIES:
                    folded[name] += len(ranked) - cap
            shown: set[str] = set()
            for group in ranked[:cap]:
                agent = group["key"]["agent"][:cut]
                if agent in shown:
                    continue  # two ids alike up to the label length: the first one
                shown.add(agent)
                for name, value in _agent_values(group):
                    if value is not None:
                        gauges[name].add_metric([window, agent], value)
                now = group["presence"]["status"]
                if index == 0 and now is not None and agent not in statuses:
                    statuses.add(agent)
                    status.add_metric([agent, now], 1)
        return [*gauges.values(), status]

    def _guard_families(
        self, folded: Counter[str], guarded: Sequence[str] = _GUARDED
    ) -> list[Metric]:
        """Folded series now (a gauge) and added up over refreshes (a counter), per family."""
        self.folded_total.update(folded)
        now = GaugeMetricFamily(
            "deskpulse_series_folded", _help("deskpulse_series_folded"), labels=["metric"]
        )
        total = CounterMetricFamily(
            "deskpulse_series_dropped", _help("deskpulse_series_dropped_total"), labels=["metric"]
        )
        for metric in guarded:
            now.add_metric([metric], folded.get(metric, 0))
            total.add_metric([metric], self.folded_total.get(metric, 0))
        return [now, total]

    def _windowed_families(
        self,
        names: Sequence[str],
        views: Sequence[Mapping[tuple[str, ...], Mapping[str, int]]],
        folded: Counter[str],
        caps: Sequence[int],
    ) -> list[Metric]:
        """A gauge per windowed KPI and a summary per duration, with a series per window and
        group the guard kept (and ``other``), at most ``caps[w]`` label sets in window
        ``w``; what it folded is added to ``folded``.

        Incremental: a group whose summed fields in a window are those of the last refresh
        keeps the samples computed then and their lines of text (its document is not built
        again, its lines not rendered again).
        """
        labels = ["window", *DIMENSIONS]
        gauges = {
            name: GaugeMetricFamily(name, _help(name), labels=labels) for name, *_ in _WINDOWED
        }
        summaries = {name: Metric(name, _help(name), "summary") for name, *_ in _SUMMARIES}
        sla_ratio = GaugeMetricFamily(_SLA_RATIO, _help(_SLA_RATIO), labels=[*labels, "metric"])
        families: dict[str, Metric] = {**gauges, **summaries, _SLA_RATIO: sla_ratio}
        previous = self._windowed_cache
        samples: dict[tuple[str, tuple[str, ...]], _Windowed] = {}
        lines: dict[str, list[str]] = {name: [] for name in families}
        # the groups computed again (their lines rendered together), and every group shown
        unrendered: list[_Windowed] = []
        shown: list[_Windowed] = []
        guard = self._windowed_guard
        folds = guard.fold(views, self.settings.max_series_per_metric, caps)
        for index, (window, view, fold) in enumerate(zip(names, views, folds, strict=True)):
            if fold.other is not None:
                present = guard.folded_present(index)
                for name, rules in _WINDOWED_RULE_OF.items():
                    for r in rules:
                        folded[name] += present[r] * _WINDOWED_RULES[r].series
            for key, fields in _fold_items(view, fold):
                cached = previous.get((window, key))
                if cached is None or (cached[0] is not fields and cached[0] != fields):
                    made = _windowed_samples([window, *key], fields)
                    cached = (fields, made, _alike(cached, made))
                    unrendered.append(cached)
                samples[(window, key)] = cached
                shown.append(cached)
                for family, sample in cached[1]:
                    families[family].samples.append(sample)
        # the next refresh reuses a group's samples and their text while its fields hold
        _render_lines(unrendered)
        for _, made, rendered in shown:
            for (family, _), line in zip(made, rendered, strict=True):
                lines[family].append(line)
        self._windowed_cache = samples
        for name, metric in families.items():
            self._lines_of[id(metric)] = lines[name]
        return [*gauges.values(), *summaries.values(), sla_ratio]

    def _state_groups(
        self, live: Mapping[tuple[str, str, str], Mapping[str, int]]
    ) -> tuple[dict[tuple[str, ...], dict[str, int]], dict[tuple[str, ...], dict[str, int]]]:
        """The levels now per group (label values cut), and each group's earliest instants
        (the oldest open ticket, the longest waiting chat).

        Kept per group while its live fields hold (told by identity, then equality), so a
        group that did not move has the dicts of the last refresh.
        """
        cut = self.settings.label_max_length
        seen = self._live_seen
        now: dict[tuple[str, ...], _Live] = {}
        long = False
        for key, fields in live.items():
            entry = seen.get(key)
            if entry is None or (entry[0] is not fields and entry[0] != fields):
                entry = (
                    fields,
                    {name: value for name, value in fields.items() if name not in _FIRSTS},
                    {name: value for name, value in fields.items() if name in _FIRSTS},
                    max(map(len, key), default=0) > cut,
                )
            now[key] = entry
            long = long or entry[3]
        self._live_seen = now
        if long:
            return _merged_state_groups(live, cut)
        counts = {key: entry[1] for key, entry in now.items()}
        firsts = {key: entry[2] for key, entry in now.items() if entry[2]}
        return counts, firsts

    def _state_families(
        self,
        counts: Mapping[tuple[str, ...], Mapping[str, int]],
        firsts: Mapping[tuple[str, ...], Mapping[str, int]],
        newest_ms: int,
        folded: Counter[str],
        cap: int,
    ) -> list[Metric]:
        """The backlog by status, its oldest ticket's age, the waiting chats and the longest
        wait, as of the newest event applied: a series per group the guard kept (and
        ``other``, at most ``cap`` label sets), ages against the newest event time.

        Incremental: a group's level samples and their lines are kept while its levels
        hold, its ages' while its earliest instants and the newest event time hold too.
        """
        families = _state_family_set()
        (fold,) = self._state_guard.fold([counts], self.settings.max_series_per_metric, [cap])
        kept = set(fold.kept)
        other_firsts: dict[str, int] = {}
        for group, first in firsts.items():
            if group not in kept:
                for name, value in first.items():
                    other_firsts[name] = min(value, other_firsts.get(name, value))
        # the series the groups folded would have had (see _level_samples, _age_samples)
        folded_groups = oldest_folded = longest_folded = 0
        for group, fields in counts.items():
            if group in kept:
                continue
            folded_groups += 1
            earliest = firsts.get(group)
            if earliest:
                oldest_folded += OLDEST in earliest and _has_tickets(fields)
                longest_folded += LONGEST in earliest and bool(fields.get(WAITING_FIELD, 0))
        folded[_STATE_FAMILIES[0]] += folded_groups * len(_STATE_STATUSES)
        folded[_STATE_FAMILIES[1]] += oldest_folded
        folded[_STATE_FAMILIES[2]] += folded_groups
        folded[_STATE_FAMILIES[3]] += longest_folded
        previous = self._state_cache
        cache: dict[tuple[str, ...], _State] = {}
        scratch = _state_family_set()
        for label_set, fields in _fold_items(counts, fold):
            first = other_firsts if label_set == OTHER else firsts.get(label_set, _NO_FIRSTS)
            cached = previous.get(label_set)
            levels = ages = None
            if cached is not None and (cached[0] is fields or cached[0] == fields):
                levels = cached[1]
                if cached[3] == newest_ms and (cached[2] is first or cached[2] == first):
                    ages = cached[4]
            if levels is None:
                levels = _level_samples(scratch, label_set, fields)
            if ages is None:
                ages = _age_samples(scratch, label_set, fields, first, newest_ms)
            elif cached is not None and cached[0] is fields and cached[2] is first:
                cache[label_set] = cached  # as it was: no new entry to keep
                continue
            cache[label_set] = (fields, levels, first, newest_ms, ages)
        self._state_cache = cache
        # in _STATE_FAMILIES order: the backlog, the oldest, the waiting, the longest
        made: list[_Made] = [[], [], [], []]
        for _, levels, _, _, ages in cache.values():
            made[0] += levels[0]
            made[1] += ages[0]
            made[2] += levels[1]
            made[3] += ages[1]
        for family, pairs in zip(families, made, strict=True):
            family.samples = [sample for sample, _ in pairs]
            self._lines_of[id(family)] = [line for _, line in pairs]
        return list[Metric](families)

    def _cumulative_families(
        self,
        cumulative: Mapping[tuple[str, ...], Mapping[str, int]],
        folded: Counter[str],
        cap: int,
    ) -> list[Metric]:
        """The cumulative counters and the first-response histogram, a series per group the
        guard kept (and ``other``, at most ``cap`` label sets); what it folded is added to
        ``folded``.

        Incremental: a group whose totals are those of the last refresh keeps its samples
        and their lines of text (the store hands the same dict for a group no commit moved:
        told by identity before equality).
        """
        bounds = [str(b) for b in self.store.config.histogram_bounds_s] + ["+Inf"]
        guard = self._cumulative_guard
        (fold,) = guard.fold([cumulative], self.settings.max_series_per_metric, [cap])
        families = _cumulative_family_set()
        previous = self._cumulative_cache
        cache: dict[tuple[str, ...], _Windowed] = {}
        unrendered: list[_Windowed] = []
        shown: list[_Windowed] = []
        scratch: dict[str, Any] | None = None
        for key, fields in _fold_items(cumulative, fold):
            cached = previous.get(key)
            if cached is None or (cached[0] is not fields and cached[0] != fields):
                if scratch is None:
                    scratch = _cumulative_family_set()
                made = self._cumulative_samples(scratch, key, fields, bounds)
                cached = (fields, made, _alike(cached, made))
                unrendered.append(cached)
            cache[key] = cached
            shown.append(cached)
            for family, sample in cached[1]:
                families[family].samples.append(sample)
        _render_lines(unrendered)
        lines: dict[str, list[str]] = {name: [] for name in families}
        for _, made, rendered in shown:
            for (family, _), line in zip(made, rendered, strict=True):
                lines[family].append(line)
        self._cumulative_cache = cache
        for name, metric in families.items():
            self._lines_of[id(metric)] = lines[name]
        for name in _CUMULATIVE_COUNTERS:
            folded[name] += fold.folded
        folded["deskpulse_sla_breaches_total"] += fold.folded * (len(_SLA_BREACH_TOTALS) - 1)
        folded[_SLA_ACHIEVED + "_total"] += fold.folded * len(_SLA_ACHIEVED_FIELDS)
        folded["deskpulse_first_response_duration_seconds"] += fold.folded * guard.rule.series
        return list(families.values())

    def _cumulative_samples(
        self,
        scratch: Mapping[str, Any],
        key: tuple[str, ...],
        fields: Mapping[str, int],
        bounds: Sequence[str],
    ) -> list[_Sample]:
        """One group's cumulative samples, (family, sample), added to the ``scratch``
        families as their ``add_metric`` makes them (and taken from there)."""
        sizes = {name: len(family.samples) for name, family in scratch.items()}
        values = list(key)
        for name, field in _TOTALS:
            scratch[name].add_metric(values, fields.get(field, 0))
        for metric, field in _SLA_BREACH_TOTALS:
            scratch["deskpulse_sla_breaches"].add_metric([*values, metric], fields.get(field, 0))
        for metric, field in _SLA_ACHIEVED_FIELDS:
            series = (*key, metric)
            high = max(fields.get(field, 0), self.achieved_high.get(series, 0))
            self.achieved_high[series] = high
            scratch[_SLA_ACHIEVED].add_metric([*values, metric], high)
        scratch["deskpulse_first_response_breaches"].add_metric(
            values, fields.get("fr", 0) - fields.get("fr_in", 0)
        )
        scratch["deskpulse_chats_offered"].add_metric(
            values, fields.get("ca", 0) + fields.get("cab", 0)
        )
        cumulative_count, buckets = 0, []
        for bound in bounds:
            cumulative_count += fields.get(f"frh:{bound}", 0)
            buckets.append((bound if bound == "+Inf" else f"{float(bound)}", cumulative_count))
        scratch["deskpulse_first_response_duration_seconds"].add_metric(
            values, buckets, sum_value=fields.get("fr_ms", 0) / 1000
        )
        return [
            (name, sample)
            for name, family in scratch.items()
            for sample in family.samples[sizes[name] :]
        ]


def _cumulative_family_set() -> dict[str, Any]:
    """The cumulative families, empty, by name (a counter's without ``_total``)."""
    labels = list(DIMENSIONS)
    families: dict[str, Any] = {
        name: CounterMetricFamily(name, _help(name + "_total"), labels=labels)
        for name, _ in _TOTALS
    }
    families["deskpulse_sla_breaches"] = CounterMetricFamily(
        "deskpulse_sla_breaches",
        _help("deskpulse_sla_breaches_total"),
        labels=[*labels, "metric"],
    )
    families["deskpulse_first_response_breaches"] = CounterMetricFamily(
        "deskpulse_first_response_breaches",
        _help("deskpulse_first_response_breaches_total"),
        labels=labels,
    )
    families["deskpulse_chats_offered"] = CounterMetricFamily(
        "deskpulse_chats_offered", _help("deskpulse_chats_offered_total"), labels=labels
    )
    families[_SLA_ACHIEVED] = CounterMetricFamily(
        _SLA_ACHIEVED, _help(_SLA_ACHIEVED + "_total"), labels=[*labels, "metric"]
    )
    families["deskpulse_first_response_duration_seconds"] = HistogramMetricFamily(
        "deskpulse_first_response_duration_seconds",
        _help("deskpulse_first_response_duration_seconds"),
        labels=labels,
    )
    return families


def _state_family_set() -> list[GaugeMetricFamily]:
    """The families of the state now, empty, in :data:`_STATE_FAMILIES` order."""
    labels = list(DIMENSIONS)
    backlog = GaugeMetricFamily(
        _STATE_FAMILIES[0], _help(_STATE_FAMILIES[0]), labels=[*labels, "status"]
    )
    return [
        backlog,
        *(GaugeMetricFamily(name, _help(name), labels=labels) for name in _STATE_FAMILIES[1:]),
    ]


def _made(family: GaugeMetricFamily, labels: list[str], value: float) -> tuple[Sample, str]:
    """The sample ``family.add_metric`` makes, and its line (the family left as it was)."""
    family.add_metric(labels, value)
    sample = family.samples.pop()
    return sample, _sample_line(sample)


def _has_tickets(fields: Mapping[str, int]) -> bool:
    """Whether a group's levels hold a ticket open."""
    return any(fields.get(name, 0) for name in _BACKLOG_NAMES)


def _level_samples(
    scratch: Sequence[GaugeMetricFamily], key: tuple[str, ...], fields: Mapping[str, int]
) -> tuple[list[tuple[Sample, str]], list[tuple[Sample, str]]]:
    """A group's backlog by status and its waiting chats: (sample, line) of each."""
    values = list(key)
    backlog = [
        _made(scratch[0], [*values, status], fields.get(BACKLOG_FIELDS[code], 0))
        for status, code in _STATE_STATUSES.items()
    ]
    return backlog, [_made(scratch[2], values, fields.get(WAITING_FIELD, 0))]


def _age_samples(
    scratch: Sequence[GaugeMetricFamily],
    key: tuple[str, ...],
    fields: Mapping[str, int],
    first: Mapping[str, int],
    newest_ms: int,
) -> tuple[list[tuple[Sample, str]], list[tuple[Sample, str]]]:
    """A group's oldest open ticket's age and its longest wait against the newest event
    time, where it has tickets open (chats waiting) and their earliest instant."""
    values = list(key)
    oldest = (
        [_made(scratch[1], values, max(0, newest_ms - first[OLDEST]) / 1000)]
        if _has_tickets(fields) and OLDEST in first
        else []
    )
    longest = (
        [_made(scratch[3], values, max(0, newest_ms - first[LONGEST]) / 1000)]
        if fields.get(WAITING_FIELD, 0) and LONGEST in first
        else []
    )
    return oldest, longest


def _merged_state_groups(
    live: Mapping[tuple[str, str, str], Mapping[str, int]], cut: int
) -> tuple[dict[tuple[str, ...], dict[str, int]], dict[tuple[str, ...], dict[str, int]]]:
    """:meth:`KpiCollector._state_groups` when a label value is over the length limit:
    the levels of the groups sharing a cut label set summed, their earliest the earliest."""
    counts: dict[tuple[str, ...], dict[str, int]] = {}
    firsts: dict[tuple[str, ...], dict[str, int]] = {}
    for key, fields in live.items():
        short = tuple(v[:cut] for v in key)
        target = counts.setdefault(short, {})
        for name, value in fields.items():
            if name in _FIRSTS:
                first = firsts.setdefault(short, {})
                first[name] = min(value, first.get(name, value))
            else:
                target[name] = target.get(name, 0) + value
    return counts, firsts


def _render_lines(groups: Sequence[_Windowed]) -> None:
    """Fill each group's list of lines with the text of its samples, one line each, as
    ``generate_latest`` writes them (:func:`_sample_line`): the lines it holds (of samples
    alike in the group's last samples, see :func:`_alike`) are kept."""
    for _, made, rendered in groups:
        if rendered:
            rendered[:] = [
                line or _sample_line(sample)
                for (_, sample), line in zip(made, rendered, strict=True)
            ]
        else:
            rendered[:] = [_sample_line(sample) for _, sample in made]


def _alike(cached: _Windowed | None, made: list[_Sample]) -> list[str]:
    """The lines of a group's last samples where its new ones are alike, position by
    position ("" where not: to render), or none when they do not line up: a group whose
    fields moved has most of its values as they were (an event moves a KPI or two)."""
    if cached is None or len(cached[1]) != len(made):
        return []
    return [
        line if before == after else ""
        for before, after, line in zip(cached[1], made, cached[2], strict=True)
    ]


#: the text of a label set, ``{name="value",...}``, by its labels' items in the order a
#: family holds them: rendered once while kept (at most this many, about 300 bytes each)
_LABEL_TEXT: dict[tuple[tuple[str, str], ...], str] = {}
LABEL_TEXT_KEPT = 100_000
#: one label's text, ``name="value"``, as ``generate_latest`` escapes it
_LABEL_PAIR: dict[tuple[str, str], str] = {}
#: the HELP and TYPE lines of a family, by name, help and type
_HEADERS: dict[tuple[str, str, str], str] = {}


def _sample_line(sample: Sample) -> str:
    """A sample's line of text as ``generate_latest`` writes it: its name, its label set's
    text (rendered by prometheus_client once per label set, kept) and its value (Go's
    float formatting). For a sample of a family of ours: a valid name, no timestamp."""
    if sample.timestamp is not None:
        raise ValueError(f"a sample of the collector's with a timestamp: {sample}")
    key = tuple(sample.labels.items())
    text = _LABEL_TEXT.get(key)
    if text is None:
        if len(_LABEL_TEXT) >= LABEL_TEXT_KEPT:
            _LABEL_TEXT.clear()
        pairs = [_label_pair(name, value) for name, value in sorted(key)]
        text = _LABEL_TEXT[key] = "{" + ",".join(pairs) + "}" if pairs else ""
    return f"{sample.name}{text} {value_text(sample.value)}\n"


def _label_pair(name: str, value: str) -> str:
    """``name="value"`` as ``generate_latest`` writes one label (escaped), kept."""
    found = _LABEL_PAIR.get((name, value))
    if found is None:
        if len(_LABEL_PAIR) >= LABEL_TEXT_KEPT:
            _LABEL_PAIR.clear()
        probe = Metric("deskpulse_label", "", "untyped")
        probe.samples = [Sample("x", {name: value}, 0.0)]
        line = generate_latest(_Snapshot([probe])).decode().split("\n")[2]
        if not (line.startswith("x{") and line.endswith("} 0.0")):
            raise RuntimeError(f"prometheus_client wrote a label as {line!r}")
        found = _LABEL_PAIR[(name, value)] = line[2:-5]
    return found


def _header(name: str, documentation: str, kind: str) -> str:
    """A family's HELP and TYPE lines as ``generate_latest`` writes them, kept."""
    found = _HEADERS.get((name, documentation, kind))
    if found is None:
        empty = Metric(name, documentation, kind)
        found = _HEADERS[(name, documentation, kind)] = generate_latest(_Snapshot([empty])).decode()
    return found


def _windowed_samples(values: list[str], fields: Mapping[str, int]) -> list[_Sample]:
    """One group's windowed samples, (family, sample), from its fields in one window: a
    gauge per KPI with a value, the summaries where it has samples, the SLA ratios."""
    base = dict(zip(_WINDOWED_LABELS, values, strict=True))
    doc = group_document({}, fields)
    out: list[_Sample] = []
    for name, path, _ in _WINDOWED:
        value: Any = doc
        for part in path:
            value = value[part]
        if value is not None:
            out.append((name, Sample(name, base, float(value))))
    for name, section, qs, count_field, sum_field in _SUMMARIES:
        count = fields.get(count_field, 0)
        if count <= 0:
            continue
        quantiles: Any = doc
        for part in section:
            quantiles = quantiles[part]
        for q, field in qs:
            quantile = quantiles[field]
            if quantile is not None:
                out.append((name, Sample(name, {**base, "quantile": q}, float(quantile))))
        out.append((name, Sample(name + "_count", base, float(count))))
        out.append((name, Sample(name + "_sum", base, fields.get(sum_field, 0) / 1000)))
    for metric, _ in _SLA_RATIO_REQUIRES:
        ratio = doc["sla"][metric]["achieved_ratio"]
        if ratio is not None:
            out.append((_SLA_RATIO, Sample(_SLA_RATIO, {**base, "metric": metric}, float(ratio))))
    return out


def _pipeline_families(meta: Mapping[int, Mapping[str, str]]) -> list[Metric]:
    """The pipeline counters the partitions' metas hold (duplicates, late, ignored, orphaned
    and held events), summed over the partitions."""
    sums: Counter[str] = Counter()
    for partition_meta in meta.values():
        for name, raw in partition_meta.items():
            if name.split(":")[0] in ("dup", "late", "ignored", "orphaned", "held"):
                sums[name] += int(raw)
    duplicate = CounterMetricFamily(
        "deskpulse_events_duplicate",
        _help("deskpulse_events_duplicate_total"),
        labels=["topic"],
    )
    late = CounterMetricFamily(
        "deskpulse_events_late", _help("deskpulse_events_late_total"), labels=["topic"]
    )
    ignored = CounterMetricFamily(
        "deskpulse_events_ignored", _help("deskpulse_events_ignored_total"), labels=["reason"]
    )
    # counted from the first ignored event on; a deployment without one shows it at 0
    ignored_reasons = {"closed": 0}
    for name, value in sums.items():
        kind, _, topic = name.partition(":")
        if kind == "dup":
            duplicate.add_metric([topic], value)
        elif kind == "late":
            late.add_metric([topic], value)
        elif kind == "ignored":
            ignored_reasons[topic] = value
    for reason, value in sorted(ignored_reasons.items()):
        ignored.add_metric([reason], value)
    orphaned = CounterMetricFamily(
        "deskpulse_events_orphaned", _help("deskpulse_events_orphaned_total")
    )
    orphaned.add_metric([], sums.get("orphaned", 0))
    expired = CounterMetricFamily(
        "deskpulse_tickets_expired", _help("deskpulse_tickets_expired_total")
    )
    expired.add_metric(
        [], sum(int(partition_meta.get("expired", 0)) for partition_meta in meta.values())
    )
    held = GaugeMetricFamily("deskpulse_events_held", _help("deskpulse_events_held"))
    held.add_metric([], sums.get("held", 0))
    return [duplicate, late, ignored, orphaned, expired, held]


def _instance_families(meta: Mapping[int, Mapping[str, str]]) -> list[Metric]:
    """SLA instances running and at risk now, per SLA metric: the counts the commits keep
    in the partitions' metas, summed over the partitions (every metric, 0 included)."""
    families: list[Metric] = []
    for name, fields in (
        ("deskpulse_sla_running", RUNNING_FIELDS),
        ("deskpulse_sla_at_risk", AT_RISK_FIELDS),
    ):
        family = GaugeMetricFamily(name, _help(name), labels=["metric"])
        for metric, field in fields.items():
            count = sum(int(partition_meta.get(field, 0)) for partition_meta in meta.values())
            family.add_metric([metric], count)
        families.append(family)
    return families


def _samples(families: Sequence[Metric]) -> int:
    """Series the families hold."""
    return sum(len(family.samples) for family in families)


def _fold_items(
    groups: Mapping[tuple[str, ...], Mapping[str, int]], fold: Fold
) -> Iterator[tuple[tuple[str, ...], Mapping[str, int]]]:
    """(labels, fields) of each label set a fold shows: the kept groups, then ``other``."""
    for key in fold.kept:
        yield key, groups[key]
    if fold.other is not None:
        yield OTHER, fold.other


def build_registry(
    settings: Settings, store: Store
) -> tuple[CollectorRegistry, PipelineMetrics, KpiCollector]:
    """A fresh registry with the pipeline counters and the KPI collector registered.

    ``PipelineMetrics.registry`` holds the pipeline counters alone: a scrape renders those
    (they move by the millisecond) and appends ``KpiCollector.exposition``, rendered when
    the snapshot was refreshed — see :func:`render`.
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double the exposition for no KPI value
    pipeline_registry = CollectorRegistry(auto_describe=False)
    pipeline = PipelineMetrics(pipeline_registry, settings.input_topics, settings)
    collector = KpiCollector(store, settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(pipeline_registry)  # a registry is a collector too
    registry.register(collector)
    return registry, pipeline, collector


def render(pipeline: PipelineMetrics, collector: KpiCollector) -> bytes:
    """The body of ``GET /metrics``: live pipeline counters plus the pre-rendered snapshot."""
    return generate_latest(pipeline.registry) + collector.exposition
