"""Producers that partition differently: KPIs stay exact whatever partitioner they use.

deskpulse keeps a conversation's state with the partition its id maps to by Kafka's
default (murmur2) rule. A record put elsewhere — by librdkafka's CRC32 default, with no
key, or keyed by something else (an account id) — is forwarded through the repartition
topic to that partition. The end-to-end tests here produce openers with aiokafka (murmur2)
and most other events with confluent-kafka's default partitioner, some with no key and
some keyed by an account, and check the KPIs against the oracle, the SLA breaches against
the tickets' own times, the rerouted counter against where each record landed, exactly
one warning per topic, and the same through a ``kill -9``, two workers and a replay.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis as AsyncRedis

from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.exporters.prometheus import PipelineMetrics
from deskpulse.models.errors import RejectedEvent, SettingsError
from deskpulse.models.events import SurveyResponded, TicketCreated, TicketReplied, decode
from deskpulse.models.settings import Settings, load_settings
from deskpulse.streams.breaches import DetectionClocks
from deskpulse.streams.core import (
    AT_RISK_FIELDS,
    AT_RISK_NOW,
    NOT_COUNTED,
    PLACES,
    RUNNING_FIELDS,
    CoreConfig,
)
from deskpulse.streams.devtools.embedded import free_port
from deskpulse.streams.devtools.simulate import Record
from deskpulse.streams.engine import Engine, SourceRecord
from deskpulse.streams.partitioner import (
    ConversationPartitions,
    forwarded_key,
    java_partition,
    murmur2,
    murmur2_many,
)
from deskpulse.streams.query import query_kpis
from deskpulse.streams.redis_client import connect
from deskpulse.streams.replay import adopt_all_published, replay, start_fences
from deskpulse.streams.store import PartitionMeta, Store
from deskpulse.streams.topics import ensure_topics
from tests.conftest import HOST
from tests.e2e_support import (
    Dataset,
    build_dataset,
    check_counters,
    compare_with_oracle,
    field_differences,
    kpis_store,
    progress,
    redis_snapshot,
    wait_for_state,
)
from tests.support import (
    StartWorker,
    WorkerProcess,
    consume_all,
    run_cli,
    sample,
    samples,
    scrape,
    settings_env,
    wait_until,
)

# -- the partitioner: Kafka's murmur2, bit for bit ---------------------------------------------

# from Kafka's own UtilsTest (signed Java ints)
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (b"", 275646681),
]


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2)
def test_murmur2_is_the_java_clients(key: bytes, java: int) -> None:
    assert murmur2(key) == java & 0xFFFFFFFF


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=1024))
def test_murmur2_agrees_with_aiokafka_and_librdkafka(key: bytes, partitions: int) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)
    # librdkafka's murmur2 partitioner (partitioner=murmur2_random) is the same rule
    assert java_partition(key, partitions) == confluent_kafka.cimpl.murmur2(key, partitions)


@given(
    st.integers(min_value=0, max_value=70).flatmap(
        lambda length: st.lists(st.binary(min_size=length, max_size=length), max_size=40)
    )
)
def test_murmur2_of_many_keys_at_once_is_murmur2_of_each(keys: list[bytes]) -> None:
    assert murmur2_many(keys) == [murmur2(key) for key in keys]


@given(st.lists(st.text(max_size=20), max_size=60), st.integers(min_value=2, max_value=50))
def test_conversation_partitions_of_a_batch_are_each_ones(ids: list[str], limit: int) -> None:
    ids = [("t:" if n % 2 else "c:") + text for n, text in enumerate(ids)]
    partition_of = ConversationPartitions(5, max_entries=limit)
    expected = [java_partition(i[2:].encode("utf-8", "surrogatepass"), 5) for i in ids]
    assert partition_of.many(ids) == expected
    assert partition_of.many(ids) == expected  # cached (as far as the limit goes)
    assert [partition_of(i) for i in ids] == expected


def test_conversation_partitions_hash_the_bare_id_and_stay_bounded() -> None:
    partition_of = ConversationPartitions(7, max_entries=100)
    assert partition_of("t:T-123") == java_partition(b"T-123", 7)
    assert partition_of("c:T-123") == java_partition(b"T-123", 7)
    assert partition_of("t:caf\u00e9") == java_partition("caf\u00e9".encode(), 7)
    assert partition_of.cached("t:T-123") == java_partition(b"T-123", 7)
    assert partition_of.cached("t:never-asked") is None
    for n in range(1000):
        assert partition_of(f"t:{n}") == java_partition(str(n).encode(), 7)
        assert len(partition_of) <= 100
    with pytest.raises(ValueError):
        ConversationPartitions(0)


def test_the_repartition_topic_setting() -> None:
    # one per deployment, like its consumer group: two deployments never read each other's
    assert Settings().topic_repartition == "deskpulse.repartition"
    assert Settings(app_id="desk-eu").topic_repartition == "desk-eu.repartition"
    assert Settings(topic_repartition="rp").topic_repartition == "rp"
    assert load_settings(topic_repartition="").topic_repartition == "deskpulse.repartition"
    with pytest.raises(SettingsError) as refused:
        load_settings(topic_repartition="support.chats")
    assert str(refused.value).startswith("DESKPULSE_TOPIC_REPARTITION: ")
    assert "\n" not in str(refused.value)


# -- the breach clock (pure) --------------------------------------------------------------------

T = "tickets"
R = "repartition"
NOW = 10_000_000


def meta(
    tickets_ms: int, offsets: dict[str, int] | None = None, forwarded: dict[int, int] | None = None
) -> PartitionMeta:
    fence = dict(offsets or {})
    for target, offset in (forwarded or {}).items():
        fence[forwarded_key(R, target)] = offset
    return PartitionMeta("1", tickets_ms, fence, {}, {T: tickets_ms})


def test_clock_is_a_partitions_own_progress_while_nothing_is_forwarded() -> None:
    clocks = DetectionClocks(T, R)
    metas = {0: meta(5000, {T: 10}), 1: meta(7000, {T: 20})}
    # busy: the newest applied event time; the least over the partitions (a reply for
    # partition 0 may still be unread on partition 1)
    assert clocks.update(NOW, metas, {0: False, 1: False}, [0, 1]) == {0: 5000, 1: 5000}
    # partition 0 caught up but applied something since the last look: not idle yet
    assert clocks.update(NOW, metas, {0: True, 1: False}, [0, 1]) == {0: 7000, 1: 7000}
    # both idle: the wall clock
    assert clocks.update(NOW, metas, {0: True, 1: True}, [0, 1]) == {0: NOW, 1: NOW}
    assert clocks.update(NOW + 5, metas, {0: True, 1: True}, [1]) == {1: NOW + 5}


def test_clock_waits_for_forwards_to_be_applied() -> None:
    clocks = DetectionClocks(T, R)
    # partition 1 forwarded up to offset 4 of the repartition topic's partition 0, which
    # partition 0 has not applied: partition 0 must not declare breaches yet
    metas = {0: meta(9000, {T: 10, R: 2}), 1: meta(8000, {T: 30}, forwarded={0: 4})}
    assert clocks.update(NOW, metas, {0: False, 1: False}, [0]) == {0: 0}
    # partition 1 moves on and forwards more; partition 0 has applied the first forwards
    metas = {0: meta(9500, {T: 11, R: 4}), 1: meta(8800, {T: 40}, forwarded={0: 9})}
    assert clocks.update(NOW, metas, {0: False, 1: False}, [0]) == {0: 8000}
    # the newer forwards applied too: partition 1's progress at the check that saw them
    metas = {0: meta(9600, {T: 12, R: 9}), 1: meta(9900, {T: 50}, forwarded={0: 9})}
    assert clocks.update(NOW, metas, {0: False, 1: False}, [0]) == {0: 9600}
    # all read, but partition 0 applied something since the last look: its own progress
    metas[0] = meta(9600, {T: 13, R: 9})
    assert clocks.update(NOW, metas, {0: True, 1: True}, [0]) == {0: 9600}
    # read, applied and unchanged since: the wall clock
    assert clocks.update(NOW, metas, {0: True, 1: True}, [0]) == {0: NOW}


def test_clock_for_a_partition_that_was_never_read() -> None:
    clocks = DetectionClocks(T, R)
    empty = PartitionMeta("0", 0, {}, {})
    # a partition with records nobody applied yet holds every clock at 0
    assert clocks.update(NOW, {0: meta(9000, {T: 5}), 1: empty}, {0: True, 1: False}, [0]) == {0: 0}
    # an empty one, nothing to read: does not hold anything back once idle
    clocks.update(NOW, {0: meta(9000, {T: 5}), 1: empty}, {0: True, 1: True}, [0])
    assert clocks.update(NOW, {0: meta(9000, {T: 5}), 1: empty}, {0: True, 1: True}, [0]) == {
        0: NOW
    }


# -- producing as a mixed shop would --------------------------------------------------------------

#: how a record is produced: aiokafka keyed by its conversation (murmur2, where it belongs),
#: aiokafka keyed by an unrelated account id, confluent-kafka's default partitioner
#: (consistent_random: CRC32 of the key) keyed by the conversation, or with no key
HOWS = ("murmur2", "account", "librdkafka", "nokey")


def how_produced(records: Sequence[Record], seed: int = 5) -> list[str]:
    """Openers mostly from a murmur2 producer, replies and outcomes mostly from librdkafka,
    surveys mostly keyed by an account; a few of each with no key or a foreign key."""
    rng = random.Random(seed)
    out = []
    for record in records:
        try:
            kind = json.loads(record.value).get("type", "")
        except (ValueError, AttributeError):
            kind = ""
        roll = rng.random()
        if kind in ("ticket.created", "chat.requested"):
            out.append("account" if roll < 0.1 else "murmur2")
        elif kind == "survey.responded":
            out.append("nokey" if roll < 0.2 else "account")
        elif kind:
            out.append("nokey" if roll < 0.1 else "librdkafka")
        else:
            out.append("murmur2")  # malformed: dead-lettered wherever it lands
    return out


async def produce_mixed(
    settings: Settings,
    records: Sequence[Record],
    hows: Sequence[str],
    *,
    chunk: int = 100,
    pause_s: float = 0.0,
    sent: list[tuple[str, int, int]] | None = None,
) -> list[tuple[str, int, int]]:
    """Send ``records`` the way ``hows`` says, in order, chunk by chunk; where each landed.

    Within a chunk the other client's records go first, then aiokafka's: a record never
    lands behind records of later event time it would not have followed in order.
    """
    aio = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all"
    )
    await aio.start()
    other = confluent_kafka.Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "linger.ms": 5}
    )
    placed: list[tuple[str, int, int]] = [] if sent is None else sent
    try:
        for start in range(0, len(records), chunk):
            indexes = range(start, min(start + chunk, len(records)))
            landed: dict[int, tuple[str, int, int]] = {}
            errors: list[Any] = []

            def delivered(
                error: Any,
                message: Any,
                index: int,
                landed: dict[int, tuple[str, int, int]] = landed,
                errors: list[Any] = errors,
            ) -> None:
                if error is not None:
                    errors.append(error)
                else:
                    landed[index] = (message.topic(), message.partition(), message.offset())

            for index in indexes:
                record, how = records[index], hows[index]
                if how not in ("librdkafka", "nokey"):
                    continue
                while True:
                    try:
                        other.produce(
                            settings.topic_for(record.topic_kind),
                            value=record.value,
                            key=None if how == "nokey" else record.key,
                            on_delivery=lambda e, m, i=index: delivered(e, m, i),
                        )
                        break
                    except BufferError:
                        other.poll(0.05)
            assert await asyncio.to_thread(other.flush, 60) == 0
            assert not errors, errors
            futures = []
            for index in indexes:
                record, how = records[index], hows[index]
                if how in ("librdkafka", "nokey"):
                    continue
                key = record.key if how == "murmur2" else b"account-%d" % (index % 37)
                topic = settings.topic_for(record.topic_kind)
                futures.append((index, await aio.send(topic, value=record.value, key=key)))
            for index, future in futures:
                meta = await future
                landed[index] = (meta.topic, meta.partition, meta.offset)
            placed.extend(landed[index] for index in indexes)
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        await aio.stop()
    return placed


def conversation_key(event: Any) -> str:
    if isinstance(event, SurveyResponded):
        return str(event.ticket_id if event.ticket_id is not None else event.chat_id)
    return str(
        getattr(event, "ticket_id", None)
        or getattr(event, "chat_id", None)
        or getattr(event, "agent_id", None)
    )


def expected_rerouted(
    settings: Settings, records: Sequence[Record], placed: Sequence[tuple[str, int, int]]
) -> Counter[str]:
    """Valid records that landed off their conversation's murmur2 partition, by topic."""
    now_s = time.time()
    out: Counter[str] = Counter()
    for record, (topic, partition, _) in zip(records, placed, strict=True):
        try:
            event = decode(record.value, now_s=now_s)
        except RejectedEvent:
            continue
        assert event.type.split(".")[0] + "s" == record.topic_kind  # none on a wrong topic
        home = java_partition(conversation_key(event).encode(), settings.topic_partitions)
        if partition != home:
            out[topic] += 1
    return out


