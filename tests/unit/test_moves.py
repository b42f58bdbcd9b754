"""Dimensions that change over a ticket's life (``ticket.updated``) in the pure core: every
sample and backlog step in the group of its own instant, in any arrival order and
batching, against the brute-force oracles (no services)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from deskpulse.models.sla import Policy, Schedule
from deskpulse.streams.breaches import BREACH_TOTALS, alerts_due
from deskpulse.streams.core import (
    SEP,
    Conversation,
    CoreConfig,
    contributions,
    dims_steps,
    instances_now,
    live_entry,
    restore,
)
from deskpulse.streams.query import build_document
from tests.lifecycle_oracle import Lifecycle, lifecycle_document, merge_documents
from tests.lifecycle_oracle import evaluate as evaluate_lifecycles
from tests.oracle import compare
from tests.sla_oracle import (
    SlaRules,
    evaluate_tickets,
    expected_breaches,
    expected_warnings,
    kpi_document,
)
from tests.unit.test_core import T0, T0_MS, MemoryState, ev, run, status

#: a policy for the billing queue on office hours with every metric and a warning, and a
#: default one on calendar time whose next-response target only urgent tickets have: a
#: move or an escalation changes the terms of the instances that start after it
POLICIES = (
    Policy(
        name="billing",
        match={"queue": ["billing"]},
        schedule="office",
        targets={
            "first_response": {"urgent": 1800, "high": 3600, "normal": 7200, "low": 7200},
            "next_response": {"urgent": 1800, "high": 3600, "normal": 3600},
            "resolution": {"urgent": 4 * 3600, "high": 8 * 3600, "normal": 16 * 3600},
        },
        pause=("pending", "hold"),
        warn_at=(0.5,),
    ),
    Policy(
        name="default",
        targets={
            "first_response": {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400},
            "next_response": {"urgent": 1200},
        },
        warn_at=(),
    ),
)
SCHEDULES = {
    "office": Schedule(
        timezone="Europe/Berlin",
        hours={day: ("08:00-12:00", "13:00-17:00") for day in ("mon", "tue", "wed", "thu")},
    )
}
MOVES_CONFIG = CoreConfig(policies=POLICIES, schedules=SCHEDULES)
RULES = SlaRules.from_json(
    {name: schedule.model_dump(mode="json") for name, schedule in SCHEDULES.items()},
    [policy.model_dump(mode="json", exclude_none=True) for policy in POLICIES],
)
GROUPINGS: tuple[tuple[str, ...], ...] = ((), ("queue",), ("priority",), ("channel", "queue"))


def update(event_id: str, t: float, ticket: str = "T1", **dims: str) -> bytes:
    return ev(event_id, "ticket.updated", t, ticket_id=ticket, **dims)


def reply(event_id: str, t: float, ticket: str = "T1", role: str = "agent") -> bytes:
    return ev(event_id, "ticket.replied", t, ticket_id=ticket, author_role=role)


def created(event_id: str, t: float, ticket: str = "T1", **dims: str) -> bytes:
    return ev(event_id, "ticket.created", t, ticket_id=ticket, **dims)


def window_document(memory: MemoryState, by: tuple[str, ...]) -> dict[str, Any]:
    start = int(T0.timestamp()) - 86400
    end = int(T0.timestamp()) + 4 * 86400
    return build_document(memory.window(start, end), start_s=start, end_s=end, by=by)


def oracle_document(values: list[bytes], by: tuple[str, ...]) -> dict[str, Any]:
    """The oracles' document for the window of :func:`window_document` (no breach claimed;
    the backlog and the waiting chats are states, compared on their own below)."""
    end = int(T0.timestamp()) + 4 * 86400
    width = 5 * 86400
    tickets = evaluate_tickets(values, RULES)
    base = kpi_document(tickets, values, at_s=end, width_s=width, by=by, claimed_until_s=None)
    facts = evaluate_lifecycles(values, RULES)
    life = lifecycle_document(facts, at_s=end, width_s=width, by=by)
    blank = lifecycle_document(Lifecycle({}, {}), at_s=0, width_s=60)["groups"][0]
    for group in life["groups"]:
        group["backlog"] = blank["backlog"]
        group["chats"].update(waiting=0, longest_wait_seconds=None)
    life["groups"] = [g for g in life["groups"] if not by or g["resolution"]["count"]]
    return merge_documents(base, life)


def backlog_at(memory: MemoryState, end_s: int, by: tuple[str, ...]) -> dict[Any, Counter[str]]:
    """The backlog by group at the bucket boundary ``end_s``, summed from the level steps
    written before it (what the store's levels less the later steps give)."""
    positions = [("channel", "queue", "priority").index(name) for name in by]
    out: dict[Any, Counter[str]] = {}
    names = {"bl:n": "new", "bl:o": "open", "bl:p": "pending", "bl:h": "hold"}
    for (level, bucket_s), fields in memory.buckets.items():
        if level != "b" or bucket_s >= end_s:
            continue
        for key, value in fields.items():
            *dims, name = key.split(SEP)
            if name in names:
                group = tuple(dims[p] for p in positions)
                out.setdefault(group, Counter())[names[name]] += value
    return {group: +counts for group, counts in out.items() if +counts}


def oracle_backlog(values: list[bytes], end_s: int, by: tuple[str, ...]) -> dict[Any, Counter[str]]:
    facts = evaluate_lifecycles(values, RULES)
    document = lifecycle_document(facts, at_s=end_s, width_s=60, by=by)
    out = {}
    for group in document["groups"]:
        counts = Counter(
            {k: v for k, v in group["backlog"].items() if k in ("new", "open", "pending", "hold")}
        )
        if +counts:
            out[tuple(group["key"][name] for name in by)] = +counts
    return out


# --- worked by hand ---------------------------------------------------------------------------

# T1 is created in general (normal) at 0; the customer writes at 100; moved to billing at
# 300; an agent replies at 600 (its first response, in billing); escalated to urgent at
# 900; the customer writes at 1000 and the agent answers at 1100 (a next response, in
# billing and urgent); solved at 1500 (its resolution there too). The move at 300 arrives
# after the reply it re-attributes.
STORY = [
    created("c", 0, queue="general"),
    reply("r1", 100, role="customer"),
    reply("r2", 600),
    update("u1", 300, queue="billing"),
    update("u2", 900, priority="urgent"),
    reply("r3", 1000, role="customer"),
    reply("r4", 1100),
    status("s1", 1500, "solved"),
]


def test_a_moved_ticket_counts_in_the_group_of_each_instant() -> None:
    memory = run(*STORY)
    by_queue = {
        g["key"]["queue"]: g
        for g in window_document(memory, ("queue",))["groups"]  # type: ignore[union-attr]
    }
    assert by_queue["general"]["tickets_created"] == 1
    assert by_queue["general"]["first_response"]["count"] == 0
    assert by_queue["billing"]["tickets_created"] == 0
    assert by_queue["billing"]["first_response"]["count"] == 1
    assert by_queue["billing"]["first_response"]["mean_seconds"] == 600.0
    assert by_queue["billing"]["next_response"]["count"] == 1
    assert by_queue["billing"]["resolution"]["count"] == 1
    by_priority = {
        g["key"]["priority"]: g
        for g in window_document(memory, ("priority",))["groups"]  # type: ignore[union-attr]
    }
    assert by_priority["normal"]["first_response"]["count"] == 1
    assert by_priority["urgent"]["next_response"]["count"] == 1
    assert by_priority["urgent"]["resolution"]["count"] == 1
    # in general's backlog until the move, billing's after; none after the solve
    s0 = int(T0.timestamp())
    assert backlog_at(memory, s0 + 300, ("queue",)) == {("general",): Counter(new=1)}
    assert backlog_at(memory, s0 + 360, ("queue",)) == {("billing",): Counter(new=1)}
    assert backlog_at(memory, s0 + 960, ("priority",)) == {("urgent",): Counter(new=1)}
    assert backlog_at(memory, s0 + 1560, ("queue",)) == {}
    # the first response started in general, under the default policy, its target the
    # normal priority's: its terms stay when the ticket moves
    state = memory.states["t:T1"]
    assert state.dims == ("other", "general", "normal")
    assert state.now == ("other", "billing", "urgent")
    assert dims_steps(T0_MS, state.dims, state.moves.items()) == [
        (T0_MS, ("other", "general", "normal")),
        (T0_MS + 300_000, ("other", "billing", "normal")),
        (T0_MS + 900_000, ("other", "billing", "urgent")),
    ]


def test_a_late_move_takes_the_samples_after_it_to_the_new_group() -> None:
    in_order = run(*STORY)
    late = run(*(raw for raw in STORY if b'"u1"' not in raw), STORY[3])
    assert late.fine() == in_order.fine()
    assert late.totals == in_order.totals
    assert {k: v.dumps() for k, v in late.states.items()} == {
        k: v.dumps() for k, v in in_order.states.items()
    }
    # and the document before the move came had the reply in general
    early = run(*(raw for raw in STORY if b'"u1"' not in raw))
    (general,) = window_document(early, ("queue",))["groups"]  # type: ignore[misc]
    assert general["key"] == {"queue": "general"}
    assert general["first_response"]["count"] == 1


def test_an_update_before_the_creation_acts_at_the_creation() -> None:
    events = (created("c", 100, queue="general"), update("u", 50, queue="billing"))
    memory = run(*events, config=MOVES_CONFIG)
    (group,) = window_document(memory, ("queue",))["groups"]  # type: ignore[misc]
    assert group["key"] == {"queue": "billing"} and group["tickets_created"] == 1
    state = memory.states["t:T1"]
    # the policy is chosen on the dimensions at the creation, billing's: a resolution runs
    # (the default policy has no resolution target)
    assert state.counted % 1000 // 100 == 1
    assert state.counted == instances_now(state, MOVES_CONFIG)
    # never in general's backlog: open in billing's from the creation, no earlier stint
    assert live_entry(state, MOVES_CONFIG)[0] == "o"
    assert run(*events[:1], config=MOVES_CONFIG).states["t:T1"].counted % 1000 // 100 == 0


def test_an_update_held_until_its_ticket_comes_is_counted_held() -> None:
    memory = run(update("u", 50, queue="billing"))
    assert memory.counters["held"] == 1
    memory.apply([("t", 9, created("c", 0, queue="general"))])
    assert memory.counters["held"] == 0


def test_a_moved_state_round_trips_and_reads_the_previous_layout() -> None:
    memory = run(*STORY)
    state = memory.states["t:T1"]
    assert Conversation.loads(state.dumps()) == state
    # layout 9: no moves and no group now
    plain = run(created("c", 0)).states["t:T1"]
    raw = plain.dumps()
    eight = raw.replace(b",{},null,", b",")
    assert eight != raw
    assert Conversation.loads(eight) == plain


# --- any order, against the oracles (hypothesis) ------------------------------------------------


@st.composite
def moving_tickets(draw: st.DrawFn) -> list[bytes]:
    events: list[bytes] = []
    for n in range(draw(st.integers(1, 4))):
        tid = f"T{n}"
        start = draw(st.integers(0, 40000))
        events.append(
            created(
                f"c{n}",
                start,
                tid,
                queue=draw(st.sampled_from(["general", "billing"])),
                priority=draw(st.sampled_from(["low", "normal", "high", "urgent"])),
            )
        )
        for r in range(draw(st.integers(0, 7))):
            t = start + draw(st.integers(-600, 60000))
            kind = draw(st.integers(0, 3))
            if kind == 0:
                value = draw(
                    st.sampled_from(["new", "open", "pending", "hold", "solved", "closed"])
                )
                events.append(status(f"s{n}.{r}", t, value, ticket=tid))
            elif kind == 1:
                dims = draw(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "queue": st.sampled_from(["general", "billing", "sales"]),
                            "priority": st.sampled_from(["low", "normal", "high", "urgent"]),
                            "channel": st.sampled_from(["email", "phone"]),
                        },
                    ).filter(bool)
                )
                events.append(update(f"u{n}.{r}", t, tid, **dims))
            else:
                events.append(
                    reply(f"r{n}.{r}", t, tid, draw(st.sampled_from(["agent", "customer"])))
                )
        if draw(st.booleans()):
            events.append(
                ev(
                    f"v{n}",
                    "survey.responded",
                    start + draw(st.integers(0, 60000)),
                    ticket_id=tid,
                    kind="csat",
                    score=draw(st.integers(1, 5)),
                )
            )
    return events


