"""A valid record too big for the dead-letter topic as it is, among normal traffic: the
real worker, run in this process (``inproc_worker``), dead-letters it once, truncated, and
stalls nothing. The same with the engine in a child process, and everything about workers
that must stop whatever they are stuck on, is in tests/system/test_hardening_deadletter.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import confluent_kafka
import orjson
from aiokafka import ConsumerRecord

from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.simulate import Record
from tests.conftest import create_topics
from tests.e2e_support import build_dataset, check_counters, wait_for_state
from tests.faults_support import metric_sums, read_dead_letters, tune
from tests.inproc import InprocWorker
from tests.support import StreamProducer, WorkerProcess, stamp, wait_until

#: a valid record twice the default DESKPULSE_MAX_RECORD_BYTES (1 MiB)
BIG_BYTES = 2_000_000


def big_ticket(key: str, size: int, at_s: float) -> bytes:
    """A valid ``ticket.created`` of exactly ``size`` bytes (an ignored field pads it)."""
    payload = {
        "event_id": f"big-{key}",
        "type": "ticket.created",
        "occurred_at": stamp(at_s),
        "ticket_id": key,
        "channel": "web",
    }
    body = orjson.dumps({**payload, "pad": ""})
    value = orjson.dumps({**payload, "pad": "p" * (size - len(body))})
    assert len(value) == size
    return value


def headers_of(letter: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {name: value.decode() for name, value in letter.headers}


def source_of(letter: ConsumerRecord[bytes, bytes]) -> tuple[str, int, int]:
    headers = headers_of(letter)
    return (
        headers["deskpulse-source-topic"],
        int(headers["deskpulse-source-partition"]),
        int(headers["deskpulse-source-offset"]),
    )


# -- an oversized valid record among normal traffic ------------------------------------------


def test_an_oversized_record_is_dead_lettered_truncated_and_stalls_nothing(
    settings: Settings, inproc_worker: Callable[..., InprocWorker]
) -> None:
    check_oversized_record(settings, lambda tuned: inproc_worker(tuned, timeout_s=90))


def check_oversized_record(
    settings: Settings, start: Callable[[Settings], InprocWorker | WorkerProcess]
) -> None:
    """About 2,000 records of traffic with a valid record twice the record limit in the
    middle, through a worker ``start`` starts on ``settings`` (tuned here): the big one is
    dead-lettered once, truncated; the rest applied exactly once; the worker stops at once."""
    settings = tune(settings)
    create_topics(settings)
    dataset = build_dataset(seed=53, rate=0.2)
    middle = len(dataset.records) // 2
    big = big_ticket("BIG-1", BIG_BYTES, dataset.config.start_s + 600)
    # a tombstone of the same conversation just before it: same partition, most likely the
    # same batch, where a retried batch used to send it again on every attempt
    tombstone = Record("tickets", b"BIG-1", None, None)  # type: ignore[arg-type]
    extra = [tombstone, Record("tickets", b"BIG-1", big, None)]
    records = dataset.records[:middle] + extra + dataset.records[middle:]
    producer = StreamProducer(settings, records, chunks=8, pause_s=0.2)
    worker = start(settings)
    producer.start()
    producer.finish()
    keyless_at = produce_keyless_tombstone(settings)
    # the rest of the traffic is applied, all of it exactly once
    counts = wait_for_state(settings, dataset, timeout_s=120, describe=worker.describe)
    check_counters(counts, dataset)

    tombstone_at, big_at = producer.positions[middle], producer.positions[middle + 1]
    expected = {
        producer.positions[i]: record
        for i, record in enumerate(records)
        if record.occurred_at_s is None
    }
    letters = read_dead_letters(settings, len(expected) + 1)
    sources = Counter(source_of(letter) for letter in letters)
    wanted = {*expected, keyless_at}
    assert set(sources) == wanted, sorted(set(sources) ^ wanted)[:5]
    repeated = {where: n for where, n in sources.items() if n > 1}
    assert not repeated, f"dead-lettered more than once: {repeated}"

    by_source = {source_of(letter): letter for letter in letters}
    oversized = by_source[big_at]
    headers = headers_of(oversized)
    assert headers["deskpulse-reason"] == "too_large"
    assert headers["deskpulse-truncated"] == "true"
    assert headers["deskpulse-original-bytes"] == str(BIG_BYTES)
    assert oversized.key == b"BIG-1"
    assert oversized.value is not None
    limit = KafkaPublisher(settings).max_request_bytes  # what the producer takes
    assert limit - 1024 < len(oversized.value) < limit
    assert big.startswith(oversized.value)
    letter = by_source[tombstone_at]
    assert (letter.key, letter.value) == (b"BIG-1", None)
    assert headers_of(letter)["deskpulse-reason"] == "invalid_json"
    assert "deskpulse-truncated" not in headers_of(letter)
    # no Kafka client sends a record with neither key nor value: the value is empty
    keyless = by_source.pop(keyless_at)
    assert (keyless.key, keyless.value) == (None, b"")
    assert headers_of(keyless)["deskpulse-reason"] == "invalid_json"
    for where, letter in by_source.items():  # everything else byte for byte
        if where != big_at:
            assert letter.value == expected[where].value, where
            assert "deskpulse-truncated" not in headers_of(letter), where

    def rejected() -> Any:
        response = worker.get("/metrics")
        if response is None or response.status != 200:
            return None
        sums = metric_sums(response.text)
        return sums if sums.rejected_total >= dataset.rejected + 3 else None

    sums = wait_until(rejected, 30, message=worker.describe)
    assert sums.rejected[(settings.topic_tickets, "too_large")] == 1.0
    assert sums.rejected_total == dataset.rejected + 3
    started = time.monotonic()
    assert worker.stop(timeout_s=30) == 0, worker.describe()
    assert time.monotonic() - started < 15, worker.describe()


def produce_keyless_tombstone(settings: Settings) -> tuple[str, int, int]:
    """A record with neither key nor value, as librdkafka sends it (aiokafka will not);
    where it landed."""
    producer = confluent_kafka.Producer({"bootstrap.servers": settings.kafka_bootstrap})
    where: list[tuple[str, int, int]] = []

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        where.append((message.topic(), message.partition(), message.offset()))

    producer.produce(settings.topic_tickets, value=None, key=None, on_delivery=delivered)
    assert producer.flush(30) == 0
    return where[0]
