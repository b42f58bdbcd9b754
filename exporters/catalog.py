"""Every metric the worker exports: the one source of truth for names, labels and HELP.

The collector builds its families from :data:`CATALOG`; the dashboard, the recording rules
and the alerts in ``exporters/assets`` are tested against it, so a rename here that is not
carried through fails the suite instead of a board going blank.

Six groups, on purpose (README.md, "Prometheus metrics"):

* **windowed** gauges, labels ``window`` + :data:`DIMENSIONS` (plus ``metric`` on the SLA
  ratio): event-time results over a rolling
  window computed by deskpulse from its buckets. Prometheus cannot compute them from scrapes.
* **cumulative** counters and one classic histogram, labels :data:`DIMENSIONS` (plus
  ``metric``, the SLA metric, on the SLA counters): the
  Prometheus-native family that ``rate()`` and ``histogram_quantile()`` work on. Alert rules
  are built on these.
* **instances now**: SLA instances running and at risk at this moment, gauges labelled
  ``metric`` alone: a state the commits keep, not a window and not a counter.
* **state now**: the backlog of open tickets and the chats waiting at the newest event
  time, gauges labelled :data:`DIMENSIONS` (plus ``status`` on the backlog): a state like
  the instances now, but broken down by group like the windows.
* **health**: freshness and pipeline health of the worker itself.
* **per agent**, only with ``DESKPULSE_AGENT_METRICS=true``: a few windowed gauges labelled
  ``window`` and ``agent``, and each agent's presence status now; under the same series
  budget.

Counters are stored under their full exposed name (``..._total``). Seven windowed gauges
share a stem with a counter (``deskpulse_tickets_created`` and
``deskpulse_tickets_created_total``): fine in the classic text format (0.0.4), but in
OpenMetrics both families would be called ``deskpulse_tickets_created``, so ``/metrics``
must answer in the classic text format (see :data:`OPENMETRICS_FAMILY_CLASHES`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from deskpulse.models.events import DIMENSIONS
from deskpulse.streams.core import HISTOGRAM_BOUNDS_S as _CORE_BOUNDS_S

__all__ = [
    "AGENTS",
    "BACKLOG_STATUSES",
    "CATALOG",
    "CUMULATIVE",
    "DIMENSIONS",
    "FIRST_RESPONSE_BUCKETS_SECONDS",
    "HEALTH",
    "HOLE_OUTCOMES",
    "INGEST",
    "INGEST_CATALOG",
    "INGEST_DURATION_BUCKETS",
    "INGEST_OUTCOMES",
    "INSTANCES_NOW",
    "OPENMETRICS_FAMILY_CLASHES",
    "STATE_NOW",
    "WINDOWED",
    "MetricKind",
    "MetricSpec",
    "build_catalog",
    "client_args",
    "first_response_buckets",
    "sample_names",
]

MetricKind = Literal["gauge", "counter", "histogram", "summary"]

_WINDOWED_LABELS: tuple[str, ...] = ("window", *DIMENSIONS)

# Bounds of deskpulse_first_response_duration_seconds. They include the default
# first-response targets (urgent 1h, high 4h, normal 8h, low 24h) so that "responses within
# target" is an exact bucket count, not an interpolation.
# the core keeps the per-bound counts, so it owns the ladder
FIRST_RESPONSE_BUCKETS_SECONDS: tuple[float, ...] = tuple(float(b) for b in _CORE_BOUNDS_S)
# One Redis MULTI/EXEC per partition per batch: milliseconds normally, seconds when sick.
_FLUSH_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_BATCH_BUCKETS_EVENTS: tuple[float, ...] = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
#: The ``outcome`` label values of ``deskpulse_offset_holes_total`` (streams/holes.py).
HOLE_OUTCOMES: tuple[str, ...] = ("filled", "empty", "expired")
#: The ``status`` label values of ``deskpulse_backlog_tickets``: the statuses of an open ticket.
BACKLOG_STATUSES: tuple[str, ...] = ("new", "open", "pending", "hold")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric family.

    ``name`` is the name as exposed (counters end in ``_total``); ``unit`` is the base unit
    that ends the name (``"seconds"``, ``"ratio"``, ...) or ``""`` for plain counts.
    ``quantiles`` are the values of the ``quantile`` label of a sketch-backed gauge;
    ``buckets`` the upper bounds of a histogram (``+Inf`` is implied).
    """

    name: str
    kind: MetricKind
    labels: tuple[str, ...]
    help: str
    unit: str
    quantiles: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


