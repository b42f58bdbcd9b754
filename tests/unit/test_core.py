"""The pure KPI core: folding, contributions, order independence (no services)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deskpulse.models.sla import Policy, Schedule
from deskpulse.models.wire import decode_record
from deskpulse.streams.core import (
    AT_RISK_FIELDS,
    AT_RISK_NOW,
    FIELDS,
    NOT_COUNTED,
    PLACES,
    RUNNING_FIELDS,
    SEP,
    BatchResult,
    Conversation,
    CoreConfig,
    Pending,
    SlaClaim,
    breach_deadline,
    contributions,
    document_at,
    fold_batch,
    group_document,
    instances_now,
    live_entry,
    restore,
    timelines_needed,
    walk_of,
)
from deskpulse.streams.query import build_document
from deskpulse.streams.sla import first_response_deadline_terms

T0 = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
CONFIG = CoreConfig()
#: every metric with a target, on a business calendar (open every day around the clock in
#: UTC, so business time is calendar time and the numbers stay simple)
SLA_CONFIG = CoreConfig(
    policies=(
        Policy(
            name="all",
            schedule="always",
            targets={
                "first_response": {"high": 3600, "normal": 3600},
                "next_response": {"high": 3600, "normal": 3600},
                "resolution": {"high": 4 * 3600, "normal": 4 * 3600},
            },
        ),
    ),
    schedules={
        "always": Schedule(
            timezone="UTC",
            hours={
                day: ("00:00-24:00",) for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
        )
    },
)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def ev(event_id: str, event_type: str, t: float, **fields: object) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": event_type, "occurred_at": at(t), **fields})


class MemoryState:
    """Applies batch results the way the Redis commit script does (for pure tests)."""

    def __init__(self, config: CoreConfig = CONFIG) -> None:
        self.config = config
        self.states: dict[str, Conversation] = {}
        #: the ids kept beside each state (what the store's ``ids:`` sorted sets hold)
        self.others: dict[str, dict[str, int]] = {}
        #: the timeline entries kept beside each ticket's state (the store's ``tl:<id>``)
        self.timelines: dict[str, dict[str, tuple[int, str]]] = {}
        #: how many times a batch needed a ticket's whole timeline
        self.restored = 0
        self.buckets: dict[tuple[str, int], Counter[str]] = {}
        self.totals: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.watermark_ms = 0
        self.offsets: dict[str, int] = {}

    def apply(self, records: list[tuple[str, int, bytes | SlaClaim]]) -> BatchResult:
        """Fold records (raw bytes, or a claim: unfenced, as the checker will deliver it)."""
        pending = []
        for topic, offset, raw in records:
            if isinstance(raw, SlaClaim):
                # dated within the retention of every test's events
                pending.append(
                    Pending(raw, topic, -1, int(T0.timestamp() * 1000), raw.conversation_id)
                )
            else:
                event, ms = decode_record(raw)
                pending.append(Pending(event, topic, offset, ms, event.conversation_id))
        states = {
            p.event.conversation_id: self.states.get(p.event.conversation_id) for p in pending
        }
        # the ids of the batch's conversations, as the store reads them with their states
        known: dict[str, set[str]] = {}
        for conv_id in states:
            ids, entries = self.others.get(conv_id), self.timelines.get(conv_id)
            if ids is not None or entries is not None:
                known[conv_id] = set(ids or ()) | set(entries or ())
        # a batch that does not only append to a walked ticket's timeline gets it whole
        for conv_id in timelines_needed(pending, states, known, self.config):
            state = states[conv_id]
            assert state is not None
            restore(state, self.timelines[conv_id])
            self.restored += 1
        result = fold_batch(
            pending,
            states,
            watermark_ms=self.watermark_ms,
            applied_offsets=self.offsets,
            config=self.config,
            known=known,
        )
        for conv_id, added in result.others.items():
            self.others.setdefault(conv_id, {}).update(added)
        for conv_id, entries in result.timelines.items():
            if not entries:  # a ticket that moved keeps its timeline whole in its state
                self.timelines.pop(conv_id, None)
                continue
            self.timelines.setdefault(conv_id, {}).update(entries)
        for key, fields in result.buckets.items():
            bucket = self.buckets.setdefault(key, Counter())
            for name, delta in fields.items():
                bucket[name] += delta
                if bucket[name] == 0:
                    del bucket[name]
        self.totals.update(result.totals)
        self.totals = Counter({k: v for k, v in self.totals.items() if v})
        self.counters.update(result.counters)
        self.states.update(result.states)
        self.offsets.update(result.offsets)
        self.watermark_ms = result.watermark_ms
        return result

    def fine(self) -> dict[tuple[str, int], Counter[str]]:
        return {k: v for k, v in self.buckets.items() if k[0] == "b" and v}

    def window(self, start_s: int, end_s: int) -> Counter[str]:
        merged: Counter[str] = Counter()
        for (level, bucket_s), fields in self.buckets.items():
            if level == "b" and start_s <= bucket_s < end_s:
                merged.update(fields)
        return merged

    def document(self, by: tuple[str, ...] = ()) -> dict[str, object]:
        start = int(T0.timestamp()) - 86400
        end = int(T0.timestamp()) + 86400
        return build_document(self.window(start, end), start_s=start, end_s=end, by=by)


def run(*events: bytes | SlaClaim, config: CoreConfig = CONFIG) -> MemoryState:
    memory = MemoryState(config)
    for offset, raw in enumerate(events):
        memory.apply([("t", offset, raw)])
    return memory


def total(memory: MemoryState) -> dict[str, object]:
    return memory.document()["groups"][0]  # type: ignore[index]


# --- first response -------------------------------------------------------------------

TICKET = ev("c1", "ticket.created", 0, ticket_id="T1", channel="email", priority="high")


def test_first_response_is_the_earliest_public_agent_reply_whatever_the_order() -> None:
    late_reply = ev("r2", "ticket.replied", 600, ticket_id="T1", author_role="agent")
    early_reply = ev("r1", "ticket.replied", 300, ticket_id="T1", author_role="agent")
    memory = run(TICKET, late_reply, early_reply)
    fr = total(memory)["first_response"]  # type: ignore[index]
    assert fr["count"] == 1
    assert fr["mean_seconds"] == 300.0
    # the 600 s sample was retracted from its bucket, not left behind
    assert all(v > 0 for fields in memory.fine().values() for v in fields.values())


@pytest.mark.parametrize(
    ("reply", "counted"),
    [
        # a private note is not a response
        (ev("r", "ticket.replied", 60, ticket_id="T1", author_role="agent", public=False), 0),
        # nor is the customer's own follow-up
        (ev("r", "ticket.replied", 60, ticket_id="T1", author_role="customer"), 0),
        # nor an automation
        (ev("r", "ticket.replied", 60, ticket_id="T1", author_role="system"), 0),
        (ev("r", "ticket.replied", 60, ticket_id="T1", author_role="agent"), 1),
    ],
)
def test_only_public_agent_replies_respond(reply: bytes, counted: int) -> None:
    assert total(run(TICKET, reply))["first_response"]["count"] == counted  # type: ignore[index]


def test_reply_before_its_ticket_is_held_then_applied() -> None:
    reply = ev("r1", "ticket.replied", 120, ticket_id="T1", author_role="agent")
    memory = run(reply)
    assert memory.counters["held"] == 1
    assert total(memory)["first_response"]["count"] == 0  # type: ignore[index]
    memory.apply([("t", 1, TICKET)])
    assert memory.counters["held"] == 0
    assert total(memory)["first_response"]["mean_seconds"] == 120.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("reply_after_s", "within"),
    [
        (14400, 1),  # exactly on the high-priority target: within
        (14401, 0),  # one second over: breached
    ],
)
def test_within_target_on_the_boundary(reply_after_s: int, within: int) -> None:
    reply = ev("r1", "ticket.replied", reply_after_s, ticket_id="T1", author_role="agent")
    fr = total(run(TICKET, reply))["first_response"]  # type: ignore[index]
    assert fr["within_target"] == within


def test_breach_deadline_follows_the_first_reply() -> None:
    memory = run(TICKET)
    state = memory.states["t:T1"]
    assert breach_deadline(state, CONFIG) == int(T0.timestamp() * 1000) + 14400_000
    memory.apply([("t", 9, ev("r", "ticket.replied", 100, ticket_id="T1", author_role="agent"))])
    assert breach_deadline(memory.states["t:T1"], CONFIG) is None


def test_a_ticket_solved_before_any_agent_reply_never_breaches_first_response() -> None:
    memory = run(TICKET, ev("s", "ticket.status_changed", 100, ticket_id="T1", status="solved"))
    assert breach_deadline(memory.states["t:T1"], CONFIG) is None
    # solved after the deadline: it had breached already
    late = run(TICKET, ev("s", "ticket.status_changed", 14401, ticket_id="T1", status="solved"))
    assert breach_deadline(late.states["t:T1"], CONFIG) == int(T0.timestamp() * 1000) + 14400_000


def test_first_response_deadline_in_business_time() -> None:
    office = CoreConfig(
        policies=(Policy(name="o", schedule="office", targets={"first_response": {"high": 7200}}),),
        schedules={
            "office": Schedule(
                timezone="Europe/Berlin",
                hours={day: ("09:00-17:00",) for day in ("mon", "tue", "wed", "thu", "fri")},
            )
        },
    )
    # created Monday 06:00 Berlin, before the opening: due at 11:00; breach detection
    # looks at it first at the policy's default warning, 0.75 of 2 h: 10:30
    memory = run(TICKET, config=office)
    assert breach_deadline(memory.states["t:T1"], office) == int(
        datetime(2026, 11, 23, 9, 30, tzinfo=UTC).timestamp() * 1000
    )
    state = memory.states["t:T1"]
    assert state.opened is not None
    assert first_response_deadline_terms(
        state.opened[0], (), office.terms_of(("email", "unassigned", "high"))
    ) == int(datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp() * 1000)
    # once the warning is claimed, the deadline is next
    state.claims.add("fr:1@0.75")
    assert breach_deadline(state, office) == int(
        datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp() * 1000
    )
    state.claims.discard("fr:1@0.75")
    # a reply at 10:30 Berlin took 1.5 business hours: within the 2 h target, though 4.5
    # calendar hours are more than v1's 4 h for high priority
    memory.apply(
        [("t", 9, ev("r", "ticket.replied", 4.5 * 3600, ticket_id="T1", author_role="agent"))]
    )
    fr = total(memory)["first_response"]  # type: ignore[index]
    assert fr["within_target"] == 1
    assert fr["mean_seconds"] == 4.5 * 3600
    assert fr["business"]["mean_seconds"] == 1.5 * 3600
    assert total(memory)["sla"]["first_response"] == {  # type: ignore[index]
        "achieved": 1,
        "breached": 0,
        "achieved_ratio": 1.0,
    }


def status(event_id: str, t: float, value: str, ticket: str = "T1") -> bytes:
    return ev(event_id, "ticket.status_changed", t, ticket_id=ticket, status=value)


def test_status_changes_after_the_close_are_ignored_and_counted_in_any_order() -> None:
    events = [
        TICKET,
        status("s1", 100, "solved"),
        status("s2", 200, "closed"),
        status("s3", 300, "open"),
        status("s4", 250, "pending"),
        status("s0", 50, "closed"),  # an earlier close: s1 and s2 come after it too
    ]
    forward = run(*events)
    backward = run(*reversed(events))
    assert forward.counters["ignored:closed"] == backward.counters["ignored:closed"] == 4
    # the counter only ever grows (each batch adds the change of the states' count)
    memory = MemoryState()
    for offset, raw in enumerate(events):
        before = memory.counters["ignored:closed"]
        memory.apply([("t", offset, raw)])
        assert memory.counters["ignored:closed"] >= before


def test_a_breach_counts_once_claimed_and_is_taken_back_by_a_late_reply() -> None:
    memory = run(TICKET, config=SLA_CONFIG)  # high: first response due in 1 h
    sla = lambda: total(memory)["sla"]["first_response"]  # type: ignore[index]  # noqa: E731
    assert sla() == {"achieved": 0, "breached": 0, "achieved_ratio": None}
    memory.apply([("t", -1, SlaClaim("T1", "fr:1"))])
    assert sla() == {"achieved": 0, "breached": 1, "achieved_ratio": 0.0}
    # the breach lies at the deadline, in its bucket
    deadline_s = int(T0.timestamp()) + 3600
    assert (
        memory.window(deadline_s, deadline_s + 60)[f"email{SEP}unassigned{SEP}high{SEP}sb_fr"] == 1
    )
    # claiming again changes nothing and is no duplicate event
    memory.apply([("t", -1, SlaClaim("T1", "fr:1"))])
    assert sla()["breached"] == 1 and memory.counters["dup:t"] == 0
    # a reply dated before the deadline arrives late: the breach is taken back
    memory.apply([("t", 5, ev("r", "ticket.replied", 1800, ticket_id="T1", author_role="agent"))])
    assert sla() == {"achieved": 1, "breached": 0, "achieved_ratio": 1.0}
    assert all(v > 0 for fields in memory.fine().values() for v in fields.values())


def test_a_claim_before_its_breach_shows_in_the_timeline_waits_for_it() -> None:
    # claimed, but the timeline has the reply in time: nothing; the claim stays harmless
    reply = ev("r", "ticket.replied", 60, ticket_id="T1", author_role="agent")
    memory = run(TICKET, SlaClaim("T1", "fr:1"), reply, config=SLA_CONFIG)
    assert total(memory)["sla"]["first_response"]["breached"] == 0  # type: ignore[index]


def now_counts(memory: MemoryState) -> dict[str, tuple[int, int]]:
    """The instances now: per SLA metric, (running, at risk) as the counters add them up."""
    return {
        metric: (memory.counters[RUNNING_FIELDS[metric]], memory.counters[AT_RISK_FIELDS[metric]])
        for metric in PLACES
    }


# each step, then (first response, next response, resolution) as (running, at risk)
INSTANCE_STEPS: list[tuple[str, bytes | SlaClaim, tuple[tuple[int, int], ...]]] = [
    ("created: first response and resolution run", TICKET, ((1, 0), (0, 0), (1, 0))),
    (
        "a private note changes nothing",
        ev("n", "ticket.replied", 60, ticket_id="T1", author_role="agent", public=False),
        ((1, 0), (0, 0), (1, 0)),
    ),
    ("the first response's warning claimed", SlaClaim("T1", "fr:1@0.75"), ((1, 1), (0, 0), (1, 0))),
    (
        "the first agent reply ends it",
        ev("r1", "ticket.replied", 3000, ticket_id="T1", author_role="agent"),
        ((0, 0), (0, 0), (1, 0)),
    ),
    (
        "a customer reply starts a next response",
        ev("r2", "ticket.replied", 3100, ticket_id="T1", author_role="customer"),
        ((0, 0), (1, 0), (1, 0)),
    ),
    (
        "a second one while it runs starts none",
        ev("r3", "ticket.replied", 3200, ticket_id="T1", author_role="customer"),
        ((0, 0), (1, 0), (1, 0)),
    ),
    ("its warning claimed: at risk", SlaClaim("T1", "nr:1@0.75"), ((0, 0), (1, 1), (1, 0))),
    ("breached: no longer running", SlaClaim("T1", "nr:1"), ((0, 0), (0, 0), (1, 0))),
    (
        "pending pauses the resolution clock: still running",
        status("p", 3300, "pending"),
        ((0, 0), (0, 0), (1, 0)),
    ),
    ("the resolution's warning claimed", SlaClaim("T1", "rs:1@0.75"), ((0, 0), (0, 0), (1, 1))),
    (
        "the late agent reply changes no count",
        ev("r4", "ticket.replied", 9000, ticket_id="T1", author_role="agent"),
        ((0, 0), (0, 0), (1, 1)),
    ),
    ("solved: nothing runs", status("s", 9100, "solved"), ((0, 0), (0, 0), (0, 0))),
    ("a reopen starts no resolution", status("o", 9200, "open"), ((0, 0), (0, 0), (0, 0))),
    (
        "a customer reply on the reopened ticket starts a next response",
        ev("r5", "ticket.replied", 9300, ticket_id="T1", author_role="customer"),
        ((0, 0), (1, 0), (0, 0)),
    ),
    ("closed: cancelled", status("x", 9400, "closed"), ((0, 0), (0, 0), (0, 0))),
]


def test_instances_now_follow_a_ticket_step_by_step() -> None:
    memory = MemoryState(SLA_CONFIG)  # high: every metric, warnings at 0.75
    for offset, (step, raw, expected) in enumerate(INSTANCE_STEPS):
        memory.apply([("t", offset, raw)])
        want = dict(zip(PLACES, expected, strict=True))
        assert now_counts(memory) == want, step
        state = memory.states["t:T1"]
        assert state.counted == instances_now(state, SLA_CONFIG), step


def test_instances_now_under_the_default_policy() -> None:
    # the first response alone (no evaluation of the timeline): running until answered
    memory = run(TICKET, ev("c", "ticket.replied", 60, ticket_id="T1", author_role="customer"))
    assert now_counts(memory)["first_response"] == (1, 0)
    memory.apply([("t", 9, ev("r", "ticket.replied", 99999, ticket_id="T1", author_role="agent"))])
    assert now_counts(memory)["first_response"] == (0, 0)
    # a ticket solved before any reply cancels it; one with no target never counts
    memory.apply([("t", 10, ev("c2", "ticket.created", 0, ticket_id="T2", priority="low"))])
    assert now_counts(memory)["first_response"] == (1, 0)
    memory.apply([("t", 11, status("s2", 30, "solved", ticket="T2"))])
    assert now_counts(memory)["first_response"] == (0, 0)
    no_target = CoreConfig(policies=())
    # no SLA digit; the thousands digit says the ticket is open now, as new
    assert instances_now(run(TICKET, config=no_target).states["t:T1"], no_target) == 1000


def test_next_responses_and_their_sla() -> None:
    memory = run(
        TICKET,
        ev("r1", "ticket.replied", 600, ticket_id="T1", author_role="agent"),
        ev("r2", "ticket.replied", 1000, ticket_id="T1", author_role="customer"),
        ev("r3", "ticket.replied", 1300, ticket_id="T1", author_role="customer"),
        ev("r4", "ticket.replied", 1600, ticket_id="T1", author_role="agent"),
        config=SLA_CONFIG,
    )
    group = total(memory)
    assert group["next_response"] == {  # type: ignore[index]
        "count": 1,
        "mean_seconds": 600.0,
        "p50_seconds": pytest.approx(600.0, rel=0.01),
        "p90_seconds": pytest.approx(600.0, rel=0.01),
        "p95_seconds": pytest.approx(600.0, rel=0.01),
        "business": {
            "mean_seconds": 600.0,
            "p50_seconds": pytest.approx(600.0, rel=0.01),
            "p90_seconds": pytest.approx(600.0, rel=0.01),
            "p95_seconds": pytest.approx(600.0, rel=0.01),
        },
    }
    assert group["sla"]["next_response"]["achieved"] == 1  # type: ignore[index]
    # without a policy the samples are there all the same (business = calendar)
    plain = run(*[raw for raw in [TICKET]], config=CoreConfig(policies=()))
    assert total(plain)["next_response"]["count"] == 0  # type: ignore[index]


def test_a_ticket_state_keeps_each_event_id_once() -> None:
    ids = [f"evt-{n:010d}" for n in range(10)]
    events = [ev(ids[0], "ticket.created", 0, ticket_id="T0000000001", priority="high")]
    for n in range(5):
        role = "customer" if n % 2 else "agent"
        events.append(
            ev(
                ids[1 + n],
                "ticket.replied",
                60 * (n + 1),
                ticket_id="T0000000001",
                author_role=role,
            )
        )
    for n, value in enumerate(("open", "pending", "open", "solved")):
        events.append(status(ids[6 + n], 400 + 60 * n, value, ticket="T0000000001"))
    memory = run(*events)
    state = memory.states["t:T0000000001"]
    raw = state.dumps()
    # the opener in the state, the timeline beside it; the walk names its latest entry
    assert raw.count(ids[0].encode()) == 1
    assert set(memory.timelines["t:T0000000001"]) == set(ids[1:])
    assert state.walk is not None and state.walk.key[1] == ids[9]
    assert state.stored == 9 and state.events() == 10
    # the figure docs/architecture.md gives
    assert len(raw) == 309
    # equal states are equal bytes, whatever the order
    assert run(*reversed(events)).states["t:T0000000001"].dumps() == raw


def test_ids_of_events_kept_in_no_field_are_kept_beside_the_state() -> None:
    created = ev("c1", "ticket.created", 10, ticket_id="T1", priority="high")
    earlier = ev("c0", "ticket.created", 5, ticket_id="T1", priority="high")
    note = ev("n1", "ticket.replied", 60, ticket_id="T1", author_role="agent", public=False)
    bot = ev("b1", "ticket.replied", 70, ticket_id="T1", author_role="system")
    memory = run(created, note, bot, earlier)
    state = memory.states["t:T1"]
    # the later opener, the note and the system reply: beside the state, with their times
    assert memory.others["t:T1"] == {
        "c1": T0_MS + 10_000,
        "n1": T0_MS + 60_000,
        "b1": T0_MS + 70_000,
    }
    assert state.others == 3 and state.events() == 4
    raw = state.dumps()
    assert b"n1" not in raw and b"b1" not in raw and b"c1" not in raw
    # a repeat of any of them, in a later batch, is found there
    result = memory.apply([("t", 10, note), ("t", 11, created), ("t", 12, bot)])
    assert result.counters["dup:t"] == 3 and not result.others
    assert memory.states["t:T1"].others == 3
    # and within one batch too
    fresh = MemoryState()
    fresh.apply([("t", 0, created), ("t", 1, note), ("t", 2, note)])
    assert fresh.counters["dup:t"] == 1 and fresh.others["t:T1"] == {"n1": T0_MS + 60_000}


# --- chats -----------------------------------------------------------------------------

CHAT = ev("q", "chat.requested", 0, chat_id="C1", queue="vip")


@pytest.mark.parametrize(
    ("outcome", "answered", "abandoned", "short"),
    [
        ([ev("a", "chat.accepted", 30, chat_id="C1")], 1, 0, 0),
        ([ev("x", "chat.abandoned", 30, chat_id="C1")], 0, 1, 0),
        # under the 5 s short-abandon threshold: counted on its own
        ([ev("x", "chat.abandoned", 4.999, chat_id="C1")], 0, 0, 1),
        ([ev("x", "chat.abandoned", 5, chat_id="C1")], 0, 1, 0),
        # ended before any accept is an abandon
        ([ev("e", "chat.ended", 40, chat_id="C1", ended_by="customer")], 0, 1, 0),
        # ended after an accept is a normal end
        (
            [ev("a", "chat.accepted", 10, chat_id="C1"), ev("e", "chat.ended", 400, chat_id="C1")],
            1,
            0,
            0,
        ),
        # a tie between accept and abandon goes to the accept, in either order
        (
            [
                ev("x", "chat.abandoned", 30, chat_id="C1"),
                ev("a", "chat.accepted", 30, chat_id="C1"),
            ],
            1,
            0,
            0,
        ),
    ],
)
def test_chat_outcomes(outcome: list[bytes], answered: int, abandoned: int, short: int) -> None:
    chats = total(run(CHAT, *outcome))["chats"]  # type: ignore[index]
    assert (chats["answered"], chats["abandoned"], chats["short_abandoned"]) == (
        answered,
        abandoned,
        short,
    )


def test_service_level_and_abandonment_ratios() -> None:
    events = [
        ev("q1", "chat.requested", 0, chat_id="C1"),
        ev("a1", "chat.accepted", 10, chat_id="C1"),  # within 20 s
        ev("q2", "chat.requested", 0, chat_id="C2"),
        ev("a2", "chat.accepted", 25, chat_id="C2"),  # answered late
        ev("q3", "chat.requested", 0, chat_id="C3"),
        ev("x3", "chat.abandoned", 60, chat_id="C3"),
        ev("q4", "chat.requested", 0, chat_id="C4"),
        ev("x4", "chat.abandoned", 2, chat_id="C4"),  # short: in neither ratio
    ]
    chats = total(run(*events))["chats"]  # type: ignore[index]
    assert chats["abandonment_ratio"] == 1 / 3
    assert chats["service_level_ratio"] == 1 / 3
    assert chats["requested"] == 4


# --- surveys ---------------------------------------------------------------------------


def test_survey_takes_its_dimensions_from_the_rated_conversation_in_any_order() -> None:
    survey = ev("s", "survey.responded", 900, ticket_id="T1", kind="csat", score=4)
    for order in ((TICKET, survey), (survey, TICKET)):
        memory = run(*order)
        groups = memory.document(by=("channel",))["groups"]
        csat = next(g for g in groups if g["key"] == {"channel": "email"})["csat"]  # type: ignore[index]
        assert csat == {"responses": 1, "satisfied": 1, "ratio": 1.0, "average": 4.0}


def test_survey_with_its_own_dimensions_counts_without_the_conversation() -> None:
    survey = ev(
        "s", "survey.responded", 0, chat_id="C9", kind="nps", score=9,
        channel="chat", queue="sales", priority="low",
    )  # fmt: skip
    nps = total(run(survey))["nps"]  # type: ignore[index]
    assert nps == {"responses": 1, "promoters": 1, "detractors": 0, "score": 100.0}


def test_duplicates_change_nothing_and_are_counted() -> None:
    memory = run(TICKET, TICKET, TICKET)
    assert total(memory)["tickets_created"] == 1
    assert memory.counters["dup:t"] == 2


def test_one_group_held_by_tickets_as_distinct_tuples_lands_under_one_key() -> None:
    # the fold's hot loop looks a group's keys up again only when the group object changes:
    # each ticket's state holds its own tuple of the same group, whose changes still meet
    raws = [ev(f"c{n}", "ticket.created", n, ticket_id=f"T{n}", queue="billing") for n in (1, 2, 3)]
    pending = []
    for offset, raw in enumerate(raws):
        event, ms = decode_record(raw)
        pending.append(Pending(event, "t", offset, ms, event.conversation_id))
    result = fold_batch(pending, {}, watermark_ms=0, applied_offsets={}, config=CONFIG)
    groups = {state.dims for state in result.states.values()}
    assert len(groups) == 1 and len({id(state.dims) for state in result.states.values()}) == 3
    key = SEP.join(groups.pop()) + SEP + "tc"
    assert result.totals[key] == 3
    assert [fields[key] for (level, _), fields in result.buckets.items() if level == "b"] == [3]


def test_redelivered_offsets_are_skipped() -> None:
    memory = run(TICKET)
    other = ev("c2", "ticket.created", 0, ticket_id="T2")
    result = memory.apply([("t", 0, other)])  # offset 0 was applied: a redelivery
    assert result.applied == 0
    assert total(memory)["tickets_created"] == 1


def test_events_beyond_retention_are_late() -> None:
    now = ev("c2", "ticket.created", 49 * 3600, ticket_id="T2")
    old = ev("c3", "ticket.created", 0, ticket_id="T3")
    memory = run(now, old)
    assert memory.counters["late:t"] == 1


RETENTION_S = CONFIG.retention_seconds

# the late cut: strictly older than the newest event time minus the retention
# (age behind the newest event, in seconds; late?)
# fmt: off
LATE_CASES = [
    (RETENTION_S, False),            # exactly at the horizon: applied
    (RETENTION_S + 0.001, True),     # one millisecond older: late
    (RETENTION_S - 0.001, False),
    (0, False),                      # as old as the newest
    (-10, False),                    # newer than the newest: it becomes the newest
]
# fmt: on


@pytest.mark.parametrize(("age_s", "late"), LATE_CASES)
def test_the_late_cut(age_s: float, late: bool) -> None:
    newest_s = RETENTION_S + 3600
    newest = ev("c1", "ticket.created", newest_s, ticket_id="T1")
    aged = ev("c2", "ticket.created", newest_s - age_s, ticket_id="T2")
    assert run(newest, aged).counters["late:t"] == int(late)
    # the watermark moves first: the order within one batch does not matter
    memory = MemoryState()
    memory.apply([("t", 0, aged), ("t", 1, newest)])
    assert memory.counters["late:t"] == int(late)


def test_empty_group_document_is_zeros_and_nulls() -> None:
    doc = group_document({}, {})
    assert doc["tickets_created"] == 0
    assert doc["first_response"]["p50_seconds"] is None
    assert doc["chats"]["abandonment_ratio"] is None
    assert doc["nps"]["score"] is None


@settings(max_examples=200, deadline=None)
@given(
    tickets=st.integers(0, 5),
    waiting=st.integers(0, 3),
    oldest_ms=st.none() | st.integers(0, 10_000_000),
    longest_ms=st.none() | st.integers(0, 10_000_000),
    ends_s=st.tuples(st.integers(10_000, 20_000), st.integers(10_000, 20_000)),
    created=st.integers(0, 9),
)
def test_a_document_moved_to_another_end_is_the_one_built_there(
    tickets: int,
    waiting: int,
    oldest_ms: int | None,
    longest_ms: int | None,
    ends_s: tuple[int, int],
    created: int,
) -> None:
    """A group's document taken to another end (a reader keeps documents across reads)
    equals the one built at that end from the same fields and live state, and the kept
    one is left as it was; one with no age (nothing open, nothing waiting) is the kept
    one itself, so what a reader made of it (its JSON) still holds."""
    live: dict[str, int] = {"bl:o": tickets, "bl:w": waiting}
    if oldest_ms is not None:
        live["oldest_ms"] = oldest_ms
    if longest_ms is not None:
        live["longest_ms"] = longest_ms
    fields = {"tc": created, "cr": waiting}
    before, after = ends_s
    kept = group_document({"queue": "q"}, fields, live, before)
    copy = orjson.loads(orjson.dumps(kept))
    moved = document_at(kept, live, after)
    assert moved == group_document({"queue": "q"}, fields, live, after)
    assert kept == copy
    assert (moved is kept) == (not tickets and not waiting)


def test_conversation_state_round_trips() -> None:
    memory = run(TICKET, ev("s", "survey.responded", 5, ticket_id="T1", kind="ces", score=3))
    state = memory.states["t:T1"]
    assert Conversation.loads(state.dumps()) == state


# --- order independence (hypothesis) ---------------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> list[bytes]:
    events: list[bytes] = []
    for n in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, 7200))
        priority = draw(st.sampled_from(["low", "normal", "high", "urgent"]))
        if draw(st.booleans()):
            tid = f"T{n}"
            events.append(ev(f"c{n}", "ticket.created", start, ticket_id=tid, priority=priority))
            for r in range(draw(st.integers(0, 3))):
                events.append(
                    ev(
                        f"r{n}.{r}",
                        "ticket.replied",
                        start + draw(st.integers(0, 30000)),
                        ticket_id=tid,
                        author_role=draw(st.sampled_from(["agent", "customer"])),
                        public=draw(st.booleans()),
                    )
                )
            rated = {"ticket_id": tid}
        else:
            cid = f"C{n}"
            events.append(ev(f"q{n}", "chat.requested", start, chat_id=cid, queue="q"))
            for r in range(draw(st.integers(0, 2))):
                kind = draw(st.sampled_from(["chat.accepted", "chat.abandoned", "chat.ended"]))
                events.append(ev(f"o{n}.{r}", kind, start + draw(st.integers(0, 90)), chat_id=cid))
            rated = {"chat_id": cid}
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["csat", "nps", "ces"]))
            score = draw(st.integers(*{"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}[kind]))
            events.append(
                ev(f"s{n}", "survey.responded", start + 40000, kind=kind, score=score, **rated)
            )
    return events


@settings(max_examples=150, deadline=None)
@given(events=conversations(), data=st.data())
def test_any_order_and_batching_gives_the_same_kpis(
    events: list[bytes], data: st.DataObject
) -> None:
    reference = run(*events)
    shuffled = data.draw(st.permutations(events))
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=3))  # upstream re-sends
    stream = list(shuffled) + repeats
    memory = MemoryState()
    offset = 0
    while offset < len(stream):
        size = data.draw(st.integers(1, 4))
        memory.apply(
            [("t", offset + i, raw) for i, raw in enumerate(stream[offset : offset + size])]
        )
        offset += size
    assert memory.fine() == reference.fine()
    assert memory.totals == reference.totals
    # the same states, and the same ids beside them (each counted in its state)
    assert {k: v.dumps() for k, v in memory.states.items()} == {
        k: v.dumps() for k, v in reference.states.items()
    }
    assert memory.others == reference.others
    for conv_id, state in memory.states.items():
        assert state.others == len(memory.others.get(conv_id, ()))
    assert memory.counters == reference.counters + Counter({"dup:t": len(repeats)})
    assert memory.document(by=("channel", "queue", "priority")) == reference.document(
        by=("channel", "queue", "priority")
    )
    assert SEP not in str(memory.document()["by"])


#: a policy with every metric on office hours, pausing the resolution on pending and hold
OFFICE_CONFIG = CoreConfig(
    policies=(
        Policy(
            name="office",
            match={"priority": ["urgent", "high", "normal"]},  # type: ignore[arg-type]
            schedule="office",
            targets={
                "first_response": {"urgent": 1800, "high": 3600, "normal": 7200},
                "next_response": {"urgent": 1800, "high": 3600},
                "resolution": {"urgent": 4 * 3600, "high": 8 * 3600, "normal": 16 * 3600},
            },
            pause=("pending", "hold"),
            warn_at=(0.5,),
        ),
    ),
    schedules={
        "office": Schedule(
            timezone="Europe/Berlin",
            hours={day: ("08:00-12:00", "13:00-17:00") for day in ("mon", "tue", "wed", "thu")},
        )
    },
)


@st.composite
def ticket_timelines(draw: st.DrawFn) -> list[bytes | SlaClaim]:
    events: list[bytes | SlaClaim] = []
    for n in range(draw(st.integers(1, 4))):
        tid = f"T{n}"
        start = draw(st.integers(0, 40000))
        priority = draw(st.sampled_from(["low", "normal", "high", "urgent"]))
        events.append(ev(f"c{n}", "ticket.created", start, ticket_id=tid, priority=priority))
        for r in range(draw(st.integers(0, 6))):
            t = start + draw(st.integers(-600, 60000))
            if draw(st.integers(0, 2)) == 0:
                value = draw(
                    st.sampled_from(["new", "open", "pending", "hold", "solved", "closed"])
                )
                events.append(status(f"s{n}.{r}", t, value, ticket=tid))
            else:
                events.append(
                    ev(
                        f"r{n}.{r}",
                        "ticket.replied",
                        t,
                        ticket_id=tid,
                        author_role=draw(st.sampled_from(["agent", "customer", "customer"])),
                        public=draw(st.sampled_from([True, True, False])),
                    )
                )
        claims = ["fr:1", "nr:1", "nr:2", "rs:1", "fr:1@0.5", "nr:1@0.5", "rs:1@0.5"]
        for claim in draw(st.lists(st.sampled_from(claims), max_size=3)):
            events.append(SlaClaim(tid, claim))
    return events


@settings(max_examples=150, deadline=None)
@given(events=ticket_timelines(), data=st.data())
def test_timelines_and_claims_in_any_order_and_batching_give_the_same_kpis(
    events: list[bytes | SlaClaim], data: st.DataObject
) -> None:
    config = data.draw(st.sampled_from([OFFICE_CONFIG, CONFIG]))
    reference = run(*events, config=config)
    shuffled = data.draw(st.permutations(events))
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=3))
    stream = list(shuffled) + repeats
    memory = MemoryState(config)
    offset = 0
    while offset < len(stream):
        size = data.draw(st.integers(1, 4))
        memory.apply(
            [("t", offset + i, raw) for i, raw in enumerate(stream[offset : offset + size])]
        )
        offset += size
    assert memory.fine() == reference.fine()
    assert memory.totals == reference.totals
    assert memory.counters["ignored:closed"] == reference.counters["ignored:closed"]
    # the instances now: the same counts in any order and batching, and each the sum of the
    # shares recounted from the final states
    now = {k: v for k, v in memory.counters.items() if k.startswith("sla_") and v}
    assert now == {k: v for k, v in reference.counters.items() if k.startswith("sla_") and v}
    recount: Counter[str] = Counter()
    for state in memory.states.values():
        share = instances_now(state, config)
        assert state.counted == share
        for metric, place in PLACES.items():
            recount[RUNNING_FIELDS[metric]] += share // place % 10 != NOT_COUNTED
            recount[AT_RISK_FIELDS[metric]] += share // place % 10 == AT_RISK_NOW
    assert now == {k: v for k, v in recount.items() if v}
    assert memory.document(by=("priority",)) == reference.document(by=("priority",))
    assert {k: v.dumps() for k, v in memory.states.items()} == {
        k: v.dumps() for k, v in reference.states.items()
    }
    assert memory.others == reference.others
    # and the sums agree with the states folded from scratch in one go
    direct: Counter[str] = Counter()
    for conv_id, state in reference.states.items():
        whole = Conversation.loads(state.dumps())
        restore(whole, reference.timelines.get(conv_id, {}))
        for _, dims, name, value in contributions(whole, config):
            # histogram, solve and reopen counts go to the cumulative totals alone
            if not name.startswith("frh:") and name not in ("svt", "rot"):
                direct[SEP.join(dims) + SEP + name] += value
    assert +direct == +Counter(reference.window(0, 2**40))


# --- stored field codes -------------------------------------------------------------------

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def documented_codes() -> set[str]:
    """The codes of the "Stored field codes" table in docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("### Stored field codes", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))


