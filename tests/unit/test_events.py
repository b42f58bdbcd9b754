"""The event decoder (docs/kpis.md, "Input events"): what is accepted, with which defaults,
and why not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from deskpulse.models import events
from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import (
    DIMENSIONS,
    LAST_RESORT_REASON,
    REJECTION_REASONS,
    AgentStatusChanged,
    ChatAbandoned,
    ChatAccepted,
    ChatEnded,
    ChatRequested,
    SurveyResponded,
    TicketCreated,
    TicketReplied,
    TicketStatusChanged,
    TicketUpdated,
    decode,
)

#: The decoder's clock in these tests: 2026-11-23T10:00:00Z.
NOW_S = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()
AT = "2026-11-23T09:30:00Z"
MAX_BYTES = 512


def raw(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def ticket(**fields: Any) -> bytes:
    return raw(event_id="e1", type="ticket.created", occurred_at=AT, ticket_id="T1", **fields)


def survey(**fields: Any) -> bytes:
    base = {"event_id": "s1", "type": "survey.responded", "occurred_at": AT, "kind": "csat"}
    return orjson.dumps(base | fields)


def drop(record: bytes, field: str) -> bytes:
    data = orjson.loads(record)
    del data[field]
    return orjson.dumps(data)


# (case, raw record value, expected reason). `wrong_topic` is the engine's, not the
# decoder's: it is tested against the worker in test_worker.py.
REJECTED: list[tuple[str, bytes | None, str]] = [
    # size is checked before anything else, even on otherwise valid JSON
    ("over max_bytes", ticket(queue="q" * MAX_BYTES), "too_large"),
    (
        "latin-1, not UTF-8",
        '{"type": "ticket.created", "queue": "caf\xe9"}'.encode("latin-1"),
        "invalid_encoding",
    ),
    ("lone continuation byte", b"\x80", "invalid_encoding"),
    ("truncated JSON", ticket()[:-1], "invalid_json"),
    ("not JSON at all", b"hello", "invalid_json"),
    ("empty record", b"", "invalid_json"),
    ("trailing content", ticket() + b" x", "invalid_json"),
    ("two objects", ticket() + b"{}", "invalid_json"),
    ("byte order mark", b"\xef\xbb\xbf" + ticket(), "invalid_json"),
    ("lone surrogate escape", ticket().replace(b'"T1"', b'"\\ud800"'), "invalid_json"),
    # NaN and Infinity are not JSON (RFC 8259), even in a field that is ignored
    ("NaN in an ignored field", ticket()[:-1] + b',"x":NaN}', "invalid_json"),
    ("Infinity in an ignored field", ticket()[:-1] + b',"x":-Infinity}', "invalid_json"),
    ("tombstone (no value)", None, "invalid_json"),
    # a key twice: parsers keep the last, a consumer keeping the first would read another
    # event; in any object, however the key is spelled
    (
        "type twice",
        ticket()[:-1] + b',"type":"chat.requested","chat_id":"C1"}',
        "invalid_json",
    ),
    ("type twice, same value", ticket()[:-1] + b',"type":"ticket.created"}', "invalid_json"),
    ("ticket_id twice", ticket()[:-1] + b',"ticket_id":"T2"}', "invalid_json"),
    ("a key twice, escaped", ticket()[:-1] + b',"ticket\\u005fid":"T2"}', "invalid_json"),
    ("a key twice, spaced", ticket()[:-1] + b' , "ticket_id" : "T2"}', "invalid_json"),
    ("unknown key twice", ticket()[:-1] + b',"x":1,"x":1}', "invalid_json"),
    (
        "a key twice in a nested object",
        ticket()[:-1] + b',"x":[{"a":1,"b":{"a":1,"a":2}}]}',
        "invalid_json",
    ),
    (
        "a key twice and a bad priority",
        ticket(priority="critical")[:-1] + b',"priority":"high"}',
        "invalid_json",
    ),
    (
        "a key twice in a survey naming no conversation",
        survey(score=5)[:-1] + b',"score":4}',
        "invalid_json",
    ),
    ("JSON array", b"[1, 2]", "not_an_object"),
    ("JSON string", b'"ticket.created"', "not_an_object"),
    ("JSON null", b"null", "not_an_object"),
    ("no type", drop(ticket(), "type"), "missing_type"),
    ("type is not a string", raw(event_id="e", type=7, occurred_at=AT), "missing_type"),
    ("type is null", raw(event_id="e", type=None, occurred_at=AT), "missing_type"),
    ("unknown type", raw(event_id="e", type="ticket.deleted", occurred_at=AT), "unknown_type"),
    (
        "type in the wrong case",
        raw(event_id="e", type="Ticket.Created", occurred_at=AT),
        "unknown_type",
    ),
    ("no event_id", drop(ticket(), "event_id"), "missing_field"),
    ("no occurred_at", drop(ticket(), "occurred_at"), "missing_field"),
    ("ticket.created without ticket_id", drop(ticket(), "ticket_id"), "missing_field"),
    (
        "ticket.replied without author_role",
        raw(event_id="e", type="ticket.replied", occurred_at=AT, ticket_id="T1"),
        "missing_field",
    ),
    (
        "chat.accepted without chat_id",
        raw(event_id="e", type="chat.accepted", occurred_at=AT),
        "missing_field",
    ),
    ("survey without score", drop(survey(ticket_id="T1", score=5), "score"), "missing_field"),
    # RFC 3339 needs an offset: a naive local time is ambiguous
    ("naive timestamp", ticket().replace(b"09:30:00Z", b"09:30:00"), "naive_timestamp"),
    ("date only: no time", ticket().replace(AT.encode(), b"2026-11-23"), "invalid_timestamp"),
    ("words", ticket().replace(AT.encode(), b"yesterday"), "invalid_timestamp"),
    (
        "epoch number",
        raw(event_id="e", type="ticket.created", occurred_at=1795392000, ticket_id="T"),
        "invalid_timestamp",
    ),
    ("month 13", ticket().replace(AT.encode(), b"2026-13-23T09:30:00Z"), "invalid_timestamp"),
    # valid RFC 3339, but an instant of year 0 or 10000 in UTC, which datetime cannot hold
    (
        "before year 1 in UTC",
        ticket().replace(AT.encode(), b"0001-01-01T00:00:00+14:00"),
        "invalid_timestamp",
    ),
    (
        "after year 9999 in UTC",
        ticket().replace(AT.encode(), b"9999-12-31T23:59:59-12:00"),
        "invalid_timestamp",
    ),
    (
        "after year 9999, seven fractional digits",
        ticket().replace(AT.encode(), b"9999-12-31T23:59:59.9999999-00:01"),
        "invalid_timestamp",
    ),
    # more than max_future (300 s) ahead of NOW_S
    ("one hour ahead", ticket().replace(AT.encode(), b"2026-11-23T11:00:00Z"), "future_timestamp"),
    (
        "ahead, written in another zone",
        ticket().replace(AT.encode(), b"2026-11-23T12:00:00+01:00"),
        "future_timestamp",
    ),
    ("unknown priority", ticket(priority="critical"), "invalid_value"),
    (
        "agent status a ticket status",
        raw(event_id="e", type="agent.status_changed", occurred_at=AT, agent_id="A", status="open"),
        "invalid_value",
    ),
    (
        "agent status without agent_id",
        raw(event_id="e", type="agent.status_changed", occurred_at=AT, status="busy"),
        "missing_field",
    ),
    ("priority in upper case", ticket(priority="HIGH"), "invalid_value"),
    (
        "ticket.updated changing nothing",
        raw(event_id="e", type="ticket.updated", occurred_at=AT, ticket_id="T1"),
        "missing_field",
    ),
    (
        "ticket.updated with an unknown priority",
        raw(event_id="e", type="ticket.updated", occurred_at=AT, ticket_id="T1", priority="p1"),
        "invalid_value",
    ),
    (
        "ticket.updated with a queue of a control character",
        raw(event_id="e", type="ticket.updated", occurred_at=AT, ticket_id="T1", queue="a\tb"),
        "invalid_value",
    ),
    (
        "ticket.updated without ticket_id",
        raw(event_id="e", type="ticket.updated", occurred_at=AT, queue="billing"),
        "missing_field",
    ),
    ("empty event_id", ticket().replace(b'"e1"', b'""'), "invalid_value"),
    ("event_id of 129 chars", ticket().replace(b'"e1"', b'"' + b"e" * 129 + b'"'), "invalid_value"),
    (
        "ticket_id is a number",
        raw(event_id="e", type="ticket.created", occurred_at=AT, ticket_id=7),
        "invalid_value",
    ),
    ("empty ticket_id", ticket().replace(b'"T1"', b'""'), "invalid_value"),
    ("queue with a newline", ticket(queue="a\nb"), "invalid_value"),
    (
        "unknown author_role",
        raw(event_id="e", type="ticket.replied", occurred_at=AT, ticket_id="T", author_role="bot"),
        "invalid_value",
    ),
    (
        "public as a string",
        raw(
            event_id="e",
            type="ticket.replied",
            occurred_at=AT,
            ticket_id="T",
            author_role="agent",
            public="yes",
        ),
        "invalid_value",
    ),
    (
        "unknown status",
        raw(
            event_id="e", type="ticket.status_changed", occurred_at=AT, ticket_id="T", status="done"
        ),
        "invalid_value",
    ),
    (
        "unknown ended_by",
        raw(event_id="e", type="chat.ended", occurred_at=AT, chat_id="C", ended_by="bot"),
        "invalid_value",
    ),
    ("unknown survey kind", survey(kind="ces2", score=3, ticket_id="T1"), "invalid_value"),
    ("csat 6", survey(score=6, ticket_id="T1"), "invalid_value"),
    ("csat 0", survey(score=0, ticket_id="T1"), "invalid_value"),
    ("nps 11", survey(kind="nps", score=11, ticket_id="T1"), "invalid_value"),
    ("ces 8", survey(kind="ces", score=8, ticket_id="T1"), "invalid_value"),
    ("score as a string", survey(score="5", ticket_id="T1"), "invalid_value"),
    ("score as a float", survey(score=4.0, ticket_id="T1"), "invalid_value"),
    ("score as a bool", survey(score=True, ticket_id="T1"), "invalid_value"),
    ("survey names no conversation", survey(score=5), "missing_conversation"),
    ("survey with null ids", survey(score=5, ticket_id=None, chat_id=None), "missing_conversation"),
]


@pytest.mark.parametrize(
    ("record", "reason"),
    [pytest.param(record, reason, id=case) for case, record, reason in REJECTED],
)
def test_rejected_with_reason(record: bytes | None, reason: str) -> None:
    with pytest.raises(RejectedEvent) as caught:
        decode(record, max_bytes=MAX_BYTES, now_s=NOW_S, max_future_s=300)
    assert caught.value.reason == reason, caught.value.detail
    assert caught.value.detail
    assert "\n" not in caught.value.detail


def test_every_decoder_reason_is_in_the_table() -> None:
    covered = {reason for _, _, reason in REJECTED}
    assert covered == set(REJECTION_REASONS) - {"wrong_topic", LAST_RESORT_REASON}


@pytest.mark.parametrize(
    "record",
    [
        b'{"event_id":"e","type":"chat.abandoned","occurred_at":"0001-01-01T00:00:00Z","chat_id":"C"}',
        b'{"event_id":"e","type":"chat.abandoned","occurred_at":"0001-01-01T14:00:00+14:00","chat_id":"C"}',
        b'{"event_id":"e","type":"chat.abandoned","occurred_at":"9999-12-31T23:59:59.999999Z","chat_id":"C"}',
        b'{"event_id":"e","type":"chat.abandoned","occurred_at":"9999-12-31T23:59:59.9999999Z","chat_id":"C"}',
    ],
)
def test_the_first_and_last_instants_datetime_holds_are_accepted(record: bytes) -> None:
    assert decode(record).occurred_at.year in (1, 9999)


def test_an_error_no_reason_names_is_a_rejection_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no known record gets here: the validator itself is made to fail
    def broken(raw: bytes) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(events, "_VALIDATE_JSON", broken)
    with pytest.raises(RejectedEvent) as caught:
        decode(ticket())
    assert caught.value.reason == LAST_RESORT_REASON == "decoder_error"
    assert caught.value.detail == "OverflowError: date value out of range"


def test_a_key_twice_is_named() -> None:
    with pytest.raises(RejectedEvent) as caught:
        decode(ticket()[:-1] + b',"x":{"ty\\u0070e":1,"type":2}}')
    assert caught.value.reason == "invalid_json"
    assert caught.value.detail == "the key 'type' is written twice in one object"


def test_future_limit_is_inclusive_and_off_without_a_clock() -> None:
    at_limit = ticket().replace(AT.encode(), b"2026-11-23T10:05:00Z")
    assert decode(at_limit, now_s=NOW_S, max_future_s=300).ticket_id == "T1"
    far = ticket().replace(AT.encode(), b"2030-01-01T00:00:00Z")
    assert decode(far).ticket_id == "T1"  # no now_s: no future check


def test_size_limit_is_inclusive() -> None:
    record = ticket()
    assert decode(record, max_bytes=len(record)).ticket_id == "T1"
    with pytest.raises(RejectedEvent, match="too_large"):
        decode(record, max_bytes=len(record) - 1)


def test_dimension_defaults() -> None:
    created = decode(ticket())
    assert isinstance(created, TicketCreated)
    assert (created.channel, created.queue, created.priority) == ("other", "unassigned", "normal")
    assert created.requester_id is None
    requested = decode(raw(event_id="c0", type="chat.requested", occurred_at=AT, chat_id="C1"))
    assert isinstance(requested, ChatRequested)
    assert (requested.channel, requested.queue, requested.priority) == (
        "chat",
        "unassigned",
        "normal",
    )


def test_the_dimensions_are_the_events_own_fields_in_order() -> None:
    # the one spelling of the grouping dimensions: stored group keys, labels, output keys
    assert DIMENSIONS == ("channel", "queue", "priority")
    event = decode(ticket(channel="email", queue="billing", priority="urgent"))
    assert isinstance(event, TicketCreated)
    assert tuple(getattr(event, d) for d in DIMENSIONS) == ("email", "billing", "urgent")


def test_channel_is_lower_cased_and_queue_is_kept() -> None:
    event = decode(ticket(channel="EMail", queue="Billing EU", priority="urgent"))
    assert isinstance(event, TicketCreated)
    assert (event.channel, event.queue, event.priority) == ("email", "Billing EU", "urgent")


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("2026-11-23T09:30:00Z", datetime(2026, 11, 23, 9, 30, tzinfo=UTC)),
        ("2026-11-23T09:30:00+00:00", datetime(2026, 11, 23, 9, 30, tzinfo=UTC)),
        # an offset east of UTC is subtracted; across midnight too
        ("2026-11-23T01:15:00+05:30", datetime(2026, 11, 22, 19, 45, tzinfo=UTC)),
        ("2026-11-22T22:00:00-08:00", datetime(2026, 11, 23, 6, 0, tzinfo=UTC)),
        # milliseconds survive
        ("2026-11-23T09:30:00.125Z", datetime(2026, 11, 23, 9, 30, 0, 125000, tzinfo=UTC)),
    ],
)
def test_offsets_are_converted_to_utc(written: str, utc: datetime) -> None:
    event = decode(ticket().replace(AT.encode(), written.encode()))
    assert event.occurred_at == utc
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert event.occurred_at_s == utc.timestamp()


def test_unknown_fields_are_ignored() -> None:
    event = decode(ticket(tags=["vip"], extra={"nested": True}, schema_version=9))
    assert isinstance(event, TicketCreated)
    assert not hasattr(event, "tags")


# (raw fields beyond event_id/occurred_at, model, expected attributes)
VALID: list[tuple[dict[str, Any], type, dict[str, Any]]] = [
    (
        {"type": "ticket.created", "ticket_id": "T1", "channel": "web", "requester_id": "u9"},
        TicketCreated,
        {"conversation_id": "t:T1", "channel": "web", "requester_id": "u9"},
    ),
    (
        {"type": "ticket.replied", "ticket_id": "T1", "author_role": "agent", "agent_id": "a1"},
        TicketReplied,
        {"conversation_id": "t:T1", "author_role": "agent", "public": True, "agent_id": "a1"},
    ),
    (
        {"type": "ticket.replied", "ticket_id": "T1", "author_role": "agent", "public": False},
        TicketReplied,
        {"public": False, "agent_id": None},
    ),
    (
        {"type": "ticket.status_changed", "ticket_id": "T1", "status": "solved"},
        TicketStatusChanged,
        {"conversation_id": "t:T1", "status": "solved"},
    ),
    (
        {"type": "ticket.updated", "ticket_id": "T1", "queue": "billing"},
        TicketUpdated,
        {"conversation_id": "t:T1", "queue": "billing", "channel": None, "priority": None},
    ),
    (
        {"type": "ticket.updated", "ticket_id": "T1", "channel": "Phone", "priority": "urgent"},
        TicketUpdated,
        {"channel": "phone", "queue": None, "priority": "urgent"},
    ),
    (
        {"type": "chat.requested", "chat_id": "C1", "channel": "WhatsApp", "priority": "high"},
        ChatRequested,
        {"conversation_id": "c:C1", "channel": "whatsapp", "priority": "high"},
    ),
    (
        {"type": "chat.accepted", "chat_id": "C1", "agent_id": "a1"},
        ChatAccepted,
        {"conversation_id": "c:C1", "agent_id": "a1"},
    ),
    ({"type": "chat.abandoned", "chat_id": "C1"}, ChatAbandoned, {"conversation_id": "c:C1"}),
    (
        {"type": "chat.ended", "chat_id": "C1"},
        ChatEnded,
        {"conversation_id": "c:C1", "ended_by": None},
    ),
    (
        {"type": "chat.ended", "chat_id": "C1", "ended_by": "customer"},
        ChatEnded,
        {"ended_by": "customer"},
    ),
    (
        {"type": "survey.responded", "kind": "csat", "score": 5, "ticket_id": "T1"},
        SurveyResponded,
        {"conversation_id": "t:T1", "dimensions": (None, None, None)},
    ),
    (
        {"type": "survey.responded", "kind": "nps", "score": 0, "chat_id": "C1", "channel": "Chat"},
        SurveyResponded,
        {"conversation_id": "c:C1", "dimensions": ("chat", None, None)},
    ),
    (
        # both named: the ticket is the conversation
        {"type": "survey.responded", "kind": "ces", "score": 7, "ticket_id": "T1", "chat_id": "C1"},
        SurveyResponded,
        {"conversation_id": "t:T1", "score": 7},
    ),
    (
        {"type": "survey.responded", "kind": "nps", "score": 10, "chat_id": "C1"},
        SurveyResponded,
        {"score": 10},
    ),
    (
        {"type": "survey.responded", "kind": "csat", "score": 1, "chat_id": "C1"},
        SurveyResponded,
        {"score": 1},
    ),
    (
        {"type": "agent.status_changed", "agent_id": "A7", "status": "busy"},
        AgentStatusChanged,
        {"conversation_id": "a:A7", "status": "busy"},
    ),
]


@pytest.mark.parametrize(
    ("fields", "model", "expected"),
    [pytest.param(f, m, e, id=f"{f['type']}-{i}") for i, (f, m, e) in enumerate(VALID)],
)
def test_valid_events(fields: dict[str, Any], model: type, expected: dict[str, Any]) -> None:
    event = decode(raw(event_id="ev-1", occurred_at=AT, **fields), now_s=NOW_S)
    assert isinstance(event, model)
    assert event.type == fields["type"]
    assert event.event_id == "ev-1"
    for name, value in expected.items():
        assert getattr(event, name) == value, name


def test_every_event_type_has_a_valid_example() -> None:
    from deskpulse.models.events import EVENT_TYPES

    assert {fields["type"] for fields, _, _ in VALID} == set(EVENT_TYPES)
