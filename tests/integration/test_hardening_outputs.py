"""Output keys that never collide, and outputs whose size stays bounded however many groups.

* Keys of ``deskpulse.kpis`` and ``deskpulse.alerts`` encode each part (``%``, ``|``, ``*``
  percent-encoded), so distinct groups get distinct keys on the compacted topic: a property
  test over arbitrary parts, and the colliding pair of dimension values through a real
  engine, Redis and broker.
* The cardinality guard counts series as the exposition holds them (a summary's quantiles,
  ``_count`` and ``_sum``; a histogram's buckets), shows the same groups in every family
  of a kind, bounds the KPI topic's snapshot, and its ``deskpulse_series_dropped_total``
  only ever grows: real Redis state with thousands of
  queues, written by the engine, refreshed several times (a real worker, scraped, is
  tests/system/test_hardening_outputs_worker.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio import Redis

from deskpulse.exporters import cardinality
from deskpulse.exporters.cardinality import OTHER, Rule, allocate, guard, share
from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.exporters.prometheus import (
    _SLA_RATIO_REQUIRES,
    _SUMMARIES,
    _WINDOWED,
    PIPELINE_RESERVE,
    KpiCollector,
    PipelineMetrics,
)
from deskpulse.exporters.publish import (
    SnapshotState,
    evaluate_rules,
    publish_snapshots,
    read_agent_inputs,
    rule_transitions,
    rule_value,
    snapshot_items,
)
from deskpulse.models.errors import SettingsError
from deskpulse.models.outputs import KEY_ALL, encode_key_part, output_key, parse_output_key
from deskpulse.models.settings import AlertRule, Settings, load_settings, parse_duration
from deskpulse.streams import agent_kpis
from deskpulse.streams.core import CoreConfig, group_document, has_samples
from deskpulse.streams.engine import Engine, SourceRecord
from deskpulse.streams.partitioner import java_partition
from deskpulse.streams.query import AGENT, DIMENSIONS, query_kpis
from deskpulse.streams.sketch import index_of
from deskpulse.streams.store import Store
from tests.conftest import RedisServer, create_topics
from tests.support import consume_all

# 2026-11-23T01:00:30Z, half a minute into a bucket
NOW_S = 1_795_395_630.0
WINDOWS_S = (300, 3600, 86400)

# -- keys: a property of the encoding ---------------------------------------------------------

# every character class that matters: the separator, the "all" marker, the escape itself,
# escapes already spelled out, ordinary text and the empty string
_PART = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from("|*%27CAa-x ."), max_size=8),
    st.text(max_size=12),
    st.sampled_from(["*", "%", "|", "%2A", "%7C", "%25", "", "other"]),
)


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.lists(_PART, min_size=1, max_size=6))
def test_a_key_decodes_to_the_parts_it_was_built_from(parts: list[str | None]) -> None:
    assert parse_output_key(output_key(*parts)) == tuple(parts)


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.lists(_PART, min_size=5, max_size=5), st.lists(_PART, min_size=5, max_size=5))
def test_distinct_groups_get_distinct_keys(a: list[str | None], b: list[str | None]) -> None:
    assert (output_key(*a) == output_key(*b)) == (a == b)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="%|*")), max_size=5))
def test_keys_of_ordinary_values_are_unchanged(parts: list[str]) -> None:
    assert output_key(*parts) == "|".join(parts)


def test_the_colliding_groups_of_the_report_get_two_keys() -> None:
    # channel "pipe|x", queue "y" against channel "pipe", queue "x|y": one key before
    first = output_key("1h", "pipe|x", "y", "normal")
    second = output_key("1h", "pipe", "x|y", "normal")
    assert (first, second) == ("1h|pipe%7Cx|y|normal", "1h|pipe|x%7Cy|normal")
    # a queue really called "*" is not "every queue"
    assert output_key("1h", None, "*", None) == "1h|*|%2A|*"
    assert parse_output_key("1h|*|%2A|*") == ("1h", None, "*", None)
    assert encode_key_part("50%") == "50%25"


@pytest.mark.parametrize("key", ["1h|a%zz|b", "1h|a*|b", "1h|%|b", "1h|**|b"])
def test_keys_deskpulse_never_writes_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not an output key part"):
        parse_output_key(key)


def test_lower_case_escapes_decode_too() -> None:
    assert parse_output_key("1h|a%7cb%2a%25") == ("1h", "a|b*%")
    assert KEY_ALL == "*"


# -- real state: the engine writes it to Redis ------------------------------------------------


def _stamp(t_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_s)) + f".{int(t_s % 1 * 1000):03d}Z"


def _event(type_: str, t_s: float, **fields: Any) -> tuple[str, bytes, bytes]:
    kind = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}[type_.split(".")[0]]
    key = fields.get("ticket_id") or fields["chat_id"]
    body = {"event_id": uuid.uuid4().hex, "type": type_, "occurred_at": _stamp(t_s), **fields}
    return kind, str(key).encode(), orjson.dumps(body)


def many_queues(
    count: int, now_s: float, *, first: int = 0, prefix: str = "q"
) -> Iterator[tuple[str, bytes, bytes]]:
    """Support traffic over ``count`` distinct queues, of different sizes, in the last day.

    Queue ``i`` has 1-5 tickets (two of three answered), a chat on every fourth (answered
    or abandoned), a CSAT survey on every sixth and an NPS one on every tenth; its events
    lie between a minute and a day old, so each window sees a different number of groups.
    """
    for i in range(first, first + count):
        queue = f"{prefix}{i:05d}"
        dims = {
            "channel": ("email", "web", "chat")[i % 3],
            "queue": queue,
            "priority": ("low", "normal", "high", "urgent")[i % 4],
        }
        at = now_s - 60 - (i * 7919) % 86_000
        for n in range(1 + i % 5):
            ticket = f"T-{queue}-{n}"
            yield _event("ticket.created", at + n, ticket_id=ticket, **dims)
            if (i + n) % 3:
                reply = min(now_s - 1, at + n + 30 + (i * 13) % 900)
                yield _event("ticket.replied", reply, ticket_id=ticket, author_role="agent")
        if i % 4 == 0:
            chat = f"C-{queue}"
            yield _event("chat.requested", at, chat_id=chat, **dims)
            outcome = "chat.abandoned" if i % 8 == 0 else "chat.accepted"
            yield _event(outcome, at + 15 + i % 40, chat_id=chat)
        if i % 6 == 0:
            survey = {"ticket_id": f"T-{queue}-0", "kind": "csat", "score": 1 + i % 5}
            yield _event("survey.responded", at + 30, **survey)
        if i % 10 == 0:
            survey = {"ticket_id": f"T-{queue}-0", "kind": "nps", "score": i % 11}
            yield _event("survey.responded", at + 40, **survey)


class _NoDeadLetters:
    async def send(self, records: Sequence[Any]) -> None:
        raise AssertionError(f"nothing here is malformed: {records[:3]}")


async def apply(
    settings: Settings,
    store: Store,
    events: Sequence[tuple[str, bytes, bytes]],
    now_s: float,
    offsets: Counter[tuple[str, int]] | None = None,
) -> None:
    """Commit ``events`` through the engine, each on the partition its key belongs on.

    ``offsets`` (next offset per topic and partition) carries on from an earlier call.
    """
    engine = Engine(
        settings,
        store,
        _NoDeadLetters(),
        PipelineMetrics(CollectorRegistry()),
        clock=lambda: now_s,
    )
    offsets = Counter() if offsets is None else offsets
    batch = []
    for kind, key, value in events:
        topic = settings.topic_for(kind)
        partition = java_partition(key, settings.topic_partitions)
        batch.append(SourceRecord(topic, partition, offsets[(topic, partition)], key, value))
        offsets[(topic, partition)] += 1
    for start in range(0, len(batch), 5000):
        await engine.process(batch[start : start + 5000])


def unit_settings(redis_server: RedisServer, **update: Any) -> Settings:
    uid = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "redis_url": SecretStr(redis_server.url),
        "redis_prefix": f"h{uid}",
        "windows": WINDOWS_S,
        "topic_kpis": f"{uid}.deskpulse.kpis",
        "topic_alerts": f"{uid}.deskpulse.alerts",
    }
    return Settings(**(values | update))


@functools.lru_cache(maxsize=4)
def families_of(text: str) -> tuple[Metric, ...]:
    """An exposition parsed, once for the helpers below (each read of a family of a text of
    thousands of groups parsed all of it again: most of the time of the tests here)."""
    return tuple(text_string_to_metric_families(text))


def series_per_family(text: str) -> dict[str, int]:
    """Lines of each family in an exposition: what Prometheus would store."""
    found: dict[str, int] = {}
    for family in families_of(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = len(family.samples)
    return found


def other_series(text: str) -> dict[str, int]:
    """Lines of each family that belong to the ``other`` group."""
    found: Counter[str] = Counter()
    for family in families_of(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        for sample in family.samples:
            if sample.labels.get("priority") == "other":
                found[name] += 1
    return dict(found)


def groups_of(text: str, name: str) -> set[tuple[str, ...]]:
    """The (window,) channel, queue, priority of every sample of a family."""
    return {
        tuple(s.labels[label] for label in ("window", *DIMENSIONS) if label in s.labels)
        for family in families_of(text)
        if (family.name + "_total" if family.type == "counter" else family.name) == name
        for s in family.samples
    }


def labelled(text: str, name: str) -> dict[str, float]:
    """``metric`` label -> value of a family labelled by metric."""
    return {
        s.labels["metric"]: s.value
        for family in families_of(text)
        for s in family.samples
        if s.name == name
    }


# the families the guard budgets: every one with channel/queue/priority labels
GUARDED = {
    *(name for name, *_ in _WINDOWED),
    *(name for name, *_ in _SUMMARIES),
    "deskpulse_sla_achieved_ratio",
    "deskpulse_tickets_created_total",
    "deskpulse_chats_requested_total",
    "deskpulse_first_responses_total",
    "deskpulse_first_response_breaches_total",
    "deskpulse_first_response_duration_seconds",
    "deskpulse_chats_offered_total",
    "deskpulse_chats_answered_total",
    "deskpulse_chats_answered_in_target_total",
    "deskpulse_chats_abandoned_total",
    "deskpulse_chats_short_abandoned_total",
    "deskpulse_csat_responses_total",
    "deskpulse_csat_satisfied_responses_total",
    "deskpulse_sla_achieved_total",
    "deskpulse_sla_breaches_total",
    "deskpulse_tickets_solved_total",
    "deskpulse_tickets_reopened_total",
    *(
        STATE_NOW := {
            "deskpulse_backlog_tickets",
            "deskpulse_backlog_oldest_age_seconds",
            "deskpulse_chats_waiting",
            "deskpulse_chat_longest_wait_seconds",
        }
    ),
}


def test_series_are_counted_as_exposed_and_the_dropped_counter_only_grows(
    redis_server: RedisServer,
) -> None:
    # 600 queues, then 100 more, against a limit that shows 24 of them a window (the
    # summary's 5 series a group): every window but the 5m one folds some
    limit = 120
    settings = unit_settings(redis_server, max_series_per_metric=limit)
    unlimited = settings.model_copy(update={"max_series_per_metric": 10**9, "max_series": 10**9})

    async def scenario() -> list[tuple[str, str]]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            guarded, reference = KpiCollector(store, settings), KpiCollector(store, unlimited)
            texts = []

            async def both(now_s: float) -> None:
                for collector in (guarded, reference):
                    await collector.refresh(now_s)
                texts.append(
                    (generate_latest(_registry(guarded)), generate_latest(_registry(reference)))
                )

            started = time.monotonic()
            offsets: Counter[tuple[str, int]] = Counter()
            await apply(settings, store, list(many_queues(600, NOW_S)), NOW_S, offsets)
            applied_s = time.monotonic() - started
            await both(NOW_S)
            # more queues: more folded
            more = list(many_queues(100, NOW_S, first=600))
            await apply(settings, store, more, NOW_S, offsets)
            await both(NOW_S)
            # ten minutes on, the 5m window is empty: fewer folded now, never fewer in total
            await both(NOW_S + 600)
            print(f"700 queues applied in {applied_s:.1f}s (first 600)")
            return [(g.decode(), r.decode()) for g, r in texts]
        finally:
            await redis.aclose()

    texts = asyncio.run(scenario())
    histogram_series = len(CoreConfig().histogram_bounds_s) + 3  # buckets with +Inf, sum, count
    previous: dict[str, float] = {}
    folded_sum: dict[str, float] = defaultdict(float)
    for step, (text, reference) in enumerate(texts):
        exposed, full = series_per_family(text), series_per_family(reference)
        others = other_series(text)
        folded = labelled(text, "deskpulse_series_folded")
        dropped = labelled(text, "deskpulse_series_dropped_total")
        assert set(folded) == set(dropped) == GUARDED
        for name in GUARDED:
            # never more than the limit, counted as the exposition holds them
            assert exposed.get(name, 0) <= limit, (step, name, exposed.get(name))
            # exactly the series the limit kept out: the full exposition less what is shown
            # of the real groups
            shown_real = exposed.get(name, 0) - others.get(name, 0)
            assert folded[name] == full.get(name, 0) - shown_real, (step, name)
            folded_sum[name] += folded[name]
            # a counter: the gauge added up over refreshes, never going down
            assert dropped[name] == folded_sum[name], (step, name)
            assert dropped[name] >= previous.get(name, 0), (step, name)
            previous[name] = dropped[name]
        # every family of a kind shows the same groups, as many as its costliest family
        # allows (the summary: 5 series a label set; the histogram), less rounding
        windowed = groups_of(text, "deskpulse_tickets_created")
        cumulative = groups_of(text, "deskpulse_tickets_created_total")
        # the state now: every group shown has its waiting chats (0 included)
        state = groups_of(text, "deskpulse_chats_waiting")
        for name in GUARDED:
            found = groups_of(text, name)
            if name in STATE_NOW:
                assert found <= state, (step, name)
            elif name.endswith("_total") or name.endswith("_duration_seconds"):
                assert found == cumulative, (step, name)
            else:
                assert found <= windowed, (step, name)
        assert limit // 5 - len(WINDOWS_S) <= len(windowed) <= limit // 5, step
        assert len(cumulative) == limit // histogram_series, step
    first, second, third = (labelled(t, "deskpulse_series_folded") for t, _ in texts)
    assert all(second[name] >= first[name] for name in GUARDED)
    assert second["deskpulse_first_response_seconds"] > first["deskpulse_first_response_seconds"]
    assert third["deskpulse_tickets_created"] < second["deskpulse_tickets_created"], (
        "the 5m window emptied: the gauge went down (and the counter did not)"
    )
    assert first["deskpulse_first_response_duration_seconds"] > 0
    # folding keeps totals: the groups of a window add up to what deskpulse kpis says
    text = texts[1][0]
    per_window: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "deskpulse_first_response_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    per_window[sample.labels["window"]] += int(sample.value)
    totals = asyncio.run(_totals(settings, NOW_S))
    assert per_window == {w: t["first_response"]["count"] for w, t in totals.items()}


def test_every_family_together_stays_inside_the_total_budget_and_adds_up(
    redis_server: RedisServer,
) -> None:
    # the per-family limit out of the way: only DESKPULSE_MAX_SERIES bounds the exposition
    budget = 6_000
    settings = unit_settings(redis_server, max_series_per_metric=10**9, max_series=budget)
    unlimited = settings.model_copy(update={"max_series": 10**9})

    async def scenario() -> tuple[str, str]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            await apply(settings, store, list(many_queues(1500, NOW_S)), NOW_S, Counter())
            guarded, reference = KpiCollector(store, settings), KpiCollector(store, unlimited)
            for collector in (guarded, reference):
                await collector.refresh(NOW_S)
            return (
                generate_latest(_registry(guarded)).decode(),
                generate_latest(_registry(reference)).decode(),
            )
        finally:
            await redis.aclose()

    text, reference = asyncio.run(scenario())
    exposed = sum(series_per_family(text).values())
    full = sum(series_per_family(reference).values())
    # the process's own counters come on top of the collector's families, inside the budget
    assert exposed <= budget - PIPELINE_RESERVE < full, (exposed, full)
    # most of it is spent (a group is counted at the most series it can have: those without
    # chats, surveys or SLA outcomes have fewer)
    assert exposed >= (budget - PIPELINE_RESERVE) * 0.6, exposed
    folded = labelled(text, "deskpulse_series_folded")
    assert folded["deskpulse_tickets_created_total"] > 0
    assert folded["deskpulse_first_response_seconds"] > 0
    assert folded["deskpulse_backlog_tickets"] > 0
    # the folded groups are summed into "other": every total over groups stays exact
    for name in ("deskpulse_tickets_created_total", "deskpulse_first_responses_total"):
        assert ("other", "other", "other") in groups_of(text, name)
        sums = [
            sum(
                sample.value
                for family in text_string_to_metric_families(t)
                for sample in family.samples
                if sample.name == name
            )
            for t in (text, reference)
        ]
        assert sums[0] == sums[1] > 0, name


@pytest.mark.parametrize(
    ("needs", "costs", "budget", "expected"),
    [
        ((10, 10), (5, 1), 100, [10, 10]),  # all fit
        ((100, 100), (5, 1), 100, [10, 50]),  # an even share of the series each
        ((100, 2), (5, 1), 100, [19, 2]),  # a small view lends the rest of its share
        ((0, 100), (5, 1), 30, [0, 30]),  # a view with nothing needs nothing
        ((100, 100), (50, 50), 10, [1, 1]),  # below one label set: each keeps its "other"
    ],
)
def test_share_splits_the_series_between_views_of_different_costs(
    needs: tuple[int, ...], costs: tuple[int, ...], budget: int, expected: list[int]
) -> None:
    assert share(needs, costs, budget) == expected


def _registry(collector: KpiCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


async def _totals(settings: Settings, now_s: float) -> dict[str, dict[str, Any]]:
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        names = {300: "5m", 3600: "1h", 86400: "24h"}
        found = {}
        for width in settings.windows:
            document = await query_kpis(store, width_s=width, at_s=now_s)
            found[names[width]] = document["groups"][0]
        return found
    finally:
        await redis.aclose()


def _volume(group: dict[str, Any]) -> int:
    """A group document's samples, as the guard ranks groups (cardinality.VOLUME_FIELDS)."""
    chats, fr = group["chats"], group["first_response"]
    return int(
        group["tickets_created"]
        + chats["requested"]
        + fr["count"]
        + chats["answered"]
        + chats["abandoned"]
        + chats["short_abandoned"]
        + group["csat"]["responses"]
        + group["nps"]["responses"]
        + group["ces"]["responses"]
    )


