"""Records the dead-letter topic cannot take as they are, dead letters repeated by retries,
and a worker that must stop (and take its engine process with it) whatever it is stuck on.

Worker tests run ``deskpulse worker`` as a real subprocess on the session's broker and a
redis-server, with the engine in-process and in its child process (an oversized record
through a worker run in the test process is in
tests/integration/test_hardening_deadletter.py). Tests of the dead-letter producer itself
use the real broker too; where they need the broker to refuse a size or drop a connection
on cue (Tansu enforces no ``max.message.bytes``), a thin wrapper around the real producer
fails those sends the way aiokafka reports a broker's refusal.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidMessageError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from redis.asyncio import Redis

from deskpulse.exporters.kafka import SIZE_ERRORS, TRUNCATED_KEY_BYTES, KafkaPublisher
from deskpulse.exporters.prometheus import PipelineMetrics
from deskpulse.models.errors import Abandoned, DeadLetterUnavailable, RejectedEvent
from deskpulse.models.settings import Settings
from deskpulse.streams.app import STOP_DEADLINE_S
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_broker, start_redis
from deskpulse.streams.devtools.simulate import Record
from deskpulse.streams.engine import DeadLetterTrouble, Engine, SourceRecord
from deskpulse.streams.store import Store
from tests.conftest import HOST
from tests.e2e_support import Dataset, build_dataset, check_counters, progress, wait_for_state
from tests.faults_support import read_dead_letters, tune
from tests.integration.test_hardening_deadletter import (
    BIG_BYTES,
    big_ticket,
    check_oversized_record,
    headers_of,
    source_of,
)
from tests.support import (
    StartWorker,
    StreamProducer,
    WorkerProcess,
    consume_all,
    sample,
    stamp,
    wait_until,
)


def engine_pid(worker: WorkerProcess) -> int:
    """The pid of the worker's engine process, from its start-up line."""
    found = wait_until(
        lambda: re.search(r"engine process (\d+) started", worker.log()),
        60,
        message=worker.describe,
    )
    assert found is not None
    return int(found.group(1))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture  # data only, built in well under a second: no shared set-up
def dataset() -> Dataset:
    """About 2,000 records of simulated traffic (duplicates, disorder, malformed ones)."""
    return build_dataset(seed=53, rate=0.2)


# -- an oversized valid record among normal traffic ------------------------------------------


def test_an_oversized_record_is_dead_lettered_truncated_with_an_engine_process(
    settings: Settings, start_worker: StartWorker, tmp_path: Path
) -> None:
    check_oversized_record(
        settings.model_copy(update={"engine_process": True}),
        lambda tuned: start_worker(tuned, tmp_path / "worker", timeout_s=90),
    )


# -- stopping a worker that is stuck retrying ------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, ManagedProcess]]:
    """A redis-server of this test's own, to hang with SIGSTOP."""
    port = free_port(HOST)
    process = start_redis(HOST, port, tmp_path / "redis")
    try:
        yield f"redis://{HOST}:{port}/0", process
    finally:
        process.stop()


def stuck_worker(
    start_worker: StartWorker,
    settings: Settings,
    dataset: Dataset,
    redis: ManagedProcess,
    workdir: Path,
) -> tuple[WorkerProcess, StreamProducer]:
    """A worker that applied some traffic and is now retrying a batch against a hung Redis."""
    worker = start_worker(settings, workdir, timeout_s=90)
    producer = StreamProducer(settings, dataset.records[:200], chunks=1, pause_s=0)
    producer.start()
    producer.finish()
    wait_until(lambda: progress(settings) > 0, 60, message=worker.describe)
    redis.pause()  # SIGSTOP: connections hang instead of failing
    rest = StreamProducer(settings, dataset.records[200:], chunks=4, pause_s=0.1)
    rest.start()
    wait_until(
        lambda: re.search(r"partition \d+ .*failed \(attempt 2", worker.log()),
        90,
        message=worker.describe,
    )
    return worker, rest


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_sigterm_stops_a_worker_stuck_retrying_and_nothing_is_lost(
    settings: Settings,
    make_topics: Any,
    dataset: Dataset,
    tmp_path: Path,
    own_redis: tuple[str, ManagedProcess],
    engine_process: bool,
    start_worker: StartWorker,
) -> None:
    url, redis = own_redis
    settings = tune(settings, engine_process=engine_process, redis_url=SecretStr(url))
    make_topics(settings)
    worker, rest = stuck_worker(start_worker, settings, dataset, redis, tmp_path / "w1")
    child = engine_pid(worker) if engine_process else None
    try:
        started = time.monotonic()
        status = worker.stop(timeout_s=60)
        took = time.monotonic() - started
        print(f"\nSIGTERM with a batch stuck retrying Redis: exit {status} in {took:.1f}s")
        assert took < 25, f"stopped only after {took:.1f}s: {worker.describe()}"
        assert status == 0, worker.describe()
        assert "left unapplied" in worker.log(), worker.describe()
        if child is not None:
            wait_until(lambda: not alive(child), 5, message=f"engine process {child} lives on")
    finally:
        worker.stop(timeout_s=5)
        redis.resume()
        rest.finish()
    # what the stopped worker left unapplied is applied by the next one, exactly once
    second = start_worker(settings, tmp_path / "w2", ready=False)
    counts = wait_for_state(settings, dataset, timeout_s=120, describe=second.describe)
    check_counters(counts, dataset)


