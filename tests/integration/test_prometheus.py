"""The Prometheus exposition (README.md, "Prometheus metrics").

Unit tests drive :class:`~exporters.prometheus.KpiCollector` against real Redis state
written by the :class:`~streams.engine.Engine` (decode, fold, commit), then read a fresh
``CollectorRegistry`` with ``get_sample_value``. The collector is always read after its
Redis connection was closed: ``collect()`` must never do I/O. A live worker's ``/metrics``
is read in tests/system/test_prometheus_live.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from deskpulse.exporters.catalog import CATALOG, first_response_buckets
from deskpulse.exporters.prometheus import KpiCollector, PipelineMetrics
from deskpulse.models.events import DIMENSIONS
from deskpulse.models.settings import RECORD_KINDS, Settings
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.engine import Engine, SourceRecord
from deskpulse.streams.store import Store
from tests.conftest import HOST, RedisServer
from tests.support import stamp

# 2026-11-23T01:00:30Z: half a minute into a bucket, so the window end is rounded up.
NOW_S = 1_795_395_630.0
DIMS = DIMENSIONS
# Configured targets: urgent 20 min is not on the fixed histogram ladder.
TARGETS = {"urgent": 1200, "high": 14400, "normal": 28800, "low": 86400}


def event(type_: str, t_s: float, **fields: Any) -> tuple[str, bytes, bytes]:
    """``(topic kind, key, value)`` of one input event, keyed by its conversation."""
    kind = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}[type_.split(".")[0]]
    key = fields.get("ticket_id") or fields["chat_id"]
    body = {"event_id": uuid.uuid4().hex, "type": type_, "occurred_at": stamp(t_s), **fields}
    return kind, str(key).encode(), orjson.dumps(body)


class DeadLetters:
    """A dead-letter sink that keeps what it is given (no broker in the unit tests)."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    async def send(self, records: Sequence[Any]) -> None:
        self.records.extend(records)


def unit_settings(redis_server: RedisServer, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": SecretStr(redis_server.url),
        "redis_prefix": f"u{uuid.uuid4().hex[:10]}",
        "windows": (300, 3600),
        "first_response_targets": TARGETS,
    }
    values.update(update)
    return Settings(**values)


async def _collect_from(
    settings: Settings, events: Sequence[tuple[str, bytes, bytes]], now_s: float
) -> KpiCollector:
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        dead = DeadLetters()
        engine = Engine(
            settings, store, dead, PipelineMetrics(CollectorRegistry()), clock=lambda: now_s
        )
        topics = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}
        offsets: Counter[tuple[str, int]] = Counter()
        records = []
        for kind, key, value in events:
            # co-partitioned like the real topics: one conversation, one partition
            topic, partition = topics[kind], zlib.crc32(key) % settings.topic_partitions
            records.append(SourceRecord(topic, partition, offsets[(topic, partition)], key, value))
            offsets[(topic, partition)] += 1
        await engine.process(records)
        assert not dead.records, dead.records
        collector = KpiCollector(store, settings)
        await collector.refresh(now_s)
        return collector
    finally:
        await redis.aclose()  # from here on the collector has no connection to use


def collector_for(
    settings: Settings, events: Sequence[tuple[str, bytes, bytes]], now_s: float = NOW_S
) -> tuple[KpiCollector, CollectorRegistry]:
    """A refreshed collector over ``events`` (its Redis connection closed) and its registry."""
    collector = asyncio.run(_collect_from(settings, events, now_s))
    registry = CollectorRegistry()
    registry.register(collector)
    return collector, registry


def labels(window: str | None, channel: str, queue: str, priority: str, **extra: str) -> dict:
    found = {"channel": channel, "queue": queue, "priority": priority, **extra}
    if window is not None:
        found["window"] = window
    return found


