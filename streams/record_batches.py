"""A record batch no client can decode is reported with where it is, not only what failed.

Kafka refuses a batch it cannot decompress when it is produced (it checks every compressed
batch), but a Kafka-compatible broker may store one — the embedded broker does, when the
CRC is right and the compressed payload is not. aiokafka then raises the codec's own error
(``DecompressionError('lz4: …')``, ``BadGzipFile``, ``UnsupportedCodecError``) from inside a
fetch, naming neither topic, partition nor offset, and the worker stops on it at every
start. :func:`install` wraps aiokafka's per-partition record iterator so that error
becomes :class:`~models.errors.UndecodableBatch`, which names the topic, the partition and
the batch's first offset — what an operator needs to move the consumer group past it.

The iterator (``PartitionRecords._unpack_records``) is private to aiokafka: it is reached
through :mod:`~deskpulse.streams.compat`, whose test fails if a release renames it. A bad CRC
(``CorruptRecordException``) is left alone: aiokafka fetches the batch again, as it should
for bytes damaged on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiokafka.errors import CorruptRecordException

from deskpulse.models.errors import UndecodableBatch
from deskpulse.streams import compat

__all__ = ["install", "installed"]

_MARK = "__deskpulse_undecodable__"


def _reporting(original: Callable[[Any], Iterator[Any]]) -> Callable[[Any], Iterator[Any]]:
    def _unpack_records(self: Any) -> Iterator[Any]:
        try:
            yield from original(self)
        except CorruptRecordException:
            raise
        except Exception as error:
            # next_fetch_offset moves past each record yielded: it is the batch's first
            tp = compat.records_partition(self)
            raise UndecodableBatch(tp.topic, tp.partition, self.next_fetch_offset, error) from error

    setattr(_unpack_records, _MARK, True)
    _unpack_records.__wrapped__ = original  # type: ignore[attr-defined]
    return _unpack_records


def installed() -> bool:
    """Whether aiokafka's record iterator reports undecodable batches this way."""
    return bool(getattr(compat.record_iterator(), _MARK, False))


def install() -> None:
    """Wrap aiokafka's record iterator (once per process; idempotent)."""
    if not installed():
        compat.replace_record_iterator(_reporting(compat.record_iterator()))
