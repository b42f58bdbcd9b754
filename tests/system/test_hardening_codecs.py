"""Records from other Kafka clients: every compression codec, and idempotent producers.

librdkafka (confluent-kafka), the Java and Go clients compress batches by default in many
setups. Every codec Kafka defines (none, gzip, snappy, lz4, zstd) is produced here by
confluent-kafka — the "other client" — into the real broker, read by a real ``deskpulse
worker`` and by ``deskpulse replay``, and the KPIs, counters and dead letters are held
against the oracle. A raw fetch checks that the broker hands each batch back compressed
as it was produced (so the consumer's own decompression is what is tested).

What the embedded broker (Tansu) does with other clients, recorded as tests:

* it stores and serves all five codecs as produced;
* it refuses a batch naming an unknown codec id (as Kafka does), so no consumer sees one;
* it accepts a batch whose compressed payload is corrupt but whose CRC is right (Kafka
  refuses it: the broker decompresses to validate); the worker and the replay then stop
  with an error naming the topic, partition and offset of the batch (never silently, and
  never committing past it), so the operator can move the consumer group past it;
* librdkafka's idempotent producer works (its batches carry a producer id and sequence
  numbers); aiokafka's does not: the broker answers its InitProducerId (version 0) with
  an error. deskpulse never needs idempotence (exactly once lives in the Redis fence).
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from prometheus_client.parser import text_string_to_metric_families

from deskpulse.models.errors import RejectedEvent, UndecodableBatch
from deskpulse.models.events import decode
from deskpulse.models.settings import Settings
from deskpulse.streams import record_batches
from deskpulse.streams.query import format_time
from tests.conftest import create_topics
from tests.e2e_support import kpis_store, oracle_doc
from tests.oracle import compare
from tests.support import (
    StartWorker,
    consume_all,
    group_offsets,
    run_cli,
    scrape,
    settings_env,
    wait_for_claims,
    wait_until,
)

#: Kafka's codecs and their ids in a record batch's attributes.
CODECS: dict[str, int] = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
BY_OPTIONS: tuple[tuple[str, ...], ...] = ((), ("channel",), ("channel", "queue", "priority"))


def _stamp(t_s: float) -> str:
    return format_time(t_s).replace("Z", f".{int(t_s % 1 * 1000):03d}Z")


def _event(type_: str, t_s: float, **fields: Any) -> tuple[str, bytes, bytes]:
    kind = {"ticket": "tickets", "chat": "chats", "survey": "surveys", "agent": "agents"}[
        type_.split(".")[0]
    ]
    key = fields.get("ticket_id") or fields.get("chat_id") or fields["agent_id"]
    body = {"event_id": uuid.uuid4().hex, "type": type_, "occurred_at": _stamp(t_s), **fields}
    return kind, str(key).encode(), orjson.dumps(body)


def codec_traffic(codec: str, now_s: float) -> list[tuple[str, bytes, bytes]]:
    """Tickets, chats and surveys of their own channel (named for the codec) in the last hour,
    plus one malformed record on each topic: the reject path in a compressed batch too."""
    records = []
    for n in range(24):
        ticket = f"T-{codec}-{n}"
        dims = {
            "channel": f"via-{codec}",
            "queue": ("billing", "tech")[n % 2],
            "priority": ("low", "normal", "high", "urgent")[n % 4],
        }
        at = now_s - 3000 + n * 60
        records.append(_event("ticket.created", at, ticket_id=ticket, **dims))
        if n % 4:
            reply = at + 45 + n * 17
            records.append(_event("ticket.replied", reply, ticket_id=ticket, author_role="agent"))
        if n % 3 == 0:
            survey = {"ticket_id": ticket, "kind": "csat", "score": 1 + n % 5}
            records.append(_event("survey.responded", at + 900, **survey))
    for n in range(12):
        chat = f"C-{codec}-{n}"
        at = now_s - 2400 + n * 90
        records.append(_event("chat.requested", at, chat_id=chat, channel=f"via-{codec}"))
        outcome = "chat.abandoned" if n % 4 == 0 else "chat.accepted"
        records.append(_event(outcome, at + 3 + n * 4, chat_id=chat))
        if n % 3 == 1:
            survey = {"chat_id": chat, "kind": "nps", "score": n % 11}
            records.append(_event("survey.responded", at + 600, **survey))
    for n, status in enumerate(("available", "busy", "away", "busy", "offline")):
        at = now_s - 2000 + n * 120
        records.append(_event("agent.status_changed", at, agent_id=f"A-{codec}", status=status))
    for kind in ("tickets", "chats", "surveys", "agents"):
        records.append((kind, f"bad-{codec}".encode(), b'{"type": "ticket.created", '))
    return records


def produce_with(
    settings: Settings, records: Sequence[tuple[str, bytes, bytes]], **config: Any
) -> list[int]:
    """Send with confluent-kafka (librdkafka), wait for every delivery report; the offsets."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            # the partition each conversation belongs on, as the Java client puts it
            "partitioner": "murmur2_random",
            # a while to fill a batch: compression works per batch
            "linger.ms": 50,
            "acks": "all",
            **config,
        }
    )
    failures: list[Any] = []
    offsets: list[int] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error)
        else:
            offsets.append(message.offset())

    for kind, key, value in records:
        producer.produce(settings.topic_for(kind), key=key, value=value, on_delivery=delivered)
    assert producer.flush(60) == 0, "deliveries outstanding after 60 s"
    assert not failures, failures[:3]
    return offsets


