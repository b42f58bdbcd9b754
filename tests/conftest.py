"""Fixtures shared by the three tiers of tests, and the tiers' markers.

tests/unit starts nothing; tests/integration talks to the session's broker and redis-server
and runs the worker in the test process where no second process is needed
(``inproc_worker``); tests/system starts subprocess workers (faults, crashes, signals, the
demo). Each test there is marked ``unit``, ``integration`` or ``system`` after its folder,
so ``-m`` selects a tier too.
Under ``pytest -n N`` the tests are handed out as tests/scheduling.py plans: tests sharing a
module fixture together, every other test on its own, longest first.

The session fixtures start a real broker and a real redis-server on free loopback ports (one
of each per pytest-xdist worker). Each test gets its own topics, Kafka app id and Redis key
prefix through ``settings`` (or ``new_settings``). Set ``DESKPULSE_TEST_KAFKA_BOOTSTRAP`` to
run against an external Kafka instead of Tansu.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import (
    ManagedProcess,
    RedisClusterNodes,
    free_port,
    start_broker,
    start_redis,
    start_redis_cluster,
)
from deskpulse.streams.kafka_admin import ensure_topics, wait_for_kafka
from tests.inproc import InprocWorker, children, port_is_free, undecodable_batches_reported
from tests.scheduling import DurationRecorder, make_scheduler
from tests.support import WorkerProcess

HOST = "127.0.0.1"
EXTERNAL_BOOTSTRAP_ENV = "DESKPULSE_TEST_KAFKA_BOOTSTRAP"
TIERS = ("unit", "integration", "system")
# fixtures that start or reach a service: a unit test that asks for one is in the wrong tier
SERVICE_FIXTURES = frozenset(
    {"broker", "redis_server", "redis_url", "redis_client", "settings", "redis_cluster"}
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder it is in; refuse tests outside the tiers."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts
        tier = parts[0] if len(parts) > 1 else None
        if tier not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test belongs in tests/unit, tests/integration or tests/system"
            )
        if tier == "unit" and SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid}: a unit test starts no service; move it to tests/integration"
            )
        item.add_marker(getattr(pytest.mark, tier))


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the process the test reports reach
        config.pluginmanager.register(DurationRecorder(config), "deskpulse-durations")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Work units of tests sharing set-up, the longest first (tests/scheduling.py), for
    ``-n N`` (``--dist load``, or ``loadgroup``, whose groups pytest 9.2 loses); another
    ``--dist`` gets pytest-xdist's own scheduler."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    return make_scheduler(config, log)


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster for the whole session: 3 masters, each with a replica (6
    redis-server processes). Tests that kill nodes start a cluster of their own."""
    with start_redis_cluster(HOST, tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


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


def new_settings(bootstrap: str, redis_url: str, *, prefix: str = "t", **update: Any) -> Settings:
    """Settings on ``bootstrap`` and ``redis_url`` with topics, app id, Redis prefix and web
    port of their own (four partitions unless ``update`` says otherwise)."""
    uid = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "redis_url": SecretStr(redis_url),
        "redis_prefix": f"{prefix}{uid}",
        "app_id": f"deskpulse-{uid}",
        "topic_tickets": f"{uid}.support.tickets",
        "topic_chats": f"{uid}.support.chats",
        "topic_surveys": f"{uid}.support.surveys",
        "topic_agents": f"{uid}.support.agents",
        "topic_deadletter": f"{uid}.deskpulse.deadletter",
        "topic_kpis": f"{uid}.deskpulse.kpis",
        "topic_alerts": f"{uid}.deskpulse.alerts",
        "topic_partitions": 4,
        "web_port": free_port(HOST),
        # the embedded broker completes a group join after half the session timeout, and a
        # member killed with SIGKILL is replaced only once its session expired: 2 s and
        # 4 s rather than 5 s and 10 s at each worker start (heartbeats every second)
        "kafka_session_timeout": 4,
        # breaches claimed within 2 s of their deadline passing, not 15: an oracle
        # comparison waits for them
        "breach_check_interval": 2,
    }
    return Settings(**(values | update))


