"""Redis-backed KPI state: one conditional transaction per partition per batch.

Key layout (``P`` = ``DESKPULSE_REDIS_PREFIX``, ``n`` = source partition; every key of a
partition carries the hash tag ``{pn}``, so a batch is one script on one cluster slot):

=============================  ===========================================================
``P:{pn}:meta``                hash: ``version``, ``wm`` (newest event time, ms),
                               ``wm:<topic>`` (the same per source topic),
                               ``off:<topic>`` (last applied offset), ``held``, ``orphaned``,
                               ``dup:<topic>``, ``late:<topic>``, ``applied``
``P:{pn}:b:<start>``           hash: fine bucket (``DESKPULSE_BUCKET_SECONDS``), fields
                               ``channel␟queue␟priority␟field`` -> integer
``P:{pn}:r:<start>``           hash: the same fields rolled up per ``rollup_seconds``
``P:{pn}:B:<start>``,          hash: the fine and rolled-up fields summed over all groups,
``P:{pn}:R:<start>``           keyed ``field`` alone (reads without grouping take these)
``P:{pn}:bidx``                zset: bucket key suffix -> bucket end (s), for trimming
``P:{pn}:tot``                 hash: the cumulative (Prometheus-native) totals
``P:{pn}:conv``                hash: conversation id -> :class:`~streams.core.Conversation`
``P:{pn}:convexp``             zset: conversation id -> its newest event time (ms)
``P:{pn}:held``                hash: conversation id -> events held for its opener
``P:{pn}:due``                 zset: ticket id -> first-response deadline (ms) while it
                               may still breach
``P:{pn}:breached``            hash: ticket id -> deadline, once its breach is claimed
``P:{pn}:breach_out``          hash: ticket id -> breach payload claimed but not yet
                               acknowledged by the broker (re-sent after a crash)
``P:partitions``               set of partition numbers that have state
``P:config``                   hash: the bucket sizes and store layout the state was
                               written with
=============================  ===========================================================

Exactly once: :meth:`Store.load` reads ``version`` with the states; :meth:`Store.commit`
runs a Lua script that applies the batch only if ``version`` is unchanged, and records
the offsets in the same step. A batch whose reply was lost and is retried finds the
version moved and is re-folded from fresh state, where the offset fence skips what was
applied. Memory is bounded by event-time retention: buckets whose end is older than the
newest event time minus retention, and conversations with no event since then, are
deleted by the same script (a conversation deleted while still waiting for its opener
counts its held events as orphaned).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from streams.core import SEP, BatchResult, Conversation, CoreConfig

__all__ = ["LAYOUT", "PartitionMeta", "Store", "text"]

#: Version of the key layout below; state written with another one is refused at start.
#: 2: the all-groups buckets ``B:``/``R:``.
LAYOUT = "2"

# Applies one batch if the partition's version is the one the batch was folded against.
# ARGV: version, watermark ms, bucket cutoff s, conversation cutoff ms, then one JSON array
# of strings (one argument instead of a million keeps the client's packing cheap) with
# sections each led by its item count: offsets (topic, offset), per-topic newest event
# times (topic, ms), meta increments (field,
# delta), buckets (suffix, end s, n, (field, delta) * n), totals (field, delta),
# conversations (id, newest ms, held count, breach deadline ms or '', state JSON as a
# string). Numbers travel as strings: Lua numbers are doubles and large ones would print in
# exponent form; a state travels as a string so cjson hands its bytes over untouched.
_COMMIT = """
local base = KEYS[1]
local meta, bidx, tot = base .. 'meta', base .. 'bidx', base .. 'tot'
local conv, convexp, held = base .. 'conv', base .. 'convexp', base .. 'held'
local due, breached = base .. 'due', base .. 'breached'
local current = redis.call('HGET', meta, 'version') or '0'
if current ~= ARGV[1] then
  return {0, current, 0}