@settings(max_examples=120, deadline=None)
@given(events=moving_tickets(), data=st.data())
def test_moves_in_any_order_and_batching_give_the_oracles_kpis(
    events: list[bytes], data: st.DataObject
) -> None:
    reference = run(*events, config=MOVES_CONFIG)
    shuffled = data.draw(st.permutations(events))
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=3))
    stream = list(shuffled) + repeats
    memory = MemoryState(MOVES_CONFIG)
    offset = 0
    while offset < len(stream):
        size = data.draw(st.integers(1, 4))
        memory.apply(
            [("t", offset + i, raw) for i, raw in enumerate(stream[offset : offset + size])]
        )
        offset += size
    assert memory.fine() == reference.fine()
    assert memory.totals == reference.totals
    assert {k: v.dumps() for k, v in memory.states.items()} == {
        k: v.dumps() for k, v in reference.states.items()
    }
    now = {k: v for k, v in memory.counters.items() if k.startswith("sla_") and v}
    assert now == {k: v for k, v in reference.counters.items() if k.startswith("sla_") and v}
    for state in memory.states.values():
        assert state.counted == instances_now(state, MOVES_CONFIG)
    # the sums agree with the states' contributions worked out from scratch
    direct: Counter[str] = Counter()
    for conv_id, state in reference.states.items():
        whole = Conversation.loads(state.dumps())
        restore(whole, reference.timelines.get(conv_id, {}))
        for _, dims, name, value in contributions(whole, MOVES_CONFIG):
            if not name.startswith("frh:") and name not in ("svt", "rot"):
                direct[SEP.join(dims) + SEP + name] += value
    assert +direct == +Counter(reference.window(0, 2**40))
    # and the documents are the oracles'
    for by in GROUPINGS:
        assert compare(window_document(memory, by), oracle_document(events, by)) == []
    s0 = int(T0.timestamp())
    for end_s in data.draw(
        st.lists(st.integers(0, 1100).map(lambda m: s0 + 60 * m), min_size=1, max_size=4)
    ):
        for by in (("queue",), ("priority",)):
            assert backlog_at(memory, end_s, by) == oracle_backlog(events, end_s, by), end_s