def test_the_kpi_topic_snapshot_is_bounded_and_adds_up(
    redis_server: RedisServer, broker: str
) -> None:
    settings = unit_settings(
        redis_server, kafka_bootstrap=broker, max_snapshot_messages=400, topic_partitions=4
    )
    create_topics(settings)

    async def scenario() -> tuple[int, list[Any], dict[str, dict[str, dict[str, Any]]]]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        publisher = KafkaPublisher(settings)
        await publisher.start()
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            await apply(settings, store, list(many_queues(3000, NOW_S)), NOW_S)
            collector = KpiCollector(store, settings)
            await collector.refresh(NOW_S)
            sent = await publish_snapshots(collector.windows, publisher, settings)
            groups: dict[str, dict[str, dict[str, Any]]] = {}
            for width, window in zip(settings.windows, collector.windows, strict=True):
                document = await query_kpis(store, width_s=width, at_s=NOW_S, by=DIMENSIONS)
                groups[window.name] = {
                    output_key(window.name, *(g["key"][d] for d in DIMENSIONS)): g
                    for g in document["groups"]
                }
            records = await consume_all(settings.kafka_bootstrap, settings.topic_kpis, sent, 60)
            return sent, records, groups
        finally:
            await publisher.stop()
            await redis.aclose()

    sent, records, documents = asyncio.run(scenario())
    groups = {w: {k: _volume(g) for k, g in found.items()} for w, found in documents.items()}
    assert sent <= settings.max_snapshot_messages
    assert len(records) == sent
    # far more groups than the limit: the budget is used, not wasted
    assert sum(map(len, groups.values())) > 3 * settings.max_snapshot_messages
    assert sent >= settings.max_snapshot_messages - len(settings.windows)
    keys = [r.key.decode() for r in records]
    assert len(set(keys)) == len(keys), "two messages of one snapshot share a key"
    folded_windows: list[str] = []
    by_window: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for record in records:
        payload = orjson.loads(record.value)
        by_window[payload["window"]].append((record.key.decode(), payload))
    for window, messages in by_window.items():
        total = dict(messages)[f"{window}|*|*|*"]
        rest = [(k, p) for k, p in messages if k != f"{window}|*|*|*"]
        other = dict(rest).get(f"{window}|other|other|other")
        shown = [k for k, _ in rest if k != f"{window}|other|other|other"]
        assert set(shown) <= set(groups[window]), "a group kpis does not know"
        if other is None:
            assert len(shown) == len(groups[window]), window
            continue
        folded_windows.append(window)
        assert other["key"] == dict(zip(DIMENSIONS, OTHER, strict=True))
        assert len(shown) + other["folded_groups"] == len(groups[window])
        # the largest groups are the ones shown
        smallest_shown = min(groups[window][k] for k in shown)
        largest_folded = max(v for k, v in groups[window].items() if k not in set(shown))
        assert smallest_shown >= largest_folded, window
        # nothing lost: the groups add up to the window's total
        assert sum(p["tickets_created"] for _, p in rest) == total["tickets_created"], window
        for key, payload in rest:
            if key in documents[window]:
                assert payload["csat"] == documents[window][key]["csat"], key
    assert "24h" in folded_windows


