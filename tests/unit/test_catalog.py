"""The metric catalog: the names the README promises, and Prometheus naming conventions."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

import deskpulse.exporters.catalog as catalog_module
from deskpulse.exporters.catalog import (
    AGENTS,
    BACKLOG_STATUSES,
    CATALOG,
    CUMULATIVE,
    DIMENSIONS,
    HEALTH,
    INGEST,
    INGEST_CATALOG,
    INGEST_OUTCOMES,
    INSTANCES_NOW,
    OPENMETRICS_FAMILY_CLASHES,
    STATE_NOW,
    WINDOWED,
    MetricSpec,
    build_catalog,
    first_response_buckets,
    sample_names,
)
from deskpulse.models.events import TicketStatusChanged
from deskpulse.models.settings import DEFAULT_FIRST_RESPONSE_TARGETS

README = Path(__file__).resolve().parents[2] / "README.md"

WINDOWED_NAMES = {
    "deskpulse_tickets_created",
    "deskpulse_chats_requested",
    "deskpulse_chats_answered",
    "deskpulse_chats_abandoned",
    "deskpulse_chats_short_abandoned",
    "deskpulse_first_responses",
    "deskpulse_first_response_seconds",
    "deskpulse_first_response_average_seconds",
    "deskpulse_first_response_within_target_ratio",
    "deskpulse_chat_abandonment_ratio",
    "deskpulse_chat_service_level_ratio",
    "deskpulse_chat_wait_seconds",
    "deskpulse_csat_responses",
    "deskpulse_csat_ratio",
    "deskpulse_csat_score_average",
    "deskpulse_nps_responses",
    "deskpulse_nps_score",
    "deskpulse_ces_responses",
    "deskpulse_ces_score_average",
    "deskpulse_first_response_business_seconds",
    "deskpulse_next_response_seconds",
    "deskpulse_sla_achieved_ratio",
    "deskpulse_resolution_seconds",
    "deskpulse_reopen_ratio",
    "deskpulse_one_touch_ratio",
    "deskpulse_chat_handle_seconds",
}
CUMULATIVE_NAMES = {
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
}
INSTANCES_NOW_NAMES = {"deskpulse_sla_running", "deskpulse_sla_at_risk"}
# name -> labels: the backlog and the chats waiting, by group, at the newest event time
STATE_NOW_LABELS = {
    "deskpulse_backlog_tickets": ("channel", "queue", "priority", "status"),
    "deskpulse_backlog_oldest_age_seconds": ("channel", "queue", "priority"),
    "deskpulse_chats_waiting": ("channel", "queue", "priority"),
    "deskpulse_chat_longest_wait_seconds": ("channel", "queue", "priority"),
}
# name -> labels, for the health family, whose labels differ metric by metric
HEALTH_LABELS = {
    "deskpulse_kpi_refresh_timestamp_seconds": (),
    "deskpulse_kpi_refresh_duration_seconds": (),
    "deskpulse_kpi_refresh_interval_seconds": (),
    "deskpulse_breach_check_timestamp_seconds": (),
    "deskpulse_breach_check_duration_seconds": (),
    "deskpulse_breach_check_interval_seconds": (),
    "deskpulse_snapshot_publish_timestamp_seconds": (),
    "deskpulse_snapshot_interval_seconds": (),
    "deskpulse_events_processed_total": ("topic", "type"),
    "deskpulse_events_rejected_total": ("topic", "reason"),
    "deskpulse_events_rerouted_total": ("topic",),
    "deskpulse_events_duplicate_total": ("topic",),
    "deskpulse_events_late_total": ("topic",),
    "deskpulse_events_ignored_total": ("reason",),
    "deskpulse_events_orphaned_total": (),
    "deskpulse_tickets_expired_total": (),
    "deskpulse_events_held": (),
    "deskpulse_consumer_lag_messages": ("topic", "partition"),
    "deskpulse_partition_stalls_total": ("topic", "partition"),
    "deskpulse_offset_holes_total": ("topic", "outcome"),
    "deskpulse_last_event_timestamp_seconds": ("topic",),
    "deskpulse_flush_duration_seconds": (),
    "deskpulse_batch_events": (),
    "deskpulse_redis_up": (),
    "deskpulse_broker_up": (),
    "deskpulse_deadletter_up": (),
    "deskpulse_state_ok": (),
    "deskpulse_events_skipped_total": ("topic", "reason"),
    "deskpulse_alert_firing": ("rule", "window", "channel", "queue", "priority"),
    "deskpulse_series_folded": ("metric",),
    "deskpulse_series_dropped_total": ("metric",),
    "deskpulse_build_info": ("version",),
    "deskpulse_kpi_reads_total": ("result",),
}

#: per agent, only with DESKPULSE_AGENT_METRICS=true
AGENTS_LABELS = {
    "deskpulse_agent_first_responses": ("window", "agent"),
    "deskpulse_agent_first_response_mean_seconds": ("window", "agent"),
    "deskpulse_agent_next_responses": ("window", "agent"),
    "deskpulse_agent_next_response_mean_seconds": ("window", "agent"),
    "deskpulse_agent_chats_answered": ("window", "agent"),
    "deskpulse_agent_chat_handle_mean_seconds": ("window", "agent"),
    "deskpulse_agent_csat_ratio": ("window", "agent"),
    "deskpulse_agent_tickets_solved": ("window", "agent"),
    "deskpulse_agent_occupancy_ratio": ("window", "agent"),
    "deskpulse_agent_status": ("agent", "status"),
}

NAME = re.compile(r"^deskpulse_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
# Words that mean "a time" or "a share": such a metric must carry the base unit in its name.
TIME_WORDS = ("duration", "wait", "latency", "age", "time", "timestamp", "delay")
NON_BASE_UNITS = ("_ms", "_milliseconds", "_minutes", "_hours", "_days", "_percent", "_pct")
SPECS = (*WINDOWED, *CUMULATIVE, *INSTANCES_NOW, *STATE_NOW, *HEALTH, *AGENTS)
#: and the ingest server's, on a port of its own
ALL_SPECS = (*SPECS, *INGEST)


def stem(spec: MetricSpec) -> str:
    return spec.name.removesuffix("_total")


def test_catalog_holds_exactly_the_documented_metrics() -> None:
    assert {spec.name for spec in WINDOWED} == WINDOWED_NAMES
    assert {spec.name for spec in CUMULATIVE} == CUMULATIVE_NAMES
    assert {spec.name for spec in INSTANCES_NOW} == INSTANCES_NOW_NAMES
    assert {spec.name: spec.labels for spec in STATE_NOW} == STATE_NOW_LABELS
    assert {spec.name: spec.labels for spec in HEALTH} == HEALTH_LABELS
    assert {spec.name: spec.labels for spec in AGENTS} == AGENTS_LABELS
    assert set(CATALOG) == (
        WINDOWED_NAMES
        | CUMULATIVE_NAMES
        | INSTANCES_NOW_NAMES
        | set(STATE_NOW_LABELS)
        | set(HEALTH_LABELS)
        | set(AGENTS_LABELS)
    )


def test_the_ingest_servers_families_are_its_own() -> None:
    assert not set(INGEST_CATALOG) & set(CATALOG)
    assert {spec.name: spec.labels for spec in INGEST} == {
        "deskpulse_ingest_requests_total": ("source", "code"),
        "deskpulse_ingest_records_total": ("source", "outcome"),
        "deskpulse_ingest_request_duration_seconds": ("source",),
    }
    assert INGEST_OUTCOMES == ("accepted", "rejected", "ignored")


def test_no_name_is_declared_twice() -> None:
    assert len(SPECS) == len(CATALOG)
    spec = CATALOG["deskpulse_redis_up"]
    with pytest.raises(ValueError, match="deskpulse_redis_up is declared twice"):
        build_catalog([spec, spec])


def test_public_surface() -> None:
    for name in catalog_module.__all__:
        assert hasattr(catalog_module, name), name
    defined_here = {
        name
        for name, value in vars(catalog_module).items()
        if not name.startswith("_")
        and (name.isupper() or getattr(value, "__module__", None) == catalog_module.__name__)
    }
    assert defined_here <= set(catalog_module.__all__)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_name_follows_prometheus_conventions(spec: MetricSpec) -> None:
    assert NAME.match(spec.name), "lower snake case under the deskpulse_ namespace"
    assert spec.kind in ("gauge", "counter", "histogram", "summary")
    # counters, and only counters, end in _total
    assert spec.name.endswith("_total") == (spec.kind == "counter")
    # the unit, when there is one, ends the name (before _total), as OpenMetrics requires
    if spec.unit:
        assert stem(spec).endswith("_" + spec.unit)
    assert not stem(spec).endswith(NON_BASE_UNITS), "base units only: seconds, ratio"
    if any(word in stem(spec).split("_") for word in TIME_WORDS):
        assert spec.unit == "seconds", "times are in seconds"
    if spec.unit == "seconds":
        assert stem(spec).endswith("_seconds")
    if "ratio" in stem(spec).split("_") or spec.help.lower().startswith("share"):
        assert spec.unit == "ratio" and spec.kind == "gauge", "0-1 ratios end in _ratio"
    assert spec.help.strip() and spec.help.rstrip().endswith((".", ")"))


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_labels_are_valid_and_never_ids(spec: MetricSpec) -> None:
    assert len(set(spec.labels)) == len(spec.labels)
    # the one exception, on the operator's request (DESKPULSE_AGENT_METRICS): agent ids
    opted_in = ("agent",) if spec in AGENTS else ()
    for label in spec.labels:
        assert LABEL.match(label) and not label.startswith("__")
        assert label != "id" and not label.endswith("_id"), "labels never carry ids"
        ids = ("ticket", "chat", "customer", "agent", "requester", "event")
        assert label not in ids or label in opted_in
    if spec.kind == "histogram":
        assert "le" not in spec.labels and spec.buckets
        assert list(spec.buckets) == sorted(set(spec.buckets))
    else:
        assert "le" not in spec.labels and not spec.buckets
    assert ("quantile" in spec.labels) == bool(spec.quantiles)


@pytest.mark.parametrize("spec", WINDOWED, ids=lambda spec: spec.name)
def test_windowed_gauges_say_they_are_event_time(spec: MetricSpec) -> None:
    assert spec.kind == ("summary" if spec.quantiles else "gauge")
    assert spec.labels[: 1 + len(DIMENSIONS)] == ("window", *DIMENSIONS)
    text = spec.help.lower()
    assert "event-time" in text and "rolling window" in text and "deskpulse" in text
    assert "prometheus cannot compute" in text and "late event" in text
    assert "no samples" in text and "omitted" in text


def test_quantile_labels() -> None:
    assert CATALOG["deskpulse_first_response_seconds"].quantiles == ("0.5", "0.9", "0.95")
    assert CATALOG["deskpulse_chat_wait_seconds"].quantiles == ("0.5", "0.9")
    assert CATALOG["deskpulse_chat_handle_seconds"].quantiles == ("0.5", "0.9")
    for name in (
        "deskpulse_first_response_business_seconds",
        "deskpulse_next_response_seconds",
        "deskpulse_resolution_seconds",
    ):
        assert CATALOG[name].quantiles == ("0.5", "0.9", "0.95")
        assert CATALOG[name].labels[-1] == "quantile"


def test_sla_families_carry_the_sla_metric_label() -> None:
    # the SLA families, and only those, add `metric` (first_response, next_response,
    # resolution) to the dimension labels
    with_metric = {spec.name for spec in (*WINDOWED, *CUMULATIVE) if "metric" in spec.labels}
    assert with_metric >= {"deskpulse_sla_achieved_ratio", "deskpulse_sla_achieved_total"}
    assert all(name.startswith("deskpulse_sla_") for name in with_metric)
    assert CATALOG["deskpulse_sla_achieved_ratio"].labels == ("window", *DIMENSIONS, "metric")
    assert CATALOG["deskpulse_sla_achieved_total"].labels == (*DIMENSIONS, "metric")


@pytest.mark.parametrize("spec", INSTANCES_NOW, ids=lambda spec: spec.name)
def test_instances_now_are_gauges_by_sla_metric_alone(spec: MetricSpec) -> None:
    # a state now, kept in Redis: the same from every worker, no dimension labels
    assert spec.kind == "gauge" and spec.labels == ("metric",)
    assert spec.name.startswith("deskpulse_sla_")
    text = spec.help.lower()
    assert "now" in text and "breach detection" in text and "max, not sum" in text


@pytest.mark.parametrize("spec", STATE_NOW, ids=lambda spec: spec.name)
def test_state_now_gauges_are_by_group_without_a_window(spec: MetricSpec) -> None:
    # one instant, not a window: no window label, and the same from every worker
    assert spec.kind == "gauge" and not spec.quantiles
    assert spec.labels[: len(DIMENSIONS)] == DIMENSIONS and "window" not in spec.labels
    text = spec.help.lower()
    assert "newest event time" in text and "not a window" in text and "max, not sum" in text
    assert "event-time result over the rolling window" not in text


def test_backlog_statuses_are_the_open_ticket_statuses() -> None:
    # every status a ticket can have but the two that take it out of the backlog
    annotation = TicketStatusChanged.model_fields["status"].annotation
    statuses = typing.get_args(annotation)
    assert set(statuses) - set(BACKLOG_STATUSES) == {"solved", "closed"}
    assert set(BACKLOG_STATUSES) < set(statuses)
    spec = CATALOG["deskpulse_backlog_tickets"]
    assert spec.labels[-1] == "status"
    assert all(status in spec.help for status in BACKLOG_STATUSES)


def test_help_texts_name_only_catalogued_metrics() -> None:
    # a HELP that points at another family ("the tickets of deskpulse_resolution_seconds")
    # must point at one that exists
    for spec in SPECS:
        for name in re.findall(r"\bdeskpulse_[a-z0-9_]+", spec.help):
            assert name in CATALOG, (spec.name, name)


@pytest.mark.parametrize("spec", CUMULATIVE, ids=lambda spec: spec.name)
def test_cumulative_family_is_rateable(spec: MetricSpec) -> None:
    assert spec.labels[: len(DIMENSIONS)] == DIMENSIONS
    assert set(spec.labels[len(DIMENSIONS) :]) <= {"metric"}
    assert spec.kind in ("counter", "histogram")


def test_first_response_buckets_hold_the_targets() -> None:
    spec = CATALOG["deskpulse_first_response_duration_seconds"]
    assert set(DEFAULT_FIRST_RESPONSE_TARGETS.values()) <= set(spec.buckets)
    assert first_response_buckets([600, 3600]) == tuple(sorted({*spec.buckets, 600.0}))


def test_sample_names() -> None:
    assert sample_names(CATALOG["deskpulse_flush_duration_seconds"]) == (
        "deskpulse_flush_duration_seconds_bucket",
        "deskpulse_flush_duration_seconds_sum",
        "deskpulse_flush_duration_seconds_count",
    )
    assert sample_names(CATALOG["deskpulse_redis_up"]) == ("deskpulse_redis_up",)


def test_openmetrics_family_clashes_are_the_known_pairs() -> None:
    # These gauge/counter pairs are why /metrics must answer in the classic text format.
    assert {f"{name}_total" for name in OPENMETRICS_FAMILY_CLASHES} <= CUMULATIVE_NAMES
    assert len(OPENMETRICS_FAMILY_CLASHES) == 7


def test_the_readme_and_the_catalog_name_the_same_metrics() -> None:
    # The README is where users read what /metrics promises: every name it mentions must
    # exist (as a family or one of its samples), and every family must be documented there.
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"\bdeskpulse_[a-z0-9_]+", text))
    families = {**CATALOG, **INGEST_CATALOG}
    known = set(families) | {name for spec in families.values() for name in sample_names(spec)}
    assert named, "the README names metrics"
    assert named <= known, sorted(named - known)
    undocumented = [name for name in families if not re.search(rf"\b{name}\b", text)]
    assert not undocumented, undocumented