async def fetch_batches(
    bootstrap: str, topics: Sequence[str]
) -> list[tuple[str, int, int, int, int]]:
    """Every record batch the broker serves: (topic, partition, codec id, producer id, base
    sequence), read with a plain Fetch so nothing is decompressed on the way."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    found = []
    try:
        await client.force_metadata_update()
        for topic in topics:
            for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
                leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                request = FetchRequest(100, 1, 64 << 20, 0, [(topic, [(partition, 0, 64 << 20)])])
                response = await client.send(leader, request)
                for _, partitions in response.topics:
                    for answer in partitions:
                        records = MemoryRecords(answer[-1])
                        while records.has_next():
                            batch = records.next_batch()
                            found.append(
                                (
                                    topic,
                                    partition,
                                    batch.compression_type,
                                    batch.producer_id,
                                    batch.base_sequence,
                                )
                            )
    finally:
        await client.close()
    return found


def expected_types(
    settings: Settings, records: Sequence[tuple[str, bytes, bytes]]
) -> tuple[Counter[tuple[str, str]], int]:
    """Events per (topic, type) the worker must count as processed, and how many rejects."""
    processed: Counter[tuple[str, str]] = Counter()
    rejected = 0
    for kind, _, value in records:
        try:
            event = decode(value)
        except RejectedEvent:
            rejected += 1
            continue
        processed[(settings.topic_for(kind), event.type)] += 1
    return processed, rejected


def counters(text: str, name: str, labels: Sequence[str]) -> Counter[tuple[str, ...]]:
    found: Counter[tuple[str, ...]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sample.labels[label] for label in labels)] += int(sample.value)
    return found


def check_with_oracle(settings: Settings, values: Sequence[bytes], at_s: float) -> int:
    """The store's KPIs for 1h and 24h, every grouping, against the oracle; how many read."""
    problems, read = [], 0
    wait_for_claims(settings)  # every breach of the past data set claimed: counted below
    for width in ("1h", "24h"):
        for by in BY_OPTIONS:
            actual = kpis_store(settings, width, at_s, by)
            expected = oracle_doc(values, at_s=at_s, width=width, by=by)
            problems += [f"{width} by {by}: {line}" for line in compare(actual, expected)]
            read += 1
    assert not problems, "\n".join(problems[:40])
    return read