end
local p = cjson.decode(ARGV[5])
local i = 1
local n
-- offsets (the fence) and per-topic newest event times only ever move forward
for _, kind in ipairs({'off:', 'wm:'}) do
  n = tonumber(p[i]); i = i + 1
  for _ = 1, n do
    local field = kind .. p[i]
    if tonumber(p[i + 1]) > tonumber(redis.call('HGET', meta, field) or '-1') then
      redis.call('HSET', meta, field, p[i + 1])
    end
    i = i + 2
  end
end
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  redis.call('HINCRBY', meta, p[i], p[i + 1]); i = i + 2
end
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local key = base .. p[i]
  redis.call('ZADD', bidx, p[i + 1], p[i])
  local fields = tonumber(p[i + 2]); i = i + 3
  for _ = 1, fields do
    if redis.call('HINCRBY', key, p[i], p[i + 1]) == 0 then
      redis.call('HDEL', key, p[i])
    end
    i = i + 2
  end
end
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  if redis.call('HINCRBY', tot, p[i], p[i + 1]) == 0 then
    redis.call('HDEL', tot, p[i])
  end
  i = i + 2
end
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local id = p[i]
  redis.call('HSET', conv, id, p[i + 4])
  redis.call('ZADD', convexp, p[i + 1], id)
  if p[i + 2] == '0' then
    redis.call('HDEL', held, id)
  else
    redis.call('HSET', held, id, p[i + 2])
  end
  if p[i + 3] == '' then
    redis.call('ZREM', due, id)
  elseif redis.call('HEXISTS', breached, id) == 0 then
    redis.call('ZADD', due, p[i + 3], id)
  end
  i = i + 5
end
redis.call('HSET', meta, 'wm', ARGV[2])
local old = redis.call('ZRANGEBYSCORE', bidx, '-inf', ARGV[3], 'LIMIT', 0, 500)
for _, suffix in ipairs(old) do
  redis.call('DEL', base .. suffix)
  redis.call('ZREM', bidx, suffix)
end
local orphaned = 0
local expired = redis.call('ZRANGEBYSCORE', convexp, '-inf', '(' .. ARGV[4], 'LIMIT', 0, 2000)
for _, id in ipairs(expired) do
  local waiting = tonumber(redis.call('HGET', held, id) or '0')
  orphaned = orphaned + waiting
  redis.call('HDEL', conv, id)
  redis.call('HDEL', held, id)
  redis.call('ZREM', convexp, id)
  redis.call('ZREM', due, id)
  redis.call('HDEL', breached, id)
end
if orphaned > 0 then
  redis.call('HINCRBY', meta, 'orphaned', orphaned)
  redis.call('HINCRBY', meta, 'held', -orphaned)
