"""The lifecycle KPIs and the live state through a real Redis: the backlog, the oldest open
ticket and the waiting chats at present and past instants, full resolution and handle time.

Each scenario's numbers are worked out by hand in its comments; the brute-force oracle
over generated data is tests/system/test_lifecycle_acceptance.py.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.asyncio import Redis

from deskpulse.streams.core import CoreConfig
from deskpulse.streams.query import query_kpis
from deskpulse.streams.store import Store
from tests.integration.test_store import T0, apply, created, ev, new_prefix, pendings, run

CONFIG = CoreConfig(bucket_seconds=60, rollup_seconds=600, retention_seconds=6 * 3600)


def status(ticket: str, t_s: float, value: str) -> bytes:
    return ev("ticket.status_changed", t_s, ticket_id=ticket, status=value)


def reply(ticket: str, t_s: float, role: str = "agent") -> bytes:
    return ev("ticket.replied", t_s, ticket_id=ticket, author_role=role)


def chat(kind: str, chat_id: str, t_s: float) -> bytes:
    fields: dict[str, Any] = {"channel": "chat", "queue": "billing"} if kind == "requested" else {}
    return ev(f"chat.{kind}", t_s, chat_id=chat_id, **fields)


# A: created T0, pending at +60, solved at +300, reopened (open) at +600, solved at +900
# B: created T0+30 and left new; C: answered at +200 and ended at +500; D: never answered
EVENTS = [
    created("A", T0),
    reply("A", T0 + 50),
    status("A", T0 + 60, "pending"),
    status("A", T0 + 300, "solved"),
    status("A", T0 + 600, "open"),
    status("A", T0 + 900, "solved"),
    created("B", T0 + 30),
    chat("requested", "C", T0 + 100),
    chat("accepted", "C", T0 + 200),
    chat("ended", "C", T0 + 500),
    chat("requested", "D", T0 + 100),
]


def kpis(redis_url: str, prefix: str, at_s: int, width_s: int = 3600, **kw: Any) -> dict[str, Any]:
    async def read(client: Redis) -> dict[str, Any]:
        return await query_kpis(Store(client, prefix, CONFIG), width_s=width_s, at_s=at_s, **kw)

    return run(read, redis_url)


def load(redis_url: str, raws: list[bytes], *, batches: int = 1) -> str:
    prefix = new_prefix()

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        size = -(-len(raws) // batches)
        for first in range(0, len(raws), size):
            await apply(store, 0, pendings(raws[first : first + size], first_offset=first))

    run(scenario, redis_url)
    return prefix


def test_backlog_oldest_and_waiting_at_past_and_present_instants(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = load(redis_url, EVENTS)
    # every read below but the last is of the past: the newest event is at T0 + 900
    (at_120,) = kpis(redis_url, prefix, T0 + 120)["groups"]
    assert at_120["backlog"] == {
        "new": 1,
        "open": 0,
        "pending": 1,
        "hold": 0,
        "total": 2,
        "oldest_age_seconds": 120.0,
    }
    # C waits from +100 until its accept at +200; D from +100 until it is stale at +3700
    assert at_120["chats"]["waiting"] == 2
    assert at_120["chats"]["longest_wait_seconds"] == 20.0
    (at_420,) = kpis(redis_url, prefix, T0 + 420)["groups"]
    assert at_420["backlog"]["total"] == 1  # A solved at +300: B alone, new
    assert at_420["backlog"]["oldest_age_seconds"] == 390.0
    assert at_420["chats"]["waiting"] == 1
    assert at_420["chats"]["longest_wait_seconds"] == 320.0
    (at_660,) = kpis(redis_url, prefix, T0 + 660)["groups"]
    assert at_660["backlog"]["open"] == 1  # reopened at +600
    assert at_660["backlog"]["oldest_age_seconds"] == 660.0
    # the reopen took the first solve's resolution sample back
    assert at_660["resolution"]["count"] == 0
    (present,) = kpis(redis_url, prefix, T0 + 960)["groups"]
    assert present["backlog"]["total"] == 1
    assert present["backlog"]["oldest_age_seconds"] == 930.0
    resolution = present["resolution"]
    assert resolution["count"] == 1
    assert resolution["mean_seconds"] == 900.0
    assert resolution["reopened"] == 1
    assert resolution["reopen_ratio"] == 1.0
    assert resolution["one_touch"] == 0
    assert present["chats"]["handle_mean_seconds"] == 300.0
    # D goes stale an hour after its request: no chat waits at +3720
    (stale,) = kpis(redis_url, prefix, T0 + 3720)["groups"]
    assert stale["chats"]["waiting"] == 0
    assert stale["chats"]["longest_wait_seconds"] is None
    assert stale["backlog"]["new"] == 1


def test_the_same_state_in_any_batching_and_order(
    redis_url: str, redis_client: redis.Redis
) -> None:
    one = load(redis_url, EVENTS)
    many = load(redis_url, list(reversed(EVENTS)), batches=len(EVENTS))
    for at_s in (T0 + 120, T0 + 420, T0 + 660, T0 + 960, T0 + 3720):
        for by in ((), ("channel",), ("channel", "queue", "priority")):
            assert kpis(redis_url, one, at_s, by=by) == kpis(redis_url, many, at_s, by=by)


def test_a_group_with_only_a_backlog_is_in_the_document(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = load(redis_url, EVENTS)
    # a 5-minute window at +3720 holds no sample, yet B is open and the chat queue is empty
    doc = kpis(redis_url, prefix, T0 + 3720, width_s=300, by=("channel",))
    assert [(g["key"], g["backlog"]["total"]) for g in doc["groups"]] == [({"channel": "email"}, 1)]


def test_a_status_change_for_a_ticket_never_seen_or_dropped_is_held_never_applied(
    redis_url: str, redis_client: redis.Redis
) -> None:
    config = CoreConfig(
        bucket_seconds=60, rollup_seconds=600, retention_seconds=3600, open_ticket_max_age_s=7200
    )
    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"

    async def scenario(client: Redis) -> dict[str, Any]:
        store = Store(client, prefix, config)
        batches = [
            [created("A", T0), status("U", T0 + 30, "open")],  # U: never created
            [created("B", T0 + 7300)],  # A is dropped at its maximum age, T0 + 2 h
            [status("A", T0 + 7400, "solved")],  # for the dropped ticket: held
        ]
        offset = 0
        for raws in batches:
            await apply(store, 0, pendings(raws, first_offset=offset))
            offset += len(raws)
        return await query_kpis(store, width_s=3600, at_s=T0 + 7500)

    (group,) = run(scenario, redis_url)["groups"]
    assert group["backlog"]["total"] == 1  # B alone: A was dropped, U never existed
    assert group["resolution"]["count"] == 0  # the held solve applies to nothing
    meta = {k.decode(): v.decode() for k, v in redis_client.hgetall(base + "meta").items()}
    assert meta["expired"] == "1"
    assert meta["held"] == "1"  # A's late solve waits for a creation; U's open was orphaned
    assert meta["orphaned"] == "1"