def test_every_codec_from_another_client_reaches_the_kpis_live_and_in_replay(
    settings: Settings, workdir: Path, start_worker: StartWorker
) -> None:
    settings = settings.model_copy(update={"batch_within": 0.1, "metrics_refresh_interval": 1})
    create_topics(settings)
    now_s = time.time()
    sent: list[tuple[str, bytes, bytes]] = []
    worker = start_worker(settings, workdir, timeout_s=90)
    for codec in CODECS:
        records = codec_traffic(codec, now_s)
        produce_with(settings, records, **{"compression.type": codec})
        sent += records
        processed, rejected = expected_types(settings, sent)

        def caught_up(processed: Counter[Any] = processed, rejected: int = rejected) -> bool:
            # (a worker that cannot read a codec stops: say so, with its log)
            assert worker.running, worker.describe()
            text = scrape(settings.web_port)
            done = counters(text, "deskpulse_events_processed_total", ("topic", "type"))
            refused = counters(text, "deskpulse_events_rejected_total", ("topic", "reason"))
            return sum(done.values()) >= processed.total() and refused.total() >= rejected

        # each codec's records are counted before the next codec is sent
        wait_until(caught_up, 90, 0.5, message=worker.describe)
        text = scrape(settings.web_port)
        assert counters(text, "deskpulse_events_processed_total", ("topic", "type")) == (
            processed
        ), codec
        refused = counters(text, "deskpulse_events_rejected_total", ("topic", "reason"))
        assert dict(refused) == {
            (settings.topic_for(kind), "invalid_json"): rejected // 4
            for kind in ("tickets", "chats", "surveys", "agents")
        }, codec
    assert worker.running, worker.describe()
    assert "UnsupportedCodecError" not in worker.log()
    assert worker.stop() == 0, worker.describe()

    values = [value for _, _, value in sent]
    at_s = float(int(now_s) + 120)
    assert check_with_oracle(settings, values, at_s) == 6
    # each channel (codec) on its own: 24 tickets, 18 first responses, 12 chats
    document = kpis_store(settings, "24h", at_s, ("channel",))
    per_channel = {g["key"]["channel"]: g for g in document["groups"]}
    assert sorted(per_channel) == sorted(f"via-{codec}" for codec in CODECS)
    for group in per_channel.values():
        assert group["tickets_created"] == 24
        assert group["first_response"]["count"] == 18
        assert group["chats"]["requested"] == 12

    # the dead letters are the malformed records, byte for byte
    letters = asyncio.run(
        consume_all(settings.kafka_bootstrap, settings.topic_deadletter, 3 * len(CODECS), 60)
    )
    assert sorted(r.value for r in letters) == sorted(
        value
        for _, _, value in sent
        if value.startswith(b'{"type": "ticket.created", ') and not value.endswith(b"}")
    )

    # the broker kept every batch compressed as it was produced
    batches = asyncio.run(fetch_batches(settings.kafka_bootstrap, settings.input_topics))
    assert {codec for _, _, codec, _, _ in batches} == set(CODECS.values()), batches[:10]
    for topic in settings.input_topics:
        assert {c for t, _, c, _, _ in batches if t == topic} == set(CODECS.values()), topic

    # the replay path reads the same compressed batches into a fresh prefix
    replayed = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "-replay"})
    done = run_cli(["replay"], settings_env(replayed), cwd=workdir, timeout_s=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert check_with_oracle(replayed, values, at_s) == 6


# -- idempotent producers ---------------------------------------------------------------------


def test_idempotent_producers_against_the_broker(settings: Settings) -> None:
    create_topics(settings)
    now_s = time.time()
    records = [
        _event("ticket.created", now_s - 600 + n, ticket_id=f"I-{n}", channel="idem")
        for n in range(40)
    ]
    # librdkafka: idempotence on (it also implies acks=all and ordered retries)
    produce_with(settings, records, **{"enable.idempotence": True})
    batches = asyncio.run(fetch_batches(settings.kafka_bootstrap, [settings.topic_tickets]))
    assert batches
    # the broker gave the producer an id and kept its sequence numbers: idempotence is on,
    # not quietly dropped
    assert all(producer_id >= 0 for _, _, _, producer_id, _ in batches), batches
    assert all(sequence >= 0 for _, _, _, _, sequence in batches), batches

    async def read_back() -> list[bytes]:
        found = await consume_all(settings.kafka_bootstrap, settings.topic_tickets, 40, 30)
        return [r.value for r in found]

    assert sorted(asyncio.run(read_back())) == sorted(value for _, _, value in records)

    # aiokafka (and so Faust) asks with InitProducerId version 0, which the broker refuses
    async def aiokafka_idempotent() -> BaseException | None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True
        )
        try:
            await producer.start()
            await producer.send_and_wait(settings.topic_tickets, b"{}", key=b"x")
        except KafkaError as error:
            refused: BaseException = error
            return refused
        finally:
            await producer.stop()
        return None

    refused = asyncio.run(aiokafka_idempotent())
    assert refused is not None, "aiokafka's idempotent producer works now: update the README"
    assert type(refused).__name__ == "UnknownError", refused


