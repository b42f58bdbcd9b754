"""Prometheus exposition: per-process pipeline counters and the KPI collector.

:class:`KpiCollector` is one class with one ``collect()`` that yields metric families
built from an in-memory snapshot. ``collect()`` never does I/O — the aiohttp handler calls
it on the worker's event loop — and :meth:`KpiCollector.refresh` rebuilds the snapshot
from Redis in a background task. The collector is stateless beyond that snapshot: any
worker, or a separate process, reading the same Redis exports the same numbers.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporters.catalog import CATALOG
from models.settings import Settings, format_duration
from streams import __version__
from streams.core import SEP, group_document, has_samples, split_dim_key
from streams.query import group_fields, read_window
from streams.store import Store

__all__ = ["KpiCollector", "PipelineMetrics", "build_registry"]

DIMS = ("channel", "queue", "priority")
_EVENT_TIME_NOTE = (
    " Event-time result over the rolling `window` computed by deskpulse (a late event lands"
    " in the bucket it belongs to, which Prometheus cannot compute from scrapes); a ratio with"
    " no samples in its window is left out."
)


class PipelineMetrics:
    """The worker process's own counters (the engine's ``Metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._processed = PromCounter(
            "deskpulse_events_processed",
            "Valid input events processed by this process.",
            ["topic", "type"],
            registry=registry,
        )
        self._rejected = PromCounter(
            "deskpulse_events_rejected",
            "Input records rejected and dead-lettered by this process, by reason.",
            ["topic", "reason"],
            registry=registry,
        )
        flush = CATALOG["deskpulse_flush_duration_seconds"]
        self._flush = Histogram(flush.name, flush.help, registry=registry, buckets=flush.buckets)
        batch = CATALOG["deskpulse_batch_events"]
        self._batch = Histogram(batch.name, batch.help, registry=registry, buckets=batch.buckets)
        build = CATALOG["deskpulse_build_info"]
        Gauge(build.name, build.help, ["version"], registry=registry).labels(__version__).set(1)
        self._event_time = Gauge(
            "deskpulse_last_event_timestamp_seconds",
            "Event time of the newest event applied by this process, per topic.",
            ["topic"],
            registry=registry,
        )
        self._redis_up = Gauge(
            "deskpulse_redis_up", "1 if the last Redis operation succeeded.", registry=registry
        )
        self.broker_up = Gauge(
            "deskpulse_broker_up", "1 if the Kafka broker answered lately.", registry=registry
        )
        self.lag = Gauge(
            "deskpulse_consumer_lag_messages",
            "Messages behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self._redis_up.set(1)
        self.broker_up.set(1)

    def processed(self, topic: str, event_type: str, count: int) -> None:
        self._processed.labels(topic, event_type).inc(count)

    def rejected(self, topic: str, reason: str, count: int) -> None:
        self._rejected.labels(topic, reason).inc(count)

    def flushed(self, seconds: float, events: int) -> None:
        self._flush.observe(seconds)
        self._batch.observe(events)

    def event_time(self, topic: str, t_s: float) -> None:
        gauge = self._event_time.labels(topic)
        if t_s > gauge._value.get():
            gauge.set(t_s)

    def redis_up(self, up: bool) -> None:
        self._redis_up.set(1 if up else 0)


# (metric name, group-document path, help, is a ratio that is omitted when undefined)
_WINDOWED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("deskpulse_tickets_created", ("tickets_created",), "Tickets created."),
    ("deskpulse_chats_requested", ("chats", "requested"), "Chats requested."),
    ("deskpulse_chats_answered", ("chats", "answered"), "Chats answered."),
    ("deskpulse_chats_abandoned", ("chats", "abandoned"), "Chats abandoned (short excluded)."),
    ("deskpulse_chats_short_abandoned", ("chats", "short_abandoned"), "Short abandons."),
    ("deskpulse_first_responses", ("first_response", "count"), "First responses."),
    (
        "deskpulse_first_response_average_seconds",
        ("first_response", "mean_seconds"),
        "Mean first response time.",
    ),
    (
        "deskpulse_first_response_within_target_ratio",
        ("first_response", "within_target_ratio"),
        "Share of first responses within the priority's target.",
    ),
    (
        "deskpulse_chat_abandonment_ratio",
        ("chats", "abandonment_ratio"),
        "Abandoned / (answered + abandoned).",
    ),
    (
        "deskpulse_chat_service_level_ratio",
        ("chats", "service_level_ratio"),
        "Answered within the answer target / (answered + abandoned).",
    ),
    ("deskpulse_csat_responses", ("csat", "responses"), "CSAT responses."),
    ("deskpulse_csat_ratio", ("csat", "ratio"), "Satisfied (4-5) / CSAT responses."),
    ("deskpulse_csat_score_average", ("csat", "average"), "Mean CSAT score (1-5)."),
    ("deskpulse_nps_responses", ("nps", "responses"), "NPS responses."),
    ("deskpulse_nps_score", ("nps", "score"), "NPS, -100..100."),
    ("deskpulse_ces_responses", ("ces", "responses"), "CES responses."),
    ("deskpulse_ces_score_average", ("ces", "average"), "Mean CES score (1-7)."),
)
_QUANTILES: tuple[tuple[str, str, tuple[tuple[str, str], ...], str], ...] = (
    (
        "deskpulse_first_response_seconds",
        "first_response",
        (("0.5", "p50_seconds"), ("0.9", "p90_seconds"), ("0.95", "p95_seconds")),
        "First response time quantiles (sketch, within 1 % of exact).",
    ),
    (
        "deskpulse_chat_wait_seconds",
        "chats",
        (("0.5", "wait_p50_seconds"), ("0.9", "wait_p90_seconds")),
        "Wait of answered chats, quantiles (sketch, within 1 % of exact).",
    ),
)
# cumulative family: (exposed name without _total, stored field)
_TOTALS: tuple[tuple[str, str, str], ...] = (
    ("deskpulse_tickets_created", "tc", "Tickets created since the state began."),
    ("deskpulse_chats_requested", "cr", "Chats requested."),
    ("deskpulse_first_responses", "fr", "First public agent replies."),
    ("deskpulse_chats_answered", "ca", "Chats answered."),
    ("deskpulse_chats_answered_in_target", "ca_in", "Chats answered within the target."),
    ("deskpulse_chats_abandoned", "cab", "Chats abandoned (short abandons excluded)."),
    ("deskpulse_chats_short_abandoned", "cs", "Chats short-abandoned."),
    ("deskpulse_csat_responses", "cs_n", "CSAT responses."),
    ("deskpulse_csat_satisfied_responses", "cs_sat", "CSAT responses scoring 4-5."),
    ("deskpulse_sla_breaches", "sla", "Tickets unanswered past their target (sla.breached)."),
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _label(value: str, limit: int) -> str:
    return value[:limit]


@dataclass(frozen=True)
class WindowRead:
    """One window's summed fields as of the last refresh (shared with the publishers)."""

    name: str
    start_s: int
    end_s: int
    fields: Counter[str]


class KpiCollector(Collector):
    """Windowed event-time gauges, the cumulative family and Redis-held pipeline counters."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._families: list[Metric] = []
        self.windows: list[WindowRead] = []
        self.refreshed_at: float | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._families

    def describe(self) -> Iterator[Metric]:
        return iter(())

    async def refresh(self, now_s: float | None = None) -> None:
        """Rebuild the snapshot from Redis (the only I/O of this class)."""
        now_s = time.time() if now_s is None else now_s
        parts = await self.store.partitions()
        windows: list[WindowRead] = []
        per_window: list[tuple[str, dict[tuple[str, ...], dict[str, int]]]] = []
        for width in self.settings.windows:
            start, end, merged = await read_window(
                self.store, width_s=width, at_s=now_s, partitions=parts
            )
            name = format_duration(width)
            windows.append(WindowRead(name, start, end, merged))
            per_window.append((name, group_fields(merged, DIMS)))
        totals = await self.store.read_totals()
        meta = await self.store.read_meta()
        firing = await self.store.redis.hgetall(f"{self.store.prefix}:alerts")
        families = self._build(per_window, totals, meta)
        families.append(self._alert_family(firing))
        self._families = families
        self.windows = windows
        self.refreshed_at = now_s
        refresh = GaugeMetricFamily(
            "deskpulse_kpi_refresh_timestamp_seconds",
            "When the KPI snapshot behind these metrics was last read from Redis.",
        )
        refresh.add_metric([], time.time())
        self._families.append(refresh)

    def _alert_family(self, firing: dict[Any, Any]) -> Metric:
        family = GaugeMetricFamily(
            "deskpulse_alert_firing",
            "1 while a threshold rule (DESKPULSE_ALERT_RULES) holds for a group.",
            labels=["rule", "window", *DIMS],
        )
        for raw_key, raw_state in firing.items():
            rule, window, channel, queue, priority = _text(raw_key).split(SEP)
            if _text(raw_state) == "firing":
                family.add_metric([rule, window, channel, queue, priority], 1.0)
        return family

    def _guard(
        self, groups: dict[tuple[str, ...], dict[str, int]], dropped: Counter[str], metric: str
    ) -> dict[tuple[str, ...], dict[str, int]]:
        limit = self.settings.max_series_per_metric // max(1, len(self.settings.windows))
        if len(groups) <= limit:
            return groups
        ranked = sorted(groups, key=lambda k: -sum(v for v in groups[k].values() if v > 0))
        kept = {k: groups[k] for k in ranked[: limit - 1]}
        other: dict[str, int] = defaultdict(int)
        for key in ranked[limit - 1 :]:
            for name, value in groups[key].items():
                other[name] += value
        kept[("other", "other", "other")] = other
        dropped[metric] += len(ranked) - (limit - 1)
        return kept

    def _build(
        self,
        per_window: Sequence[tuple[str, dict[tuple[str, ...], dict[str, int]]]],
        totals: Counter[str],
        meta: dict[int, dict[str, str]],
    ) -> list[Metric]:
        limit = self.settings.label_max_length
        labels = ["window", *DIMS]
        gauges = {
            name: GaugeMetricFamily(name, help_ + _EVENT_TIME_NOTE, labels=labels)
            for name, _, help_ in _WINDOWED
        }
        quantiles = {
            name: GaugeMetricFamily(name, help_ + _EVENT_TIME_NOTE, labels=[*labels, "quantile"])
            for name, _, _, help_ in _QUANTILES
        }
        dropped: Counter[str] = Counter()
        for window, raw_groups in per_window:
            groups = self._guard(raw_groups, dropped, "windowed")
            for key, fields in groups.items():
                if not has_samples(fields):
                    continue
                doc = group_document({}, fields)
                values = [window, *(_label(v, limit) for v in key)]
                for name, path, _ in _WINDOWED:
                    value: Any = doc
                    for part in path:
                        value = value[part]
                    if value is not None:
                        gauges[name].add_metric(values, float(value))
                for name, section, qs, _ in _QUANTILES:
                    for q, field in qs:
                        value = doc[section][field]
                        if value is not None:
                            quantiles[name].add_metric([*values, q], float(value))
        families: list[Metric] = [*gauges.values(), *quantiles.values()]
        by_dims: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
        for name, value in totals.items():
            dims, _, field = name.rpartition(SEP)
            by_dims[split_dim_key(dims)][field] = value
        grouped = self._guard(dict(by_dims), dropped, "cumulative")
        counters = {
            name: CounterMetricFamily(name, help_, labels=list(DIMS)) for name, _, help_ in _TOTALS
        }
        breaches = CounterMetricFamily(
            "deskpulse_first_response_breaches",
            "First responses later than the priority's target.",
            labels=list(DIMS),
        )
        offered = CounterMetricFamily(
            "deskpulse_chats_offered",
            "Chats answered or abandoned (short abandons excluded).",
            labels=list(DIMS),
        )
        histogram = HistogramMetricFamily(
            "deskpulse_first_response_duration_seconds",
            "First response times (bucket bounds include the configured targets).",
            labels=list(DIMS),
        )
        bounds = [str(b) for b in self.store.config.histogram_bounds_s] + ["+Inf"]
        for key, fields in grouped.items():
            values = [_label(v, limit) for v in key]
            for name, field, _ in _TOTALS:
                counters[name].add_metric(values, fields.get(field, 0))
            breaches.add_metric(values, fields.get("fr", 0) - fields.get("fr_in", 0))
            offered.add_metric(values, fields.get("ca", 0) + fields.get("cab", 0))
            cumulative, buckets = 0, []
            for bound in bounds:
                cumulative += fields.get(f"frh:{bound}", 0)
                buckets.append((bound if bound == "+Inf" else f"{float(bound)}", cumulative))
            histogram.add_metric(values, buckets, sum_value=fields.get("fr_ms", 0) / 1000)
        families += [*counters.values(), breaches, offered, histogram]
        sums: Counter[str] = Counter()
        for partition_meta in meta.values():
            for name, value in partition_meta.items():
                if name.split(":")[0] in ("dup", "late", "orphaned", "held"):
                    sums[name] += int(value)
        duplicate = CounterMetricFamily(
            "deskpulse_events_duplicate",
            "Events whose event_id was seen before (they change nothing).",
            labels=["topic"],
        )
        late = CounterMetricFamily(
            "deskpulse_events_late",
            "Events older than the retention behind the newest event time; not applied.",
            labels=["topic"],
        )
        for name, value in sums.items():
            kind, _, topic = name.partition(":")
            if kind == "dup":
                duplicate.add_metric([topic], value)
            elif kind == "late":
                late.add_metric([topic], value)
        orphaned = CounterMetricFamily(
            "deskpulse_events_orphaned",
            "Held events whose conversation never opened within retention.",
        )
        orphaned.add_metric([], sums.get("orphaned", 0))
        held = GaugeMetricFamily(
            "deskpulse_events_held", "Events waiting for their conversation's opening event."
        )
        held.add_metric([], sums.get("held", 0))
        guard = CounterMetricFamily(
            "deskpulse_series_dropped",
            'Groups folded into channel/queue/priority="other" by the cardinality guard.',
            labels=["metric"],
        )
        for metric, count in dropped.items():
            guard.add_metric([metric], count)
        families += [duplicate, late, orphaned, held, guard]
        return families


def build_registry(
    settings: Settings, store: Store
) -> tuple[CollectorRegistry, PipelineMetrics, KpiCollector]:
    """A fresh registry with the pipeline counters and the KPI collector registered."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double the exposition for no KPI value
    registry = CollectorRegistry(auto_describe=False)
    pipeline = PipelineMetrics(registry)
    collector = KpiCollector(store, settings)
    registry.register(collector)
    return registry, pipeline, collector


def group_document_for(fields: dict[str, int]) -> dict[str, Any]:
    """The group document without a key (for tests and the snapshot publisher)."""
    return group_document({}, fields)