def test_the_engine_process_dies_with_a_killed_worker(
    settings: Settings,
    make_topics: Any,
    dataset: Dataset,
    tmp_path: Path,
    own_redis: tuple[str, ManagedProcess],
    start_worker: StartWorker,
) -> None:
    url, redis = own_redis
    settings = tune(settings, engine_process=True, redis_url=SecretStr(url))
    make_topics(settings)
    # the child is busy retrying: it would not notice its parent is gone by itself
    worker, rest = stuck_worker(start_worker, settings, dataset, redis, tmp_path / "w1")
    child = engine_pid(worker)
    try:
        assert alive(child)
        os.kill(worker.process.pid, signal.SIGKILL)  # the worker alone, not its group
        wait_until(lambda: not worker.running, 10, message=worker.describe)
        wait_until(lambda: not alive(child), 10, message=f"engine process {child} lives on")
    finally:
        worker.stop(timeout_s=5)
        if alive(child):
            os.kill(child, signal.SIGKILL)
        redis.resume()
        rest.finish()


# -- dead letters held by a broker that does not answer ---------------------------------------


@pytest.fixture  # data only, built in well under a second: no shared set-up
def small() -> Dataset:
    """About 350 records of simulated traffic."""
    return build_dataset(seed=61, rate=0.03)


@pytest.fixture
def frozen(
    settings: Settings,
    make_topics: Any,
    small: Dataset,
    tmp_path: Path,
    own_redis: tuple[str, ManagedProcess],
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Settings, WorkerProcess, ManagedProcess, set[tuple[str, int, int]]]]:
    """A worker whose dead letters wait for a frozen broker, once ``/readyz`` and
    ``deskpulse_deadletter_up`` say so: (settings, worker, broker, where the rejects are)."""
    url, redis = own_redis
    port = free_port(HOST)
    broker = start_broker(HOST, port, tmp_path / "broker")  # its own: this one is frozen
    settings = tune(
        settings,
        engine_process=request.param,
        redis_url=SecretStr(url),
        kafka_bootstrap=f"{HOST}:{port}",
    )
    make_topics(settings)
    poison = [Record("tickets", f"P{i}".encode(), b"{not json", None) for i in range(5)]
    records = small.records + poison
    worker = WorkerProcess(settings, tmp_path / "worker")
    try:
        worker.wait_ready(90)
        # Redis hangs first, so the batches are read and wait to load; the broker freezes
        # next, then Redis comes back: the batches go on to their dead letters, which wait
        redis.pause()
        producer = StreamProducer(settings, records, chunks=1, pause_s=0)
        producer.start()
        producer.finish()
        wait_until(
            lambda: re.search(r"loading partition \d+ .*failed \(attempt 1", worker.log()),
            60,
            message=worker.describe,
        )
        broker.pause()
        redis.resume()
        seen: dict[str, Any] = {}

        def reported() -> bool:
            ready, metrics = worker.get("/readyz"), worker.get("/metrics")
            if ready is None or metrics is None or metrics.status != 200:
                return False
            seen["readyz"], seen["up"] = ready, sample(metrics.text, "deskpulse_deadletter_up")
            return ready.status == 503 and "dead letters" in ready.text and seen["up"] == 0.0

        wait_until(reported, 45, 0.5, message=lambda: f"{seen} {worker.describe()}")
        assert "not acknowledged" in seen["readyz"].text, seen["readyz"]
        assert "dead letters are held up" in worker.log()
        rejects = {
            producer.positions[i]
            for i, record in enumerate(records)
            if record.occurred_at_s is None
        }
        yield settings, worker, broker, rejects
    finally:
        worker.stop(timeout_s=15)
        broker.resume()
        broker.stop()
        redis.resume()