def expected_breaches(settings: Settings, dataset: Dataset) -> set[str]:
    """Tickets whose first public agent reply is missing or later than the target."""
    created: dict[str, tuple[int, str, str]] = {}
    replied: dict[str, int] = {}

    def ms(moment: datetime) -> int:
        return math.floor(moment.timestamp() * 1000)

    for value in dataset.values:
        try:
            event = decode(value, now_s=time.time())
        except RejectedEvent:
            continue
        if isinstance(event, TicketCreated):
            candidate = (ms(event.occurred_at), event.event_id, event.priority)
            if event.ticket_id not in created or candidate < created[event.ticket_id]:
                created[event.ticket_id] = candidate
        elif isinstance(event, TicketReplied) and event.author_role == "agent" and event.public:
            at = ms(event.occurred_at)
            replied[event.ticket_id] = min(at, replied.get(event.ticket_id, at))
    targets = settings.first_response_targets
    return {
        ticket
        for ticket, (at, _, priority) in created.items()
        if ticket not in replied or replied[ticket] > at + targets[priority] * 1000
    }


def breaches_on(settings: Settings, expected: int, timeout_s: float) -> Counter[str]:
    """Ticket ids of the ``sla.breached`` alerts on the alerts topic, with repeats."""
    found = asyncio.run(
        consume_all(settings.kafka_bootstrap, settings.topic_alerts, expected, timeout_s)
    )
    out: Counter[str] = Counter()
    for record in found:
        payload = json.loads(record.value)
        if payload.get("type") == "sla.breached":
            out[payload["ticket_id"]] += 1
    return out


