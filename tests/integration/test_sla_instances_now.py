"""SLA instances now against a real redis-server: the engine applies crafted tickets, breach
checks claim their warnings and breaches, and a scrape reads ``deskpulse_sla_running`` and
``deskpulse_sla_at_risk`` after every step (README.md, "Prometheus metrics")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from redis.asyncio import Redis

from deskpulse.exporters.prometheus import KpiCollector, PipelineMetrics
from deskpulse.models.settings import Settings
from deskpulse.streams.breaches import check_breaches
from deskpulse.streams.core import AT_RISK_FIELDS, RUNNING_FIELDS, CoreConfig
from deskpulse.streams.engine import Engine, SourceRecord
from deskpulse.streams.store import Store
from tests.conftest import RedisServer
from tests.integration.test_prometheus import DeadLetters

HOUR = 3600
MON = 1_795_392_000  # Monday 2026-11-23 00:00 UTC
METRICS = ("first_response", "next_response", "resolution")
#: office hours on weekdays; normal priority: first response 1 h, next response 2 h,
#: resolution 4 h (paused while pending), warnings at half and three quarters of a target
POLICY = {
    "name": "office",
    "schedule": "office",
    "targets": {
        "first_response": {"normal": HOUR},
        "next_response": {"normal": 2 * HOUR},
        "resolution": {"normal": 4 * HOUR},
    },
    "warn_at": [0.5, 0.75],
}
OFFICE = {
    "timezone": "UTC",
    "hours": {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
}


def at(hh: int, mm: int = 0) -> int:
    """Monday hh:mm UTC in ms."""
    return (MON + hh * HOUR + mm * 60) * 1000


def event(type_: str, t_ms: int, **fields: Any) -> bytes:
    stamp = datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")
    body = {"event_id": uuid.uuid4().hex, "type": type_, "occurred_at": stamp, **fields}
    return orjson.dumps(body)


def created(ticket: str, t_ms: int) -> bytes:
    return event(
        "ticket.created",
        t_ms,
        ticket_id=ticket,
        channel="email",
        queue="billing",
        priority="normal",
    )


def reply(ticket: str, t_ms: int, role: str = "agent") -> bytes:
    return event("ticket.replied", t_ms, ticket_id=ticket, author_role=role)


def status(ticket: str, t_ms: int, value: str) -> bytes:
    return event("ticket.status_changed", t_ms, ticket_id=ticket, status=value)


class Desk:
    """The worker's parts on one partition: the engine applies records, breach checks
    publish to a list, and the collector refreshes from the same Redis."""

    def __init__(self, client: Redis, redis_server: RedisServer, **update: Any) -> None:
        self.settings = Settings(
            redis_url=SecretStr(redis_server.url),
            redis_prefix=f"n{uuid.uuid4().hex[:10]}",
            topic_partitions=1,
            windows=(300,),
            schedules={"office": OFFICE},
            sla_policies=[POLICY],
            **update,
        )
        self.store = Store(
            client, self.settings.redis_prefix, CoreConfig.from_settings(self.settings)
        )
        # records are dated Monday: the engine's "now" must not find them in the future
        self.engine = Engine(
            self.settings,
            self.store,
            DeadLetters(),
            PipelineMetrics(CollectorRegistry()),
            clock=lambda: MON + 7 * 24 * HOUR,
        )
        self.collector = KpiCollector(self.store, self.settings)
        self.offsets: dict[str, int] = {}
        self.published: list[dict[str, Any]] = []

    async def apply(self, topic_kind: str, values: Sequence[bytes]) -> None:
        topic = self.settings.topic_for(topic_kind)
        records = []
        for value in values:
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            key = orjson.loads(value).get("ticket_id", "").encode()
            records.append(SourceRecord(topic, 0, offset, key, value))
        await self.engine.process(records)

    async def tickets(self, *values: bytes) -> None:
        await self.apply("tickets", values)

    async def publish(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.published.extend(body for _, body in items)

    async def check(self, clock_ms: int) -> list[tuple[str, str]]:
        """One breach check at ``clock_ms``: what it published, ``(type, metric)``."""
        before = len(self.published)
        await check_breaches(self.store, 0, clock_ms, self.publish)
        return sorted((b["type"], b["metric"]) for b in self.published[before:])

    async def scrape(self) -> dict[str, tuple[float | None, float | None]]:
        """Per SLA metric, (running, at risk) as a refreshed collector exports them."""
        await self.collector.refresh(at(18) / 1000)
        registry = CollectorRegistry()
        registry.register(self.collector)
        return {
            metric: (
                registry.get_sample_value("deskpulse_sla_running", {"metric": metric}),
                registry.get_sample_value("deskpulse_sla_at_risk", {"metric": metric}),
            )
            for metric in METRICS
        }


def now(first: tuple[int, int], nxt: tuple[int, int], resolution: tuple[int, int]) -> dict:
    """The expected gauges: (running, at risk) for each SLA metric."""
    return {
        metric: (float(running), float(at_risk))
        for metric, (running, at_risk) in zip(METRICS, (first, nxt, resolution), strict=True)
    }


def run(redis_server: RedisServer, scenario: Any) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_instances_run_turn_at_risk_and_leave_on_breach_fulfilment_and_solve(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client, redis_server)
        await desk.store.check_config()
        assert await desk.scrape() == now((0, 0), (0, 0), (0, 0))
        await desk.tickets(
            # A: first response due 10:00 (warnings 09:30, 09:45), resolution 13:00; its
            # customer's chaser before any agent reply starts no next response
            created("A", at(9)),
            reply("A", at(9, 15), "customer"),
            # B: answered 09:10; its customer's reply at 09:20 starts next response 1, due
            # 11:20 (warnings 10:20, 10:50); resolution 13:00
            created("B", at(9)),
            reply("B", at(9, 10)),
            reply("B", at(9, 20), "customer"),
            # C: solved before any reply: its first response is cancelled, nothing runs
            created("C", at(9)),
            status("C", at(9, 5), "solved"),
        )
        assert await desk.scrape() == now((1, 0), (1, 0), (2, 0))

        # A's first response passes half its target: at risk, with its sla.at_risk
        assert await desk.check(at(9, 35)) == [("sla.at_risk", "first_response")]
        assert await desk.scrape() == now((1, 1), (1, 0), (2, 0))
        # ... and its deadline: breached, no longer running (nor at risk)
        assert await desk.check(at(10)) == [
            ("sla.at_risk", "first_response"),
            ("sla.breached", "first_response"),
        ]
        assert await desk.scrape() == now((0, 0), (1, 0), (2, 0))

        # B's next response at risk, then fulfilled by the agent's reply
        assert await desk.check(at(10, 25)) == [("sla.at_risk", "next_response")]
        assert await desk.scrape() == now((0, 0), (1, 1), (2, 0))
        await desk.tickets(reply("B", at(10, 30)))
        assert await desk.scrape() == now((0, 0), (0, 0), (2, 0))

        # both resolutions at risk at 11:00; A solved at 11:10 leaves B's
        assert await desk.check(at(11, 5)) == [("sla.at_risk", "resolution")] * 2
        assert await desk.scrape() == now((0, 0), (0, 0), (2, 2))
        await desk.tickets(status("A", at(11, 10), "solved"))
        assert await desk.scrape() == now((0, 0), (0, 0), (1, 1))

        # B's resolution breaches at 13:00: nothing runs any more
        assert await desk.check(at(13)) == [
            ("sla.at_risk", "resolution"),
            ("sla.breached", "resolution"),
        ]
        assert await desk.scrape() == now((0, 0), (0, 0), (0, 0))
        # a check with nothing to claim, and a repeat of a reply, move nothing
        assert await desk.check(at(16)) == []
        await desk.tickets(reply("B", at(10, 30)))
        assert await desk.scrape() == now((0, 0), (0, 0), (0, 0))

    run(redis_server, scenario)


def test_a_paused_resolution_keeps_running_and_a_new_next_response_counts_again(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario(client: Redis) -> None:
        desk = Desk(client, redis_server)
        await desk.store.check_config()
        await desk.tickets(
            created("P", at(9)),
            reply("P", at(9, 5)),
            status("P", at(9, 6), "pending"),
        )
        # pending pauses the resolution clock for good: running, never at risk nor breached
        assert await desk.scrape() == now((0, 0), (0, 0), (1, 0))
        assert await desk.check(at(17)) == []
        assert await desk.scrape() == now((0, 0), (0, 0), (1, 0))
        # the customer answers: the ticket opens, a next response runs, the clock goes on
        await desk.tickets(reply("P", at(17, 30), "customer"), status("P", at(17, 30), "open"))
        assert await desk.scrape() == now((0, 0), (1, 0), (1, 0))
        await desk.tickets(reply("P", at(17, 40)))
        assert await desk.scrape() == now((0, 0), (0, 0), (1, 0))
        await desk.tickets(reply("P", at(17, 50), "customer"))
        assert await desk.scrape() == now((0, 0), (1, 0), (1, 0))

    run(redis_server, scenario)


def test_a_ticket_deleted_past_retention_leaves_the_counts(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: Redis) -> None:
        # open tickets are kept no longer than the retention here (their maximum age)
        desk = Desk(client, redis_server, retention=HOUR, open_ticket_max_age=HOUR)
        await desk.store.check_config()
        await desk.tickets(created("E", at(9)))
        await desk.apply(
            "chats",
            [event("chat.requested", at(9), chat_id="K", channel="chat", queue="billing")],
        )
        assert await desk.check(at(9, 35)) == [("sla.at_risk", "first_response")]
        assert await desk.scrape() == now((1, 1), (0, 0), (1, 0))
        # an hour and a half later another ticket comes: E (and the chat) had no event for
        # longer than the retention, E is older than its maximum age, and both are deleted
        # by that commit, their share with them (E leaves the backlog, counted as expired)
        await desk.tickets(created("F", at(10, 30)))
        base = f"{desk.settings.redis_prefix}:{{p0}}:"
        assert set(redis_client.hkeys(base + "conv")) == {b"t:F"}
        assert await desk.scrape() == now((1, 0), (0, 0), (1, 0))
        meta = redis_client.hgetall(base + "meta")
        assert meta[b"expired"] == b"1"
        for metric in METRICS:
            assert int(meta.get(RUNNING_FIELDS[metric].encode(), 0)) >= 0
            assert int(meta.get(AT_RISK_FIELDS[metric].encode(), 0)) >= 0

    run(redis_server, scenario)
