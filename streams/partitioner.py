"""Which partition a conversation belongs on: the Java client's default rule, fast.

Kafka's Java producer (and aiokafka, kafka-python, Faust) put a keyed record on partition
``(murmur2(key) & 0x7fffffff) % partitions``; librdkafka's default (``consistent_random``,
used by confluent-kafka and many Go, .NET and C clients) hashes with CRC32 instead. deskpulse
keeps a conversation's state with one partition, so it decides where a record *belongs* by
the first rule applied to the record's conversation id (``ticket_id`` or ``chat_id``), not
by where a producer happened to put it.

Nothing here does I/O. :func:`murmur2` is pure Python: 1.4 to 2.5 µs for a 12-byte id on a
slow core, a fifth to a third of a record's whole budget. :class:`ConversationPartitions`
therefore caches the answer per conversation (a conversation has several events, so more
than half the lookups are a dict hit) and hashes a batch's new ids together
(:func:`murmur2_many`, about 0.4 µs an id).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from itertools import islice

__all__ = [
    "ConversationPartitions",
    "forwarded_key",
    "java_partition",
    "murmur2",
    "murmur2_many",
]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
# one precompiled little-endian word unpacker per whole-word count of short keys
_WORDS: tuple[Callable[[bytes], tuple[int, ...]], ...] = tuple(
    struct.Struct(f"<{n}I").unpack_from for n in range(65)
)


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit MurmurHash2 of ``data`` (``org.apache.kafka.common.utils.Utils``).

    The same value as ``aiokafka.partitioner.murmur2``, in about half its time: whole
    words are unpacked at once and each product is masked once.
    """
    length = len(data)
    m = _M
    h = _SEED ^ length
    count = length >> 2
    words = _WORDS[count](data) if count < len(_WORDS) else struct.unpack_from(f"<{count}I", data)
    for k in words:
        k = (k * m) & _MASK
        k = ((k ^ (k >> 24)) * m) & _MASK
        h = ((h * m) & _MASK) ^ k
    tail = length & 3
    if tail:
        at = length - tail
        if tail == 3:
            h ^= data[at + 2] << 16
        if tail >= 2:
            h ^= data[at + 1] << 8
        h = ((h ^ data[at]) * m) & _MASK
    h ^= h >> 13
    h = (h * m) & _MASK
    return h ^ (h >> 15)


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """:func:`murmur2` of each of ``keys``, which must all have one length, at once.

    Each key is a 64-bit lane of one big integer: a product of a 32-bit lane value and the
    32-bit constant fits its lane, so one multiplication (one mask, one shift) mixes every
    key, and the interpreter's per-operation cost is paid per word, not per key and word.
    """
    count = len(keys)
    if count == 0:
        return []
    length = len(keys[0])
    m = _M
    lanes = (1 << (64 * count)) // ((1 << 64) - 1)  # a 1 in every lane
    mask = lanes * _MASK
    pad = b"\0\0\0\0"
    h = lanes * (_SEED ^ length)
    for at in range(0, length - 3, 4):
        k = int.from_bytes(pad.join([key[at : at + 4] for key in keys]) + pad, "little")
        k = (k * m) & mask
        k = (((k ^ (k >> 24)) & mask) * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length & 3
    if tail:
        at = length - tail
        fill = b"\0" * (4 - tail)
        t = int.from_bytes(pad.join([key[at:] + fill for key in keys]) + pad, "little")
        h = ((h ^ t) * m) & mask
    h = (h ^ (h >> 13)) & mask
    h = (h * m) & mask
    h = (h ^ (h >> 15)) & mask
    return list(struct.unpack(f"<{2 * count}I", h.to_bytes(8 * count, "little"))[::2])


def java_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner gives a record keyed ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class ConversationPartitions:
    """Conversation id (``t:<ticket_id>``, ``c:<chat_id>``) -> the partition it belongs on.

    The id is hashed without its two-character kind prefix: upstream keys records by the
    bare ``ticket_id`` or ``chat_id``. Answers are cached; when the cache holds
    ``max_entries``, the oldest half is dropped (conversations come and go in event time,
    so the oldest entries are the least likely to be asked again).
    """

    def __init__(self, partitions: int, max_entries: int = 65_536) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        self.partitions = partitions
        self.max_entries = max(2, max_entries)
        self._cache: dict[str, int] = {}
        #: a dict hit, for the hot path: ``cached(conversation_id)`` is ``None`` on a miss
        self.cached = self._cache.get

    def __call__(self, conversation_id: str) -> int:
        """The partition of ``conversation_id`` (computed and cached on a miss)."""
        found = self._cache.get(conversation_id)
        if found is not None:
            return found
        return self._compute((conversation_id,))[conversation_id]

    def many(self, conversation_ids: Sequence[str]) -> list[int]:
        """The partition of each of ``conversation_ids``: the new ones hashed together."""
        get = self._cache.get
        found = [get(conversation_id) for conversation_id in conversation_ids]
        if None not in found:
            return found  # type: ignore[return-value]  # no None in it
        fresh = self._compute(
            {c for c, partition in zip(conversation_ids, found, strict=True) if partition is None}
        )
        return [
            fresh[c] if partition is None else partition
            for c, partition in zip(conversation_ids, found, strict=True)
        ]

    def _compute(self, conversation_ids: Collection[str]) -> dict[str, int]:
        ids = list(conversation_ids)
        keys = [conversation_id[2:].encode("utf-8", "surrogatepass") for conversation_id in ids]
        groups: list[tuple[list[str], list[bytes]]] = [(ids, keys)]
        if len({len(key) for key in keys}) > 1:  # ids of one format have one length
            by_length: dict[int, tuple[list[str], list[bytes]]] = defaultdict(lambda: ([], []))
            for conversation_id, key in zip(ids, keys, strict=True):
                same = by_length[len(key)]
                same[0].append(conversation_id)
                same[1].append(key)
            groups = list(by_length.values())
        partitions = self.partitions
        out: dict[str, int] = {}
        for same_ids, same_keys in groups:
            # a few keys: one at a time costs less than setting up the lanes
            if len(same_keys) > 3:
                hashes = murmur2_many(same_keys)
            else:
                hashes = [murmur2(key) for key in same_keys]
            out.update(zip(same_ids, [(h & 0x7FFFFFFF) % partitions for h in hashes], strict=True))
        cache = self._cache
        if len(cache) + len(out) > self.max_entries:
            for stale in list(islice(cache, max(len(cache) // 2, len(out)))):
                del cache[stale]
        cache.update(out)
        return out

    def __len__(self) -> int:
        return len(self._cache)


def forwarded_key(repartition_topic: str, partition: int) -> str:
    """The fence entry (``off:<key>`` in a source partition's meta) holding the newest
    offset that a record forwarded from that partition got on the repartition topic's
    ``partition``. A ``>`` cannot be in a topic name: it never meets a topic's own entry."""
    return f"{repartition_topic}>{partition}"


def applied_from_key(topic: str, partition: int) -> str:
    """The fence entry (``off:<key>`` in a partition's meta) holding the newest offset of
    ``topic``'s ``partition`` among the records ``deskpulse replay`` read there and applied
    straight to this partition, as they belong here. A ``<`` cannot be in a topic name:
    it never meets a topic's own entry, nor a :func:`forwarded_key`."""
    return f"{topic}<{partition}"