MODES = pytest.mark.parametrize(
    "frozen", [False, True], ids=["in-process", "engine-process"], indirect=True
)


@pytest.mark.slow
@MODES
def test_dead_letters_held_by_a_frozen_broker_are_reported_and_sent_once_it_answers(
    frozen: tuple[Settings, WorkerProcess, ManagedProcess, set[tuple[str, int, int]]],
) -> None:
    settings, worker, broker, rejects = frozen
    broker.resume()

    def recovered() -> bool:
        metrics = worker.get("/metrics")
        return metrics is not None and sample(metrics.text, "deskpulse_deadletter_up") == 1.0

    wait_until(recovered, 90, 0.5, message=worker.describe)
    letters = read_dead_letters(settings, len(rejects))
    sources = Counter(source_of(letter) for letter in letters)
    assert set(sources) == rejects, sorted(set(sources) ^ rejects)[:5]
    assert max(sources.values()) == 1, sources.most_common(3)
    assert "no dead letters are held up any more" in worker.log()
    wait_until(worker.is_ready, 90, 0.5, message=worker.describe)
    assert worker.stop() == 0, worker.describe()


@pytest.mark.slow
@MODES
def test_sigterm_stops_a_worker_whose_dead_letters_wait_for_a_frozen_broker(
    frozen: tuple[Settings, WorkerProcess, ManagedProcess, set[tuple[str, int, int]]],
    small: Dataset,
    tmp_path: Path,
    start_worker: StartWorker,
) -> None:
    settings, worker, broker, rejects = frozen
    started = time.monotonic()
    status = worker.stop(timeout_s=60)
    took = time.monotonic() - started
    print(f"\nSIGTERM with dead letters held by a frozen broker: exit {status} in {took:.1f}s")
    assert took < STOP_DEADLINE_S + 5, f"stopped only after {took:.1f}s: {worker.describe()}"
    # 0: a clean stop; 1: the deadline ended a stop Faust could not finish (its consumer's
    # last commit to the frozen broker, say), and said so
    assert status == 0 or (status == 1 and "did not stop within" in worker.log()), worker.describe()
    broker.resume()
    # the next worker applies what the first left, and dead-letters what it had not yet
    # (a dead letter the frozen broker took after all is there twice: once more at most)
    second = start_worker(settings, tmp_path / "second", ready=False)
    counts = wait_for_state(settings, small, timeout_s=120, describe=second.describe)
    check_counters(counts, small)
    letters = read_dead_letters(settings, len(rejects))
    sources = Counter(source_of(letter) for letter in letters)
    assert set(sources) == rejects, sorted(set(sources) ^ rejects)[:5]
    assert max(sources.values()) <= 2, sources.most_common(3)


# -- the dead-letter producer and the engine, on the real broker and Redis ------------------