def label_sets(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [
        dict(s.labels) for family in registry.collect() for s in family.samples if s.name == name
    ]


# -- a small, hand-computed support day -------------------------------------------------------

EMAIL_HIGH = ("email", "billing", "high")
EMAIL_URGENT = ("email", "billing", "urgent")
WEB = ("web", "general", "normal")
CHAT = ("chat", "general", "normal")
CHAT_SALES = ("chat", "sales", "high")


def _dims(group: tuple[str, str, str]) -> dict[str, str]:
    return dict(zip(DIMS, group, strict=True))


def day() -> list[tuple[str, bytes, bytes]]:
    """Tickets, chats and surveys around NOW_S, with KPIs worked out in the tests below."""
    t = NOW_S
    return [
        # two high tickets answered in 600 s and 30 s, rated 5 and 2
        event("ticket.created", t - 1800, ticket_id="T1", **_dims(EMAIL_HIGH)),
        event("ticket.replied", t - 1200, ticket_id="T1", author_role="agent"),
        event("survey.responded", t - 1100, ticket_id="T1", kind="csat", score=5),
        event("ticket.created", t - 1700, ticket_id="T2", **_dims(EMAIL_HIGH)),
        event("ticket.replied", t - 1690, ticket_id="T2", author_role="customer"),
        event("ticket.replied", t - 1680, ticket_id="T2", author_role="agent", public=False),
        event("ticket.replied", t - 1670, ticket_id="T2", author_role="agent"),
        event("survey.responded", t - 1000, ticket_id="T2", kind="csat", score=2),
        # an urgent ticket answered after 3000 s: over its 1200 s target
        event("ticket.created", t - 3500, ticket_id="T3", **_dims(EMAIL_URGENT)),
        event("ticket.replied", t - 500, ticket_id="T3", author_role="agent"),
        # a ticket nobody answered yet: counts, but no ratio of its own
        event("ticket.created", t - 600, ticket_id="T4", **_dims(WEB)),
        event("ticket.replied", t - 590, ticket_id="T4", author_role="customer"),
        # chats in the last five minutes: answered in 10 s, abandoned after 60 s, short 2 s
        event("chat.requested", t - 240, chat_id="C1", **_dims(CHAT)),
        event("chat.accepted", t - 230, chat_id="C1"),
        event("survey.responded", t - 100, chat_id="C1", kind="nps", score=10),
        event("chat.requested", t - 200, chat_id="C2", **_dims(CHAT)),
        event("chat.abandoned", t - 140, chat_id="C2"),
        event("chat.requested", t - 100, chat_id="C3", **_dims(CHAT)),
        event("chat.ended", t - 98, chat_id="C3", ended_by="customer"),
        # an older chat, answered in 30 s (over the 20 s target), with a CES survey
        event("chat.requested", t - 1000, chat_id="C4", **_dims(CHAT_SALES)),
        event("chat.accepted", t - 970, chat_id="C4"),
        event("survey.responded", t - 900, chat_id="C4", kind="ces", score=6),
    ]


@pytest.fixture
def day_registry(redis_server: RedisServer) -> CollectorRegistry:
    _, registry = collector_for(unit_settings(redis_server), day())
    return registry


@pytest.mark.parametrize(
    ("name", "window", "group", "expected"),
    [
        # name                                          window group          value
        ("deskpulse_tickets_created", "1h", EMAIL_HIGH, 2),
        ("deskpulse_tickets_created", "1h", EMAIL_URGENT, 1),
        ("deskpulse_tickets_created", "1h", WEB, 1),
        ("deskpulse_tickets_created", "1h", CHAT, 0),  # counts of a group with samples: 0
        ("deskpulse_first_responses", "1h", EMAIL_HIGH, 2),
        ("deskpulse_first_responses", "1h", WEB, 0),
        ("deskpulse_first_response_average_seconds", "1h", EMAIL_HIGH, 315.0),
        ("deskpulse_first_response_average_seconds", "1h", EMAIL_URGENT, 3000.0),
        ("deskpulse_first_response_within_target_ratio", "1h", EMAIL_HIGH, 1.0),
        ("deskpulse_first_response_within_target_ratio", "1h", EMAIL_URGENT, 0.0),
        ("deskpulse_first_responses", "1h", EMAIL_URGENT, 1),
        ("deskpulse_chats_requested", "5m", CHAT, 3),
        ("deskpulse_chats_answered", "5m", CHAT, 1),
        ("deskpulse_chats_abandoned", "5m", CHAT, 1),
        ("deskpulse_chats_short_abandoned", "5m", CHAT, 1),
        ("deskpulse_chat_abandonment_ratio", "5m", CHAT, 0.5),
        ("deskpulse_chat_service_level_ratio", "5m", CHAT, 0.5),
        ("deskpulse_chat_service_level_ratio", "1h", CHAT_SALES, 0.0),
        ("deskpulse_csat_responses", "1h", EMAIL_HIGH, 2),
        ("deskpulse_csat_ratio", "1h", EMAIL_HIGH, 0.5),
        ("deskpulse_csat_score_average", "1h", EMAIL_HIGH, 3.5),
        ("deskpulse_nps_responses", "5m", CHAT, 1),
        ("deskpulse_nps_score", "5m", CHAT, 100.0),
        ("deskpulse_ces_responses", "1h", CHAT_SALES, 1),
        ("deskpulse_ces_score_average", "1h", CHAT_SALES, 6.0),
    ],
)
def test_windowed_gauges_carry_window_and_dimension_labels(
    day_registry: CollectorRegistry,
    name: str,
    window: str,
    group: tuple[str, str, str],
    expected: float,
) -> None:
    assert day_registry.get_sample_value(name, labels(window, *group)) == expected


@pytest.mark.parametrize(
    ("name", "window", "group"),
    [
        # a ticket without a reply has no response ratio, average or quantile
        ("deskpulse_first_response_within_target_ratio", "1h", WEB),
        ("deskpulse_first_response_average_seconds", "1h", WEB),
        ("deskpulse_csat_ratio", "1h", WEB),
        ("deskpulse_csat_score_average", "1h", WEB),
        ("deskpulse_nps_score", "1h", EMAIL_HIGH),
        ("deskpulse_ces_score_average", "1h", EMAIL_HIGH),
        ("deskpulse_chat_abandonment_ratio", "1h", EMAIL_HIGH),
        ("deskpulse_chat_service_level_ratio", "1h", WEB),
        # nothing of the high email group happened in the last five minutes
        ("deskpulse_tickets_created", "5m", EMAIL_HIGH),
        ("deskpulse_csat_ratio", "5m", EMAIL_HIGH),
        ("deskpulse_first_responses", "5m", EMAIL_URGENT),  # replied 500 s ago
    ],
)
def test_undefined_values_are_left_out_not_zero(
    day_registry: CollectorRegistry, name: str, window: str, group: tuple[str, str, str]
) -> None:
    assert day_registry.get_sample_value(name, labels(window, *group)) is None


def test_no_windowed_value_is_nan_and_ratios_stay_within_0_and_1(
    day_registry: CollectorRegistry,
) -> None:
    for family in day_registry.collect():
        for found in family.samples:
            assert found.value == found.value, found  # NaN is never exported
            if found.name.endswith("_ratio"):
                assert 0.0 <= found.value <= 1.0, found


@pytest.mark.parametrize(
    ("name", "window", "group", "quantiles", "expected"),
    [
        # one sample: every quantile is that sample, within the sketch's 1 %
        (
            "deskpulse_first_response_seconds",
            "1h",
            EMAIL_URGENT,
            ("0.5", "0.9", "0.95"),
            3000.0,
        ),
        ("deskpulse_chat_wait_seconds", "5m", CHAT, ("0.5", "0.9"), 10.0),
        ("deskpulse_chat_wait_seconds", "1h", CHAT_SALES, ("0.5", "0.9"), 30.0),
    ],
)
def test_quantile_gauges_carry_a_quantile_label(
    day_registry: CollectorRegistry,
    name: str,
    window: str,
    group: tuple[str, str, str],
    quantiles: tuple[str, ...],
    expected: float,
) -> None:
    found = {
        s["quantile"]
        for s in label_sets(day_registry, name)
        if {k: v for k, v in s.items() if k != "quantile"} == labels(window, *group)
    }
    assert found == set(quantiles)
    assert set(quantiles) == set(CATALOG[name].quantiles)
    for q in quantiles:
        value = day_registry.get_sample_value(name, labels(window, *group, quantile=q))
        assert value == pytest.approx(expected, rel=0.01), q
    # two responses (30 s, 600 s): the lower order statistic sorted(xs)[floor(q * (n - 1))],
    # as tests/oracle.py takes it, is 30 s for every q
    for q in CATALOG["deskpulse_first_response_seconds"].quantiles:
        value = day_registry.get_sample_value(
            "deskpulse_first_response_seconds", labels("1h", *EMAIL_HIGH, quantile=q)
        )
        assert value == pytest.approx(30.0, rel=0.01), q
    # no quantile without samples
    assert not [
        s
        for s in label_sets(day_registry, "deskpulse_first_response_seconds")
        if s["channel"] == "web"
    ]


@pytest.mark.parametrize(
    ("name", "group", "expected"),
    [
        ("deskpulse_tickets_created_total", EMAIL_HIGH, 2),
        ("deskpulse_tickets_created_total", WEB, 1),
        ("deskpulse_first_responses_total", EMAIL_HIGH, 2),
        ("deskpulse_first_responses_total", EMAIL_URGENT, 1),
        ("deskpulse_first_response_breaches_total", EMAIL_URGENT, 1),
        ("deskpulse_first_response_breaches_total", EMAIL_HIGH, 0),
        ("deskpulse_chats_requested_total", CHAT, 3),
        ("deskpulse_chats_answered_total", CHAT, 1),
        ("deskpulse_chats_answered_in_target_total", CHAT, 1),
        ("deskpulse_chats_answered_in_target_total", CHAT_SALES, 0),
        ("deskpulse_chats_abandoned_total", CHAT, 1),
        ("deskpulse_chats_short_abandoned_total", CHAT, 1),
        ("deskpulse_chats_offered_total", CHAT, 2),  # short abandons are not offered
        ("deskpulse_csat_responses_total", EMAIL_HIGH, 2),
        ("deskpulse_csat_satisfied_responses_total", EMAIL_HIGH, 1),
        ("deskpulse_sla_breaches_total", EMAIL_URGENT, 0),  # published by the breach check only
    ],
)
def test_cumulative_counters_by_dimensions(
    day_registry: CollectorRegistry, name: str, group: tuple[str, str, str], expected: float
) -> None:
    # the SLA breach counter has a series per SLA metric as well
    extra = {"metric": "first_response"} if name == "deskpulse_sla_breaches_total" else {}
    assert day_registry.get_sample_value(name, labels(None, *group, **extra)) == expected


def test_counters_do_not_depend_on_the_window(redis_server: RedisServer) -> None:
    # Read a day later: every windowed gauge is gone, the cumulative family is not.
    settings = unit_settings(redis_server)
    _, registry = collector_for(settings, day(), now_s=NOW_S + 86_400)
    assert not label_sets(registry, "deskpulse_tickets_created")
    assert registry.get_sample_value(
        "deskpulse_tickets_created_total", labels(None, *EMAIL_HIGH)
    ) == (2)


def _buckets(registry: CollectorRegistry, group: tuple[str, str, str]) -> dict[str, float]:
    name = "deskpulse_first_response_duration_seconds_bucket"
    return {
        s["le"]: registry.get_sample_value(name, s)  # type: ignore[misc]
        for s in label_sets(registry, name)
        if {k: v for k, v in s.items() if k != "le"} == labels(None, *group)
    }


def test_first_response_histogram_is_cumulative_with_the_targets_as_bounds(
    day_registry: CollectorRegistry,
) -> None:
    name = "deskpulse_first_response_duration_seconds"
    high = _buckets(day_registry, EMAIL_HIGH)
    bounds = first_response_buckets(TARGETS.values())
    assert set(high) == {*(str(float(b)) for b in bounds), "+Inf"}
    assert {str(float(t)) for t in TARGETS.values()} <= set(high)  # 1200.0 is only a target
    # 30 s and 600 s
    assert high["60.0"] == 1
    assert high["300.0"] == 1
    assert high["900.0"] == 2
    assert high["+Inf"] == 2
    ordered = [high[str(float(b))] for b in bounds] + [high["+Inf"]]
    assert ordered == sorted(ordered), "buckets are cumulative"
    assert day_registry.get_sample_value(name + "_count", labels(None, *EMAIL_HIGH)) == 2
    assert day_registry.get_sample_value(name + "_sum", labels(None, *EMAIL_HIGH)) == 630.0
    # 3000 s against the 1200 s urgent target: above the target's bucket
    urgent = _buckets(day_registry, EMAIL_URGENT)
    assert urgent["1200.0"] == 0
    assert urgent["1800.0"] == 0
    assert urgent["3600.0"] == 1
    # +Inf == _count == first responses, for every group
    for found in label_sets(day_registry, name + "_count"):
        count = day_registry.get_sample_value(name + "_count", found)
        assert day_registry.get_sample_value(name + "_bucket", {**found, "le": "+Inf"}) == count
        assert day_registry.get_sample_value("deskpulse_first_responses_total", found) == count
        within = day_registry.get_sample_value(
            name + "_bucket", {**found, "le": str(float(TARGETS[found["priority"]]))}
        )
        breaches = day_registry.get_sample_value("deskpulse_first_response_breaches_total", found)
        assert count == within + breaches, found  # type: ignore[operator]


def test_health_families_from_redis(redis_server: RedisServer) -> None:
    settings = unit_settings(redis_server)
    repeated = event("ticket.created", NOW_S - 60, ticket_id="D1", **_dims(WEB))
    late = event("ticket.created", NOW_S - 3 * 86_400, ticket_id="L1", **_dims(WEB))
    held = event("ticket.replied", NOW_S - 30, ticket_id="H1", author_role="agent")
    started = time.time()
    _, registry = collector_for(settings, [repeated, repeated, late, held])
    assert registry.get_sample_value(
        "deskpulse_events_duplicate_total", {"topic": settings.topic_tickets}
    ) == (1)
    assert registry.get_sample_value(
        "deskpulse_events_late_total", {"topic": settings.topic_tickets}
    ) == (1)
    assert registry.get_sample_value("deskpulse_events_held") == 1
    assert registry.get_sample_value("deskpulse_events_orphaned_total") == 0
    refreshed = registry.get_sample_value("deskpulse_kpi_refresh_timestamp_seconds")
    assert refreshed is not None
    assert started <= refreshed <= time.time()


def test_the_worker_exports_the_intervals_its_freshness_alerts_scale_with() -> None:
    """Each interval a staleness alert divides by is exported from its own setting (set
    apart here, so a swap shows); counters built without settings (the replay's, the
    benchmarks') export none."""
    settings = Settings(metrics_refresh_interval=7, breach_check_interval=600, snapshot_interval=90)
    registry = CollectorRegistry()
    PipelineMetrics(registry, settings.input_topics, settings)
    assert {
        name: registry.get_sample_value(name)
        for name in (
            "deskpulse_kpi_refresh_interval_seconds",
            "deskpulse_breach_check_interval_seconds",
            "deskpulse_snapshot_interval_seconds",
        )
    } == {
        "deskpulse_kpi_refresh_interval_seconds": 7,
        "deskpulse_breach_check_interval_seconds": 600,
        "deskpulse_snapshot_interval_seconds": 90,
    }
    bare = CollectorRegistry()
    PipelineMetrics(bare)
    assert bare.get_sample_value("deskpulse_breach_check_interval_seconds") is None


def test_collect_does_no_io_and_keeps_the_last_snapshot(redis_server: RedisServer) -> None:
    settings = unit_settings(redis_server)
    collector, registry = collector_for(settings, day())
    # The connection used by refresh() is closed; now point the store at a dead Redis too.
    dead = Redis(host=HOST, port=1, socket_connect_timeout=1)
    collector.store = Store(dead, settings.redis_prefix, collector.store.config)
    first = generate_latest(registry)
    assert b"deskpulse_tickets_created{" in first
    assert generate_latest(registry) == first
    assert [f.name for f in collector.collect()] == [f.name for f in collector.collect()]
    windows = collector.windows

    async def refresh_against_dead_redis() -> None:
        try:
            with pytest.raises(RedisConnectionError):
                await collector.refresh(NOW_S)
        finally:
            await dead.aclose()

    asyncio.run(refresh_against_dead_redis())
    assert generate_latest(registry) == first, "a failed refresh keeps the last snapshot"
    assert collector.windows is windows


# -- cardinality guard and label bounds -------------------------------------------------------


def _tickets(per_channel: dict[str, int], t_s: float = NOW_S - 120) -> list:
    return [
        event("ticket.created", t_s, ticket_id=f"{channel}-{n}", channel=channel, queue="q")
        for channel, count in per_channel.items()
        for n in range(count)
    ]


VOLUMES = {"email": 5, "web": 4, "phone": 3, "social": 2, "api": 1}


# Series a label set costs: the first-response summary (3 quantiles, _count, _sum) for the
# windowed families, the histogram (13 bounds with the 20-minute target, +Inf, _count,
# _sum) for the cumulative ones. Every family of a kind shows the same groups.
SUMMARY_SERIES, HISTOGRAM_SERIES = 5, 15


def _by_group(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float | None]:
    return {
        (s["channel"], s["queue"], s["priority"]): registry.get_sample_value(name, s)
        for s in label_sets(registry, name)
    }


def test_cardinality_guard_folds_the_smallest_groups_into_other(
    redis_server: RedisServer,
) -> None:
    # one window and room for three label sets of the summary: two groups plus "other";
    # the cumulative kind has room for one of the histogram's: "other" alone
    limit = 3 * SUMMARY_SERIES
    settings = unit_settings(redis_server, windows=(3600,), max_series_per_metric=limit)
    _, registry = collector_for(settings, _tickets(VOLUMES))
    windowed = _by_group(registry, "deskpulse_tickets_created")
    assert windowed == {
        ("email", "q", "normal"): 5,
        ("web", "q", "normal"): 4,
        ("other", "other", "other"): 6,
    }
    cumulative = _by_group(registry, "deskpulse_tickets_created_total")
    assert cumulative == {("other", "other", "other"): 15}, "nothing is lost, it is only folded"
    assert _by_group(registry, "deskpulse_chats_requested_total").keys() == cumulative.keys()
    # counted per family, in series: three groups folded of each windowed family that has
    # series for them, all five of the cumulative ones (15 series each of the histogram)
    folded = {
        "deskpulse_tickets_created": 3,
        "deskpulse_first_response_seconds": 0,  # no first responses: no series to fold
        "deskpulse_tickets_created_total": 5,
        "deskpulse_first_response_duration_seconds": 5 * HISTOGRAM_SERIES,
    }
    for metric, count in folded.items():
        labels = {"metric": metric}
        assert registry.get_sample_value("deskpulse_series_dropped_total", labels) == count
        assert registry.get_sample_value("deskpulse_series_folded", labels) == count
    for family in registry.collect():
        if any("channel" in s.labels for s in family.samples):
            assert len(family.samples) <= limit, family.name


def test_cardinality_guard_is_quiet_within_budget(redis_server: RedisServer) -> None:
    # five groups: room for five histogram label sets is room for everything
    limit = 5 * HISTOGRAM_SERIES
    settings = unit_settings(redis_server, windows=(3600,), max_series_per_metric=limit)
    _, registry = collector_for(settings, _tickets(VOLUMES))
    assert len(label_sets(registry, "deskpulse_tickets_created")) == 5
    assert len(label_sets(registry, "deskpulse_tickets_created_total")) == 5
    dropped = {
        s["metric"]: registry.get_sample_value("deskpulse_series_dropped_total", s)
        for s in label_sets(registry, "deskpulse_series_dropped_total")
    }
    assert set(dropped.values()) == {0}, dropped
    # one series less, and the cumulative kind folds (its counters with the histogram)
    settings = unit_settings(redis_server, windows=(3600,), max_series_per_metric=limit - 1)
    _, registry = collector_for(settings, _tickets(VOLUMES))
    assert len(label_sets(registry, "deskpulse_tickets_created")) == 5
    assert len(label_sets(registry, "deskpulse_tickets_created_total")) == 4
    assert ("other", "other", "other") in _by_group(registry, "deskpulse_chats_offered_total")


def test_cardinality_guard_with_a_budget_below_the_window_count(
    redis_server: RedisServer,
) -> None:
    settings = unit_settings(redis_server, windows=(300, 900, 3600), max_series_per_metric=2)
    _, registry = collector_for(settings, _tickets(VOLUMES))
    found = label_sets(registry, "deskpulse_tickets_created")
    # at most one series per window: everything folded into "other"
    assert sorted(s["window"] for s in found) == ["15m", "1h", "5m"]
    assert {(s["channel"], s["queue"], s["priority"]) for s in found} == {
        ("other", "other", "other")
    }


LONG = "q" * 40


def test_label_values_are_length_bounded(redis_server: RedisServer) -> None:
    settings = unit_settings(redis_server, label_max_length=16)
    events = [
        event("ticket.created", NOW_S - 60, ticket_id="L1", queue=LONG + "-billing"),
        event("ticket.created", NOW_S - 60, ticket_id="L2", channel="e" * 200),
        event("ticket.replied", NOW_S - 30, ticket_id="L1", author_role="agent"),
    ]
    _, registry = collector_for(settings, events)
    seen = 0
    for family in registry.collect():
        for found in family.samples:
            for name in DIMS:
                if name in found.labels:
                    seen += 1
                    assert len(found.labels[name]) <= settings.label_max_length, found
    assert seen
    assert registry.get_sample_value(
        "deskpulse_tickets_created", labels("1h", "other", LONG[:16], "normal")
    ) == (1)


def test_cut_label_values_do_not_make_duplicate_series(redis_server: RedisServer) -> None:
    settings = unit_settings(redis_server, label_max_length=16)
    events = [
        event("ticket.created", NOW_S - 60, ticket_id="L1", queue=LONG + "-billing"),
        event("ticket.created", NOW_S - 60, ticket_id="L2", queue=LONG + "-technical"),
    ]
    _, registry = collector_for(settings, events)
    for family in registry.collect():
        keys = Counter((s.name, tuple(sorted(s.labels.items()))) for s in family.samples)
        repeated = [key for key, count in keys.items() if count > 1]
        assert not repeated, repeated
    total = sum(
        registry.get_sample_value("deskpulse_tickets_created", s) or 0
        for s in label_sets(registry, "deskpulse_tickets_created")
        if s["window"] == "1h"
    )
    assert total == 2


# -- SLA instances and next responses ----------------------------------------------------------

SLA_POLICIES = [
    {
        "name": "standard",
        "targets": {
            "first_response": {"high": 3600},
            "next_response": {"high": 1800},
            "resolution": {"high": 86_400},
        },
    }
]


def sla_ticket(ticket_id: str = "S1") -> list[tuple[str, bytes, bytes]]:
    """A high ticket with a first response (600 s), two next responses (600 s, 100 s) and a
    solve: every SLA instance achieved, under a calendar policy (business = calendar)."""
    t = NOW_S
    return [
        event("ticket.created", t - 3000, ticket_id=ticket_id, **_dims(EMAIL_HIGH)),
        event("ticket.replied", t - 2400, ticket_id=ticket_id, author_role="agent"),
        event("ticket.replied", t - 2000, ticket_id=ticket_id, author_role="customer"),
        event("ticket.replied", t - 1400, ticket_id=ticket_id, author_role="agent"),
        event("ticket.replied", t - 1000, ticket_id=ticket_id, author_role="customer"),
        event("ticket.replied", t - 900, ticket_id=ticket_id, author_role="agent"),
        event("ticket.status_changed", t - 600, ticket_id=ticket_id, status="solved"),
    ]


def test_a_next_response_and_achieved_slas_show_in_the_sla_series(
    redis_server: RedisServer,
) -> None:
    settings = unit_settings(redis_server, sla_policies=SLA_POLICIES)
    _, registry = collector_for(settings, sla_ticket())
    for metric in ("first_response", "next_response", "resolution"):
        ratio = labels("1h", *EMAIL_HIGH, metric=metric)
        assert registry.get_sample_value("deskpulse_sla_achieved_ratio", ratio) == 1.0, metric
        # nothing of it in the last five minutes: no ratio, not 0
        assert (
            registry.get_sample_value("deskpulse_sla_achieved_ratio", {**ratio, "window": "5m"})
            is None
        )
    achieved = {
        metric: registry.get_sample_value(
            "deskpulse_sla_achieved_total", labels(None, *EMAIL_HIGH, metric=metric)
        )
        for metric in ("first_response", "next_response", "resolution")
    }
    assert achieved == {"first_response": 1, "next_response": 2, "resolution": 1}
    # two next responses, 600 s and 100 s: the lower order statistic for p50 is 100 s
    window = labels("1h", *EMAIL_HIGH)
    name = "deskpulse_next_response_seconds"
    assert registry.get_sample_value(name + "_count", window) == 2
    assert registry.get_sample_value(name + "_sum", window) == 700.0
    p50 = registry.get_sample_value(name, {**window, "quantile": "0.5"})
    assert p50 == pytest.approx(100.0, rel=0.01)
    p95 = registry.get_sample_value(name, {**window, "quantile": "0.95"})
    assert p95 == pytest.approx(100.0, rel=0.01)
    # a calendar policy: business time is calendar time
    name = "deskpulse_first_response_business_seconds"
    assert registry.get_sample_value(name + "_count", window) == 1
    assert registry.get_sample_value(name + "_sum", window) == 600.0
    for q in ("0.5", "0.9", "0.95"):
        value = registry.get_sample_value(name, {**window, "quantile": q})
        assert value == pytest.approx(600.0, rel=0.01), q


def test_sla_series_are_absent_where_there_are_no_instances(
    day_registry: CollectorRegistry,
) -> None:
    # the day's tickets: the default policy's first-response SLA only; T1 and T2 achieved it,
    # T3's breach was never claimed (no breach detection ran), so only achieved counts
    # their replies came over five minutes ago: the 1h window only
    assert label_sets(day_registry, "deskpulse_sla_achieved_ratio") == [
        labels("1h", *EMAIL_HIGH, metric="first_response")
    ]
    assert (
        day_registry.get_sample_value(
            "deskpulse_sla_achieved_ratio", labels("1h", *EMAIL_HIGH, metric="first_response")
        )
        == 1.0
    )
    assert label_sets(day_registry, "deskpulse_next_response_seconds") == []
    # the counter has a series per group and metric, 0 where nothing was achieved
    assert (
        day_registry.get_sample_value(
            "deskpulse_sla_achieved_total", labels(None, *EMAIL_HIGH, metric="first_response")
        )
        == 2
    )
    assert (
        day_registry.get_sample_value(
            "deskpulse_sla_achieved_total", labels(None, *EMAIL_HIGH, metric="resolution")
        )
        == 0
    )


def test_the_sla_achieved_counter_never_goes_down(redis_server: RedisServer) -> None:
    # A late solve dated before the first reply cancels the first-response instance: the
    # total in Redis goes from 1 to 0, the exported counter stays at 1.
    settings = unit_settings(redis_server, sla_policies=SLA_POLICIES)
    t = NOW_S
    first = [
        event("ticket.created", t - 3000, ticket_id="L1", **_dims(EMAIL_HIGH)),
        event("ticket.replied", t - 2400, ticket_id="L1", author_role="agent"),
    ]
    late = [event("ticket.status_changed", t - 2500, ticket_id="L1", status="solved")]
    series = labels(None, *EMAIL_HIGH, metric="first_response")

    async def scenario() -> tuple[float | None, float | None, float | None, float | None]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            engine = Engine(
                settings,
                store,
                DeadLetters(),
                PipelineMetrics(CollectorRegistry()),
                clock=lambda: t,
            )
            topic = settings.topic_for("tickets")
            records = [
                SourceRecord(topic, 0, offset, key, value)
                for offset, (_, key, value) in enumerate(first + late)
            ]
            collector = KpiCollector(store, settings)
            await engine.process(records[: len(first)])
            await collector.refresh(t)
            before = _value(collector, "deskpulse_sla_achieved_total", series)
            await engine.process(records[len(first) :])
            await collector.refresh(t)
            after = _value(collector, "deskpulse_sla_achieved_total", series)
            fresh = KpiCollector(store, settings)
            await fresh.refresh(t)
            restarted = _value(fresh, "deskpulse_sla_achieved_total", series)
            ratio = _value(fresh, "deskpulse_sla_achieved_ratio", {**series, "window": "1h"})
            return before, after, restarted, ratio
        finally:
            await redis.aclose()

    before, after, restarted, ratio = asyncio.run(scenario())
    assert before == 1
    assert after == 1  # taken back in Redis, still counted by this process
    assert restarted == 0  # a new process starts from Redis: the instance was cancelled
    assert ratio is None  # the window's ratio is exact: no instance, no ratio


def _value(collector: KpiCollector, name: str, wanted: dict[str, str]) -> float | None:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry.get_sample_value(name, wanted)


# -- per agent (DESKPULSE_AGENT_METRICS) ------------------------------------------------------


def _agents_day(agents: int) -> list[tuple[str, bytes, bytes]]:
    """A ticket per agent, answered by it (agent n after n seconds), and its status."""
    events = []
    for n in range(agents):
        ticket = f"A-{n}"
        events.append(event("ticket.created", NOW_S - 1800, ticket_id=ticket, channel="email"))
        events.append(
            event(
                "ticket.replied",
                NOW_S - 1800 + 60 + n,
                ticket_id=ticket,
                author_role="agent",
                agent_id=f"agent-{n:03d}",
            )
        )
        body = {
            "event_id": uuid.uuid4().hex,
            "type": "agent.status_changed",
            "occurred_at": stamp(NOW_S - 3000),
            "agent_id": f"agent-{n:03d}",
            "status": "busy" if n % 2 else "available",
        }
        events.append(("agents", f"agent-{n:03d}".encode(), orjson.dumps(body)))
    return events


def test_agent_series_only_with_agent_metrics_on(redis_server: RedisServer) -> None:
    _, registry = collector_for(unit_settings(redis_server), _agents_day(3))
    assert not [f.name for f in registry.collect() if f.name.startswith("deskpulse_agent_")]
    assert label_sets(registry, "deskpulse_tickets_created") != []

    _, registry = collector_for(unit_settings(redis_server, agent_metrics=True), _agents_day(3))
    for n in range(3):
        agent = f"agent-{n:03d}"
        for window in ("5m", "1h"):
            wanted = {"window": window, "agent": agent}
            # the replies are 28 minutes old: in the hour, not in the five minutes
            expected = 1 if window == "1h" else 0
            assert registry.get_sample_value("deskpulse_agent_first_responses", wanted) == expected
        mean = registry.get_sample_value(
            "deskpulse_agent_first_response_mean_seconds", {"window": "1h", "agent": agent}
        )
        assert mean == 60 + n
        status = "busy" if n % 2 else "available"
        got = registry.get_sample_value(
            "deskpulse_agent_status", {"agent": agent, "status": status}
        )
        assert got == 1
    # no samples, no series: no first responses in the five minutes, no mean
    assert (
        registry.get_sample_value(
            "deskpulse_agent_first_response_mean_seconds", {"window": "5m", "agent": "agent-000"}
        )
        is None
    )
    occupancy = registry.get_sample_value(
        "deskpulse_agent_occupancy_ratio", {"window": "1h", "agent": "agent-001"}
    )
    assert occupancy == 1.0  # busy all the hour


def test_agent_series_stay_within_the_series_budget(redis_server: RedisServer) -> None:
    settings = unit_settings(redis_server, agent_metrics=True, max_series=1_000)
    _, registry = collector_for(settings, _agents_day(120))
    shown = {s["agent"] for s in label_sets(registry, "deskpulse_agent_first_responses")}
    assert 10 <= len(shown) < 120
    # the most active first: equal here, so by id
    assert "agent-000" in shown and "agent-119" not in shown
    folded = registry.get_sample_value(
        "deskpulse_series_folded", {"metric": "deskpulse_agent_first_responses"}
    )
    assert folded is not None and folded > 0
    total = sum(len(family.samples) for family in registry.collect())
    assert total <= settings.max_series, total
