"""The traffic simulator: deterministic, realistic, and faulty exactly as configured."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import decode
from deskpulse.models.sla import Schedule
from deskpulse.streams.calendar import BusinessCalendar, business_ms
from deskpulse.streams.devtools.simulate import (
    DEFAULT_START_S,
    Record,
    SimConfig,
    _Simulation,
    generate,
    read_jsonl,
    write_jsonl,
)

HOUR = 3600
DAY = 24 * HOUR
BERLIN = ZoneInfo("Europe/Berlin")
# Monday to Friday 09:00-17:30 in Berlin
OFFICE = {
    "timezone": "Europe/Berlin",
    "hours": {day: ["09:00-17:30"] for day in ("mon", "tue", "wed", "thu", "fri")},
}
OPENERS = {"ticket.created", "chat.requested"}
FAULTY = SimConfig(
    seed=11,
    duration_s=2 * HOUR,
    rate=12,
    duplicate_ratio=0.03,
    out_of_order=0.05,
    malformed_ratio=0.02,
    orphan_ratio=0.01,
    unanswered_ratio=0.2,
    response_scale=0.02,
)


def conversation_of(event: Any) -> str:
    ticket_id = getattr(event, "ticket_id", None)
    return ticket_id if ticket_id is not None else event.chat_id


@pytest.fixture(scope="module")
def faulty() -> list[Record]:
    return list(generate(FAULTY))


@pytest.fixture(scope="module")
def decoded(faulty: list[Record]) -> list[tuple[Record, Any]]:
    """(record, event) for every well-formed record, in delivery order."""
    return [(record, decode(record.value)) for record in faulty if record.occurred_at_s is not None]


def distinct_events(config: SimConfig | list[Record]) -> list[Any]:
    """The distinct events of a configuration's records (or of records generated already)."""
    seen: dict[str, Any] = {}
    for record in generate(config) if isinstance(config, SimConfig) else config:
        if record.occurred_at_s is not None:
            event = decode(record.value)
            seen.setdefault(event.event_id, event)
    return list(seen.values())


# -- determinism and volume -----------------------------------------------------------------


def test_same_config_same_records(faulty: list[Record]) -> None:
    assert list(generate(FAULTY)) == faulty
    assert list(generate(dataclasses.replace(FAULTY, seed=12)))[:50] != faulty[:50]


def test_event_times_stay_in_the_simulated_stretch(faulty: list[Record]) -> None:
    times = [r.occurred_at_s for r in faulty if r.occurred_at_s is not None]
    assert FAULTY.start_s <= min(times) < FAULTY.start_s + 10
    assert max(times) < FAULTY.start_s + FAULTY.duration_s


@pytest.mark.parametrize(
    "config",
    [
        SimConfig(seed=1, rate=10, duration_s=2 * HOUR),
        SimConfig(seed=2, rate=40, duration_s=HOUR / 2, response_scale=0.1),
        SimConfig(seed=3, rate=2, duration_s=24 * HOUR, diurnal=True),
        SimConfig(seed=4, rate=10, duration_s=2 * HOUR, incident=True),
        SimConfig(seed=9, rate=0.3, duration_s=3 * DAY, agent_hours={"billing": OFFICE}),
    ],
    ids=["plain", "fast-agents", "diurnal-day", "incident", "office-hours"],
)
def test_rate_is_the_average_of_distinct_valid_events(config: SimConfig) -> None:
    measured = len(distinct_events(config)) / config.duration_s
    assert measured == pytest.approx(config.rate, rel=0.1)


def test_faults_come_on_top_of_the_rate(faulty: list[Record]) -> None:
    valid = [r for r in faulty if r.occurred_at_s is not None]
    malformed = len(faulty) - len(valid)
    distinct = len({orjson.loads(r.value)["event_id"] for r in valid})
    assert distinct / FAULTY.duration_s == pytest.approx(FAULTY.rate, rel=0.1)
    assert (len(valid) - distinct) / distinct == pytest.approx(FAULTY.duplicate_ratio, rel=0.25)
    assert malformed / distinct == pytest.approx(FAULTY.malformed_ratio, rel=0.25)


