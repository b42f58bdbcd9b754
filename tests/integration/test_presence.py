"""Agents' presence through a real Redis: agents by status at present, past and future
instants, and occupancy over windows, against the brute-force oracle
(tests/presence_oracle.py), in any order and batching and across retention.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from typing import Any

import orjson
import redis
from redis.asyncio import Redis

from deskpulse.models.settings import Settings
from deskpulse.streams.core import Conversation, CoreConfig
from deskpulse.streams.kafka_admin import ensure_topics as create
from deskpulse.streams.query import query_kpis
from deskpulse.streams.store import Store
from deskpulse.streams.topics import ensure_topics
from tests.integration.test_store import T0, apply, created, ev, new_prefix, pendings, run
from tests.presence_oracle import agents_document

HOUR = 3600
CONFIG = CoreConfig(bucket_seconds=60, rollup_seconds=600, retention_seconds=6 * HOUR)
RETENTION_MS = CONFIG.retention_seconds * 1000


def status(agent: str, t_s: float, value: str) -> bytes:
    return ev("agent.status_changed", t_s, agent_id=agent, status=value)


def partition_of(raw: bytes, partitions: int) -> int:
    """An agent's (or a ticket's) partition, as a producer keying by its id would pick."""
    fields = orjson.loads(raw)
    return zlib.crc32(str(fields.get("agent_id") or fields.get("ticket_id")).encode()) % partitions


def load(redis_url: str, raws: list[bytes], *, batches: int = 1, partitions: int = 1) -> str:
    """Fold ``raws`` in ``batches`` batches, each agent's events on one of ``partitions``."""
    prefix = new_prefix()

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        size = -(-len(raws) // batches)
        offsets = [0] * partitions
        for first in range(0, len(raws), size):
            chunk = raws[first : first + size]
            for partition in range(partitions):
                mine = [raw for raw in chunk if partition_of(raw, partitions) == partition]
                if mine:
                    items = pendings(mine, topic="agents", first_offset=offsets[partition])
                    offsets[partition] += len(mine)
                    await apply(store, partition, items)

    run(scenario, redis_url)
    return prefix


def kpis(redis_url: str, prefix: str, at_s: int, width_s: int = HOUR, **kw: Any) -> dict[str, Any]:
    async def read(client: Redis) -> dict[str, Any]:
        return await query_kpis(Store(client, prefix, CONFIG), width_s=width_s, at_s=at_s, **kw)

    return run(read, redis_url)


def agents(redis_url: str, prefix: str, at_s: int, width_s: int = HOUR) -> dict[str, Any]:
    (group,) = kpis(redis_url, prefix, at_s, width_s)["groups"]
    return dict(group["agents"])


# A: available at T0, busy at +600, available at +1500, offline at +3000
# B: busy at +300, away at +1200 (twice: the repeat changes nothing), busy again at +2400
EVENTS = [
    status("A", T0, "available"),
    status("A", T0 + 600, "busy"),
    status("A", T0 + 1500, "available"),
    status("A", T0 + 3000, "offline"),
    status("B", T0 + 300, "busy"),
    status("B", T0 + 1200, "away"),
    status("B", T0 + 1800, "away"),
    status("B", T0 + 2400, "busy"),
]


def test_agents_by_status_and_occupancy_worked_by_hand(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = load(redis_url, EVENTS)
    # at +660: A busy (since +600), B busy (since +300)
    assert agents(redis_url, prefix, T0 + 660, width_s=660) == {
        "available": 0,
        "busy": 2,
        "away": 0,
        "offline": 0,
        # [0, 660): A available 600 s, busy 60 s; B busy 360 s
        "occupancy_ratio": (60 + 360) / (600 + 60 + 360),
    }
    # a status event at E itself does not count at E (the one strictly before does)
    assert agents(redis_url, prefix, T0 + 600)["busy"] == 1
    # at +1800: A available, B away; over [+600, +1800): A busy 900, available 300; B busy
    # 600 (until +1200)
    doc = agents(redis_url, prefix, T0 + 1800, width_s=1200)
    assert (doc["available"], doc["busy"], doc["away"]) == (1, 0, 1)
    assert doc["occupancy_ratio"] == (900 + 600) / (900 + 300 + 600)
    # a past window while the newest event is later still reads the same after it
    later = agents(redis_url, prefix, T0 + 3600)
    assert (later["available"], later["busy"], later["offline"]) == (0, 1, 1)


def test_an_agent_silent_for_the_retention_is_in_no_status(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = load(redis_url, EVENTS)
    six_hours = CONFIG.retention_seconds
    # B's last event is at +2400 (busy): it counts busy until +2400 + retention
    assert agents(redis_url, prefix, T0 + 2400 + six_hours)["busy"] == 1
    at = agents(redis_url, prefix, T0 + 2460 + six_hours)
    assert (at["busy"], at["offline"]) == (0, 1)  # A offline until +3000 + 6 h
    assert agents(redis_url, prefix, T0 + 3000 + six_hours)["offline"] == 1
    assert agents(redis_url, prefix, T0 + 3060 + six_hours)["offline"] == 0
    # past every step written: no agent, and no time in any status
    far = agents(redis_url, prefix, T0 + 3 * six_hours)
    assert far == dict.fromkeys(("available", "busy", "away", "offline"), 0) | {
        "occupancy_ratio": None
    }


def test_the_same_presence_in_any_batching_order_and_partitioning(
    redis_url: str, redis_client: redis.Redis
) -> None:
    one = load(redis_url, EVENTS)
    many = load(redis_url, list(reversed(EVENTS)), batches=len(EVENTS), partitions=3)
    for at_s in (T0 + 120, T0 + 660, T0 + 1800, T0 + 3600, T0 + 9 * HOUR):
        for width_s in (300, HOUR, 6 * HOUR):
            assert agents(redis_url, one, at_s, width_s) == agents(redis_url, many, at_s, width_s)


def test_presence_is_in_no_group_of_a_grouped_read_and_moves_no_backlog(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = load(redis_url, [created("T", T0), *EVENTS])
    doc = kpis(redis_url, prefix, T0 + 1800, by=("channel",))
    assert [group["key"] for group in doc["groups"]] == [{"channel": "email"}]
    assert "agents" not in doc["groups"][0]
    (total,) = kpis(redis_url, prefix, T0 + 1800)["groups"]
    assert total["backlog"]["total"] == 1
    assert total["agents"]["available"] == 1


def days_of_presence(seed: int, agents: int, hours: int) -> list[bytes]:
    """Agents' status changes over ``hours``: shifts with breaks, busy spells, silences
    longer than the retention, repeats of the same status, and duplicates."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    for n in range(agents):
        agent = f"A{n}"
        t = T0 + rng.uniform(0, 2 * HOUR)
        while t < T0 + hours * HOUR:
            value = rng.choice(["available", "busy", "busy", "away", "offline", "available"])
            raw = status(agent, t + rng.randint(0, 999) / 1000, value)
            out.append((t, raw))
            if rng.random() < 0.05:
                out.append((t, raw))  # delivered twice
            # mostly minutes apart; now and then silent for longer than the retention
            t += rng.expovariate(1 / 900) if rng.random() > 0.02 else 7 * HOUR
    out.sort(key=lambda item: item[0])
    # arrival order: shuffled within each hour (never later than the retention allows)
    by_hour: dict[int, list[bytes]] = {}
    for t, raw in out:
        by_hour.setdefault(int(t - T0) // HOUR, []).append(raw)
    arrived: list[bytes] = []
    for hour in sorted(by_hour):
        chunk = by_hour[hour]
        rng.shuffle(chunk)
        arrived.extend(chunk)
    return arrived


def test_presence_over_two_days_equals_the_oracle_at_many_instants_and_widths(
    redis_url: str, redis_client: redis.Redis
) -> None:
    hours = 40
    raws = days_of_presence(seed=22, agents=25, hours=hours)
    prefix = load(redis_url, raws, batches=60, partitions=2)
    newest_s = T0 + hours * HOUR
    # instants within the retention behind the newest event, and past it
    for at_s in (newest_s - 2 * HOUR, newest_s - HOUR + 1, newest_s, newest_s + 3 * HOUR):
        for width_s in (900, HOUR, 3 * HOUR):
            end_s = -(-at_s // 60) * 60
            got = agents(redis_url, prefix, at_s, width_s)
            want = agents_document(
                raws,
                start_ms=(end_s - width_s) * 1000,
                end_ms=end_s * 1000,
                retention_ms=RETENTION_MS,
            )
            assert got == want, (at_s, width_s)
    # the states are bounded: an agent keeps the events within the retention before its
    # newest, and the one in force before them
    for key in redis_client.scan_iter(f"{prefix}:*:conv"):
        for raw in redis_client.hvals(key):
            times = sorted(ms for ms, _ in Conversation.loads(raw).timeline.values())
            assert times[1:] == [] or times[1] >= times[-1] - RETENTION_MS


def test_the_agents_topic_is_made_with_the_partitions_of_inputs_that_exist(
    settings: Settings,
) -> None:
    # a deployment from before the agents topic: its inputs have 3 partitions, the
    # setting says 4 (a new topic would get 4, and the inputs would not be co-partitioned)
    old = {topic: 3 for topic in settings.input_topics if topic != settings.topic_agents}
    asyncio.run(create(settings.kafka_bootstrap, old))
    counts = asyncio.run(ensure_topics(settings))
    assert counts[settings.topic_agents] == 3
    assert {counts[topic] for topic in settings.input_topics} == {3}
