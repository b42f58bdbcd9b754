"""The worker as operators run it, on a real broker and redis-server, fed over Kafka and
read over HTTP, the dead-letter topic and the CLI: the real worker, run in this process
(the ``inproc_worker`` fixture, tests/inproc.py). What needs a process of its own (the engine
process's child killed) is in tests/system/test_worker.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from deskpulse.models.events import LAST_RESORT_REASON, REJECTION_REASONS
from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import free_port, start_broker, start_redis
from deskpulse.streams.query import format_time
from tests.conftest import HOST, create_topics
from tests.inproc import InprocWorker
from tests.support import (
    consume_all,
    end_offsets,
    group_offsets,
    produce,
    run_cli,
    samples,
    scrape,
    settings_env,
    stamp,
    wait_until,
)

MAX_RECORD_BYTES = 1024


def fast(settings: Settings, **update: Any) -> Settings:
    """``settings`` tuned for tests: short batches, a small record limit."""
    return settings.model_copy(
        update={
            "batch_within": 0.1,
            "max_record_bytes": MAX_RECORD_BYTES,
            "metrics_refresh_interval": 1,
            **update,
        }
    )


def event(type_: str, t_s: float, **fields: Any) -> bytes:
    return orjson.dumps(
        {"event_id": uuid.uuid4().hex, "type": type_, "occurred_at": stamp(t_s), **fields}
    )


@dataclass(frozen=True)
class Bad:
    """A record the worker must dead-letter, where it goes and why."""

    kind: str  # tickets | chats | surveys | agents
    key: bytes | None
    value: bytes | None
    reason: str


def bad_records(now_s: float) -> list[Bad]:
    """One record for every rejection reason, spread over the four input topics."""
    at = now_s - 120
    return [
        Bad(
            "tickets",
            b"T-big",
            event("ticket.created", at, ticket_id="T-big", note="x" * MAX_RECORD_BYTES),
            "too_large",
        ),
        Bad("tickets", b"T-enc", b'{"type": "ticket.created", "q": "caf\xe9"}', "invalid_encoding"),
        Bad(
            "tickets",
            b"T-naive",
            event("ticket.created", at, ticket_id="T-naive").replace(b'Z"', b'"'),
            "naive_timestamp",
        ),
        Bad(
            "tickets",
            b"T-future",
            event("ticket.created", now_s + 86400, ticket_id="T-future"),
            "future_timestamp",
        ),
        # a valid chat event, but on the tickets topic
        Bad("tickets", b"C-lost", event("chat.requested", at, chat_id="C-lost"), "wrong_topic"),
        # times of year 0 or 10000 in UTC, once through each decoder (seven fractional
        # digits send a record to pydantic's): they used to stop the worker
        Bad(
            "tickets",
            b"T-year0",
            event("ticket.created", at, ticket_id="T-year0").replace(
                stamp(at).encode(), b"0001-01-01T00:00:00.1234567+14:00"
            ),
            "invalid_timestamp",
        ),
        Bad(
            "tickets",
            b"T-year0-prio",
            event("ticket.created", at, ticket_id="T-year0-prio", priority="critical").replace(
                stamp(at).encode(), b"0001-01-01T00:00:00+14:00"
            ),
            "invalid_value",
        ),
        Bad(
            "chats",
            b"C-year10k",
            event("chat.requested", at, chat_id="C-year10k").replace(
                stamp(at).encode(), b"9999-12-31T23:59:59-12:00"
            ),
            "invalid_timestamp",
        ),
        # a key twice: a ticket to a consumer that keeps the first, a chat to one that
        # keeps the last
        Bad(
            "tickets",
            b"T-twice",
            event("ticket.created", at, ticket_id="T-twice")[:-1]
            + b',"type":"chat.requested","chat_id":"T-twice"}',
            "invalid_json",
        ),
        Bad("chats", b"C-json", b'{"type": "chat.requested", ', "invalid_json"),
        Bad("chats", None, b"[1, 2, 3]", "not_an_object"),
        Bad("chats", b"C-notype", orjson.dumps({"event_id": "x", "chat_id": "C"}), "missing_type"),
        Bad("chats", b"C-type", event("chat.transferred", at, chat_id="C-type"), "unknown_type"),
        Bad(
            "chats",
            b"C-prio",
            event("chat.requested", at, chat_id="C-prio", priority="critical"),
            "invalid_value",
        ),
        Bad(
            "surveys",
            b"T1",
            event("survey.responded", at, score=5, ticket_id="T1"),
            "missing_field",
        ),
        Bad(
            "surveys",
            b"T1",
            event("survey.responded", at, kind="csat", score=5, ticket_id="T1").replace(
                stamp(at).encode(), b"last tuesday"
            ),
            "invalid_timestamp",
        ),
        Bad(
            "surveys",
            b"nobody",
            event("survey.responded", at, kind="csat", score=4),
            "missing_conversation",
        ),
        # a tombstone: no value at all
        Bad("surveys", b"T2", None, "invalid_json"),
        Bad(
            "agents",
            b"A1",
            event("agent.status_changed", at, agent_id="A1", status="lunch"),
            "invalid_value",
        ),
        # a ticket event on the agents topic, and an agent's on the tickets topic
        Bad("agents", b"T9", event("ticket.created", at, ticket_id="T9"), "wrong_topic"),
        Bad(
            "tickets",
            b"A2",
            event("agent.status_changed", at, agent_id="A2", status="busy"),
            "wrong_topic",
        ),
    ]


def good_records(now_s: float) -> dict[str, list[tuple[bytes, bytes]]]:
    at = now_s - 120
    return {
        "tickets": [
            (b"T1", event("ticket.created", at, ticket_id="T1", channel="Email", priority="high")),
            (b"T2", event("ticket.created", at + 1, ticket_id="T2", channel="web")),
            (b"T1", event("ticket.replied", at + 60, ticket_id="T1", author_role="agent")),
        ],
        "chats": [
            (b"C1", event("chat.requested", at, chat_id="C1")),
            (b"C1", event("chat.accepted", at + 10, chat_id="C1", agent_id="a1")),
        ],
        "surveys": [
            (b"T1", event("survey.responded", at + 90, kind="csat", score=5, ticket_id="T1")),
        ],
        "agents": [
            (b"a1", event("agent.status_changed", at - 60, agent_id="a1", status="available")),
            (b"a1", event("agent.status_changed", at + 10, agent_id="a1", status="busy")),
            (b"a2", event("agent.status_changed", at, agent_id="a2", status="away")),
        ],
    }


def counter_values(text: str, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(found[label] for label in labels): value for found, value in samples(text, name)}


def processed_total(port: int) -> float:
    return sum(v for _, v in samples(scrape(port), "deskpulse_events_processed_total"))


def kpis(settings: Settings, workdir: Path, *args: str) -> dict[str, Any]:
    done = run_cli(["kpis", "--json", *args], settings_env(settings), cwd=workdir)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    tuned = fast(settings)
    create_topics(tuned)
    return tuned


@pytest.fixture
def worker(fast_settings: Settings, inproc_worker: Callable[..., InprocWorker]) -> InprocWorker:
    return inproc_worker(fast_settings)


def test_bad_records_are_dead_lettered_and_the_worker_goes_on(
    fast_settings: Settings, worker: InprocWorker, tmp_path: Path
) -> None:
    settings = fast_settings
    now_s = time.time()
    bad = bad_records(now_s)
    # every reason but the last resort, which no known record earns
    assert {b.reason for b in bad} == set(REJECTION_REASONS) - {LAST_RESORT_REASON}
    good = good_records(now_s)

    # Interleave: each topic gets its valid records and its bad ones in one stream.
    where: dict[tuple[str, int, int], Bad] = {}

    async def send_all() -> None:
        for kind in ("tickets", "chats", "surveys", "agents"):
            mine = [b for b in bad if b.kind == kind]
            records: list[tuple[bytes | None, bytes | None]] = []
            owners: list[Bad | None] = []
            for index in range(max(len(mine), len(good[kind]))):
                if index < len(good[kind]):
                    records.append(good[kind][index])
                    owners.append(None)
                if index < len(mine):
                    records.append((mine[index].key, mine[index].value))
                    owners.append(mine[index])
            metadata = await produce(settings, settings.topic_for(kind), records)
            for owner, meta in zip(owners, metadata, strict=True):
                if owner is not None:
                    where[(meta.topic, meta.partition, meta.offset)] = owner

    asyncio.run(send_all())

    dead = asyncio.run(
        consume_all(settings.kafka_bootstrap, settings.topic_deadletter, len(bad), 60)
    )
    seen: dict[tuple[str, int, int], Any] = {}
    for record in dead:
        headers = {name: value.decode() for name, value in record.headers}
        source = (
            headers["deskpulse-source-topic"],
            int(headers["deskpulse-source-partition"]),
            int(headers["deskpulse-source-offset"]),
        )
        assert source not in seen, f"dead-lettered twice: {source}"
        seen[source] = record
        expected = where.get(source)
        assert expected is not None, f"dead-lettered a record that is not bad: {source} {record}"
        assert record.value == expected.value, source  # byte for byte
        assert record.key == expected.key, source
        assert headers["deskpulse-reason"] == expected.reason, (source, headers)
        assert headers["deskpulse-reason-detail"], source
    assert set(seen) == set(where), f"missing from the dead-letter topic: {set(where) - set(seen)}"

    valid_count = sum(len(records) for records in good.values())
    wait_until(
        lambda: processed_total(settings.web_port) >= valid_count,
        30,
        message=worker.describe,
    )
    text = scrape(settings.web_port)
    rejected = counter_values(text, "deskpulse_events_rejected_total", "topic", "reason")
    expected_rejected: dict[tuple[str, str], float] = {}
    for (topic, _, _), b in where.items():
        expected_rejected[(topic, b.reason)] = expected_rejected.get((topic, b.reason), 0) + 1
    assert rejected == expected_rejected
    processed = counter_values(text, "deskpulse_events_processed_total", "topic", "type")
    expected_processed: dict[tuple[str, str], float] = {}
    for kind, records in good.items():
        for _, value in records:
            key = (settings.topic_for(kind), orjson.loads(value)["type"])
            expected_processed[key] = expected_processed.get(key, 0) + 1
    assert processed == expected_processed

    # Still alive, and a valid event afterwards is applied.
    assert worker.running, worker.describe()
    later = event("ticket.created", time.time() - 30, ticket_id="T3", channel="Phone")
    asyncio.run(produce(settings, settings.topic_tickets, [(b"T3", later)]))
    wait_until(
        lambda: processed_total(settings.web_port) >= valid_count + 1,
        30,
        message=worker.describe,
    )
    total = kpis(settings, tmp_path, "--window", "1h")
    assert [group["key"] for group in total["groups"]] == [{}]
    group = total["groups"][0]
    assert group["tickets_created"] == 3
    assert group["first_response"]["count"] == 1
    assert group["chats"]["requested"] == 1
    assert group["chats"]["answered"] == 1
    assert group["csat"]["responses"] == 1
    assert group["agents"] == {
        "available": 0,
        "busy": 1,
        "away": 1,
        "offline": 0,
        "occupancy_ratio": group["agents"]["occupancy_ratio"],
    }
    assert 0 < group["agents"]["occupancy_ratio"] < 1
    by_channel = kpis(settings, tmp_path, "--window", "1h", "--by", "channel")
    created = {g["key"]["channel"]: g["tickets_created"] for g in by_channel["groups"]}
    assert created == {"email": 1, "web": 1, "phone": 1, "chat": 0}
    assert worker.running, worker.describe()
    assert worker.stop() == 0, worker.describe()


def test_health_endpoints_and_metrics_format(worker: InprocWorker) -> None:
    health = worker.get("/healthz")
    assert health is not None
    assert health.status == 200, health
    assert json.loads(health.body) == {"status": "ok"}
    ready = worker.get("/readyz")
    assert ready is not None
    assert ready.status == 200, ready
    metrics = worker.get("/metrics")
    assert metrics is not None
    assert metrics.status == 200, metrics
    content_type = metrics.headers["content-type"]
    assert content_type.startswith("text/plain"), content_type
    assert "version=" in content_type, content_type
    names = {found for found in re.findall(r"^# TYPE (\S+) ", metrics.text, re.MULTILINE)}
    assert {"deskpulse_events_processed_total", "deskpulse_events_rejected_total"} <= names, names
    assert "deskpulse_redis_up 1.0" in metrics.text


_RETRY = re.compile(r"connecting to Redis failed \(attempt (\d+), retrying in ([\d.]+)s\)")


def test_unreachable_redis_is_waited_for(
    fast_settings: Settings,
    tmp_path: Path,
    workdir: Path,
    inproc_worker: Callable[..., InprocWorker],
) -> None:
    port = free_port(HOST)  # nothing listens here until the test starts redis-server
    settings = fast_settings.model_copy(update={"redis_url": SecretStr(f"redis://{HOST}:{port}/0")})
    worker = inproc_worker(settings, ready=False)

    def retries() -> list[tuple[int, float]]:
        return [(int(a), float(d)) for a, d in _RETRY.findall(worker.log())]

    wait_until(lambda: len(retries()) >= 4, 30, message=worker.describe)
    attempts = retries()
    assert [a for a, _ in attempts] == list(range(1, len(attempts) + 1))
    delays = [d for _, d in attempts]
    assert all(b > a for a, b in itertools.pairwise(delays)), delays

    not_ready = wait_until(lambda: worker.get("/readyz"), 30, message=worker.describe)
    assert not_ready.status == 503, not_ready
    assert worker.running, worker.describe()
    time.sleep(2)  # a crash loop would show by now
    assert worker.running, worker.describe()
    assert worker.get("/readyz").status == 503  # type: ignore[union-attr]

    with start_redis(HOST, port, workdir / "redis"):
        worker.wait_ready(60)
        assert "connecting to Redis works again" in worker.log()
        created = event("ticket.created", time.time() - 30, ticket_id="R1")
        asyncio.run(produce(settings, settings.topic_tickets, [(b"R1", created)]))
        wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)
        assert kpis(settings, tmp_path, "--window", "1h")["groups"][0]["tickets_created"] == 1
        assert worker.stop() == 0, worker.describe()


def test_unreachable_broker_is_waited_for(
    settings: Settings, tmp_path: Path, workdir: Path, inproc_worker: Callable[..., InprocWorker]
) -> None:
    port = free_port(HOST)  # the broker is started here later
    settings = fast(settings, kafka_bootstrap=f"{HOST}:{port}")
    worker = inproc_worker(settings, ready=False)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert worker.running, worker.describe()
        time.sleep(0.5)
    assert "Unable" in worker.log() or "failed" in worker.log(), worker.describe()

    with start_broker(HOST, port, workdir / "broker"):
        worker.wait_ready(90)
        created = event("ticket.created", time.time() - 30, ticket_id="B1")
        asyncio.run(produce(settings, settings.topic_tickets, [(b"B1", created)]))
        wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)
        assert worker.stop() == 0, worker.describe()


def test_redis_outage_while_running_is_ridden_out(
    fast_settings: Settings,
    tmp_path: Path,
    workdir: Path,
    inproc_worker: Callable[..., InprocWorker],
) -> None:
    port = free_port(HOST)
    settings = fast_settings.model_copy(update={"redis_url": SecretStr(f"redis://{HOST}:{port}/0")})
    redis_dir = workdir / "redis"
    redis = start_redis(HOST, port, redis_dir, appendonly=True, appendfsync="always")
    try:
        worker = inproc_worker(settings, timeout_s=60)
        first = event("ticket.created", time.time() - 60, ticket_id="O1")
        asyncio.run(produce(settings, settings.topic_tickets, [(b"O1", first)]))
        wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)

        redis.kill()  # as a crash would
        wait_until(
            lambda: getattr(worker.get("/readyz"), "status", None) == 503,
            15,
            message=worker.describe,
        )
        during = [
            (f"O{n}".encode(), event("ticket.created", time.time() - 30, ticket_id=f"O{n}"))
            for n in range(2, 6)
        ]
        asyncio.run(produce(settings, settings.topic_tickets, during))
        wait_until(lambda: "from Redis failed" in worker.log(), 30, message=worker.describe)
        time.sleep(2)
        assert worker.running, worker.describe()
        assert processed_total(settings.web_port) == 1

        redis = start_redis(HOST, port, redis_dir, appendonly=True, appendfsync="always")
        wait_until(lambda: processed_total(settings.web_port) >= 5, 60, message=worker.describe)
        worker.wait_ready(30)
        document = kpis(settings, tmp_path, "--window", "1h")
        assert document["groups"][0]["tickets_created"] == 5
        assert worker.stop() == 0, worker.describe()
    finally:
        redis.stop()


def test_consumer_lag_is_exported(
    settings: Settings, tmp_path: Path, inproc_worker: Callable[..., InprocWorker]
) -> None:
    # lag is refreshed with the breach check; a short interval keeps the test short
    settings = fast(settings, breach_check_interval=1)
    create_topics(settings)
    worker = inproc_worker(settings, timeout_s=60)
    created = event("ticket.created", time.time() - 30, ticket_id="L1")
    asyncio.run(produce(settings, settings.topic_tickets, [(b"L1", created)]))
    wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)

    def lag() -> dict[tuple[str, str], float]:
        text = scrape(settings.web_port)
        return counter_values(text, "deskpulse_consumer_lag_messages", "topic", "partition")

    expected = {
        (topic, str(partition)): 0.0
        # the repartition topic is read too (records forwarded to their partition)
        for topic in (*settings.input_topics, settings.topic_repartition)
        for partition in range(settings.topic_partitions)
    }
    wait_until(lambda: lag() == expected, 15, message=lambda: f"lag: {lag()}")


def caught_up(settings: Settings) -> bool:
    """Whether the worker's group has committed every input partition to its end."""

    async def check() -> bool:
        ends = await end_offsets(settings.kafka_bootstrap, settings.input_topics)
        busy = [tp for tp, end in ends.items() if end > 0]
        committed = await group_offsets(settings.kafka_bootstrap, settings.app_id, busy)
        return all((committed[tp] or 0) >= ends[tp] for tp in busy)

    return asyncio.run(check())


