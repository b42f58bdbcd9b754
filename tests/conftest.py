"""Session fixtures that start a real broker and a real redis-server on free loopback ports.

Each test gets its own topics, Kafka app id and Redis key prefix through ``settings``.
Set ``DESKPULSE_TEST_KAFKA_BOOTSTRAP`` to run against an external Kafka instead of Tansu.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_broker, start_redis
from deskpulse.streams.kafka_admin import ensure_topics, wait_for_kafka

HOST = "127.0.0.1"
EXTERNAL_BOOTSTRAP_ENV = "DESKPULSE_TEST_KAFKA_BOOTSTRAP"


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: where it listens and its process."""

    url: str
    port: int
    process: ManagedProcess


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a Kafka broker: external if configured, else Tansu started here."""
    external = os.environ.get(EXTERNAL_BOOTSTRAP_ENV)
    if external:
        asyncio.run(wait_for_kafka(external, timeout_s=30))
        yield external
        return
    port = free_port(HOST)
    # start_broker raises EmbeddedStartError carrying the broker's log tail.
    with start_broker(HOST, port, tmp_path_factory.mktemp("tansu")):
        yield f"{HOST}:{port}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server (no AOF, no snapshots) for the whole session."""
    port = free_port(HOST)
    with start_redis(HOST, port, tmp_path_factory.mktemp("redis")) as process:
        yield RedisServer(url=f"redis://{HOST}:{port}/0", port=port, process=process)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, its database flushed for this test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on the flushed database."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def settings(broker: str, redis_url: str) -> Settings:
    """Settings on the session's broker and Redis, with topics and prefix unique to this test."""
    uid = uuid.uuid4().hex[:10]
    return Settings(
        kafka_bootstrap=broker,
        redis_url=redis_url,
        redis_prefix=f"t{uid}",
        app_id=f"deskpulse-{uid}",
        topic_tickets=f"{uid}.support.tickets",
        topic_chats=f"{uid}.support.chats",
        topic_surveys=f"{uid}.support.surveys",
        topic_deadletter=f"{uid}.deskpulse.deadletter",
        topic_kpis=f"{uid}.deskpulse.kpis",
        topic_alerts=f"{uid}.deskpulse.alerts",
        topic_partitions=4,
        web_port=free_port(HOST),
    )


def create_topics(settings: Settings) -> dict[str, int]:
    """Create the topics of ``settings``: inputs co-partitioned, KPIs compacted; the counts."""
    topics = dict.fromkeys(settings.input_topics, settings.topic_partitions)
    topics[settings.topic_repartition] = settings.topic_partitions  # co-partitioned too
    topics |= {settings.topic_deadletter: 1, settings.topic_kpis: 1, settings.topic_alerts: 1}
    return asyncio.run(
        ensure_topics(settings.kafka_bootstrap, topics, compacted={settings.topic_kpis})
    )


@pytest.fixture
def make_topics() -> Callable[[Settings], dict[str, int]]:
    """``make_topics(settings)`` creates that test's topics and returns their partition counts."""
    return create_topics


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory for processes a test starts itself."""
    path = tmp_path / "work"
    path.mkdir()
    return path