def check_breaches(settings: Settings, dataset: Dataset, describe: Any) -> None:
    """Exactly the tickets that breached, each once: none refuted by a forwarded reply."""
    expected = expected_breaches(settings, dataset)
    assert expected, "the dataset has unanswered tickets"

    def published() -> bool:
        found = samples(scrape(settings.web_port), "deskpulse_sla_breaches_total")
        return sum(value for _, value in found) >= len(expected)

    wait_until(published, 120, 1.0, message=describe)
    time.sleep(3 * settings.breach_check_interval)
    found = breaches_on(settings, len(expected), 60)
    assert max(found.values()) == 1, [t for t, n in found.items() if n > 1][:10]
    false = set(found) - expected
    missing = expected - set(found)
    assert not false, f"{len(false)} false sla.breached, e.g. {sorted(false)[:10]}"
    assert not missing, f"{len(missing)} breaches missing, e.g. {sorted(missing)[:10]}"
    print(f"{len(found)} sla.breached, exactly the tickets that breached")


def check_instance_counts(state: dict[str, Any]) -> None:
    """Each partition's instance counts (meta) equal its tickets' shares (the last field of
    a state) added up: no move counted twice or lost across batches, retries and claims."""
    parts = {name.partition("}:")[0] for name in state if name.startswith("{p")}
    for part in parts:
        shares = [v[-1] for v in state.get(f"{part}}}:conv", ("hash", {}))[1].values()]
        meta = state[f"{part}}}:meta"][1]
        for metric, place in PLACES.items():
            digits = [share // place % 10 for share in shares]
            running = int(meta.get(RUNNING_FIELDS[metric].encode(), 0))
            at_risk = int(meta.get(AT_RISK_FIELDS[metric].encode(), 0))
            assert running == sum(d != NOT_COUNTED for d in digits), (part, metric)
            assert at_risk == sum(d == AT_RISK_NOW for d in digits), (part, metric)


def warnings_in(log: str, topic: str) -> int:
    return log.count(f"records on {topic} are not on the partition")


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture  # data only, built in well under a second: no shared set-up
def dataset() -> Dataset:
    # in delivery order (no simulated disorder): the breach clock reads every partition in
    # event time; the misrouting is what is tested
    data = build_dataset(seed=31, rate=1.0, out_of_order=0.0)
    print(f"\ndataset: {data.summary()}")
    return data


def tuned(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "batch_within": 0.1,
            "breach_check_interval": 1,
            "alert_rules": (),
            **update,
        }
    )