# -- batches no consumer can read -------------------------------------------------------------


def _batch(values: Sequence[bytes], codec: int) -> bytearray:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for n, value in enumerate(values):
        builder.append(n, timestamp=int(time.time() * 1000), key=b"k", value=value, headers=[])
    return bytearray(builder.build())


def _with_crc(raw: bytearray) -> bytes:
    # v2 batch: the CRC-32C at byte 17 covers everything from the attributes (byte 21) on
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def unknown_codec_batch(values: Sequence[bytes]) -> bytes:
    raw = _batch(values, CODECS["none"])
    attributes = struct.unpack_from(">h", raw, 21)[0]
    struct.pack_into(">h", raw, 21, (attributes & ~0x07) | 0x05)  # codec id 5: none such
    return _with_crc(raw)


def corrupt_lz4_batch(values: Sequence[bytes]) -> bytes:
    raw = _batch(values, CODECS["lz4"])
    for at in range(61, len(raw)):  # the compressed records, after the 61-byte header
        raw[at] ^= 0x5A
    return _with_crc(raw)


async def send_raw(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Produce a hand-made record batch; the broker's error code (0: accepted)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        response = await client.send(leader, request)
        code: int = response.topics[0][1][0][1]
        return code
    finally:
        await client.close()


def test_an_undecodable_batch_stops_the_worker_loudly_and_commits_nothing_past_it(
    settings: Settings, workdir: Path, start_worker: StartWorker
) -> None:
    settings = settings.model_copy(update={"topic_partitions": 1})
    create_topics(settings)
    bootstrap, topic = settings.kafka_bootstrap, settings.topic_tickets
    now_s = time.time()
    good = [_event("ticket.created", now_s - 60, ticket_id=f"G{n}")[2] for n in range(3)]

    # an unknown codec id never reaches a consumer: the broker refuses the batch
    assert asyncio.run(send_raw(bootstrap, topic, 0, unknown_codec_batch(good))) != 0

    # a wrongly compressed batch with a right CRC is accepted (Kafka would refuse it)
    (before,) = produce_with(settings, [("tickets", b"G-before", good[0])])
    assert asyncio.run(send_raw(bootstrap, topic, 0, corrupt_lz4_batch(good[1:]))) == 0
    produce_with(settings, [("tickets", b"G-after", good[2])])

    async def aiokafka_reads() -> BaseException | None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            for _ in range(10):
                await consumer.getmany(timeout_ms=500)
        except Exception as error:
            return error
        finally:
            await consumer.stop()
        return None

    # aiokafka alone names only the codec's complaint
    error = asyncio.run(aiokafka_reads())
    assert error is not None and "lz4" in str(error), error
    assert not isinstance(error, UndecodableBatch)
    # deskpulse's processes name where the batch is: right after G-before
    where = f"cannot decode the record batch at offset {before + 1} of {topic} partition 0"
    record_batches.install()
    assert record_batches.installed()
    try:
        error = asyncio.run(aiokafka_reads())
        assert isinstance(error, UndecodableBatch), error
        assert str(error).startswith(where) and "DecompressionError: lz4" in str(error)
        found = (error.topic, error.partition, error.offset)
        assert found == (topic, 0, before + 1)
    finally:
        # leave aiokafka as the other tests expect it
        original = PartitionRecords._unpack_records.__wrapped__
        PartitionRecords._unpack_records = original
    assert not record_batches.installed()

    worker = start_worker(settings, workdir, ready=False)
    wait_until(lambda: not worker.running, 90, 0.5, message=worker.describe)
    assert worker.returncode not in (None, 0), worker.describe()
    assert where in worker.log(), worker.describe()
    worker.stop(timeout_s=15)
    # nothing past the batch was acknowledged: the next worker meets it again, not a gap
    committed = asyncio.run(group_offsets(bootstrap, settings.app_id, [(topic, 0)]))
    assert (committed[(topic, 0)] or 0) <= before + 1, committed
    # the replay stops on it with one line
    done = run_cli(["replay"], settings_env(settings), cwd=workdir, timeout_s=120)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"deskpulse: {where}"), done.stderr[-2000:]
    assert "runbook-deskpulseundecodablebatch" in last
