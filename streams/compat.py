"""Every use of a dependency's private attributes or internal modules, in one place.

Faust, aiokafka and prometheus_client give no public way to do these few things; each is
one small function here with why it is needed and the release it was checked against
(faust-streaming 0.15.3, aiokafka 0.14.0, prometheus-client 0.26.0; pyproject.toml allows
older ones, down to 0.11, 0.11 and 0.20). ``tests/integration/test_compat.py`` holds each
against the installed release and fails naming the dependency and the attribute when one
changes.

The module imports only its dependencies, never deskpulse: any layer may use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableSet
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition
from prometheus_client.utils import floatToGoString

__all__ = [
    "FAUST_HOOKS",
    "ask_metadata",
    "broker_addresses",
    "committed_offset",
    "estimate_record_bytes",
    "gauge_value",
    "open_tables",
    "read_offset",
    "record_iterator",
    "records_partition",
    "replace_record_iterator",
    "set_fetch_max_wait_ms",
    "unacked_messages",
    "value_text",
]

# -- Faust (checked: faust-streaming 0.15.3) --------------------------------------------------

#: Faust's private factory methods deskpulse's subclasses (streams/app.py) override, by the
#: Faust class that defines them: the only way to swap in its own transport, web server,
#: consumer thread and consumer. Faust 0.15 has no public hook for any of them.
FAUST_HOOKS: tuple[tuple[str, str], ...] = (
    ("faust.App", "_new_transport"),  # a transport with deskpulse's consumer
    ("faust.App", "_new_web"),  # a web server without Faust's own pages
    ("faust.transport.drivers.aiokafka.Consumer", "_new_consumer_thread"),
    ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_create_worker_consumer"),
)


def open_tables(manager: Any) -> Awaitable[None]:
    """What Faust's ``TableManager.on_start`` does after the second it sleeps first (set up
    the tables' changelog channels, then no table may be added); deskpulse's table manager
    (streams/app.py) does it at once. No public method does it (faust 0.15)."""
    opened: Awaitable[None] = manager._update_channels()
    return opened


def unacked_messages(consumer: Any) -> MutableSet[Any]:
    """Faust's set of messages taken and not acknowledged yet, which a stop waits on."""
    # no public accessor; a batch given up at a stop is dropped from it (faust 0.15)
    unacked: MutableSet[Any] = consumer._unacked_messages
    return unacked


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset Faust last committed for ``tp`` (None before its first commit)."""
    # Faust keeps it per partition with no public accessor (faust 0.15)
    offset: int | None = consumer._committed_offset.get(tp)
    return offset


def read_offset(consumer: Any, tp: Any) -> int | None:
    """The offset of the last record Faust's consumer handed on for ``tp`` (None before
    the first, and after a seek to 0); a seek sets it to the offset sought."""
    # Faust keeps it per partition with no public accessor, as a defaultdict: read with
    # get, never by index, which would add the partition (faust 0.15)
    offset: int | None = consumer._read_offset.get(tp)
    return offset


# -- aiokafka (checked: 0.14.0) ---------------------------------------------------------------


def set_fetch_max_wait_ms(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Set how long the broker may hold a fetch, on a consumer not started yet."""
    # Faust passes a fixed fetch_max_wait_ms=1500 to the constructor; the consumer's start
    # hands this attribute to its fetcher (aiokafka 0.14)
    consumer._fetch_max_wait_ms = wait_ms


def record_iterator() -> Callable[[Any], Iterator[Any]]:
    """aiokafka's per-partition record iterator (``PartitionRecords._unpack_records``)."""
    # the one place a batch's codec error surfaces, to be wrapped (aiokafka 0.14)
    original: Callable[[Any], Iterator[Any]] = PartitionRecords._unpack_records
    return original


def replace_record_iterator(iterator: Callable[[Any], Iterator[Any]]) -> None:
    """Install ``iterator`` as aiokafka's per-partition record iterator (every consumer)."""
    PartitionRecords._unpack_records = iterator


def records_partition(records: Any) -> TopicPartition:
    """The topic partition a ``PartitionRecords`` holds records of."""
    # stored private, with no accessor (aiokafka 0.14)
    tp: TopicPartition = records._tp
    return tp


def estimate_record_bytes(key: bytes | None, value: bytes | None, headers: list[Any]) -> int:
    """The producer's own estimate of a record's size, which it holds against
    ``max_request_size``."""
    # aiokafka.record is internal; the producer refuses by this very number (aiokafka 0.14)
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


def broker_addresses(producer: AIOKafkaProducer) -> dict[int, str]:
    """``host:port`` of every broker in a started producer's metadata, by node id."""
    # the producer's client and its cluster metadata are undocumented (aiokafka 0.14)
    return {b.nodeId: f"{b.host}:{b.port}" for b in producer.client.cluster.brokers()}


def ask_metadata(producer: AIOKafkaProducer, node_id: int) -> Awaitable[Any]:
    """A metadata request for no topics, sent to ``node_id`` over the producer's own
    connection (aiokafka.protocol is internal; aiokafka 0.14)."""
    asked: Awaitable[Any] = producer.client.send(node_id, MetadataRequest([]))
    return asked


# -- prometheus_client (checked: 0.26.0) ------------------------------------------------------


def gauge_value(gauge: Any) -> float:
    """The current value of a gauge (or a labelled gauge's child)."""
    # reading it back publicly means collect(), which builds every sample (0.26)
    value: float = gauge._value.get()
    return value


def value_text(value: float) -> str:
    """A sample's value as ``generate_latest`` spells it (Go's float formatting): the
    collector writes the lines of the samples that changed itself, a few thousand a
    refresh, and only their value is new text."""
    # prometheus_client.utils is internal: no public name for it (0.26)
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text