# --- alerts ---------------------------------------------------------------------------------


def _ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def check_alerts(events: list[bytes]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Every alert due of the tickets against the oracle's; the breaches found."""
    memory = run(*events, config=MOVES_CONFIG)
    tickets = evaluate_tickets(events, RULES)
    breaches = expected_breaches(tickets)
    warnings = expected_warnings(tickets)
    got_breaches: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    got_warnings: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    counted: Counter[str] = Counter()
    for conv_id, state in memory.states.items():
        whole = Conversation.loads(state.dumps())
        restore(whole, memory.timelines.get(conv_id, {}))
        for alert in alerts_due(conv_id, whole, 2**50, MOVES_CONFIG, "p"):
            body = orjson.loads(alert.payload)
            fields = (
                body["policy"],
                body["priority"],
                body["channel"],
                body["queue"],
                body["target_seconds"],
                _ms(body["started_at"]),
            )
            if body["type"] == "sla.breached":
                key = (body["ticket_id"], body["metric"], body["instance"])
                got_breaches[key] = (*fields, _ms(body["breached_at"]))
                assert alert.totals_field is not None
                counted[SEP.join(alert.dims) + SEP + alert.totals_field] += 1
            else:
                key = (body["ticket_id"], body["metric"], body["instance"], body["fraction"])
                got_warnings[key] = (*fields, _ms(body["due_at"]))
    assert got_breaches == {
        key: (
            b.policy,
            b.priority,
            b.channel,
            b.queue,
            b.target_seconds,
            b.started_ms,
            b.breached_ms,
        )
        for key, b in breaches.items()
    }
    assert got_warnings == {
        key: (w.policy, w.priority, w.channel, w.queue, w.target_seconds, w.started_ms, w.due_ms)
        for key, w in warnings.items()
    }
    # a breach counts in the group in force at its deadline
    want: Counter[str] = Counter()
    for (ticket_id, metric, _), breach in breaches.items():
        dims = tickets[ticket_id].dims_at(breach.breached_ms)
        key = SEP.join((dims["channel"], dims["queue"], dims["priority"]))
        want[key + SEP + BREACH_TOTALS[metric]] += 1
    assert counted == want
    return got_breaches


@settings(max_examples=80, deadline=None)
@given(events=moving_tickets())
def test_alerts_of_moving_tickets_carry_the_terms_their_instance_started_under(
    events: list[bytes],
) -> None:
    check_alerts(events)


def test_a_next_response_started_after_an_escalation_breaches_under_its_terms() -> None:
    # created in general (normal: no next-response target under the default policy),
    # escalated to urgent at 600 (1200 s), answered at 700; the customer writes at 800 and
    # gets no answer: breached at 2000, after a transfer to billing at 1500. The alert
    # carries the terms and group of its start; the breach counts in billing.
    events = [
        created("c", 0, queue="general"),
        update("u1", 600, priority="urgent"),
        reply("r1", 700),
        reply("r2", 800, role="customer"),
        update("u2", 1500, queue="billing"),
    ]
    breaches = check_alerts(events)
    assert breaches == {
        ("T1", "next_response", 1): (
            "default",
            "urgent",
            "other",
            "general",
            1200,
            T0_MS + 800_000,
            T0_MS + 2_000_000,
        )
    }
