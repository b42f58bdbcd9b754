"""Tickets that move between queues and priorities (``ticket.updated``) through a real Redis:
``query_kpis`` by queue, by priority and without grouping equals the brute-force oracles
at past and present instants, the backlog's oldest open ticket included, with the moves
arriving late and in any batching."""

from __future__ import annotations

import random
from typing import Any

import redis
from redis.asyncio import Redis

from deskpulse.streams.core import CoreConfig
from deskpulse.streams.query import query_kpis
from deskpulse.streams.store import Store
from tests.integration.test_store import T0, apply, ev, new_prefix, pendings, run
from tests.lifecycle_oracle import evaluate as evaluate_lifecycles
from tests.lifecycle_oracle import lifecycle_document, merge_documents
from tests.oracle import compare
from tests.presence_oracle import with_agents
from tests.sla_oracle import evaluate_tickets, kpi_document
from tests.unit.test_moves import POLICIES, RULES, SCHEDULES

CONFIG = CoreConfig(
    bucket_seconds=60,
    rollup_seconds=600,
    retention_seconds=48 * 3600,
    policies=POLICIES,
    schedules=SCHEDULES,
)
WIDTH_S = 6 * 3600


def created(ticket: str, t_s: float, **dims: str) -> bytes:
    return ev("ticket.created", t_s, ticket_id=ticket, channel="email", **dims)


def update(ticket: str, t_s: float, **dims: str) -> bytes:
    return ev("ticket.updated", t_s, ticket_id=ticket, **dims)


def reply(ticket: str, t_s: float, role: str = "agent") -> bytes:
    return ev("ticket.replied", t_s, ticket_id=ticket, author_role=role)


def status(ticket: str, t_s: float, value: str) -> bytes:
    return ev("ticket.status_changed", t_s, ticket_id=ticket, status=value)


# M: created in general (normal) at +0; its first agent reply at +1200; moved to billing at
# +600 and escalated to urgent in sales at +2400; the customer writes at +3000 and is
# answered at +3300; solved at +4000. Both moves arrive after the reply they re-attribute.
MOVED = [
    created("M", T0, queue="general", priority="normal"),
    reply("M", T0 + 1200),
    reply("M", T0 + 3000, "customer"),
    reply("M", T0 + 3300),
    status("M", T0 + 4000, "solved"),
    update("M", T0 + 600, queue="billing"),
    update("M", T0 + 2400, queue="sales", priority="urgent"),
]
# O: created in billing at +100, never answered, moved to general at +1800: the oldest
# open ticket of billing before the move, of general after
OPEN = [
    created("O", T0 + 100, queue="billing", priority="high"),
    update("O", T0 + 1800, queue="general"),
]


