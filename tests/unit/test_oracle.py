"""The KPI oracle against small hand-computed tables, one rule of docs/kpis.md at a time."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from deskpulse.streams.devtools.simulate import SimConfig, generate
from tests.oracle import compare, compute, quantile_close

BASE = 1_795_392_000  # 2026-11-23T00:00:00Z, on a bucket boundary
HOUR = 3600
_numbers = itertools.count()


def at(seconds: float) -> str:
    """RFC 3339 for BASE + seconds (microsecond precision)."""
    return (datetime.fromtimestamp(BASE, UTC) + timedelta(seconds=seconds)).isoformat()


def event(event_type: str, seconds: float, **fields: Any) -> bytes:
    fields.setdefault("event_id", f"ev-{next(_numbers)}")
    return orjson.dumps({"type": event_type, "occurred_at": at(seconds), **fields})


def created(ticket: str, seconds: float, priority: str = "normal", **dims: Any) -> bytes:
    dims = {"channel": "email", "queue": "billing", **dims}
    return event("ticket.created", seconds, ticket_id=ticket, priority=priority, **dims)


def replied(ticket: str, seconds: float, role: str = "agent", **fields: Any) -> bytes:
    return event("ticket.replied", seconds, ticket_id=ticket, author_role=role, **fields)


def requested(chat: str, seconds: float, **dims: Any) -> bytes:
    dims = {"channel": "chat", "queue": "sales", "priority": "normal", **dims}
    return event("chat.requested", seconds, chat_id=chat, **dims)


def chat(kind: str, chat_id: str, seconds: float, **fields: Any) -> bytes:
    return event(f"chat.{kind}", seconds, chat_id=chat_id, **fields)


def survey(kind: str, score: int, seconds: float, **fields: Any) -> bytes:
    return event("survey.responded", seconds, kind=kind, score=score, **fields)


def kpis(values: list[bytes], *, by: tuple[str, ...] = (), **options: Any) -> dict[str, Any]:
    options.setdefault("at_s", BASE + HOUR)
    options.setdefault("width_s", HOUR)
    return compute(values, by=by, **options)


def total(values: list[bytes], **options: Any) -> dict[str, Any]:
    groups = kpis(values, **options)["groups"]
    assert len(groups) == 1
    return groups[0]


EMPTY_GROUP = {
    "key": {},
    "tickets_created": 0,
    "first_response": {
        "count": 0,
        "mean_seconds": None,
        "p50_seconds": None,
        "p90_seconds": None,
        "p95_seconds": None,
        "within_target": 0,
        "within_target_ratio": None,
        "business": {
            "mean_seconds": None,
            "p50_seconds": None,
            "p90_seconds": None,
            "p95_seconds": None,
        },
    },
    "next_response": {
        "count": 0,
        "mean_seconds": None,
        "p50_seconds": None,
        "p90_seconds": None,
        "p95_seconds": None,
        "business": {
            "mean_seconds": None,
            "p50_seconds": None,
            "p90_seconds": None,
            "p95_seconds": None,
        },
    },
    "chats": {
        "requested": 0,
        "answered": 0,
        "abandoned": 0,
        "short_abandoned": 0,
        "abandonment_ratio": None,
        "service_level_ratio": None,
        "wait_p50_seconds": None,
        "wait_p90_seconds": None,
    },
    "csat": {"responses": 0, "satisfied": 0, "ratio": None, "average": None},
    "nps": {"responses": 0, "promoters": 0, "detractors": 0, "score": None},
    "ces": {"responses": 0, "average": None},
    "sla": {
        metric: {"achieved": 0, "breached": 0, "achieved_ratio": None}
        for metric in ("first_response", "next_response", "resolution")
    },
}


# -- document shape, null vs 0 ---------------------------------------------------------------


def test_no_events_gives_one_total_group_of_zeros_and_nulls() -> None:
    assert kpis([]) == {
        "window": {"start": "2026-11-23T00:00:00Z", "end": "2026-11-23T01:00:00Z", "seconds": 3600},
        "by": [],
        "groups": [EMPTY_GROUP],
    }


def test_grouped_document_lists_only_groups_with_samples() -> None:
    assert kpis([], by=("channel",))["groups"] == []
    # a ticket outside the window makes no group
    assert kpis([created("T1", -10)], by=("channel",))["groups"] == []


def test_counts_without_durations_keep_nulls() -> None:
    group = total([created("T1", 10), requested("C1", 10)])
    assert group["tickets_created"] == 1
    assert group["first_response"]["count"] == 0
    assert group["first_response"]["mean_seconds"] is None
    assert group["chats"]["requested"] == 1
    assert group["chats"]["abandonment_ratio"] is None  # nothing answered or abandoned yet


# -- windows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at_offset_s", "width_s", "expected_end", "expected_start"),
    [
        (HOUR, HOUR, "01:00:00", "00:00:00"),  # on a boundary: E = T
        (HOUR - 59.5, HOUR, "01:00:00", "00:00:00"),  # rounds up to the boundary
        (HOUR + 0.001, HOUR, "01:01:00", "00:01:00"),  # just past: the next boundary
        (HOUR, 300, "01:00:00", "00:55:00"),
    ],
)
def test_window_end_is_rounded_up_to_a_bucket(
    at_offset_s: float, width_s: int, expected_end: str, expected_start: str
) -> None:
    window = kpis([], at_s=BASE + at_offset_s, width_s=width_s)["window"]
    assert window == {
        "start": f"2026-11-23T{expected_start}Z",
        "end": f"2026-11-23T{expected_end}Z",
        "seconds": width_s,
    }


@pytest.mark.parametrize(
    ("created_at_s", "counted"),
    [
        (-0.001, False),  # just before E - w
        (0.0, True),  # E - w is inside
        (1800.0, True),
        (3599.999, True),  # last millisecond of the window
        (3600.0, False),  # E is outside
    ],
)
def test_window_is_half_open(created_at_s: float, counted: bool) -> None:
    assert total([created("T1", created_at_s)])["tickets_created"] == int(counted)


def test_bucket_size_decides_the_end() -> None:
    window = kpis([], at_s=BASE + 10, width_s=600, bucket_seconds=300)["window"]
    assert window["end"] == "2026-11-23T00:05:00Z"


# -- validity and duplicates -------------------------------------------------------------------


def test_invalid_records_are_ignored() -> None:
    values = [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"event_id": "x1", "type": "ticket.created", "ticket_id": "T1"}),
        orjson.dumps(
            {
                "event_id": "x2",
                "type": "ticket.created",
                "occurred_at": "2026-11-23T00:10:00",  # naive
                "ticket_id": "T2",
            }
        ),
        created("T3", 10, priority="critical"),
        survey("csat", 6, 10, ticket_id="T4", channel="web", queue="q", priority="low"),
        event("ticket.merged", 10, ticket_id="T5"),
    ]
    assert total(values) == EMPTY_GROUP


def test_a_repeated_event_id_counts_once() -> None:
    first = created("T1", 10)
    again = created("T2", 20, event_id=orjson.loads(first)["event_id"])
    group = total([first, first, again])
    assert group["tickets_created"] == 1


def test_duplicate_openers_smallest_time_then_event_id_wins() -> None:
    values = [
        created("T1", 10, channel="web", event_id="b"),
        created("T1", 10, channel="email", event_id="a"),  # same time, smaller id: wins
        created("T2", 20, channel="web"),
        created("T2", 5, channel="phone"),  # earlier: wins although it comes later
        replied("T2", 65),
    ]
    groups = kpis(values, by=("channel",))["groups"]
    assert [(g["key"], g["tickets_created"]) for g in groups] == [
        ({"channel": "email"}, 1),
        ({"channel": "phone"}, 1),
    ]
    assert groups[1]["first_response"]["mean_seconds"] == 60.0  # from the winner's time


# -- next responses and the SLA ----------------------------------------------------------


def status(ticket: str, seconds: float, value: str) -> bytes:
    return event("ticket.status_changed", seconds, ticket_id=ticket, status=value)


def test_next_response_and_sla_table() -> None:
    values = [
        # T1 (normal, 8 h target): answered at 100 s (achieved); the customer writes at
        # 200 s and 300 s (one instance), the agent answers at 900 s: 700 s
        created("T1", 0),
        replied("T1", 100),
        replied("T1", 200, role="customer"),
        replied("T1", 300, role="customer"),
        replied("T1", 900),
        # a customer reply after the solve starts nothing; a reopen lets the next one start
        status("T1", 1000, "solved"),
        replied("T1", 1100, role="customer"),
        replied("T1", 1200),
        status("T1", 1300, "open"),
        replied("T1", 1400, role="customer"),
        replied("T1", 1500),
        # T2: solved before any reply: its first response is cancelled, no SLA count
        created("T2", 0),
        status("T2", 50, "solved"),
        replied("T2", 60),
        # T3 (urgent, 1 h, created before the window): never answered, breached at
        # 1800 s once claimed
        created("T3", -1800, priority="urgent"),
        replied("T3", 10, role="customer"),
        # T4: closed, later statuses ignored; a customer reply while waiting is cancelled
        created("T4", 0),
        replied("T4", 20),
        replied("T4", 30, role="customer"),
        status("T4", 40, "closed"),
        status("T4", 50, "open"),
        replied("T4", 60, role="customer"),
        replied("T4", 70),
    ]
    group = total(values)
    assert group["next_response"]["count"] == 2
    assert group["next_response"]["mean_seconds"] == (700 + 100) / 2
    assert group["next_response"]["business"]["mean_seconds"] == (700 + 100) / 2
    assert group["first_response"]["count"] == 3  # T1, T2 (after the solve), T4
    assert group["sla"]["first_response"] == {"achieved": 2, "breached": 0, "achieved_ratio": 1.0}
    assert group["sla"]["next_response"]["achieved"] == 0  # the default policy has no target
    claimed = total(values, claimed_until_s=BASE + 1800)
    assert claimed["sla"]["first_response"] == {
        "achieved": 2,
        "breached": 1,
        "achieved_ratio": 2 / 3,
    }
    assert total(values, claimed_until_s=BASE + 1799)["sla"]["first_response"]["breached"] == 0


# -- first response time ---------------------------------------------------------------------


def test_first_response_table() -> None:
    values = [
        # T1: the earliest agent public reply wins, even delivered after a later one;
        # customer replies, system replies and private notes never count
        created("T1", 0),
        replied("T1", 5, role="system"),
        replied("T1", 10, role="customer"),
        replied("T1", 20, public=False),
        replied("T1", 200),
        replied("T1", 100),
        # T2: whole milliseconds, floored: 10.0001 - 0.0009 = 9.9992 s -> 9.999 s
        created("T2", 0.0009),
        replied("T2", 10.0001),
        # T3: a reply stamped before its ticket counts as 0
        replied("T3", 40),
        created("T3", 50),
        # T4: a reply without its ticket is never counted
        replied("T4", 30),
        # T5: ticket from before the window, reply inside: sampled at the reply, breached
        created("T5", -4000, priority="urgent"),
        replied("T5", 300),
        # T6: reply after the window: not in this window (the ticket is)
        created("T6", 60),
        replied("T6", 3600),
    ]
    group = total(values)
    assert group["tickets_created"] == 4  # T1, T2, T3, T6
    assert group["first_response"] == {
        "count": 4,
        "mean_seconds": (100_000 + 9_999 + 0 + 4_300_000) / 4 / 1000,
        "p50_seconds": 9.999,  # sorted [0, 9.999, 100, 4300][floor(0.5 * 3)]
        "p90_seconds": 100.0,  # [floor(0.9 * 3)] = [2]
        "p95_seconds": 100.0,  # [floor(0.95 * 3)] = [2]
        "within_target": 3,
        "within_target_ratio": 0.75,
        # no schedule: business time is calendar time
        "business": {
            "mean_seconds": (100_000 + 9_999 + 0 + 4_300_000) / 4 / 1000,
            "p50_seconds": 9.999,
            "p90_seconds": 100.0,
            "p95_seconds": 100.0,
        },
    }


@pytest.mark.parametrize(
    ("priority", "reply_after_s", "within"),
    [
        ("urgent", 3600, True),  # exactly on target is within
        ("urgent", 3600.001, False),
        ("high", 14400, True),
        ("high", 14400.001, False),
        ("normal", 28800, True),
        ("low", 86400, True),
        ("low", 86400.001, False),
    ],
)
def test_within_target_by_priority(priority: str, reply_after_s: float, within: bool) -> None:
    values = [created("T1", 100 - reply_after_s, priority=priority), replied("T1", 100)]
    first_response = total(values, width_s=2 * HOUR)["first_response"]
    assert (first_response["count"], first_response["within_target"]) == (1, int(within))


def test_targets_are_configurable() -> None:
    values = [created("T1", 0, priority="low"), replied("T1", 120)]
    assert total(values, targets={"low": 60})["first_response"]["within_target"] == 0


def test_first_response_once_per_ticket() -> None:
    values = [created("T1", 0), replied("T1", 10), replied("T1", 20), replied("T1", 30)]
    assert total(values)["first_response"]["count"] == 1


def test_first_reply_before_window_hides_later_replies() -> None:
    values = [created("T1", -100), replied("T1", -50), replied("T1", 50)]
    assert total(values)["first_response"]["count"] == 0


# -- chats -----------------------------------------------------------------------------------

CHAT_TABLE = [
    requested("C1", 0),
    chat("accepted", "C1", 10),  # answered, 10 s: in target
    requested("C2", 0),
    chat("accepted", "C2", 30),  # answered, 30 s: over the 20 s target
    requested("C3", 0),
    chat("abandoned", "C3", 60),  # abandoned
    requested("C4", 0),
    chat("ended", "C4", 40, ended_by="customer"),  # ended before any accept: abandoned
    requested("C5", 0),
    chat("abandoned", "C5", 3),  # short abandon (< 5 s)
    requested("C6", 0),
    chat("abandoned", "C6", 15),
    chat("accepted", "C6", 15),  # same time: accepted wins
    requested("C7", 0),
    chat("accepted", "C7", 50),
    chat("abandoned", "C7", 20),  # earlier although delivered later: abandoned
    chat("accepted", "C8", 10),  # never requested: not counted
    requested("C9", 0),
    chat("accepted", "C9", 20),  # exactly on the 20 s target: in target
    chat("ended", "C9", 400, ended_by="agent"),  # after the accept: changes nothing
    chat("ended", "C10", 5),  # delivered before its request
    requested("C10", 0),  # 5 s is not < 5 s: abandoned, not short
]


def test_chat_table() -> None:
    assert total(CHAT_TABLE)["chats"] == {
        "requested": 9,
        "answered": 4,  # C1 10 s, C2 30 s, C6 15 s, C9 20 s
        "abandoned": 4,  # C3, C4, C7, C10
        "short_abandoned": 1,  # C5
        "abandonment_ratio": 4 / 8,
        "service_level_ratio": 3 / 8,  # C1, C6, C9 within 20 s over answered + abandoned
        "wait_p50_seconds": 15.0,  # answered waits [10, 15, 20, 30][floor(0.5 * 3)]
        "wait_p90_seconds": 20.0,  # [floor(0.9 * 3)]
    }


def test_short_abandon_zero_disables_it() -> None:
    chats = total(CHAT_TABLE, short_abandon_s=0)["chats"]
    assert (chats["abandoned"], chats["short_abandoned"]) == (5, 0)
    assert chats["abandonment_ratio"] == 5 / 9


def test_answer_target_is_configurable() -> None:
    assert total(CHAT_TABLE, answer_target_s=30)["chats"]["service_level_ratio"] == 4 / 8


def test_only_short_abandons_leave_ratios_null() -> None:
    chats = total([requested("C1", 0), chat("abandoned", "C1", 1)])["chats"]
    assert chats["short_abandoned"] == 1
    assert chats["abandonment_ratio"] is None
    assert chats["service_level_ratio"] is None
    assert chats["wait_p50_seconds"] is None


def test_chat_outcome_is_sampled_at_its_own_time() -> None:
    values = [requested("C1", -30), chat("accepted", "C1", 10), requested("C2", 3590)]
    values.append(chat("abandoned", "C2", 3650))  # next window
    chats = total(values)["chats"]
    assert (chats["requested"], chats["answered"], chats["abandoned"]) == (1, 1, 0)
    assert chats["wait_p50_seconds"] == 40.0


# -- surveys ---------------------------------------------------------------------------------


def survey_table() -> list[bytes]:
    dims = {"channel": "web", "queue": "general", "priority": "low"}
    return [
        survey("csat", 5, 100, ticket_id="T1"),  # before its ticket arrives: inherits
        created("T1", 10, priority="high"),  # email / billing / high
        requested("C1", 10),  # chat / sales / normal
        survey("csat", 3, 200, chat_id="C1"),
        survey("csat", 4, 300, ticket_id="T1", **dims),  # own dimensions win
        survey("nps", 10, 400, ticket_id="T1", queue="vip"),  # partly own, rest inherited
        survey("nps", 6, 500, ticket_id="T1", chat_id="C1"),  # both: the ticket rates
        survey("ces", 7, 600, ticket_id="T9"),  # orphan: not counted
        survey("ces", 2, 600, ticket_id="T9", queue="x"),  # orphan with some dims: neither
        survey("ces", 5, 700, ticket_id="T9", **dims),  # whole dims: stands alone
        survey("csat", 1, 3600, ticket_id="T1"),  # after the window
        survey("csat", 1, -1, chat_id="C1"),  # before the window
    ]


def test_survey_dimensions_are_inherited_unless_carried() -> None:
    groups = kpis(survey_table(), by=("channel", "queue"))["groups"]
    found = {
        (g["key"]["channel"], g["key"]["queue"]): (
            g["csat"]["responses"],
            g["nps"]["responses"],
            g["ces"]["responses"],
        )
        for g in groups
    }
    assert found == {
        ("chat", "sales"): (1, 0, 0),
        ("email", "billing"): (1, 1, 0),
        ("email", "vip"): (0, 1, 0),
        ("web", "general"): (1, 0, 1),
    }


def test_survey_scores() -> None:
    group = total(survey_table())
    assert group["csat"] == {"responses": 3, "satisfied": 2, "ratio": 2 / 3, "average": 4.0}
    assert group["nps"] == {"responses": 2, "promoters": 1, "detractors": 1, "score": 0.0}
    assert group["ces"] == {"responses": 1, "average": 5.0}


@pytest.mark.parametrize(
    ("scores", "promoters", "detractors", "score"),
    [
        ([10, 10, 3], 2, 1, 100 / 3),
        ([9, 8, 7], 1, 0, 100 / 3),  # 7 and 8 are passives
        ([0, 6], 0, 2, -100.0),
    ],
)
def test_nps(scores: list[int], promoters: int, detractors: int, score: float) -> None:
    dims = {"channel": "web", "queue": "q", "priority": "low"}
    values = [survey("nps", s, 10, ticket_id=f"T{i}", **dims) for i, s in enumerate(scores)]
    nps = total(values)["nps"]
    assert nps == {
        "responses": len(scores),
        "promoters": promoters,
        "detractors": detractors,
        "score": pytest.approx(score, rel=1e-12),
    }


def test_ces_average() -> None:
    dims = {"channel": "web", "queue": "q", "priority": "low"}
    values = [survey("ces", s, 10, chat_id="C1", **dims) for s in (7, 2, 1)]
    assert total(values)["ces"] == {"responses": 3, "average": 10 / 3}


# -- grouping --------------------------------------------------------------------------------


def test_groups_follow_the_by_order_and_are_sorted() -> None:
    values = [
        created("T1", 10, channel="web", queue="b"),
        created("T2", 10, channel="email", queue="b"),
        created("T3", 10, channel="web", queue="a"),
        created("T4", 10, channel="web", queue="a"),
        requested("C1", 10, queue="a"),
    ]
    groups = kpis(values, by=("queue", "channel"))["groups"]
    assert [list(g["key"].items()) for g in groups] == [
        [("queue", "a"), ("channel", "chat")],
        [("queue", "a"), ("channel", "web")],
        [("queue", "b"), ("channel", "email")],
        [("queue", "b"), ("channel", "web")],
    ]
    assert [g["tickets_created"] for g in groups] == [0, 2, 1, 1]
    assert kpis(values, by=("queue", "channel"))["by"] == ["queue", "channel"]


def test_a_group_with_only_a_first_response_is_listed() -> None:
    values = [created("T1", -100, channel="phone"), replied("T1", 10)]
    groups = kpis(values, by=("channel",))["groups"]
    assert [(g["key"], g["tickets_created"], g["first_response"]["count"]) for g in groups] == [
        ({"channel": "phone"}, 0, 1)
    ]


def test_defaults_of_missing_dimensions() -> None:
    value = event("ticket.created", 10, ticket_id="T1")
    groups = kpis([value], by=("channel", "queue", "priority"))["groups"]
    assert groups[0]["key"] == {"channel": "other", "queue": "unassigned", "priority": "normal"}


def test_unknown_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="agent"):
        kpis([], by=("agent",))


# -- on simulated traffic ----------------------------------------------------------------------


def test_delivery_order_does_not_change_the_result() -> None:
    config = SimConfig(
        seed=3,
        duration_s=1800,
        rate=15,
        duplicate_ratio=0.05,
        out_of_order=0.1,
        malformed_ratio=0.02,
        response_scale=0.05,
    )
    values = [record.value for record in generate(config)]
    options = {"at_s": config.start_s + 1750, "width_s": 1800, "by": ("channel", "priority")}
    expected = compute(values, **options)
    assert len(expected["groups"]) > 5
    shuffled = list(values)
    random.Random(1).shuffle(shuffled)
    assert compute(shuffled, **options) == expected
    assert compute(list(reversed(values)), **options) == expected


def test_simulated_traffic_fills_every_kpi() -> None:
    config = SimConfig(seed=4, duration_s=2 * HOUR, rate=10, response_scale=0.05)
    values = [record.value for record in generate(config)]
    group = compute(values, at_s=config.start_s + 2 * HOUR, width_s=2 * HOUR, by=())["groups"][0]
    assert group["tickets_created"] > 100
    assert group["first_response"]["count"] > 100
    assert 0 < group["first_response"]["within_target_ratio"] <= 1
    assert group["chats"]["answered"] > 50
    assert group["chats"]["abandoned"] > 0
    assert group["chats"]["short_abandoned"] > 0
    assert group["csat"]["responses"] > 10
    assert group["nps"]["responses"] > 0
    assert group["ces"]["responses"] > 0


# -- comparing documents -----------------------------------------------------------------------


def test_compare_agrees_with_itself() -> None:
    document = kpis(CHAT_TABLE + survey_table(), by=("channel",))
    assert compare(document, document) == []


def test_compare_names_every_difference() -> None:
    expected = kpis(CHAT_TABLE)
    actual = orjson.loads(orjson.dumps(expected))
    group = actual["groups"][0]
    group["chats"]["answered"] = 5  # a count
    group["chats"]["abandonment_ratio"] += 1e-6  # a ratio, beyond 1e-9
    group["chats"]["wait_p50_seconds"] = 15.1  # a quantile, within 1 %
    group["chats"]["wait_p90_seconds"] = 20.4  # a quantile, 2 % off
    group["tickets_created"] = 0.0  # a count that is not an int
    group["first_response"]["mean_seconds"] = 0  # null expected
    group["csat"]["responses"] = None  # 0 expected
    del group["ces"]
    assert sorted(compare(actual, expected)) == [
        "groups[].ces: missing (expected {'responses': 0, 'average': None})",
        "groups[].chats.abandonment_ratio: got 0.500001, expected 0.5",
        "groups[].chats.answered: got 5, expected exactly 4",
        "groups[].chats.wait_p90_seconds: got 20.4, expected 20.0 within 1 %",
        "groups[].csat.responses: got None, expected 0",
        "groups[].first_response.mean_seconds: got 0, expected None",
        "groups[].tickets_created: got 0.0, expected exactly 0",
    ]


def test_compare_tolerates_float_noise_in_ratios() -> None:
    expected = kpis(CHAT_TABLE)
    actual = orjson.loads(orjson.dumps(expected))
    actual["groups"][0]["chats"]["service_level_ratio"] *= 1 + 1e-12
    assert compare(actual, expected) == []


def test_compare_reports_groups_and_window() -> None:
    values = [created("T1", 10, channel="web"), created("T2", 10, channel="email")]
    expected = kpis(values, by=("channel",))
    actual = kpis([*values[:1], created("T3", 10, channel="phone")], by=("channel",))
    actual["window"]["seconds"] = 60
    assert sorted(compare(actual, expected)) == [
        "groups[channel=email]: missing",
        "groups[channel=phone]: unexpected",
        "window.seconds: got 60, expected exactly 3600",
    ]


def test_compare_checks_group_order() -> None:
    values = [created("T1", 10, channel="web"), created("T2", 10, channel="email")]
    expected = kpis(values, by=("channel",))
    actual = dict(expected, groups=list(reversed(expected["groups"])))
    assert compare(actual, expected) == [
        "groups: order [{'channel': 'web'}, {'channel': 'email'}], "
        "expected [{'channel': 'email'}, {'channel': 'web'}]"
    ]


@pytest.mark.parametrize(
    ("actual", "expected", "close"),
    [
        (100.9, 100.0, True),
        (101.1, 100.0, False),
        (99.0, 100.0, True),
        (0.0009, 0.0, True),  # near zero: 1e-3 absolute
        (0.002, 0.0, False),
        (None, None, True),
        (None, 1.0, False),
        (0.0, None, False),
    ],
)
def test_quantile_close(actual: float | None, expected: float | None, close: bool) -> None:
    assert quantile_close(actual, expected) is close