def test_every_stored_field_code_is_documented_and_every_documented_one_is_stored() -> None:
    def reply(event_id: str, t: float, ticket: str, role: str = "agent") -> bytes:
        return ev(event_id, "ticket.replied", t, ticket_id=ticket, author_role=role)

    memory = run(
        TICKET,
        reply("r1", 120, "T1"),
        reply("r2", 130, "T1", "customer"),
        reply("r3", 200, "T1"),  # a next response, achieved
        reply("r4", 300, "T1", "customer"),  # a next response never given: breached
        # solved after the second next response breached (a solve before would cancel it)
        ev("o1", "ticket.status_changed", 4000, ticket_id="T1", status="solved"),
        ev("c2", "ticket.created", 0, ticket_id="T2", priority="high"),  # never answered
        SlaClaim("T1", "nr:2"),
        SlaClaim("T2", "fr:1"),
        SlaClaim("T2", "rs:1"),
        ev("q1", "chat.requested", 0, chat_id="C1"),
        ev("a1", "chat.accepted", 10, chat_id="C1"),
        ev("q2", "chat.requested", 0, chat_id="C2"),
        ev("x2", "chat.abandoned", 60, chat_id="C2"),
        ev("q3", "chat.requested", 0, chat_id="C3"),
        ev("x3", "chat.abandoned", 2, chat_id="C3"),  # short
        ev("s1", "survey.responded", 200, ticket_id="T1", kind="csat", score=5),
        ev("s2", "survey.responded", 200, ticket_id="T1", kind="nps", score=9),
        ev("s3", "survey.responded", 200, chat_id="C1", kind="ces", score=2),
        ev("s4", "survey.responded", 200, chat_id="C1", kind="nps", score=3),
        ev("e1", "chat.ended", 300, chat_id="C1"),  # handled for 290 s
        # T3 goes through every open status, is solved, reopened and solved again
        ev("c3", "ticket.created", 0, ticket_id="T3"),
        *(
            ev(f"t3{n}", "ticket.status_changed", 100 * (n + 1), ticket_id="T3", status=value)
            for n, value in enumerate(("open", "pending", "hold", "solved", "open", "solved"))
        ),
        # T4 is solved for good with one agent reply: one-touch
        ev("c4", "ticket.created", 0, ticket_id="T4"),
        reply("r5", 60, "T4"),
        ev("t4", "ticket.status_changed", 60, ticket_id="T4", status="solved"),
        # an agent in every presence status
        *(
            ev(f"p{n}", "agent.status_changed", 120 * n, agent_id="A1", status=value)
            for n, value in enumerate(("available", "busy", "away", "offline"))
        ),
        config=SLA_CONFIG,
    )
    # every field is non-zero somewhere (zeros are not stored)
    stored = {
        field.rpartition(SEP)[2]
        for fields in (*memory.buckets.values(), memory.totals)
        for field in fields
    }
    emitted = {
        re.sub(
            r"^(fr_sk|cw_sk|fb_sk|nr_sk|nb_sk|rv_sk|rb_sk|ch_sk):\d+$",
            r"\1:<index>",
            re.sub(r"^frh:.+$", "frh:<bound>", code),
        )
        for code in stored
    }
    documented = documented_codes()
    # the breach script adds `sla` to the totals; the core never does
    assert emitted | {"sla"} == documented
    assert set(FIELDS) == documented - {
        "fr_sk:<index>",
        "cw_sk:<index>",
        "fb_sk:<index>",
        "nr_sk:<index>",
        "nb_sk:<index>",
        "rv_sk:<index>",
        "rb_sk:<index>",
        "ch_sk:<index>",
        "frh:<bound>",
        "sla",
    }