def test_redelivery_to_a_new_group_changes_nothing(
    fast_settings: Settings, tmp_path: Path, inproc_worker: Callable[..., InprocWorker]
) -> None:
    """Everything read again (a new group from the earliest offsets, as after a lost commit):
    no KPI moves, nothing is dead-lettered twice, nothing is counted again."""
    settings = fast_settings
    at = time.time() - 120
    tickets = [
        (b"D1", event("ticket.created", at, ticket_id="D1", channel="email")),
        (b"D2", event("ticket.created", at, ticket_id="D2", channel="web")),
        (b"D1", event("ticket.replied", at + 30, ticket_id="D1", author_role="agent")),
        (b"D3", b"{broken"),
        (b"C9", event("chat.requested", at, chat_id="C9")),  # wrong topic
    ]
    chats = [(b"C1", event("chat.requested", at, chat_id="C1"))]
    first = inproc_worker(settings, name="first", timeout_s=60)
    asyncio.run(produce(settings, settings.topic_tickets, tickets))
    asyncio.run(produce(settings, settings.topic_chats, chats))
    wait_until(lambda: processed_total(settings.web_port) >= 4, 30, message=first.describe)
    wait_until(lambda: caught_up(settings), 30, 0.5, message=first.describe)
    assert first.stop() == 0, first.describe()
    # both reads at one instant: C1 is still waiting, and its wait grows with the clock
    read_at = format_time(time.time() + 60)
    before = kpis(settings, tmp_path, "--window", "1h", "--at", read_at, "--by", "channel")
    assert sum(g["tickets_created"] for g in before["groups"]) == 2

    again = settings.model_copy(update={"app_id": settings.app_id + "-again"})
    second = inproc_worker(again, name="second", timeout_s=60)
    wait_until(lambda: caught_up(again), 30, 0.5, message=second.describe)
    text = scrape(again.web_port)
    assert sum(v for _, v in samples(text, "deskpulse_events_processed_total")) == 0
    assert sum(v for _, v in samples(text, "deskpulse_events_rejected_total")) == 0
    dead = asyncio.run(
        consume_all(settings.kafka_bootstrap, settings.topic_deadletter, 2, 30, settle_s=2)
    )
    reasons = sorted(dict(r.headers)["deskpulse-reason"].decode() for r in dead)
    assert reasons == ["invalid_json", "wrong_topic"]
    assert second.stop() == 0, second.describe()
    after = kpis(settings, tmp_path, "--window", "1h", "--at", read_at, "--by", "channel")
    assert after["groups"] == before["groups"]


def test_the_consumer_fetch_wait_is_ours_not_fausts(settings: Settings) -> None:
    """Faust hard-codes fetch_max_wait_ms=1500; the worker's consumer uses the setting."""
    from deskpulse.streams.app import create_app

    async def started_fetch_wait(wait_s: float) -> int:
        app = create_app(settings.model_copy(update={"kafka_fetch_max_wait": wait_s}))
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.start()  # against the real broker: the fetcher is built here
        try:
            return int(consumer._fetcher._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(started_fetch_wait(0.1)) == 100
    assert asyncio.run(started_fetch_wait(2.0)) == 2000