def state_of(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """A prefix's keys without it; meta without its version, its generation and the fence
    entries of forwards (the replay forwards nothing) and of the records the replay applied
    straight to their partitions (the worker forwards those), duplicates summed over the
    topics; ``bidx``, ``bver`` (stamped with the generation), ``lmoved``, ``hmoved`` and
    ``lgm`` (logs of the commits, with ``lgm``'s run in meta) and the configuration (with
    the prefix's generation) left out."""
    out: dict[str, Any] = {}
    for key, (kind, content) in redis_snapshot(client, f"{prefix}:*").items():
        name = key[len(prefix) + 1 :]
        if name.endswith((":bidx", ":bver", ":lmoved", ":hmoved", ":lgm")):
            continue
        if name.endswith(":conv"):
            content = {k: json.loads(v) for k, v in content.items()}
        if name == "config":
            continue  # its generation is the prefix's own
        if name.endswith(":meta"):
            # which copy of a duplicated event comes first, and so the topic its repeat is
            # counted on, depends on how partitions interleave: the count does not
            duplicates = sum(int(v) for k, v in content.items() if k.startswith(b"dup:"))
            content = {
                k: v
                for k, v in content.items()
                if k not in (b"version", b"gen")
                and k[:4] != b"lgm:"
                and b">" not in k
                and b"<" not in k
                and not k.startswith(b"dup:")
            } | {b"dup": duplicates}
        out[name] = (kind, content)
    return out


def test_mixed_partitioners_give_exact_kpis_breaches_and_replay(
    settings: Settings,
    make_topics: Any,
    dataset: Dataset,
    tmp_path: Path,
    start_worker: StartWorker,
) -> None:
    settings = tuned(settings, engine_process=True)
    make_topics(settings)
    hows = how_produced(dataset.records)
    worker = start_worker(settings, tmp_path / "worker", timeout_s=90)
    started = time.monotonic()
    placed = asyncio.run(produce_mixed(settings, dataset.records, hows))
    counts = wait_for_state(settings, dataset, timeout_s=240, describe=worker.describe)
    check_counters(counts, dataset)
    print(f"state complete {time.monotonic() - started:.1f}s after the first send: {counts}")

    rerouted = expected_rerouted(settings, dataset.records, placed)
    print(f"records off their conversation's partition: {dict(rerouted)}")
    assert set(rerouted) == set(settings.input_topics), rerouted
    assert sum(rerouted.values()) > len(dataset.records) / 3
    text = scrape(settings.web_port)
    for topic in settings.input_topics:
        found = sample(text, "deskpulse_events_rerouted_total", {"topic": topic})
        assert found == rerouted[topic], (topic, found, rerouted[topic])
    # the forwarded records were applied from the repartition topic
    applied_there = sum(
        value
        for labels, value in samples(text, "deskpulse_events_processed_total")
        if labels["topic"] == settings.topic_repartition
    )
    assert applied_there == sum(rerouted.values())
    log = worker.log()
    for topic in settings.input_topics:
        assert warnings_in(log, topic) == 1, worker.describe()
    assert "partitioner=murmur2_random" in log

    documents = compare_with_oracle(
        dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by)
    )
    full = documents[("24h", max(at for _, at, _ in documents), ())]["groups"][0]
    assert full["first_response"]["count"] > 300, full["first_response"]

    check_breaches(settings, dataset, worker.describe)
    assert worker.stop() == 0, worker.describe()

    # The replay applies the misrouted records straight to their partitions: the same KPIs
    # and the same state, whatever the repartition topic already holds. In one process,
    # and in two, where a misrouted record's partition may be the other process's.
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        live = state_of(client, settings.redis_prefix)
    finally:
        client.close()
    for processes in (1, 2, "staggered"):
        replay_matches_live(settings, dataset, documents, live, tmp_path, processes)