# --- the core against the brute-force oracle ----------------------------------------------


def test_simulated_traffic_agrees_with_the_oracle() -> None:
    from deskpulse.streams.devtools.simulate import SimConfig, generate
    from tests.lifecycle_oracle import Lifecycle, lifecycle_document, merge_documents
    from tests.lifecycle_oracle import evaluate as evaluate_lifecycles
    from tests.oracle import compare, compute

    # squeezed lifecycles: replies, solves, reopens and closes within the hour
    sim = SimConfig(
        seed=11,
        duration_s=3600,
        rate=20,
        response_scale=0.01,
        lifecycle_scale=0.02,
        out_of_order=0.2,
        duplicate_ratio=0.02,
        moves=0.3,  # escalations and transfers: every sample in the group of its instant
    )
    values = [record.value for record in generate(sim) if record.occurred_at_s is not None]
    assert sum(b'"ticket.updated"' in value for value in values) > 20
    memory = MemoryState()
    for offset in range(0, len(values), 97):
        memory.apply([("t", offset + i, raw) for i, raw in enumerate(values[offset : offset + 97])])
    start_s = int(sim.start_s) // 3600 * 3600
    facts = evaluate_lifecycles(values, None)
    for by in ((), ("channel", "priority")):
        actual = build_document(
            memory.window(start_s, start_s + 7200), start_s=start_s, end_s=start_s + 7200, by=by
        )
        # the samples of the lifecycle (resolution, handle time); the backlog and the
        # waiting chats are states the store reads (tests/integration/test_lifecycle.py)
        life = lifecycle_document(facts, at_s=start_s + 7200, width_s=7200, by=by)
        blank = lifecycle_document(Lifecycle({}, {}), at_s=0, width_s=60)["groups"][0]
        for group in life["groups"]:
            group["backlog"] = blank["backlog"]
            group["chats"].update(waiting=0, longest_wait_seconds=None)
        life["groups"] = [
            g
            for g in life["groups"]
            if not by or g["resolution"]["count"] or g["chats"]["handle_mean_seconds"]
        ]
        expected = merge_documents(compute(values, at_s=start_s + 7200, width_s=7200, by=by), life)
        assert compare(actual, expected) == []
    group = actual["groups"][0]  # type: ignore[index]
    assert group["next_response"]["count"] > 0
    assert group["resolution"]["count"] > 0 and group["resolution"]["reopened"] > 0
    assert memory.counters["ignored:closed"] >= 0