end
local version = redis.call('HINCRBY', meta, 'version', 1)
return {1, tostring(version), orphaned}
"""


@dataclass(frozen=True)
class PartitionMeta:
    """What a batch is folded against: the version to check, watermark and offsets."""

    version: str
    watermark_ms: int
    offsets: dict[str, int]
    counters: dict[str, int]
    topic_watermarks: dict[str, int] = field(default_factory=dict)


def text(value: bytes | str) -> str:
    """A Redis reply as ``str`` (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """KPI state of all partitions under one key prefix."""

    def __init__(self, redis: Redis, prefix: str, config: CoreConfig) -> None:
        self.redis = redis
        self.prefix = prefix
        self.config = config
        self._commit = redis.register_script(_COMMIT)
        self._known_partitions: set[int] = set()

    def base(self, partition: int) -> str:
        """The key prefix of one partition, with its hash tag."""
        return f"{self.prefix}:{{p{partition}}}:"

    async def check_config(self) -> None:
        """Refuse to mix state written with other bucket sizes (reads would be wrong), or
        by a version of deskpulse that laid the keys out differently."""
        key = f"{self.prefix}:config"
        wanted = {
            "bucket_seconds": str(self.config.bucket_seconds),
            "rollup_seconds": str(self.config.rollup_seconds),
        }
        created = await self.redis.hsetnx(key, "bucket_seconds", wanted["bucket_seconds"])
        await self.redis.hsetnx(key, "rollup_seconds", wanted["rollup_seconds"])
        if created:
            await self.redis.hsetnx(key, "layout", LAYOUT)
        stored = {text(k): text(v) for k, v in (await self.redis.hgetall(key)).items()}
        self._refuse_other_layout(stored)
        for name, value in wanted.items():
            if stored.get(name) != value:
                from models.errors import SettingsError

                raise SettingsError(
                    f"DESKPULSE_{name.upper()}",
                    f"is {value} but the state under prefix {self.prefix!r} was written with "
                    f"{stored.get(name)}; use another DESKPULSE_REDIS_PREFIX or the old value",
                )

    async def check_readable(self) -> None:
        """For readers (``deskpulse kpis``): refuse state of another layout, write nothing."""
        stored = {
            text(k): text(v) for k, v in (await self.redis.hgetall(f"{self.prefix}:config")).items()
        }
        if stored:
            self._refuse_other_layout(stored)

    def _refuse_other_layout(self, stored: dict[str, str]) -> None:
        if stored.get("layout") != LAYOUT:
            from models.errors import SettingsError

            raise SettingsError(
                "DESKPULSE_REDIS_PREFIX",
                f"the state under prefix {self.prefix!r} was written by an older deskpulse "
                f"(store layout {stored.get('layout', '1')}, this one is {LAYOUT}); replay "
                "the input topics into a new prefix (deskpulse replay)",
            )

    async def load(
        self, partition: int, conversation_ids: Iterable[str]
    ) -> tuple[PartitionMeta, dict[str, Conversation | None]]:
        """Read a partition's meta and the given conversations in one round trip."""
        ids = list(dict.fromkeys(conversation_ids))
        base = self.base(partition)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(base + "meta")
            if ids:
                pipe.hmget(base + "conv", ids)
            replies = await pipe.execute()
        raw_meta = {text(k): text(v) for k, v in replies[0].items()}
        offsets = {k[4:]: int(v) for k, v in raw_meta.items() if k.startswith("off:")}
        topic_watermarks = {k[3:]: int(v) for k, v in raw_meta.items() if k.startswith("wm:")}
        counters = {
            k: int(v)
            for k, v in raw_meta.items()
            if k not in ("version", "wm") and k[:4] != "off:" and k[:3] != "wm:"
        }
        meta = PartitionMeta(
            version=raw_meta.get("version", "0"),
            watermark_ms=int(raw_meta.get("wm", "0")),
            offsets=offsets,
            counters=counters,
            topic_watermarks=topic_watermarks,
        )
        states: dict[str, Conversation | None] = {}
        if ids:
            for conv_id, raw in zip(ids, replies[1], strict=True):
                states[conv_id] = None if raw is None else Conversation.loads(raw)
        return meta, states

    async def commit(self, partition: int, expected_version: str, result: BatchResult) -> bool:
        """Apply a folded batch atomically; ``False`` if the partition moved meanwhile."""
        if partition not in self._known_partitions:
            await self.redis.sadd(f"{self.prefix}:partitions", partition)
            self._known_partitions.add(partition)
        cfg = self.config
        flat: list[str] = [str(len(result.offsets))]
        for topic, offset in result.offsets.items():
            flat += [topic, str(offset)]
        flat.append(str(len(result.topic_watermarks)))
        for topic, newest_ms in result.topic_watermarks.items():
            flat += [topic, str(newest_ms)]
        counters = {k: v for k, v in result.counters.items() if v}
        if result.applied:
            counters["applied"] = result.applied
        flat.append(str(len(counters)))
        for name, delta in counters.items():
            flat += [name, str(delta)]
        flat.append(str(len(result.buckets)))
        for (level, start), fields in result.buckets.items():
            width = cfg.bucket_seconds if level in "bB" else cfg.rollup_seconds
            nonzero = [(k, v) for k, v in fields.items() if v]
            flat += [f"{level}:{start}", str(start + width), str(len(nonzero))]
            for name, delta in nonzero:
                flat += [name, str(delta)]
        totals = [(k, v) for k, v in result.totals.items() if v]
        flat.append(str(len(totals)))
        for name, delta in totals:
            flat += [name, str(delta)]
        flat.append(str(len(result.states)))
        for conv_id, state in result.states.items():
            deadline = result.deadlines.get(conv_id)
            flat += [
                conv_id,
                str(state.last_ms),
                str(result.held.get(conv_id, 0)),
                "" if deadline is None else str(deadline),
                state.dumps().decode(),
            ]
        args: list[Any] = [
            expected_version,
            result.watermark_ms,
            result.watermark_ms // 1000 - cfg.retention_seconds,
            result.watermark_ms - cfg.retention_seconds * 1000,
            orjson.dumps(flat),
        ]
        reply = await self._commit(keys=[self.base(partition)], args=args)
        return int(reply[0]) == 1

    async def partitions(self) -> list[int]:
        """Partitions that have state."""
        members = await self.redis.smembers(f"{self.prefix}:partitions")
        return sorted(int(m) for m in members)

    async def sum_buckets(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]]
    ) -> list[Counter[str]]:
        """Per set of bucket key suffixes, its fields summed over the buckets and partitions.

        Each bucket is read once however many sets name it (the 5m window's buckets are
        inside the 15m window's), in one pipeline. The sums are done here, not in a Redis
        script: Lua adds them slower than this and would hold Redis (and every commit)
        meanwhile.
        """
        unique = list(dict.fromkeys(suffix for suffixes in sets for suffix in suffixes))
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                base = self.base(partition)
                for suffix in unique:
                    pipe.hgetall(base + suffix)
            replies = await pipe.execute()
        # Sums are keyed by the raw field names and decoded once at the end: a 24 h read
        # adds up hundreds of thousands of fields but only thousands of distinct ones.
        merged: list[dict[bytes | str, int]] = [{} for _ in sets]
        # a bucket in one set is added straight into it; one shared by several is summed
        # once over the partitions, then added to each
        owners: dict[str, list[dict[bytes | str, int]]] = {suffix: [] for suffix in unique}
        for suffixes, total in zip(sets, merged, strict=True):
            for suffix in dict.fromkeys(suffixes):
                owners[suffix].append(total)
        shared: dict[str, dict[bytes | str, int]] = {}
        for i, reply in enumerate(replies):
            if not reply:
                continue
            suffix = unique[i % len(unique)]
            targets = owners[suffix]
            target = targets[0] if len(targets) == 1 else shared.setdefault(suffix, {})
            get = target.get
            for name, value in reply.items():
                target[name] = get(name, 0) + int(value)
        for suffix, bucket in shared.items():
            for total in owners[suffix]:
                get = total.get
                for name, value in bucket.items():
                    total[name] = get(name, 0) + value
        return [Counter({text(name): value for name, value in m.items()}) for m in merged]

    async def read_meta(self) -> dict[int, dict[str, str]]:
        """Every partition's meta hash (for health metrics)."""
        parts = await self.partitions()
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in parts:
                pipe.hgetall(self.base(partition) + "meta")
            replies = await pipe.execute()
        return {
            p: {text(k): text(v) for k, v in r.items()} for p, r in zip(parts, replies, strict=True)
        }

    async def read_totals(self) -> Counter[str]:
        """The cumulative totals summed over partitions."""
        (totals,) = await self.sum_buckets(await self.partitions(), [["tot"]])
        return totals


def split_field(name: str) -> tuple[str, str]:
    """``dimkey, field`` of a stored field name."""
    dims, _, field = name.rpartition(SEP)
    return dims, field