def test_diurnal_curve_shapes_the_day() -> None:
    config = SimConfig(seed=5, rate=1, duration_s=24 * HOUR, diurnal=True)
    by_hour = collections.Counter(
        int((event.occurred_at_s - config.start_s) // HOUR)
        for event in distinct_events(config)
        if event.type in OPENERS
    )
    assert by_hour[14] > 4 * by_hour[3]


def test_incident_doubles_volume_and_slows_agents() -> None:
    config = SimConfig(seed=6, rate=10, duration_s=3 * HOUR, incident=True)
    openers: collections.Counter[int] = collections.Counter()
    requested: dict[str, float] = {}
    waits: dict[int, list[float]] = collections.defaultdict(list)
    for event in sorted(distinct_events(config), key=lambda e: e.occurred_at_s):
        hour = int((event.occurred_at_s - config.start_s) // HOUR)
        if event.type in OPENERS:
            openers[hour] += 1
        if event.type == "chat.requested":
            requested[event.chat_id] = event.occurred_at_s
        elif event.type == "chat.accepted" and event.chat_id in requested:
            waits[hour].append(event.occurred_at_s - requested[event.chat_id])
    # the incident is the middle third: hour 1
    assert openers[1] == pytest.approx(2 * openers[0], rel=0.15)
    assert openers[1] == pytest.approx(2 * openers[2], rel=0.15)
    mean_wait = {hour: sum(w) / len(w) for hour, w in waits.items()}
    assert mean_wait[1] > 2 * mean_wait[0]
    assert mean_wait[1] > 2 * mean_wait[2]


# -- what the records look like --------------------------------------------------------------


def test_every_well_formed_record_decodes_on_its_topic_and_key(
    decoded: list[tuple[Record, Any]],
) -> None:
    topic_of = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}
    for record, event in decoded:
        assert record.topic_kind == topic_of[event.type.split(".")[0]]
        assert record.key == conversation_of(event).encode()
        assert record.occurred_at_s == event.occurred_at_s
    types = collections.Counter(event.type for _, event in decoded)
    assert set(types) == {
        "ticket.created",
        "ticket.replied",
        "ticket.status_changed",
        "chat.requested",
        "chat.accepted",
        "chat.abandoned",
        "chat.ended",
        "survey.responded",
    }


def test_every_malformed_record_is_rejected_for_many_reasons(faulty: list[Record]) -> None:
    reasons: collections.Counter[str] = collections.Counter()
    for record in faulty:
        if record.occurred_at_s is None:
            with pytest.raises(RejectedEvent) as rejected:
                decode(record.value)
            reasons[rejected.value.reason] += 1
            assert record.topic_kind in {"tickets", "chats", "surveys"}
    assert set(reasons) >= {
        "invalid_json",
        "invalid_encoding",
        "not_an_object",
        "missing_type",
        "unknown_type",
        "missing_field",
        "naive_timestamp",
        "invalid_timestamp",
        "invalid_value",
    }


def test_event_ids_are_unique_and_duplicates_are_exact_copies(
    decoded: list[tuple[Record, Any]],
) -> None:
    by_id: dict[str, list[Record]] = collections.defaultdict(list)
    for record, event in decoded:
        by_id[event.event_id].append(record)
    repeated = [records for records in by_id.values() if len(records) > 1]
    assert repeated
    for records in repeated:
        assert all(record == records[0] for record in records)
    # different events never share an id
    assert len(by_id) == len({record.value for record, _ in decoded})


def test_timestamps_carry_varied_offsets(decoded: list[tuple[Record, Any]]) -> None:
    suffixes = collections.Counter()
    for record, _ in decoded:
        stamp = orjson.loads(record.value)["occurred_at"]
        suffixes["Z" if stamp.endswith("Z") else stamp[-6:]] += 1
    assert suffixes["Z"] > len(decoded) / 4
    assert {"+00:00", "-05:00", "+05:30"} <= set(suffixes)
    assert len(suffixes) >= 8


def test_surveys_are_keyed_by_the_rated_conversation(decoded: list[tuple[Record, Any]]) -> None:
    surveys = [(r, e) for r, e in decoded if e.type == "survey.responded"]
    assert {e.kind for _, e in surveys} == {"csat", "nps", "ces"}
    assert any(e.chat_id for _, e in surveys) and any(e.ticket_id for _, e in surveys)
    carried = sum(1 for _, e in surveys if e.channel or e.queue or e.priority)
    assert 0 < carried < len(surveys) / 3  # sometimes their own dimensions, usually not
    csat = collections.Counter(e.score for _, e in surveys if e.kind == "csat")
    assert csat[5] + csat[4] > csat[1] + csat[2] + csat[3]


def test_orphans_never_send_their_opener(decoded: list[tuple[Record, Any]]) -> None:
    opened = {conversation_of(e) for _, e in decoded if e.type in OPENERS}
    mentioned = {conversation_of(e) for _, e in decoded if e.type not in OPENERS}
    orphans = mentioned - opened
    assert 0 < len(orphans) < 0.05 * len(opened)


# -- lifecycles ------------------------------------------------------------------------------


def test_short_abandons_and_unanswered_tickets_occur(decoded: list[tuple[Record, Any]]) -> None:
    events = sorted({e.event_id: e for _, e in decoded}.values(), key=lambda e: e.occurred_at_s)
    end_s = FAULTY.start_s + FAULTY.duration_s
    requested: dict[str, float] = {}
    outcome: dict[str, Any] = {}
    created: dict[str, float] = {}
    answered: set[str] = set()
    for event in events:
        if event.type == "chat.requested":
            requested[event.chat_id] = event.occurred_at_s
        elif event.type.startswith("chat.") and event.chat_id not in outcome:
            outcome[event.chat_id] = event
        elif event.type == "ticket.created":
            created[event.ticket_id] = event.occurred_at_s
        elif event.type == "ticket.replied" and event.author_role == "agent" and event.public:
            answered.add(event.ticket_id)
    short = [
        chat_id
        for chat_id, event in outcome.items()
        if event.type in {"chat.abandoned", "chat.ended"}
        and chat_id in requested
        and event.occurred_at_s - requested[chat_id] < 5
    ]
    assert len(short) > 5
    # with agents 50x faster every early ticket has its answer unless it is never answered
    early = [t for t, at_s in created.items() if at_s < end_s - HOUR]
    unanswered = sum(1 for t in early if t not in answered)
    assert unanswered / len(early) == pytest.approx(FAULTY.unanswered_ratio, abs=0.05)


def test_private_notes_system_replies_and_statuses_occur(
    decoded: list[tuple[Record, Any]],
) -> None:
    replies = collections.Counter(
        (e.author_role, e.public) for _, e in decoded if e.type == "ticket.replied"
    )
    assert {("agent", True), ("agent", False), ("customer", True), ("system", True)} <= set(replies)
    statuses = {e.status for _, e in decoded if e.type == "ticket.status_changed"}
    assert {"open", "pending", "hold", "solved", "closed"} <= statuses


def test_first_replies_sometimes_breach_their_target() -> None:
    config = SimConfig(seed=7, rate=4, duration_s=4 * HOUR, priorities={"urgent": 1})
    created: dict[str, float] = {}
    first: dict[str, float] = {}
    for event in sorted(distinct_events(config), key=lambda e: e.occurred_at_s):
        if event.type == "ticket.created":
            created[event.ticket_id] = event.occurred_at_s
        elif event.type == "ticket.replied" and event.author_role == "agent" and event.public:
            first.setdefault(event.ticket_id, event.occurred_at_s - created[event.ticket_id])
    breached = sum(1 for seconds in first.values() if seconds > 3600)
    assert 0 < breached < len(first) / 3


# Days of traffic at the default scales: whole lifecycles, days-long ones included.
LIFECYCLES = SimConfig(seed=21, rate=0.1, duration_s=8 * DAY)
# a change out of a status into another; "solved" -> other than "closed" is a reopen
ALLOWED = {
    "new": {"open", "pending", "hold", "solved", "closed"},
    "open": {"pending", "hold", "solved", "closed"},
    "pending": {"open", "hold", "solved", "closed"},
    "hold": {"open", "pending", "solved", "closed"},
    "solved": {"open", "closed"},
    "closed": set(),
}


def timelines(events: list[Any]) -> dict[str, list[Any]]:
    """Each opened ticket's events in timeline order: (occurred_at, event_id)."""
    by_ticket: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:
        if event.type.startswith("ticket."):
            by_ticket[event.ticket_id].append(event)
    ordered = {}
    for ticket, items in by_ticket.items():
        items.sort(key=lambda e: (e.occurred_at_s, e.event_id))
        if items[0].type == "ticket.created":
            ordered[ticket] = items
    return ordered


@pytest.fixture(scope="module")
def lifecycle_events() -> list[Any]:
    return distinct_events(LIFECYCLES)


@pytest.fixture(scope="module")
def lifecycles(lifecycle_events: list[Any]) -> dict[str, list[Any]]:
    return timelines(lifecycle_events)


def is_agent_reply(event: Any) -> bool:
    return event.type == "ticket.replied" and event.author_role == "agent" and event.public


def is_customer_reply(event: Any) -> bool:
    return event.type == "ticket.replied" and event.author_role == "customer" and event.public


def test_every_ticket_walks_a_valid_lifecycle(lifecycles: dict[str, list[Any]]) -> None:
    changes: collections.Counter[tuple[str, str]] = collections.Counter()
    for ticket, events in lifecycles.items():
        status = "new"
        for index, event in enumerate(events):
            if event.type != "ticket.status_changed":
                assert status != "closed", f"{ticket}: {event.type} after the close"
                continue
            assert event.status in ALLOWED[status], f"{ticket}: {status} -> {event.status}"
            if status == "solved" and event.status != "closed":
                # a reopen: the customer wrote on the solved ticket
                assert is_customer_reply(events[index - 1]), ticket
            changes[status, event.status] += 1
            status = event.status
    # every kind of change the lifecycles have, each more than a few times
    expected = {
        ("new", "pending"),
        ("new", "open"),
        ("new", "hold"),
        ("new", "closed"),  # closed unanswered
        ("pending", "open"),  # the customer answered
        ("open", "pending"),
        ("open", "hold"),
        ("hold", "open"),
        ("hold", "pending"),
        ("pending", "solved"),
        ("open", "solved"),
        ("solved", "open"),  # reopened
        ("solved", "closed"),
        ("pending", "closed"),  # closed without a solve
        ("open", "closed"),
    }
    assert {change for change, count in changes.items() if count >= 5} >= expected, changes
    solves = changes["open", "solved"] + changes["pending", "solved"] + changes["hold", "solved"]
    assert 0.03 < changes["solved", "open"] / solves < 0.15  # reopens: some, not many
    closed_unsolved = sum(
        n for (old, new), n in changes.items() if new == "closed" and old != "solved"
    )
    assert 0 < closed_unsolved < 0.1 * changes["solved", "closed"]  # rare


def test_tickets_stay_open_for_days_on_hold_and_pending(lifecycles: dict[str, list[Any]]) -> None:
    end_s = LIFECYCLES.start_s + LIFECYCLES.duration_s
    open_days: list[float] = []
    holds_s: list[float] = []
    for events in lifecycles.values():
        created_s = events[0].occurred_at_s
        if created_s > end_s - 4 * DAY:
            continue  # young tickets have had no time to last
        done_s, hold_from = end_s, None
        for event in events:
            if event.type != "ticket.status_changed":
                continue
            if hold_from is not None:
                holds_s.append(event.occurred_at_s - hold_from)
            hold_from = event.occurred_at_s if event.status == "hold" else None
            if event.status in ("solved", "closed"):
                done_s = min(done_s, event.occurred_at_s)
        open_days.append((done_s - created_s) / DAY)
    open_days.sort()
    assert open_days[len(open_days) // 2] < 1  # most are solved the same day
    assert 0.05 < sum(1 for days in open_days if days > 2) / len(open_days) < 0.4
    holds_s.sort()
    assert len(holds_s) > 50
    assert HOUR < holds_s[len(holds_s) // 2] < DAY  # hours, sometimes days
    assert holds_s[-len(holds_s) // 10] > DAY


def test_customer_follow_ups_after_agent_replies_start_next_response_cycles(
    lifecycles: dict[str, list[Any]],
) -> None:
    # a cycle: a public customer reply after the first public agent reply, while no cycle
    # runs and the ticket is neither solved nor closed, ended by the next agent reply
    cycles: collections.Counter[str] = collections.Counter()
    answered_cycles = 0
    for ticket, events in lifecycles.items():
        status, replied, running = "new", False, False
        for event in events:
            if event.type == "ticket.status_changed":
                status = event.status
            elif is_agent_reply(event):
                answered_cycles += running
                replied, running = True, False
            elif (
                is_customer_reply(event)
                and replied
                and not running
                and status not in ("solved", "closed")
            ):
                cycles[ticket] += 1
                running = True
    answered = sum(1 for events in lifecycles.values() if any(map(is_agent_reply, events)))
    assert len(cycles) > answered / 3
    assert sum(1 for n in cycles.values() if n >= 3) > 20
    assert answered_cycles > 0.8 * sum(cycles.values())


SOLVES = {"solved", "closed"}


def final_solve(events: list[Any]) -> tuple[Any, int, int] | None:
    """A ticket's last solve not followed by a reopen, its reopens before it, and its
    public agent replies before it; ``None`` while it is not solved."""
    status, final, reopens, replies, replies_at_final = "new", None, 0, 0, 0
    for event in events:
        if is_agent_reply(event):
            replies += 1
        elif event.type == "ticket.status_changed" and event.status != status:
            if event.status == "solved" or (event.status == "closed" and status != "solved"):
                final, replies_at_final = event, replies
            elif status == "solved" and event.status != "closed":
                final, reopens = None, reopens + 1
            status = event.status
    return None if final is None else (final, reopens, replies_at_final)


def test_one_touch_tickets_are_solved_with_their_only_agent_reply(
    lifecycles: dict[str, list[Any]],
) -> None:
    solved = reopened = one_touch = same_instant = moment_later = 0
    for events in lifecycles.values():
        resolution = final_solve(events)
        if resolution is None:
            continue
        solve, reopens, replies = resolution
        solved += 1
        reopened += reopens > 0
        if reopens or replies != 1:
            continue
        one_touch += 1
        reply = next(e for e in events if is_agent_reply(e))
        gap_s = solve.occurred_at_s - reply.occurred_at_s
        same_instant += gap_s == 0
        moment_later += 0 < gap_s < 600
    assert solved > 1000
    # about half, as in a support team that answers most questions in one reply
    assert 0.3 < one_touch / solved < 0.65, one_touch / solved
    assert 0.02 < reopened / solved < 0.12, reopened / solved
    # submitted as solved (one instant, the reply ordered first) or solved right after
    assert same_instant > 0.1 * one_touch
    assert moment_later > 0.05 * one_touch


def test_pending_tickets_nobody_answers_are_solved_by_automation(
    lifecycles: dict[str, list[Any]],
) -> None:
    automated = solves = 0
    for events in lifecycles.values():
        for before, event in itertools.pairwise(events):
            if event.type == "ticket.status_changed" and event.status == "solved":
                solves += 1
                # nothing at all happened on the ticket during its 4 days pending
                silent_s = event.occurred_at_s - before.occurred_at_s
                pending = before.type == "ticket.status_changed" and before.status == "pending"
                automated += pending and 4 * DAY <= silent_s < 4 * DAY + 2 * HOUR
    assert 0.02 * solves < automated < 0.2 * solves


def test_the_backlog_holds_every_open_status_and_days_old_tickets(
    lifecycles: dict[str, list[Any]],
) -> None:
    end_s = LIFECYCLES.start_s + LIFECYCLES.duration_s
    backlog: collections.Counter[str] = collections.Counter()
    oldest_s = end_s
    resumed = 0
    for events in lifecycles.values():
        statuses = [e.status for e in events if e.type == "ticket.status_changed"]
        status = statuses[-1] if statuses else "new"
        if status not in SOLVES:
            backlog[status] += 1
            oldest_s = min(oldest_s, events[0].occurred_at_s)
        # left alone for days, then picked up again: an agent reply, later a solve
        for index, (before, event) in enumerate(itertools.pairwise(events), start=1):
            if event.occurred_at_s - before.occurred_at_s > 3 * DAY and is_agent_reply(event):
                later = events[index + 1 :]
                resumed += any(getattr(e, "status", None) == "solved" for e in later)
                break
    assert {"new", "open", "pending", "hold"} <= {s for s, n in backlog.items() if n >= 10}
    assert end_s - oldest_s > 5 * DAY  # the oldest open ticket is days old
    assert resumed > 10


def test_surveys_follow_what_they_rate(lifecycle_events: list[Any]) -> None:
    solved_s: dict[str, float] = {}
    ended_s: dict[str, float] = {}
    for event in sorted(lifecycle_events, key=lambda e: e.occurred_at_s):
        if getattr(event, "status", None) == "solved":
            solved_s.setdefault(event.ticket_id, event.occurred_at_s)
        elif event.type == "chat.ended":
            ended_s[event.chat_id] = event.occurred_at_s
    surveys = [e for e in lifecycle_events if e.type == "survey.responded"]
    assert len(surveys) > 500
    for survey in surveys:
        if survey.ticket_id is not None:
            assert solved_s[survey.ticket_id] < survey.occurred_at_s
        else:
            assert ended_s[survey.chat_id] < survey.occurred_at_s


# Half a day of chats at the default scales.
CHATS = SimConfig(seed=23, rate=2, duration_s=12 * HOUR, channels={"chat": 1})
CHAT_OUTCOMES = {"chat.accepted", "chat.abandoned", "chat.ended"}


@pytest.fixture(scope="module")
def chats() -> dict[str, list[Any]]:
    """Each requested chat's events in timeline order, surveys left out."""
    by_chat: dict[str, list[Any]] = collections.defaultdict(list)
    for event in distinct_events(CHATS):
        if event.type.startswith("chat."):
            by_chat[event.chat_id].append(event)
    for events in by_chat.values():
        events.sort(key=lambda e: (e.occurred_at_s, e.event_id))
    return {chat: events for chat, events in by_chat.items() if events[0].type == "chat.requested"}


def test_every_chat_is_requested_then_answered_and_ended_or_given_up(
    chats: dict[str, list[Any]],
) -> None:
    handle_s: list[float] = []
    for chat, events in chats.items():
        kinds = [e.type for e in events]
        assert kinds.count("chat.requested") == 1 and kinds[0] == "chat.requested", chat
        assert kinds in (
            ["chat.requested"],  # still waiting at the end of the stretch
            ["chat.requested", "chat.accepted"],  # still being handled
            ["chat.requested", "chat.accepted", "chat.ended"],
            ["chat.requested", "chat.abandoned"],
            ["chat.requested", "chat.abandoned", "chat.ended"],  # closed by the platform
            ["chat.requested", "chat.ended"],  # given up before any accept
        ), (chat, kinds)
        if kinds[1:] == ["chat.accepted", "chat.ended"]:
            handle_s.append(events[2].occurred_at_s - events[1].occurred_at_s)
    assert len(handle_s) > 0.6 * len(chats)
    handle_s.sort()
    # handle times of minutes: a few typically, half an hour for the long tail
    assert 3 * 60 < handle_s[len(handle_s) // 2] < 10 * 60
    assert 10 * 60 < handle_s[int(0.95 * len(handle_s))] < 45 * 60


def test_some_chats_wait_unanswered_until_they_are_stale(chats: dict[str, list[Any]]) -> None:
    end_s = CHATS.start_s + CHATS.duration_s
    lost = [
        events
        for events in chats.values()
        if events[0].occurred_at_s < end_s - 6 * HOUR
        and (len(events) == 1 or events[1].occurred_at_s - events[0].occurred_at_s > HOUR)
    ]
    early = sum(1 for events in chats.values() if events[0].occurred_at_s < end_s - 6 * HOUR)
    assert 0.002 < len(lost) / early < 0.01
    # nobody answers them; the platform ends them hours later
    ended = [events for events in lost if len(events) > 1]
    assert len(ended) > 0.8 * len(lost)
    assert all([e.type for e in events] == ["chat.requested", "chat.ended"] for events in ended)
    assert all(events[1].ended_by == "system" for events in ended)
    # so at any instant of a live stream some chats are waiting, the oldest of them long
    longest_s = []
    for hour in range(2, 12):
        at_s = CHATS.start_s + hour * HOUR
        waiting = [
            at_s - events[0].occurred_at_s
            for events in chats.values()
            if at_s - HOUR < events[0].occurred_at_s < at_s
            and all(e.occurred_at_s >= at_s for e in events[1:])
        ]
        assert len(waiting) > 3, hour
        longest_s.append(max(waiting))
    assert sorted(longest_s)[len(longest_s) // 2] > 20 * 60


def test_a_backlog_starts_with_the_conversations_open_at_the_start() -> None:
    config = SimConfig(seed=25, rate=0.5, duration_s=6 * HOUR, backlog_s=3 * DAY)
    records = list(generate(config))
    assert records == list(generate(config))
    events = [decode(r.value) for r in records]
    before = [e for e in events if e.occurred_at_s < config.start_s]
    assert before and events[: len(before)] == before  # the backlog's history comes first
    assert min(e.occurred_at_s for e in events) >= config.start_s - config.backlog_s
    by_conversation: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:
        by_conversation[conversation_of(event)].append(event)
    backlog: collections.Counter[str] = collections.Counter()
    oldest_s = config.start_s
    solved_in_stretch = 0
    for conversation, items in by_conversation.items():
        assert items[0].type in OPENERS, conversation  # nothing arrives without its opener
        if items[0].occurred_at_s >= config.start_s:
            continue
        earlier = [e for e in items if e.occurred_at_s < config.start_s]
        later = [e for e in items if e.occurred_at_s >= config.start_s]
        if items[0].type == "chat.requested":
            assert len(earlier) == 1, conversation  # not yet answered at the start
            continue
        statuses = [e.status for e in earlier if e.type == "ticket.status_changed"]
        status = statuses[-1] if statuses else "new"
        assert status not in SOLVES, conversation  # open at the start
        backlog[status] += 1
        oldest_s = min(oldest_s, items[0].occurred_at_s)
        solved_in_stretch += any(getattr(e, "status", None) == "solved" for e in later)
    assert {"new", "open", "pending", "hold"} <= set(backlog)
    assert config.start_s - oldest_s > 2 * DAY
    assert solved_in_stretch > 100  # older tickets are solved from the first hour on
    # the rate counts the stretch: what the backlog sends before it comes on top
    in_stretch = len({e.event_id for e in events if e.occurred_at_s >= config.start_s})
    assert in_stretch / config.duration_s == pytest.approx(config.rate, rel=0.1)


def peak_pending(config: SimConfig) -> int:
    simulation = _Simulation(config)
    for _ in simulation.records():
        pass
    return simulation.peak_pending


def test_scheduled_events_stay_bounded_by_the_open_conversations() -> None:
    # squeezed so that lifecycles (the weeks-later clean-up included) end within hours:
    # past that, as many conversations end as start, and the schedule stops growing
    short = SimConfig(seed=27, rate=0.5, duration_s=DAY, response_scale=0.05, lifecycle_scale=0.2)
    long = dataclasses.replace(short, duration_s=4 * DAY)
    assert 0 < peak_pending(long) < 1.25 * peak_pending(short)


def office_open(at_s: float) -> bool:
    local = datetime.fromtimestamp(at_s, BERLIN)
    return local.weekday() < 5 and (9, 0) <= (local.hour, local.minute) < (17, 30)


def test_agents_keep_office_hours_when_asked() -> None:
    config = SimConfig(
        seed=31,
        start_s=DEFAULT_START_S + 2 * DAY,  # Wednesday to Tuesday: a weekend in the middle
        rate=0.12,
        duration_s=6 * DAY,
        queues={"billing": 1, "general": 1},
        agent_hours={"billing": OFFICE},
    )
    office = BusinessCalendar(Schedule.model_validate(OFFICE))
    worked = {"billing": [0, 0], "general": [0, 0]}  # [in office hours, outside]
    first: dict[str, list[tuple[float, float]]] = {"billing": [], "general": []}
    friday_evening = []
    for events in timelines(distinct_events(config)).values():
        queue = events[0].queue
        if queue not in worked:
            continue  # a producer left the queue out
        created_s = events[0].occurred_at_s
        for event in events:
            by_agent = event.type == "ticket.replied" and event.author_role == "agent"
            if by_agent or getattr(event, "status", None) == "solved":
                worked[queue][not office_open(event.occurred_at_s)] += 1
        reply = next((e for e in events if is_agent_reply(e)), None)
        if reply is None:
            continue
        calendar_ms = round((reply.occurred_at_s - created_s) * 1000)
        start_ms = round(created_s * 1000)
        business = business_ms(office, start_ms, start_ms + calendar_ms)
        first[queue].append((calendar_ms, business))
        local = datetime.fromtimestamp(created_s, BERLIN)
        if queue == "billing" and local.weekday() == 4 and local.hour >= 18:
            friday_evening.append(datetime.fromtimestamp(reply.occurred_at_s, BERLIN))
    assert worked["billing"][0] > 1000 and worked["billing"][1] == 0
    assert worked["general"][1] > worked["general"][0]  # around the clock
    # a billing ticket of a Friday evening is answered on Monday (or later), in office hours
    assert len(friday_evening) > 10
    assert all(reply.weekday() < 5 and reply.weekday() != 4 for reply in friday_evening)
    assert any(reply.weekday() == 0 for reply in friday_evening)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    # calendar time grows with the closed hours; business time stays like the 24/7 queue's
    billing_calendar = median([c for c, _ in first["billing"]])
    billing_business = median([b for _, b in first["billing"]])
    general_calendar = median([c for c, _ in first["general"]])
    assert billing_calendar > 2 * general_calendar
    assert billing_business == pytest.approx(general_calendar, rel=0.25)


def test_same_config_with_office_hours_same_records() -> None:
    config = SimConfig(seed=12, rate=0.2, duration_s=DAY, agent_hours={"technical": OFFICE})
    assert list(generate(config)) == list(generate(config))
    assert isinstance(config.agent_hours["technical"], Schedule)  # read as a schedule
    assert list(generate(config)) != list(generate(dataclasses.replace(config, agent_hours={})))


def test_in_order_delivery_without_disorder() -> None:
    config = SimConfig(seed=8, rate=20, duration_s=HOUR)
    times = [record.occurred_at_s for record in generate(config)]
    assert times == sorted(times)


def test_disorder_delivers_replies_before_their_opener(
    decoded: list[tuple[Record, Any]],
) -> None:
    times = [record.occurred_at_s for record, _ in decoded]
    assert times != sorted(times)
    opened: set[str] = set()
    early: collections.Counter[str] = collections.Counter()
    for _, event in decoded:
        conversation = conversation_of(event)
        if event.type in OPENERS:
            opened.add(conversation)
        elif conversation not in opened:
            early[event.type] += 1
    assert early["chat.accepted"] > 0
    assert early["ticket.replied"] > 0


def test_openers_leave_out_dimensions_sometimes(decoded: list[tuple[Record, Any]]) -> None:
    raw = [orjson.loads(r.value) for r, e in decoded if e.type == "ticket.created"]
    assert any("queue" not in item for item in raw)
    assert any("priority" not in item for item in raw)
    assert any("tags" in item for item in raw)  # an unknown field, to be ignored


def test_id_prefix_keeps_runs_apart() -> None:
    one = next(iter(generate(SimConfig(rate=5, id_prefix="run-a/"))))
    assert orjson.loads(one.value)["event_id"].startswith("run-a/")
    assert one.key.startswith(b"run-a/")


def test_id_digits_pads_every_number_to_one_length() -> None:
    config = SimConfig(rate=50, duration_s=120, id_prefix="p-", id_digits=6)
    plain = list(generate(dataclasses.replace(config, id_digits=0)))
    padded = list(generate(config))
    assert len(padded) == len(plain)  # the same traffic, only the ids differ
    numbers = [
        m.group(1)
        for record in padded
        if record.occurred_at_s is not None
        for name in ("event_id", "ticket_id", "chat_id")
        if (m := re.fullmatch(r"p-[eTC](\d+)", orjson.loads(record.value).get(name) or ""))
    ]
    assert numbers and {len(n) for n in numbers} == {6}
    assert any(n.startswith("0000") for n in numbers)  # small numbers are padded
    unpadded = {orjson.loads(r.value)["event_id"] for r in plain if r.occurred_at_s is not None}
    assert "p-e1" in unpadded  # the default stays as it was
    with pytest.raises(ValueError, match="id_digits"):
        SimConfig(id_digits=-1)


def _spans_s(events: list[Any]) -> list[float]:
    """Seconds from each conversation's first event to its last."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for event in events:
        conversation = conversation_of(event)
        t = event.occurred_at.timestamp()
        first[conversation] = min(first.get(conversation, t), t)
        last[conversation] = max(last.get(conversation, t), t)
    return sorted(last[c] - first[c] for c in first)


def test_lifecycle_scale_squeezes_whole_conversations() -> None:
    # what the benchmark's soak relies on: with both scales small, nearly every
    # conversation ends within minutes, the close days after the solve included
    base = SimConfig(seed=5, rate=5, duration_s=2 * HOUR, response_scale=0.001)
    squeezed = dataclasses.replace(base, lifecycle_scale=0.005)
    base_records = list(generate(base))
    assert list(generate(dataclasses.replace(base, lifecycle_scale=1.0))) == base_records
    squeezed_events = distinct_events(squeezed)
    long, short = _spans_s(distinct_events(base_records)), _spans_s(squeezed_events)
    p99 = int(0.99 * (len(short) - 1))
    assert long[int(0.9 * (len(long) - 1))] > 1800  # follow-ups, reopens, surveys: hours
    assert short[p99] < 600, short[p99]
    closed = [e for e in squeezed_events if getattr(e, "status", None) == "closed"]
    assert len(closed) > 100  # the days-later close now falls inside the stretch


@pytest.mark.parametrize(
    "change",
    [
        {"rate": 0},
        {"duration_s": -1},
        {"lifecycle_scale": 0},
        {"duplicate_ratio": 1.5},
        {"backlog_s": -1},
        {"channels": {}},
        {"priorities": {"critical": 1.0}},
        {
            "agent_hours": {
                "billing": {"timezone": "Mars/Olympus", "hours": {"mon": ["09:00-17:00"]}}
            }
        },
    ],
)
def test_bad_config_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimConfig(**change)


# -- JSON lines ------------------------------------------------------------------------------


def test_jsonl_round_trip(faulty: list[Record], tmp_path: Path) -> None:
    path = tmp_path / "traffic.jsonl"
    assert write_jsonl(faulty, path) == len(faulty)
    assert list(read_jsonl(path)) == faulty
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert all(
        set(line) in ({"topic", "key", "value"}, {"topic", "key", "value_b64"}) for line in lines
    )
    assert any(isinstance(line.get("value"), dict) for line in lines)
    assert any(isinstance(line.get("value"), str) for line in lines)
    assert any("value_b64" in line for line in lines)  # malformed and not even UTF-8


def test_presence_adds_shifts_of_the_agents_who_answer_and_changes_no_conversation() -> None:
    plain = SimConfig(seed=5, duration_s=2 * 86400, rate=0.5, malformed_ratio=0.01)
    with_presence = dataclasses.replace(plain, presence=True)
    records = list(generate(with_presence))
    agents = [r for r in records if r.topic_kind == "agents"]
    # the conversations, malformed records included, are the same and in the same order
    plain_records = list(generate(plain))
    assert [r for r in records if r.topic_kind != "agents"] == plain_records
    assert not any(r.topic_kind == "agents" for r in plain_records)
    events = [decode(r.value) for r in agents]
    assert all(r.key.decode() == e.agent_id for r, e in zip(agents, events, strict=True))
    times = [r.occurred_at_s for r in agents]
    assert times == sorted(times)
    assert all(plain.start_s <= t < plain.start_s + plain.duration_s for t in times)
    answering = {
        orjson.loads(r.value)["agent_id"]
        for r in records
        if r.topic_kind == "chats" and b'"agent_id"' in r.value and r.occurred_at_s is not None
    }
    assert answering <= {e.agent_id for e in events}  # every agent who answers has shifts
    statuses = collections.Counter(e.status for e in events)  # type: ignore[union-attr]
    assert set(statuses) == {"available", "busy", "away", "offline"}
    # an 8-hour shift a day each, ending offline: two days, two offlines at most
    by_agent = collections.Counter(e.agent_id for e in events if e.status == "offline")  # type: ignore[union-attr]
    assert set(by_agent.values()) <= {1, 2, 3}