def generated(seed: int, tickets: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for n in range(tickets):
        tid = f"G{n}"
        start = T0 + rng.randrange(0, 4 * 3600)
        out.append(
            created(
                tid,
                start,
                queue=rng.choice(["general", "billing"]),
                priority=rng.choice(["low", "normal", "high", "urgent"]),
            )
        )
        for _ in range(rng.randrange(0, 7)):
            t = start + rng.randrange(-300, 5 * 3600)
            kind = rng.randrange(4)
            if kind == 0:
                value = rng.choice(["open", "pending", "hold", "solved", "solved", "closed"])
                out.append(status(tid, t, value))
            elif kind == 1:
                dims = rng.choice(
                    [
                        {"queue": rng.choice(["general", "billing", "sales"])},
                        {"priority": rng.choice(["low", "normal", "high", "urgent"])},
                        {"queue": "sales", "priority": "urgent", "channel": "phone"},
                    ]
                )
                out.append(update(tid, t, **dims))
            else:
                out.append(reply(tid, t, rng.choice(["agent", "customer"])))
    return out


def load(raws: list[bytes], redis_url: str, *, batch: int, seed: int) -> str:
    prefix = new_prefix()
    shuffled = list(raws)
    random.Random(seed).shuffle(shuffled)

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        for first in range(0, len(shuffled), batch):
            items = pendings(shuffled[first : first + batch], first_offset=first)
            await apply(store, 0, items)

    run(scenario, redis_url)
    return prefix


def kpis(redis_url: str, prefix: str, at_s: int, by: tuple[str, ...]) -> dict[str, Any]:
    async def read(client: Redis) -> dict[str, Any]:
        return await query_kpis(Store(client, prefix, CONFIG), width_s=WIDTH_S, at_s=at_s, by=by)

    return run(read, redis_url)


def expected(values: list[bytes], at_s: int, by: tuple[str, ...]) -> dict[str, Any]:
    base = kpi_document(
        evaluate_tickets(values, RULES),
        values,
        at_s=at_s,
        width_s=WIDTH_S,
        by=by,
        claimed_until_s=None,  # no breach detection ran: no breach is claimed
    )
    life = lifecycle_document(evaluate_lifecycles(values, RULES), at_s=at_s, width_s=WIDTH_S, by=by)
    return with_agents(merge_documents(base, life), values, at_s=at_s, width_s=WIDTH_S)


INSTANTS = (T0 + 540, T0 + 1260, T0 + 1860, T0 + 2460, T0 + 3600, T0 + 7200, T0 + 10 * 3600)


def test_a_ticket_moved_twice_late_reads_as_the_oracle(
    redis_url: str, redis_client: redis.Redis
) -> None:
    values = MOVED + OPEN
    # the moves come last, each in a batch of its own after the replies
    prefix = load(values, redis_url, batch=1, seed=0)
    late = new_prefix()

    async def in_order(client: Redis) -> None:
        store = Store(client, late, CONFIG)
        for offset, raw in enumerate(values):
            await apply(store, 0, pendings([raw], first_offset=offset))

    run(in_order, redis_url)
    for at_s in INSTANTS:
        for by in ((), ("queue",), ("priority",)):
            want = expected(values, at_s, by)
            for name in (prefix, late):
                assert compare(kpis(redis_url, name, at_s, by), want) == [], (at_s, by, name)
    # by hand: the first response went to billing (moved there before the reply), the next
    # response and the resolution to sales; O is billing's oldest until +1800
    by_queue = {
        g["key"]["queue"]: g for g in kpis(redis_url, late, T0 + 7200, ("queue",))["groups"]
    }
    assert by_queue["billing"]["first_response"]["count"] == 1
    assert by_queue["sales"]["next_response"]["count"] == 1
    assert by_queue["sales"]["resolution"]["count"] == 1
    assert by_queue["general"]["tickets_created"] == 1
    at_1260 = {g["key"]["queue"]: g for g in kpis(redis_url, late, T0 + 1260, ("queue",))["groups"]}
    assert at_1260["billing"]["backlog"]["oldest_age_seconds"] == 1260.0  # M since T0
    at_1860 = {g["key"]["queue"]: g for g in kpis(redis_url, late, T0 + 1860, ("queue",))["groups"]}
    assert at_1860["general"]["backlog"]["oldest_age_seconds"] == 1760.0  # O, moved in
    assert at_1860["billing"]["backlog"]["total"] == 1  # M alone


def test_moving_tickets_in_any_batching_read_as_the_oracle(
    redis_url: str, redis_client: redis.Redis
) -> None:
    values = MOVED + OPEN + generated(seed=7, tickets=40)
    for batch, seed in ((1, 1), (7, 2), (len(values), 3)):
        prefix = load(values, redis_url, batch=batch, seed=seed)
        for at_s in (T0 + 1860, T0 + 3 * 3600 + 60, T0 + 5 * 3600, T0 + 12 * 3600):
            for by in ((), ("queue",), ("priority",), ("channel", "queue", "priority")):
                got = kpis(redis_url, prefix, at_s, by)
                assert compare(got, expected(values, at_s, by)) == [], (batch, at_s, by)


def test_a_moved_ticket_dropped_at_its_maximum_age_leaves_the_backlog_of_its_group_now(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from tests.integration.test_store import meta_of

    prefix = new_prefix()
    base = f"{prefix}:{{p0}}:"
    config = CoreConfig(
        bucket_seconds=60,
        rollup_seconds=600,
        retention_seconds=3600,
        open_ticket_max_age_s=3 * 3600,
    )
    billing, sales = "email\x1fbilling\x1fnormal", "email\x1fsales\x1fhigh"
    first = pendings(
        [
            created("A", T0, queue="billing", priority="normal"),
            status("A", T0 + 60, "pending"),
            update("A", T0 + 600, queue="sales", priority="high"),
        ]
    )

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, config)
        await apply(store, 0, first)
        assert redis_client.zrange(base + "lo:" + sales, 0, -1) == [b"t:A"]
        assert redis_client.zcard(base + "lo:" + billing) == 0
        # its stretch in billing: left at the move, out of the backlog before nothing
        assert redis_client.zscore(base + "lx", "t:A\x1e0") == (T0 + 600) * 1000
        # in sales from the move on: out of its backlog before
        info = redis_client.hget(base + "li", "t:A").decode()
        assert info == f"{T0 * 1000}\x1f{sales}\x1f{T0 * 1000},{(T0 + 600) * 1000}"
        # the maximum age passes (a new ticket moves the clock on)
        await apply(store, 0, pendings([created("N", T0 + 3 * 3600 + 120)], first_offset=3))

    run(scenario, redis_url)
    assert meta_of(redis_client, prefix)["expired"] == "1"
    assert redis_client.zcard(base + "lo:" + sales) == 0
    assert redis_client.zscore(base + "lx", "t:A") == (T0 + 3 * 3600) * 1000
    # its live info keeps the stretch before it came into sales
    info = redis_client.hget(base + "li", "t:A").decode()
    assert info == f"{T0 * 1000}\x1f{sales}\x1f{T0 * 1000},{(T0 + 600) * 1000}"
    assert not redis_client.hexists(base + "lvl", sales + "\x1fbl:p")
    assert not redis_client.hexists(base + "lvl", billing + "\x1fbl:p")
    # the billing stretch left the index with the retention
    assert redis_client.zscore(base + "lx", "t:A\x1e0") is None