# --- a long timeline walked, and events before its walk ----------------------------------


@st.composite
def long_timelines(draw: st.DrawFn) -> tuple[list[bytes], list[bytes | SlaClaim]]:
    """One ticket's long conversation in time order (public replies alternating agent and
    customer, status changes among them), and events that come late: entries dated before
    much of it, repeats, a survey, claims."""
    priority = draw(st.sampled_from(["low", "normal", "high", "urgent"]))
    ordered: list[bytes] = [ev("c0", "ticket.created", 0, ticket_id="T0", priority=priority)]
    t = 0
    for n in range(draw(st.integers(20, 60))):
        t += draw(st.integers(0, 5400))
        if draw(st.integers(0, 4)) == 0:
            value = draw(st.sampled_from(["new", "open", "pending", "hold", "solved", "closed"]))
            ordered.append(status(f"e{n:03d}s", t, value, ticket="T0"))  # in (ms, id) order
        else:
            role = "agent" if n % 2 else "customer"
            ordered.append(
                ev(f"e{n:03d}r", "ticket.replied", t, ticket_id="T0", author_role=role, public=True)
            )
    late: list[bytes | SlaClaim] = []
    for n in range(draw(st.integers(0, 4))):
        at = draw(st.integers(-600, t))
        if draw(st.booleans()):
            role = draw(st.sampled_from(["agent", "customer"]))
            late.append(ev(f"l{n}", "ticket.replied", at, ticket_id="T0", author_role=role))
        else:
            value = draw(st.sampled_from(["open", "pending", "solved", "closed"]))
            late.append(status(f"l{n}", at, value, ticket="T0"))
    late += draw(st.lists(st.sampled_from(ordered), max_size=2))  # repeats
    if draw(st.booleans()):
        late.append(
            ev("v0", "survey.responded", t, kind="csat", score=4, ticket_id="T0")  # rated
        )
    for claim in draw(st.lists(st.sampled_from(["fr:1", "nr:1", "rs:1", "nr:2@0.5"]), max_size=2)):
        late.append(SlaClaim("T0", claim))
    return ordered, late