def test_snapshots_publish_only_changed_groups_and_everything_at_the_full_interval(
    redis_server: RedisServer, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 groups, folded past 250 messages: the `other` group is incremental too; built
    # and sent 40 messages at a time (a full snapshot is never held whole)
    monkeypatch.setattr("deskpulse.exporters.publish.SNAPSHOT_CHUNK", 40)
    settings = unit_settings(
        redis_server, kafka_bootstrap=broker, max_snapshot_messages=250, topic_partitions=4
    )
    create_topics(settings)
    windows = len(settings.windows)
    full_s = settings.snapshot_full_interval

    async def scenario() -> tuple[list[int], list[Any], list[tuple[str, dict[str, Any]]]]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        publisher = KafkaPublisher(settings)
        await publisher.start()
        state = SnapshotState()
        counts: list[int] = []
        sends: list[int] = []
        publish_json = publisher.publish_json

        async def counted(topic: str, items: Any) -> None:
            sends.append(len(items))
            await publish_json(topic, items)

        monkeypatch.setattr(publisher, "publish_json", counted)
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            offsets: Counter[tuple[str, int]] = Counter()
            await apply(settings, store, list(many_queues(300, NOW_S)), NOW_S, offsets)
            collector = KpiCollector(store, settings)

            async def publish(now_s: float) -> None:
                await collector.refresh(NOW_S)
                sent = await publish_snapshots(
                    collector.windows, publisher, settings, state, now_s=now_s
                )
                counts.append(sent)

            await publish(NOW_S)  # the first pass: everything
            assert len(sends) > 3 and max(sends) <= 40 and sum(sends) == counts[0], sends
            await publish(NOW_S + 10)  # nothing changed: the totals alone
            # one more ticket in a queue shown in every window
            ticket = _event(
                "ticket.created",
                NOW_S - 30,
                ticket_id="T-extra",
                channel="email",
                queue="q00000",
                priority="low",
            )
            await apply(settings, store, [ticket], NOW_S, offsets)
            await publish(NOW_S + 20)
            await publish(NOW_S + full_s)  # the full interval passed: everything again
            records = await consume_all(
                settings.kafka_bootstrap, settings.topic_kpis, sum(counts), 60
            )
            everything, _, _ = snapshot_items(collector.windows, settings)
            return counts, records, everything
        finally:
            await publisher.stop()
            await redis.aclose()

    counts, records, everything = asyncio.run(scenario())
    first, unchanged, one_more, full = counts
    assert first == full == len(everything) <= settings.max_snapshot_messages
    assert unchanged == windows
    # the group in each window where the ticket falls, plus nothing else of the groups shown
    # (the ticket is in every window; a window folding past the budget may show it in
    # `other` instead)
    assert windows < one_more <= 2 * windows + windows, one_more
    assert len(records) == sum(counts)
    # the compacted topic's last message per key is what a full snapshot says
    last: dict[str, dict[str, Any]] = {}
    for record in records[: first + unchanged + one_more]:
        last[record.key.decode()] = orjson.loads(record.value)
    for key, body in everything:
        stored = {k: v for k, v in last[key].items() if k not in ("start", "end", "schema_version")}
        wanted = {k: v for k, v in body.items() if k not in ("start", "end")}
        # ages of open tickets and waiting chats are as of the message's end
        for section in ("backlog", "chats"):
            for document in (stored, wanted):
                for name in ("oldest_age_seconds", "longest_wait_seconds"):
                    document.get(section, {}).pop(name, None)
        assert stored == wanted, key


def _agent_day(agents: int, now_s: float, *, first: int = 0) -> list[tuple[str, bytes, bytes]]:
    """Per agent ``agent-NN``: ``n + 1`` tickets in one queue answered by it in the last
    half hour (agent ``n`` has ``n + 1`` samples: the more, the more active), and every
    other agent a status for most of the hour."""
    events = []
    for n in range(first, first + agents):
        agent = f"agent-{n:02d}"
        for k in range(n + 1):
            ticket = f"A-{n}-{k}"
            at = now_s - 1800 + n + k
            events.append(_event("ticket.created", at, ticket_id=ticket, queue="support"))
            reply = {"author_role": "agent", "agent_id": agent}
            events.append(_event("ticket.replied", at + 60, ticket_id=ticket, **reply))
        if n % 2:
            body = {
                "event_id": uuid.uuid4().hex,
                "type": "agent.status_changed",
                "occurred_at": _stamp(now_s - 3000),
                "agent_id": agent,
                "status": "busy",
            }
            events.append(("agents", agent.encode(), orjson.dumps(body)))
    return events


def test_agent_snapshots_go_out_when_an_agent_moved_and_the_state_keeps_a_fingerprint_per_key(
    redis_server: RedisServer, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 12 agents, at most 8 messages of agents per window: the 8 most active go out
    settings = unit_settings(
        redis_server,
        kafka_bootstrap=broker,
        max_snapshot_messages=8,
        topic_partitions=4,
        windows=(3600, 86400),
    )
    create_topics(settings)
    names = settings.window_names
    # the agents' documents the publisher builds: only those whose inputs moved
    built: list[str] = []
    built_by_pass: list[list[str]] = []
    document_of = agent_kpis.agent_document

    def counted(agent: str, *args: Any) -> dict[str, Any]:
        built.append(agent)
        return document_of(agent, *args)

    monkeypatch.setattr(agent_kpis, "agent_document", counted)

    def agent_keys(items: Sequence[tuple[str, dict[str, Any]]]) -> set[str]:
        return {key for key, _ in items if f"|{AGENT}|" in key}

    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        publisher = KafkaPublisher(settings)
        await publisher.start()
        sent_items: list[list[tuple[str, dict[str, Any]]]] = []
        publish_json = publisher.publish_json

        async def kept(topic: str, items: Any) -> None:
            sent_items[-1].extend(items)
            await publish_json(topic, items)

        publisher.publish_json = kept  # type: ignore[method-assign]
        state = SnapshotState()
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            offsets: Counter[tuple[str, int]] = Counter()
            await apply(settings, store, _agent_day(12, NOW_S), NOW_S, offsets)
            collector = KpiCollector(store, settings)

            async def publish(now_s: float) -> list[tuple[str, dict[str, Any]]]:
                await collector.refresh(NOW_S)
                # the refresh leaves the agents to the publisher (no per-agent metrics)
                assert all(not window.agent_groups for window in collector.windows)
                agents = await read_agent_inputs(store, collector.windows)
                sent_items.append([])
                built.clear()
                sent = await publish_snapshots(
                    collector.windows, publisher, settings, state, now_s=now_s, agents=agents
                )
                assert sent == len(sent_items[-1])
                built_by_pass.append(list(built))
                # the state: a fingerprint for each key of a full snapshot now but the
                # totals (always sent), no more
                everything, _, _ = snapshot_items(collector.windows, settings, agents=agents)
                totals = {f"{name}|*|*|*" for name in names}
                assert set(state.published) == {key for key, _ in everything} - totals
                for value in state.published.values():
                    assert isinstance(value, int) or (
                        isinstance(value, tuple) and all(isinstance(v, int) for v in value)
                    ), value
                return sent_items[-1]

            first = await publish(NOW_S)
            # the 8 most active agents of each window, as `kpis --by agent` has them
            top = {f"agent-{n:02d}" for n in range(4, 12)}
            assert agent_keys(first) == {f"{w}|{AGENT}|{a}" for w in names for a in top}
            for width, name in zip(settings.windows, names, strict=True):
                document = await query_kpis(store, width_s=width, at_s=NOW_S, by=(AGENT,))
                expected = {g["key"]["agent"]: g for g in document["groups"]}
                for key, payload in first:
                    if key.startswith(f"{name}|{AGENT}|"):
                        agent = key.rsplit("|", 1)[1]
                        assert {k: payload[k] for k in expected[agent]} == expected[agent], key

            assert agent_keys(await publish(NOW_S + 10)) == set()  # nothing moved
            assert built_by_pass[-1] == [], "a document built for an agent that did not move"

            # agent-07 answers one more ticket, in every window: its group alone goes again
            more = [
                _event("ticket.created", NOW_S - 100, ticket_id="A-7-x", queue="support"),
                _event(
                    "ticket.replied",
                    NOW_S - 40,
                    ticket_id="A-7-x",
                    author_role="agent",
                    agent_id="agent-07",
                ),
            ]
            await apply(settings, store, more, NOW_S, offsets)
            moved = await publish(NOW_S + 20)
            assert agent_keys(moved) == {f"{w}|{AGENT}|agent-07" for w in names}
            assert built_by_pass[-1] == ["agent-07"] * len(names)
            for key, payload in moved:
                if f"|{AGENT}|" in key:
                    assert payload["first_response"]["count"] == 9, (key, payload)

            # a newcomer busier than all: it goes out, the least active shown leaves, and
            # the state forgets that one (a fingerprint per key shown, no more)
            await apply(settings, store, _agent_day(1, NOW_S, first=30), NOW_S, offsets)
            newcomer = await publish(NOW_S + 30)
            assert agent_keys(newcomer) == {f"{w}|{AGENT}|agent-30" for w in names}
            assert not [key for key in state.published if key.endswith("|agent-04")]
            assert sum(f"|{AGENT}|" in key for key in state.published) == 8 * len(names)

            # the full interval passed: every agent shown goes out again, moved or not
            full = await publish(NOW_S + 30 + settings.snapshot_full_interval)
            shown = {f"agent-{n:02d}" for n in (*range(5, 12), 30)}
            assert agent_keys(full) == {f"{w}|{AGENT}|{a}" for w in names for a in shown}
        finally:
            await publisher.stop()
            await redis.aclose()

    asyncio.run(scenario())


# -- keys on the real topics ------------------------------------------------------------------

COLLIDING = (("pipe|x", "y"), ("pipe", "x|y"), ("*", "50%"), ("star", "*"))


def test_snapshot_and_alert_keys_of_colliding_groups_stay_apart(
    redis_server: RedisServer, broker: str
) -> None:
    rule = AlertRule(
        name="tickets|csat",
        metric="csat_ratio",
        window="1h",
        op="<",
        threshold=0.5,
        min_samples=1,
        by=("channel", "queue"),
    )
    settings = unit_settings(
        redis_server, kafka_bootstrap=broker, windows=(3600,), alert_rules=(rule,)
    )
    create_topics(settings)
    events = []
    for n, (channel, queue) in enumerate(COLLIDING):
        ticket = f"K{n}"
        dims = {"channel": channel, "queue": queue, "priority": "normal"}
        events.append(_event("ticket.created", NOW_S - 900, ticket_id=ticket, **dims))
        # n + 1 tickets each, so every group's numbers are its own
        for extra in range(n):
            events.append(
                _event("ticket.created", NOW_S - 800, ticket_id=f"{ticket}-{extra}", **dims)
            )
        events.append(
            _event("survey.responded", NOW_S - 600, ticket_id=ticket, kind="csat", score=1)
        )

    async def scenario() -> tuple[list[Any], list[Any]]:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        publisher = KafkaPublisher(settings)
        await publisher.start()
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            await apply(settings, store, events, NOW_S)
            collector = KpiCollector(store, settings)
            await collector.refresh(NOW_S)
            sent = await publish_snapshots(collector.windows, publisher, settings)
            fired = await evaluate_rules(store, publisher, settings, now_s=NOW_S)
            assert len(fired) == len(COLLIDING)
            snapshots = await consume_all(broker, settings.topic_kpis, sent, 60)
            alerts = await consume_all(broker, settings.topic_alerts, len(fired), 60)
            return snapshots, alerts
        finally:
            await publisher.stop()
            await redis.aclose()

    snapshots, alerts = asyncio.run(scenario())
    latest = {r.key.decode(): orjson.loads(r.value) for r in snapshots}
    assert len(latest) == len(snapshots) == 1 + len(COLLIDING)
    for key, payload in latest.items():
        window_name, *parts = parse_output_key(key)
        assert window_name == payload["window"] == "1h"
        assert payload["key"] == {
            name: value for name, value in zip(DIMENSIONS, parts, strict=True) if value is not None
        }
    for n, (channel, queue) in enumerate(COLLIDING):
        assert latest[output_key("1h", channel, queue, "normal")]["tickets_created"] == n + 1
    assert "1h|pipe%7Cx|y|normal" in latest and "1h|pipe|x%7Cy|normal" in latest
    firing = {r.key.decode(): orjson.loads(r.value) for r in alerts}
    assert len(firing) == len(alerts) == len(COLLIDING)
    for channel, queue in COLLIDING:
        key = output_key(rule.name, "1h", channel, queue, None)
        assert key.startswith("tickets%7Ccsat|1h|"), key
        # the group is the rule's grouping: a queue called "*" is a queue, not "all"
        assert firing[key]["group"] == {"channel": channel, "queue": queue}
        assert firing[key]["type"] == "alert.firing"


def test_rules_with_and_without_grouping_read_what_a_kpi_read_of_their_window_shows(
    redis_server: RedisServer,
) -> None:
    """Rules without ``by`` read the all-groups buckets, the others every group's: each
    rule's value is the one ``query_kpis`` gives for its window and grouping, whatever the
    order the rules come in."""
    rules = tuple(
        AlertRule(
            name=f"Low{n}",
            metric=metric,
            window=window,
            op="<",
            threshold=2.0,  # every defined value holds: a transition per group
            min_samples=1,
            by=by,
        )
        for n, (metric, window, by) in enumerate(
            [
                ("csat_ratio", "1h", ("channel",)),
                ("csat_ratio", "15m", ()),
                ("chat_service_level_ratio", "1h", ()),
                ("csat_ratio", "1h", ()),
                ("chat_service_level_ratio", "15m", ("queue", "priority")),
            ]
        )
    )
    settings = unit_settings(redis_server, alert_rules=rules)
    events = list(many_queues(12, NOW_S))

    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            await apply(settings, store, events, NOW_S)
            found = await rule_transitions(store, settings, now_s=NOW_S)
            values = {(t.rule, tuple(sorted(t.group.items()))): t.value for _, _, t in found}
            expected = {}
            for rule in rules:
                document = await query_kpis(
                    store, width_s=parse_duration(rule.window), at_s=NOW_S, by=rule.by
                )
                for group in document["groups"]:
                    value, samples = rule_value(rule, group)
                    if value is not None and samples >= 1:
                        expected[(rule.name, tuple(sorted(group["key"].items())))] = value
            assert values == expected
            assert {name for name, _ in values} == {rule.name for rule in rules}
        finally:
            await redis.aclose()

    asyncio.run(scenario())


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DESKPULSE_MAX_SNAPSHOT_MESSAGES", "0", "DESKPULSE_MAX_SNAPSHOT_MESSAGES"),
        ("DESKPULSE_MAX_SERIES", "999", "DESKPULSE_MAX_SERIES"),
        ("DESKPULSE_SNAPSHOT_FULL_INTERVAL", "5s", "DESKPULSE_SNAPSHOT_FULL_INTERVAL"),
        (
            "DESKPULSE_ALERT_RULES",
            '[{"name": "a\\u001fb", "metric": "csat_ratio", "op": "<", "threshold": 0.8}]',
            "DESKPULSE_ALERT_RULES",
        ),
    ],
)
def test_bad_guard_and_rule_settings_fail_at_start_naming_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, named: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from elsewhere
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_the_snapshot_limit_defaults_to_the_series_limit() -> None:
    defaults = Settings()
    assert defaults.max_snapshot_messages == defaults.max_series_per_metric == 10_000