@pytest.fixture
def settings(broker: str, redis_url: str) -> Settings:
    """Settings on the session's broker and Redis, with topics and prefix unique to this test."""
    return new_settings(broker, redis_url)


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


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(settings, workdir=None, *, env=None, name="worker", ready=True,
    timeout_s=60, command=None)`` starts ``deskpulse worker`` (or ``command``) as a
    subprocess, waiting until it is ready unless ``ready=False``; every worker it started is
    stopped when the test ends, however it ends. A test stops one itself to restart it or
    to check its exit status; ``kill()`` crashes one."""
    started: list[WorkerProcess] = []

    def start(
        settings: Settings,
        workdir: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        name: str = "worker",
        ready: bool = True,
        timeout_s: float = 60,
        command: Sequence[str] | None = None,
    ) -> WorkerProcess:
        options: dict[str, Any] = {"env": env, "name": name}
        if command is not None:
            options["command"] = command
        worker = WorkerProcess(settings, workdir or tmp_path / name, **options)
        started.append(worker)
        if ready:
            worker.wait_ready(timeout_s)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop(timeout_s=15)


@pytest.fixture
def inproc_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., InprocWorker]]:
    """``inproc_worker(settings, *, name="worker", ready=True, timeout_s=60)`` runs the real
    worker (``deskpulse worker``'s app, Service, agents and pages) in a thread of this
    process with an event loop of its own (tests/inproc.py says why and what differs),
    waiting until it is ready unless ``ready=False``. Every worker it started is stopped
    when the test ends; a test stops one itself to check its exit status or to start
    another. Afterwards nothing of theirs is left: no thread, no child process (the KPI
    read process), no bound web port; a leak fails the test."""
    started: list[InprocWorker] = []
    threads_before = set(threading.enumerate())
    children_before = children()

    def overdue(service: Any) -> None:
        # production ends the process here (streams/app.py _stop_overdue); a test process
        # must live on, so the stop is failed instead
        for worker in started:
            worker.overdue = True

    monkeypatch.setattr("deskpulse.streams.app._stop_overdue", overdue)

    def start(
        settings: Settings, *, name: str = "worker", ready: bool = True, timeout_s: float = 60
    ) -> InprocWorker:
        worker = InprocWorker(settings, name=name)
        started.append(worker)
        worker.start()
        if ready:
            worker.wait_ready(timeout_s)
        return worker

    root = logging.getLogger()
    level = root.level
    # the worker's INFO lines, as the command logs them (tests read its log)
    root.setLevel(min(level, logging.INFO) or logging.INFO)
    try:
        with undecodable_batches_reported():
            yield start
            for worker in reversed(started):
                worker.stop(timeout_s=30)
    finally:
        root.setLevel(level)
    leaks = _leaks(started, threads_before, children_before)
    assert not leaks, f"the in-process workers left behind: {leaks}"


def _leaks(
    workers: Sequence[InprocWorker],
    threads_before: set[threading.Thread],
    children_before: set[int],
) -> list[str]:
    """What stopped in-process workers left running: threads, child processes, ports."""

    def found() -> list[str]:
        threads = [
            t.name
            for t in set(threading.enumerate()) - threads_before
            if t.is_alive() and t.name != "deskpulse-log-repeats"  # the process's, by design
        ]
        pids = sorted(children() - children_before)
        ports = [
            w.settings.web_port for w in workers if not port_is_free(HOST, w.settings.web_port)
        ]
        return [
            *(f"thread {name}" for name in threads),
            *(f"child process {pid}" for pid in pids),
            *(f"web port {port} bound" for port in ports),
        ]

    # threads and children end a moment after the loop closes (joins, reaping)
    deadline = time.monotonic() + 10
    while (leaks := found()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return leaks
