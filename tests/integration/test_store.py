"""The Redis store against a real redis-server: the version check, the offset fence,
trimming by event-time retention, bounded memory, and the bucket-size guard."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from deskpulse.exporters.prometheus import PipelineMetrics
from deskpulse.models.errors import RejectedEvent, SettingsError, StateLost
from deskpulse.models.settings import Settings
from deskpulse.models.wire import decode_record
from deskpulse.streams.core import (
    SEP,
    BatchResult,
    Conversation,
    CoreConfig,
    Pending,
    fold_batch,
    timelines_needed,
)
from deskpulse.streams.engine import Engine, SourceRecord
from deskpulse.streams.store import LAYOUT, Store, text
from tests.e2e_support import redis_snapshot

T = TypeVar("T")

T0 = 1_795_392_000  # 2026-11-23T00:00:00Z, on every bucket boundary used here
HOUR = 3600
#: Small sizes so retention is crossed with few events.
CONFIG = CoreConfig(bucket_seconds=60, rollup_seconds=600, retention_seconds=HOUR)
TOPIC = "tickets"

_ids = itertools.count()


def ev(event_type: str, t_s: float, **fields: Any) -> bytes:
    occurred_at = datetime.fromtimestamp(t_s, UTC).isoformat(timespec="milliseconds")
    return orjson.dumps(
        {
            "event_id": f"e{next(_ids)}",
            "type": event_type,
            "occurred_at": occurred_at.replace("+00:00", "Z"),
            **fields,
        }
    )


def created(ticket: str, t_s: float, **dims: Any) -> bytes:
    dims = {"channel": "email", "queue": "billing", "priority": "normal", **dims}
    return ev("ticket.created", t_s, ticket_id=ticket, **dims)


def replied(ticket: str, t_s: float) -> bytes:
    return ev("ticket.replied", t_s, ticket_id=ticket, author_role="agent")


def pendings(raws: Sequence[bytes], topic: str = TOPIC, first_offset: int = 0) -> list[Pending]:
    decoded = [decode_record(raw) for raw in raws]
    return [
        Pending(event, topic, first_offset + i, ms, event.conversation_id)
        for i, (event, ms) in enumerate(decoded)
    ]


def batches_from(first_offset: int) -> Callable[..., list[Pending]]:
    """``batch(*raws)``: the records decoded as a batch on :data:`TOPIC`, at offsets that go
    on from ``first_offset`` one batch after the other."""
    offsets = itertools.count(first_offset)

    def batch(*raws: bytes) -> list[Pending]:
        return [
            Pending(event, TOPIC, next(offsets), ms, event.conversation_id)
            for event, ms in (decode_record(raw) for raw in raws)
        ]

    return batch


def run(make: Callable[[Redis], Awaitable[T]], url: str) -> T:
    """Run ``make(client)`` on a fresh asyncio client of ``url``."""

    async def main() -> T:
        client = Redis.from_url(url)
        try:
            return await make(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def new_prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


def simulated(
    *, seed: int, start_s: float, duration_s: float, rate: float
) -> tuple[list[Any], list[Pending]]:
    """The simulator's records of a span and the valid ones as pending events, each at the
    offset of its record (the malformed ones, left out, keep theirs)."""
    from deskpulse.streams.devtools.simulate import SimConfig, generate

    records = list(
        generate(SimConfig(seed=seed, start_s=start_s, duration_s=duration_s, rate=rate))
    )
    items = []
    for offset, record in enumerate(records):
        try:
            event, ms = decode_record(record.value)
        except RejectedEvent:
            continue
        items.append(Pending(event, record.topic_kind, offset, ms, event.conversation_id))
    return records, items


async def fold(store: Store, partition: int, items: Sequence[Pending]) -> tuple[str, BatchResult]:
    """Load what the batch touches and fold it: ``(version folded against, result)``."""
    ids = [p.event.conversation_id for p in items]
    event_ids = [(c, p.event.event_id) for c, p in zip(ids, items, strict=True)]
    meta, states = await store.load(partition, ids, event_ids)
    await store.load_timelines(partition, states, timelines_needed(items, states, meta.known))
    result = fold_batch(
        items,
        states,
        watermark_ms=meta.watermark_ms,
        applied_offsets=meta.offsets,
        config=store.config,
        known=meta.known,
    )
    return meta.version, result


async def apply(store: Store, partition: int, items: Sequence[Pending]) -> BatchResult:
    """What the engine does for one batch: load, fold, commit (which must succeed here)."""
    version, result = await fold(store, partition, items)
    assert await store.commit(partition, version, result)
    return result


def meta_of(client: redis.Redis, prefix: str, partition: int = 0) -> dict[str, str]:
    raw = client.hgetall(f"{prefix}:{{p{partition}}}:meta")
    return {k.decode(): v.decode() for k, v in raw.items()}


def keys_of(client: redis.Redis, prefix: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)}


def field_sum(client: redis.Redis, key: str, name: str) -> int:
    """Sum of one KPI field over the groups of a bucket hash."""
    return sum(
        int(v) for k, v in client.hgetall(key).items() if k.decode().rsplit(SEP, 1)[1] == name
    )


def test_commit_with_a_stale_version_changes_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    first = pendings([created("A", T0 + 10), replied("A", T0 + 70)])
    second = pendings([created("B", T0 + 20), replied("B", T0 + 30)], first_offset=2)

    async def scenario(client: Redis) -> tuple[bool, bool, str, bool]:
        store = Store(client, prefix, CONFIG)
        # two writers fold against the same version; the first one to commit wins
        version_a, result_a = await fold(store, 0, first)
        version_b, result_b = await fold(store, 0, second)
        assert version_a == version_b == "0"
        won = await store.commit(0, version_a, result_a)
        before = redis_snapshot(redis_client, f"{prefix}:*")
        lost = await store.commit(0, version_b, result_b)
        after = redis_snapshot(redis_client, f"{prefix}:*")
        assert after == before, "a refused commit wrote something"
        # folded again on fresh state, it goes through
        version_c, result_c = await fold(store, 0, second)
        retried = await store.commit(0, version_c, result_c)
        return won, lost, version_c, retried

    won, lost, version_c, retried = run(scenario, redis_url)
    assert won is True
    assert lost is False
    assert version_c == "1"
    assert retried is True
    meta = meta_of(redis_client, prefix)
    assert meta["version"] == "2"
    assert meta["applied"] == "4"
    assert meta[f"off:{TOPIC}"] == "3"
    tot = f"{prefix}:{{p0}}:tot"
    assert field_sum(redis_client, tot, "tc") == 2
    assert field_sum(redis_client, tot, "fr") == 2


class Letters:
    """A dead-letter sink that remembers what it was given (the engine's protocol)."""

    def __init__(self) -> None:
        self.sent: list[tuple[SourceRecord, RejectedEvent]] = []

    async def send(self, records: Sequence[tuple[SourceRecord, RejectedEvent]]) -> None:
        self.sent.extend(records)


def engine_settings(redis_url: str, prefix: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        redis_prefix=prefix,
        bucket_seconds=CONFIG.bucket_seconds,
        rollup_seconds=CONFIG.rollup_seconds,
        retention=CONFIG.retention_seconds,
        windows="5m",
    )


def source_records(settings: Settings) -> list[SourceRecord]:
    """Fifteen records of partition 0 over the three topics, one of them malformed."""
    rows: list[tuple[str, bytes, bytes]] = [
        (settings.topic_tickets, b"A", created("A", T0 + 10, priority="high")),
        (settings.topic_chats, b"C", ev("chat.requested", T0 + 12, chat_id="C")),
        (settings.topic_tickets, b"A", replied("A", T0 + 200)),
        (
            settings.topic_surveys,
            b"C",
            ev("survey.responded", T0 + 300, kind="csat", score=5, chat_id="C"),
        ),
        (settings.topic_tickets, b"B", created("B", T0 + 20)),
        (settings.topic_chats, b"C", ev("chat.accepted", T0 + 30, chat_id="C")),
        (settings.topic_tickets, b"B", replied("B", T0 + 100)),
        (
            settings.topic_surveys,
            b"B",
            ev("survey.responded", T0 + 400, kind="nps", score=9, ticket_id="B"),
        ),
        (settings.topic_chats, b"D", ev("chat.requested", T0 + 40, chat_id="D")),
        (settings.topic_tickets, b"E", replied("E", T0 + 500)),  # held: E opens later
        (settings.topic_chats, b"D", ev("chat.abandoned", T0 + 140, chat_id="D")),
        (settings.topic_tickets, b"X", b'{"type": "ticket.created"'),  # rejected
        (settings.topic_tickets, b"E", created("E", T0 + 50, priority="urgent")),
        (
            settings.topic_surveys,
            b"D",
            ev("survey.responded", T0 + 600, kind="ces", score=3, chat_id="D"),
        ),
        (settings.topic_tickets, b"A", replied("A", T0 + 150)),  # earlier: replaces 200
    ]
    offsets: dict[str, itertools.count[int]] = {}
    out = []
    for topic, key, value in rows:
        offset = next(offsets.setdefault(topic, itertools.count()))
        out.append(SourceRecord(topic, 0, offset, key, value))
    return out


def kpi_state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Buckets, roll-ups, totals, conversations and the counters of meta (not its version).

    ``bidx`` is left out: it keeps the name of a bucket that a later batch emptied again;
    so is the state's generation (random per prefix), in meta and config, ``bver`` (the
    buckets' stamps carry it and the version), ``lmoved``, ``hmoved`` and ``lgm`` (logs of
    the commits, with ``lgm``'s run in meta).
    """
    snapshot = redis_snapshot(client, f"{prefix}:*")
    out = {}
    for key, (kind, content) in snapshot.items():
        name = key[len(prefix) :]
        if name.endswith((":bidx", ":bver", ":lmoved", ":hmoved", ":lgm")):
            continue
        if name.endswith(":meta"):  # a counter back at 0 equals one never touched
            content = {
                k: v
                for k, v in content.items()
                if k not in (b"version", b"gen") and k[:4] != b"lgm:" and v != b"0"
            }
        if name == ":config":
            content = {k: v for k, v in content.items() if k != b"generation"}
        out[name] = (kind, content)
    return out


def test_a_batch_is_applied_once_however_often_it_is_delivered(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix, reference = new_prefix(), new_prefix()
    settings = engine_settings(redis_url, prefix)
    records = source_records(settings)
    letters = Letters()

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        engine = Engine(settings, store, letters, PipelineMetrics(CollectorRegistry()))
        await engine.process(records[:10])
        first = redis_snapshot(redis_client, f"{prefix}:*")
        assert meta_of(redis_client, prefix)["applied"] == "10"

        # the same batch again (a redelivery after a crash): the fence skips all of it
        await engine.process(records[:10])
        assert redis_snapshot(redis_client, f"{prefix}:*") == first
        # and so does a fold of it against the fresh state, before any commit
        again = [
            Pending(event, r.topic, r.offset, ms, event.conversation_id)
            for r in records[:10]
            for event, ms in [decode_record(r.value)]
        ]
        _, result = await fold(store, 0, again)
        assert result.applied == 0
        assert not result.offsets
        assert not result.buckets
        assert not result.totals

        assert not letters.sent
        # a batch partly below the fence applies only its new part
        await engine.process(records[5:])

        # the same records applied once, in one batch, elsewhere
        settings_ref = engine_settings(redis_url, reference)
        store_ref = Store(client, reference, CONFIG)
        engine_ref = Engine(
            settings_ref, store_ref, Letters(), PipelineMetrics(CollectorRegistry())
        )
        await engine_ref.process(records)

    run(scenario, redis_url)
    assert [r.key for r, _ in letters.sent] == [b"X"], "dead-lettered exactly once"
    meta = meta_of(redis_client, prefix)
    assert meta["applied"] == "14"
    assert meta["held"] == "0"
    assert kpi_state(redis_client, prefix) == kpi_state(redis_client, reference)
    tot = f"{prefix}:{{p0}}:tot"
    assert field_sum(redis_client, tot, "tc") == 3
    assert field_sum(redis_client, tot, "fr") == 3
    assert field_sum(redis_client, tot, "cr") == 2
    assert field_sum(redis_client, tot, "fr_ms") == (150 - 10 + 100 - 20 + 500 - 50) * 1000


def test_a_redelivered_rejected_record_does_not_move_the_fence_back(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    settings = engine_settings(redis_url, prefix)
    topic = settings.topic_tickets
    records = [
        SourceRecord(topic, 0, 0, b"A", created("A", T0 + 10)),
        SourceRecord(topic, 0, 1, b"X", b"not json"),
        SourceRecord(topic, 0, 2, b"A", replied("A", T0 + 70)),
    ]
    letters = Letters()

    async def scenario(client: Redis) -> None:
        engine = Engine(
            settings, Store(client, prefix, CONFIG), letters, PipelineMetrics(CollectorRegistry())
        )
        await engine.process(records)
        assert meta_of(redis_client, prefix)[f"off:{topic}"] == "2"
        first = kpi_state(redis_client, prefix)
        for _ in range(2):  # redelivered twice, as after two crashes in a row
            await engine.process(records)
            assert kpi_state(redis_client, prefix) == first, meta_of(redis_client, prefix)

    run(scenario, redis_url)
    assert len(letters.sent) == 1


def test_the_commit_script_never_moves_the_fence_back(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        await apply(store, 0, pendings([created(f"F{n}", T0 + n) for n in range(5)]))
        meta, _ = await store.load(0, [])
        stale = BatchResult(watermark_ms=meta.watermark_ms, offsets={TOPIC: 2, "other": 7})
        assert await store.commit(0, meta.version, stale)

    run(scenario, redis_url)
    meta = meta_of(redis_client, prefix)
    assert meta[f"off:{TOPIC}"] == "4"
    assert meta["off:other"] == "7"


def test_state_beyond_retention_is_trimmed_and_held_events_orphaned(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    early = pendings(
        [
            created("A", T0 + 30),
            replied("A", T0 + 90),
            # solved: kept for the retention after its last event, not until its maximum age
            ev("ticket.status_changed", T0 + 95, ticket_id="A", status="solved"),
            replied("X", T0 + 100),  # ticket X never opens
            ev("survey.responded", T0 + 120, kind="csat", score=4, chat_id="Y"),  # nor chat Y
        ]
    )
    much_later = T0 + HOUR + 3600  # the early events are more than retention behind it
    later = pendings([created("B", much_later)], first_offset=5)
    late = pendings([created("C", T0 + 15)], first_offset=6)

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        await apply(store, 0, early)
        assert {base + s for s in ("b:" + str(T0), "b:" + str(T0 + 60), "r:" + str(T0))} <= (
            keys_of(redis_client, prefix)
        )
        assert meta_of(redis_client, prefix)["held"] == "2"
        assert redis_client.hlen(base + "held") == 2
        await apply(store, 0, later)
        await apply(store, 0, late)

    run(scenario, redis_url)
    keys = keys_of(redis_client, prefix)
    levels = tuple(base + level for level in ("b:", "r:", "B:", "R:"))
    buckets = sorted(k[len(base) :] for k in keys if k.startswith(levels))
    fine, rollup = much_later // 60 * 60, much_later // 600 * 600
    assert buckets == [f"B:{fine}", f"R:{rollup}", f"b:{fine}", f"r:{rollup}"], buckets
    assert {m.decode() for m in redis_client.zrange(base + "bidx", 0, -1)} == set(buckets)
    assert set(redis_client.hkeys(base + "conv")) == {b"t:B"}
    assert redis_client.zrange(base + "convexp", 0, -1) == [b"t:B"]
    assert redis_client.hlen(base + "held") == 0
    meta = meta_of(redis_client, prefix)
    assert meta["orphaned"] == "2"
    assert meta["held"] == "0"
    assert meta[f"late:{TOPIC}"] == "1"
    assert meta["applied"] == "6"
    assert meta["wm"] == str(much_later * 1000)
    # the cumulative totals are never trimmed; the late ticket is not in them
    assert field_sum(redis_client, base + "tot", "tc") == 2
    assert field_sum(redis_client, base + "tot", "fr") == 1
    assert field_sum(redis_client, base + "tot", "svt") == 1
    # the backlog's level: B is new, A left it (solved)
    assert field_sum(redis_client, base + "lvl", "bl:n") == 1
    assert "expired" not in meta


def test_an_open_ticket_outlives_retention_until_its_maximum_age_then_leaves_the_backlog(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    config = CoreConfig(
        bucket_seconds=60,
        rollup_seconds=600,
        retention_seconds=HOUR,
        open_ticket_max_age_s=3 * HOUR,
    )
    group = "email\x1fbilling\x1fnormal"
    first = pendings(
        [
            created("A", T0),
            ev("ticket.status_changed", T0 + 60, ticket_id="A", status="pending"),
            created("S", T0),  # solved: trimmed after the retention like any conversation
            ev("ticket.status_changed", T0 + 30, ticket_id="S", status="solved"),
        ]
    )

    def at(t_s: int, offset: int) -> list[Pending]:
        return pendings([created(f"N{t_s}", t_s)], first_offset=offset)

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, config)
        await apply(store, 0, first)
        assert redis_client.zrange(base + "lo:" + group, 0, -1, withscores=True) == [
            (b"t:A", T0 * 1000.0)
        ]
        assert redis_client.zscore(base + "lx", "t:S") == (T0 + 30) * 1000
        # two hours on: past the retention, short of the maximum age
        await apply(store, 0, at(T0 + 2 * HOUR, 4))
        assert redis_client.hexists(base + "conv", "t:A")
        assert not redis_client.hexists(base + "conv", "t:S")
        assert redis_client.zscore(base + "lx", "t:S") is None
        # the maximum age passes: A leaves the backlog at creation + 3 h, remembered
        await apply(store, 0, at(T0 + 3 * HOUR + 120, 5))

    run(scenario, redis_url)
    assert not redis_client.hexists(base + "conv", "t:A")
    meta = meta_of(redis_client, prefix)
    assert meta["expired"] == "1"
    assert redis_client.zrange(base + "lo:" + group, 0, -1) == [
        f"t:N{T0 + 2 * HOUR}".encode(),
        f"t:N{T0 + 3 * HOUR + 120}".encode(),
    ]
    left = (T0 + 3 * HOUR) * 1000
    assert redis_client.zscore(base + "lx", "t:A") == left
    assert redis_client.hget(base + "li", "t:A") == f"{T0 * 1000}\x1f{group}\x1f".encode()
    # the commit's live index moves reach back to the instant A left (its own ticket came
    # later): a reader's answers for instants from then on are read again
    (last,) = redis_client.zrange(base + "lmoved", -1, -1)
    assert last.decode().split(":")[2:] == [str(left), ""]
    # the level: the two new tickets; A's pending step taken back, in the levels and in the
    # bucket of the instant it left (so a read before that instant still counts it)
    assert redis_client.hget(base + "lvl", group + "\x1fbl:n").decode() == "2"
    assert not redis_client.hexists(base + "lvl", group + "\x1fbl:p")
    fine = (T0 + 3 * HOUR) // 60 * 60
    assert redis_client.hget(base + f"b:{fine}", group + "\x1fbl:p") == b"-1"
    assert redis_client.hget(base + f"B:{fine}", "bl:p") == b"-1"
    assert redis_client.hget(base + f"R:{fine - fine % 600}", "bl:p") == b"-1"
    assert redis_client.zscore(base + "bidx", f"b:{fine}") == fine + 60


def traffic(hours: int) -> list[tuple[float, bytes]]:
    """Steady traffic: per minute two tickets answered and solved and a chat; an orphan
    every 10 min."""
    events: list[tuple[float, bytes]] = []
    for minute in range(hours * 60):
        t = T0 + minute * 60
        for n in range(2):
            ticket = f"T{minute}-{n}"
            events.append((t + 5 + n, created(ticket, t + 5 + n)))
            events.append((t + 125 + n, replied(ticket, t + 125 + n)))
            solved = t + 130 + n
            events.append(
                (solved, ev("ticket.status_changed", solved, ticket_id=ticket, status="solved"))
            )
        chat = f"C{minute}"
        events.append((t + 20, ev("chat.requested", t + 20, chat_id=chat, channel="chat")))
        events.append((t + 35, ev("chat.accepted", t + 35, chat_id=chat)))
        if minute % 10 == 0:
            events.append((t + 40, replied(f"orphan{minute}", t + 40)))
    events.sort(key=lambda item: item[0])
    return events


def test_memory_is_bounded_by_retention_not_by_event_count(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    hours = 3  # three times the retention of CONFIG
    events = traffic(hours)
    samples: list[dict[str, int]] = []

    def measure() -> dict[str, int]:
        keys = keys_of(redis_client, prefix)
        return {
            "keys": len(keys),
            "fine": sum(1 for k in keys if k.startswith((base + "b:", base + "B:"))),
            "rollup": sum(1 for k in keys if k.startswith((base + "r:", base + "R:"))),
            "conversations": redis_client.hlen(base + "conv"),
            "expiry": redis_client.zcard(base + "convexp"),
            "index": redis_client.zcard(base + "bidx"),
            "held": redis_client.hlen(base + "held"),
            "due": redis_client.zcard(base + "due"),
            "timelines": sum(1 for k in keys if k.startswith(base + "tl:")),
            # every element counted: by default Redis estimates a large hash from 5 of them
            "bytes": sum(redis_client.memory_usage(k, samples=0) or 0 for k in keys),
        }

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        offset = 0
        batch_s = 300
        for start in range(T0, T0 + hours * HOUR, batch_s):
            raws = [raw for t, raw in events if start <= t < start + batch_s]
            await apply(store, 0, pendings(raws, first_offset=offset))
            offset += len(raws)
            if (start + batch_s - T0) % HOUR == 0:
                samples.append(measure())

    run(scenario, redis_url)
    print(f"\n{len(events)} events over {hours}x retention; state per retention: {samples}")
    assert len(samples) == hours
    last = samples[-1]
    # the fine buckets of one retention (+ the partial one), its roll-ups, a few fixed keys
    # (each twice: by group and over all groups), among them the levels and the live
    # indexes (a group's open tickets, those that left, their live info, the log of
    # their moves and of the groups they moved), the buckets' stamps, the log of the totals
    # and levels moved
    assert last["fine"] <= 2 * (HOUR // CONFIG.bucket_seconds + 2)
    assert last["rollup"] <= 2 * (HOUR // CONFIG.rollup_seconds + 2)
    # and the tickets' timelines beside their states, one each at most, gone with them
    assert last["timelines"] <= last["conversations"]
    assert last["keys"] <= last["fine"] + last["rollup"] + last["timelines"] + 17
    assert last["index"] == last["fine"] + last["rollup"]
    # conversations: those with an event within the retention (3 a minute, 7 orphans)
    assert last["conversations"] == last["expiry"] <= 3 * 62 + 7
    assert last["held"] <= 7
    assert int(meta_of(redis_client, prefix)["orphaned"]) >= (hours - 1) * 6
    # flat after the first retention: the third hour holds no more than the second
    second = samples[1]
    for name in ("keys", "fine", "rollup", "conversations", "index", "held", "due"):
        assert last[name] <= second[name] + 1, (name, samples)
    assert last["bytes"] <= second["bytes"] * 1.1, samples


def test_check_config_refuses_other_bucket_sizes(redis_url: str) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> list[SettingsError]:
        await Store(client, prefix, CONFIG).check_config()
        await Store(client, prefix, CONFIG).check_config()  # the same sizes again: fine
        errors = []
        for other in (
            CoreConfig(bucket_seconds=30, rollup_seconds=600, retention_seconds=HOUR),
            CoreConfig(bucket_seconds=60, rollup_seconds=1200, retention_seconds=HOUR),
        ):
            with pytest.raises(SettingsError) as caught:
                await Store(client, prefix, other).check_config()
            errors.append(caught.value)
        # another prefix starts afresh with its own sizes
        await Store(client, new_prefix(), CoreConfig(bucket_seconds=30)).check_config()
        return errors

    bucket, rollup = run(scenario, redis_url)
    assert bucket.setting == "DESKPULSE_BUCKET_SECONDS"
    assert str(bucket).startswith("DESKPULSE_BUCKET_SECONDS: ")
    assert "30" in str(bucket) and "60" in str(bucket) and prefix in str(bucket)
    assert rollup.setting == "DESKPULSE_ROLLUP_SECONDS"
    assert "\n" not in str(bucket)


def test_a_repeat_is_found_by_its_id_beside_the_state_until_retention_passes_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    note = ev("ticket.replied", T0 + 60, ticket_id="A", author_role="agent", public=False)
    bot = ev("ticket.replied", T0 + 70, ticket_id="A", author_role="system")
    first = pendings([created("A", T0), note, bot, replied("A", T0 + 80)])

    async def scenario(client: Redis) -> list[BatchResult]:
        store = Store(client, prefix, CONFIG)
        results = [await apply(store, 0, first)]
        # the same events again at new offsets (an upstream re-send), with one new note
        again = pendings(
            [
                note,
                bot,
                ev("ticket.replied", T0 + 90, ticket_id="A", author_role="agent", public=False),
            ],
            first_offset=4,
        )
        results.append(await apply(store, 0, again))
        # the horizon passes the notes: their ids go, and a re-send of them is late
        results.append(
            await apply(store, 0, pendings([created("B", T0 + HOUR + 80)], first_offset=7))
        )
        results.append(await apply(store, 0, pendings([note], first_offset=8)))
        return results

    _, again, _, late = run(scenario, redis_url)
    assert again.counters[f"dup:{TOPIC}"] == 2 and again.applied == 1
    assert list(again.others) == ["t:A"] and len(again.others["t:A"]) == 1
    # the state keeps the ids of its opener and its public reply alone
    assert late.counters[f"late:{TOPIC}"] == 1 and not late.others
    assert redis_client.zcard(base + "ids") == 1  # the note at T0 + 90 s
    ((member, score),) = redis_client.zrange(base + "ids", 0, -1, withscores=True)
    assert member.decode().startswith("t:A" + SEP) and score == (T0 + 90) * 1000


def test_a_batch_keeps_and_finds_more_ids_than_a_script_unpacks_at_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    notes = [
        ev("ticket.replied", T0 + n / 1000, ticket_id="A", author_role="system")
        for n in range(5000)
    ]
    first = pendings([created("A", T0), *notes])

    async def scenario(client: Redis) -> BatchResult:
        store = Store(client, prefix, CONFIG)
        await apply(store, 0, first)
        return await apply(store, 0, pendings(notes, first_offset=len(first)))

    again = run(scenario, redis_url)
    assert redis_client.zcard(base + "ids") == 5000
    assert again.counters[f"dup:{TOPIC}"] == 5000 and again.applied == 0


def test_a_tickets_timeline_is_kept_beside_its_state_and_read_whole_only_when_needed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Appends walk on from the state alone (its size stays put), a repeat is found among
    the entries beside it, a reply dated before the walk has them read whole; the totals
    are those of every event folded in one batch."""
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    replies = [
        ev("ticket.replied", T0 + 60 * (n + 1), ticket_id="A", author_role=role)
        for n, role in enumerate(["customer", "agent"] * 20)
    ]
    late = ev("ticket.replied", T0 + 30, ticket_id="A", author_role="agent")
    events = [created("A", T0), *replies]

    async def scenario(client: Redis) -> tuple[list[int], BatchResult, BatchResult]:
        store = Store(client, prefix, CONFIG)
        sizes = []
        for start in range(0, len(events), 5):
            await apply(store, 0, pendings(events[start : start + 5], first_offset=start))
            sizes.append(int(await client.hstrlen(base + "conv", "t:A")))
        offset = len(events)
        again = await apply(store, 0, pendings([replies[3], replies[-1]], first_offset=offset))
        before = await apply(store, 0, pendings([late], first_offset=offset + 2))
        return sizes, again, before

    sizes, again, before = run(scenario, redis_url)
    assert max(sizes[1:]) - min(sizes[1:]) < 40  # a few digits, not the entries
    assert again.counters[f"dup:{TOPIC}"] == 2 and again.applied == 0
    assert before.applied == 1 and "t:A" in before.whole
    assert redis_client.hlen(base + "tl:t:A") == len(replies) + 1
    reference = fold_batch(
        pendings([*events, late]),
        {},
        watermark_ms=0,
        applied_offsets={},
        config=CONFIG,
    )
    stored = {k.decode(): int(v) for k, v in redis_client.hgetall(base + "tot").items()}
    assert stored == {k: v for k, v in reference.totals.items() if v}
    state = Conversation.loads(redis_client.hget(base + "conv", "t:A"))
    assert state.dumps() == reference.states["t:A"].dumps()


def _walked_ticket() -> list[bytes]:
    """A ticket and ten replies: applied in batches of three, its timeline is kept beside
    its state and walked on."""
    replies = [
        ev("ticket.replied", T0 + 60 * (n + 1), ticket_id="A", author_role=role)
        for n, role in enumerate(["customer", "agent"] * 5)
    ]
    return [created("A", T0), *replies]


def test_timelines_read_after_another_writer_committed_are_not_restored(
    redis_url: str,
) -> None:
    """Another writer commits the partition between a load and its timelines' read (the
    breach check beside a batch; a replay process applying a misrouted record to another's
    partition): the entries read are not the loaded state's. Given the version loaded,
    nothing is restored and the answer says read again; the second load reads them whole."""
    prefix = new_prefix()
    events = _walked_ticket()
    intruder = ev("ticket.replied", T0 + 900, ticket_id="A", author_role="customer")

    async def scenario(client: Redis) -> tuple[int, ValueError | None]:
        store, other = Store(client, prefix, CONFIG), Store(client, prefix, CONFIG)
        for start in range(0, len(events), 3):
            await apply(store, 0, pendings(events[start : start + 3], first_offset=start))
        meta, states = await store.load(0, ["t:A"])
        state = states["t:A"]
        assert state is not None and state.walk is not None
        stored = state.stored
        # the other writer, on a topic of its own (its own fence), adds an entry
        await apply(other, 0, pendings([intruder], topic="other", first_offset=0))
        assert not await store.load_timelines(0, states, ["t:A"], meta.version)
        assert state.walk is not None and state.timeline == {} and state.stored == stored
        # without the version, what the entries read against a state that counts fewer
        torn: ValueError | None = None
        try:
            await store.load_timelines(0, states, ["t:A"])
        except ValueError as error:
            torn = error
        meta, states = await store.load(0, ["t:A"])
        assert await store.load_timelines(0, states, ["t:A"], meta.version)
        again = states["t:A"]
        assert again is not None and again.walk is None
        return len(again.timeline), torn

    entries, torn = run(scenario, redis_url)
    assert entries == len(events)  # the replies and the intruder, the creation not an entry
    assert torn is not None and "timeline entries found beside a state" in str(torn)


def test_a_batch_whose_partition_moves_between_its_reads_reads_it_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The engine's side of the test above: a batch that needs a ticket's timeline whole (a
    reply dated before its walk) while another writer commits the partition between the
    batch's load and its timelines' read is folded again, and the state is that of every
    event folded at once."""
    prefix = new_prefix()
    settings = engine_settings(redis_url, prefix)
    topic = settings.topic_tickets
    events = _walked_ticket()
    late = ev("ticket.replied", T0 + 30, ticket_id="A", author_role="agent")
    intruder = ev("ticket.replied", T0 + 900, ticket_id="A", author_role="customer")
    answers: list[bool] = []

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        engine = Engine(settings, store, Letters(), PipelineMetrics(CollectorRegistry()))
        for start in range(0, len(events), 3):
            await engine.process(
                [
                    SourceRecord(topic, 0, start + n, b"A", raw)
                    for n, raw in enumerate(events[start : start + 3])
                ]
            )
        read_timelines = store.load_timelines

        async def with_a_commit_first(*args: Any, **kwargs: Any) -> bool:
            if not answers:  # the first read: another writer commits just before it
                await apply(Store(client, prefix, CONFIG), 0, pendings([intruder], "other"))
            answer = await read_timelines(*args, **kwargs)
            answers.append(answer)
            return answer

        store.load_timelines = with_a_commit_first  # type: ignore[method-assign]
        await engine.process([SourceRecord(topic, 0, len(events), b"A", late)])

    run(scenario, redis_url)
    assert answers == [False, True]
    reference = fold_batch(
        pendings([*events, intruder, late]),
        {},
        watermark_ms=0,
        applied_offsets={},
        config=CONFIG,
    )
    base = f"{prefix}:{{p0}}:"
    stored = {k.decode(): int(v) for k, v in redis_client.hgetall(base + "tot").items()}
    assert stored == {k: v for k, v in reference.totals.items() if v}
    state = Conversation.loads(redis_client.hget(base + "conv", "t:A"))
    assert state.dumps() == reference.states["t:A"].dumps()


def test_a_store_of_the_previous_layout_is_taken_over_and_its_states_read(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Layout 7 kept a ticket's timeline whole in its state: such a state is read as it is,
    and its next batch moves its entries beside it."""
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    opened_ms, reply_ms = T0 * 1000, (T0 + 60) * 1000
    old_state = (
        f'["t",[{opened_ms},"c1"],["email","billing","normal"],null,null,{{}},'
        f'{{"r1":[{reply_ms},"a"]}},[],{reply_ms},"o",0,1000]'
    )

    async def scenario(client: Redis) -> Conversation:
        store = Store(client, prefix, CONFIG)
        await store.check_config()
        await apply(store, 0, pendings([created("B", T0)]))
        await client.hset(f"{prefix}:config", "layout", "7")
        await client.hset(base + "conv", "t:A", old_state)
        taken = Store(client, prefix, CONFIG)
        await taken.check_config()
        (_, states) = await taken.load(0, ["t:A"])
        read = states["t:A"]
        assert read is not None and read.timeline == {"r1": (reply_ms, "a")}
        later = ev("ticket.replied", T0 + 120, ticket_id="A", author_role="customer")
        await apply(taken, 0, pendings([later], first_offset=1))
        (_, states) = await taken.load(0, ["t:A"])
        state = states["t:A"]
        assert state is not None
        return state

    state = run(scenario, redis_url)
    assert redis_client.hget(f"{prefix}:config", "layout") == LAYOUT.encode()
    assert state.walk is not None and state.timeline == {} and state.stored == 2
    assert redis_client.hlen(base + "tl:t:A") == 2


def test_a_partition_count_other_than_the_states_is_refused(redis_url: str) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> SettingsError:
        store = Store(client, prefix, CONFIG)
        await store.check_config()
        await store.check_partition_count(8)  # recorded
        await Store(client, prefix, CONFIG).check_partition_count(8)  # the same: fine
        with pytest.raises(SettingsError) as caught:
            await Store(client, prefix, CONFIG).check_partition_count(12)
        await Store(client, new_prefix(), CONFIG).check_partition_count(12)  # its own
        return caught.value

    error = run(scenario, redis_url)
    assert error.setting == "DESKPULSE_REDIS_PREFIX"
    assert "12 partitions" in str(error) and "built on 8" in str(error)
    assert "\n" not in str(error)


def test_check_config_refuses_state_of_an_older_layout(redis_url: str) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> SettingsError:
        # what a deskpulse before the all-groups buckets left: sizes, no layout
        await client.hset(f"{prefix}:config", mapping={"bucket_seconds": 60, "rollup_seconds": 600})
        with pytest.raises(SettingsError) as caught:
            await Store(client, prefix, CONFIG).check_config()
        with pytest.raises(SettingsError):
            await Store(client, prefix, CONFIG).check_readable()
        # the layout before this one kept the ids of every event in the state: refused too
        previous = new_prefix()
        await client.hset(
            f"{previous}:config",
            mapping={"bucket_seconds": 60, "rollup_seconds": 600, "layout": "6"},
        )
        with pytest.raises(SettingsError, match="store layout 6"):
            await Store(client, previous, CONFIG).check_config()
        fresh = new_prefix()
        with pytest.raises(StateLost):  # nothing there: said so, not read as zeros
            await Store(client, fresh, CONFIG).check_readable()
        await Store(client, fresh, CONFIG).check_config()
        await Store(client, fresh, CONFIG).check_readable()
        assert await client.hget(f"{fresh}:config", "layout") == LAYOUT.encode()
        return caught.value

    error = run(scenario, redis_url)
    assert error.setting == "DESKPULSE_REDIS_PREFIX"
    assert "older deskpulse" in str(error) and "\n" not in str(error)


def test_the_all_groups_buckets_hold_the_sum_of_the_groups(redis_url: str) -> None:
    """A read without grouping takes the ``B:``/``R:`` buckets: field for field the sum of
    the grouped buckets, for windows of fine buckets only, of roll-ups and of both."""
    from deskpulse.streams.query import build_document, read_window

    prefix = new_prefix()
    start_s = T0 - 2 * HOUR
    _, items = simulated(seed=4, start_s=start_s, duration_s=2 * HOUR, rate=3.0)

    async def scenario(client: Redis) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        store = Store(client, prefix, CONFIG)
        for partition in range(2):
            await apply(store, partition, items[partition::2])
        pairs = []
        for width_s, at_s in ((300, T0 - 1234), (1800, T0 - 600), (HOUR + 600, T0 + 30)):
            grouped = await read_window(store, width_s=width_s, at_s=at_s, grouped=True)
            whole = await read_window(store, width_s=width_s, at_s=at_s, grouped=False)
            assert grouped[:2] == whole[:2]
            summed: dict[str, int] = {}
            for name, value in grouped[2].items():
                field = name.rpartition(SEP)[2]
                summed[field] = summed.get(field, 0) + value
            assert {k: v for k, v in summed.items() if v} == {
                name.rpartition(SEP)[2]: value for name, value in whole[2].items() if value
            }
            pairs.append(
                (
                    build_document(grouped[2], start_s=grouped[0], end_s=grouped[1], by=()),
                    build_document(whole[2], start_s=whole[0], end_s=whole[1], by=()),
                )
            )
        return pairs

    pairs = run(scenario, redis_url)
    for by_groups, over_all in pairs:
        assert by_groups == over_all
    assert pairs[-1][0]["groups"][0]["first_response"]["count"] > 10


def test_every_due_entry_is_the_tickets_next_alert_after_any_batches(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # A batch leaves a ticket's due entry alone when nothing its breach schedule reads moved
    # (a private note, a system reply, a repeat) and writes it otherwise; either way, after
    # every batch each stored ticket's entry is what its state says now.
    from deskpulse.streams.core import Conversation, breach_deadline
    from deskpulse.streams.devtools import policies
    from deskpulse.streams.devtools.simulate import SimConfig, generate

    prefix = new_prefix()
    config = CoreConfig.from_settings(
        Settings(_env_file=None, retention="2d", **policies.settings_values())  # type: ignore[call-arg]
    )
    records = [
        r
        for r in generate(SimConfig(seed=5, start_s=T0, duration_s=4 * HOUR, rate=1.5))
        if r.topic_kind == "tickets"
    ]
    raws = [r.value for r in records]
    raws += raws[::7]  # repeats
    assert len(raws) > 1000

    async def scenario(client: Redis) -> tuple[dict[str, float], dict[str, int | None], int]:
        store = Store(client, prefix, config)
        offset, notes = 0, 0
        for start in range(0, len(raws), 97):
            chunk = []
            for raw in raws[start : start + 97]:
                try:
                    decode_record(raw)
                except RejectedEvent:
                    continue
                chunk.append(raw)
                notes += b'"public":false' in raw or b'"author_role":"system"' in raw
            await apply(store, 0, pendings(chunk, first_offset=offset))
            offset += len(chunk)
        base = f"{prefix}:{{p0}}:"
        due = {k.decode(): v for k, v in await client.zrange(base + "due", 0, -1, withscores=True)}
        stored = await client.hgetall(base + "conv")
        expected = {
            k.decode(): breach_deadline(Conversation.loads(v), config) for k, v in stored.items()
        }
        return due, expected, notes

    due, expected, notes = run(scenario, redis_url)
    assert notes > 100, "the data set must hold events that leave the due entry alone"
    assert {k: int(v) for k, v in due.items()} == {
        k: v for k, v in expected.items() if v is not None
    }
    assert len(due) > 100


def hgetall_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


@pytest.mark.parametrize("kept_fields", [500_000, 40], ids=["kept", "mostly-let-go"])
def test_a_reader_keeps_settled_sums_and_sees_every_change_to_them(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, kept_fields: int
) -> None:
    """A store keeps the sums of a window's settled roll-ups with their buckets' stamps:
    read again, it reads only the rest; a late event written into a settled roll-up, and
    a trim deleting one, change the stamps, and its reads equal a new store's (nothing
    kept) after each."""
    from deskpulse.streams.query import query_kpis
    from deskpulse.streams.windows import cover, window_bounds

    prefix = new_prefix()
    start_s = T0 - HOUR
    records, items = simulated(seed=5, start_s=start_s, duration_s=HOUR, rate=3.0)
    reads = [(3000, T0 + 60, ("channel", "queue")), (3000, T0 + 60, ()), (1200, T0 - 300, ())]
    # with room for a few sums, the least recently read are let go: reads stay exact
    monkeypatch.setattr("deskpulse.streams.store.SETTLED_FIELDS_KEPT", kept_fields)

    async def scenario(client: Redis) -> dict[str, Any]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        for partition in range(2):
            await apply(writer, partition, items[partition::2])

        async def both() -> list[tuple[dict[str, Any], dict[str, Any]]]:
            pairs = []
            for width_s, at_s, by in reads:
                kept = await query_kpis(reader, width_s=width_s, at_s=at_s, by=by)
                fresh = Store(client, prefix, CONFIG)  # keeps nothing yet
                pairs.append((kept, await query_kpis(fresh, width_s=width_s, at_s=at_s, by=by)))
            return pairs

        seen: dict[str, Any] = {"first": await both()}
        calls = hgetall_calls(redis_client)
        for width_s, at_s, by in reads:
            await query_kpis(reader, width_s=width_s, at_s=at_s, by=by)
        seen["again_calls"] = hgetall_calls(redis_client) - calls
        calls = hgetall_calls(redis_client)
        for width_s, at_s, by in reads:
            await query_kpis(Store(client, prefix, CONFIG), width_s=width_s, at_s=at_s, by=by)
        seen["fresh_calls"] = hgetall_calls(redis_client) - calls
        # a late ticket, 40 minutes back: in a settled roll-up of every window read
        late = pendings([created("late-1", T0 - 2400, channel="web")], first_offset=len(records))
        await apply(writer, 0, late)
        seen["late"] = await both()
        # an hour on: the early buckets are trimmed from partition 0 (the windows reach
        # back before the horizon)
        later = pendings([created("later-1", T0 + HOUR)], first_offset=len(records) + 1)
        await apply(writer, 0, later)
        seen["trimmed"] = await both()
        return seen

    seen = run(scenario, redis_url)
    for stage in ("first", "late", "trimmed"):
        for kept, fresh in seen[stage]:
            assert kept == fresh, stage
    created_in = [kept["groups"] for kept, _ in seen["first"]]
    assert sum(g["tickets_created"] for g in created_in[0]) > 100
    # the late ticket counts in the kept sums; the trim takes the early hour away
    before, after = seen["first"][1][0], seen["late"][1][0]
    assert after["groups"][0]["tickets_created"] == before["groups"][0]["tickets_created"] + 1
    assert seen["trimmed"][1][0] != seen["late"][1][0]
    # read again unchanged, the settled roll-ups of the windows were not read again (two
    # partitions); the fine buckets and the newest roll-ups were
    settled = 0
    for width_s, at_s, _ in reads:
        start, end = window_bounds(at_s, width_s, CONFIG.bucket_seconds)
        rollups, _ = cover(start, end, CONFIG.bucket_seconds, CONFIG.rollup_seconds)
        settled += max(0, len(rollups) - 1)
    assert settled >= 3
    if kept_fields > 1000:
        assert 0 < seen["again_calls"] <= seen["fresh_calls"] - 2 * settled, seen
    else:  # no sum fits: each read reads every bucket again, and is as exact
        # but the levels, which the reader reads whole no more (one per read and partition),
        # and the grouped read's newest buckets (2 fine buckets and the newest roll-up of 2
        # partitions: small enough to keep)
        assert seen["again_calls"] == seen["fresh_calls"] - 2 * len(reads) - 2 * 3, seen


def test_a_sliding_window_moves_its_kept_sum_along_and_sees_every_change(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A window ending now is read a minute later: its kept sum moves along by the fine
    buckets that left and entered (a few buckets read, not the window's), while a late
    event in a bucket it keeps, or in one that leaves, makes it read afresh. Every read
    equals a new store's (one that keeps nothing)."""
    from deskpulse.streams.query import query_kpis

    prefix = new_prefix()
    records, items = simulated(seed=9, start_s=T0 - HOUR, duration_s=HOUR, rate=4.0)
    early = [item for item in items if item.ms < (T0 - 240) * 1000]
    later = [item for item in items if item.ms >= (T0 - 240) * 1000]
    batch = batches_from(len(records))

    async def scenario(client: Redis) -> dict[str, Any]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        await apply(writer, 0, early)

        async def both(at_s: int) -> tuple[Any, tuple[int, int]]:
            documents = []
            reads = [0, 0]  # the reader's, the new stores'
            for by in (("channel", "queue"), ()):
                calls = hgetall_calls(redis_client)
                kept = await query_kpis(reader, width_s=1800, at_s=at_s, by=by)
                reads[0] += hgetall_calls(redis_client) - calls
                calls = hgetall_calls(redis_client)
                fresh = await query_kpis(
                    Store(client, prefix, CONFIG), width_s=1800, at_s=at_s, by=by
                )
                reads[1] += hgetall_calls(redis_client) - calls
                documents.append((kept, fresh))
            return documents, (reads[0], reads[1])

        # windows of 30 minutes ending mid-roll-up: fine buckets at both edges
        seen: dict[str, Any] = {"first": await both(T0 - 300)}
        # the traffic of the minutes after, and the window read a minute later: it slid
        await apply(writer, 0, later)
        seen["slid"] = await both(T0 - 240)
        # a late ticket in a roll-up the window keeps (T0 - 1000 s)
        await apply(writer, 0, batch(created("late-kept", T0 - 1000, channel="web")))
        seen["late kept"] = await both(T0 - 180)
        seen["quiet"] = await both(T0 - 120)
        # one in the fine bucket that leaves the window at the next read (T0 - 1920 s)
        await apply(writer, 0, batch(created("late-gone", T0 - 1900, channel="web")))
        seen["late leaving"] = await both(T0 - 60)
        return seen

    seen = run(scenario, redis_url)
    for stage, (documents, _) in seen.items():
        for kept, fresh in documents:
            assert kept == fresh, stage
    # each stage: the reader's reads and a new store's (one for each read), grouped and
    # not. A new store reads every bucket of the window (10 fine buckets and 2 roll-ups),
    # the meta and the levels whole (the metas once, for the check of the window's end,
    # the live state and the agents' presence alike)
    assert {reads[1] for _, reads in seen.values()} == {2 * 14}
    # the reader, its window slid: the bucket that left, the one that entered, the 2
    # newest and the meta; a late event in a sum it keeps or in a bucket that leaves: the
    # whole window again; the levels whole at its first read alone. The grouped read keeps
    # the newest buckets too: the one of them that was the newest before, unwritten since,
    # it does not read again, nor the one that entered the sum (held split while newest)
    reader_reads = {stage: reads[0] for stage, (_, reads) in seen.items()}
    assert reader_reads == {
        "first": 2 * 13 + 1,
        "slid": 2 * 5 - 2,
        "late kept": 2 * 13 - 1,
        "quiet": 2 * 5 - 2,
        "late leaving": 2 * 13 - 1,
    }


def test_a_grouped_read_crossing_a_minute_moves_the_newest_bucket_it_holds_into_its_sum(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A grouped read whose end crosses a minute: the fine bucket that leaves the newest
    and joins the settled sum is held split by group, and the sum moves along by it
    without reading it again while its stamp holds; once a commit wrote it since, it is
    read. Commits land in that bucket and in the minute that enters, and every read, by
    two dimensions and by all three, equals a new store's."""
    from deskpulse.models.events import DIMENSIONS
    from deskpulse.streams.query import query_kpis

    prefix = new_prefix()
    _, items = simulated(seed=13, start_s=T0 - HOUR, duration_s=HOUR - 400, rate=4.0)
    batch = batches_from(len(items))

    async def scenario(client: Redis) -> dict[str, Any]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        read_flat: list[str] = []
        sum_fresh = reader._sum_fresh

        async def counted(partitions: Any, sets: Sequence[Sequence[str]]) -> Any:
            read_flat.extend(s for suffixes in sets for s in suffixes)
            return await sum_fresh(partitions, sets)

        reader._sum_fresh = counted  # type: ignore[method-assign]
        await apply(writer, 0, items)

        async def both(at_s: int) -> tuple[list[Any], list[str]]:
            read_flat.clear()
            documents = []
            for by in (("channel", "queue"), DIMENSIONS):
                kept = await query_kpis(reader, width_s=1800, at_s=at_s, by=by)
                fresh = await query_kpis(
                    Store(client, prefix, CONFIG), width_s=1800, at_s=at_s, by=by
                )
                documents.append((kept, fresh))
            return documents, list(read_flat)

        seen: dict[str, Any] = {"first": await both(T0 - 260)}
        # the two newest minutes written (T0 - 360 s joins the sum at the next minute) and
        # read again in the same minute: held split with their new stamps
        await apply(
            writer,
            0,
            batch(
                created("newest-a", T0 - 350, channel="web"),
                created("newest-b", T0 - 290, channel="chat", queue="returns"),
            ),
        )
        seen["same minute"] = await both(T0 - 250)
        # the minute that enters written, then the read a minute on: T0 - 360 s moves
        # into the sum as held
        await apply(writer, 0, batch(created("entering-a", T0 - 230, channel="web")))
        seen["held"] = await both(T0 - 190)
        # the bucket about to join the sum (T0 - 300 s) written after it was held, and the
        # minute that enters: the read a minute on reads it again
        await apply(
            writer,
            0,
            batch(
                created("late-newest", T0 - 280, channel="web"),
                created("entering-b", T0 - 170, channel="chat", queue="returns"),
            ),
        )
        seen["written since"] = await both(T0 - 130)
        return seen

    seen = run(scenario, redis_url)
    for stage, (documents, _) in seen.items():
        for kept, fresh in documents:
            assert kept == fresh, stage
    # the slides read the bucket that left the window's start, flat; the one that joins
    # the sum only when written since it was held (by each grouping: the sum is moved once)
    assert f"b:{T0 - 360}" not in seen["held"][1], seen["held"][1]
    assert f"b:{T0 - 2040}" in seen["held"][1], seen["held"][1]
    assert f"b:{T0 - 300}" in seen["written since"][1], seen["written since"][1]


def test_documents_worked_out_ahead_are_taken_by_the_read_of_their_end_as_it_would_build_them(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A grouped read's kept documents worked out at the next minute's end ahead of the
    read of it (their ages moved, as the read process does while it waits): that read takes
    them for every group whose sums and live state held, builds anew the groups a commit
    moved in between, and equals a new store's read, by two dimensions and by all three.
    What was worked out for an end is let go once it is read."""
    from deskpulse.models.events import DIMENSIONS
    from deskpulse.streams.query import _SLOTS, documents_ahead, query_kpis

    prefix = new_prefix()
    # all inside the window at both ends: no bucket leaves it at the crossing
    _, items = simulated(seed=17, start_s=T0 - 1500, duration_s=1100, rate=4.0)
    batch = batches_from(len(items))
    width_s = 1800

    async def scenario(client: Redis) -> list[tuple[Any, ...]]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        await apply(writer, 0, items)
        seen = []
        for by in (("channel", "queue"), DIMENSIONS):
            await query_kpis(reader, width_s=width_s, at_s=T0 - 250, by=by)  # end T0 - 240
            ahead = list(documents_ahead(reader, by, width_s, T0 - 180))
            again = list(documents_ahead(reader, by, width_s, T0 - 180))
            # a commit in between: a ticket opened in a group that had one open already
            await apply(writer, 0, batch(created(f"between-{len(by)}", T0 - 230)))
            kept = await query_kpis(reader, width_s=width_s, at_s=T0 - 190, by=by)
            fresh = await query_kpis(
                Store(client, prefix, CONFIG), width_s=width_s, at_s=T0 - 190, by=by
            )
            slot = _SLOTS[(id(reader), reader.prefix, by, width_s)]
            seen.append((by, ahead, again, kept, fresh, dict(slot.ahead)))
        return seen

    for by, ahead, again, kept, fresh, left in run(scenario, redis_url):
        assert kept == fresh, by
        assert ahead and not again  # worked out once for that end
        moved = {id(document) for _, document in ahead}
        taken = [g for g in kept["groups"] if id(g) in moved]
        built = [g for g in kept["groups"] if id(g) not in moved]
        # the groups with an age came from ahead, but the one the commit moved (and any
        # whose live state moved with the instant: a chat's wait going stale)
        changed = {"channel": "email", "queue": "billing", "priority": "normal"}
        key = {d: changed[d] for d in by}
        assert key in [g["key"] for g in built], by
        assert key not in [g["key"] for g in taken], by
        assert len(taken) >= 0.8 * len(ahead) > 5, (by, len(taken), len(ahead))
        assert all(g["backlog"]["total"] or g["chats"]["waiting"] for g in taken)
        assert left == {}, by  # read: let go


def test_a_window_past_the_newest_event_slides_its_kept_sum_along(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A window ending past the newest event (a quiet spell, or a refresh after traffic
    stopped) holds buckets never written, with no stamp: read a minute later it still
    moves its kept sum along (the buckets that left and entered, not the whole window
    again), and equals a new store's read; once an old bucket is trimmed (its stamp gone),
    it reads afresh."""
    from deskpulse.streams.query import query_kpis, read_windows

    prefix = new_prefix()
    _, items = simulated(seed=14, start_s=T0 - HOUR, duration_s=HOUR - 600, rate=4.0)

    async def scenario(client: Redis) -> dict[str, tuple[Any, Any, int]]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        await apply(writer, 0, items)

        async def both(at_s: int) -> tuple[Any, Any, int]:
            calls = hgetall_calls(redis_client)
            kept = await query_kpis(reader, width_s=1800, at_s=at_s, by=("channel",))
            reads = hgetall_calls(redis_client) - calls
            fresh = await query_kpis(
                Store(client, prefix, CONFIG), width_s=1800, at_s=at_s, by=("channel",)
            )
            return kept, fresh, reads

        # the newest event ~10 minutes before each read's end: the window's newest
        # minutes were never written
        seen = {"first": await both(T0 - 180)}
        seen["quiet minute"] = await both(T0 - 120)
        # two windows alike in one read (alert rules of one width) move the same sum along
        twice = await read_windows(reader, widths_s=[1800, 1800], at_s=T0 - 60)
        (once,) = await read_windows(Store(client, prefix, CONFIG), widths_s=[1800], at_s=T0 - 60)
        assert twice == [once, once]
        seen["another"] = await both(T0 - 60)
        # the window a minute on, while a read beside it (the read process answers several
        # at once) lets go of the sum kept a minute before, as it would to keep others,
        # as this one reads the stamps: it moves along what it found kept
        stamps = reader._stamps

        async def others_meanwhile(*args: Any) -> Any:
            found = await stamps(*args)
            for key in list(reader._settled_sums):
                reader._forget_settled(key)
            return found

        reader._stamps = others_meanwhile  # type: ignore[method-assign]
        (slid,) = await read_windows(reader, widths_s=[1800], at_s=T0)
        reader._stamps = stamps  # type: ignore[method-assign]
        (alone,) = await read_windows(Store(client, prefix, CONFIG), widths_s=[1800], at_s=T0)
        assert slid == alone
        # an event two hours on: the window's buckets are trimmed under it
        later = [created("later-1", T0 + 2 * HOUR)]
        await apply(writer, 0, pendings(later, first_offset=10**6))
        seen["trimmed"] = await both(T0 - 60)
        return seen

    seen = run(scenario, redis_url)
    for stage, (kept, fresh, _) in seen.items():
        assert kept == fresh, stage
    reads = {stage: count for stage, (_, _, count) in seen.items()}
    # a window of 30 minutes in 10-minute roll-ups: its first read reads them all; a
    # minute later the fine buckets that left and entered, the 2 newest and the levels
    assert reads["quiet minute"] <= 6 < reads["first"], reads
    assert reads["another"] <= 6, reads
    assert reads["trimmed"] > 6, reads
    assert seen["trimmed"][0] != seen["another"][0]


def test_a_grouped_reader_builds_again_only_the_groups_whose_sums_or_levels_changed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of a window by channel, queue and priority keeps its settled sum's
    projection onto the groups and each group's document: read again, a group whose sums
    and levels are the same keeps its document (its ages moved to the new end), and only
    the groups that changed are built again. New traffic with the window slid, a late
    event in a settled roll-up, a quiet read a minute on, and a trim of the oldest buckets:
    every read equals a new store's (one that keeps nothing). The read process's encoding
    of each read, which keeps each group's JSON while its document is kept, is byte for
    byte the document's, and encodes only the groups built again: a group whose ages alone
    moved (a read a minute on) has its last JSON with the new ages written in."""
    from deskpulse.streams import query
    from deskpulse.streams.query import query_kpis
    from deskpulse.streams.reads import _Encoder

    prefix = new_prefix()
    by = ("channel", "queue", "priority")
    records, items = simulated(seed=12, start_s=T0 - HOUR, duration_s=HOUR, rate=4.0)
    early = [item for item in items if item.ms < (T0 - 240) * 1000]
    later = [item for item in items if item.ms >= (T0 - 240) * 1000]
    batch = batches_from(len(records))
    built: list[tuple[str, ...]] = []
    original = query.group_document

    def counted(key: Any, *args: Any) -> Any:
        built.append(tuple(key.values()))
        return original(key, *args)

    monkeypatch.setattr(query, "group_document", counted)
    encoder = _Encoder()
    #: per stage: the read process's encoding of the kept read, and the groups it encoded
    #: and those whose JSON it took from the last read with new ages
    encoded: dict[str, tuple[bytes, int, int]] = {}

    async def scenario(client: Redis) -> dict[str, tuple[Any, Any, list[tuple[str, ...]]]]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        await apply(writer, 0, early)

        async def both(at_s: int) -> tuple[Any, Any, list[tuple[str, ...]]]:
            built.clear()
            kept = await query_kpis(reader, width_s=2400, at_s=at_s, by=by)
            by_reader = list(built)
            body = encoder.encode("kpis", kept)
            encoded[f"{at_s}:{len(encoded)}"] = (body, encoder.encoded, encoder.moved)
            fresh = await query_kpis(Store(client, prefix, CONFIG), width_s=2400, at_s=at_s, by=by)
            return kept, fresh, by_reader

        seen = {"first": await both(T0 - 300), "again": await both(T0 - 300)}
        # the minutes after, read a minute later: the window slid, its end moved
        await apply(writer, 0, later)
        seen["slid"] = await both(T0 - 240)
        # a late ticket of a group of its own in a roll-up the window keeps (T0 - 1500 s)
        late = created("late-1", T0 - 1500, channel="web", queue="late-queue")
        await apply(writer, 0, batch(late))
        seen["late"] = await both(T0 - 240)
        seen["quiet"] = await both(T0 - 180)
        # an hour on: the oldest buckets are trimmed (the window reaches back before the
        # horizon)
        await apply(writer, 0, batch(created("later-1", T0 + HOUR - 1500)))
        seen["trimmed"] = await both(T0 - 120)
        return seen

    seen = run(scenario, redis_url)
    for stage, (kept, fresh, _) in seen.items():
        assert kept == fresh, stage
    groups = {stage: len(kept["groups"]) for stage, (kept, _, _) in seen.items()}
    builds = {stage: len(by_reader) for stage, (_, _, by_reader) in seen.items()}
    moved = dict(zip(seen, (aged for _, _, aged in encoded.values()), strict=True))
    for (stage, (kept, _, by_reader)), (body, count, aged) in zip(
        seen.items(), encoded.values(), strict=True
    ):
        assert body == orjson.dumps(kept), stage
        # a group built again is a new document; one kept is encoded once, when first seen
        assert len(by_reader) <= count <= count + aged <= groups[stage], stage
    counts = [count for _, count, _ in encoded.values()]
    assert counts[0] == groups["first"] and counts[1] == 0
    assert counts[3] == 1  # the late ticket's group alone
    assert groups["first"] > 20 and builds["first"] == groups["first"]
    # nothing changed: every document kept (the very same objects)
    assert builds["again"] == 0
    first, again = (seen[stage][0]["groups"] for stage in ("first", "again"))
    assert all(a is b for a, b in zip(first, again, strict=True))
    # a late event in a settled roll-up: its group alone is built again
    assert seen["late"][2] == [("web", "late-queue", "normal")]
    late_group = [g for g in seen["late"][0]["groups"] if g["key"]["queue"] == "late-queue"]
    assert late_group[0]["tickets_created"] == 1
    # a minute on with no new event: the groups of the minutes that left and entered are
    # built again, the others keep theirs (their ages taken at the new end)
    assert 0 < builds["quiet"] < groups["quiet"]
    # ... and of those, the groups with a ticket open or a chat waiting have their last
    # JSON with the new ages written in; the others their very JSON
    aged = [
        tuple(g["key"].values())
        for g in seen["quiet"][0]["groups"]
        if g["backlog"]["total"] or g["chats"]["waiting"]
    ]
    assert moved["quiet"] == len(set(aged) - set(seen["quiet"][2])) > 0, moved
    assert counts[4] == builds["quiet"], (counts, builds)
    assert moved["first"] == moved["again"] == 0
    # the trim takes the oldest buckets (and the late ticket's) away
    assert seen["trimmed"][0] != seen["quiet"][0]


def test_a_grouped_reader_reads_again_only_the_newest_buckets_a_commit_wrote(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The newest buckets of a grouped read (the settled sum leaves them out) are kept with
    their stamps: read again with nothing new, none is read and the groups are the very
    same dicts; a new event in the newest bucket, a late one in the one before, a late one
    in a settled roll-up and a trim each make the reader read what they wrote, every group
    they did not touch keeps its dict, and every read equals a new store's (one that keeps
    nothing), by every dimension and by channel alone."""
    from deskpulse.streams.query import query_kpis, read_grouped_windows

    prefix = new_prefix()
    by_all, by_channel = ("channel", "queue", "priority"), ("channel",)
    records, items = simulated(seed=21, start_s=T0 - HOUR, duration_s=HOUR - 120, rate=4.0)
    batch = batches_from(len(records))
    at_s = T0 - 100  # the window ends at T0 - 60: the newest fine buckets start at T0 - 180

    def nonzero(groups: Any) -> dict[Any, dict[str, int]]:
        # (a field at zero and a missing one read alike)
        return {k: {n: v for n, v in f.items() if v} for k, f in groups.items()}

    async def scenario(client: Redis) -> dict[str, Any]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        for partition in range(2):
            await apply(writer, partition, items[partition::2])

        async def both() -> dict[str, Any]:
            calls = hgetall_calls(redis_client)
            kept = {
                by: (await read_grouped_windows(reader, widths_s=[2400], at_s=at_s, by=by))[0]
                for by in (by_all, by_channel)
            }
            reads = hgetall_calls(redis_client) - calls
            cold = {
                by: (
                    await read_grouped_windows(
                        Store(client, prefix, CONFIG), widths_s=[2400], at_s=at_s, by=by
                    )
                )[0]
                for by in (by_all, by_channel)
            }
            documents = [
                (
                    await query_kpis(reader, width_s=2400, at_s=at_s, by=by),
                    await query_kpis(Store(client, prefix, CONFIG), width_s=2400, at_s=at_s, by=by),
                )
                for by in (by_all, by_channel)
            ]
            return {"kept": kept, "cold": cold, "reads": reads, "documents": documents}

        seen = {"first": await both(), "again": await both()}
        await apply(writer, 0, batch(created("new-1", T0 - 110, channel="web", queue="q-new")))
        seen["newest"] = await both()
        await apply(writer, 1, batch(created("late-1", T0 - 170, channel="web", queue="q-late")))
        seen["before newest"] = await both()
        await apply(writer, 0, batch(created("late-2", T0 - 1500, channel="web", queue="q-old")))
        seen["settled"] = await both()
        seen["quiet"] = await both()
        # an hour on: the oldest buckets are trimmed (the window reaches back before the
        # horizon), and the newest left as they were
        await apply(writer, 1, batch(created("later-1", T0 + HOUR - 1500)))
        seen["trimmed"] = await both()
        return seen

    seen = run(scenario, redis_url)
    for stage, found in seen.items():
        for by in (by_all, by_channel):
            kept, cold = found["kept"][by], found["cold"][by]
            assert kept[:2] == cold[:2] and nonzero(kept[2]) == nonzero(cold[2]), (stage, by)
        for kept_document, cold_document in found["documents"]:
            assert kept_document == cold_document, stage
    reads = {stage: found["reads"] for stage, found in seen.items()}
    # the store keeps the newest buckets for both groupings: after the first reads, only
    # the bucket a commit wrote is read again, once
    assert reads["again"] == reads["quiet"] == 0, reads
    assert reads["newest"] == reads["before newest"] == 1, reads
    assert reads["first"] > reads["settled"] > 2, reads

    def same_dicts(stage: str, earlier: str, by: tuple[str, ...]) -> set[tuple[str, ...]]:
        """The groups of ``stage`` that are not the dicts ``earlier`` had."""
        now, then = seen[stage]["kept"][by][2], seen[earlier]["kept"][by][2]
        return {key for key, fields in now.items() if then.get(key) is not fields}

    assert seen["again"]["kept"][by_all][2] is seen["first"]["kept"][by_all][2]
    assert same_dicts("newest", "again", by_all) == {("web", "q-new", "normal")}
    assert same_dicts("before newest", "newest", by_all) == {("web", "q-late", "normal")}
    assert same_dicts("settled", "before newest", by_all) == {("web", "q-old", "normal")}
    assert same_dicts("before newest", "newest", by_channel) == {("web",)}
    (newest,) = (
        g for g in seen["newest"]["documents"][0][0]["groups"] if g["key"]["queue"] == "q-new"
    )
    assert newest["tickets_created"] == 1
    assert seen["trimmed"]["kept"][by_all][2] != seen["quiet"]["kept"][by_all][2]


def test_a_live_read_kept_at_an_instant_equals_a_new_stores_after_every_commit(
    redis_url: str,
) -> None:
    """A reader works the live state at an instant out from what it worked out there last:
    read again with nothing new it is the very same answer; a ticket opened in a group of
    its own, a chat waiting, the ticket solved as another of its group opens (the same
    levels, a later oldest), that one solved, a late ticket older than every open one of
    its group and a trim each change some groups' levels or earliest instants, and every
    read, of the present and of a past instant, equals a new store's (one that keeps
    nothing)."""
    from deskpulse.streams.query import read_live

    prefix = new_prefix()
    _, items = simulated(seed=31, start_s=T0 - HOUR, duration_s=HOUR - 60, rate=4.0)
    batch = batches_from(10**6)
    instants = [T0, T0 - 1200]  # the present (past the newest event) and a past instant

    async def scenario(client: Redis) -> dict[str, Any]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        for partition in range(2):
            await apply(writer, partition, items[partition::2])

        async def both() -> list[tuple[Any, Any]]:
            return [
                (
                    await read_live(reader, end_s=end_s),
                    await read_live(Store(client, prefix, CONFIG), end_s=end_s),
                )
                for end_s in instants
            ]

        seen = {"first": await both(), "again": await both()}
        await apply(writer, 0, batch(created("open-1", T0 - 50, queue="q-open")))
        seen["opened"] = await both()
        chat = ev(
            "chat.requested",
            T0 - 40,
            chat_id="c-1",
            channel="chat",
            queue="q-open",
            priority="normal",
        )
        await apply(writer, 1, batch(chat))
        seen["waiting"] = await both()
        # one ticket of the group solved as another opens: the same levels, a later oldest
        swap = [
            created("open-2", T0 - 45, queue="q-open"),
            ev("ticket.status_changed", T0 - 45, ticket_id="open-1", status="solved"),
        ]
        await apply(writer, 0, batch(*swap))
        seen["swapped"] = await both()
        solve = ev("ticket.status_changed", T0 - 30, ticket_id="open-2", status="solved")
        await apply(writer, 0, batch(solve))
        seen["solved"] = await both()
        # before the first simulated event: older than every open ticket of its group
        await apply(writer, 1, batch(created("late-1", T0 - HOUR - 10)))
        seen["late"] = await both()
        seen["quiet"] = await both()
        await apply(writer, 0, batch(created("later-1", T0 + 2 * HOUR)))
        seen["trimmed"] = await both()
        return seen

    seen = run(scenario, redis_url)
    for stage, pairs in seen.items():
        for (kept, fresh), end_s in zip(pairs, instants, strict=True):
            assert kept == fresh, (stage, end_s)
    for earlier, later in (("first", "again"), ("late", "quiet")):
        for (before, _), (after, _) in zip(seen[earlier], seen[later], strict=True):
            assert after is before
    opened = ("email", "q-open", "normal")
    present = {stage: pairs[0][0] for stage, pairs in seen.items()}
    assert opened not in present["first"] and present["opened"][opened]["bl:n"] == 1
    swapped = present["swapped"][opened]
    assert {n: v for n, v in swapped.items() if n != "oldest_ms"} == {
        n: v for n, v in present["opened"][opened].items() if n != "oldest_ms"
    }
    assert swapped["oldest_ms"] == (T0 - 45) * 1000
    assert present["waiting"][("chat", "q-open", "normal")]["bl:w"] == 1
    assert opened not in present["solved"]
    oldest = present["late"][("email", "billing", "normal")]["oldest_ms"]
    assert oldest == (T0 - HOUR - 10) * 1000
    assert present["trimmed"] != present["quiet"]


def test_totals_by_group_are_the_totals_split_by_group(redis_url: str) -> None:
    """The cumulative totals read by group (as the refresh reads them) are the totals
    summed over the partitions, each name split into its group and field."""
    prefix = new_prefix()
    _, items = simulated(seed=13, start_s=T0 - HOUR, duration_s=HOUR, rate=2.0)

    async def scenario(client: Redis) -> tuple[Any, Any]:
        store = Store(client, prefix, CONFIG)
        for partition in range(2):
            await apply(store, partition, items[partition::2])
        return await store.read_totals(), await store.read_totals_by_group()

    flat, grouped = run(scenario, redis_url)
    split: dict[tuple[str, ...], dict[str, int]] = {}
    for name, value in flat.items():
        channel, queue, priority, field = name.split(SEP)
        split.setdefault((channel, queue, priority), {})[field] = value
    assert grouped == split
    assert len(grouped) > 10 and sum(g.get("tc", 0) for g in grouped.values()) > 100


async def _read_both(store: Store) -> tuple[Any, Any]:
    return await store.read_totals_by_group(), await store.read_levels(await store.partitions())


def _count_replies(monkeypatch: pytest.MonkeyPatch, reader: list[Store]) -> Counter[str]:
    """How ``reader``'s store read the totals and levels it keeps, a count per partition
    and hash: ``d`` since its version, ``f`` whole."""
    kinds: Counter[str] = Counter()
    original = Store._take_moved

    def counted(self: Store, name: str, partitions: Any, replies: Any) -> Any:
        if self is reader[0]:
            kinds.update(text(reply[2]) for reply in replies)
        return original(self, name, partitions, replies)

    monkeypatch.setattr(Store, "_take_moved", counted)
    return kinds


def test_totals_and_levels_read_since_the_last_read_equal_a_full_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that keeps the totals and levels it read, and reads again only the fields
    the commits since moved (``hmoved``), answers after every commit what a new store
    reading everything answers; the groups no commit moved are the dicts of its last
    answer, the others new ones; and nothing moved, nothing is read but the versions.
    Two hours of traffic under an hour's retention and maximum age: the commits also
    expire tickets open at their maximum age (a level step down in the expiry)."""
    prefix = new_prefix()
    config = CoreConfig(
        bucket_seconds=60, rollup_seconds=600, retention_seconds=HOUR, open_ticket_max_age_s=HOUR
    )
    _, items = simulated(seed=21, start_s=T0 - 2 * HOUR, duration_s=2 * HOUR, rate=2.0)
    watched: list[Store] = []
    kinds = _count_replies(monkeypatch, watched)
    rng = random.Random(5)

    async def scenario(client: Redis) -> None:
        writer, reader = Store(client, prefix, config), Store(client, prefix, config)
        watched.append(reader)
        parts = [items[p::3] for p in range(3)]
        # a first commit of each partition, then the reader's first (whole) read
        for partition in range(3):
            await apply(writer, partition, parts[partition][:20])
            parts[partition] = parts[partition][20:]
        last, _ = await _read_both(reader)
        assert kinds["f"] == 6 and kinds["d"] == 0
        kept_same = moved = 0
        while any(parts):
            # a few commits of random partitions, of random sizes, between two reads
            for _ in range(rng.randint(1, 4)):
                if not any(parts):
                    break
                partition = rng.choice([p for p in range(3) if parts[p]])
                size = rng.randint(1, 40)
                await apply(writer, partition, parts[partition][:size])
                parts[partition] = parts[partition][size:]
            totals, levels = await _read_both(reader)
            full = Store(client, prefix, config)
            assert (totals, levels) == await _read_both(full)
            for key, fields in totals.items():
                if last.get(key) is fields:
                    kept_same += 1
                else:
                    assert last.get(key) != fields or key not in last
                    moved += 1
            last = totals
        assert kinds["f"] == 6  # never read whole again
        assert kept_same > moved > 0
        # nothing moved: the same groups, the versions alone read
        again = await reader.read_totals_by_group()
        assert again == last and all(again[key] is last[key] for key in last)

    run(scenario, redis_url)


def test_a_reader_behind_the_log_or_past_an_unlogged_commit_reads_whole(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log keeps :data:`HASH_MOVES_KEPT` versions: a reader that kept an older one
    reads the hashes whole again, as it does when a version has no entry in the log (a
    commit by a deskpulse that logs nothing) or one that names too many groups to list
    (``*``); either way it answers what a new store does."""
    import deskpulse.streams.store as store_module

    prefix = new_prefix()
    _, items = simulated(seed=22, start_s=T0 - HOUR, duration_s=HOUR, rate=2.0)
    monkeypatch.setattr(store_module, "HASH_MOVES_KEPT", 3)
    watched: list[Store] = []
    kinds = _count_replies(monkeypatch, watched)

    async def scenario(client: Redis) -> None:
        writer, reader = Store(client, prefix, CONFIG), Store(client, prefix, CONFIG)
        watched.append(reader)
        await apply(writer, 0, items[:30])
        await _read_both(reader)
        assert kinds == {"f": 2}
        # two commits: within the log
        await apply(writer, 0, items[30:60])
        await apply(writer, 0, items[60:90])
        assert await _read_both(reader) == await _read_both(Store(client, prefix, CONFIG))
        assert kinds["d"] == 2
        # three more: the reader's version is the log's oldest kept no more
        for start in (90, 120, 150):
            await apply(writer, 0, items[start : start + 30])
        kinds.clear()
        assert await _read_both(reader) == await _read_both(Store(client, prefix, CONFIG))
        assert kinds == {"f": 2}  # both hashes whole
        # a commit whose mark is gone (as one of a deskpulse that logs nothing)
        await apply(writer, 0, items[180:210])
        version = meta_of(redis_client, prefix)["version"]
        assert redis_client.zremrangebyscore(f"{prefix}:{{p0}}:hmoved", version, version) == 1
        kinds.clear()
        assert await _read_both(reader) == await _read_both(Store(client, prefix, CONFIG))
        assert kinds == {"f": 2}
        # a commit of more groups than an entry names
        monkeypatch.setattr(store_module, "HASH_MOVES_NAMED", 2)
        await apply(writer, 0, items[210:260])
        kinds.clear()
        assert await _read_both(reader) == await _read_both(Store(client, prefix, CONFIG))
        assert kinds == {"f": 2}

    run(scenario, redis_url)


def test_a_reader_reads_whole_again_after_the_state_started_anew(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State started anew (another generation) under a reader that kept the totals and
    levels: its version may be the new state's too, yet it reads them whole, and answers
    what the new state holds."""
    prefix = new_prefix()
    _, items = simulated(seed=23, start_s=T0 - HOUR, duration_s=HOUR, rate=2.0)
    watched: list[Store] = []
    kinds = _count_replies(monkeypatch, watched)

    async def scenario(client: Redis) -> None:
        writer, reader = Store(client, prefix, CONFIG), Store(client, prefix, CONFIG)
        watched.append(reader)
        await apply(writer, 0, items[:40])
        await apply(writer, 0, items[40:80])
        before = await _read_both(reader)
        await writer.clear()
        fresh = Store(client, prefix, CONFIG)
        # as many commits as before, of other events: the same version, another state
        await apply(fresh, 0, items[80:100])
        await apply(fresh, 0, items[100:120])
        kinds.clear()
        after = await _read_both(reader)
        assert after == await _read_both(Store(client, prefix, CONFIG)) != before
        assert kinds == {"f": 2}

    run(scenario, redis_url)


def test_a_reader_keeps_the_oldest_at_past_instants_until_a_commit_moves_them(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store keeps each partition's oldest open ticket and longest wait at each instant
    a series asks for, with the version read: read again, only instants a later commit's
    live index moves reach (``lmoved``: the moves' earliest event time, or the instant an
    expired ticket left) are read again. After new traffic, a late ticket older than all,
    its late solve and an expiry at the maximum age, its series equal a new store's (one
    that keeps nothing)."""
    from deskpulse.streams.query import SeriesQuery, read_series

    prefix = new_prefix()
    config = CoreConfig(
        bucket_seconds=60,
        rollup_seconds=600,
        retention_seconds=HOUR,
        open_ticket_max_age_s=HOUR,
    )
    # 40 minutes of traffic: the first new event's commit expires no conversation
    records, items = simulated(seed=8, start_s=T0 - 2400, duration_s=2400, rate=4.0)
    # ends T0 - 30 min ... T0 + 40 min (the last ones ahead of every event), and from T0 on
    wide = SeriesQuery(width_s=300, step_s=600, count=8, end_s=T0 + 2400)
    recent = SeriesQuery(width_s=300, step_s=600, count=5, end_s=T0 + 2400)
    scripts: list[int] = []
    original = Store._earliest_call

    def counted(self: Store, partition: int, instants: Any, *args: Any) -> Any:
        scripts.append(len(instants))
        return original(self, partition, instants, *args)

    monkeypatch.setattr(Store, "_earliest_call", counted)
    batch = batches_from(len(records))

    async def scenario(client: Redis) -> dict[str, Any]:
        writer = Store(client, prefix, config)
        reader = Store(client, prefix, config)
        for partition in range(2):
            await apply(writer, partition, items[partition::2])

        async def both(query: SeriesQuery) -> tuple[Any, Any, int]:
            scripts.clear()
            kept = await read_series(reader, query)
            instants_read = sum(scripts)
            fresh = await read_series(Store(client, prefix, config), query)
            return kept, fresh, instants_read

        seen: dict[str, Any] = {"first": await both(wide), "again": await both(wide)}
        # a new ticket after every instant but the last two: those are read again
        await apply(writer, 0, batch(created("new-1", T0 + 1100)))
        seen["new"] = await both(wide)
        # a late ticket older than every other, open: every instant after it moves
        await apply(writer, 1, batch(created("old-1", T0 - 2450)))
        seen["late"] = await both(wide)
        # its late solve: the instants after the solve
        solve = ev("ticket.status_changed", T0 - 1500, ticket_id="old-1", status="solved")
        await apply(writer, 1, batch(solve))
        seen["solved"] = await both(wide)
        # a ticket at its maximum age leaves the backlog at creation + 1 h (T0 + 20 min) in
        # the commit that passes it, whose own traffic comes after every instant
        await apply(writer, 0, batch(created("stays", T0 - 2398, queue="general")))
        await apply(writer, 0, batch(created("new-2", T0 + 3000)))
        seen["expired"] = await both(recent)
        return seen

    seen = run(scenario, redis_url)
    for stage, (kept, fresh, _) in seen.items():
        assert kept == fresh, stage
    points = [point["groups"] for point in seen["first"][0]["points"]]
    assert sum(1 for groups in points if groups and groups[0]["backlog"]["total"]) >= 6
    partitions = 2
    assert seen["first"][2] == 8 * partitions
    assert seen["again"][2] == 0  # nothing committed: every answer holds
    assert seen["new"][2] == 3  # the instants after T0 + 1100 s, in partition 0
    assert seen["late"][2] == 8  # partition 1's instants, all after the late creation
    oldest = [p["groups"][0]["backlog"]["oldest_age_seconds"] for p in seen["late"][0]["points"]]
    before = [p["groups"][0]["backlog"]["oldest_age_seconds"] for p in seen["new"][0]["points"]]
    assert oldest != before
    assert seen["solved"][2] == 7  # those after the solve (T0 - 1500 s)
    # the last stage's commit dropped tickets at their maximum age ("stays" among them)
    assert int(redis_client.hget(f"{prefix}:{{p0}}:meta", "expired") or 0) >= 1


def test_an_expired_waiting_chat_makes_a_reader_read_again_only_the_instants_it_waited_at(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chat waiting with no outcome is dropped with its state once it is quiet for the
    retention: a reader's kept longest wait at an instant it was waiting at is read again
    (and it is gone there), one at an instant past its stale time holds."""
    prefix = new_prefix()
    config = CoreConfig(
        bucket_seconds=60, rollup_seconds=600, retention_seconds=HOUR, chat_stale_after_s=1200
    )
    group = "chat\x1fbilling\x1fnormal"
    waiting, after = (T0 + 300) * 1000, (T0 + 1500) * 1000
    reads: list[list[int]] = []
    original = Store._earliest_call

    def counted(self: Store, partition: int, instants: Any, *args: Any) -> Any:
        reads.append([at for at, _, _ in instants])
        return original(self, partition, instants, *args)

    monkeypatch.setattr(Store, "_earliest_call", counted)

    async def scenario(client: Redis) -> list[Any]:
        writer = Store(client, prefix, config)
        reader = Store(client, prefix, config)
        chat = ev("chat.requested", T0, chat_id="W", channel="chat", queue="billing")
        await apply(writer, 0, pendings([chat, created("A", T0 + 1000)]))
        instants = [(waiting, [], [group]), (after, [], [group])]

        async def read() -> list[Any]:
            return await reader.earliest_at([0], instants, stale_ms=1_200_000, newest_ms={})

        seen = [await read()]
        # an hour on, the chat is quiet for the retention: dropped by this commit
        await apply(writer, 0, pendings([created("B", T0 + HOUR + 60)], first_offset=2))
        reads.clear()
        seen.append(await read())
        seen.append(list(reads))
        fresh = Store(client, prefix, config)
        seen.append(await fresh.earliest_at([0], instants, stale_ms=1_200_000, newest_ms={}))
        return seen

    first, again, read_again, fresh = run(scenario, redis_url)
    assert first == [{("c", group): T0 * 1000}, {}]
    assert again == fresh == [{}, {}]
    assert read_again == [[waiting]]  # the instant past its stale time held


def test_a_kept_live_read_a_commit_moved_reads_again_only_the_groups_it_moved(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept answer of a partition at an instant that a later commit changed is read again
    only for the groups whose live entries the commits since moved (``lgm``), and merged
    with the rest of it. After every commit of a random workload of tickets opened, solved,
    reopened and moved between groups, chats waiting and answered, late events, tickets
    dropped at their maximum age and chats dropped quiet, the kept reader's answers at the
    present and at past instants equal a new store's, and most commits have it ask a few
    groups, not all."""
    prefix = new_prefix()
    config = CoreConfig(
        bucket_seconds=60,
        rollup_seconds=600,
        retention_seconds=HOUR,
        open_ticket_max_age_s=HOUR,
        chat_stale_after_s=HOUR,
    )
    rng = random.Random(41)
    queues = [f"q{n}" for n in range(12)]
    priorities = ["low", "normal", "high"]
    ticket_groups = [f"email\x1f{q}\x1f{p}" for q in queues for p in priorities]
    chat_groups = [f"chat\x1f{q}\x1fnormal" for q in queues]
    #: per script call of the kept reader: the groups asked, and all the groups the
    #: instants of that call are asked for (a call for fewer reads again only some)
    asked: list[tuple[int, int]] = []
    #: the groups each instant is asked for at this step (some left out, as a read asks
    #: only the groups with something open: a group's set changes as tickets open and close)
    asking: list[int] = [0]
    watched: list[Store] = []
    original = Store._earliest_call

    def counted(self: Store, partition: int, instants: Any, *args: Any) -> Any:
        if watched and self is watched[0]:
            groups = sum(len(tickets) + len(chats) for _, tickets, chats in instants)
            asked.append((groups, asking[0] * len(instants)))
        return original(self, partition, instants, *args)

    monkeypatch.setattr(Store, "_earliest_call", counted)
    batch = batches_from(0)

    def step_events(now: float, n: int, tickets: list[str], chats: list[str]) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(rng.randrange(1, 4)):
            # a few of them late: up to half an hour before the present
            at = now - (rng.randrange(0, 1800) if rng.random() < 0.2 else rng.randrange(0, 30))
            roll = rng.random()
            if roll < 0.3 or not tickets:
                tid = f"T{n}-{len(out)}"
                tickets.append(tid)
                out.append(
                    created(tid, at, queue=rng.choice(queues), priority=rng.choice(priorities))
                )
            elif roll < 0.45:
                value = rng.choice(["solved", "pending", "open", "hold"])
                out.append(
                    ev("ticket.status_changed", at, ticket_id=rng.choice(tickets), status=value)
                )
            elif roll < 0.6:
                moved = {"queue": rng.choice(queues)} if rng.random() < 0.6 else {}
                moved["priority"] = rng.choice(priorities)
                out.append(ev("ticket.updated", at, ticket_id=rng.choice(tickets), **moved))
            elif roll < 0.8 or not chats:
                cid = f"C{n}-{len(out)}"
                chats.append(cid)
                out.append(ev("chat.requested", at, chat_id=cid, queue=rng.choice(queues)))
            else:
                out.append(ev("chat.accepted", at, chat_id=chats.pop(rng.randrange(len(chats)))))
        return out

    async def scenario(client: Redis) -> list[tuple[Any, Any]]:
        writer = Store(client, prefix, config)
        reader = Store(client, prefix, config)
        watched.append(reader)
        seen = []
        tickets: list[list[str]] = [[], []]
        chats: list[list[str]] = [[], []]
        now = float(T0)
        for n in range(150):
            now += rng.randrange(20, 90)
            partition = n % 2
            await apply(
                writer, partition, batch(*step_events(now, n, tickets[partition], chats[partition]))
            )
            metas = await reader.read_meta()
            newest = {p: int(meta.get("wm", "0")) for p, meta in metas.items()}
            # the present (the end of the 10-minute bucket it is in) and two past instants:
            # the same instants for several commits in a row
            end = (int(now) // 600 + 1) * 600 * 1000
            tickets_now = [g for g in ticket_groups if rng.random() < 0.9]
            chats_now = [g for g in chat_groups if rng.random() < 0.9]
            asking[0] = len(tickets_now) + len(chats_now)
            instants = [
                (at, tickets_now, chats_now) for at in (end - 2_400_000, end - 1_200_000, end)
            ]
            kept = await reader.earliest_at(
                [0, 1], instants, stale_ms=HOUR * 1000, newest_ms=newest
            )
            fresh = await Store(client, prefix, config).earliest_at(
                [0, 1], instants, stale_ms=HOUR * 1000, newest_ms=newest
            )
            seen.append((kept, fresh))
        return seen

    seen = run(scenario, redis_url)
    for n, (kept, fresh) in enumerate(seen):
        assert kept == fresh, n
    assert sum(1 for kept, _ in seen for found in kept if found) >= 100
    whole = sum(1 for groups, every in asked if groups == every)
    partial = [(groups, every) for groups, every in asked if groups < every]
    # the answers read whole: the first reads and those of instants new to the reader
    # (a new present every 10 minutes, or a partition's instants passed by its newest event);
    # an instant asked for other groups than before reads again only the groups it lacks
    assert len(partial) > 2 * whole, (len(partial), whole)
    assert sum(groups for groups, _ in partial) < sum(every for _, every in partial) / 4


def test_a_live_read_of_a_new_present_takes_the_last_present_answer_but_what_moved(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the present a minute on (an instant after every event, asked for the first
    time) takes the answer kept at the last present but for the groups moved since and
    the chats it found that went stale in between. After every commit of a random workload
    (tickets opened, solved, reopened, moved; chats waiting, answered and going stale; late
    events), at the bucket boundary after the newest event, the kept reader's answer equals
    a new store's, and after the first reads none is read whole."""
    prefix = new_prefix()
    stale_s = 600
    config = CoreConfig(
        bucket_seconds=60,
        rollup_seconds=600,
        retention_seconds=HOUR,
        open_ticket_max_age_s=HOUR,
        chat_stale_after_s=stale_s,
    )
    rng = random.Random(7)
    queues = [f"q{n}" for n in range(8)]
    priorities = ["low", "normal", "high"]
    ticket_groups = [f"email\x1f{q}\x1f{p}" for q in queues for p in priorities]
    chat_groups = [f"chat\x1f{q}\x1fnormal" for q in queues]
    #: per script call of the kept reader: how many groups it asked
    asked: list[int] = []
    watched: list[Store] = []
    original = Store._earliest_call

    def counted(self: Store, partition: int, instants: Any, *args: Any) -> Any:
        if watched and self is watched[0]:
            asked.append(sum(len(tickets) + len(chats) for _, tickets, chats in instants))
        return original(self, partition, instants, *args)

    monkeypatch.setattr(Store, "_earliest_call", counted)
    batch = batches_from(0)

    def step_events(now: float, n: int, tickets: list[str], chats: list[str]) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(rng.randrange(0, 3)):
            at = now - (rng.randrange(0, 900) if rng.random() < 0.2 else rng.randrange(0, 20))
            roll = rng.random()
            if roll < 0.3 or not tickets:
                tid = f"T{n}-{len(out)}"
                tickets.append(tid)
                out.append(
                    created(tid, at, queue=rng.choice(queues), priority=rng.choice(priorities))
                )
            elif roll < 0.45:
                value = rng.choice(["solved", "pending", "open", "closed"])
                out.append(
                    ev("ticket.status_changed", at, ticket_id=rng.choice(tickets), status=value)
                )
            elif roll < 0.55:
                out.append(
                    ev(
                        "ticket.updated",
                        at,
                        ticket_id=rng.choice(tickets),
                        queue=rng.choice(queues),
                    )
                )
            elif roll < 0.85 or not chats:
                cid = f"C{n}-{len(out)}"
                chats.append(cid)
                out.append(ev("chat.requested", at, chat_id=cid, queue=rng.choice(queues)))
            else:
                out.append(ev("chat.accepted", at, chat_id=chats.pop(rng.randrange(len(chats)))))
        return out

    async def scenario(client: Redis) -> list[tuple[Any, Any, int]]:
        writer = Store(client, prefix, config)
        reader = Store(client, prefix, config)
        watched.append(reader)
        seen = []
        tickets: list[list[str]] = [[], []]
        chats: list[list[str]] = [[], []]
        now = float(T0)
        for n in range(160):
            # a minute or two on (a step with no event moves the present alone)
            now += rng.randrange(40, 130)
            partition = n % 2
            events = step_events(now, n, tickets[partition], chats[partition])
            if events:
                await apply(writer, partition, batch(*events))
            metas = await reader.read_meta()
            newest = {p: int(meta.get("wm", "0")) for p in (0, 1) for meta in [metas.get(p, {})]}
            # the present: the minute boundary after the clock, after every event
            end = (int(now) // 60 + 1) * 60 * 1000
            instants = [(end, ticket_groups, chat_groups)]
            calls = len(asked)
            kept = await reader.earliest_at(
                [0, 1], instants, stale_ms=stale_s * 1000, newest_ms=newest
            )
            fresh = await Store(client, prefix, config).earliest_at(
                [0, 1], instants, stale_ms=stale_s * 1000, newest_ms=newest
            )
            whole = sum(
                1 for groups in asked[calls:] if groups == len(ticket_groups) + len(chat_groups)
            )
            seen.append((kept, fresh, whole))
        return seen

    seen = run(scenario, redis_url)
    for n, (kept, fresh, _) in enumerate(seen):
        assert kept == fresh, n
    assert sum(1 for kept, _, _ in seen if kept[0]) >= 100
    # chats went stale between two presents and were asked again (found stale or not)
    stale_found = sum(
        1
        for (before, _, _), (after, _, _) in itertools.pairwise(seen)
        for name in before[0].keys() - after[0].keys()
        if name[0] == "c"
    )
    assert stale_found > 5, stale_found
    # each partition's first read is whole; after it, a new present reads what moved
    assert sum(whole for _, _, whole in seen[5:]) == 0, [w for _, _, w in seen]


def test_a_kept_live_read_past_a_commit_that_logged_no_groups_reads_all_its_groups(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The groups a commit moved are trusted only over an unbroken run of commits that
    logged them (``lgm:from`` to ``lgm:to`` in the meta): past a commit that logged none
    (one of a deskpulse of layout 10, which knows no ``lgm``) a kept answer is read again
    for every group it asked, and from the next logged commit on for the moved ones
    alone; every answer a new store's."""
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    groups = [f"email\x1fq{n}\x1fnormal" for n in range(4)]
    asked: list[int] = []
    watched: list[Store] = []
    original = Store._earliest_call

    def counted(self: Store, partition: int, instants: Any, *args: Any) -> Any:
        if watched and self is watched[0]:
            asked.append(sum(len(tickets) for _, tickets, _ in instants))
        return original(self, partition, instants, *args)

    monkeypatch.setattr(Store, "_earliest_call", counted)
    batch = batches_from(0)
    instants = [((T0 + 1000) * 1000, groups, [])]

    async def scenario(client: Redis) -> list[tuple[Any, Any, list[int]]]:
        writer = Store(client, prefix, CONFIG)
        reader = Store(client, prefix, CONFIG)
        watched.append(reader)
        seen = []

        async def read() -> None:
            asked.clear()
            kept = await reader.earliest_at([0], instants, stale_ms=1, newest_ms={})
            fresh = await Store(client, prefix, CONFIG).earliest_at(
                [0], instants, stale_ms=1, newest_ms={}
            )
            seen.append((kept, fresh, list(asked)))

        await apply(
            writer, 0, batch(*(created(f"A{n}", T0 + 10 * n, queue=f"q{n}") for n in range(4)))
        )
        await read()
        await apply(writer, 0, batch(created("B", T0 + 5, queue="q1")))
        await read()
        # a commit of a deskpulse that logs no groups: its entries gone, the run not moved
        await apply(writer, 0, batch(created("C", T0 + 3, queue="q2")))
        version = int(redis_client.hget(base + "meta", "version"))
        redis_client.zremrangebyscore(base + "lgm", version, version)
        redis_client.hset(base + "meta", "lgm:to", version - 1)
        await read()
        # the next commit starts a new run: an answer kept since reads the moved group alone
        await apply(writer, 0, batch(created("D", T0 + 1, queue="q3")))
        assert redis_client.hget(base + "meta", "lgm:from") == str(version + 1).encode()
        await read()
        return seen

    seen = run(scenario, redis_url)
    for kept, fresh, _ in seen:
        assert kept == fresh
    assert [calls for _, _, calls in seen] == [[4], [1], [4], [1]]
    # each group's oldest: A0, then B, C and D, each older than the A of its group
    oldest = [T0, T0 + 5, T0 + 3, T0 + 1]
    assert seen[-1][0] == [{("t", g): ms * 1000 for g, ms in zip(groups, oldest, strict=True)}]


def test_the_earliest_answers_kept_stay_within_the_groups_they_may_name(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh asks the earliest open ticket of a set of groups a little different at
    every pass: the answers kept under the sets asked before are let go once they name
    more groups than the store keeps, the newest kept, every answer as a fresh store's."""
    monkeypatch.setattr("deskpulse.streams.store.EARLIEST_GROUPS_KEPT", 12)
    prefix = new_prefix()
    config = CoreConfig(bucket_seconds=60, rollup_seconds=600, retention_seconds=HOUR)
    groups = [f"email\x1fq{n}\x1fnormal" for n in range(6)]

    async def scenario(client: Redis) -> list[Any]:
        writer = Store(client, prefix, config)
        reader = Store(client, prefix, config)
        tickets = [
            created(f"T{n}", T0 + n, channel="email", queue=f"q{n}", priority="normal")
            for n in range(6)
        ]
        await apply(writer, 0, pendings(tickets))
        seen = []
        for asked in range(1, 7):  # one more group asked at each pass
            instants = [((T0 + 100) * 1000, groups[:asked], [])]
            found = await reader.earliest_at([0], instants, stale_ms=1, newest_ms={})
            fresh = await Store(client, prefix, config).earliest_at(
                [0], instants, stale_ms=1, newest_ms={}
            )
            weights = [len(k[2]) + len(k[3]) + len(a[2]) for k, a in reader._earliest_kept.items()]
            seen.append((found, fresh, len(reader._earliest_kept), sum(weights)))
            assert reader._earliest_groups == sum(weights)
        return seen

    seen = run(scenario, redis_url)
    for asked, (found, fresh, kept, weight) in enumerate(seen, start=1):
        assert found == fresh
        assert found == [{("t", g): (T0 + n) * 1000 for n, g in enumerate(groups[:asked])}]
        # the newest answer is kept whatever it weighs; older ones only within the bound
        assert kept >= 1
        assert kept == 1 or weight <= 12, (asked, kept, weight)
    # 1 + 2 + 3 groups asked, as many found: 12; then each answer alone
    assert [kept for _, _, kept, _ in seen] == [1, 2, 3, 1, 1, 1]


def test_level_steps_scanned_in_many_calls_sum_as_in_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backlog at past instants reads the level steps after them out of the buckets
    with ``HSCAN MATCH``: scanned a few fields per call (a field may come twice), the
    levels are the same as scanned whole."""
    from deskpulse.streams.query import read_live

    prefix = new_prefix()
    _, items = simulated(seed=6, start_s=T0 - HOUR, duration_s=HOUR, rate=3.0)
    instants = [T0 - 2400, T0 - 1200, T0 - 300]

    async def scenario(client: Redis) -> list[Any]:
        store = Store(client, prefix, CONFIG)
        for partition in range(2):
            await apply(store, partition, items[partition::2])
        whole = [await read_live(store, end_s=at) for at in instants]
        monkeypatch.setattr("deskpulse.streams.store._SCAN_COUNT", 2)
        # a new store: this one keeps what it scanned
        fresh = Store(client, prefix, CONFIG)
        piecemeal = [await read_live(fresh, end_s=at) for at in instants]
        return [whole, piecemeal]

    whole, piecemeal = run(scenario, redis_url)
    assert piecemeal == whole
    assert any(levels.get("bl:n", 0) for at in whole for levels in at.values())
