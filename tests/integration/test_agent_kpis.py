"""KPIs grouped by agent through a real Redis, against the brute-force oracle
(tests/agent_oracle.py): a multi-day data set of the simulator's, with the agents' shifts,
hand-overs, replies and surveys naming no agent, delivered shuffled and with repeats,
read at several instants and widths; and the attribution rules one by one, with the event
that moves a sample arriving last.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis
from redis.asyncio import Redis

from deskpulse.models.errors import InvalidQuery
from deskpulse.streams import query
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.devtools.simulate import SimConfig, generate
from deskpulse.streams.query import parse_by, parse_query, parse_series, query_kpis
from deskpulse.streams.store import Store
from tests.agent_oracle import compute_by_agent
from tests.integration.test_store import T0, apply, created, ev, new_prefix, pendings, run
from tests.oracle import compare

HOUR = 3600
DAY = 24 * HOUR
#: retention past the whole data set: nothing arrives late, whatever the order
CONFIG = CoreConfig(bucket_seconds=60, rollup_seconds=600, retention_seconds=4 * DAY)


def _key(raw: bytes) -> str:
    fields = orjson.loads(raw)
    if fields.get("type") == "agent.status_changed":
        return "a:" + str(fields.get("agent_id"))
    return str(fields.get("ticket_id") or fields.get("chat_id"))


def load(redis_url: str, raws: Sequence[bytes], *, batch: int = 500, partitions: int = 2) -> str:
    """Fold ``raws`` in batches of about ``batch``, each conversation's (and each agent's)
    events on one of ``partitions`` as a producer keying by its id would put them."""
    prefix = new_prefix()

    async def scenario(client: Redis) -> None:
        store = Store(client, prefix, CONFIG)
        offsets = [0] * partitions
        for first in range(0, len(raws), batch):
            chunk = raws[first : first + batch]
            for partition in range(partitions):
                mine = [
                    raw for raw in chunk if zlib.crc32(_key(raw).encode()) % partitions == partition
                ]
                if mine:
                    items = pendings(mine, topic="tickets", first_offset=offsets[partition])
                    offsets[partition] += len(mine)
                    await apply(store, partition, items)

    run(scenario, redis_url)
    return prefix


def by_agent(redis_url: str, prefix: str, at_s: float, width_s: int) -> dict[str, Any]:
    async def read(client: Redis) -> dict[str, Any]:
        store = Store(client, prefix, CONFIG)
        return await query_kpis(store, width_s=width_s, at_s=at_s, by=["agent"])

    return run(read, redis_url)


def expected(raws: Sequence[bytes], at_s: float, width_s: int) -> dict[str, Any]:
    return compute_by_agent(raws, at_s=at_s, width_s=width_s, retention_s=CONFIG.retention_seconds)


@pytest.fixture(scope="module")
def simulated() -> list[bytes]:
    """Two and a half days of two queues (48 agents on three shifts), with presence."""
    config = SimConfig(
        seed=22,
        start_s=T0,
        duration_s=2.5 * DAY,
        rate=0.12,
        queues={"billing": 0.5, "technical": 0.5},
        presence=True,
        duplicate_ratio=0.02,
        out_of_order=0.05,
        orphan_ratio=0.0,
        malformed_ratio=0.0,
    )
    return [record.value for record in generate(config) if record.occurred_at_s is not None]


def to_seconds(raw: bytes) -> bytes:
    """The event with its time cut to the second, as producers that write whole seconds
    send it (replies, solves and surveys of a ticket then often share an instant)."""
    fields = orjson.loads(raw)
    stamp = fields["occurred_at"]
    if "." in stamp:
        head, _, tail = stamp.partition(".")
        fields["occurred_at"] = head + tail.lstrip("0123456789")
    return orjson.dumps(fields)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("precision", ["ms", "s"])
def test_by_agent_equals_the_oracle_shuffled_with_repeats(
    redis_url: str, redis_client: redis.Redis, simulated: list[bytes], precision: str
) -> None:
    if precision == "s":
        simulated = [to_seconds(raw) for raw in simulated]
    rng = random.Random(22)
    arrival = list(simulated)
    rng.shuffle(arrival)
    # repeats of some events, delivered again anywhere later
    for raw in rng.sample(simulated, len(simulated) // 30):
        arrival.insert(rng.randrange(len(arrival) + 1), raw)
    prefix = load(redis_url, arrival, batch=700)
    checked = 0
    for at_s, width_s in [
        (T0 + 9 * HOUR + 17, HOUR),
        (T0 + DAY + 15 * HOUR, 6 * HOUR),
        (T0 + 2 * DAY + 3 * HOUR + 30, DAY),
        (T0 + 2 * DAY + 12 * HOUR, 2 * DAY),
        (T0 + 2.5 * DAY + 2 * HOUR, HOUR),  # after the data: presence only
    ]:
        actual = by_agent(redis_url, prefix, at_s, width_s)
        oracle = expected(simulated, at_s, width_s)
        assert compare(actual, oracle) == [], (at_s, width_s)
        checked += sum(
            g["first_response"]["count"] + g["csat"]["responses"] for g in oracle["groups"]
        )
    # the data set exercises what it should: not an empty comparison
    assert checked > 500
    whole = expected(simulated, T0 + 2 * DAY + 12 * HOUR, 2 * DAY)["groups"]
    assert 40 <= len(whole) <= 48
    assert sum(g["tickets_solved"] for g in whole) > 100
    assert sum(g["next_response"]["count"] for g in whole) > 100
    assert sum(g["chats"]["answered"] for g in whole) > 100


def test_reads_at_sliding_ends_keep_what_holds_and_equal_fresh_reads(
    redis_url: str, simulated: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store reads windows ending a minute apart (forward, the same again, then back),
    as a board or a worker's refresh does: the settled sum is moved along by the buckets
    that left and entered, and split per agent once; every document equals a read by a
    new store (nothing kept) and, at three ends, the oracle's."""
    prefix = load(redis_url, simulated, batch=700)
    base = T0 + DAY + 15 * HOUR + 17
    ends = [base + 60 * k for k in range(14)] + [base + 60 * 13] + [base - 60 * k for k in (1, 2)]
    widths = (HOUR, 6 * HOUR, DAY)
    splits = []
    split = query._split_agents

    def counted(merged: Any) -> Any:
        splits.append(len(merged))
        return split(merged)

    monkeypatch.setattr(query, "_split_agents", counted)

    read_whole: list[int] = []

    async def kept_reads(client: Redis) -> list[dict[str, Any]]:
        store = Store(client, prefix, CONFIG)
        read_settled = store._read_settled

        async def counted_read(*args: Any) -> Any:
            read_whole.append(1)
            return await read_settled(*args)

        store._read_settled = counted_read  # type: ignore[method-assign]
        return [
            await query_kpis(store, width_s=width, at_s=at_s, by=["agent"])
            for at_s in ends
            for width in widths
        ]

    documents = run(kept_reads, redis_url)
    # each width's settled sum read whole once, then moved along, a window ending on a
    # roll-up boundary (all roll-ups) and a minute after it included; and split per agent
    # once, then moved along with it
    assert any(at_s % CONFIG.rollup_seconds < 60 for at_s in ends)
    assert len(read_whole) == len(widths)
    assert len(splits) == len(widths)
    monkeypatch.setattr(query, "_split_agents", split)
    fresh = [by_agent(redis_url, prefix, at_s, width) for at_s in ends for width in widths]
    assert len(documents) == len(fresh)
    for document, expected_document in zip(documents, fresh, strict=True):
        assert document == expected_document
    assert sum(len(d["groups"]) for d in documents) > 20 * len(documents)
    for index in (1, 9, len(documents) - 1):
        at_s, width = ends[index // len(widths)], widths[index % len(widths)]
        assert compare(documents[index], expected(simulated, at_s, width)) == []


# -- the rules, each with the event that decides it arriving last ---------------------------


def reply(ticket: str, t_s: float, agent: str | None, role: str = "agent") -> bytes:
    fields: dict[str, Any] = {"ticket_id": ticket, "author_role": role}
    if agent is not None:
        fields["agent_id"] = agent
    return ev("ticket.replied", t_s, **fields)


def status(ticket: str, t_s: float, value: str) -> bytes:
    return ev("ticket.status_changed", t_s, ticket_id=ticket, status=value)


def survey(ticket: str, t_s: float, score: int, agent: str | None = None) -> bytes:
    fields: dict[str, Any] = {"ticket_id": ticket, "kind": "csat", "score": score}
    if agent is not None:
        fields["agent_id"] = agent
    return ev("survey.responded", t_s, **fields)


def groups_of(redis_url: str, raws: list[bytes], at_s: float) -> dict[str, dict[str, Any]]:
    """Each order of ``raws`` (as given, reversed, one batch per event) read at ``at_s``
    over 2 h must be the oracle's; the groups by agent."""
    oracle = expected(raws, at_s, 2 * HOUR)
    for order, batch in [(raws, len(raws)), (raws[::-1], 1), (raws, 1)]:
        prefix = load(redis_url, order, batch=batch, partitions=1)
        assert compare(by_agent(redis_url, prefix, at_s, 2 * HOUR), oracle) == []
    return {g["key"]["agent"]: g for g in oracle["groups"]}


def test_a_late_reply_moves_the_survey_and_the_solve_to_its_agent(redis_url: str) -> None:
    raws = [
        created("T1", T0),
        reply("T1", T0 + 600, "A1"),
        reply("T1", T0 + 1200, None),  # names no agent: A1 stays the last who did
        status("T1", T0 + 1800, "solved"),
        survey("T1", T0 + 2400, 5),
        reply("T1", T0 + 1500, "B2"),  # late: B2 replied last before the solve and survey
    ]
    groups = groups_of(redis_url, raws, T0 + HOUR)
    assert groups["A1"]["first_response"]["count"] == 1
    assert groups["A1"]["tickets_solved"] == 0
    assert groups["B2"]["tickets_solved"] == 1
    assert groups["B2"]["csat"]["responses"] == 1
    assert groups["B2"]["first_response"]["count"] == 0


def test_a_late_earlier_reply_takes_the_first_response(redis_url: str) -> None:
    raws = [
        created("T1", T0),
        reply("T1", T0 + 900, "A1"),
        reply("T1", T0 + 1000, "customer-x", role="customer"),
        reply("T1", T0 + 1300, "A1"),
        reply("T1", T0 + 300, "B2"),  # late, earlier: B2's first response, A1's next
    ]
    groups = groups_of(redis_url, raws, T0 + HOUR)
    assert groups["B2"]["first_response"]["count"] == 1
    assert groups["B2"]["first_response"]["mean_seconds"] == 300.0
    assert groups["A1"]["first_response"]["count"] == 0
    assert groups["A1"]["next_response"]["count"] == 1
    assert groups["A1"]["next_response"]["mean_seconds"] == 300.0


def test_a_survey_naming_its_agent_counts_for_it_and_a_reopen_takes_the_solve_back(
    redis_url: str,
) -> None:
    raws = [
        created("T1", T0),
        reply("T1", T0 + 600, "A1"),
        status("T1", T0 + 700, "solved"),
        survey("T1", T0 + 800, 2, agent="C3"),
        status("T1", T0 + 900, "open"),  # a reopen: no final solve any more
    ]
    groups = groups_of(redis_url, raws, T0 + HOUR)
    assert groups["C3"]["csat"] == {"responses": 1, "satisfied": 0, "ratio": 0.0, "average": 2.0}
    assert groups["A1"]["tickets_solved"] == 0
    assert groups["A1"]["csat"]["responses"] == 0


def test_chats_by_the_accepting_agent_an_earlier_accept_arriving_late(redis_url: str) -> None:
    raws = [
        ev("chat.requested", T0, chat_id="C1", channel="chat", queue="q", priority="normal"),
        ev("chat.accepted", T0 + 30, chat_id="C1", agent_id="A1"),
        ev("chat.ended", T0 + 630, chat_id="C1", ended_by="agent"),
        ev("survey.responded", T0 + 700, chat_id="C1", kind="csat", score=4),
        ev("chat.accepted", T0 + 20, chat_id="C1", agent_id="B2"),  # late, earlier: B2's
    ]
    groups = groups_of(redis_url, raws, T0 + HOUR)
    assert groups["B2"]["chats"]["answered"] == 1
    assert groups["B2"]["chats"]["handle_mean_seconds"] == 610.0
    assert groups["B2"]["csat"]["responses"] == 1
    assert "A1" not in groups


def named(ticket: str, t_s: float, agent: str | None, event_id: str) -> bytes:
    fields: dict[str, Any] = {"ticket_id": ticket, "author_role": "agent", "event_id": event_id}
    if agent is not None:
        fields["agent_id"] = agent
    return ev("ticket.replied", t_s, **fields)


def test_replies_in_one_millisecond_give_a_response_to_the_smallest_named_id(
    redis_url: str,
) -> None:
    raws = [
        created("T1", T0),
        named("T1", T0 + 600, None, "r-1"),  # the first response, naming no agent
        named("T1", T0 + 600, "B2", "r-2"),  # the same millisecond: B2's, once it is there
        reply("T1", T0 + 700, "customer-x", role="customer"),
        named("T1", T0 + 900, None, "r-3"),  # a next response, naming no agent ...
        named("T1", T0 + 900, "C3", "r-5"),  # ... but C3's, of the named at that instant
        named("T1", T0 + 900, "D4", "r-4"),  # (the smallest id among them: D4's)
    ]
    groups = groups_of(redis_url, raws, T0 + HOUR)
    assert groups["B2"]["first_response"]["count"] == 1
    assert groups["D4"]["next_response"]["count"] == 1
    assert "C3" not in groups
    # and the first response moved away by an earlier reply arriving last
    moved = groups_of(redis_url, [*raws, named("T1", T0 + 300, "A1", "r-0")], T0 + HOUR)
    assert moved["A1"]["first_response"]["count"] == 1
    assert "B2" not in moved  # nothing left of it


def test_events_without_agents_make_no_group(redis_url: str) -> None:
    raws = [created("T1", T0), reply("T1", T0 + 60, None), status("T1", T0 + 120, "solved")]
    prefix = load(redis_url, raws, partitions=1)
    document = by_agent(redis_url, prefix, T0 + HOUR, HOUR)
    assert document["by"] == ["agent"]
    assert document["groups"] == []


def test_agent_cannot_be_combined_with_other_dimensions() -> None:
    assert parse_by("agent") == ["agent"]
    with pytest.raises(ValueError, match="agent cannot be combined"):
        parse_by("agent,queue")
    with pytest.raises(InvalidQuery) as raised:
        parse_query(
            "1h",
            None,
            "queue,agent",
            bucket_seconds=60,
            retention_s=DAY,
            max_future_s=0,
            now_s=T0,
        )
    assert raised.value.parameter == "by"
    with pytest.raises(InvalidQuery) as raised:
        parse_series(
            "1h",
            None,
            None,
            None,
            "agent",
            bucket_seconds=60,
            retention_s=DAY,
            max_future_s=0,
            now_s=T0,
        )
    assert raised.value.parameter == "by" and "ask /kpis" in raised.value.message