def sample_names(spec: MetricSpec) -> tuple[str, ...]:
    """The sample names a family shows in PromQL: a histogram's ``_bucket/_sum/_count``."""
    if spec.kind == "histogram":
        return (f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count")
    if spec.kind == "summary":
        return (spec.name, f"{spec.name}_sum", f"{spec.name}_count")
    return (spec.name,)


def client_args(spec: MetricSpec) -> tuple[str, str, list[str]]:
    """The name, HELP and label names prometheus_client's metric classes take for ``spec``
    (a counter's name without its ``_total``, which the client adds)."""
    name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    return name, spec.help, list(spec.labels)


def first_response_buckets(targets_seconds: Iterable[float]) -> tuple[float, ...]:
    """The FRT histogram bounds with the configured targets added, sorted, without repeats."""
    return tuple(sorted({*FIRST_RESPONSE_BUCKETS_SECONDS, *map(float, targets_seconds)}))


def build_catalog(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    """Index specs by name; a repeated name is a bug, not an override."""
    catalog: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in catalog:
            raise ValueError(f"metric {spec.name} is declared twice")
        catalog[spec.name] = spec
    return catalog


# -- windowed, event-time gauges ------------------------------------------------------------

_EVENT_TIME = (
    "Event-time result over the rolling window named by the window label, computed by "
    "deskpulse from its per-bucket state (Prometheus cannot compute it from scrapes: a late "
    "event lands in the bucket of its own occurred_at)."
)
_NO_SAMPLES = (
    " A ratio, average, quantile or score with no samples in the window is omitted, "
    "never exported as 0."
)


def _windowed(
    name: str,
    what: str,
    unit: str = "",
    quantiles: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> MetricSpec:
    labels = _WINDOWED_LABELS + extra + (("quantile",) if quantiles else ())
    # Quantiles are exposed as a summary (quantile samples plus the window's _count and
    # _sum) so the exposition is valid; its _count/_sum are window values, not counters.
    window_note = (
        " _count and _sum are the window's, not cumulative: no rate()." if quantiles else ""
    )
    return MetricSpec(
        name=name,
        kind="summary" if quantiles else "gauge",
        labels=labels,
        help=f"{what}. {_EVENT_TIME}{_NO_SAMPLES}{window_note}",
        unit=unit,
        quantiles=quantiles,
    )


WINDOWED: tuple[MetricSpec, ...] = (
    _windowed("deskpulse_tickets_created", "Tickets created in the window"),
    _windowed("deskpulse_chats_requested", "Chats requested in the window"),
    _windowed("deskpulse_chats_answered", "Chats accepted by an agent in the window"),
    _windowed(
        "deskpulse_chats_abandoned",
        "Chats abandoned before an accept in the window, short abandons excluded",
    ),
    _windowed(
        "deskpulse_chats_short_abandoned",
        "Chats abandoned within DESKPULSE_SHORT_ABANDON seconds of the request",
    ),
    _windowed(
        "deskpulse_first_responses", "Tickets whose first public agent reply came in the window"
    ),
    _windowed(
        "deskpulse_first_response_seconds",
        "First response time quantile (at most 1% relative error) of first replies in the window",
        unit="seconds",
        quantiles=("0.5", "0.9", "0.95"),
    ),
    _windowed(
        "deskpulse_first_response_average_seconds",
        "Mean first response time of first replies in the window",
        unit="seconds",
    ),
    _windowed(
        "deskpulse_first_response_within_target_ratio",
        "Share of first responses within the priority's target (0-1)",
        unit="ratio",
    ),
    _windowed(
        "deskpulse_chat_abandonment_ratio",
        "Abandoned chats / (answered + abandoned), short abandons excluded (0-1)",
        unit="ratio",
    ),
    _windowed(
        "deskpulse_chat_service_level_ratio",
        "Chats answered within DESKPULSE_CHAT_ANSWER_TARGET / (answered + abandoned) (0-1)",
        unit="ratio",
    ),
    _windowed(
        "deskpulse_chat_wait_seconds",
        "Wait of answered chats (request to accept) quantile, at most 1% relative error",
        unit="seconds",
        quantiles=("0.5", "0.9"),
    ),
    _windowed("deskpulse_csat_responses", "CSAT survey responses in the window"),
    _windowed(
        "deskpulse_csat_ratio",
        "Share of CSAT responses scoring 4 or 5 (0-1)",
        unit="ratio",
    ),
    _windowed("deskpulse_csat_score_average", "Mean CSAT score (1-5)"),
    _windowed("deskpulse_nps_responses", "NPS survey responses in the window"),
    _windowed(
        "deskpulse_nps_score",
        "Net promoter score: 100 * (promoters - detractors) / responses (-100 to 100)",
    ),
    _windowed("deskpulse_ces_responses", "CES survey responses in the window"),
    _windowed("deskpulse_ces_score_average", "Mean customer effort score (1-7)"),
    _windowed(
        "deskpulse_first_response_business_seconds",
        "First response time in business time (the ticket's SLA policy schedule; calendar "
        "time without one) quantile, at most 1% relative error, of first replies in the window",
        unit="seconds",
        quantiles=("0.5", "0.9", "0.95"),
    ),
    _windowed(
        "deskpulse_next_response_seconds",
        "Next response time (a customer reply after the first agent reply, to the next public "
        "agent reply; calendar time) quantile, at most 1% relative error, of next responses "
        "in the window",
        unit="seconds",
        quantiles=("0.5", "0.9", "0.95"),
    ),
    _windowed(
        "deskpulse_sla_achieved_ratio",
        "Share of SLA instances of the metric label's SLA metric (first_response, "
        "next_response, resolution) achieved in the window: achieved / (achieved + breached), "
        "achieved counted at the fulfilment, breached at the deadline once claimed (0-1)",
        unit="ratio",
        extra=("metric",),
    ),
    _windowed(
        "deskpulse_resolution_seconds",
        "Full resolution time (creation to the ticket's final solve, calendar time) quantile, "
        "at most 1% relative error, of tickets whose final solve fell in the window: one "
        "sample per ticket, which a reopen takes back until the next solve",
        unit="seconds",
        quantiles=("0.5", "0.9", "0.95"),
    ),
    _windowed(
        "deskpulse_reopen_ratio",
        "Share of the tickets of deskpulse_resolution_seconds (final solve in the window) "
        "that were reopened at least once before it (0-1)",
        unit="ratio",
    ),
    _windowed(
        "deskpulse_one_touch_ratio",
        "Share of the tickets of deskpulse_resolution_seconds (final solve in the window) "
        "solved with exactly one public agent reply and no reopen (0-1)",
        unit="ratio",
    ),
    _windowed(
        "deskpulse_chat_handle_seconds",
        "Handle time of answered chats (accept to end) quantile, at most 1% relative error, "
        "of chats that ended in the window",
        unit="seconds",
        quantiles=("0.5", "0.9"),
    ),
)

# -- cumulative, Prometheus-native ----------------------------------------------------------

_CUMULATIVE = " Cumulative since the worker's state began, for rate() and increase()."


def _counter(name: str, what: str) -> MetricSpec:
    return MetricSpec(
        name=name, kind="counter", labels=DIMENSIONS, help=what + _CUMULATIVE, unit=""
    )


CUMULATIVE: tuple[MetricSpec, ...] = (
    _counter("deskpulse_tickets_created_total", "Tickets created."),
    _counter("deskpulse_chats_requested_total", "Chats requested."),
    _counter("deskpulse_first_responses_total", "Tickets that got their first public agent reply."),
    _counter(
        "deskpulse_first_response_breaches_total",
        "First responses later than the target of the ticket's priority.",
    ),
    MetricSpec(
        name="deskpulse_first_response_duration_seconds",
        kind="histogram",
        labels=DIMENSIONS,
        help=(
            "First response time of each ticket, observed at its first public agent reply; "
            "bucket bounds include the configured first-response targets." + _CUMULATIVE
        ),
        unit="seconds",
        buckets=FIRST_RESPONSE_BUCKETS_SECONDS,
    ),
    _counter(
        "deskpulse_chats_offered_total",
        "Chats offered: answered plus abandoned, short abandons excluded.",
    ),
    _counter("deskpulse_chats_answered_total", "Chats accepted by an agent."),
    _counter(
        "deskpulse_chats_answered_in_target_total",
        "Chats accepted within DESKPULSE_CHAT_ANSWER_TARGET seconds of the request.",
    ),
    _counter("deskpulse_chats_abandoned_total", "Chats abandoned, short abandons excluded."),
    _counter(
        "deskpulse_chats_short_abandoned_total",
        "Chats abandoned within DESKPULSE_SHORT_ABANDON seconds of the request.",
    ),
    _counter("deskpulse_csat_responses_total", "CSAT survey responses."),
    _counter("deskpulse_csat_satisfied_responses_total", "CSAT survey responses scoring 4 or 5."),
    MetricSpec(
        name="deskpulse_sla_achieved_total",
        kind="counter",
        labels=(*DIMENSIONS, "metric"),
        help=(
            "SLA instances achieved (fulfilled at or before the deadline), by SLA metric "
            "(first_response, next_response, resolution), counted at the fulfilment. Never "
            "goes down within a process: an achievement a later event takes back stays "
            "counted until the process restarts." + _CUMULATIVE
        ),
        unit="",
    ),
    MetricSpec(
        name="deskpulse_sla_breaches_total",
        kind="counter",
        labels=(*DIMENSIONS, "metric"),
        help="SLA instances breached (metric: first_response, next_response, resolution), "
        "as published once per ticket, metric and instance to the alerts topic; a later "
        "retraction does not lower it." + _CUMULATIVE,
        unit="",
    ),
    _counter(
        "deskpulse_tickets_solved_total",
        "Ticket solves: status changes into solved, or into closed from any status but "
        "solved; a ticket solved again after a reopen counts again.",
    ),
    _counter(
        "deskpulse_tickets_reopened_total",
        "Ticket reopens: status changes from solved back to new, open, pending or hold.",
    ),
)

# -- SLA instances now ------------------------------------------------------------------------

_NOW = (
    " A state at this moment, not a window: an instance comes and goes with the commit of "
    "the event that starts or ends it, and a warning or deadline passing counts when breach "
    "detection claims it on its event-time clock (as it publishes sla.at_risk or "
    "sla.breached). Every worker reads the same counts from Redis: aggregate over workers "
    "with max, not sum."
)

INSTANCES_NOW: tuple[MetricSpec, ...] = (
    MetricSpec(
        "deskpulse_sla_running",
        "gauge",
        ("metric",),
        "SLA instances running now, by SLA metric (first_response, next_response, "
        "resolution): started, neither fulfilled nor cancelled, breach not claimed (a "
        "resolution clock paused on a pause status still runs as an instance)." + _NOW,
        "",
    ),
    MetricSpec(
        "deskpulse_sla_at_risk",
        "gauge",
        ("metric",),
        "SLA instances at risk now, by SLA metric: the running instances whose elapsed time "
        "reached the first warn_at fraction of their target (their first sla.at_risk was "
        "claimed) and whose breach is not claimed yet; 0 under policies without warnings." + _NOW,
        "",
    ),
)

# -- backlog and chats waiting now ------------------------------------------------------------

_STATE_NOW = (
    " A state at one instant, the newest event time deskpulse has applied, not a window "
    "and not a counter: tickets and chats enter and leave it at their own events' "
    "occurred_at, so a late event corrects it. Every worker reads the same state from "
    "Redis: aggregate over workers with max, not sum."
)

STATE_NOW: tuple[MetricSpec, ...] = (
    MetricSpec(
        "deskpulse_backlog_tickets",
        "gauge",
        (*DIMENSIONS, "status"),
        "Tickets open now, by status (new, open, pending, hold): created, neither solved "
        "nor closed, and not dropped DESKPULSE_OPEN_TICKET_MAX_AGE after their creation."
        + _STATE_NOW,
        "",
    ),
    MetricSpec(
        "deskpulse_backlog_oldest_age_seconds",
        "gauge",
        DIMENSIONS,
        "Age of the oldest ticket of deskpulse_backlog_tickets: the newest event time minus "
        "its creation; omitted while no ticket is open." + _STATE_NOW,
        "seconds",
    ),
    MetricSpec(
        "deskpulse_chats_waiting",
        "gauge",
        DIMENSIONS,
        "Chats waiting now: requested, with no accept, abandon or end yet, and requested "
        "less than DESKPULSE_CHAT_STALE_AFTER before (an older request counts as lost, not "
        "waiting)." + _STATE_NOW,
        "",
    ),
    MetricSpec(
        "deskpulse_chat_longest_wait_seconds",
        "gauge",
        DIMENSIONS,
        "Wait of the longest-waiting chat of deskpulse_chats_waiting: the newest event time "
        "minus its request; omitted while no chat is waiting." + _STATE_NOW,
        "seconds",
    ),
)

# -- freshness and pipeline health ----------------------------------------------------------

HEALTH: tuple[MetricSpec, ...] = (
    MetricSpec(
        "deskpulse_kpi_refresh_timestamp_seconds",
        "gauge",
        (),
        "Unix time at which the in-memory KPI snapshot behind /metrics was last refreshed "
        "from Redis.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_kpi_refresh_duration_seconds",
        "gauge",
        (),
        "How long the last refresh of the KPI snapshot behind /metrics took, as the worker "
        "waited for it: the Redis reads, the sums, the families and their text.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_kpi_refresh_interval_seconds",
        "gauge",
        (),
        "DESKPULSE_METRICS_REFRESH_INTERVAL: how often the worker refreshes the KPI snapshot "
        "behind /metrics. The staleness alert scales its threshold with it.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_breach_check_timestamp_seconds",
        "gauge",
        (),
        "Unix time at which this worker last completed an SLA breach check of its "
        "partitions (every DESKPULSE_BREACH_CHECK_INTERVAL while it is ready and the broker "
        "answers); its start until the first completes. An old value means breaches go "
        "unannounced.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_breach_check_duration_seconds",
        "gauge",
        (),
        "How long this worker's last completed SLA breach check took: reading how far each "
        "partition was read, claiming what is due and publishing the alerts (0 until the "
        "first).",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_breach_check_interval_seconds",
        "gauge",
        (),
        "DESKPULSE_BREACH_CHECK_INTERVAL: how often the worker checks its partitions for SLA "
        "breaches. The stalled-check alert scales its threshold with it.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_snapshot_publish_timestamp_seconds",
        "gauge",
        (),
        "Unix time at which this worker last completed a pass of its outputs: the KPI "
        "snapshots sent to the KPI topic and the alert rules evaluated, their transitions "
        "sent to the alerts topic (the group leader's work, every DESKPULSE_SNAPSHOT_INTERVAL); "
        "its start until the first. Take the max over a job's workers: only the leader "
        "publishes.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_snapshot_interval_seconds",
        "gauge",
        (),
        "DESKPULSE_SNAPSHOT_INTERVAL: how often the group leader publishes KPI snapshots and "
        "evaluates the alert rules. The stalled-snapshot alert scales its threshold with it.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_events_processed_total",
        "counter",
        ("topic", "type"),
        "Input events decoded and applied, by source topic and event type.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_rejected_total",
        "counter",
        ("topic", "reason"),
        "Input records rejected and sent to the dead-letter topic, by source topic and "
        "machine-readable reason.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_rerouted_total",
        "counter",
        ("topic",),
        "Input records read from a partition other than the one their conversation id maps "
        "to (Kafka's murmur2 rule) and forwarded through the repartition topic to it, by "
        "source topic.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_duplicate_total",
        "counter",
        ("topic",),
        "Input events skipped as already applied (repeated event_id or redelivered offset).",
        "",
    ),
    MetricSpec(
        "deskpulse_events_late_total",
        "counter",
        ("topic",),
        "Input events older than the retention behind the newest event time, not applied.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_ignored_total",
        "counter",
        ("reason",),
        "Input events applied but ignored, by reason: closed = a ticket status change after "
        "the ticket's close (in event-time order), which changes nothing.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_orphaned_total",
        "counter",
        (),
        "Held events whose conversation never opened within the retention; expired.",
        "",
    ),
    MetricSpec(
        "deskpulse_tickets_expired_total",
        "counter",
        (),
        "Open tickets (neither solved nor closed) dropped DESKPULSE_OPEN_TICKET_MAX_AGE after "
        "their creation, and at least DESKPULSE_RETENTION after their last event: they leave "
        "the backlog then.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_held",
        "gauge",
        (),
        "Events waiting for the opening event of their conversation.",
        "",
    ),
    MetricSpec(
        "deskpulse_consumer_lag_messages",
        "gauge",
        ("topic", "partition"),
        "Messages between the consumer's position and the partition's high watermark; "
        "absent while the broker does not answer (unknown then).",
        "messages",
    ),
    MetricSpec(
        "deskpulse_partition_stalls_total",
        "counter",
        ("topic", "partition"),
        "Input partitions found stuck (lag, no progress, nothing in flight for "
        "DESKPULSE_STALL_TIMEOUT) and sought back to their committed offset.",
        "",
    ),
    MetricSpec(
        "deskpulse_offset_holes_total",
        "counter",
        ("topic", "outcome"),
        "Offsets a batch lacked between the offset fence and its newest record, read back "
        "from the log: filled (records the consumer skipped, applied), empty (no data "
        "record there), expired (deleted from the log before they were applied: lost).",
        "",
    ),
    MetricSpec(
        "deskpulse_last_event_timestamp_seconds",
        "gauge",
        ("topic",),
        "Event time (occurred_at, Unix seconds) of the newest applied event, by topic.",
        "seconds",
    ),
    MetricSpec(
        "deskpulse_flush_duration_seconds",
        "histogram",
        (),
        "Duration of one batch flush: one Redis transaction per partition per batch.",
        "seconds",
        buckets=_FLUSH_BUCKETS_SECONDS,
    ),
    MetricSpec(
        "deskpulse_batch_events",
        "histogram",
        (),
        "Events per processed batch.",
        "events",
        buckets=_BATCH_BUCKETS_EVENTS,
    ),
    MetricSpec(
        "deskpulse_redis_up",
        "gauge",
        (),
        "1 if the last Redis round trip succeeded, else 0.",
        "",
    ),
    MetricSpec(
        "deskpulse_broker_up",
        "gauge",
        (),
        "1 if the Kafka broker answered the worker's last probe (a metadata request every "
        "5 s, 4 s to answer), else 0.",
        "",
    ),
    MetricSpec(
        "deskpulse_deadletter_up",
        "gauge",
        (),
        "1 while the dead-letter topic acknowledges what it is sent; 0 while dead letters "
        "fail or have waited over 10 s for the broker (their batch is held meanwhile).",
        "",
    ),
    MetricSpec(
        "deskpulse_state_ok",
        "gauge",
        (),
        "1 while the Redis state matches the input topics and the consumer group; 0 once "
        "the worker stopped applying because Redis lost state it had acknowledged "
        "(restarted without persistence, flushed) or the topics are not the ones the state "
        "was built from (recreated). /readyz says which, and the fix.",
        "",
    ),
    MetricSpec(
        "deskpulse_events_skipped_total",
        "counter",
        ("topic", "reason"),
        "Input records not applied because the offset fence shows them applied before "
        "(reason already_applied: redelivered after a crash or rebalance), per process.",
        "",
    ),
    MetricSpec(
        "deskpulse_alert_firing",
        "gauge",
        ("rule", "window", *DIMENSIONS),
        "1 while a threshold rule of DESKPULSE_ALERT_RULES fires for the group, else 0.",
        "",
    ),
    MetricSpec(
        "deskpulse_series_folded",
        "gauge",
        ("metric",),
        "Series of the metric family that the cardinality guard folds into the "
        'channel/queue/priority="other" group in the current snapshot, because the family '
        "would exceed DESKPULSE_MAX_SERIES_PER_METRIC series, or its kind its share of "
        "DESKPULSE_MAX_SERIES (0: every group is shown).",
        "",
    ),
    MetricSpec(
        "deskpulse_series_dropped_total",
        "counter",
        ("metric",),
        "deskpulse_series_folded added up at every snapshot refresh since the process "
        "started: it grows while the guard folds series of the family and stands still "
        "otherwise, so increase() > 0 means groups were left out of /metrics.",
        "",
    ),
    MetricSpec(
        "deskpulse_build_info",
        "gauge",
        ("version",),
        "Always 1; the version label names the running deskpulse release.",
        "",
    ),
    MetricSpec(
        "deskpulse_kpi_reads_total",
        "counter",
        ("result",),
        "GET /kpis requests by what became of them: computed, shared (an identical read "
        "was computing), cached, invalid (400), rejected (503, too many reads waiting), "
        "unavailable (503, e.g. Redis unreachable), failed (500).",
        "",
    ),
)

# -- per agent, with DESKPULSE_AGENT_METRICS=true ---------------------------------------------

_BY_AGENT = (
    " Exported only with DESKPULSE_AGENT_METRICS=true (an agent id in a label is the "
    "operator's choice), under DESKPULSE_MAX_SERIES: past it, the least active agents are "
    "left out (counted in deskpulse_series_folded)."
)


def _per_agent(name: str, what: str, unit: str = "") -> MetricSpec:
    return MetricSpec(
        name=name,
        kind="gauge",
        labels=("window", "agent"),
        help=f"{what}. {_EVENT_TIME}{_NO_SAMPLES}{_BY_AGENT}",
        unit=unit,
    )


AGENTS: tuple[MetricSpec, ...] = (
    _per_agent(
        "deskpulse_agent_first_responses",
        "First responses in the window by the agent named on the reply",
    ),
    _per_agent(
        "deskpulse_agent_first_response_mean_seconds",
        "Mean first response time of the agent's first responses in the window",
        "seconds",
    ),
    _per_agent(
        "deskpulse_agent_next_responses",
        "Next responses in the window by the agent named on the reply",
    ),
    _per_agent(
        "deskpulse_agent_next_response_mean_seconds",
        "Mean next response time of the agent's next responses in the window",
        "seconds",
    ),
    _per_agent("deskpulse_agent_chats_answered", "Chats accepted by the agent in the window"),
    _per_agent(
        "deskpulse_agent_chat_handle_mean_seconds",
        "Mean handle time (accept to end) of the agent's chats ended in the window",
        "seconds",
    ),
    _per_agent(
        "deskpulse_agent_csat_ratio",
        "Satisfied CSAT responses over all CSAT responses of the agent in the window (the "
        "survey's agent, else the last agent who replied publicly before it)",
        "ratio",
    ),
    _per_agent(
        "deskpulse_agent_tickets_solved",
        "Tickets solved for good in the window whose last public reply before the solve was "
        "the agent's",
    ),
    _per_agent(
        "deskpulse_agent_occupancy_ratio",
        "Time the agent was busy over the time it was available or busy, in the window",
        "ratio",
    ),
    MetricSpec(
        "deskpulse_agent_status",
        "gauge",
        ("agent", "status"),
        "1 for the agent's presence status (available, busy, away, offline) at the end of "
        "the windows (the bucket boundary after the newest event); an agent with no status "
        "then has no series." + _BY_AGENT,
        "",
    ),
)

CATALOG: dict[str, MetricSpec] = build_catalog(
    (*WINDOWED, *CUMULATIVE, *INSTANCES_NOW, *STATE_NOW, *HEALTH, *AGENTS)
)

# -- webhook ingestion: on the ingest port's own /metrics -------------------------------------

#: The ``outcome`` label values of ``deskpulse_ingest_records_total``.
INGEST_OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "ignored")

#: Upper bounds of ``deskpulse_ingest_request_duration_seconds``: a request is answered
#: once the broker acknowledged its records, so milliseconds up to the ack timeout.
INGEST_DURATION_BUCKETS: tuple[float, ...] = (*_FLUSH_BUCKETS_SECONDS[2:], 10.0, 30.0)

INGEST: tuple[MetricSpec, ...] = (
    MetricSpec(
        "deskpulse_ingest_requests_total",
        "counter",
        ("source", "code"),
        "Requests to /ingest/<source> (events, zendesk, intercom) answered, by HTTP status "
        "code: 200 taken, 422 some or all dead-lettered, 401 a bad token or signature, 413 "
        "too large, 429 over DESKPULSE_INGEST_RATE, 503 the broker did not acknowledge, 404 "
        "the source is off.",
        "",
    ),
    MetricSpec(
        "deskpulse_ingest_records_total",
        "counter",
        ("source", "outcome"),
        "What answered requests to /ingest/<source> carried: accepted = events produced to "
        "an input topic, rejected = events or webhook bodies sent to the dead-letter topic, "
        "ignored = webhooks that carry nothing deskpulse reads (answered 200).",
        "",
    ),
    MetricSpec(
        "deskpulse_ingest_request_duration_seconds",
        "histogram",
        ("source",),
        "Time from a request to /ingest/<source> read to its answer, the broker's "
        "acknowledgement of its records included.",
        "seconds",
        buckets=INGEST_DURATION_BUCKETS,
    ),
)

#: The ingest server's families (``deskpulse ingest``, or the worker's ingest port).
INGEST_CATALOG: dict[str, MetricSpec] = build_catalog(INGEST)

# Families that OpenMetrics would name alike: a windowed gauge and the counter of the same
# stem (the counter's family is its name without ``_total``).
OPENMETRICS_FAMILY_CLASHES: frozenset[str] = frozenset(
    spec.name
    for spec in CATALOG.values()
    if spec.kind == "gauge" and CATALOG.get(f"{spec.name}_total", spec).kind == "counter"
)