def replay_matches_live(
    settings: Settings,
    dataset: Dataset,
    documents: dict[Any, Any],
    live: dict[str, Any],
    tmp_path: Path,
    processes: int | str,
) -> None:
    """``processes``: the CLI's replay in that many processes, or ``"staggered"``: two
    processes' shares replayed here one after the other, sharing the fences read before
    the first, as a process that starts late does (reading them at its own start, the
    second would apply again the forwards of records the first applied itself)."""
    replayed = settings.model_copy(
        update={
            "redis_prefix": f"{settings.redis_prefix}-replay{processes}",
            "topic_deadletter": f"{settings.topic_deadletter}.replay{processes}",
        }
    )
    if processes == "staggered":
        asyncio.run(replay_staggered(replayed))
    else:
        done = run_cli(
            ["replay", "--processes", str(processes)],
            settings_env(replayed),
            cwd=tmp_path,
            timeout_s=240,
        )
        assert done.returncode == 0, done.stderr
        # once per process that read records of another partition on the topic
        assert 1 <= warnings_in(done.stderr, settings.topic_tickets) <= int(processes), done.stderr
    replay_counts = wait_for_state(replayed, dataset, timeout_s=5, settle_s=0, claims=False)
    check_counters(replay_counts, dataset)
    # The replay adopts the breaches the live worker published (read back from the alerts
    # topic) as claims: the same documents, breaches included, and the same state.
    replay_docs = compare_with_oracle(
        dataset, lambda width, at_s, by: kpis_store(replayed, width, at_s, by)
    )
    for key, document in documents.items():
        assert replay_docs[key] == document, (processes, key)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        replay = state_of(client, replayed.redis_prefix)
    finally:
        client.close()
    # each partition's SLA instance counts are its tickets' shares added up, with the
    # claims the worker made and the replay adopted
    for state in (live, replay):
        check_instance_counts(state)
    assert sorted(live) == sorted(replay), set(live) ^ set(replay)
    differing = field_differences(live, replay, live)
    assert not differing, (processes, differing)