@settings(max_examples=80, deadline=None)
@given(timeline=long_timelines(), data=st.data())
def test_a_long_timeline_walked_in_batches_with_late_events_gives_the_whole_evaluation(
    timeline: tuple[list[bytes], list[bytes | SlaClaim]], data: st.DataObject
) -> None:
    """Batches that append to a ticket's timeline resume its walk; a late entry, a claim or
    an earlier creation has the timeline loaded whole; every number is the one the whole
    timeline gives folded in one batch."""
    ordered, late = timeline
    config = data.draw(st.sampled_from([OFFICE_CONFIG, CONFIG]))
    events = ordered + late
    # the reference: everything in one batch, the ticket evaluated whole from scratch
    reference = MemoryState(config)
    reference.apply([("t", offset, raw) for offset, raw in enumerate(events)])
    stream: list[bytes | SlaClaim] = list(ordered)
    for item in late:  # each late event somewhere after the first batch
        stream.insert(data.draw(st.integers(1, len(stream))), item)
    memory = MemoryState(config)
    offset = 0
    batches = 0
    while offset < len(stream):
        size = data.draw(st.integers(1, 8))
        memory.apply(
            [("t", offset + i, raw) for i, raw in enumerate(stream[offset : offset + size])]
        )
        offset += size
        batches += 1
    assert memory.fine() == reference.fine()
    assert memory.totals == reference.totals
    assert memory.counters["ignored:closed"] == reference.counters["ignored:closed"]
    now = {k: v for k, v in memory.counters.items() if k.startswith("sla_") and v}
    assert now == {k: v for k, v in reference.counters.items() if k.startswith("sla_") and v}
    assert memory.document(by=("priority",)) == reference.document(by=("priority",))
    state, whole = memory.states["t:T0"], reference.states["t:T0"]
    assert state.dumps() == whole.dumps()
    assert memory.timelines == reference.timelines
    assert state.walk is not None and state.timeline == {}
    assert state.stored == len(memory.timelines["t:T0"])
    # the walk answers what the whole timeline answers
    restored = Conversation.loads(state.dumps())
    restore(restored, memory.timelines["t:T0"])
    assert state.walk == walk_of(
        restored.opened[0],  # type: ignore[index]
        restored.timeline.items(),
        config.terms_of(restored.dims),  # type: ignore[arg-type]
        restored.claims,
        config.terms_key_of(restored.dims),  # type: ignore[arg-type]
    )
    assert live_entry(state, config) == live_entry(restored, config)
    assert instances_now(state, config) == instances_now(restored, config)
    assert breach_deadline(state, config) == breach_deadline(restored, config)
    if not late:  # in time order, no batch needed the timeline whole
        assert memory.restored == 0


