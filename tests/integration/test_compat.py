"""Each private attribute deskpulse uses (``deskpulse.streams.compat``), held against the
installed Faust, aiokafka and prometheus_client: a release that renames or reshapes one
fails here, naming the dependency and the attribute, before the worker misbehaves."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import MutableSet
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.types import TP
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from deskpulse.models.settings import Settings
from deskpulse.streams import app as app_module
from deskpulse.streams import compat
from deskpulse.streams.app import create_app


def _dotted(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- Faust ------------------------------------------------------------------------------------


def test_faust_still_has_every_hook_the_app_overrides() -> None:
    for owner, name in compat.FAUST_HOOKS:
        assert callable(getattr(_dotted(owner), name, None)), (
            f"faust: {owner}.{name} is gone; deskpulse overrides it (streams/app.py)"
        )


def test_every_private_faust_method_the_app_overrides_is_listed() -> None:
    # a new override of a private Faust method belongs in compat.FAUST_HOOKS, tested above
    listed = {name for _, name in compat.FAUST_HOOKS}
    for cls in vars(app_module).values():
        if not (inspect.isclass(cls) and cls.__module__ == app_module.__name__):
            continue
        for name, value in vars(cls).items():
            private = name.startswith("_") and not name.startswith("__")
            if private and callable(value) and any(hasattr(base, name) for base in cls.__mro__[1:]):
                assert name in listed, f"{cls.__name__}.{name} overrides a private method"


def _faust_consumer() -> Any:
    async def build() -> Any:
        return create_app(Settings()).consumer

    return asyncio.run(build())


def test_faust_table_manager_still_opens_its_tables_after_a_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inspect

    import faust.tables

    assert callable(getattr(faust.tables.TableManager, "_update_channels", None)), (
        "faust: TableManager._update_channels is gone; deskpulse's table manager calls it"
    )
    source = inspect.getsource(faust.tables.TableManager.on_start)
    assert "_update_channels" in source and "recovery.start" in source, (
        "faust: TableManager.on_start changed; deskpulse's (streams/app.py) repeats it"
    )

    # deskpulse's start does the same, without the sleep (the parts that need a running
    # consumer stand in)
    calls: list[str] = []

    class Recovery:
        async def start(self) -> None:
            calls.append("recovery started")

    async def opened(manager: Any) -> None:
        calls.append("tables opened")

    async def slept(self: Any, seconds: float) -> None:
        calls.append(f"slept {seconds}")

    async def started() -> None:
        tables = create_app(Settings()).tables
        monkeypatch.setattr(type(tables), "recovery", property(lambda self: Recovery()))
        monkeypatch.setattr(type(tables), "sleep", slept)
        monkeypatch.setattr(compat, "open_tables", opened)
        await tables.on_start()

    asyncio.run(started())
    assert calls == ["tables opened", "recovery started"]


def test_faust_unacked_messages_is_the_set_a_stop_waits_on() -> None:
    consumer = _faust_consumer()
    unacked = compat.unacked_messages(consumer)
    assert isinstance(unacked, MutableSet), (
        f"faust: Consumer._unacked_messages is a {type(unacked).__name__}, not a set"
    )
    message = faust.types.Message("t", 0, 7, time.time(), 0, None, b"k", b"v", None)
    consumer.track_message(message)
    assert message in compat.unacked_messages(consumer), (
        "faust: Consumer.track_message no longer adds to Consumer._unacked_messages"
    )
    compat.unacked_messages(consumer).discard(message)  # what a stop giving a batch up does
    assert message not in consumer._unacked_messages


def test_faust_committed_offset_is_kept_per_partition() -> None:
    consumer = _faust_consumer()
    assert compat.committed_offset(consumer, TP("t", 0)) is None, (
        "faust: Consumer._committed_offset does not answer None before a commit"
    )
    # Faust records each commit there (the lag gauge reads it back)
    source = inspect.getsource(type(consumer)._commit_offsets)
    assert "self._committed_offset.update(" in source, (
        "faust: Consumer._commit_offsets no longer updates Consumer._committed_offset"
    )


def test_faust_read_offset_is_kept_per_partition_and_set_by_a_seek() -> None:
    consumer = _faust_consumer()
    tp = TP("t", 0)
    assert compat.read_offset(consumer, tp) is None, (
        "faust: Consumer._read_offset does not answer None before the first record"
    )
    assert tp not in consumer._read_offset, "compat.read_offset added the partition"
    consumer._read_offset[tp] = 41
    assert compat.read_offset(consumer, tp) == 41
    # the fetch loop moves it per record handed on; a seek (the watchdog's, through
    # seek_wait, run in the consumer thread) sets it to the offset sought
    drain = inspect.getsource(type(consumer)._drain_messages)
    assert "self._read_offset.__setitem__" in drain, (
        "faust: Consumer._drain_messages no longer records each record's offset in _read_offset"
    )
    seek_wait = inspect.getsource(type(consumer._thread)._seek_wait)
    assert "self.consumer._read_offset[tp] = offset" in seek_wait, (
        "faust: AIOKafkaConsumerThread._seek_wait no longer sets Consumer._read_offset"
    )


# -- aiokafka ---------------------------------------------------------------------------------


def test_aiokafka_fetch_max_wait_is_the_attribute_its_fetcher_takes() -> None:
    async def build() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers="localhost:1", fetch_max_wait_ms=777)

    consumer = asyncio.run(build())
    assert getattr(consumer, "_fetch_max_wait_ms", None) == 777, (
        "aiokafka: AIOKafkaConsumer no longer keeps fetch_max_wait_ms in _fetch_max_wait_ms"
    )
    compat.set_fetch_max_wait_ms(consumer, 25)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(consumer.start), (
        "aiokafka: AIOKafkaConsumer.start no longer hands _fetch_max_wait_ms to its fetcher"
    )


def _partition_records(tp: TopicPartition, values: list[bytes]) -> PartitionRecords:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for n, value in enumerate(values):
        builder.append(n, timestamp=int(time.time() * 1000), key=b"k", value=value, headers=[])
    records = MemoryRecords(bytes(builder.build()))
    return PartitionRecords(tp, records, [], 0, None, None, True, READ_UNCOMMITTED)


def test_aiokafka_record_iterator_can_be_wrapped_and_names_its_partition() -> None:
    tp = TopicPartition("t", 3)
    original = compat.record_iterator()
    assert inspect.isgeneratorfunction(original), (
        "aiokafka: PartitionRecords._unpack_records is no longer a generator function"
    )
    seen: list[TopicPartition] = []

    def wrapped(records: Any) -> Any:
        seen.append(compat.records_partition(records))
        yield from original(records)

    compat.replace_record_iterator(wrapped)
    try:
        values = [record.value for record in _partition_records(tp, [b"a", b"b"])]
    finally:
        compat.replace_record_iterator(original)
    assert values == [b"a", b"b"]
    assert seen == [tp], (
        "aiokafka: PartitionRecords no longer iterates through _unpack_records, or keeps "
        "its partition elsewhere than _tp"
    )
    assert compat.record_iterator() is original


def test_aiokafka_estimate_is_the_size_of_the_record_it_builds() -> None:
    key, value = b"key", b"v" * 1000
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=0, key=key, value=value, headers=[])
    estimate = compat.estimate_record_bytes(key, value, [])
    built = len(builder.build())
    # the estimate is the batch's (header included): at least the record, never far off
    assert built <= estimate < built + 200, (
        f"aiokafka: DefaultRecordBatchBuilder.estimate_size_in_bytes says {estimate} for a "
        f"{built}-byte batch"
    )
    assert compat.estimate_record_bytes(key, value * 2, []) > estimate


def test_aiokafka_producer_metadata_reaches_every_broker(broker: str) -> None:
    async def ask() -> tuple[dict[int, str], Any]:
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            brokers = compat.broker_addresses(producer)
            answer = await compat.ask_metadata(producer, next(iter(brokers)))
            return brokers, answer
        finally:
            await producer.stop()

    brokers, answer = asyncio.run(ask())
    assert list(brokers.values()) == [broker], (
        f"aiokafka: AIOKafkaProducer.client.cluster.brokers() gave {brokers}"
    )
    # (which topics come back is the broker's choice: the embedded one lists them all)
    answered = [f"{host}:{port}" for _, host, port, *_ in answer.brokers]
    assert answered == [broker], (
        f"aiokafka: a MetadataRequest answered {type(answer).__name__} with brokers {answered}"
    )


# -- prometheus_client ------------------------------------------------------------------------


def test_prometheus_gauge_value_reads_back_what_was_set() -> None:
    gauge = Gauge("compat_probe", "a probe", ["topic"], registry=CollectorRegistry())
    gauge.labels("a").set(12.5)
    assert compat.gauge_value(gauge.labels("a")) == 12.5, (
        "prometheus_client: a gauge's _value.get() no longer reads what set() wrote"
    )
    assert compat.gauge_value(gauge.labels("b")) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        *(0.0, 1.0, -1.0, 0.1, 2.5e-7, 123456.0, 1234567.0, 1e22, -1e22, 7 / 3),
        *(float("inf"), float("-inf"), float("nan"), 10**20),
    ],
)
def test_prometheus_value_text_is_what_generate_latest_writes(value: float) -> None:
    registry = CollectorRegistry()
    Gauge("compat_probe", "a probe", registry=registry).set(value)
    line = generate_latest(registry).decode().splitlines()[-1]
    assert line == "compat_probe " + compat.value_text(value), (
        f"prometheus_client: utils.floatToGoString({value!r}) is not the text format's value"
    )
