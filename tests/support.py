"""Helpers for tests that run deskpulse as real processes and talk to it over the wire.

:func:`settings_env` turns a :class:`~models.settings.Settings` into the environment a
``python -m deskpulse.streams.cli ...`` subprocess needs to build the very same settings;
:class:`WorkerProcess` runs the worker that way. :func:`produce`, :class:`StreamProducer`
(records in paced chunks, in the background) and :func:`consume_all` speak Kafka like an
upstream producer and a downstream reader would; :func:`scrape` and
:func:`sample` read ``/metrics`` like Prometheus does.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, SecretStr

from deskpulse.models.settings import ENV_PREFIX, Settings, format_duration
from deskpulse.streams.devtools.embedded import ManagedProcess
from deskpulse.streams.devtools.simulate import Record

__all__ = [
    "BREACH_FIELDS",
    "HttpResponse",
    "StartWorker",
    "WorkerProcess",
    "consume_all",
    "end_offsets",
    "group_offsets",
    "http_get",
    "produce",
    "run_cli",
    "sample",
    "samples",
    "scrape",
    "settings_env",
    "sync_redis",
    "wait_until",
]

T = TypeVar("T")

#: The type of the ``start_worker`` fixture of tests/conftest.py.
StartWorker = Callable[..., "WorkerProcess"]

#: The line Faust logs once the consumer group has assigned this worker its partitions.
WORKER_READY_LINE = "Worker ready"

#: The keys of an ``sla.breached`` alert as it lies on the alerts topic.
BREACH_FIELDS = {
    "schema_version",
    "type",
    "event_id",
    "ticket_id",
    "metric",
    "instance",
    "policy",
    "priority",
    "channel",
    "queue",
    "target_seconds",
    "started_at",
    "created_at",
    "breached_at",
}


def _env_value(name: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if name == "windows":
        return ",".join(format_duration(width) for width in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))
    if isinstance(value, tuple | list):
        return json.dumps(
            [
                item.model_dump(mode="json") if isinstance(item, BaseModel) else item
                for item in value
            ]
        )
    if isinstance(value, dict):
        return json.dumps(
            {
                key: item.model_dump(mode="json") if isinstance(item, BaseModel) else item
                for key, item in value.items()
            }
        )
    raise TypeError(f"no environment spelling for {name}={value!r}")


def stamp(t_s: float) -> str:
    """``t_s`` (seconds since the epoch) as an event's ``occurred_at``, to the millisecond."""
    return (
        datetime.fromtimestamp(t_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """``os.environ`` without any ``DESKPULSE_*``, plus every field of ``settings`` spelled out.

    A subprocess started with this environment builds settings equal to ``settings``
    (fields that are ``None`` stay unset). ``extra`` adds or overrides variables.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        env[ENV_PREFIX + name.upper()] = _env_value(name, value)
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path | str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m deskpulse.streams.cli ARGS`` to completion; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "deskpulse.streams.cli", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.2,
    *,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises :class:`AssertionError` after ``timeout_s``; ``message`` (or what it returns)
    says what was waited for, e.g. with a log tail.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"not true within {timeout_s:g}s: {text}")
        time.sleep(interval_s)


def wait_for_progress(
    read: Callable[[], T],
    done: Callable[[T], bool],
    stall_s: float,
    interval_s: float = 0.5,
    *,
    message: str | Callable[[], str] = "progress",
) -> T:
    """Call ``read`` until ``done`` says its value is enough, and return that value.

    For a worker working through a backlog: how long that takes depends on the host's load
    (on a busy 2-core CI host, ten times what it takes alone), so this fails only when
    ``read`` has returned the same value for ``stall_s`` seconds. The test's own timeout
    bounds the whole wait.
    """
    value = read()
    last_change = time.monotonic()
    while not done(value):
        time.sleep(interval_s)
        latest = read()
        if latest != value:
            value, last_change = latest, time.monotonic()
        elif time.monotonic() - last_change >= stall_s:
            text = message() if callable(message) else message
            raise AssertionError(f"no progress for {stall_s:g}s (at {value}): {text}")
    return value


class HttpResponse:
    """Status, headers and body of one HTTP response (error statuses included)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {key.lower(): value for key, value in headers.items()}
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.body[:200]!r}>"


def http_get(url: str, timeout_s: float = 5.0) -> HttpResponse | None:
    """GET ``url``; the response whatever its status, or ``None`` if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return HttpResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, dict(error.headers), error.read())
    except (urllib.error.URLError, OSError):
        return None


class ServedProcess:
    """A server binary the tests start (Prometheus, Alertmanager): its process, its HTTP
    address, and a readiness wait that names the process and its log when it fails."""

    def __init__(self, name: str, process: ManagedProcess, url: str) -> None:
        self.name = name
        self.process = process
        self.url = url

    def describe(self) -> str:
        state = "running" if self.process.running else f"exited {self.process.returncode}"
        return f"{self.name} {state}; log tail:\n{self.process.log_tail(40)}"

    def wait_ready(self, timeout_s: float = 60, path: str = "/-/ready") -> None:
        def ready() -> bool:
            if not self.process.running:
                raise AssertionError(f"{self.name} exited: {self.describe()}")
            response = http_get(self.url + path, timeout_s=2)
            return response is not None and response.status == 200

        wait_until(ready, timeout_s, 0.25, message=self.describe)

    def stop(self) -> None:
        self.process.stop(timeout_s=15)


def scrape(port: int, host: str = "127.0.0.1") -> str:
    """The text of ``GET /metrics``; raises :class:`AssertionError` unless it is a 200."""
    response = http_get(f"http://{host}:{port}/metrics")
    assert response is not None, f"nothing answers on {host}:{port}"
    assert response.status == 200, response
    return response.text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (with its ``_total``/``_bucket`` suffix) and its labels."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the sample ``name`` whose labels are exactly ``labels``, else ``None``."""
    wanted = dict(labels or {})
    for found, value in samples(text, name):
        if found == wanted:
            return value
    return None


async def produce(
    settings: Settings, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[RecordMetadata]:
    """Send ``(key, value)`` records in order and wait for the broker; where each landed."""
    # Tansu refuses aiokafka's InitProducerId (version 0): no idempotence from aiokafka.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


def records_producer(settings: Settings, request_timeout_s: float = 40.0) -> AIOKafkaProducer:
    """A producer of simulated records as an upstream service would run one (not started)."""
    # Tansu answers InitProducerId with an error: no idempotence.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=False,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
        request_timeout_ms=int(request_timeout_s * 1000),
    )


async def send_records(
    producer: AIOKafkaProducer, settings: Settings, records: Sequence[Record]
) -> list[tuple[str, int, int]]:
    """Send records in order to their topics, keyed by conversation, and wait for the
    broker; where each one landed: ``(topic, partition, offset)``."""
    futures = [
        await producer.send(settings.topic_for(r.topic_kind), value=r.value, key=r.key)
        for r in records
    ]
    return [(meta.topic, meta.partition, meta.offset) for meta in await asyncio.gather(*futures)]


async def produce_records(
    settings: Settings, records: Sequence[Record]
) -> list[tuple[str, int, int]]:
    """Send records in order over a producer of their own; where each one landed."""
    producer = records_producer(settings)
    await producer.start()
    try:
        return await send_records(producer, settings, records)
    finally:
        await producer.stop()


class StreamProducer(threading.Thread):
    """Sends ``records`` in ``chunks`` with ``pause_s`` between them, in the background, so
    faults land mid-stream.

    One producer for the whole run, with a request timeout well beyond the longest outage
    a test injects, so a frozen broker holds the stream up instead of failing it (and no
    timed-out request is retried into a duplicate). ``positions[i]`` is where
    ``records[i]`` landed: ``(topic, partition, offset)``.
    """

    def __init__(
        self,
        settings: Settings,
        records: Sequence[Record],
        *,
        chunks: int,
        pause_s: float,
        request_timeout_s: float = 120.0,
        before_chunk: Callable[[int, int], object] | None = None,
    ) -> None:
        super().__init__(name="stream-producer", daemon=True)
        self.settings = settings
        self.records = list(records)
        self.chunks = max(1, chunks)
        self.pause_s = pause_s
        self.request_timeout_s = request_timeout_s
        #: called (in a thread) before each chunk with (its number, how many): a test holds
        #: the stream there until its fault has landed, or paces it by its workers' progress
        self.before_chunk = before_chunk
        self.positions: list[tuple[str, int, int]] = []
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # re-raised by finish()
            self.error = error

    async def _run(self) -> None:
        producer = records_producer(self.settings, self.request_timeout_s)
        await producer.start()
        try:
            size = math.ceil(len(self.records) / self.chunks)
            count = math.ceil(len(self.records) / size)
            for number, start in enumerate(range(0, len(self.records), size)):
                if self.before_chunk is not None:
                    await asyncio.to_thread(self.before_chunk, number, count)
                chunk = self.records[start : start + size]
                self.positions += await send_records(producer, self.settings, chunk)
                self.sent += len(chunk)
                await asyncio.sleep(self.pause_s)
        finally:
            await producer.stop()

    def finish(self, timeout_s: float = 180) -> None:
        """Wait for the last chunk; re-raise what went wrong in the thread."""
        self.join(timeout_s)
        assert not self.is_alive(), f"producer still running after {timeout_s}s"
        if self.error is not None:
            raise AssertionError(f"producing failed: {self.error!r}") from self.error
        assert self.sent == len(self.records), (self.sent, len(self.records))


async def consume_all(
    bootstrap: str,
    topic: str,
    expected_count: int,
    timeout_s: float,
    *,
    settle_s: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning, read without a consumer group.

    Reads until ``expected_count`` records arrived (or ``timeout_s`` passed), then
    ``settle_s`` longer, so a record beyond the expected ones shows up too.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = await asyncio.wait_for(_partitions_of(consumer, topic), timeout_s)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is None and len(records) >= expected_count:
                settle_until = now + settle_s
            end = settle_until if settle_until is not None else deadline
            if now >= end:
                break
            batches = await consumer.getmany(timeout_ms=int(min(0.5, end - now) * 1000) + 1)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The end (next) offset of every partition of ``topics``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(await asyncio.wait_for(_partitions_of(consumer, topic), 30))
        ]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}