async def replay_staggered(settings: Settings) -> None:
    """Two processes' shares one after the other, then the adoption of published alerts
    (the parent's, once all are done: a ticket of the first share may come from a record
    only the second reads)."""
    counts = await ensure_topics(settings)
    client = connect(settings, purpose="replay")
    try:
        store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
        fences = await start_fences(store, settings, counts)
        partitions = counts[settings.topic_tickets]
        for first in (1, 0):
            await replay(settings, only=range(first, partitions, 2), fences=fences, adopt=False)
        await adopt_all_published(settings, store, counts)
    finally:
        await client.aclose()


# -- the forward, record by record (engine, real broker and Redis) ---------------------------


class Crash(Exception):
    """The process dies here (not an error any retry would catch)."""


T0 = 1_795_392_000  # 2026-11-23T00:00:00Z


def event_bytes(event_type: str, t_s: float, event_id: str, **fields: Any) -> bytes:
    stamp = datetime.fromtimestamp(t_s, UTC).isoformat(timespec="milliseconds")
    body = {"event_id": event_id, "type": event_type, "occurred_at": stamp, **fields}
    return json.dumps(body).encode()


async def _forward_crash_and_repeat(settings: Settings, crash: bool) -> dict[str, Any]:
    """Ticket T-1 opened on its own partition, replied to on another; with ``crash`` the
    worker dies after the reply's forward was acknowledged, before its fence moved, and
    the same batch is read again by a new engine. Then the repartition topic is applied."""
    partitions = settings.topic_partitions
    home = java_partition(b"T-1", partitions)
    elsewhere = (home + 1) % partitions
    tickets = settings.topic_tickets
    batch = [
        SourceRecord(
            tickets, home, 0, b"T-1", event_bytes("ticket.created", T0, "c1", ticket_id="T-1")
        ),
        SourceRecord(
            tickets,
            elsewhere,
            0,
            b"T-1",
            event_bytes("ticket.replied", T0 + 90, "r1", ticket_id="T-1", author_role="agent"),
        ),
    ]
    client = AsyncRedis.from_url(settings.redis_url.get_secret_value())
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        config = CoreConfig.from_settings(settings)

        class DiesOnce(Store):
            async def commit(self, partition: int, expected: str, result: Any) -> bool:
                if crash and partition == elsewhere:
                    raise Crash
                return await super().commit(partition, expected, result)

        first = Engine(
            settings,
            DiesOnce(client, settings.redis_prefix, config),
            publisher,
            PipelineMetrics(CollectorRegistry()),
        )
        first.route(partitions, publisher)
        if crash:
            with pytest.raises(Crash):
                await first.process(batch)
        store = Store(client, settings.redis_prefix, config)
        metrics = PipelineMetrics(CollectorRegistry(), settings.input_topics)
        again = Engine(settings, store, publisher, metrics)
        again.route(partitions, publisher)
        await again.process(batch)  # nothing was acknowledged: the same records again
        copies = await consume_all(
            settings.kafka_bootstrap, settings.topic_repartition, 2 if crash else 1, 30
        )
        # read where they sit, as the worker owning that partition reads them
        await again.process(
            [
                SourceRecord(c.topic, c.partition, c.offset, c.key, c.value, c.headers)
                for c in copies
            ]
        )
        # a forward on the repartition topic is applied where it sits, never forwarded
        # again, even when it sits on another partition than its conversation's
        stray = event_bytes("ticket.replied", T0 + 120, "r2", ticket_id="T-2", author_role="agent")
        stray_at = (java_partition(b"T-2", partitions) + 1) % partitions
        headers = [("deskpulse-source-topic", tickets.encode())]
        await again.process(
            [SourceRecord(settings.topic_repartition, stray_at, 100, b"T-2", stray, headers)]
        )
        metas = {p: (await store.load(p, []))[0] for p in range(partitions)}
        document = await query_kpis(store, width_s=86_400, at_s=T0 + 3600, by=())
        text = generate_latest(metrics.registry).decode()
    finally:
        await publisher.stop()
        await client.aclose()
    return {
        "home": home,
        "elsewhere": elsewhere,
        "copies": copies,
        "metas": metas,
        "document": document,
        "text": text,
        "stray_at": stray_at,
    }