# -- the guard's bookkeeping, pure ------------------------------------------------------------


@pytest.mark.parametrize(
    ("needs", "budget", "expected"),
    [
        ((10, 10, 10), 30, [10, 10, 10]),  # all fit
        ((10, 10, 10), 15, [5, 5, 5]),  # an even share each
        ((2, 100, 100), 30, [2, 14, 14]),  # a small view lends the rest of its share
        ((0, 50), 10, [0, 10]),  # a view with nothing needs nothing
        ((5, 5, 5), 2, [1, 1, 1]),  # below one per view: each keeps its "other"
        ((), 10, []),
    ],
)
def test_allocate_shares_the_budget(
    needs: tuple[int, ...], budget: int, expected: list[int]
) -> None:
    assert allocate(needs, budget) == expected


_FIELD = st.integers(min_value=0, max_value=50)


@st.composite
def group_fields(draw: st.DrawFn) -> dict[str, int]:
    """A group's window fields as the core writes them: sketches that add up to counts."""
    fields: Counter[str] = Counter()
    fields["tc"] = draw(_FIELD)
    fields["cr"] = draw(_FIELD)
    for _ in range(draw(st.integers(0, 6))):  # first responses
        seconds = draw(st.floats(0, 200_000))
        fields["fr"] += 1
        fields["fr_ms"] += int(seconds * 1000)
        fields["fr_in"] += draw(st.integers(0, 1))
        fields[f"fr_sk:{index_of(seconds)}"] += 1
        business = draw(st.floats(0, seconds))  # business time: at most the calendar time
        fields["fb_ms"] += int(business * 1000)
        fields[f"fb_sk:{index_of(business)}"] += 1
    for _ in range(draw(st.integers(0, 4))):  # next responses
        seconds = draw(st.floats(0, 200_000))
        business = draw(st.floats(0, seconds))
        fields["nr"] += 1
        fields["nr_ms"] += int(seconds * 1000)
        fields[f"nr_sk:{index_of(seconds)}"] += 1
        fields["nb_ms"] += int(business * 1000)
        fields[f"nb_sk:{index_of(business)}"] += 1
    for short in ("fr", "nr", "rs"):  # SLA instances achieved and (claimed) breached
        fields[f"sa_{short}"] = draw(st.integers(0, 3))
        fields[f"sb_{short}"] = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 6))):  # answered chats
        seconds = draw(st.floats(0, 600))
        fields["ca"] += 1
        fields["ca_ms"] += int(seconds * 1000)
        fields["ca_in"] += draw(st.integers(0, 1))
        fields[f"cw_sk:{index_of(seconds)}"] += 1
    fields["cab"] = draw(st.integers(0, 3))
    fields["cs"] = draw(st.integers(0, 3))
    for kind, low, high in (("cs", 1, 5), ("np", 0, 10), ("ce", 1, 7)):
        for _ in range(draw(st.integers(0, 4))):
            score = draw(st.integers(low, high))
            fields[f"{kind}_n"] += 1
            if kind == "cs":
                fields["cs_sum"] += score
                fields["cs_sat"] += score >= 4
            elif kind == "np":
                fields["np_pro"] += score >= 9
                fields["np_det"] += score <= 6
            else:
                fields["ce_sum"] += score
    return {name: value for name, value in fields.items() if value}