async def group_offsets(
    bootstrap: str, group: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int | None]:
    """The offsets consumer group ``group`` has committed (the next it will read), or None.

    Asked through a consumer of that group that never joins it (the admin client's
    OffsetFetch does not parse Tansu's answer).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {
            (topic, partition): await consumer.committed(TopicPartition(topic, partition))
            for topic, partition in partitions
        }
    finally:
        await consumer.stop()


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)


class WorkerChecks:
    """What a test asks of a worker, wherever it runs (:class:`WorkerProcess`, or
    ``tests.inproc.InprocWorker`` in the test process): its web port, ready or not.
    A subclass has ``settings`` and gives ``running``, ``log()`` and ``describe()``."""

    settings: Settings

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def log(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def get(self, path: str, timeout_s: float = 5.0) -> HttpResponse | None:
        """``GET path`` on the worker's web port (``None`` if nothing answers)."""
        return http_get(self.base_url + path, timeout_s)

    def is_ready(self) -> bool:
        """``/readyz`` answers 200 and the consumer group has assigned the partitions."""
        response = self.get("/readyz", timeout_s=3)
        return response is not None and response.status == 200 and WORKER_READY_LINE in self.log()

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Block until :meth:`is_ready`; fail at once, with the log, if the worker stopped."""

        def check() -> bool:
            if not self.running:
                raise AssertionError(f"the worker stopped before it was ready: {self.describe()}")
            return self.is_ready()

        wait_until(check, timeout_s, 0.25, message=self.describe)


class WorkerProcess(WorkerChecks):
    """``python -m deskpulse.streams.cli worker`` as a real subprocess, logging to ``log_path``.

    Runs in its own process group (a :class:`~streams.devtools.embedded.ManagedProcess`). Use it
    as a context manager: leaving stops it (SIGTERM, then SIGKILL after a grace period).
    """

    def __init__(
        self,
        settings: Settings,
        workdir: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        name: str = "worker",
        command: Sequence[str] = ("-m", "deskpulse.streams.cli", "worker"),
    ) -> None:
        self.settings = settings
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env) if env is not None else settings_env(settings)
        self.log_path = self.workdir / f"{name}.log"
        # cwd is the test's own directory: a developer's .env must not leak in
        self.process = ManagedProcess(
            name,
            [sys.executable, *command],
            self.log_path,
            cwd=self.workdir,
            env=self.env,
        )

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)

    def describe(self) -> str:
        """State and log tail, for assertion messages."""
        state = "running" if self.running else f"exited with status {self.returncode}"
        return f"worker {state}; last lines of {self.log_path}:\n{self.log_tail()}"

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, wait up to ``timeout_s`` (then SIGKILL); the exit status."""
        return self.process.stop(timeout_s=timeout_s)

    def kill(self) -> int:
        """SIGKILL, as a crash would; the exit status."""
        return self.process.kill()

    def interrupt(self) -> None:
        """SIGINT to the worker process alone."""
        if self.running:
            os.kill(self.process.pid, signal.SIGINT)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(timeout_s=15)