def test_a_forward_repeated_after_a_crash_changes_nothing(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)
    crashed = asyncio.run(_forward_crash_and_repeat(settings, crash=True))
    reference_settings = settings.model_copy(
        update={
            "redis_prefix": settings.redis_prefix + "-ref",
            "app_id": settings.app_id + "-ref",
            "topic_repartition": settings.topic_repartition + "-ref",
        }
    )
    make_topics(reference_settings)
    reference = asyncio.run(_forward_crash_and_repeat(reference_settings, crash=False))

    home, elsewhere = crashed["home"], crashed["elsewhere"]
    copies = crashed["copies"]
    assert len(copies) == 2, copies  # forwarded before the crash, and again after it
    for copy in copies:
        assert copy.partition == home and copy.key == b"T-1"
        headers = dict(copy.headers)
        assert headers == {
            "deskpulse-source-topic": settings.topic_tickets.encode(),
            "deskpulse-source-partition": str(elsewhere).encode(),
            "deskpulse-source-offset": b"0",
        }
    assert copies[0].value == copies[1].value  # byte for byte
    # the repeat was a duplicate: the KPIs are the reference's, one first response
    assert crashed["document"] == reference["document"]
    group = crashed["document"]["groups"][0]
    assert group["tickets_created"] == 1 and group["first_response"]["count"] == 1
    meta_home = crashed["metas"][home]
    repartition = settings.topic_repartition
    assert meta_home.counters.get(f"dup:{repartition}") == 1
    assert (
        reference["metas"][home].counters.get(f"dup:{reference_settings.topic_repartition}") is None
    )
    # the source partition's fence passed the reply, and notes where its forward went
    meta_elsewhere = crashed["metas"][elsewhere]
    assert meta_elsewhere.offsets[settings.topic_tickets] == 0
    assert meta_elsewhere.offsets[forwarded_key(repartition, home)] == copies[1].offset
    assert meta_home.offsets[repartition] == copies[1].offset
    # the stray forward was applied where it sits
    assert crashed["metas"][crashed["stray_at"]].offsets[repartition] == 100
    assert (
        sample(
            crashed["text"], "deskpulse_events_rerouted_total", {"topic": settings.topic_tickets}
        )
        == 1
    )
    assert (
        sample(crashed["text"], "deskpulse_events_rerouted_total", {"topic": settings.topic_chats})
        == 0
    )


def test_forwards_are_checked_against_the_topic_they_were_read_from(
    settings: Settings, make_topics: Any
) -> None:
    make_topics(settings)
    partitions = settings.topic_partitions
    chat = event_bytes("chat.accepted", T0, "a1", chat_id="C-1")
    at = java_partition(b"C-1", partitions)
    forged = [
        # a chat event said to come from the tickets topic
        SourceRecord(
            settings.topic_repartition,
            at,
            0,
            b"C-1",
            chat,
            [("deskpulse-source-topic", settings.topic_tickets.encode())],
        ),
        # no source named at all
        SourceRecord(settings.topic_repartition, at, 1, b"C-1", chat, []),
    ]

    async def run() -> None:
        client = AsyncRedis.from_url(settings.redis_url.get_secret_value())
        publisher = KafkaPublisher(settings)
        await publisher.start()
        try:
            engine = Engine(
                settings,
                Store(client, settings.redis_prefix, CoreConfig.from_settings(settings)),
                publisher,
                PipelineMetrics(CollectorRegistry()),
            )
            engine.route(partitions, publisher)
            await engine.process(forged)
        finally:
            await publisher.stop()
            await client.aclose()

    asyncio.run(run())
    letters = asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic_deadletter, 2, 30))
    reasons = sorted(dict(letter.headers)["deskpulse-reason"] for letter in letters)
    assert reasons == [b"wrong_topic", b"wrong_topic"], letters
    assert {dict(letter.headers)["deskpulse-source-topic"] for letter in letters} == {
        settings.topic_repartition.encode()
    }


# -- a worker killed mid-stream, two workers --------------------------------------------------


def assigned(log: str, topic: str) -> set[int]:
    """The partitions of ``topic`` in the worker's last assignment table."""
    table = log.rsplit("Setting newly assigned partitions", 1)[-1]
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) >= 3 and cells[1] == topic:
            out: set[int] = set()
            for part in cells[2].strip("{}").split(","):
                low, _, high = part.strip().partition("-")
                out.update(range(int(low), int(high or low) + 1))
            return out
    return set()


def repeated_forwards(settings: Settings, timeout_s: float = 30) -> int:
    """Records on the repartition topic beyond one per source record."""
    copies = asyncio.run(
        consume_all(settings.kafka_bootstrap, settings.topic_repartition, 1, timeout_s, settle_s=3)
    )
    sources = Counter(
        tuple(value for name, value in copy.headers if name.startswith("deskpulse-source"))
        for copy in copies
    )
    return sum(sources.values()) - len(sources)


