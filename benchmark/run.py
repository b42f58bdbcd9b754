"""``python -m benchmark.run`` (``make bench``): every performance budget, measured in one run.

One embedded broker and one redis-server on free ports; the simulated data is produced
once and each contender reads it under its own consumer group and Redis prefix, every
deskpulse worker with the SLA policy set of ``streams.devtools.policies`` (two office
schedules and a 24/7 default, as ``deskpulse demo`` runs):

1. throughput: the bare Faust agent (the ceiling), the live worker, the replay path (and
   the replay's KPI documents compared with the live worker's);
2. freshness: live-stamped traffic at a fixed rate against the running live worker,
   produced -> visible in Redis for timed markers;
3. scrape: ``/metrics`` with 10,000+ series, in process and over HTTP from a worker;
4. kpis: ``query_kpis`` and ``deskpulse kpis --window 24h`` over a day of data;
5. reads: a live worker ingesting at a fixed rate over a day of history while N concurrent
   readers hammer ``GET /kpis?window=24h&by=channel,queue,priority`` (all the same window,
   then each a window of its own): ingestion against unloaded, latencies, statuses;
6. sla: a breach-check pass over 100,000 running SLA instances (50,000 open tickets folded
   into Redis through the store, under the demo policies) at a clock where nothing is due,
   and one claiming what ~1,000 tickets have due (their first-response warnings), then once
   more at the same clock (nothing left); the stored state of a ticket with 5 public
   replies and 4 status changes, in bytes and in Redis memory;
7. backlog: a million open tickets (created over a week, spread over 120 groups) folded
   into Redis through the store: Redis memory per open ticket by key family, and the same
   for open tickets with replies and status changes; then ``query_kpis`` over 200,000 open
   tickets and a simulated day, its backlog checked against a count made from the events;
8. soak: a worker under a steady rate, RSS and Redis memory sampled (and the mean size of a
   ticket's state);
9. ingest: ``deskpulse ingest`` in a process of its own, on a broker of its own, driven by
   signed Zendesk webhooks from a load generator in another process
   (``benchmark.webhooks``: keep-alive connections, each sending as soon as answered):
   requests per second, latency of the 200s, and requests per CPU second of the server;
10. board: a worker over a day of history with N wallboard viewers refreshing as the page
   does (its /kpis windows, the tickets at risk, the sparklines' series now and then): the
    worker's CPU (its process and its read process) per viewer refresh, against the same
    span without viewers; then ``GET /kpis/series`` of 24 x 1 h, p50 and p99;
11. cluster: the throughput data set through live workers on a Redis Cluster of its own
    (3 masters, 3 replicas, started here): one worker on the single redis-server for
    reference, one on the cluster, one with ``DESKPULSE_REDIS_MIN_REPLICAS=1`` (the cost
    of ``WAIT``), and two in one consumer group; events/s and the cores of the workers,
    of the masters and of the replicas (with ``BENCH_BASE_CODE``, one worker of the code
    there on the same cluster too);
14. presence: the replay of the throughput data set (spread traffic, no agent events) by
    this tree's code against the code in ``BENCH_BASE_CODE`` (a directory holding another
    ``deskpulse`` package), alternating trial by trial: what the agents' presence costs
    traffic without it;
15. agents: a simulated day of 21 queues with the agents' shifts and presence (504 agents,
    every one on shift and answering over the day) replayed into Redis, then ``GET
    /kpis?window=24h&by=agent`` from a worker over it: each read a window ending at
    another minute (computed, nothing of that end kept), then the same window again
    (everything kept), p50 and p99; and the CPU of the same reads in a process of their
    own;

and a profile of the hot path for every budget missed. Writes BENCHMARKS.md.

Knobs (environment): BENCH_RECORDS (300000), BENCH_TRIALS (5), BENCH_FRESHNESS_SECONDS
(30), BENCH_FRESHNESS_TRIALS (3), BENCH_FRESHNESS_RATE (5000), BENCH_MARKER_RATE (20),
BENCH_SCRAPES (50), BENCH_KPI_CALLS (30), BENCH_DAY_RATE (5), BENCH_SOAK_SECONDS (1800),
BENCH_SOAK_RATE (1000), BENCH_SOAK_SAMPLE_SECONDS (30), BENCH_SOAK_RETENTION (10m),
BENCH_SOAK_RESPONSE_SCALE (0.001), BENCH_SOAK_LIFECYCLE_SCALE (0.005), BENCH_READS_RATE
(2000), BENCH_READS_SECONDS (15, per phase), BENCH_READS_LEVELS (20,100,200),
BENCH_SLA_TICKETS (50000), BENCH_SLA_PASSES (20), BENCH_SLA_DUE (1000),
BENCH_SLA_STATE_TICKETS (10000), BENCH_BACKLOG_TICKETS (1000000), BENCH_BACKLOG_WORKED
(100000), BENCH_BACKLOG_READ_TICKETS (200000), BENCH_BACKLOG_DAY_RATE (5),
BENCH_BACKLOG_READS (30), BENCH_INGEST_SECONDS (15), BENCH_INGEST_CONNECTIONS (50),
BENCH_INGEST_RATE (2000), BENCH_BOARD_VIEWERS (10), BENCH_BOARD_SECONDS (300),
BENCH_BOARD_IDLE_SECONDS (60), BENCH_BOARD_SERIES_READS (24), BENCH_GROUPS_HISTORY
(120000), BENCH_GROUPS_RATE (200), BENCH_GROUPS_SECONDS (90), BENCH_LONG_REPLIES (100000),
BENCH_LONG_RATE (1000), BENCH_LONG_TRIALS (2), BENCH_LONG_TIMELINE_REPLIES (20000),
BENCH_LONG_TIMELINE_BATCH (1000), BENCH_CLUSTER_TRIALS (2), BENCH_AGENTS_RATE (5),
BENCH_AGENTS_READS (30), BENCH_SECTIONS
(throughput,freshness,scrape,kpis,reads,sla,backlog,soak,ingest,board,groups,longconv,cluster,
presence,agents;
section names given as arguments, ``python -m benchmark.run reads``, take its place),
BENCH_PROFILE (auto | always | never), BENCH_WORKDIR (a new temporary directory),
BENCH_OUTPUT (BENCHMARKS.md in the repo).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import generate_latest
from pydantic import SecretStr
from redis.asyncio import Redis

from benchmark import backlog_state, long_conversation, profiles, sla_state
from benchmark.machine import CpuWatch, child_pids, facts, rss_kib, tree_cpu_s
from benchmark.report import write_report
from benchmark.stack import (
    HOST,
    REPO_ROOT,
    Processes,
    applied_total,
    child_env,
    make_settings,
    meta_totals,
    wait_applied,
    web_port,
)
from benchmark.traffic import marker_id
from deskpulse.exporters.board import board_config
from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.exporters.prometheus import KpiCollector
from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import DIMENSIONS, parse_time
from deskpulse.models.settings import Settings, parse_duration
from deskpulse.models.wire import decode_record
from deskpulse.streams.breaches import check_partitions
from deskpulse.streams.core import SEP, Conversation, CoreConfig, live_key
from deskpulse.streams.devtools import policies
from deskpulse.streams.devtools.embedded import (
    ManagedProcess,
    free_port,
    start_broker,
    start_redis,
    start_redis_cluster,
)
from deskpulse.streams.devtools.simulate import Record, SimConfig, generate
from deskpulse.streams.query import format_time, query_kpis, read_live, retained_since
from deskpulse.streams.redis_client import connect
from deskpulse.streams.store import Store, text
from deskpulse.streams.tools import produce_records
from deskpulse.streams.topics import ensure_topics

# the budgets of README.md, "Reliability" (the sizing table)
BUDGET_LIVE_RATIO = 0.90
BUDGET_REPLAY_PER_S = 100_000
BUDGET_FRESHNESS_P99_S = 1.0
BUDGET_SCRAPE_S = 0.100
BUDGET_SCRAPE_SERIES = 10_000
BUDGET_KPIS_S = 0.200
#: ingestion under 100 concurrent readers, against ingestion with none
BUDGET_READS_RATIO = 0.5
BUDGET_READS_READERS = 100
#: one breach-check pass over this many running SLA instances, nothing due, in less than
BUDGET_BREACH_CHECK_S = 0.100
BUDGET_BREACH_CHECK_INSTANCES = 100_000
#: the mean stored state of a ticket in the soak, at most (bytes)
BUDGET_TICKET_STATE_BYTES = 600
#: a KPI document by channel, queue and priority over this many open tickets, in less
#: than BUDGET_KPIS_S (p99)
BUDGET_BACKLOG_TICKETS = 200_000
#: the worker's CPU (its process and its read process) per board refresh of one viewer, at
#: BUDGET_BOARD_VIEWERS viewers
BUDGET_BOARD_CPU_S = 0.005
BUDGET_BOARD_VIEWERS = 10
#: GET /kpis/series of 24 points of 1 h (p50)
BUDGET_SERIES_S = 0.050
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
#: events decoded and routed at a time when a million are folded (see sla_state.apply_decoded)
_FOLD_WINDOW = 200_000
#: stored states read back to weigh one
_STATE_SAMPLE = 10_000
#: timed reads of the live state alone, per instant (a read of the past takes seconds)
_LIVE_READS = 10
#: the key families that hold one entry per ticket (the others grow with groups and time)
_PER_TICKET_FAMILIES = ("conv", "convexp", "due", "held", "lo")
SOAK_FLAT_GROWTH = 0.05  # "flat": the steady phase grows RSS by at most this share
#: webhook requests answered 200 per CPU second of the ingest server, at least, with the
#: 200s' p99 latency under BUDGET_INGEST_P99_S
BUDGET_INGEST_PER_CORE = 2000
BUDGET_INGEST_P99_S = 0.050
#: thousands of groups: 300 queues x 5 channels x 4 priorities (the simulator's)
GROUPS_QUEUES = 300
GROUPS_CHANNELS = ("email", "web", "phone", "social", "chat")
#: with them, at BENCH_GROUPS_RATE: produced -> applied p99, GET /kpis by every dimension
#: over 24 h p99, a refresh of the KPI snapshot, the engine process's RSS
BUDGET_GROUPS_FRESHNESS_P99_S = 1.0
BUDGET_GROUPS_KPIS_P99_S = 0.300
BUDGET_GROUPS_REFRESH_S = 1.0
BUDGET_GROUPS_RSS_MIB = 250
#: the KPIs by agent: a day of this many queues of the simulator's 24 agents each (504:
#: at least 500 agents on shift over the day), ``GET /kpis?window=24h&by=agent`` p99
AGENTS_QUEUES = 21
BUDGET_AGENTS = 500
BUDGET_AGENTS_KPIS_S = 0.200
#: the signing secret of the benchmark's Zendesk webhooks
_INGEST_SECRET = "bench-zendesk-signing-secret"

SECTIONS = (
    "throughput",
    "freshness",
    "scrape",
    "kpis",
    "reads",
    "sla",
    "backlog",
    "soak",
    "ingest",
    "board",
    "groups",
    "longconv",
    "cluster",
    "presence",
    "agents",
)
#: the worker's engine process (DESKPULSE_ENGINE_PROCESS), where the code has it
OFFLOAD = "engine_process" in Settings.model_fields


def engine_modes(settings: Settings) -> tuple[bool, bool]:
    """Whether the default worker runs the engine process, and the other mode to compare."""
    used = bool(getattr(settings, "uses_engine_process", getattr(settings, "engine_process", 0)))
    return used, not used


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Config:
    records: int = field(default_factory=lambda: _env_int("BENCH_RECORDS", 300_000))
    trials: int = field(default_factory=lambda: max(1, _env_int("BENCH_TRIALS", 5)))
    freshness_s: float = field(default_factory=lambda: _env_float("BENCH_FRESHNESS_SECONDS", 30))
    freshness_trials: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_FRESHNESS_TRIALS", 3))
    )
    freshness_rate: float = field(default_factory=lambda: _env_float("BENCH_FRESHNESS_RATE", 5000))
    marker_rate: float = field(default_factory=lambda: _env_float("BENCH_MARKER_RATE", 20))
    scrapes: int = field(default_factory=lambda: _env_int("BENCH_SCRAPES", 50))
    kpi_calls: int = field(default_factory=lambda: _env_int("BENCH_KPI_CALLS", 30))
    day_rate: float = field(default_factory=lambda: _env_float("BENCH_DAY_RATE", 5))
    soak_s: float = field(default_factory=lambda: _env_float("BENCH_SOAK_SECONDS", 1800))
    soak_rate: float = field(default_factory=lambda: _env_float("BENCH_SOAK_RATE", 1000))
    soak_sample_s: float = field(
        default_factory=lambda: _env_float("BENCH_SOAK_SAMPLE_SECONDS", 30)
    )
    soak_retention: str = field(
        default_factory=lambda: os.environ.get("BENCH_SOAK_RETENTION", "10m")
    )
    #: conversation lifecycles squeezed (SimConfig.response_scale and lifecycle_scale) so
    #: that nearly all of them end, and expire, within the soak and the state can be seen
    #: to level off: a ticket's days from creation to close take minutes
    soak_response_scale: float = field(
        default_factory=lambda: _env_float("BENCH_SOAK_RESPONSE_SCALE", 0.001)
    )
    soak_lifecycle_scale: float = field(
        default_factory=lambda: _env_float("BENCH_SOAK_LIFECYCLE_SCALE", 0.005)
    )
    reads_rate: float = field(default_factory=lambda: _env_float("BENCH_READS_RATE", 2000))
    reads_s: float = field(default_factory=lambda: _env_float("BENCH_READS_SECONDS", 15))
    reads_levels: tuple[int, ...] = field(
        default_factory=lambda: tuple(
            int(n) for n in os.environ.get("BENCH_READS_LEVELS", "20,100,200").split(",") if n
        )
    )
    #: open tickets in the breach-check state (each a first response and a resolution running)
    sla_tickets: int = field(default_factory=lambda: _env_int("BENCH_SLA_TICKETS", 50_000))
    sla_passes: int = field(default_factory=lambda: max(1, _env_int("BENCH_SLA_PASSES", 20)))
    #: tickets whose first alert the claiming pass finds due (ties at its clock come on top)
    sla_due: int = field(default_factory=lambda: max(1, _env_int("BENCH_SLA_DUE", 1000)))
    sla_state_tickets: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_SLA_STATE_TICKETS", 10_000))
    )
    #: open tickets just created, for the memory per open ticket (a million is measured,
    #: not extrapolated, when the knob says so)
    backlog_tickets: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_BACKLOG_TICKETS", 1_000_000))
    )
    #: open tickets with 5 public replies and 3 status changes, for the same
    backlog_worked: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_BACKLOG_WORKED", 100_000))
    )
    #: open tickets under the timed reads, with a simulated day of BENCH_BACKLOG_DAY_RATE
    #: events/s on top (0: none)
    backlog_read_tickets: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_BACKLOG_READ_TICKETS", 200_000))
    )
    backlog_day_rate: float = field(default_factory=lambda: _env_float("BENCH_BACKLOG_DAY_RATE", 5))
    backlog_reads: int = field(default_factory=lambda: max(1, _env_int("BENCH_BACKLOG_READS", 30)))
    ingest_s: float = field(default_factory=lambda: _env_float("BENCH_INGEST_SECONDS", 15))
    ingest_connections: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_INGEST_CONNECTIONS", 50))
    )
    #: requests/s of the paced run, whose latency the budget reads
    ingest_rate: float = field(default_factory=lambda: _env_float("BENCH_INGEST_RATE", 2000))
    board_viewers: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_BOARD_VIEWERS", BUDGET_BOARD_VIEWERS))
    )
    #: the viewers' phase: the longest max-age a board read accepts (the series'), so that
    #: every read is computed as often as in a board's steady state
    board_s: float = field(default_factory=lambda: _env_float("BENCH_BOARD_SECONDS", 300))
    board_idle_s: float = field(default_factory=lambda: _env_float("BENCH_BOARD_IDLE_SECONDS", 60))
    #: distinct series read (each ending an hour earlier than the one before), per kind
    board_series_reads: int = field(
        default_factory=lambda: max(2, min(24, _env_int("BENCH_BOARD_SERIES_READS", 24)))
    )
    #: events of the day of history over the groups, then the live rate and its length
    groups_history: int = field(default_factory=lambda: _env_int("BENCH_GROUPS_HISTORY", 120_000))
    groups_rate: float = field(default_factory=lambda: _env_float("BENCH_GROUPS_RATE", 200))
    groups_s: float = field(default_factory=lambda: _env_float("BENCH_GROUPS_SECONDS", 90))
    #: the long conversation section: the ticket's replies, their rate (and the spread
    #: traffic's) per second, and the live trials of each kind
    long_replies: int = field(default_factory=lambda: _env_int("BENCH_LONG_REPLIES", 100_000))
    long_rate: float = field(default_factory=lambda: _env_float("BENCH_LONG_RATE", 1000))
    long_trials: int = field(default_factory=lambda: max(1, _env_int("BENCH_LONG_TRIALS", 2)))
    #: and a ticket's timeline: its public replies (customer and agent in turn, a status
    #: change after every 50), folded in batches of ``BENCH_LONG_TIMELINE_BATCH``
    long_timeline_replies: int = field(
        default_factory=lambda: _env_int("BENCH_LONG_TIMELINE_REPLIES", 20_000)
    )
    long_timeline_batch: int = field(
        default_factory=lambda: max(1, _env_int("BENCH_LONG_TIMELINE_BATCH", 1000))
    )
    cluster_trials: int = field(default_factory=lambda: max(1, _env_int("BENCH_CLUSTER_TRIALS", 2)))
    #: the KPIs by agent: events/s of the simulated day, and timed reads of each kind
    agents_rate: float = field(default_factory=lambda: _env_float("BENCH_AGENTS_RATE", 5))
    agents_reads: int = field(default_factory=lambda: max(2, _env_int("BENCH_AGENTS_READS", 30)))
    sections: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            s.strip()
            for s in os.environ.get("BENCH_SECTIONS", ",".join(SECTIONS)).split(",")
            if s.strip()
        )
    )
    profile: str = field(default_factory=lambda: os.environ.get("BENCH_PROFILE", "auto"))
    output: Path = field(
        default_factory=lambda: Path(os.environ.get("BENCH_OUTPUT", REPO_ROOT / "BENCHMARKS.md"))
    )

    def wants_profile(self, missed: bool) -> bool:
        return self.profile == "always" or (self.profile == "auto" and missed)

    def knobs(self) -> dict[str, str]:
        return {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")}


def pool_traffic(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Trials of one contender as one result: latencies pooled (the p99 of every marker of
    every trial), rates and CPU averaged; the median trial's shape (tenths, commits)."""
    if not runs:
        return {}
    typical = sorted(runs, key=lambda r: (r.get("latency") or {}).get("p99", float("inf")))[
        (len(runs) - 1) // 2
    ]
    out = dict(typical)
    latencies = [x for r in runs for x in r.get("latencies", [])]
    acks = [x for r in runs for x in r.get("acks", [])]
    scrapes = [x for r in runs for x in r.get("scrapes", [])]
    out["latency"] = spread(latencies) if latencies else None
    out["ack"] = spread(acks) if acks else None
    if scrapes:
        out["scrape_under_load"] = spread(scrapes)
    out["markers"] = sum(r["markers"] for r in runs)
    out["markers_missing"] = sum(r["markers_missing"] for r in runs)
    out["trials"] = len(runs)
    out["trial_p99"] = [(r.get("latency") or {}).get("p99") for r in runs]
    for key in ("achieved_rate", "worker_cores", "broker_cores", "producer_cores", "poller_cores"):
        out[key] = sum(r.get(key) or 0.0 for r in runs) / len(runs)
    out["producer_behind_max_s"] = max(r.get("producer_behind_max_s") or 0.0 for r in runs)
    for key in ("latencies", "acks", "scrapes"):
        out.pop(key, None)
    return out


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda r: r["per_second"])
    return ordered[(len(ordered) - 1) // 2]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1])."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
    }