class Refusing:
    """The real producer, except that the broker refuses what ``refuse`` names for a record
    (its send's future fails, as aiokafka reports a broker's answer). Tansu enforces no
    ``max.message.bytes`` and drops no connection on cue; all else goes to the real broker.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        refuse: Callable[[bytes | None, bytes | None], BaseException | None],
    ) -> None:
        self.producer = producer
        self.refuse = refuse
        #: (key, value, the refusal or None) of every send, in order
        self.sent: list[tuple[bytes | None, bytes | None, BaseException | None]] = []

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **kwargs: Any
    ) -> asyncio.Future[Any]:
        error = self.refuse(key, value)
        self.sent.append((key, value, error))
        if error is None:
            sent: asyncio.Future[Any] = await self.producer.send(
                topic, value=value, key=key, **kwargs
            )
            return sent
        refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        refused.set_exception(error)
        return refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)


def run_engine(
    settings: Settings,
    scenario: Callable[[Engine, KafkaPublisher, Any], Any],
    refuse: Callable[[bytes | None, bytes | None], BaseException | None] | None = None,
) -> Any:
    """Run ``scenario(engine, publisher, refusing)`` with a real store and producer."""

    async def main() -> Any:
        redis = Redis.from_url(settings.redis_url.get_secret_value())
        publisher = KafkaPublisher(settings)
        await publisher.start()
        refusing = None
        if refuse is not None:
            refusing = Refusing(publisher.producer, refuse)
            publisher._producer = refusing
        try:
            store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
            await store.check_config()
            metrics = PipelineMetrics(CollectorRegistry())
            engine = Engine(settings, store, publisher, metrics)
            return await scenario(engine, publisher, refusing)
        finally:
            await publisher.stop()
            await redis.aclose()

    return asyncio.run(main())


def dead_letters_by_offset(settings: Settings, expected: int) -> dict[int, Any]:
    """The dead letters of partition 0 of the tickets topic by source offset (each once)."""
    letters = asyncio.run(
        consume_all(settings.kafka_bootstrap, settings.topic_deadletter, expected, 30)
    )
    offsets = Counter(source_of(letter)[2] for letter in letters)
    assert max(offsets.values(), default=1) == 1, f"dead-lettered more than once: {offsets}"
    return {source_of(letter)[2]: letter for letter in letters}


def created(key: str, at_s: float) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"ev-{key}",
            "type": "ticket.created",
            "occurred_at": stamp(at_s),
            "ticket_id": key,
        }
    )


def test_one_batch_dead_letters_each_reject_once_whatever_its_size_or_key(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)
    topic, now = settings.topic_tickets, time.time()
    big = big_ticket("T-1", BIG_BYTES, now - 60)
    long_key = b"K" * 1_500_000
    batch = [
        SourceRecord(topic, 0, 0, b"T-1", None),  # a tombstone
        SourceRecord(topic, 0, 1, b"T-1", big),  # valid, but over DESKPULSE_MAX_RECORD_BYTES
        SourceRecord(topic, 0, 2, None, None),  # a tombstone without key
        SourceRecord(topic, 0, 3, b"T-2", b"{not json"),
        SourceRecord(topic, 0, 4, b"T-2", created("T-2", now - 30)),
        SourceRecord(topic, 0, 5, long_key, b"[]"),  # the key alone is over the limit
    ]

    async def scenario(engine: Engine, publisher: KafkaPublisher, _: Any) -> Any:
        await asyncio.wait_for(engine.process(batch), 60)
        # the same batch again, as after a crash before Kafka's commit: nothing is resent
        await asyncio.wait_for(engine.process(batch), 60)
        return engine.metrics

    metrics = run_engine(settings, scenario)
    letters = dead_letters_by_offset(settings, 5)
    assert sorted(letters) == [0, 1, 2, 3, 5]
    assert letters[0].key == b"T-1" and letters[0].value is None
    oversized = headers_of(letters[1])
    assert (oversized["deskpulse-reason"], oversized["deskpulse-truncated"]) == (
        "too_large",
        "true",
    )
    assert oversized["deskpulse-original-bytes"] == str(BIG_BYTES)
    assert big.startswith(letters[1].value)
    assert letters[2].key is None and letters[2].value == b""  # the client sends no (None, None)
    assert "tombstone" in headers_of(letters[2])["deskpulse-reason-detail"]
    assert letters[3].value == b"{not json"
    cut = headers_of(letters[5])
    assert cut["deskpulse-original-key-bytes"] == str(len(long_key))
    assert letters[5].key == long_key[:TRUNCATED_KEY_BYTES] and letters[5].value == b"[]"
    for offset in (0, 2, 3):
        assert "deskpulse-truncated" not in headers_of(letters[offset])
    registry = metrics.registry
    rejected = {
        reason: registry.get_sample_value(
            "deskpulse_events_rejected_total", {"topic": topic, "reason": reason}
        )
        for reason in ("too_large", "invalid_json", "not_an_object")
    }
    assert rejected == {"too_large": 1.0, "invalid_json": 3.0, "not_an_object": 1.0}
    processed = {"topic": topic, "type": "ticket.created"}
    assert registry.get_sample_value("deskpulse_events_processed_total", processed) == 1.0


def invalid(
    count: int, size: int = 9, topic: str = "t"
) -> list[tuple[SourceRecord, RejectedEvent]]:
    """``count`` rejected records of ``size`` bytes at offsets 0.., keys k0, k1, ..."""
    return [
        (
            SourceRecord(topic, 0, i, f"k{i}".encode(), b"{" + b"x" * (size - 1)),
            RejectedEvent("invalid_json", "not JSON"),
        )
        for i in range(count)
    ]


def test_a_size_refusal_from_the_broker_shrinks_the_dead_letter_and_is_remembered(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)
    cap = 100_000  # as if the topic's max.message.bytes were 100 kB

    def refuse(key: bytes | None, value: bytes | None) -> BaseException | None:
        too_big = len(key or b"") + len(value or b"") > cap
        return MessageSizeTooLargeError("MESSAGE_TOO_LARGE") if too_big else None

    rejects = invalid(3, size=300_000, topic=settings.topic_tickets)

    async def scenario(engine: Engine, publisher: KafkaPublisher, refusing: Refusing) -> Any:
        await publisher.send(rejects[:1])
        first = list(refusing.sent)
        refusing.sent.clear()
        await publisher.send(rejects[1:])
        return first, refusing.sent

    first, later = run_engine(settings, scenario, refuse)
    # 300 kB refused, then half of it, then a quarter taken; the rest go small at once
    assert [error is not None for _, _, error in first] == [True, True, False]
    assert all(error is None for _, _, error in later) and len(later) == 2
    letters = dead_letters_by_offset(settings, 3)
    assert sorted(letters) == [0, 1, 2]
    for letter in letters.values():
        headers = headers_of(letter)
        assert headers["deskpulse-truncated"] == "true"
        assert headers["deskpulse-original-bytes"] == "300000"
        assert 0 < len(letter.value) <= cap
        assert rejects[0][0].value.startswith(letter.value)  # type: ignore[union-attr]


def test_a_retried_dead_letter_send_sends_again_only_what_the_broker_did_not_take(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)
    flaky = {b"k1", b"k3"}  # the connection drops under these, once

    def refuse(key: bytes | None, value: bytes | None) -> BaseException | None:
        if key in flaky:
            flaky.discard(key)
            lost: BaseException = KafkaConnectionError("connection to the broker lost")
            return lost
        return None

    rejects = invalid(5, topic=settings.topic_tickets)
    troubles: list[DeadLetterTrouble | None] = []

    async def scenario(engine: Engine, publisher: KafkaPublisher, refusing: Refusing) -> Any:
        with pytest.raises(DeadLetterUnavailable) as failed:
            await publisher.send(rejects)
        assert [record.key for record, _ in failed.value.pending] == [b"k1", b"k3"]
        # through the engine: the batch is held, retried, and reported meanwhile
        flaky.update({b"k1", b"k3"})
        refusing.sent.clear()
        engine.on_deadletter = troubles.append
        topic = settings.topic_tickets
        batch = [SourceRecord(topic, 0, r.offset + 10, r.key, r.value) for r, _ in rejects]
        await asyncio.wait_for(engine.process(batch), 30)
        return refusing.sent

    sent = run_engine(settings, scenario, refuse)
    assert Counter(key for key, _, _ in sent) == {
        b"k0": 1,
        b"k1": 2,
        b"k2": 1,
        b"k3": 2,
        b"k4": 1,
    }
    letters = dead_letters_by_offset(settings, 8)  # 3 + 5: k1 and k3 failed the first time
    assert sorted(letters) == [0, 2, 4, 10, 11, 12, 13, 14]
    assert len(troubles) == 2 and troubles[-1] is None, troubles
    assert troubles[0] is not None and "did not take 2 of 5" in troubles[0].detail


def test_a_refusal_not_about_size_sends_the_record_without_its_value(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)

    def refuse(key: bytes | None, value: bytes | None) -> BaseException | None:
        return InvalidMessageError("CORRUPT_MESSAGE") if value else None  # e.g. validation

    rejects = invalid(2, topic=settings.topic_tickets)
    sent = run_engine(settings, lambda e, publisher, r: _send(publisher, rejects, r), refuse)
    assert [value for _, value, _ in sent] == [rejects[0][0].value, rejects[1][0].value, b"", b""]
    letters = dead_letters_by_offset(settings, 2)
    for letter in letters.values():
        assert letter.value == b""
        assert headers_of(letter)["deskpulse-truncated"] == "true"
        assert headers_of(letter)["deskpulse-original-bytes"] == "9"


async def _send(publisher: KafkaPublisher, rejects: Sequence[Any], refusing: Refusing) -> Any:
    await publisher.send(rejects)
    return refusing.sent


def test_a_dead_letter_topic_refusing_everything_holds_the_batch_until_a_stop_gives_it_up(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)

    def refuse(key: bytes | None, value: bytes | None) -> BaseException | None:
        refused: BaseException = TopicAuthorizationFailedError("TOPIC_AUTHORIZATION_FAILED")
        return refused

    topic = settings.topic_tickets
    batch = [SourceRecord(topic, 0, 0, b"k", b"{bad")]
    troubles: list[DeadLetterTrouble | None] = []

    async def scenario(engine: Engine, publisher: KafkaPublisher, refusing: Refusing) -> Any:
        engine.on_deadletter = troubles.append
        held = asyncio.ensure_future(engine.process(batch))
        await asyncio.sleep(3)
        assert not held.done()
        attempts = len(refusing.sent) // 2  # each: as it is, then without value
        engine.abandon(0.5)
        with pytest.raises(Abandoned):
            await asyncio.wait_for(held, 5)
        with pytest.raises(Abandoned):  # and every batch after it
            await engine.process([SourceRecord(topic, 0, 1, b"k", b"{}")])
        meta, _ = await engine.store.load(0, [])
        return attempts, refusing.sent, meta

    attempts, sent, meta = run_engine(settings, scenario, refuse)
    # backed off (0.1, 0.2, 0.4, 0.8, 1.6 s ...), each attempt as it is, then without value
    assert 3 <= attempts <= 6, attempts
    assert [value for _, value, _ in sent[:4]] == [b"{bad", b"", b"{bad", b""]
    assert troubles[0] is not None and "TopicAuthorizationFailedError" in troubles[0].detail
    assert troubles[-1] is None  # nothing waits any more once the batch is given up
    assert topic not in meta.offsets  # the fence did not move: the next start applies it
    assert not asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic_deadletter, 0, 2))


def test_a_real_topic_max_message_bytes_is_learned(settings: Settings, make_topics: Any) -> None:
    """On a broker that enforces ``max.message.bytes`` (Kafka; Tansu does not)."""
    make_topics(settings)
    small_topic = settings.topic_deadletter + ".small"
    settings = settings.model_copy(update={"topic_deadletter": small_topic})

    async def enforces() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            topics = [NewTopic(small_topic, 1, 1, topic_configs={"max.message.bytes": "20000"})]
            await admin.create_topics(topics)
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False
        )
        await producer.start()
        try:
            await (await producer.send(small_topic, b"x" * 50_000))
        except SIZE_ERRORS:
            return True
        finally:
            await producer.stop()
        return False

    if not asyncio.run(enforces()):
        pytest.skip("this broker takes records over a topic's max.message.bytes (Tansu)")
    rejects = invalid(2, size=300_000, topic=settings.topic_tickets)
    run_engine(settings, lambda e, publisher, r: publisher.send(rejects))
    letters = asyncio.run(consume_all(settings.kafka_bootstrap, small_topic, 3, 30))
    sizes = [len(letter.value) for letter in letters if letter.value is not None]
    assert len(letters) == 2 and all(size <= 20_000 for size in sizes), sizes


def test_kafka_errors_carry_the_flags_the_dead_letter_producer_reads() -> None:
    # the producer tells retriable from size refusals by class and flag, never by message
    assert KafkaConnectionError.retriable and not MessageSizeTooLargeError.retriable
    assert issubclass(MessageSizeTooLargeError, KafkaError)
    assert all(not error.retriable for error in SIZE_ERRORS)


def test_an_engine_process_whose_worker_is_gone_already_exits_at_once() -> None:
    # started for a worker (pid 1 here) that is not its parent: that worker died before the
    # child could ask the kernel to end it with the worker
    done = subprocess.run(
        [sys.executable, "-m", "deskpulse.streams.offload", "1"],
        stdin=subprocess.PIPE,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