def test_appends_to_a_walked_timeline_never_load_it_whole() -> None:
    """A conversation that never goes quiet, in time order: every batch after the first
    resumes the walk from the state alone, whose size does not grow with the history."""
    events = [ev("c0", "ticket.created", 0, ticket_id="T0", priority="high")]
    for n in range(400):
        role = "agent" if n % 2 else "customer"
        events.append(ev(f"r{n}", "ticket.replied", 60 * (n + 1), ticket_id="T0", author_role=role))
        if n % 50 == 49:
            value = ("pending", "open")[n % 100 // 50]
            events.append(status(f"s{n}", 60 * (n + 1) + 30, value, ticket="T0"))
    memory = MemoryState(OFFICE_CONFIG)
    sizes = []
    for start in range(0, len(events), 20):
        memory.apply([("t", start + i, raw) for i, raw in enumerate(events[start : start + 20])])
        sizes.append(len(memory.states["t:T0"].dumps()))
    assert memory.restored == 0
    assert max(sizes) - min(sizes[1:]) < 40  # digits of counts and instants, not entries
    assert memory.states["t:T0"].stored == len(events) - 1
    whole = MemoryState(OFFICE_CONFIG)
    whole.apply([("t", i, raw) for i, raw in enumerate(events)])
    assert memory.totals == whole.totals and memory.fine() == whole.fine()


def test_a_walk_taken_under_other_terms_is_walked_again_whole() -> None:
    """A ticket walked under one policy set (the default: first response alone), then
    folded under another (business hours, resolution, warnings; a restart with new
    policies, or a history replayed under other settings): its timeline is loaded whole
    and walked again under the terms in force, never read with the old walk's."""
    events = [ev("c0", "ticket.created", 0, ticket_id="T0", priority="high")]
    for n in range(6):
        role = "agent" if n % 2 else "customer"
        events.append(
            ev(f"r{n}", "ticket.replied", 600 * (n + 1), ticket_id="T0", author_role=role)
        )
    memory = MemoryState(CONFIG)
    memory.apply([("t", i, raw) for i, raw in enumerate(events[:4])])
    dims = memory.states["t:T0"].dims
    before = memory.states["t:T0"].walk
    assert dims is not None and before is not None
    assert before.terms == CONFIG.terms_key_of(dims) != OFFICE_CONFIG.terms_key_of(dims)
    memory.config = OFFICE_CONFIG
    memory.apply([("t", 4 + i, raw) for i, raw in enumerate(events[4:])])  # appends only
    assert memory.restored == 1
    state = memory.states["t:T0"]
    restored = Conversation.loads(state.dumps())
    restore(restored, memory.timelines["t:T0"])
    assert state.walk == walk_of(
        restored.opened[0],  # type: ignore[index]
        restored.timeline.items(),
        OFFICE_CONFIG.terms_of(dims),
        restored.claims,
        OFFICE_CONFIG.terms_key_of(dims),
    )
    assert breach_deadline(state, OFFICE_CONFIG) == breach_deadline(restored, OFFICE_CONFIG)
    # the next append walks on from the new walk
    memory.apply([("t", 10, ev("r9", "ticket.replied", 9000, ticket_id="T0", author_role="agent"))])
    assert memory.restored == 1