class Bench:
    """One run: the stack, the data sets, the sections and their results."""

    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.procs = Processes(workdir)
        self.results: dict[str, Any] = {"config": config.knobs(), "sections": {}, "cpu": []}
        self.broker: ManagedProcess | None = None
        self.redis_proc: ManagedProcess | None = None
        self.bootstrap = ""
        self.redis_url = ""
        self.redis: Redis | None = None
        self.live: ManagedProcess | None = None
        self.live_settings: Settings | None = None
        self.datasets: dict[str, dict[str, Any]] = {}

    # -- the stack -----------------------------------------------------------------------

    def start_stack(self) -> None:
        port = free_port(HOST)
        self.broker = self.procs.adopt(start_broker(HOST, port, self.workdir / "broker"))
        self.bootstrap = f"{HOST}:{port}"
        rport = free_port(HOST)
        self.redis_proc = self.procs.adopt(start_redis(HOST, rport, self.workdir / "redis"))
        self.redis_url = f"redis://{HOST}:{rport}/0"

    @contextlib.contextmanager
    def own_broker(self, name: str) -> Any:
        """A fresh broker for a latency measurement: the embedded broker (memory storage)
        answers fetches more slowly the more it holds, so a run on the broker that holds
        the data sets and every earlier run would measure the broker's history."""
        shared, bootstrap = self.broker, self.bootstrap
        port = free_port(HOST)
        broker = self.procs.adopt(start_broker(HOST, port, self.workdir / f"broker-{name}"))
        self.broker, self.bootstrap = broker, f"{HOST}:{port}"
        try:
            yield broker
        finally:
            self.broker, self.bootstrap = shared, bootstrap
            self.procs.stop(broker)

    def settings(self, name: str, topics: str, **values: Any) -> Settings:
        """A contender: its own consumer group and Redis prefix on the ``topics`` data set,
        with the SLA policy set of two office schedules the demo runs with."""
        values = policies.settings_values() | values
        return make_settings(
            kafka_bootstrap=self.bootstrap,
            redis_url=self.redis_url,
            redis_prefix=f"bench-{name}",
            app_id=f"bench-{name}",
            topic_tickets=f"bench.{topics}.tickets",
            topic_chats=f"bench.{topics}.chats",
            topic_surveys=f"bench.{topics}.surveys",
            topic_agents=f"bench.{topics}.agents",
            topic_deadletter=f"bench.{topics}.deadletter",
            topic_kpis=f"bench.{topics}.kpis",
            topic_alerts=f"bench.{topics}.alerts",
            web_port=web_port(),
            kafka_session_timeout=4,
            **values,
        )

    def cpu_of(self, *procs: ManagedProcess | None) -> list[float]:
        return [tree_cpu_s(p.pid) if p is not None else 0.0 for p in procs]

    async def produce_dataset(self, name: str, sim: SimConfig) -> dict[str, Any]:
        started = time.perf_counter()
        records = list(generate(sim))
        return await self.produce_records(name, records, time.perf_counter() - started, sim)

    async def produce_records(
        self, name: str, records: list[Record], generated_s: float, sim: SimConfig
    ) -> dict[str, Any]:
        """Produce ``records`` (simulated from ``sim``, with more beside) as data set ``name``."""
        settings = self.settings(f"{name}-producer", name)
        await ensure_topics(settings)
        first = min(r.occurred_at_s for r in records if r.occurred_at_s is not None)
        last = max(r.occurred_at_s for r in records if r.occurred_at_s is not None)
        rows = [(settings.topic_for(r.topic_kind), r.key, r.value) for r in records]
        del records
        sent, produce_s = await produce_records(settings, rows, label=f"produce {name}")
        info = {
            "records": sent,
            "first_event_s": first,
            "last_event_s": last,
            "generate_s": generated_s,
            "produce_s": produce_s,
            "bytes": sum(len(v) for _, _, v in rows),
            "sim": {"rate": sim.rate, "duration_s": sim.duration_s, "seed": sim.seed},
        }
        self.datasets[name] = info
        return info

    # -- 1. throughput -------------------------------------------------------------------

    async def section_throughput(self) -> dict[str, Any]:
        """Every contender once per trial, the order rotated from trial to trial: the host's
        speed drifts over minutes, and medians of interleaved runs keep that drift out of
        the ratios (one run after another would charge it to whichever ran later)."""
        cfg = self.config
        data = self.datasets["tp"]
        n = data["records"]
        out: dict[str, Any] = {"records": n, "trials": cfg.trials}
        sample = self.settings("bare", "tp")
        out["batch"] = [str(sample.batch_size), str(sample.batch_within)]

        async def bare(t: int) -> dict[str, Any]:
            return await self.run_bare(f"bare-{t}", n)

        async def live(t: int) -> dict[str, Any]:
            run = await self.run_live(f"live-{t}", self.settings(f"live-{t}", "tp"), n, keep=False)
            run["prefix"] = f"bench-live-{t}"
            return run

        used, other = engine_modes(sample)
        out["engine_process"] = str(getattr(sample, "engine_process", False))
        out["engine_process_used"] = used
        out["alt_engine_process"] = other

        async def alt(t: int) -> dict[str, Any]:
            settings = self.settings(f"alt-{t}", "tp", engine_process=other)
            return await self.run_live(f"alt-{t}", settings, n, keep=False)

        async def replay(t: int) -> dict[str, Any]:
            run = await self.run_replay(f"replay-{t}", self.settings(f"replay-{t}", "tp"), n)
            run["prefix"] = f"bench-replay-{t}"
            return run

        async def replay_v1(t: int) -> dict[str, Any]:
            # the same replay without schedules or SLA policies (v1's first-response target
            # alone): on the same host in the same run, what the SLA work costs the replay
            settings = self.settings(f"replay-v1-{t}", "tp", schedules={}, sla_policies=None)
            return await self.run_replay(f"replay-v1-{t}", settings, n)

        contenders: dict[str, Callable[[int], Any]] = {"bare": bare, "live": live}
        if OFFLOAD:
            contenders["live_alt"] = alt
        contenders["replay"] = replay
        contenders["replay_v1"] = replay_v1
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        names = list(contenders)
        for t in range(cfg.trials):
            for name in names[t % len(names) :] + names[: t % len(names)]:
                run = await contenders[name](t)
                run["trial"] = t
                runs[name].append(run)
                print(f"trial {t + 1}, {name}: {run['per_second']:,.0f} events/s", file=sys.stderr)
        out["runs"] = {name: [r["per_second"] for r in rs] for name, rs in runs.items()}
        for name, rs in runs.items():
            out[name] = median_run(rs)
        # each trial's live run against its own bare run (next to it in time): the median
        # of those ratios is the figure, the ratio of the medians is shown beside it
        out["live_ratios"] = [
            lv["per_second"] / bv["per_second"]
            for lv, bv in zip(runs["live"], runs["bare"], strict=True)
        ]
        out["live_ratio"] = percentile(out["live_ratios"], 0.5)
        out["live_ratio_of_medians"] = out["live"]["per_second"] / out["bare"]["per_second"]
        if "live_alt" in out:
            out["live_alt_ratio"] = out["live_alt"]["per_second"] / out["bare"]["per_second"]
        live_settings = self.settings(f"live-{out['live']['trial']}", "tp")
        replay_settings = self.settings(f"replay-{out['replay']['trial']}", "tp")
        out["identical"] = await self.compare(live_settings, replay_settings, data)
        missed_live = out["live_ratio"] < BUDGET_LIVE_RATIO
        missed_replay = out["replay"]["per_second"] < BUDGET_REPLAY_PER_S
        if cfg.wants_profile(missed_live):
            out["profile_live"] = await self.profile_live(n)
        if cfg.wants_profile(missed_replay):
            out["profile_replay"] = await self.profile_replay(n)
        return out

    async def run_bare(self, name: str, n: int, spy: Path | None = None) -> dict[str, Any]:
        settings = self.settings(name, "tp")
        stats_path = self.workdir / f"{name}.json"
        proc = self.procs.start(
            name,
            [sys.executable, "-m", "benchmark.bare_agent"],
            env=child_env(settings, BENCH_BARE_OUT=str(stats_path)),
        )
        sampler = profiles.PySpy(proc.pid, spy) if spy is not None else None
        deadline = time.monotonic() + n / 1000 + 120
        seen: dict[str, Any] = {}
        try:
            while True:
                if stats_path.exists():
                    seen = orjson.loads(stats_path.read_bytes())
                    if seen["count"] >= n:
                        break
                if not proc.running:
                    raise RuntimeError(f"bare agent exited:\n{proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bare agent saw {seen.get('count')} of {n} events")
                await asyncio.sleep(0.1)
        finally:
            profile = sampler.stop() if sampler is not None else None
            self.procs.stop(proc)
        seconds = seen["last_t"] - seen["first_t"]
        events = seen["count"] - seen["first_n"]
        result = {
            "events": events,
            "seconds": seconds,
            "per_second": events / seconds,
            "batches": seen["batches"],
            "cores": (seen["last_cpu"] - seen["first_cpu"]) / seconds,
        }
        if profile is not None:
            result["profile"] = profiles.summarize(profile)
        return result

    async def run_live(
        self, name: str, settings: Settings, n: int, *, keep: bool, spy: Path | None = None
    ) -> dict[str, Any]:
        assert self.redis is not None
        proc = self.procs.worker(name, settings)
        if keep:
            self.live = proc
        sampler = profiles.PySpy(proc.pid, spy) if spy is not None else None
        engine_sampler: profiles.PySpy | None = None
        cpu: dict[str, list[float]] = {}

        def on_first() -> None:
            nonlocal engine_sampler
            cpu["first"] = self.cpu_of(proc, self.redis_proc, self.broker)
            if spy is not None:  # the engine process, started once the worker was ready
                engine_sampler = _engine_spy(proc.pid, spy)

        try:
            marks = await wait_applied(
                self.redis,
                settings.redis_prefix,
                settings.topic_partitions,
                n,
                timeout_s=n / 1000 + 180,
                proc=proc,
                on_first=on_first,
            )
            cpu["done"] = self.cpu_of(proc, self.redis_proc, self.broker)
        finally:
            profile = sampler.stop() if sampler is not None else None
            engine_profile = engine_sampler.stop() if engine_sampler is not None else None
            if not keep:
                self.procs.stop(proc)
        seconds = marks["t_done"] - marks["t_first"]
        events = marks["n_done"] - marks["n_first"]
        used = [(b - a) / seconds for a, b in zip(cpu["first"], cpu["done"], strict=True)]
        result = {
            "events": events,
            "seconds": seconds,
            "per_second": events / seconds,
            "cores": {"worker": used[0], "redis": used[1], "broker": used[2]},
        }
        if profile is not None:
            result["profile"] = profiles.summarize(profile)
        if engine_profile is not None:
            result["profile_engine"] = profiles.summarize(engine_profile)
        return result

    async def run_replay(
        self,
        name: str,
        settings: Settings,
        n: int,
        *,
        spy: Path | None = None,
        code: Path | None = None,
    ) -> dict[str, Any]:
        """``deskpulse replay`` of ``n`` records in a child; ``code``: a directory holding
        another ``deskpulse`` package to run instead of this tree's (a version to compare)."""
        assert self.redis is not None
        argv = [sys.executable, "-m", "benchmark.replay_child"]
        proc = self.procs.start(name, argv, env=child_env(settings, code=code))
        sampler = profiles.PySpy(proc.pid, spy) if spy is not None else None
        redis_before = self.cpu_of(self.redis_proc)[0]
        deadline = time.monotonic() + n / 2000 + 120
        while proc.running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        redis_used = self.cpu_of(self.redis_proc)[0] - redis_before
        profile = sampler.stop() if sampler is not None else None
        if proc.running:
            self.procs.stop(proc)
            raise TimeoutError(f"replay did not finish:\n{proc.log_tail()}")
        self.procs.stop(proc)
        lines = [line for line in proc.log_tail(200).splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"replay failed ({proc.returncode}):\n{proc.log_tail()}")
        stats = orjson.loads(lines[-1])
        # counted like the other contenders, from the first record in hand to the last one
        # committed; the whole call (first fetch and end check included) is kept beside it
        stats["whole_seconds"], stats["whole_per_second"] = stats["seconds"], stats["per_second"]
        stats["seconds"], stats["per_second"] = stats["active_seconds"], stats["active_per_second"]
        totals = await meta_totals(self.redis, settings.redis_prefix, settings.topic_partitions)
        stats["accounted"] = applied_total(totals)
        stats["complete"] = stats["accounted"] >= n
        stats["cores"] = {
            "replay": stats["cpu_seconds"] / stats["wall_seconds"],
            "redis": redis_used / stats["wall_seconds"],
        }
        if profile is not None:
            stats["profile"] = profiles.summarize(profile)
        return stats

    async def compare(self, a: Settings, b: Settings, data: dict[str, Any]) -> dict[str, Any]:
        """The KPI documents of two prefixes, for several windows, ends and groupings."""
        assert self.redis is not None
        stores = [Store(self.redis, s.redis_prefix, CoreConfig.from_settings(s)) for s in (a, b)]
        ends = [data["last_event_s"] + 1, data["last_event_s"] - 1234.5, time.time()]
        groupings: list[list[str]] = [
            [],
            ["channel"],
            ["queue", "priority"],
            ["channel", "queue", "priority"],
        ]
        compared, differ = 0, []
        for width in a.windows:
            for at_s in ends:
                for by in groupings:
                    docs = [await query_kpis(s, width_s=width, at_s=at_s, by=by) for s in stores]
                    compared += 1
                    if docs[0] != docs[1]:
                        differ.append({"width": width, "at": at_s, "by": by})
        totals = [await meta_totals(self.redis, s.redis_prefix, s.topic_partitions) for s in (a, b)]
        # gauges of "now", not functions of the events: ``held`` (equal anyway once both are
        # complete) and the SLA instances at risk, which count the warnings claimed by
        # breach detection on its wall clock; the replay also adopts every warning found on
        # the alerts topic, which all contenders and trials of this section share, so it
        # holds warnings another run claimed later (the documents compared hold neither);
        # and ``lgm:*``, the run of the partitions' commit log (how many commits it kept),
        # which follows the batching, not the events
        compared_totals = [
            {
                k: v
                for k, v in t.items()
                if k != "held" and not k.startswith(("sla_at_risk:", "lgm:"))
            }
            for t in totals
        ]
        return {
            "documents": compared,
            "different": differ[:10],
            "identical": not differ and compared_totals[0] == compared_totals[1],
            "counters": totals,
        }

    async def profile_live(self, n: int) -> dict[str, Any]:
        """The live path again, on a new group and prefix, with py-spy on the worker and
        then on the bare agent (what the ceiling itself spends its time on)."""
        spy_live = self.workdir / "profile-live.txt"
        live = await self.run_live(
            "live-prof", self.settings("live-prof", "tp"), n, keep=False, spy=spy_live
        )
        bare = await self.run_bare("bare-prof", n, spy=self.workdir / "profile-bare.txt")
        return {"live": live, "bare": bare}

    async def profile_replay(self, n: int) -> dict[str, Any]:
        spy = self.workdir / "profile-replay.txt"
        return await self.run_replay("replay-prof", self.settings("replay-prof", "tp"), n, spy=spy)

    # -- 2. freshness --------------------------------------------------------------------

    async def wait_ready(self, proc: ManagedProcess, settings: Settings) -> None:
        url = f"http://{settings.web_host}:{settings.web_port}/readyz"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            status = await asyncio.to_thread(_http_status, url)
            if status == 200:
                return
            await asyncio.sleep(0.25)
        raise TimeoutError(f"{proc.name} not ready:\n{proc.log_tail()}")

    async def section_freshness(self) -> dict[str, Any]:
        """Every contender on empty topics of its own: the embedded broker's fetches get
        slower as a partition grows (memory storage), so all start from the same state."""
        cfg = self.config
        if self.live is not None:  # the throughput worker: not needed any more
            self.procs.stop(self.live)
            self.live = None
        sample = self.settings("fresh-live", "fresh-live")
        used, other = engine_modes(sample)
        modes: dict[str, dict[str, Any]] = {"default": {}}
        if OFFLOAD:  # and the other engine mode, for comparison
            modes["alt"] = {"engine_process": other}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
        names = list(modes)
        for t in range(cfg.freshness_trials):
            # interleaved, the order rotated: the host's speed drifts over minutes
            for name in names[t % len(names) :] + names[: t % len(names)]:
                label = f"fresh-{name}-{t}"
                with self.own_broker(label):
                    settings = self.settings(label, label, **modes[name])
                    proc = self.procs.worker(label, settings)
                    try:
                        await self.warm_up(proc, settings)
                        run = await self.run_traffic(
                            label,
                            proc,
                            settings,
                            rate=cfg.freshness_rate,
                            seconds=cfg.freshness_s,
                            marker_rate=cfg.marker_rate,
                            scrape=True,
                        )
                    finally:
                        self.procs.stop(proc)  # the others must not share the CPU with it
                runs[name].append(run)
                p99 = (run.get("latency") or {}).get("p99", float("nan"))
                print(f"freshness trial {t + 1}, {name}: p99 {p99 * 1000:,.0f} ms", file=sys.stderr)
        out = pool_traffic(runs["default"])
        out["engine_process"] = str(getattr(sample, "engine_process", False))
        out["engine_process_used"] = used
        out["alt_engine_process"] = other
        if "alt" in runs:
            out["alt"] = pool_traffic(runs["alt"])
        missed = not out["latency"] or out["latency"]["p99"] >= BUDGET_FRESHNESS_P99_S
        if cfg.wants_profile(missed):
            settings = self.settings("fresh-prof", "fresh-prof")
            proc = self.procs.worker("fresh-prof", settings)
            try:
                await self.warm_up(proc, settings)
                spy = self.workdir / "profile-freshness.txt"
                profiled = await self.run_traffic(
                    "fresh-prof",
                    proc,
                    settings,
                    rate=cfg.freshness_rate,
                    seconds=min(cfg.freshness_s, 30),
                    marker_rate=cfg.marker_rate,
                    spy=spy,
                )
                out["profile"] = profiled.get("profile")
                out["profile_engine"] = profiled.get("profile_engine")
            finally:
                self.procs.stop(proc)
        with self.own_broker("fresh-bare"):
            out["bare"] = await self.freshness_floor()
        out["broker"] = {}
        for wait_ms in (1500, 100):
            with self.own_broker(f"fresh-consumer-{wait_ms}"):
                out["broker"][wait_ms] = await self.broker_floor(wait_ms)
        return out

    async def warm_up(self, proc: ManagedProcess, settings: Settings) -> None:
        """Wait until a worker on empty topics is ready and has applied one event."""
        assert self.redis is not None
        await ensure_topics(settings)
        await self.wait_ready(proc, settings)
        value = orjson.dumps(
            {
                "event_id": f"{settings.redis_prefix}-warm-up",
                "type": "ticket.created",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "ticket_id": f"{settings.redis_prefix}-warm-up",
            }
        )
        await produce_records(settings, [(settings.topic_tickets, b"warm-up", value)], label="warm")
        await wait_applied(
            self.redis, settings.redis_prefix, settings.topic_partitions, 1, timeout_s=60, proc=proc
        )

    async def freshness_floor(self) -> dict[str, Any]:
        """The same traffic and markers read by the bare Faust agent: what the broker and
        Faust alone cost between produce and the agent holding the event."""
        cfg = self.config
        settings = self.settings("fresh-bare", "fresh-bare")
        partitions = settings.topic_partitions
        await ensure_topics(settings)
        stats_path = self.workdir / "fresh-bare.json"
        proc = self.procs.start(
            "fresh-bare",
            [sys.executable, "-m", "benchmark.bare_agent"],
            env=child_env(settings, BENCH_BARE_OUT=str(stats_path), BENCH_BARE_MARKERS="bfr-m"),
        )
        try:
            # joined once it has seen a warm-up record
            await produce_records(settings, [(settings.topic_tickets, b"w", b"{}")], label="warm")
            deadline = time.monotonic() + 60
            while True:
                seen = orjson.loads(stats_path.read_bytes()) if stats_path.exists() else {}
                if seen.get("count", 0) >= 1:
                    break
                if not proc.running or time.monotonic() > deadline:
                    raise RuntimeError(f"bare agent did not start:\n{proc.log_tail()}")
                await asyncio.sleep(0.1)
            last_read: list[Any] = [0.0, {}]

            async def poll(indices: list[int]) -> dict[int, float]:
                if time.monotonic() - last_read[0] > 0.1:  # its own times are in the file
                    last_read[0] = time.monotonic()
                    with contextlib.suppress(OSError, orjson.JSONDecodeError):
                        last_read[1] = orjson.loads(stats_path.read_bytes()).get("markers", {})
                times = last_read[1]
                return {
                    i: times[k] for i in indices if (k := marker_id("bfr", i, partitions)) in times
                }

            return await self.run_traffic(
                "bfr",
                proc,
                settings,
                rate=cfg.freshness_rate,
                seconds=cfg.freshness_s,
                marker_rate=cfg.marker_rate,
                poll=poll,
            )
        finally:
            self.procs.stop(proc)

    async def broker_floor(self, wait_ms: int) -> dict[str, Any]:
        """Produced -> in a plain aiokafka consumer's hands, with ``fetch_max_wait_ms`` as
        Faust hard-codes it (1500) and short: how long the broker holds a fetch."""
        run_id = f"bk{wait_ms}"
        settings = self.settings(f"fresh-{run_id}", f"fresh-{run_id}")
        partitions = settings.topic_partitions
        await ensure_topics(settings)
        consumer = AIOKafkaConsumer(
            **kafka_client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=wait_ms,
        )
        await consumer.start()
        tps = [
            TopicPartition(topic, p)
            for topic in settings.input_topics
            for p in range(settings.topic_partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # (short of the true end on Tansu: harmless here)
        times: dict[str, float] = {}
        prefix = f"{run_id}-m".encode()

        async def consume() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                now = time.time()
                for messages in batches.values():
                    for message in messages:
                        if message.key and message.key.startswith(prefix):
                            times.setdefault(message.key.decode(), now)

        async def poll(indices: list[int]) -> dict[int, float]:
            return {
                i: times[k] for i in indices if (k := marker_id(run_id, i, partitions)) in times
            }

        task = asyncio.create_task(consume())
        try:
            result = await self.run_traffic(
                run_id,
                None,
                settings,
                rate=self.config.freshness_rate,
                seconds=min(self.config.freshness_s, 15),
                marker_rate=self.config.marker_rate,
                poll=poll,
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await consumer.stop()
        result.pop("worker_cores", None)
        return result

    async def run_traffic(
        self,
        run_id: str,
        worker: ManagedProcess | None,
        settings: Settings,
        *,
        rate: float,
        seconds: float,
        marker_rate: float,
        scrape: bool = False,
        spy: Path | None = None,
        sample: Callable[[float], Any] | None = None,
        sample_every_s: float = 30.0,
        poll: Callable[[list[int]], Any] | None = None,
        response_scale: float = 1.0,
        lifecycle_scale: float = 1.0,
        traffic_argv: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Traffic at ``rate`` for ``seconds`` with markers; produced -> visible in Redis
        (or, with ``poll``, -> whenever ``poll(indices)`` says each marker was seen).
        ``traffic_argv``: more options of ``benchmark.traffic`` (its groups)."""
        assert self.redis is not None
        markers_path = self.workdir / f"{run_id}-markers.jsonl"
        status_path = self.workdir / f"{run_id}-status.json"
        argv = [
            sys.executable,
            "-m",
            "benchmark.traffic",
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--marker-rate",
            str(marker_rate),
            "--run-id",
            run_id,
            "--markers",
            str(markers_path),
            "--status",
            str(status_path),
            "--seed",
            str(zlib.crc32(run_id.encode()) % 10_000),
            "--response-scale",
            str(response_scale),
            "--lifecycle-scale",
            str(lifecycle_scale),
            *traffic_argv,
        ]
        traffic = self.procs.start(f"traffic-{run_id}", argv, env=child_env(settings))
        sampler = profiles.PySpy(worker.pid, spy) if spy and worker else None
        engine_sampler = _engine_spy(worker.pid, spy) if spy and worker else None
        seen: dict[int, float] = {}
        low = 0
        partitions = settings.topic_partitions
        conv = [f"{settings.redis_prefix}:{{p{p}}}:conv" for p in range(partitions)]
        scrapes: list[float] = []
        flush_before = await asyncio.to_thread(_flush_stats, settings) if scrape else None
        worker_pid = worker.pid if worker is not None else os.getpid()
        # taken once the traffic's first status shows it sending (it simulates first)
        cpu_start: tuple[float, ...] | None = None
        next_scrape = time.monotonic() + 2
        next_sweep = time.monotonic() + 1
        next_sample = time.monotonic()
        done_at: float | None = None
        expected = int(seconds * marker_rate) + 2
        while True:
            now = time.monotonic()
            finished = not traffic.running
            if cpu_start is None and (status_path.exists() or finished):
                cpu_start = (time.time(), tree_cpu_s(worker_pid), *self.cpu_of(self.broker))
                bench_cpu_start = time.process_time()
            if finished and done_at is None:
                done_at = now
                cpu_end = (time.time(), tree_cpu_s(worker_pid), *self.cpu_of(self.broker))
                bench_cpu_end = time.process_time()
            # only markers that can have been sent by now: polling costs CPU the worker
            # shares (the traffic's first status comes when it starts sending)
            sent_by_now = (
                0
                if cpu_start is None
                else min(expected, int((time.time() - cpu_start[0] + 1) * marker_rate) + 2)
            )
            window = [i for i in range(low, min(low + 64, sent_by_now)) if i not in seen]
            if now >= next_sweep:  # a marker that never shows must not hide later ones
                window = [i for i in range(low, sent_by_now) if i not in seen]
                next_sweep = now + 1
            if window and poll is not None:
                seen.update(await poll(window))
            elif window:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for i in window:
                        pipe.hexists(conv[i % partitions], "t:" + marker_id(run_id, i, partitions))
                    replies = await pipe.execute()
                t_seen = time.time()
                for i, present in zip(window, replies, strict=True):
                    if present:
                        seen[i] = t_seen
            while low in seen:
                low += 1
            if scrape and now >= next_scrape:
                next_scrape = now + 2
                started = time.perf_counter()
                await asyncio.to_thread(_http_get, _metrics_url(settings))
                scrapes.append(time.perf_counter() - started)
            if sample is not None and now >= next_sample:
                next_sample = now + sample_every_s
                await sample(now)
            if worker is not None and not worker.running:
                raise RuntimeError(f"{worker.name} exited:\n{worker.log_tail()}")
            if done_at is not None:
                sent = _read_markers(markers_path)
                if all(m["i"] in seen for m in sent) or now - done_at > 30:
                    break
            await asyncio.sleep(0.005)
        if sample is not None:
            await sample(time.monotonic())
        profile = sampler.stop() if sampler is not None else None
        self.procs.stop(traffic)
        status = orjson.loads(status_path.read_bytes()) if status_path.exists() else {}
        sent = _read_markers(markers_path)
        latencies = [seen[m["i"]] - m["sent"] for m in sent if m["i"] in seen]
        acks = [m["acked"] - m["sent"] for m in sent if "acked" in m]
        assert cpu_start is not None
        elapsed = cpu_end[0] - cpu_start[0]
        result: dict[str, Any] = {
            "rate": rate,
            "seconds": seconds,
            "sent": status.get("sent"),
            "achieved_rate": (status.get("sent") or 0) / max(status.get("elapsed_s") or 1, 1e-9),
            "producer_behind_max_s": status.get("behind_max_s"),
            "markers": len(sent),
            "markers_missing": len(sent) - len(latencies),
            "latency": spread(latencies) if latencies else None,
            "ack": spread(acks) if acks else None,
            "latencies": latencies,
            "acks": acks,
            "worker_cores": (cpu_end[1] - cpu_start[1]) / max(elapsed, 1e-9),
            "broker_cores": (cpu_end[2] - cpu_start[2]) / max(elapsed, 1e-9),
            "producer_cores": (status.get("cpu_s") or 0.0)
            / max(status.get("elapsed_s") or 1, 1e-9),
            "poller_cores": (bench_cpu_end - bench_cpu_start) / max(elapsed, 1e-9),
        }
        if scrapes:
            result["scrape_under_load"] = spread(scrapes)
            result["scrapes"] = scrapes
        if flush_before is not None:
            after = await asyncio.to_thread(_flush_stats, settings)
            flushes = after["flushes"] - flush_before["flushes"]
            result["flushes"] = {
                "count": flushes,
                "per_second": flushes / max(elapsed, 1e-9),
                "mean_events": (after["events"] - flush_before["events"]) / max(flushes, 1),
                "mean_seconds": (after["seconds"] - flush_before["seconds"]) / max(flushes, 1),
                "busy_share": (after["seconds"] - flush_before["seconds"]) / max(elapsed, 1e-9),
            }
        if latencies:
            ordered = [
                seen[m["i"]] - m["sent"]
                for m in sorted(sent, key=lambda m: m["sent"])
                if m["i"] in seen
            ]
            tenth = max(1, len(ordered) // 10)
            result["latency_first_tenth_p50"] = percentile(ordered[:tenth], 0.5)
            result["latency_last_tenth_p50"] = percentile(ordered[-tenth:], 0.5)
            result["latency_p50_by_tenth"] = [
                percentile(ordered[k * tenth : (k + 1) * tenth], 0.5) for k in range(10)
            ]
        if profile is not None:
            result["profile"] = profiles.summarize(profile)
        engine_profile = engine_sampler.stop() if engine_sampler is not None else None
        if engine_profile is not None:
            result["profile_engine"] = profiles.summarize(engine_profile)
        return result

    # -- 3. scrape -----------------------------------------------------------------------

    async def section_scrape(self) -> dict[str, Any]:
        cfg = self.config
        assert self.redis is not None
        data = self.datasets["scrape"]
        settings = self.settings("scrape", "scrape")
        out: dict[str, Any] = {
            "replay": await self.run_replay("replay-scrape", settings, data["records"])
        }
        from deskpulse.exporters.prometheus import build_registry

        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        registry, _, collector = build_registry(settings, store)
        now_s = data["last_event_s"] + 30
        refresh = []
        for _ in range(5):
            started = time.perf_counter()
            await collector.refresh(now_s)
            refresh.append(time.perf_counter() - started)
        body = generate_latest(registry)
        out["series"] = _series(body)
        out["bytes"] = len(body)
        timings = []
        for _ in range(cfg.scrapes):
            started = time.perf_counter()
            generate_latest(registry)
            timings.append(time.perf_counter() - started)
        out["collect"] = spread(timings)
        out["refresh"] = spread(refresh)
        # a worker serving this state over HTTP; its own input topics are empty, so the
        # scrapes measure the exposition, not consumption competing for the event loop
        wsettings = self.settings("scrape", "idle", metrics_refresh_interval=5)
        worker = self.procs.worker("scrape-worker", wsettings)
        try:
            await self.wait_ready(worker, wsettings)
            url = _metrics_url(wsettings)
            deadline = time.monotonic() + 60
            while _series(await asyncio.to_thread(_http_get, url)) < out["series"] // 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the scrape worker never exported the KPI state")
                await asyncio.sleep(0.5)
            http, http_series = await self.scrape_http(url, cfg.scrapes)
            out["http"] = spread(http)
            out["http_series"] = http_series
            # the budget is the scrape a Prometheus server makes; rendering happens at refresh
            missed = out["http"]["p99"] >= BUDGET_SCRAPE_S or http_series < BUDGET_SCRAPE_SERIES
            if cfg.wants_profile(missed):
                spy = self.workdir / "profile-scrape-worker.txt"
                sampler = profiles.PySpy(worker.pid, spy, rate=250)
                await self.scrape_http(url, cfg.scrapes)
                path = sampler.stop()
                out["profile_worker"] = profiles.summarize(path) if path else None
                out["profile_collect"] = await profiles.pyinstrument_text(
                    _as_async(lambda: generate_latest(registry)), repeat=10, show_all=True
                )
                out["profile_refresh"] = await profiles.pyinstrument_text(
                    lambda: collector.refresh(now_s), repeat=3
                )
        finally:
            self.procs.stop(worker)
        return out

    async def scrape_http(self, url: str, count: int) -> tuple[list[float], int]:
        timings, series = [], 0
        for _ in range(count):
            started = time.perf_counter()
            body = await asyncio.to_thread(_http_get, url)
            timings.append(time.perf_counter() - started)
            series = _series(body)
            await asyncio.sleep(0.25)
        return timings, series

    # -- 4. kpis over a day --------------------------------------------------------------

    async def section_kpis(self) -> dict[str, Any]:
        cfg = self.config
        assert self.redis is not None
        data = self.datasets["day"]
        settings = self.settings("day", "day")
        out: dict[str, Any] = {"records": data["records"]}
        out["replay"] = await self.run_replay("replay-day", settings, data["records"])
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        for label, by in (("total", []), ("by_all", ["channel", "queue", "priority"])):
            timings = []
            for _ in range(cfg.kpi_calls):
                started = time.perf_counter()
                doc = await query_kpis(store, width_s=86400, at_s=time.time(), by=by)
                timings.append(time.perf_counter() - started)
            out[f"query_{label}"] = spread(timings)
            out[f"groups_{label}"] = len(doc["groups"])
        out["tickets_in_window"] = sum(g["tickets_created"] for g in doc["groups"])
        cli = [*_deskpulse_argv(), "kpis", "--window", "24h", "--json"]
        env = child_env(settings)
        cwd = self.workdir / "cli"
        cwd.mkdir(exist_ok=True)
        walls = []
        for _ in range(7):
            started = time.perf_counter()
            done = subprocess.run(cli, env=env, cwd=cwd, capture_output=True, timeout=120)
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"{cli}: {done.returncode}\n{done.stderr.decode()[-2000:]}")
        out["cli"] = spread(walls)
        out["cli_command"] = "deskpulse kpis --window 24h --json"
        imports = []
        for argv in (
            [sys.executable, "-c", "pass"],
            [
                sys.executable,
                "-c",
                # under the collector pause the command imports with (runtime.one_shot_gc)
                "import gc; gc.disable(); "
                "import deskpulse.streams.cli, deskpulse.streams.tools, redis.asyncio, "
                "deskpulse.models.settings, deskpulse.streams.query, deskpulse.streams.store; "
                "gc.freeze()",
            ],
        ):
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=60, check=True)
                runs.append(time.perf_counter() - started)
            imports.append(percentile(runs, 0.5))
        out["python_start_s"], out["cli_imports_s"] = imports
        # the same document from a running worker (what a service or a board would call)
        wsettings = self.settings("day", "day-idle")
        worker = self.procs.worker("kpis-worker", wsettings)
        try:
            await self.wait_ready(worker, wsettings)
            url = f"http://{wsettings.web_host}:{wsettings.web_port}/kpis?window=24h"
            # the read process starts with the first read (once per worker): not timed
            await asyncio.to_thread(_http_get, url.replace("24h", "1h"))
            http = []
            now_s = time.time()
            for call in range(cfg.kpi_calls):
                # each a window ending at another minute: computed, not served from the cache
                end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s - 60 * call))
                started = time.perf_counter()
                await asyncio.to_thread(_http_get, f"{url}&at={end}")
                http.append(time.perf_counter() - started)
            out["http"] = spread(http)
        finally:
            self.procs.stop(worker)
        missed = out["query_total"]["p99"] >= BUDGET_KPIS_S or out["cli"]["p50"] >= BUDGET_KPIS_S
        if cfg.wants_profile(missed):
            out["profile_query"] = await profiles.pyinstrument_text(
                lambda: query_kpis(store, width_s=86400, at_s=time.time()), repeat=5
            )
            path = profiles.record_command(
                cli, self.workdir / "profile-kpis-cli.txt", env=env, cwd=cwd
            )
            out["profile_cli"] = profiles.summarize(path, top=20) if path else None
        return out

    # -- 5. reads under load ---------------------------------------------------------------

    async def section_reads(self) -> dict[str, Any]:
        """One worker ingests traffic at a fixed rate over a day of history while readers
        come and go in phases: none, then each level of ``BENCH_READS_LEVELS`` asking the
        same window and then windows of their own, then none again. Each phase measures
        events applied per second (Redis) against the phases without readers, and the
        readers' statuses and latencies. A pause between phases lets a backlog drain, so a
        phase is not credited with the catching up of the one before."""
        cfg = self.config
        assert self.redis is not None
        data = self.datasets["day"]
        out: dict[str, Any] = {"rate": cfg.reads_rate, "phase_s": cfg.reads_s}
        # the history the reads add up: the simulated day replayed into the worker's prefix
        history = self.settings("reads", "day")
        out["history"] = await self.run_replay("replay-reads", history, data["records"])
        with self.own_broker("reads"):  # the live traffic on a broker of its own
            settings = self.settings("reads", "reads-live")
            out["limits"] = {
                "read_rate": settings.read_rate,
                "read_concurrency": settings.read_concurrency,
                "read_queue": settings.read_queue,
                "read_cache": settings.read_cache,
                "read_nice": settings.read_nice,
            }
            worker = self.procs.worker("reads-worker", settings)
            try:
                await self.warm_up(worker, settings)
                url = f"http://{settings.web_host}:{settings.web_port}"
                # the read process starts with the first read: not inside a phase
                await asyncio.to_thread(_http_get, url + "/kpis?window=24h")
                out["phases"] = await self.read_phases(worker, settings, url)
            finally:
                self.procs.stop(worker)
        phases = out["phases"]
        unloaded = [p["applied_per_s"] for p in phases if p["readers"] == 0]
        out["unloaded_per_s"] = sum(unloaded) / len(unloaded)
        for phase in phases:
            phase["ratio"] = phase["applied_per_s"] / max(out["unloaded_per_s"], 1e-9)
        return out

    async def read_phases(
        self, worker: ManagedProcess, settings: Settings, url: str
    ) -> list[dict[str, Any]]:
        cfg = self.config
        assert self.redis is not None
        gap_s = 5.0
        plan: list[tuple[int, str]] = [(0, "-")]
        for level in cfg.reads_levels:
            plan += [(level, "same"), (level, "distinct")]
        plan.append((0, "-"))
        # each phase also starts and waits for its readers: room for that, and the traffic is
        # stopped after the last phase anyway
        traffic_s = len(plan) * (cfg.reads_s + gap_s + 6) + 30
        status_path = self.workdir / "reads-traffic-status.json"
        traffic = self.procs.start(
            "reads-traffic",
            [
                *(sys.executable, "-m", "benchmark.traffic", "--rate", str(cfg.reads_rate)),
                *("--seconds", str(traffic_s), "--run-id", "reads"),
                *("--markers", str(self.workdir / "reads-markers.jsonl")),
                *("--status", str(status_path)),
            ],
            env=child_env(settings),
        )
        prefix, parts = settings.redis_prefix, settings.topic_partitions

        async def applied() -> int:
            assert self.redis is not None
            return applied_total(await meta_totals(self.redis, prefix, parts))

        def sent() -> int:
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                return int(orjson.loads(status_path.read_bytes())["sent"])
            return 0

        phases: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 120
            while sent() == 0:  # it simulates the whole run first, then sends
                if not traffic.running or time.monotonic() > deadline:
                    raise RuntimeError(f"the traffic did not start:\n{traffic.log_tail()}")
                await asyncio.sleep(0.2)
            baseline = await applied() - sent()  # history and warm-up: not this traffic's
            await asyncio.sleep(gap_s)
            for readers, mode in plan:
                if not traffic.running:
                    raise RuntimeError(f"the traffic ended before the phase of {readers} readers")
                phase = await self.read_phase(worker, settings, url, readers, mode, applied)
                phase["behind"] = sent() - (await applied() - baseline)
                phases.append(phase)
                cores = ", ".join(f"{k} {v:.2f}" for k, v in phase["parts"].items())
                print(
                    f"reads: {readers} readers ({mode}): {phase['applied_per_s']:,.0f} "
                    f"applied/s, statuses {phase.get('statuses')}, behind {phase['behind']:,}; "
                    f"cores {cores}, redis {phase['cores']['redis']:.2f}",
                    file=sys.stderr,
                )
                if not worker.running:
                    raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
                await asyncio.sleep(gap_s)  # a backlog drains here, outside any phase
        finally:
            self.procs.stop(traffic)
        return phases

    async def read_phase(
        self,
        worker: ManagedProcess,
        settings: Settings,
        url: str,
        readers: int,
        mode: str,
        applied: Callable[[], Any],
    ) -> dict[str, Any]:
        cfg = self.config
        out_path = self.workdir / f"readers-{readers}-{mode}.json"
        reads_before = await asyncio.to_thread(_read_counts, url)
        proc = None
        if readers:
            argv = [sys.executable, "-m", "benchmark.readers", "--url", url]
            argv += ["--readers", str(readers), "--seconds", str(cfg.reads_s)]
            argv += ["--mode", mode, "--out", str(out_path)]
            proc = self.procs.start(f"readers-{readers}-{mode}", argv, env=child_env(settings))
            await asyncio.sleep(1.0)  # connected and reading before the count starts
        cpu_before = [tree_cpu_s(worker.pid), *self.cpu_of(self.redis_proc, self.broker)]
        parts_before = _worker_parts_cpu_s(worker.pid)
        t0, n0 = time.monotonic(), await applied()
        measure_s = cfg.reads_s - 2.0 if readers else cfg.reads_s
        await asyncio.sleep(measure_s)
        t1, n1 = time.monotonic(), await applied()
        cpu_after = [tree_cpu_s(worker.pid), *self.cpu_of(self.redis_proc, self.broker)]
        parts_after = _worker_parts_cpu_s(worker.pid)
        phase: dict[str, Any] = {
            "readers": readers,
            "mode": mode,
            "seconds": t1 - t0,
            "applied": n1 - n0,
            "applied_per_s": (n1 - n0) / (t1 - t0),
            "cores": dict(
                zip(
                    ("worker", "redis", "broker"),
                    [(b - a) / (t1 - t0) for a, b in zip(cpu_before, cpu_after, strict=True)],
                    strict=True,
                )
            ),
            # the worker tree by process: Faust's, the engine's, the read process's
            "parts": {
                name: (parts_after.get(name, 0.0) - parts_before.get(name, 0.0)) / (t1 - t0)
                for name in parts_after
            },
        }
        if proc is not None:
            deadline = time.monotonic() + cfg.reads_s + 90
            while proc.running and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            self.procs.stop(proc)
            if not out_path.exists():
                raise RuntimeError(f"the readers wrote nothing:\n{proc.log_tail()}")
            result = orjson.loads(out_path.read_bytes())
            phase["statuses"] = result["statuses"]
            phase["requests"] = sum(result["statuses"].values())
            phase["requests_per_s"] = phase["requests"] / max(result["seconds"], 1e-9)
            phase["latency_200"] = (
                spread(result["latencies"]["200"]) if result["latencies"]["200"] else None
            )
            phase["latency_503"] = (
                spread(result["latencies"]["503"]) if result["latencies"]["503"] else None
            )
            phase["retry_after_missing"] = result["retry_after_missing"]
            phase["cut_off"] = result.get("cut_off", 0)
            phase["readers_cores"] = result["cores"]
        reads_after = await asyncio.to_thread(_read_counts, url)
        phase["reads"] = {k: reads_after.get(k, 0) - reads_before.get(k, 0) for k in reads_after}
        return phase

    # -- 9. the wallboard: CPU per viewer refresh, the series' latency ----------------------

    async def section_board(self) -> dict[str, Any]:
        """A worker over the simulated day (replayed into its prefix, as for the reads),
        idle but for its timers: its CPU — its own process and its read process, from
        /proc — over ``BENCH_BOARD_SECONDS`` without viewers, then with
        ``BENCH_BOARD_VIEWERS`` viewers each doing what the page does every
        ``refresh_seconds`` (its /kpis windows at once, then the tickets at risk as often as
        their answer may be old, and the sparklines' series every
        ``series_refresh_seconds``), each read with the page's ``Cache-Control: max-age``,
        spread evenly over the period,
        then without again. The viewers' cost is the CPU of the viewers' phase less the mean
        of the idle phases, per viewer refresh. Then ``GET /kpis/series`` of 24 x 1 h, each
        read a series of its own (none from the cache): ending on the hour, as the board
        asks, and ending at a minute, which reads fine buckets at both edges of every point."""
        cfg = self.config
        data = self.datasets["day"]
        out: dict[str, Any] = {
            "viewers": cfg.board_viewers,
            "phase_s": cfg.board_s,
            "idle_s": cfg.board_idle_s,
        }
        history = self.settings("board", "day")
        out["history"] = await self.run_replay("replay-board", history, data["records"])
        settings = self.settings("board", "board-live")
        board = board_config(settings)
        out["refresh_s"] = board["refresh_seconds"]
        out["series_refresh_s"] = board["series_refresh_seconds"]
        out["read_cache"] = settings.read_cache
        worker = self.procs.worker("board-worker", settings)
        try:
            await self.warm_up(worker, settings)
            url = f"http://{settings.web_host}:{settings.web_port}"
            # the read process starts with the first read: not inside a phase
            await asyncio.to_thread(_http_get, url + "/kpis?window=24h")
            phases = []
            for viewers in (0, cfg.board_viewers, 0):
                phases.append(await self.board_phase(worker, url, board, viewers))
                print(f"board: {phases[-1]}", file=sys.stderr)
            out["phases"] = phases
            out["series"] = await self.series_latency(url, settings)
        finally:
            self.procs.stop(worker)
        idle = [p["cpu_s"] / p["seconds"] for p in phases if not p["viewers"]]
        loaded = next(p for p in phases if p["viewers"])
        idle_per_s = sum(idle) / len(idle)
        out["idle_cores"] = idle_per_s
        out["cpu_per_refresh_s"] = (loaded["cpu_s"] - idle_per_s * loaded["seconds"]) / max(
            loaded["refreshes"], 1
        )
        return out

    async def board_phase(
        self, worker: ManagedProcess, url: str, board: dict[str, Any], viewers: int
    ) -> dict[str, Any]:
        """``viewers`` viewers refreshing for BENCH_BOARD_SECONDS (none: the worker alone
        for BENCH_BOARD_IDLE_SECONDS); the worker's CPU."""
        import aiohttp

        cfg = self.config
        windows = sorted({tile["window"] for tile in board["tiles"]})
        refresh_s = board["refresh_seconds"]
        ages = board["max_age_seconds"]
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        refreshes = 0

        async def get(session: Any, path: str, max_age_s: Any, **query: str) -> None:
            # as the page asks: an answer up to a refresh old will do (Cache-Control)
            headers = {"Cache-Control": f"max-age={max_age_s}"}
            started = time.perf_counter()
            async with session.get(url + path, params=query, headers=headers) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append(time.perf_counter() - started)

        async def viewer(session: Any, offset_s: float, until: float) -> None:
            nonlocal refreshes
            series_at = sla_at = -math.inf
            await asyncio.sleep(offset_s)
            while time.monotonic() < until:
                began = time.monotonic()
                await asyncio.gather(
                    *(get(session, "/kpis", ages["kpis"][w], window=w) for w in windows)
                )
                if began - sla_at >= ages["sla_tickets"]:
                    await get(session, "/kpis/sla-tickets", ages["sla_tickets"], limit="10")
                    sla_at = began
                if began - series_at > board["series_refresh_seconds"]:
                    hour_end = -(-time.time() // 3600) * 3600
                    at = format_time(hour_end)
                    await get(session, "/kpis/series", ages["series"], **board["series"], at=at)
                    series_at = began
                refreshes += 1
                await asyncio.sleep(max(0.0, refresh_s - (time.monotonic() - began)))

        before = _worker_parts_cpu_s(worker.pid)
        t0 = time.monotonic()
        until = t0 + (cfg.board_s if viewers else cfg.board_idle_s)
        if viewers:
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(
                    *(viewer(session, refresh_s * v / viewers, until) for v in range(viewers))
                )
        else:
            await asyncio.sleep(cfg.board_idle_s)
        seconds = time.monotonic() - t0
        after = _worker_parts_cpu_s(worker.pid)
        parts = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
        phase: dict[str, Any] = {
            "viewers": viewers,
            "seconds": seconds,
            "refreshes": refreshes,
            "requests": sum(statuses.values()),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            # the worker's process and its read process: what serving the board costs
            "cpu_s": parts.get("worker", 0.0) + parts.get("reads", 0.0),
            "parts": parts,
        }
        if latencies:
            phase["latency"] = spread(latencies)
        return phase

    async def series_latency(self, url: str, settings: Settings) -> dict[str, Any]:
        """``GET /kpis/series?window=1h&step=1h&count=24``, one read after another: first
        as a board asks it, the series ending on the coming hour again and again, each time
        after a second of new traffic (a few dozen events of now, produced to the worker's
        topics): the read process keeps what still holds of the last read (the settled
        roll-ups' sums, the level steps, the oldest at the past ends) and reads the rest.
        Then distinct series, none of them asked before: ending on the hour, and at a
        minute (fine buckets at both edges of every point), each an hour earlier than the
        one before (a new oldest end each time, the worst case of what is kept)."""
        cfg = self.config
        out: dict[str, Any] = {}
        hour_end = -(-time.time() // 3600) * 3600
        minute_end = (time.time() // 60 - 1) * 60

        async def timed(queries: Callable[[int], str], between: Callable[[], Any] | None) -> Any:
            took = []
            statuses: Counter[int] = Counter()
            for k in range(cfg.board_series_reads):
                if between is not None:
                    await between()
                started = time.perf_counter()
                status = await asyncio.to_thread(_http_status, url + queries(k))
                took.append(time.perf_counter() - started)
                statuses[status] += 1
            return {
                "reads": len(took),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "p50": percentile(took, 0.5),
                "p99": percentile(took, 0.99),
                "max": max(took),
            }

        seed = iter(range(1000, 2000))

        async def traffic() -> None:
            now = time.time()
            sim = SimConfig(seed=next(seed), start_s=now - 1.0, duration_s=1.0, rate=40.0)
            rows = [  # what has happened by now (the simulation goes on into the future)
                (settings.topic_for(r.topic_kind), r.key, r.value)
                for r in generate(sim)
                if r.occurred_at_s is None or r.occurred_at_s <= now
            ]
            await produce_records(settings, rows, label="board traffic")
            await asyncio.sleep(1.0)

        board_query = f"/kpis/series?window=1h&step=1h&count=24&at={format_time(hour_end)}"
        await asyncio.to_thread(_http_status, url + board_query)  # what a board read last
        out["board"] = await timed(lambda k: board_query, traffic)
        for kind, newest in (("hour", hour_end), ("minute", minute_end)):
            out[kind] = await timed(
                lambda k, newest=newest: (
                    "/kpis/series?window=1h&step=1h&count=24"
                    f"&at={format_time(newest - (k + 1) * 3600)}"
                ),
                None,
            )
        return out

    # -- 6. SLA: breach checks and state size ---------------------------------------------

    # -- 11. thousands of groups --------------------------------------------------------------

    async def section_groups(self) -> dict[str, Any]:
        """A worker over a day of history spread over 6,000 groups (replayed into its
        prefix), then live traffic over the same groups at ``BENCH_GROUPS_RATE`` with
        markers (produced -> applied). Meanwhile, one after another, the 24 h KPI
        document by channel, queue and priority over HTTP (each read after the read
        process's cache expired), the worker's ``/metrics`` (how long each of its refreshes
        took, when they came, its size) and the engine process's RSS."""
        cfg = self.config
        assert self.redis is not None
        data = self.datasets["groups"]
        out: dict[str, Any] = {
            "rate": cfg.groups_rate,
            "seconds": cfg.groups_s,
            "groups": GROUPS_QUEUES * len(GROUPS_CHANNELS) * 4,
            "history_records": data["records"],
        }
        history = self.settings("groups", "groups")
        out["history"] = await self.run_replay("replay-groups", history, data["records"])
        with self.own_broker("groups"):
            settings = self.settings("groups", "groups-live")
            out["max_series"] = settings.max_series
            out["max_snapshot_messages"] = settings.max_snapshot_messages
            worker = self.procs.worker("groups-worker", settings)
            try:
                await self.warm_up(worker, settings)
                out.update(await self.groups_live(worker, settings))
            finally:
                self.procs.stop(worker)
        out["cpu"] = await self.groups_cpu(settings)
        return out

    async def groups_cpu(self, settings: Settings) -> dict[str, Any]:
        """CPU seconds of a refresh of the KPI snapshot and of a 24 h read by every
        dimension over the state the live run left, in this process with nothing else
        running in it: what the worker's wall times cost at the least, whatever else a
        shared host runs. A first of each (nothing kept yet), then the rest timed, the clock
        moving 5 s a refresh (the timer's) and 1 s a read, no new events in between; then a
        refresh and a read after each of 6 spans of 5 s of the section's traffic, folded in
        here by the engine's path (untimed): what a worker's refresh finds moved. Profiled
        when the CPU after traffic misses a budget (the profiles' refreshes and reads find
        nothing new)."""
        cfg = self.config
        assert self.redis is not None
        config = CoreConfig.from_settings(settings)
        collector = KpiCollector(Store(self.redis, settings.redis_prefix, config), settings)
        reader = Store(self.redis, settings.redis_prefix, config)
        now_s = time.time()
        steps = itertools.count()

        async def refresh() -> None:
            await collector.refresh(now_s + 5 * next(steps))

        async def read() -> None:
            at_s = now_s + next(steps)
            orjson.dumps(await query_kpis(reader, width_s=86400, at_s=at_s, by=DIMENSIONS))

        out: dict[str, Any] = {}
        for name, work, count in (("refresh", refresh, 6), ("kpis_read", read, 10)):
            started = time.process_time()
            await work()
            first = time.process_time() - started
            timed = []
            for _ in range(count):
                started = time.process_time()
                await work()
                timed.append(time.process_time() - started)
            out[name] = {"first": first, **spread(timed)}
        # as between two of the worker's refreshes: 5 s of the section's traffic folded in
        # (untimed, by the engine's path), then a refresh and a read, each timed
        writer = Store(self.redis, settings.redis_prefix, config)
        await writer.check_config()
        timed_after: dict[str, list[float]] = {"refresh": [], "kpis_read": []}
        for k in range(6):
            end_s = now_s + 5 * next(steps)
            traffic = SimConfig(
                seed=200 + k,
                start_s=end_s - 5,
                duration_s=5,
                rate=cfg.groups_rate,
                channels=dict.fromkeys(GROUPS_CHANNELS, 1.0),
                queues={f"queue-{i:03d}": 1.0 for i in range(GROUPS_QUEUES)},
            )
            items = []
            for record in generate(traffic):
                if record.occurred_at_s is not None and record.occurred_at_s > end_s:
                    continue  # what has happened by then
                with contextlib.suppress(RejectedEvent):  # the simulator's malformed ones
                    # a topic of its own each time: the offsets of the fence start anew
                    topic = f"{settings.topic_for(record.topic_kind)}.cpu{k}"
                    items.append((topic, *decode_record(record.value)))
            await sla_state.apply_decoded(
                writer, items, partitions=settings.topic_partitions, batch=500
            )
            for name, work in (("refresh", refresh), ("kpis_read", read)):
                started = time.process_time()
                await work()
                timed_after[name].append(time.process_time() - started)
        for name, timed in timed_after.items():
            out[name + "_after_traffic"] = spread(timed)
        missed = (
            out["refresh_after_traffic"]["max"] >= BUDGET_GROUPS_REFRESH_S
            or out["kpis_read_after_traffic"]["p99"] >= BUDGET_GROUPS_KPIS_P99_S
        )
        if cfg.wants_profile(missed):
            out["profile_refresh"] = await profiles.pyinstrument_text(refresh, repeat=3)
            out["profile_read"] = await profiles.pyinstrument_text(read, repeat=5)
        return out

    async def groups_live(self, worker: ManagedProcess, settings: Settings) -> dict[str, Any]:
        cfg = self.config
        url = f"http://{settings.web_host}:{settings.web_port}"
        kpis_url = url + "/kpis?window=24h&by=channel,queue,priority"
        await asyncio.to_thread(_http_get, kpis_url)  # the read process starts with it
        # the worker's first refresh (nothing kept yet: every window's settled sums
        # projected, every group built) is a cost of its start, reported apart; the
        # budget is the refreshes of a running worker, those during the traffic
        first_refresh: tuple[float, float] | None = None
        deadline = time.monotonic() + 60
        while first_refresh is None and time.monotonic() < deadline:
            first_refresh = _last_refresh(await asyncio.to_thread(_http_get, url + "/metrics"))
            if first_refresh is None:
                await asyncio.sleep(0.5)
        # The worker's first breach checks claim what fell due over the day of history (the
        # replay leaves detection to a live worker's clock): thousands of breaches and
        # warnings written at their instants into the day's settled buckets, which every
        # reader then sums afresh once. A catch-up of the start, reported apart like the
        # first refresh; the budgets are the running worker's, measured once the alerts
        # topic held still over a breach-check interval.
        catch_up_started = time.monotonic()
        alerts, moving = await self._topic_records(settings, settings.topic_alerts), True
        while moving and time.monotonic() < catch_up_started + 180:
            await asyncio.sleep(settings.breach_check_interval + 1)
            now = await self._topic_records(settings, settings.topic_alerts)
            moving, alerts = now != alerts, now
        catch_up: dict[str, float] = {
            "seconds": time.monotonic() - catch_up_started,
            "alerts": alerts,
        }
        # the read after it sums the day's settled buckets afresh (the claims wrote them):
        # a cost of the start too, reported with it
        started = time.perf_counter()
        await asyncio.to_thread(_http_get, kpis_url)
        catch_up["read_after"] = time.perf_counter() - started
        reads: list[float] = []
        #: the worker's refreshes: its refresh time -> how long the refresh took
        refreshes: dict[float, float] = {}
        rss: dict[str, list[int]] = {"worker": [], "engine": [], "outputs": []}
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await asyncio.to_thread(_http_get, kpis_url)
                reads.append(time.perf_counter() - started)
                last = _last_refresh(await asyncio.to_thread(_http_get, url + "/metrics"))
                if last is not None and (first_refresh is None or last[0] != first_refresh[0]):
                    refreshes[last[0]] = last[1]
                rss["worker"].append(rss_kib(worker.pid))
                children = [(p, _module_of(p)) for p in child_pids(worker.pid)]
                for name, module in (("engine", "offload"), ("outputs", "outputs")):
                    found = [rss_kib(p) for p, of in children if of == module]
                    rss[name].append(max(found, default=0))
                # past the read process's cache (DESKPULSE_READ_CACHE): every read computed
                await asyncio.sleep(max(1.0, settings.read_cache) + 0.1)

        kpis_before = await self._topic_records(settings, settings.topic_kpis)
        sampler = asyncio.ensure_future(sample())
        try:
            run = await self.run_traffic(
                "groups",
                worker,
                settings,
                rate=cfg.groups_rate,
                seconds=cfg.groups_s,
                marker_rate=cfg.marker_rate,
                traffic_argv=[
                    *("--channels", ",".join(GROUPS_CHANNELS)),
                    *("--queues", str(GROUPS_QUEUES)),
                ],
            )
        finally:
            done.set()
            await sampler
        kpis_after = await self._topic_records(settings, settings.topic_kpis)
        body = await asyncio.to_thread(_http_get, url + "/metrics")
        stamps = sorted(refreshes)
        snapshots = max(1.0, run["seconds"] / settings.snapshot_interval)
        return {
            "traffic": {k: v for k, v in run.items() if k not in ("latencies", "acks")},
            "kpis_read": spread(reads) if reads else None,
            "refresh": spread(list(refreshes.values())) if refreshes else None,
            "first_refresh": None if first_refresh is None else first_refresh[1],
            "catch_up": catch_up,
            "refresh_gaps": spread([b - a for a, b in itertools.pairwise(stamps)])
            if len(stamps) > 1
            else None,
            "rss_mib": {
                name: (max(values) / 1024 if values else None) for name, values in rss.items()
            },
            "metrics_series": _series(body),
            "metrics_bytes": len(body),
            "kpi_messages_per_snapshot": (kpis_after - kpis_before) / snapshots,
        }

    async def _topic_records(self, settings: Settings, topic: str) -> int:
        """Records on ``topic``, all partitions (their end offsets)."""
        consumer = AIOKafkaConsumer(**kafka_client_options(settings))
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = await consumer.end_offsets(tps) if tps else {}
        finally:
            await consumer.stop()
        return sum(ends.values())

    async def section_sla(self) -> dict[str, Any]:
        """Breach checks as a worker runs them (``streams.breaches.check_partitions``, one
        lock per partition, the alerts handed to a callback that keeps them where the worker
        has its producer) over open tickets folded in through the store, and what the state
        of a worked ticket costs (:meth:`ticket_state`).

        The tickets are created in the 20 minutes before a Monday 10:00 UTC; the earliest
        alert any of them has (half of an urgent billing ticket's hour, in the Berlin
        office's time) comes after that. A pass at that clock has nothing to claim: it
        reads the outbox and the ``due`` set's head of each partition, and the instances
        are never looked at. The claiming pass runs at the instant the ``sla_due``-th
        ticket in order of its next alert is due (a few more may be due at that instant, and
        some of those tickets have a second warning due by then too)."""
        cfg = self.config
        assert self.redis is not None
        settings = self.settings("sla", "sla")
        parts = settings.topic_partitions
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        out: dict[str, Any] = {"tickets": cfg.sla_tickets, "partitions": parts}
        bodies = sla_state.opened_tickets(
            cfg.sla_tickets, end_ms=sla_state.MONDAY_10_MS, span_ms=20 * 60_000, seed=11
        )
        memory_before = await self._used_memory()
        out["build"] = await sla_state.apply_events(
            store, bodies, partitions=parts, topic=settings.topic_tickets, batch=settings.batch_size
        )
        out["redis_bytes"] = await self._used_memory() - memory_before
        del bodies
        print(
            f"sla: {out['build']['events']:,} tickets folded in {out['build']['seconds']:.1f} s",
            file=sys.stderr,
        )
        metas = [(await store.load(p, []))[0] for p in range(parts)]
        watermark_ms = max(meta.watermark_ms for meta in metas)
        due_keys = [store.base(p) + "due" for p in range(parts)]
        heads: list[int] = []
        for key in due_keys:
            heads += [
                int(score)
                for _, score in await self.redis.zrange(key, 0, cfg.sla_due - 1, withscores=True)
            ]
        heads.sort()
        if not heads:
            raise RuntimeError("no ticket of the SLA state is due ever: nothing to check")
        idle_ms = min(watermark_ms, heads[0] - 1)
        out["watermark_ms"], out["idle_clock_ms"], out["earliest_due_ms"] = (
            watermark_ms,
            idle_ms,
            heads[0],
        )
        out["due_set"] = sum([await self.redis.zcard(key) for key in due_keys])
        # counted from the stored states, evaluated at the clock of the passes
        out["running"] = await sla_state.count_running(store, parts, idle_ms)
        # beside them, the counts the commits keep in the partitions' metas (what the
        # deskpulse_sla_running gauge exports)
        out["running"]["meta"] = {
            field.split(":", 1)[1]: sum(meta.counters.get(field, 0) for meta in metas)
            for field in sorted({f for meta in metas for f in meta.counters})
            if field.startswith("sla_running:")
        }
        print(f"sla: {out['running']['running']:,} running SLA instances", file=sys.stderr)

        locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        published: list[dict[str, Any]] = []

        async def publish(items: Sequence[tuple[str, dict[str, Any]]]) -> None:
            published.extend(body for _, body in items)

        async def check(clock_ms: int) -> tuple[float, int]:
            started = time.perf_counter()
            breaches = await check_partitions(
                store, [(p, clock_ms) for p in range(parts)], publish, locks.__getitem__
            )
            return time.perf_counter() - started, breaches

        await check(idle_ms)  # not timed: the connections of the pool are made here
        commands = await self._commands()
        idle = [(await check(idle_ms))[0] for _ in range(cfg.sla_passes)]
        # (the INFO that read the count before is counted in the one after)
        out["idle_commands"] = (await self._commands() - commands - 1) / cfg.sla_passes
        out["idle"] = spread(idle)
        out["idle_alerts"] = len(published)
        missed = (
            out["idle"]["p99"] >= BUDGET_BREACH_CHECK_S
            or out["running"]["running"] < BUDGET_BREACH_CHECK_INSTANCES
            or bool(published)
        )
        if cfg.wants_profile(missed):
            out["profile_idle"] = await profiles.pyinstrument_text(
                lambda: check(idle_ms), repeat=cfg.sla_passes
            )

        # the claiming pass: the tickets whose first alert is due by the sla_due-th instant
        due_ms = heads[min(cfg.sla_due, len(heads)) - 1]
        due_ids: set[str] = set()
        for key in due_keys:
            due_ids |= {text(m)[2:] for m in await self.redis.zrangebyscore(key, "-inf", due_ms)}
        published.clear()
        seconds, breaches = await check(due_ms)
        alerts = list(published)
        alerted = {body["ticket_id"] for body in alerts}
        kinds = Counter(
            f"{b['type']} {b['metric']}" + (f" at {b['fraction']:g}" if "fraction" in b else "")
            for b in alerts
        )
        out["due"] = {
            "target": cfg.sla_due,
            "clock_ms": due_ms,
            "due_tickets": len(due_ids),
            "seconds": seconds,
            "alerts": len(alerts),
            "breaches": breaches,
            "per_alert_s": seconds / max(len(alerts), 1),
            "tickets_alerted": len(alerted),
            "due_not_alerted": len(due_ids - alerted),
            "alerted_not_due": len(alerted - due_ids),
            "kinds": dict(kinds.most_common()),
        }
        published.clear()
        seconds, breaches = await check(due_ms)
        out["again"] = {
            "seconds": seconds,
            "alerts": len(published),
            "breaches": breaches,
            "still_due": sum([await self.redis.zcount(key, "-inf", due_ms) for key in due_keys]),
        }
        print(
            f"sla: idle pass p50 {out['idle']['p50'] * 1000:.1f} ms; {len(alerts)} alerts of "
            f"{len(due_ids)} due tickets claimed in {out['due']['seconds'] * 1000:.0f} ms",
            file=sys.stderr,
        )
        await store.clear()
        await self._lazyfree_done()  # its memory given back before the next is measured
        out["state"] = await self.ticket_state()
        return out

    async def ticket_state(self) -> dict[str, Any]:
        """Tickets of 5 public replies and 4 status changes each, folded into a prefix of
        their own: the stored state of one (``Conversation.dumps()``), and the Redis memory
        of the keys that hold one entry per ticket (``conv``, ``convexp``, ``due``,
        ``held``), per ticket, beside the growth of ``used_memory`` (KPI buckets included)."""
        cfg = self.config
        assert self.redis is not None
        settings = self.settings("sla-state", "sla")
        parts = settings.topic_partitions
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        n = cfg.sla_state_tickets
        bodies = sla_state.worked_tickets(n, start_ms=sla_state.MONDAY_10_MS, seed=12)
        memory_before = await self._used_memory()
        build = await sla_state.apply_events(
            store, bodies, partitions=parts, topic=settings.topic_tickets, batch=settings.batch_size
        )
        used = await self._used_memory() - memory_before
        states = {
            k: v
            for k, v in (await sla_state.stored_states(store, parts)).items()
            if k.startswith("t:")
        }
        sizes = [len(raw) for raw in states.values()]
        example_id = min(states)
        example = Conversation.loads(states[example_id])
        keys = await sla_state.key_memory(store)
        per_ticket = {
            k: dict(keys.get(k, {"keys": 0, "bytes": 0}))
            for k in ("conv", "convexp", "due", "held", "tl")
        }
        for name, count in (
            ("conv", self.redis.hlen),
            ("convexp", self.redis.zcard),
            ("due", self.redis.zcard),
            ("held", self.redis.hlen),
        ):
            per_ticket[name]["entries"] = sum(
                [await count(store.base(p) + name) for p in range(parts)]
            )
        encoding = await self.redis.object("encoding", store.base(0) + "conv")
        await store.clear()
        return {
            "tickets": n,
            "stored": len(states),
            "events": build["events"],
            "build": build,
            "bytes_mean": sum(sizes) / max(len(sizes), 1),
            "bytes_min": min(sizes, default=0),
            "bytes_max": max(sizes, default=0),
            "example_id": example_id,
            "example": example.dumps().decode(),
            "example_stored_equal": example.dumps() == states[example_id],
            # a ticket's timeline entries are kept beside its state (``tl:``), counted in it
            "example_timeline": example.stored
            if example.walk is not None
            else len(example.timeline),
            "example_events": example.events(),
            "id_chars": len(example_id) - 2,
            "keys": keys,
            "per_ticket_keys": per_ticket,
            "redis_per_ticket": sum(v["bytes"] for v in per_ticket.values()) / n,
            "used_memory": used,
            "used_memory_per_ticket": used / n,
            "conv_encoding": text(encoding) if encoding is not None else "",
        }

    # -- 7. backlog ----------------------------------------------------------------------

    async def section_backlog(self) -> dict[str, Any]:
        """What open tickets cost now that they keep their state until
        ``DESKPULSE_OPEN_TICKET_MAX_AGE`` rather than the retention, and what a read of the
        backlog costs: Redis memory per open ticket, just created and worked
        (:meth:`backlog_memory`), and ``query_kpis`` over a week of open tickets and a
        simulated day (:meth:`backlog_reads`), its backlog checked against a count made
        from the events."""
        cfg = self.config
        out: dict[str, Any] = {}
        out["created"] = await self.backlog_memory("created", cfg.backlog_tickets, worked=False)
        out["worked"] = await self.backlog_memory("worked", cfg.backlog_worked, worked=True)
        out["reads"] = await self.backlog_reads()
        return out

    async def backlog_memory(self, name: str, count: int, *, worked: bool) -> dict[str, Any]:
        """``count`` open tickets folded into a prefix of their own through the store as the
        engine folds them (``fold_batch``, ``Store.commit``, batches of the default size),
        created over the week up to a Monday 10:00 UTC, spread evenly over the 120 groups of
        :data:`~benchmark.backlog_state.GROUPS`: creations only, or (``worked``) each with
        5 public replies and 3 status changes (open, pending, open), created over the first
        five days so that each is worked by the end. The growth of Redis ``used_memory``,
        ``MEMORY USAGE`` of each key family, the entries of the families that hold one per
        ticket, and a sample of the stored states."""
        assert self.redis is not None
        settings = self.settings(f"backlog-{name}", "backlog")
        parts = settings.topic_partitions
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        end_ms = sla_state.MONDAY_10_MS
        bodies: Any
        if worked:
            bodies = sla_state.worked_tickets(
                count,
                start_ms=end_ms - _WEEK_MS,
                span_ms=_WEEK_MS - 2 * _DAY_MS,
                seed=22,
                prefix="bw-",
                solve=False,
                groups=backlog_state.GROUPS,
            )
        else:
            bodies = sla_state.opened_ticket_stream(
                count,
                end_ms=end_ms,
                span_ms=_WEEK_MS,
                seed=21,
                prefix="bl-",
                groups=backlog_state.GROUPS,
            )
        await self._lazyfree_done()
        memory_before = await self._used_memory()
        topic = settings.topic_tickets
        build = await sla_state.apply_decoded(
            store,
            ((topic, event, ms) for event, ms in sla_state.decoded(bodies)),
            partitions=parts,
            batch=settings.batch_size,
            window=_FOLD_WINDOW,
            max_span_ms=_max_span_ms(settings),
        )
        del bodies
        build["trim_commits"] = await backlog_state.trim_caught_up(store, parts)
        used = await self._used_memory() - memory_before
        print(
            f"backlog: {count:,} {name} open tickets ({build['events']:,} events) folded in "
            f"{build['seconds']:.1f} s, {used / count:,.0f} B of Redis each",
            file=sys.stderr,
        )
        keys = await sla_state.key_memory(store)
        bases = [store.base(p) for p in range(parts)]
        indexes = [base + live_key("t", dims) for base in bases for dims in backlog_state.GROUPS]
        async with self.redis.pipeline(transaction=False) as pipe:
            for base in bases:
                pipe.hlen(base + "conv")
                pipe.zcard(base + "convexp")
                pipe.zcard(base + "due")
                pipe.hlen(base + "held")
                pipe.hlen(base + "lvl")
            for key in indexes:
                pipe.zcard(key)
            counted = await pipe.execute()
        entries = {
            family: sum(counted[k::5][: len(bases)])
            for k, family in enumerate(("conv", "convexp", "due", "held", "lvl"))
        }
        entries["lo"] = sum(counted[5 * len(bases) :])
        if entries["lo"] != count or entries["conv"] != count:
            raise RuntimeError(
                f"backlog: {count:,} open tickets folded, but {entries['conv']:,} states and "
                f"{entries['lo']:,} entries in the groups' open indexes"
            )
        levels = await store.read_levels(list(range(parts)))
        in_levels: Counter[str] = Counter()
        for name, value in levels.items():
            in_levels[name.rpartition(SEP)[2]] += value
        sample = await backlog_state.sample_states(store, parts, _STATE_SAMPLE // parts)
        sizes = [len(raw) for raw in sample.values()]
        example_id = min(sample)
        encodings = {
            family: text(await self.redis.object("encoding", key) or b"")
            for family, key in (("conv", bases[0] + "conv"), ("lo", indexes[0]))
        }
        await store.clear()
        await self._lazyfree_done()
        scaling = sum(keys.get(f, {}).get("bytes", 0) for f in _PER_TICKET_FAMILIES)
        rest = sum(v["bytes"] for f, v in keys.items() if f not in _PER_TICKET_FAMILIES)
        return {
            "tickets": count,
            "events": build["events"],
            "build": build,
            "partitions": parts,
            "groups": len(backlog_state.GROUPS),
            "span_days": (_WEEK_MS - (2 * _DAY_MS if worked else 0)) / _DAY_MS,
            "end_ms": end_ms,
            "used_memory": used,
            "used_memory_per_ticket": used / count,
            "keys": keys,
            "entries": entries,
            "levels": dict(in_levels),
            "encodings": encodings,
            "per_ticket_bytes": scaling / count,
            "other_bytes": rest,
            # the families that hold one entry per ticket grow with the tickets, the rest
            # (levels, buckets, meta) with the groups and the retention: kept as measured
            "million_bytes": scaling / count * 1_000_000 + rest,
            "million_measured": count == 1_000_000,
            "state_sampled": len(sizes),
            "state_bytes_mean": sum(sizes) / len(sizes),
            "state_bytes_min": min(sizes),
            "state_bytes_max": max(sizes),
            "example_id": example_id,
            "example": sample[example_id].decode(),
            "id_chars": len(example_id) - 2,
        }

    async def backlog_reads(self) -> dict[str, Any]:
        """``query_kpis(width_s=86400, by=channel,queue,priority)`` as a board reads it, over
        ``backlog_read_tickets`` open tickets created over a week (the groups of
        :data:`~benchmark.backlog_state.GROUPS`) and a simulated day of ordinary traffic
        (tickets worked and solved, chats, surveys) up to the same Monday 10:00 UTC, all
        folded in time order through the store: at the bucket after the newest event, the
        same without grouping, and at the instant a day before, each timed
        ``backlog_reads`` times. The first document of each is checked first, group by
        group, against the backlog counted from the events (:mod:`benchmark.backlog_state`):
        a read that counts wrong is not timed, the section fails."""
        cfg = self.config
        assert self.redis is not None
        settings = self.settings("backlog-reads", "backlog")
        parts = settings.topic_partitions
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        end_ms = sla_state.MONDAY_10_MS
        started = time.perf_counter()
        topic = settings.topic_tickets
        own = [
            (topic, event, ms)
            for event, ms in sla_state.decoded(
                sla_state.opened_ticket_stream(
                    cfg.backlog_read_tickets,
                    end_ms=end_ms,
                    span_ms=_WEEK_MS,
                    seed=23,
                    prefix="br-",
                    groups=backlog_state.GROUPS,
                )
            )
        ]
        day: list[tuple[str, Any, int]] = []
        if cfg.backlog_day_rate > 0:
            sim = SimConfig(
                seed=24, start_s=end_ms / 1000 - 86400, duration_s=86400, rate=cfg.backlog_day_rate
            )
            for record in generate(sim):
                event, ms = decode_record(record.value)
                day.append((settings.topic_for(record.topic_kind), event, ms))
        items = sorted(own + day, key=lambda item: item[2])
        prepared_s = time.perf_counter() - started
        build = await sla_state.apply_decoded(
            store,
            items,
            partitions=parts,
            batch=settings.batch_size,
            max_span_ms=_max_span_ms(settings),
        )
        build["trim_commits"] = await backlog_state.trim_caught_up(store, parts)
        newest_ms = items[-1][2]
        print(
            f"backlog: {len(own):,} open tickets and {len(day):,} simulated events folded in "
            f"{build['seconds']:.1f} s",
            file=sys.stderr,
        )
        by_all = ("channel", "queue", "priority")
        at_s = newest_ms // 1000 + 1  # the window ends at the bucket after the newest event
        kinds = (("now_by", at_s, by_all), ("now_all", at_s, ()), ("past_by", at_s - 86400, by_all))
        out: dict[str, Any] = {
            "tickets": cfg.backlog_read_tickets,
            "day_rate": cfg.backlog_day_rate,
            "day_events": len(day),
            "day_kinds": dict(Counter(event.type for _, event, _ in day).most_common()),
            "events": len(items),
            "prepare_s": prepared_s,
            "build": build,
            "partitions": parts,
            "newest_ms": newest_ms,
        }
        checked: dict[int, tuple[Any, int, int]] = {}
        live_timed: dict[int, dict[str, float]] = {}
        for label, read_at, by in kinds:
            # checked first: also the read that makes the pool's connections, not timed
            doc = await query_kpis(store, width_s=86400, at_s=read_at, by=by)
            end_s = int(parse_time(doc["window"]["end"]).timestamp())
            if end_s not in checked:
                end = end_s * 1000
                want = backlog_state.expected_backlog(((e, ms) for _, e, ms in items), end)
                mine = sum(1 for *_, ms in own if ms < end)
                theirs = backlog_state.expected_backlog(((e, ms) for _, e, ms in day), end)
                checked[end_s] = (want, mine, backlog_state.counts_of(theirs)["total"])
            want, mine, theirs = checked[end_s]
            problems = backlog_state.backlog_mismatches(doc, want)
            found = _backlog_counts(doc)
            if problems or found["total"] != mine + theirs:
                raise RuntimeError(
                    f"backlog: the document at {format_time(end_s)} ({label}) counts "
                    f"{found['total']:,} open tickets; {mine:,} were created by the section "
                    f"and {theirs:,} of the simulated day are open then: "
                    + ("; ".join(problems) or "the totals differ")
                )
            commands = await self._commands()
            timings = []
            for _ in range(cfg.backlog_reads):
                t0 = time.perf_counter()
                await query_kpis(store, width_s=86400, at_s=read_at, by=by)
                timings.append(time.perf_counter() - t0)
            # (the INFO that read the count before is counted in the one after)
            per_read = (await self._commands() - commands - 1) / cfg.backlog_reads
            # a reader's first read (a new store: no settled sums kept), as the first read
            # of a `deskpulse kpis` command or of a worker just started
            cold = []
            for _ in range(min(cfg.backlog_reads, _LIVE_READS)):
                fresh = Store(self.redis, settings.redis_prefix, store.config)
                t0 = time.perf_counter()
                await query_kpis(fresh, width_s=86400, at_s=read_at, by=by)
                cold.append(time.perf_counter() - t0)
            if end_s not in live_timed:
                # the live state at the window's end alone (the backlog and the waiting
                # chats), a part of each read above: what the rest of the document costs
                # is the difference
                live = []
                for _ in range(min(cfg.backlog_reads, _LIVE_READS)):
                    t0 = time.perf_counter()
                    await read_live(store, end_s=end_s)
                    live.append(time.perf_counter() - t0)
                live_timed[end_s] = spread(live)
            ages = [g["backlog"]["oldest_age_seconds"] for g in doc["groups"]]
            out[label] = {
                "end_s": end_s,
                "by": list(by),
                "latency": spread(timings),
                "first_latency": spread(cold),
                "live_latency": live_timed[end_s],
                "commands": per_read,
                "groups": len(doc["groups"]),
                "groups_open": sum(1 for g in doc["groups"] if g["backlog"]["total"]),
                "backlog": found,
                "own_open": mine,
                "day_open": theirs,
                "oldest_age_s": max((a for a in ages if a is not None), default=None),
                "youngest_oldest_age_s": min((a for a in ages if a is not None), default=None),
                "checked": True,
            }
            latency = out[label]["latency"]
            print(
                f"backlog: {label} p50 {latency['p50'] * 1000:.1f} ms, p99 "
                f"{latency['p99'] * 1000:.1f} ms; {found['total']:,} open, as counted",
                file=sys.stderr,
            )
        missed = out["now_by"]["latency"]["p99"] >= BUDGET_KPIS_S
        if cfg.wants_profile(missed):
            out["profile_read"] = await profiles.pyinstrument_text(
                lambda: query_kpis(store, width_s=86400, at_s=at_s, by=by_all), repeat=5
            )
            # the read of the past beside it: no budget of its own, but where its time goes
            # is the same question
            out["profile_past"] = await profiles.pyinstrument_text(
                lambda: query_kpis(store, width_s=86400, at_s=at_s - 86400, by=by_all), repeat=3
            )
        await store.clear()
        await self._lazyfree_done()
        return out

    async def _lazyfree_done(self) -> None:
        """Wait until Redis has freed what was deleted in the background (UNLINK)."""
        assert self.redis is not None
        while int((await self.redis.info("memory")).get("lazyfree_pending_objects", 0)):
            await asyncio.sleep(0.1)

    async def _used_memory(self) -> int:
        assert self.redis is not None
        return int((await self.redis.info("memory"))["used_memory"])

    async def _commands(self) -> int:
        assert self.redis is not None
        return int((await self.redis.info("stats"))["total_commands_processed"])

    # -- 8. soak -------------------------------------------------------------------------

    async def section_soak(self) -> dict[str, Any]:
        with self.own_broker("soak"):  # it starts empty, and holds only the soak's records
            return await self._soak()

    async def _soak(self) -> dict[str, Any]:
        cfg = self.config
        assert self.redis is not None
        # earlier sections' state out of used_memory: freed in the background (a blocking
        # FLUSHDB of gigabytes outlasts any sensible client timeout), then waited for
        await self.redis.flushdb(asynchronous=True)
        while int((await self.redis.info("memory")).get("lazyfree_pending_objects", 0)):
            await asyncio.sleep(0.2)
        retention = parse_duration(cfg.soak_retention)
        windows = sorted({w for w in (60, 300, retention) if w <= retention})
        settings = self.settings("soak", "soak", retention=retention, windows=tuple(windows))
        worker = self.procs.worker("soak-worker", settings)
        await self.wait_ready(worker, settings)
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        last_cpu = [time.monotonic(), tree_cpu_s(worker.pid), *self.cpu_of(self.broker)]

        async def sample(now: float) -> None:
            assert self.redis is not None
            info = await self.redis.info("memory")
            prefix, parts = settings.redis_prefix, settings.topic_partitions
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in range(parts):
                    pipe.hlen(f"{prefix}:{{p{p}}}:conv")
                    pipe.zcard(f"{prefix}:{{p{p}}}:bidx")
                for p in range(parts):
                    # a random sample of conversation states: what one of them costs
                    pipe.hrandfield(f"{prefix}:{{p{p}}}:conv", 250, withvalues=True)
                replies = await pipe.execute()
            # (id, state) pairs: ids start with t: for tickets, c: for chats
            pairs = [
                (text(k), v)
                for r in replies[2 * parts :]
                for k, v in zip(r[::2], r[1::2], strict=True)
            ]
            states = [v for _, v in pairs]
            families = await _family_mib(self.redis, prefix, parts)
            tickets = [len(v) for k, v in pairs if k.startswith("t:")]
            id_chars = max((len(k) - 2 for k, _ in pairs if k.startswith("t:")), default=0)
            chats = [len(v) for k, v in pairs if k.startswith("c:")]
            seen = [Conversation.loads(v).events() for v in states]
            cpu = tree_cpu_s(worker.pid)
            broker_cpu = self.cpu_of(self.broker)[0]
            mono = time.monotonic()
            engine_mib = sum(rss_kib(pid) for pid in child_pids(worker.pid)) / 1024
            samples.append(
                {
                    "t": round(mono - started, 1),
                    # the worker and its engine process, if it has one
                    "rss_mib": rss_kib(worker.pid) / 1024 + engine_mib,
                    "engine_rss_mib": engine_mib,
                    "redis_mib": int(info["used_memory"]) / 1024 / 1024,
                    "redis_dataset_mib": int(info["used_memory_dataset"]) / 1024 / 1024,
                    "broker_rss_mib": rss_kib(self.broker.pid) / 1024 if self.broker else 0,
                    "conversations": sum(replies[0 : 2 * parts : 2]),
                    "buckets": sum(replies[1 : 2 * parts : 2]),
                    "state_bytes": sum(map(len, states)) / max(len(states), 1),
                    "ticket_state_bytes": sum(tickets) / max(len(tickets), 1),
                    "tickets_sampled": len(tickets),
                    "ticket_id_chars": id_chars,
                    "chat_state_bytes": sum(chats) / max(len(chats), 1),
                    "chats_sampled": len(chats),
                    "events_seen": sum(seen) / max(len(seen), 1),
                    "applied": applied_total(await meta_totals(self.redis, prefix, parts)),
                    "worker_cores": (cpu - last_cpu[1]) / max(mono - last_cpu[0], 1e-9),
                    "broker_cores": (broker_cpu - last_cpu[2]) / max(mono - last_cpu[0], 1e-9),
                    **{f"mib_{name}": mib for name, mib in families.items()},
                }
            )
            last_cpu[:] = [mono, cpu, broker_cpu]
            s = samples[-1]
            print(
                f"soak t={s['t']:.0f}s rss={s['rss_mib']:.1f}MiB redis={s['redis_mib']:.1f}MiB "
                f"conv={s['conversations']} buckets={s['buckets']} applied={s['applied']}",
                file=sys.stderr,
            )

        try:
            traffic = await self.run_traffic(
                "soak",
                worker,
                settings,
                rate=cfg.soak_rate,
                seconds=cfg.soak_s,
                marker_rate=1.0,
                sample=sample,
                sample_every_s=cfg.soak_sample_s,
                response_scale=cfg.soak_response_scale,
                lifecycle_scale=cfg.soak_lifecycle_scale,
            )
        finally:
            self.procs.stop(worker)
        return {
            "retention_s": retention,
            "response_scale": cfg.soak_response_scale,
            "lifecycle_scale": cfg.soak_lifecycle_scale,
            "windows": windows,
            "traffic": traffic,
            "samples": samples,
            "summary": soak_summary(samples, retention, cfg.soak_s),
        }

    # -- the run -------------------------------------------------------------------------

    async def section_ingest(self) -> dict[str, Any]:
        """``deskpulse ingest`` on a broker of its own, driven by signed Zendesk webhooks from
        ``benchmark.webhooks`` in another process: a short warm-up run, then the measured
        one. The server's CPU seconds over the measured run give its rate per core; every
        request answered 200 must have put its events on the topic (the end offsets say)."""
        cfg = self.config
        out: dict[str, Any] = {"connections": cfg.ingest_connections, "seconds": cfg.ingest_s}
        with self.own_broker("ingest"):
            settings = self.settings(
                "ingest",
                "ingest",
                ingest_port=free_port(HOST),
                zendesk_signing_secret=SecretStr(_INGEST_SECRET),
            )
            await ensure_topics(settings)
            server = self.procs.start(
                "ingest-server",
                [sys.executable, "-m", "deskpulse.streams.cli", "--log-level", "warning", "ingest"],
                env=child_env(settings),
            )
            url = f"http://{settings.ingest_host}:{settings.ingest_port}"
            try:
                deadline = time.monotonic() + 60
                while _http_status(url + "/readyz") != 200:
                    if not server.running or time.monotonic() > deadline:
                        raise RuntimeError(f"the ingest server is not ready: {server.log_tail()}")
                    await asyncio.sleep(0.2)
                await self.drive_ingest(settings, url, "warm-up", min(3.0, cfg.ingest_s))
                before = await self._input_records(settings)
                cpu_before = tree_cpu_s(server.pid)
                run = await self.drive_ingest(settings, url, "measured", cfg.ingest_s)
                out["server_cpu_s"] = tree_cpu_s(server.pid) - cpu_before
                out["produced"] = await self._input_records(settings) - before
                # the latency a helpdesk sees at the budget's rate, paced (not flat out)
                cpu_before = tree_cpu_s(server.pid)
                paced = await self.drive_ingest(
                    settings, url, "paced", cfg.ingest_s, rate=cfg.ingest_rate
                )
                paced_cpu_s = tree_cpu_s(server.pid) - cpu_before
            finally:
                self.procs.stop(server)
        paced_latencies = sorted(paced.pop("latencies"))
        paced_ok = paced["statuses"].get("200", 0)
        out["paced"] = {
            "rate": cfg.ingest_rate,
            "statuses": paced["statuses"],
            "ok": paced_ok,
            "per_second": paced_ok / max(paced["seconds"], 1e-9),
            "server_cores": paced_cpu_s / max(paced["seconds"], 1e-9),
            "latency": {
                "p50": percentile(paced_latencies, 0.50) if paced_latencies else None,
                "p99": percentile(paced_latencies, 0.99) if paced_latencies else None,
                "max": paced_latencies[-1] if paced_latencies else None,
            },
        }
        ok = run["statuses"].get("200", 0)
        latencies = sorted(run.pop("latencies"))
        out |= {
            "statuses": run["statuses"],
            "requests": sum(run["statuses"].values()),
            "ok": ok,
            "wall_s": run["seconds"],
            "per_second": ok / max(run["seconds"], 1e-9),
            "per_core": ok / max(out["server_cpu_s"], 1e-9),
            "server_cores": out["server_cpu_s"] / max(run["seconds"], 1e-9),
            "load_cores": run["cores"],
            "latency": {
                "p50": percentile(latencies, 0.50) if latencies else None,
                "p99": percentile(latencies, 0.99) if latencies else None,
                "max": latencies[-1] if latencies else None,
            },
        }
        return out

    async def drive_ingest(
        self, settings: Settings, url: str, name: str, seconds: float, rate: float = 0.0
    ) -> dict[str, Any]:
        """One run of the load generator (flat out, or at ``rate`` requests/s); its JSON
        result."""
        result = self.workdir / f"webhooks-{name}.json"
        load = self.procs.start(
            f"webhooks-{name}",
            [
                sys.executable,
                "-m",
                "benchmark.webhooks",
                "--url",
                url,
                "--secret",
                _INGEST_SECRET,
                "--connections",
                str(self.config.ingest_connections),
                "--seconds",
                str(seconds),
                "--rate",
                str(rate),
                "--out",
                str(result),
            ],
            env=child_env(settings),
        )
        try:
            while load.running:
                await asyncio.sleep(0.2)
        finally:
            self.procs.stop(load)
        if load.returncode != 0:
            raise RuntimeError(f"the load generator failed: {load.log_tail()}")
        document: dict[str, Any] = orjson.loads(result.read_bytes())
        return document

    async def _input_records(self, settings: Settings) -> int:
        """Records on the input topics, all partitions (their end offsets)."""
        consumer = AIOKafkaConsumer(**kafka_client_options(settings))
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in settings.input_topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not tps:
                await consumer.topics()  # fetch the metadata, then ask again
                tps = [
                    TopicPartition(topic, p)
                    for topic in settings.input_topics
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return sum(ends.values())

    # -- 11. a conversation that never goes quiet ---------------------------------------

    async def section_longconv(self) -> dict[str, Any]:
        """One ticket answered ``BENCH_LONG_REPLIES`` times by an auto-responder at
        ``BENCH_LONG_RATE`` a second beside spread traffic at the same rate: the live
        worker's throughput on it against spread traffic of the same size (trials
        interleaved), then the same records folded as a live worker's batches (one per
        partition per ``DESKPULSE_BATCH_WITHIN`` of event time) into a prefix of their own,
        the time of every
        batch of the ticket's partition from its first replies to its last, and the commit
        script's time in Redis (``SLOWLOG`` at every command while they fold)."""
        assert self.redis is not None
        replies, rate = self.config.long_replies, self.config.long_rate
        span = replies / rate
        now = time.time()
        start = now - span - 300
        out: dict[str, Any] = {"replies": replies, "rate": rate}
        ticket = "bench-longconv-T0000000001"
        sim = SimConfig(seed=21, start_s=start, duration_s=span, rate=rate)
        started = time.perf_counter()
        records = long_conversation.merged(
            generate(sim), long_conversation.long_ticket(ticket, start + 1, replies, rate)
        )
        data = await self.produce_records("lc", records, time.perf_counter() - started, sim)
        same = SimConfig(seed=22, start_s=start, duration_s=span, rate=len(records) / span)
        spread = await self.produce_dataset("lcs", same)
        out["records"] = {"long": data["records"], "spread": spread["records"]}
        runs: dict[str, list[dict[str, Any]]] = {"long": [], "spread": []}
        for t in range(self.config.long_trials):
            order = ("long", "spread") if t % 2 == 0 else ("spread", "long")
            for kind in order:
                topics, n = (
                    ("lc", data["records"]) if kind == "long" else ("lcs", spread["records"])
                )
                name = f"lc-{kind}-{t}"
                run = await self.run_live(name, self.settings(name, topics), n, keep=False)
                runs[kind].append(run)
                print(f"trial {t + 1}, {kind}: {run['per_second']:,.0f} events/s", file=sys.stderr)
        out["live"] = {kind: [r["per_second"] for r in rs] for kind, rs in runs.items()}
        out["live_ratios"] = [
            a["per_second"] / b["per_second"]
            for a, b in zip(runs["long"], runs["spread"], strict=True)
        ]
        out["live_ratio"] = percentile(out["live_ratios"], 0.5)
        settings = self.settings("lc-fold", "lc")
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        before = await self.redis.config_get("slowlog-*")
        await self.redis.config_set("slowlog-max-len", 1_000_000)
        await self.redis.config_set("slowlog-log-slower-than", 0)
        await self.redis.slowlog_reset()
        try:
            batches = await long_conversation.fold_in_spans(
                store,
                records,
                partitions=settings.topic_partitions,
                ticket=ticket,
                span_ms=int(settings.batch_within * 1000),
            )
            entries = await self.redis.slowlog_get(1_000_000)
        finally:
            for name, value in before.items():
                await self.redis.config_set(name, value)
            await self.redis.slowlog_reset()
        out["batches"] = long_conversation.flatness(batches, 10_000, replies - 10_000)
        out["batches"]["count"] = len(batches)
        out["batches"]["events_mean"] = sum(b["events"] for b in batches) / len(batches)
        times = long_conversation.script_times_us(entries, store.commit_script_sha)
        out["commit_script_us"] = {
            "count": len(times),
            "p50": percentile(times, 0.5),
            "p99": percentile(times, 0.99),
            "max": max(times),
        }
        where = long_conversation.partition_of(ticket, settings.topic_partitions)
        state = await self.redis.hget(store.base(where) + "conv", "t:" + ticket)
        out["state_bytes"] = None if state is None else len(state)
        out["timeline"] = await self.longconv_timeline()
        return out

    async def longconv_timeline(self) -> dict[str, Any]:
        """One ticket's timeline: ``BENCH_LONG_TIMELINE_REPLIES`` public replies, customer
        and agent in turn, a status change (open, pending, open, hold) after every 50,
        under a policy with all three SLA metrics and a warning (every reply answers or
        starts a next response), folded in batches of ``BENCH_LONG_TIMELINE_BATCH`` into a
        prefix of its own as the engine folds a batch; each batch timed, the stored state
        read after each, the entries kept beside it measured at the end."""
        assert self.redis is not None
        replies, batch = self.config.long_timeline_replies, self.config.long_timeline_batch
        ticket = "bench-timeline-T0000000001"
        records = long_conversation.long_timeline(ticket, time.time() - replies - 600, replies, 1.0)
        settings = self.settings("lc-timeline", "lc")
        config = CoreConfig.from_settings(settings)
        config = CoreConfig(
            bucket_seconds=config.bucket_seconds,
            rollup_seconds=config.rollup_seconds,
            retention_seconds=config.retention_seconds,
            policies=(long_conversation.TIMELINE_POLICY,),
        )
        store = Store(self.redis, settings.redis_prefix, config)
        await store.check_config()
        batches = await long_conversation.fold_batches(
            store, records, partition=0, conversation="t:" + ticket, batch=batch
        )
        out: dict[str, Any] = {"replies": replies, "records": len(records), "batch": batch}
        out |= long_conversation.timeline_flatness(batches)
        entries = await self.redis.memory_usage(store.base(0) + "tl:t:" + ticket, samples=0)
        out["entries_bytes"] = int(entries or 0)
        await store.clear()
        return out

    async def main(self) -> None:
        cfg = self.config
        self.start_stack()
        # a long timeout: the sections read (and flush) big states
        self.redis = Redis.from_url(self.redis_url, socket_timeout=60)
        info = await self.redis.info("server")
        broker_version = (
            subprocess.run(
                [self.broker.argv[0], "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            if self.broker
            else ""
        )
        self.results["machine"] = facts(info["redis_version"], broker_version)
        try:
            await self.produce_all()
            for name in SECTIONS:
                if name not in cfg.sections:
                    continue
                watch = CpuWatch(name)
                print(f"== {name}", file=sys.stderr)
                try:
                    self.results["sections"][name] = await getattr(self, f"section_{name}")()
                except Exception as error:  # report it, run the rest
                    self.results["sections"][name] = {"error": f"{type(error).__name__}: {error}"}
                    print(f"benchmark: {name} failed: {error}", file=sys.stderr)
                finally:
                    self.results["cpu"].append(watch.finish())
                if name == "freshness" and self.live is not None:
                    self.procs.stop(self.live)
                    self.live = None
        finally:
            await self.redis.aclose()
        self.results["datasets"] = self.datasets
        self.results["machine"]["loadavg_end"] = os.getloadavg()

    # -- 14. agents' presence ------------------------------------------------------------

    async def section_presence(self) -> dict[str, Any]:
        """The replay of the throughput data set (spread traffic, no agent events) by this
        tree's code and, with ``BENCH_BASE_CODE`` (a directory holding the ``deskpulse``
        package of the code before), by that code, the two alternating trial by trial on
        the same host: what the agents' presence costs traffic without agent events."""
        cfg = self.config
        n = self.datasets["tp"]["records"]
        base = os.environ.get("BENCH_BASE_CODE")
        contenders: dict[str, Path | None] = {"after": None}
        if base:
            contenders["before"] = Path(base)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        names = list(contenders)
        for t in range(cfg.trials):
            for name in names[t % len(names) :] + names[: t % len(names)]:
                settings = self.settings(f"presence-{name}-{t}", "tp")
                run = await self.run_replay(
                    f"presence-{name}-{t}", settings, n, code=contenders[name]
                )
                runs[name].append(run)
                print(f"trial {t + 1}, {name}: {run['per_second']:,.0f} events/s", file=sys.stderr)
        return {
            "records": n,
            "base": base,
            "runs": {name: [r["per_second"] for r in rs] for name, rs in runs.items()},
            "redis_cores": {name: [r["cores"]["redis"] for r in rs] for name, rs in runs.items()},
            # the replay process's CPU per record: less at the mercy of a busy host than a rate
            "cpu_us_per_record": {
                name: [r["cpu_seconds"] / r["records"] * 1e6 for r in rs]
                for name, rs in runs.items()
            },
            "median": {
                name: statistics.median(r["per_second"] for r in rs) for name, rs in runs.items()
            },
            "loadavg": os.getloadavg(),
        }

    # -- 15. KPIs by agent ------------------------------------------------------------------

    async def section_agents(self) -> dict[str, Any]:
        """The ``agents`` day replayed into a prefix, then ``GET /kpis?window=24h&by=agent``
        over it: CPU and wall time in this process (:meth:`agents_cpu`), then over HTTP
        from a worker on empty topics (:meth:`agents_http`)."""
        assert self.redis is not None
        data = self.datasets["agents"]
        settings = self.settings("agents", "agents")
        out: dict[str, Any] = {"records": data["records"], "queues": AGENTS_QUEUES}
        out["replay"] = await self.run_replay("replay-agents", settings, data["records"])
        out["cpu"] = await self.agents_cpu(settings)
        live = self.settings("agents", "agents-live")
        worker = self.procs.worker("agents-worker", live)
        try:
            await self.warm_up(worker, live)
            out["http"] = await self.agents_http(live)
        finally:
            self.procs.stop(worker)
        return out

    async def agents_cpu(self, settings: Settings) -> dict[str, Any]:
        """``query_kpis(width_s=86400, by=agent)``, JSON encoded, in this process with
        nothing else running in it: the first read (nothing kept), then windows ending at
        another minute each, one minute earlier than the one before (cold: nothing of that
        end kept, the settled sum moved along), then the last window again (warm). CPU
        (``process_time``) and wall time of each; the agents the document holds. Profiled
        (5 cold reads) when the cold p99 misses the budget."""
        cfg = self.config
        assert self.redis is not None
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        newest_s = (await retained_since(store) or (0, time.time()))[1]
        top = (newest_s // 60 + 1) * 60
        document: dict[str, Any] = {}

        async def read(at_s: float) -> tuple[float, float]:
            nonlocal document
            cpu, wall = time.process_time(), time.perf_counter()
            document = await query_kpis(store, width_s=86400, at_s=at_s, by=["agent"])
            orjson.dumps(document)
            return time.process_time() - cpu, time.perf_counter() - wall

        first_cpu, first_wall = await read(top)
        cold = [await read(top - 60 * (k + 1)) for k in range(cfg.agents_reads)]
        last = top - 60 * cfg.agents_reads
        warm = [await read(last) for _ in range(cfg.agents_reads)]
        groups = document["groups"]
        out: dict[str, Any] = {
            "first": {"cpu": first_cpu, "wall": first_wall},
            "cold_cpu": spread([c for c, _ in cold]),
            "cold_wall": spread([w for _, w in cold]),
            "warm_cpu": spread([c for c, _ in warm]),
            "warm_wall": spread([w for _, w in warm]),
            "agents": len(groups),
            "agents_with_samples": sum(1 for g in groups if _agent_has_samples(g)),
            "agents_with_presence": sum(
                1 for g in groups if g["presence"]["occupancy_ratio"] is not None
            ),
        }
        if cfg.wants_profile(out["cold_cpu"]["p99"] >= BUDGET_AGENTS_KPIS_S):
            ends = itertools.count(1)

            async def cold_read() -> None:
                at_s = last - 60 * next(ends)
                orjson.dumps(await query_kpis(store, width_s=86400, at_s=at_s, by=["agent"]))

            out["profile"] = await profiles.pyinstrument_text(cold_read, repeat=5)
        return out

    async def agents_http(self, settings: Settings) -> dict[str, Any]:
        """``GET /kpis?window=24h&by=agent`` from the worker, one after another: the first
        (its read process started by a read before it), then windows ending at another
        minute each (cold: computed, nothing of that end kept), then the last of them again
        after the read cache expired (warm: computed, everything kept). Each followed by
        ``/metrics``: how long the worker's own refreshes of the KPI snapshot took (every
        agent's group of every window, for the KPI topic), which share the 2 cores with the
        read process (a read process runs at a lower CPU priority)."""
        cfg = self.config
        url = f"http://{settings.web_host}:{settings.web_port}"
        base = url + "/kpis?window=24h"
        await asyncio.to_thread(_http_get, base)  # the read process starts with it
        assert self.redis is not None
        store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        newest_s = (await retained_since(store) or (0, time.time()))[1]
        top = (newest_s // 60 + 1) * 60

        #: the worker's refreshes: its refresh time -> how long the refresh took
        refreshes: dict[float, float] = {}

        async def timed(at_s: float) -> float:
            started = time.perf_counter()
            await asyncio.to_thread(_http_get, f"{base}&by=agent&at={format_time(at_s)}")
            took = time.perf_counter() - started
            last = _last_refresh(await asyncio.to_thread(_http_get, url + "/metrics"))
            if last is not None:
                refreshes[last[0]] = last[1]
            return took

        first = await timed(top)
        cold = [await timed(top - 60 * (k + 1)) for k in range(cfg.agents_reads)]
        warm = []
        for _ in range(cfg.agents_reads):
            # past the read process's cache (DESKPULSE_READ_CACHE): computed again
            await asyncio.sleep(max(1.0, settings.read_cache) + 0.1)
            warm.append(await timed(top - 60 * cfg.agents_reads))
        return {
            "first": first,
            "cold": spread(cold),
            "warm": spread(warm),
            "refresh": spread(list(refreshes.values())) if refreshes else None,
        }

    # -- 11. Redis Cluster --------------------------------------------------------------

    async def section_cluster(self) -> dict[str, Any]:
        """The throughput data set through live workers on one redis-server and on a Redis
        Cluster of 3 masters and 3 replicas, each contender once per trial, the order
        rotated from trial to trial (as in the throughput section)."""
        cfg = self.config
        n = self.datasets["tp"]["records"]
        nodes = start_redis_cluster(HOST, self.workdir / "cluster")
        for proc in nodes.processes:
            self.procs.adopt(proc)
        contenders: dict[str, dict[str, Any]] = {
            "single": {"workers": 1, "cluster": False, "min_replicas": 0},
            "cluster": {"workers": 1, "cluster": True, "min_replicas": 0},
            "cluster_wait": {"workers": 1, "cluster": True, "min_replicas": 1},
            "cluster_2_workers": {"workers": 2, "cluster": True, "min_replicas": 0},
        }
        base = os.environ.get("BENCH_BASE_CODE")
        if base:  # the code before, on the same cluster, in the same rotation
            contenders["cluster_before"] = {
                "workers": 1,
                "cluster": True,
                "min_replicas": 0,
                "code": Path(base),
            }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        order = list(contenders)
        try:
            for trial in range(cfg.cluster_trials):
                for name in order[trial % len(order) :] + order[: trial % len(order)]:
                    how = contenders[name]
                    print(f"   cluster: {name}, trial {trial + 1}", file=sys.stderr)
                    runs[name].append(
                        await self.run_cluster_contender(f"cl-{name}-{trial}", nodes, n, **how)
                    )
            masters = sorted(nodes.masters())
        finally:
            nodes.stop()
        out: dict[str, Any] = {
            "events": n,
            "masters": len(masters),
            "replicas": 3,
            "base": base,
        }
        for name, done in runs.items():
            typical = sorted(done, key=lambda r: r["per_second"])[(len(done) - 1) // 2]
            out[name] = typical | {"trials": [r["per_second"] for r in done]}
        return out

    async def run_cluster_contender(
        self,
        name: str,
        nodes: Any,
        n: int,
        *,
        workers: int,
        cluster: bool,
        min_replicas: int,
        code: Path | None = None,
    ) -> dict[str, Any]:
        """``workers`` live workers in one group on the single redis-server or the cluster,
        until they accounted for the ``tp`` data set; events/s from the first event seen
        to the last, and the cores each kind of process used meanwhile. ``code``: a
        directory holding another ``deskpulse`` package for the workers to run."""
        settings = self.settings(name, "tp").model_copy(
            update={
                "redis_url": SecretStr(nodes.url if cluster else self.redis_url),
                "redis_cluster": cluster,
                "redis_min_replicas": min_replicas,
            }
        )
        client = connect(settings, purpose="command")
        redis_procs = list(nodes.processes) if cluster else [self.redis_proc]
        masters = set(nodes.masters()) if cluster else set()
        procs = [
            self.procs.worker(
                f"{name}-{i}", settings.model_copy(update={"web_port": web_port()}), code=code
            )
            for i in range(workers)
        ]
        cpu: dict[str, list[float]] = {}

        def sample() -> list[float]:
            return self.cpu_of(*procs, *redis_procs, self.broker)

        try:
            marks = await wait_applied(
                client,
                settings.redis_prefix,
                settings.topic_partitions,
                n,
                timeout_s=n / 500 + 180,
                proc=procs[0],
                on_first=lambda: cpu.setdefault("first", sample()),
            )
            cpu["done"] = sample()
        finally:
            await client.aclose()
            for proc in procs:
                self.procs.stop(proc)
        seconds = marks["t_done"] - marks["t_first"]
        used = [(b - a) / seconds for a, b in zip(cpu["first"], cpu["done"], strict=True)]
        worker_cores = used[:workers]
        redis_cores = used[workers:-1]
        ports = nodes.ports if cluster else []
        return {
            "workers": workers,
            "cluster": cluster,
            "min_replicas": min_replicas,
            "events": marks["n_done"] - marks["n_first"],
            "seconds": seconds,
            "per_second": (marks["n_done"] - marks["n_first"]) / seconds,
            "cores": {
                "workers": sum(worker_cores),
                "per_worker": worker_cores,
                "redis": sum(redis_cores),
                "masters": sum(c for c, p in zip(redis_cores, ports, strict=False) if p in masters)
                if cluster
                else sum(redis_cores),
                "replicas": sum(
                    c for c, p in zip(redis_cores, ports, strict=False) if p not in masters
                )
                if cluster
                else 0.0,
                "broker": used[-1],
            },
        }

    async def produce_all(self) -> None:
        cfg = self.config
        watch = CpuWatch("produce")
        now = time.time()
        wanted = set(cfg.sections)
        if wanted & {"throughput", "freshness", "cluster", "presence"}:
            span = 3000.0
            await self.produce_dataset(
                "tp",
                SimConfig(
                    seed=1, start_s=now - span - 120, duration_s=span, rate=cfg.records / span
                ),
            )
        if wanted & {"kpis", "reads", "board"}:
            await self.produce_dataset(
                "day",
                SimConfig(seed=2, start_s=now - 86400 - 60, duration_s=86400, rate=cfg.day_rate),
            )
        if "scrape" in wanted:
            await self.produce_dataset("scrape", scrape_sim(now))
        if "groups" in wanted:
            await self.produce_dataset("groups", groups_sim(now, cfg.groups_history))
        if "agents" in wanted:
            await self.produce_dataset("agents", agents_sim(now, cfg.agents_rate))
        self.results["cpu"].append(watch.finish())


def scrape_sim(now: float) -> SimConfig:
    """A data set with many channel x queue x priority groups: 10,000+ series."""
    channels = {
        "email": 0.2,
        "web": 0.15,
        "phone": 0.1,
        "social": 0.05,
        "api": 0.05,
        "chat": 0.3,
        "sms": 0.1,
        "whatsapp": 0.05,
    }
    queues = {f"queue-{i:02d}": 1.0 for i in range(4)}
    return SimConfig(
        seed=3,
        start_s=now - 3600 - 60,
        duration_s=3600,
        rate=40.0,
        channels=channels,
        queues=queues,
        response_scale=0.05,
    )


def agents_sim(now: float, rate: float) -> SimConfig:
    """A day of :data:`AGENTS_QUEUES` queues with the agents' shifts and presence, tickets
    moved now and then: 24 agents a queue, each on shift (and answering) a third of it."""
    return SimConfig(
        seed=15,
        start_s=now - 86400 - 60,
        duration_s=86400,
        rate=rate,
        queues={f"queue-{i:02d}": 1.0 for i in range(AGENTS_QUEUES)},
        presence=True,
        moves=0.05,
    )


def groups_sim(now: float, records: int) -> SimConfig:
    """A day of ``records`` events over 300 queues x 5 channels x 4 priorities."""
    return SimConfig(
        seed=4,
        start_s=now - 86400 - 60,
        duration_s=86400,
        rate=records / 86400,
        channels=dict.fromkeys(GROUPS_CHANNELS, 1.0),
        queues={f"queue-{i:03d}": 1.0 for i in range(GROUPS_QUEUES)},
    )


#: the key families of a partition the soak weighs (``MEMORY USAGE``, sampled), and the
#: KPI buckets (``b:``/``r:``/``B:``/``R:``, listed in ``bidx``) together
SOAK_FAMILIES = ("conv", "convexp", "due", "held", "tot", "bidx", "meta", "breach_out", "buckets")


async def _family_mib(redis: Redis, prefix: str, partitions: int) -> dict[str, float]:
    """MiB of Redis memory per key family of the prefix's partitions (``MEMORY USAGE`` with
    its default sampling: an estimate for the large hashes, good enough to see which grows)."""
    out = dict.fromkeys(SOAK_FAMILIES, 0.0)
    for p in range(partitions):
        base = f"{prefix}:{{p{p}}}:"
        async with redis.pipeline(transaction=False) as pipe:
            for name in SOAK_FAMILIES[:-1]:
                pipe.memory_usage(base + name)
            pipe.zrange(base + "bidx", 0, -1)
            replies = await pipe.execute()
        for name, used in zip(SOAK_FAMILIES[:-1], replies, strict=False):
            out[name] += (used or 0) / 1048576
        suffixes = [text(s) for s in replies[-1]]
        if suffixes:
            async with redis.pipeline(transaction=False) as pipe:
                for suffix in suffixes:
                    pipe.memory_usage(base + suffix)
                used_buckets = await pipe.execute()
            out["buckets"] += sum(u or 0 for u in used_buckets) / 1048576
    return out


def soak_summary(samples: list[dict[str, Any]], retention_s: int, soak_s: float) -> dict[str, Any]:
    if len(samples) < 2:
        return {}
    steady_from = max(min(retention_s + 120, soak_s * 2 / 3), soak_s / 2)
    steady = [s for s in samples if s["t"] >= steady_from] or samples[len(samples) // 2 :]

    def slope(key: str, rows: list[dict[str, Any]]) -> float:
        """Least-squares MiB per hour."""
        if len(rows) < 2:
            return 0.0
        ts = [r["t"] for r in rows]
        vs = [r[key] for r in rows]
        mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
        den = sum((t - mt) ** 2 for t in ts) or 1e-9
        return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den * 3600

    out: dict[str, Any] = {"steady_from_s": steady[0]["t"], "steady_samples": len(steady)}
    for key in (
        "rss_mib",
        "engine_rss_mib",
        "redis_mib",
        "redis_dataset_mib",
        "conversations",
        "state_bytes",
        "ticket_state_bytes",
        "chat_state_bytes",
        "events_seen",
        "buckets",
        "broker_rss_mib",
        *(f"mib_{name}" for name in SOAK_FAMILIES),
    ):
        values = [s.get(key, 0) for s in samples]
        out[key] = {
            "start": values[0],
            "peak": max(values),
            "end": values[-1],
            "steady_start": steady[0][key],
            "slope_per_h": slope(key, samples),
            "steady_slope_per_h": slope(key, steady),
        }

    def pooled(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
        """The mean of every ticket state the samples took (each sample's mean weighs by
        how many it took), and how many."""
        count = sum(r.get("tickets_sampled", 0) for r in rows)
        if not count:
            return None, 0
        total = sum(
            r["ticket_state_bytes"] * r["tickets_sampled"] for r in rows if r.get("tickets_sampled")
        )
        return total / count, count

    # the budget holds the steady phase to it (the ramp-up's young tickets would pull the
    # mean down); the whole run's mean is beside it
    sampled = [s for s in samples if s.get("tickets_sampled")]
    mean, count = pooled(steady)
    whole, whole_count = pooled(samples)
    out["ticket_state"] = {
        "mean": mean,
        "sampled": count,
        "samples": sum(1 for s in steady if s.get("tickets_sampled")),
        "whole_mean": whole,
        "whole_sampled": whole_count,
        "peak_sample_mean": max((s["ticket_state_bytes"] for s in sampled), default=None),
        "end_sample_mean": sampled[-1]["ticket_state_bytes"] if sampled else None,
        "id_chars": max((s.get("ticket_id_chars", 0) for s in sampled), default=0),
        "ok": mean is not None and mean <= BUDGET_TICKET_STATE_BYTES,
    }
    span_h = (steady[-1]["t"] - steady[0]["t"]) / 3600
    for key in ("rss_mib", "redis_mib", *(f"mib_{name}" for name in SOAK_FAMILIES)):
        base = out[key]["steady_start"] or 1e-9
        out[key]["steady_growth"] = out[key]["steady_slope_per_h"] * span_h / base
    out["flat"] = (
        out["rss_mib"]["steady_growth"] <= SOAK_FLAT_GROWTH
        and out["redis_mib"]["steady_growth"] <= SOAK_FLAT_GROWTH
    )
    return out


def _agent_has_samples(group: dict[str, Any]) -> bool:
    """Whether an agent's group counts a response, a chat, a survey or a solve."""
    return bool(
        group["first_response"]["count"]
        or group["next_response"]["count"]
        or group["chats"]["answered"]
        or group["csat"]["responses"]
        or group["tickets_solved"]
    )


def _max_span_ms(settings: Settings) -> int:
    """The event time a batch of the backlog section may span: less than the retention,
    so that no event of a batch is late for the batch's newest (only quick runs, with a
    few thousand tickets over the week, have batches this long)."""
    return settings.retention // 2 * 1000


def _backlog_counts(document: dict[str, Any]) -> dict[str, int]:
    """A KPI document's backlog over all its groups, by status and in total."""
    return {
        name: sum(group["backlog"][name] for group in document["groups"])
        for name in (*backlog_state.OPEN_STATUSES, "total")
    }


def _engine_spy(worker_pid: int, spy: Path) -> profiles.PySpy | None:
    """py-spy on a worker's engine process (its child), if it runs one."""
    children = child_pids(worker_pid)
    if not children:
        return None
    return profiles.PySpy(children[0], spy.with_name(spy.stem + "-engine.txt"))


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _flush_stats(settings: Settings) -> dict[str, float]:
    """The worker's own flush histograms: batches committed, their events and seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _http_get(_metrics_url(settings)).decode()
    wanted = {
        "deskpulse_flush_duration_seconds_count": "flushes",
        "deskpulse_flush_duration_seconds_sum": "seconds",
        "deskpulse_batch_events_sum": "events",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


def _worker_parts_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of a worker process and of its engine and read processes, each alone."""
    hz = os.sysconf("SC_CLK_TCK")

    def cpu_s(one: int) -> float:
        try:
            stat = Path(f"/proc/{one}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / hz  # utime, stime

    parts = {"worker": cpu_s(pid)}
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            module = argv[2] if len(argv) > 2 else b""
            name = {
                b"deskpulse.streams.offload": "engine",
                b"deskpulse.streams.outputs": "outputs",
                b"deskpulse.streams.reads": "reads",
            }.get(module)
            if name is not None:
                parts[name] = cpu_s(child)
    return parts


def _module_of(pid: int) -> str:
    """The deskpulse module a worker's child runs (``offload``, ``outputs``, ``reads``), or
    ``""``."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        module = argv[2].decode() if len(argv) > 2 else ""
        return module.removeprefix("deskpulse.streams.")
    return ""


def _sample_value(body: bytes, name: str) -> float | None:
    """The value of the unlabelled sample ``name`` in an exposition."""
    prefix = name.encode() + b" "
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def _last_refresh(body: bytes) -> tuple[float, float] | None:
    """``(when, how long)`` of the worker's last KPI refresh, from its ``/metrics``; None
    before its first."""
    stamp = _sample_value(body, "deskpulse_kpi_refresh_timestamp_seconds")
    took = _sample_value(body, "deskpulse_kpi_refresh_duration_seconds")
    return None if stamp is None or took is None else (stamp, took)


def _read_counts(url: str) -> dict[str, float]:
    """``deskpulse_kpi_reads_total`` of the worker at ``url``, by result."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(_http_get(url + "/metrics").decode()):
        for sample in family.samples:
            if sample.name == "deskpulse_kpi_reads_total":
                counts[sample.labels["result"]] = sample.value
    return counts


def _metrics_url(settings: Settings) -> str:
    return f"http://{settings.web_host}:{settings.web_port}/metrics"


def _series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def _read_markers(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            with contextlib.suppress(orjson.JSONDecodeError):  # a line being written
                rows.append(orjson.loads(line))
    return rows


def _as_async(function: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> Any:
        return function()

    return run


def _deskpulse_argv() -> list[str]:
    script = Path(sys.executable).parent / "deskpulse"
    return [str(script)] if script.exists() else [sys.executable, "-m", "deskpulse.streams.cli"]


def missing_profilers(config: Config) -> list[str]:
    """What the profiles need and is not installed (none when ``BENCH_PROFILE=never``)."""
    if config.profile == "never":
        return []
    missing = [] if profiles.py_spy_bin() else ["py-spy"]
    if importlib.util.find_spec("pyinstrument") is None:
        missing.append("pyinstrument")
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    config = Config()
    chosen = list(sys.argv[1:] if argv is None else argv)
    if chosen:  # `python -m benchmark.run reads`: these sections only
        unknown = [name for name in chosen if name not in SECTIONS]
        if unknown:
            print(
                f"benchmark: no section {', '.join(unknown)}; there are {', '.join(SECTIONS)}",
                file=sys.stderr,
            )
            return 2
        config.sections = tuple(chosen)
    missing = missing_profilers(config)
    if missing:
        # found now, not after half an hour of trials: a miss is profiled at the end
        print(
            f"benchmark: {', '.join(missing)} not installed; `make bench` installs the bench "
            "extra (pip install -e '.[bench]'), or set BENCH_PROFILE=never",
            file=sys.stderr,
        )
        return 2
    workdir = Path(os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="deskpulse-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(config, workdir)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    command = "python -m benchmark.run"
    knobs = " ".join(f"{k}={shlex.quote(v)}" for k, v in config.knobs().items())
    print(f"benchmark: work directory {workdir}", file=sys.stderr)
    try:
        asyncio.run(bench.main())
    except KeyboardInterrupt:
        print("benchmark: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        bench.procs.stop_all()
    (workdir / "results.json").write_bytes(
        orjson.dumps(bench.results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    write_report(bench.results, config.output, command=(knobs + " " + command).strip())
    print(
        f"benchmark: wrote {config.output} (raw results: {workdir / 'results.json'})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