class MixedProducer(threading.Thread):
    """:func:`produce_mixed` in chunks with pauses, in the background."""

    def __init__(self, settings: Settings, dataset: Dataset, *, pause_s: float) -> None:
        super().__init__(name="mixed-producer", daemon=True)
        self.settings, self.dataset, self.pause_s = settings, dataset, pause_s
        self.placed: list[tuple[str, int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(
                produce_mixed(
                    self.settings,
                    self.dataset.records,
                    how_produced(self.dataset.records),
                    chunk=300,
                    pause_s=self.pause_s,
                    sent=self.placed,
                )
            )
        except BaseException as error:  # re-raised by finish()
            self.error = error

    def finish(self) -> None:
        self.join(180)
        assert not self.is_alive() and self.error is None, self.error
        assert len(self.placed) == len(self.dataset.records)


@pytest.mark.slow
def test_kill_minus_nine_mid_stream_keeps_the_forwards_exactly_once(
    settings: Settings, make_topics: Any, dataset: Dataset, tmp_path: Path
) -> None:
    # small batches: many forwards and commits for a kill to land between
    settings = tuned(settings, engine_process=True, batch_size=50)
    make_topics(settings)
    producer = MixedProducer(settings, dataset, pause_s=0.4)
    worker = WorkerProcess(settings, tmp_path / "w", name="worker0")
    kills = []
    try:
        worker.wait_ready(90)
        producer.start()
        for number in range(1, 3):
            target = min(progress(settings) + 1500, dataset.distinct - 2000)
            wait_until(
                lambda target=target: progress(settings) >= target,  # type: ignore[misc]
                120,
                0.02,
                message=worker.describe,
            )
            kills.append(progress(settings))
            assert worker.kill() == -9
            worker = WorkerProcess(settings, tmp_path / "w", name=f"worker{number}")
            worker.wait_ready(90)
        producer.finish()
        counts = wait_for_state(settings, dataset, timeout_s=240, describe=worker.describe)
        repeats = repeated_forwards(settings)
        print(f"killed at {kills} distinct events applied; {repeats} forwards repeated; {counts}")
        # a repeated forward is a duplicate of its first copy, and nothing else is
        assert counts.dup == dataset.duplicates + repeats, (counts, repeats)
        assert counts.seen == dataset.valid + repeats
        compare_with_oracle(dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by))
        expected = expected_breaches(settings, dataset)
        wait_until(
            lambda: (
                sum(
                    v for _, v in samples(scrape(settings.web_port), "deskpulse_sla_breaches_total")
                )
                >= len(expected)
            ),
            120,
            1.0,
            message=worker.describe,
        )
        found = breaches_on(settings, len(expected), 60)
        assert set(found) == expected, (set(found) - expected, expected - set(found))
        assert worker.stop() == 0, worker.describe()
    finally:
        worker.stop(timeout_s=15)
        if producer.is_alive():
            producer.join(60)


def test_two_workers_own_each_partition_with_its_forwards(
    settings: Settings, make_topics: Any, dataset: Dataset, tmp_path: Path
) -> None:
    first = tuned(settings, engine_process=False)
    second = first.model_copy(update={"web_port": free_port(HOST)})  # the same group
    make_topics(first)
    a = WorkerProcess(first, tmp_path / "a", name="a")
    b = WorkerProcess(second, tmp_path / "b", name="b")
    with a, b:
        a.wait_ready(90)
        b.wait_ready(90)

        def split() -> bool:
            return bool(assigned(a.log(), first.topic_tickets)) and bool(
                assigned(b.log(), first.topic_tickets)
            )

        wait_until(split, 60, 0.5, message=lambda: a.describe() + "\n" + b.describe())
        placed = asyncio.run(produce_mixed(first, dataset.records, how_produced(dataset.records)))
        counts = wait_for_state(
            first, dataset, timeout_s=240, describe=lambda: a.describe() + b.describe()
        )
        check_counters(counts, dataset)
        # each worker has partition N of the repartition topic with partition N of the inputs
        for worker in (a, b):
            log = worker.log()
            owned = assigned(log, first.topic_tickets)
            for topic in (first.topic_chats, first.topic_surveys, first.topic_repartition):
                assert assigned(log, topic) == owned, (topic, owned, worker.describe())
        assert assigned(a.log(), first.topic_tickets).isdisjoint(
            assigned(b.log(), first.topic_tickets)
        )
        compare_with_oracle(dataset, lambda width, at_s, by: kpis_store(first, width, at_s, by))
        rerouted = expected_rerouted(first, dataset.records, placed)
        counted: Counter[str] = Counter()
        for worker_settings in (first, second):
            for labels, value in samples(
                scrape(worker_settings.web_port), "deskpulse_events_rerouted_total"
            ):
                counted[labels["topic"]] += int(value)
        assert counted == rerouted
        assert a.stop() == 0 and b.stop() == 0