def sync_redis(settings: Settings, **options: Any) -> redis.Redis:
    """A sync client of the settings' Redis for a test's own reads: a cluster client
    when ``DESKPULSE_REDIS_CLUSTER`` says so (the commands a test uses are the same)."""
    url = settings.redis_url.get_secret_value()
    if settings.redis_cluster:
        client: Any = redis.RedisCluster.from_url(url, **options)
        return client  # type: ignore[no-any-return]
    return redis.Redis.from_url(url, **options)


def wait_for_claims(settings: Settings, timeout_s: float = 60) -> bool:
    """Wait until breach detection has handled every deadline and warning passed by now:
    no partition's ``due`` set holds a ticket scored at or before the moment this was
    called (a running worker's check claims them within ``DESKPULSE_BREACH_CHECK_INTERVAL``
    once it has caught up). ``False`` if some were still due at the timeout (a stopped
    worker claims nothing): the comparison that follows then shows what is missing."""
    if settings.breach_check_interval > timeout_s:
        return False  # no check would come in time (a test that turned them off)
    now_ms = int(time.time() * 1000)
    client = sync_redis(settings)
    keys = [f"{settings.redis_prefix}:{{p{p}}}:due" for p in range(settings.topic_partitions)]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if all(client.zcount(key, "-inf", now_ms) == 0 for key in keys):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)
    finally:
        client.close()
