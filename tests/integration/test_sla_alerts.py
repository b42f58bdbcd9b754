"""SLA alerts against a real redis-server: ``sla.breached`` for every metric on a business
calendar, ``sla.at_risk`` once per fraction, ``sla.breach_retracted`` once, a ticket solved
before any reply breaching no first response, and the outbox across a failed publish."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from deskpulse.models.sla import Policy, Schedule
from deskpulse.streams import breaches
from deskpulse.streams.breaches import (
    add_retractions,
    adopt_published,
    check_breaches,
    check_partitions,
    published_marker,
)
from deskpulse.streams.core import SEP, CoreConfig, Pending, fold_batch, timelines_needed
from deskpulse.streams.store import Store
from tests.integration.test_store import T0, ev, meta_of, new_prefix, pendings, run

HOUR = 3600
OFFICE = CoreConfig(
    policies=(
        Policy(
            name="office",
            schedule="office",
            targets={
                "first_response": {"normal": HOUR},
                "next_response": {"normal": 2 * HOUR},
                "resolution": {"normal": 4 * HOUR},
            },
            warn_at=(0.5, 0.75),
        ),
    ),
    schedules={
        "office": Schedule(
            timezone="UTC",
            hours={day: ("09:00-17:00",) for day in ("mon", "tue", "wed", "thu", "fri")},
        )
    },
)
GROUP = SEP.join(("email", "billing", "normal")) + SEP
MON = T0  # Monday 2026-11-23 00:00 UTC


def at(hh: int, mm: int = 0) -> int:
    """Monday hh:mm UTC in ms."""
    return (MON + hh * HOUR + mm * 60) * 1000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def created(ticket: str, t_ms: int) -> bytes:
    return ev(
        "ticket.created",
        t_ms / 1000,
        ticket_id=ticket,
        channel="email",
        queue="billing",
        priority="normal",
    )


def reply(ticket: str, t_ms: int, role: str = "agent") -> bytes:
    return ev("ticket.replied", t_ms / 1000, ticket_id=ticket, author_role=role)


def status(ticket: str, t_ms: int, value: str) -> bytes:
    return ev("ticket.status_changed", t_ms / 1000, ticket_id=ticket, status=value)


class Desk:
    """A store on a fresh prefix, batches applied as the engine applies them, and checks
    publishing to a list (or failing, while ``down``)."""

    def __init__(self, client: Redis) -> None:
        self.prefix = new_prefix()
        self.store = Store(client, self.prefix, OFFICE)
        self.offset = 0
        self.published: list[dict[str, Any]] = []
        self.down = False

    async def apply(self, raws: Sequence[bytes]) -> None:
        items: list[Pending] = pendings(raws, first_offset=self.offset)
        self.offset += len(items)
        while True:
            meta, states = await self.store.load(0, [p.event.conversation_id for p in items])
            await self.store.load_timelines(0, states, timelines_needed(items, states))
            result = fold_batch(
                items,
                states,
                watermark_ms=meta.watermark_ms,
                applied_offsets=meta.offsets,
                config=OFFICE,
            )
            add_retractions(result, OFFICE, self.prefix)
            if await self.store.commit(0, meta.version, result):
                return

    async def publish(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if self.down:
            raise ConnectionError("the broker does not answer")
        for key, body in items:
            assert key == body["ticket_id"]
            self.published.append(body)

    async def check(self, clock_ms: int) -> list[dict[str, Any]]:
        """The alerts one check publishes."""
        before = len(self.published)
        await check_breaches(self.store, 0, clock_ms, self.publish)
        return self.published[before:]

    async def totals(self) -> dict[str, int]:
        return {k: int(v) for k, v in (await self.store.read_totals()).items() if v}


def kinds(found: list[dict[str, Any]]) -> list[tuple[str, str, int, Any]]:
    return sorted((b["type"], b["metric"], b["instance"], b.get("fraction")) for b in found)


def test_every_metric_breaches_once_on_a_business_calendar(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client)
        await desk.store.check_config()
        # created Monday 08:00, before the 09:00 opening; first response due 10:00,
        # resolution (4 business hours) 13:00; a late agent reply at 11:00; a customer
        # reply at 11:30 starts next response 1, due 13:30, never answered
        await desk.apply(
            [
                created("A", at(8)),
                reply("A", at(11)),
                reply("A", at(11, 30), "customer"),
            ]
        )
        meta_before = meta_of(redis_client, desk.prefix)
        found = await desk.check(at(14))
        assert kinds(found) == sorted(
            [
                ("sla.breached", "first_response", 1, None),
                ("sla.breached", "next_response", 1, None),
                ("sla.breached", "resolution", 1, None),
                *(
                    ("sla.at_risk", metric, 1, fraction)
                    for metric in ("first_response", "next_response", "resolution")
                    for fraction in (0.5, 0.75)
                ),
            ]
        )
        breaches = {b["metric"]: b for b in found if b["type"] == "sla.breached"}
        assert breaches["first_response"] == {
            "type": "sla.breached",
            "event_id": str(
                uuid.uuid5(uuid.UUID("6f1c2f0e-5d8e-4b7e-9d0a-1e6c5f3a7b21"), f"{desk.prefix}/A")
            ),
            "ticket_id": "A",
            "metric": "first_response",
            "instance": 1,
            "policy": "office",
            "priority": "normal",
            "channel": "email",
            "queue": "billing",
            "target_seconds": HOUR,
            "started_at": iso(at(8)),
            "created_at": iso(at(8)),
            "breached_at": iso(at(10)),
        }
        assert breaches["next_response"]["started_at"] == iso(at(11, 30))
        assert breaches["next_response"]["breached_at"] == iso(at(13, 30))
        assert breaches["resolution"]["breached_at"] == iso(at(13))
        warning = next(
            b for b in found if b["type"] == "sla.at_risk" and b["metric"] == "resolution"
        )
        if warning["fraction"] == 0.75:
            warning = next(
                b
                for b in found
                if b["type"] == "sla.at_risk"
                and b["metric"] == "resolution"
                and b["fraction"] == 0.5
            )
        assert warning["remaining_seconds"] == 2 * HOUR
        assert warning["due_at"] == iso(at(13))
        assert len({b["event_id"] for b in found}) == len(found)
        # counted once, at the breach instants, in the same commit as the claims
        totals = await desk.totals()
        for name in ("sb_fr", "sb_nr", "sb_rs", "sla", "sla_nr", "sla_rs"):
            assert totals[GROUP + name] == 1, (name, totals)
        # the check moved no fence, no watermark and applied no event
        meta_after = meta_of(redis_client, desk.prefix)
        for field in ("wm", "off:tickets", "applied"):
            assert meta_after.get(field) == meta_before.get(field), field
        assert not any(k.startswith("wm:\x1f") for k in meta_after)
        # never again: later checks publish nothing, the outbox is empty, nothing is due
        assert await desk.check(at(16)) == []
        assert await desk.check(at(40)) == []
        assert await desk.store.breach_outbox(0) == {}
        assert await desk.store.due_tickets(0, at(1000), limit=10) == []
        assert await desk.totals() == totals

    run(scenario, redis_url)


def test_at_risk_once_per_fraction_then_the_breach(redis_url: str) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client)
        await desk.store.check_config()
        await desk.apply([created("B", at(8))])
        # first response: 0.5 at 09:30, 0.75 at 09:45, due 10:00; resolution 0.5 at 11:00
        assert await desk.check(at(9, 29)) == []
        assert kinds(await desk.check(at(9, 35))) == [("sla.at_risk", "first_response", 1, 0.5)]
        assert await desk.check(at(9, 40)) == []
        assert await desk.store.due_tickets(0, at(9, 45), limit=10) == ["t:B"]
        assert await desk.store.due_tickets(0, at(9, 44), limit=10) == []
        assert kinds(await desk.check(at(9, 50))) == [("sla.at_risk", "first_response", 1, 0.75)]
        assert kinds(await desk.check(at(10, 5))) == [("sla.breached", "first_response", 1, None)]
        assert kinds(await desk.check(at(11, 5))) == [("sla.at_risk", "resolution", 1, 0.5)]
        assert await desk.check(at(11, 10)) == []
        assert len(desk.published) == 4

    run(scenario, redis_url)


def test_a_reply_in_time_arriving_after_the_claim_retracts_the_breach(redis_url: str) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client)
        await desk.store.check_config()
        await desk.apply([created("C", at(8))])
        found = await desk.check(at(10, 5))
        assert ("sla.breached", "first_response", 1, None) in kinds(found)
        assert (await desk.totals())[GROUP + "sb_fr"] == 1
        # the agent had replied at 09:50: the event arrives after the claim
        await desk.apply([reply("C", at(9, 50))])
        totals = await desk.totals()
        assert totals.get(GROUP + "sb_fr", 0) == 0  # the KPI no longer counts it
        assert totals[GROUP + "sa_fr"] == 1
        assert totals[GROUP + "sla"] == 1  # the published breach stays counted
        retracted = await desk.check(at(10, 10))
        assert kinds(retracted) == [("sla.breach_retracted", "first_response", 1, None)]
        assert retracted[0]["breached_at"] == iso(at(10))
        # later events and checks retract nothing more
        await desk.apply([reply("C", at(10, 30), "customer"), reply("C", at(9, 55))])
        assert await desk.check(at(10, 40)) == []
        assert await desk.check(at(10, 45)) == []
        assert sum(b["type"] == "sla.breach_retracted" for b in desk.published) == 1

    run(scenario, redis_url)


def test_a_ticket_solved_before_any_reply_never_breaches_first_response(
    redis_url: str,
) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client)
        await desk.store.check_config()
        # solved at 09:20, before the first warning (09:30): nothing to say at all
        await desk.apply([created("D", at(8)), status("D", at(9, 20), "solved")])
        assert await desk.check(at(16)) == []
        assert await desk.check(at(40)) == []
        assert not any(k.endswith("sb_fr") for k in await desk.totals())

    run(scenario, redis_url)


def test_a_failed_publish_is_sent_again_with_the_same_ids_and_counted_once(
    redis_url: str,
) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client)
        await desk.store.check_config()
        await desk.apply([created("E", at(8))])
        desk.down = True
        try:
            await desk.check(at(10, 5))
        except ConnectionError:
            pass
        else:
            raise AssertionError("the publish should have failed")
        parked = await desk.store.breach_outbox(0)
        assert len(parked) == 3  # two warnings and the breach, claimed and counted
        assert (await desk.totals())[GROUP + "sla"] == 1
        desk.down = False
        found = await desk.check(at(10, 6))
        assert sorted(b["event_id"] for b in found) == sorted(parked)
        assert [b["type"] for b in found] == ["sla.at_risk", "sla.at_risk", "sla.breached"]
        assert await desk.check(at(10, 7)) == []
        assert (await desk.totals())[GROUP + "sla"] == 1

    run(scenario, redis_url)


def markers_of(published: Sequence[dict[str, Any]]) -> dict[str, set[str]]:
    """What a replay reads back from the alerts topic: claim markers per conversation."""
    found: dict[str, set[str]] = {}
    for body in published:
        marker = published_marker(body)
        assert marker is not None, body
        found.setdefault("t:" + marker[0], set()).add(marker[1])
    return found


def test_alerts_published_from_another_state_are_adopted_not_published_again(
    redis_url: str,
) -> None:
    """A state rebuilt under a new prefix adopts what the old one published: no check
    publishes it again, the breach counts (KPI and counter), and a late reply still
    retracts it, once."""

    async def scenario(client: Redis) -> None:
        old, new = Desk(client), Desk(client)
        for desk in (old, new):
            await desk.store.check_config()
            await desk.apply([created("F", at(8)), created("G", at(8))])
        published = await old.check(at(10, 5))
        assert len(published) == 6  # two warnings and a breach each
        markers = markers_of(published)
        markers["t:H"] = {"fr:1"}  # a ticket the new state does not hold: passed over
        assert await adopt_published(new.store, 0, markers) == 6
        assert await adopt_published(new.store, 0, markers) == 0  # held now
        assert await new.check(at(10, 5)) == []
        assert await new.check(at(10, 30)) == []
        totals = await new.totals()
        assert totals[GROUP + "sla"] == 2 and totals[GROUP + "sb_fr"] == 2, totals
        # F's agent had replied at 09:50: the breach the old state published is retracted
        await new.apply([reply("F", at(9, 50))])
        retracted = await new.check(at(10, 40))
        assert [(b["type"], b["ticket_id"]) for b in retracted] == [("sla.breach_retracted", "F")]
        assert await new.check(at(10, 45)) == []

    run(scenario, redis_url)


def test_an_adopted_breach_the_state_shows_in_time_is_retracted(redis_url: str) -> None:
    """The old state published a breach and its retraction was lost with it (parked, never
    sent): the rebuilt state, which has the in-time reply, retracts it on adoption."""

    async def scenario(client: Redis) -> None:
        old, new = Desk(client), Desk(client)
        await old.store.check_config()
        await old.apply([created("K", at(8))])
        published = await old.check(at(10, 5))
        await new.store.check_config()
        await new.apply([created("K", at(8)), reply("K", at(9, 50))])
        assert await adopt_published(new.store, 0, markers_of(published)) == 3
        found = await new.check(at(10, 10))
        assert kinds(found) == [("sla.breach_retracted", "first_response", 1, None)]
        assert found[0]["breached_at"] == iso(at(10))
        assert await new.check(at(10, 20)) == []
        totals = await new.totals()
        assert totals[GROUP + "sla"] == 1 and totals.get(GROUP + "sb_fr", 0) == 0, totals

    run(scenario, redis_url)


def test_a_pass_claims_in_chunks_and_a_waiting_batch_goes_between_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More tickets due than one claim takes: the pass claims them all, a chunk at a time
    under the partition's lock, and a batch that waits for that lock meanwhile is applied
    between two chunks, not after the whole pass."""
    monkeypatch.setattr(breaches, "CLAIM_CHUNK", 4)
    tickets = [f"T{i:02d}" for i in range(10)]

    async def scenario(client: Redis) -> None:
        desk = Desk(client)
        await desk.store.check_config()
        await desk.apply([created(t, at(9)) for t in tickets])
        lock = asyncio.Lock()
        order: list[str] = []

        @contextlib.asynccontextmanager
        async def lock_of(partition: int) -> AsyncIterator[None]:
            assert partition == 0
            async with lock:
                order.append("check")
                yield

        async def batch() -> None:
            await asyncio.sleep(0)  # once the pass holds the lock
            async with lock:
                order.append("batch")
                await desk.apply([reply("T09", at(9, 30))])

        # first response due at 10:00 for all ten; by 10:00 T09 was answered (09:30)
        claimed, _ = await asyncio.gather(
            check_partitions(desk.store, [(0, at(10))], desk.publish, lock_of), batch()
        )
        assert order[0] == "check" and "batch" in order[1:3]  # after the first chunk
        assert order.count("check") == 3  # 4 + 4 + 1 looked at (T09 answered by then)
        breached = {b["ticket_id"] for b in desk.published if b["type"] == "sla.breached"}
        assert breached == set(tickets[:9])
        assert claimed == len([b for b in desk.published if b["type"] == "sla.breached"])
        assert await desk.store.due_tickets(0, at(10), limit=100) == []

    run(scenario, redis_url)