@hypothesis_settings(max_examples=300, deadline=None)
@given(group_fields())
def test_the_guard_knows_which_families_a_group_has_series_in(fields: dict[str, int]) -> None:
    # the guard's table, held against the documents the exposition is built from
    if not has_samples(fields):
        return
    document = group_document({}, fields)
    for name, path, requires in _WINDOWED:
        value: Any = document
        for part in path:
            value = value[part]
        assert Rule(1, requires).present(fields) == (value is not None), name
    for name, section, quantiles, count_field, _ in _SUMMARIES:
        present = Rule(len(quantiles) + 2, (count_field,)).present(fields)
        assert present == (fields.get(count_field, 0) > 0), name
        section_document: Any = document
        for part in section:
            section_document = section_document[part]
        values = [section_document[field] for _, field in quantiles]
        assert all(v is not None for v in values) if present else True, name
    # the SLA ratio: a series per SLA metric with an achieved or a breached instance
    for metric, requires in _SLA_RATIO_REQUIRES:
        ratio = document["sla"][metric]["achieved_ratio"]
        assert Rule(1, requires).present(fields) == (ratio is not None), metric


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(["tc", "cr", "fr", "fr_ms"]), _FIELD), max_size=40),
    st.integers(min_value=1, max_value=12),
)
def test_folding_keeps_every_sum_and_the_largest_groups(
    raw: list[dict[str, int]], budget: int
) -> None:
    view: dict[tuple[str, ...], dict[str, int]] = {
        (f"c{i}", "q", "normal"): fields for i, fields in enumerate(raw)
    }
    rules = [Rule(1), Rule(3, ("fr",))]
    (folds,) = guard([view], rules, budget)
    for rule, fold in zip(rules, folds, strict=True):
        present = [k for k, f in view.items() if rule.present(f)]
        shown = len(fold.kept) + (fold.other is not None)
        assert shown * rule.series <= max(budget, rule.series)
        assert len(fold.kept) + fold.folded == len(present)
        # (random fields: only the rule's own are zero where it has no series)
        for name in rule.requires or ("tc", "cr", "fr", "fr_ms"):
            total = sum(view[k].get(name, 0) for k in present)
            kept = sum(view[k].get(name, 0) for k in fold.kept)
            assert kept + (fold.other or {}).get(name, 0) == total, name
        if fold.kept and fold.folded:
            size = cardinality.volume
            folded = [size(view[k]) for k in present if k not in fold.kept]
            assert min(size(view[k]) for k in fold.kept) >= max(folded)
