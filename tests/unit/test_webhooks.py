"""Webhook signatures and the Zendesk and Intercom mappings (streams/webhooks.py), and the
pure parts of streams/ingest.py: the body splitter and the rate limit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from deskpulse.models.errors import RejectedEvent, SettingsError
from deskpulse.models.settings import load_settings
from deskpulse.models.wire import decode_record
from deskpulse.streams import ingest
from deskpulse.streams.ingest import IngestMetrics, RateLimit, split_events
from deskpulse.streams.webhooks import (
    Ignored,
    IntercomMapping,
    ZendeskMapping,
    intercom_signature,
    intercom_signature_matches,
    map_intercom,
    map_zendesk,
    zendesk_signature,
    zendesk_signature_problem,
)
from tests import webhook_samples as samples

T0 = 1_796_000_000  # 2026-11-30T00:53:20Z
STAMP = "2026-12-06T01:00:00Z"
STAMP_S = datetime(2026, 12, 6, 1, tzinfo=UTC).timestamp()


# ---------------------------------------------------------------- signatures

# Expected values computed with `openssl dgst -hmac sek` (another implementation):
#   printf '%s' '2026-12-06T01:00:00Z{"a":1}' | openssl dgst -sha256 -hmac sek -binary | base64
#   printf '%s' '{"a":1}' | openssl dgst -sha1 -hmac sek
ZENDESK_EXPECTED = "ZNwf1f1u45FN3jXyN49w151AC3eB+i2SfZ4bLVMR7WM="
INTERCOM_EXPECTED = "sha1=c19142ad032102d5d9546d40ca0765cc6392b351"


def test_zendesk_signature_is_base64_hmac_sha256_of_timestamp_and_body() -> None:
    assert zendesk_signature("sek", STAMP, b'{"a":1}') == ZENDESK_EXPECTED


def test_intercom_signature_is_sha1_hex_hmac_of_the_body() -> None:
    assert intercom_signature("sek", b'{"a":1}') == INTERCOM_EXPECTED
    assert intercom_signature_matches("sek", INTERCOM_EXPECTED, b'{"a":1}')
    assert intercom_signature_matches(
        "sek", INTERCOM_EXPECTED.upper().replace("SHA1", "sha1"), b'{"a":1}'
    )
    assert not intercom_signature_matches("sek", INTERCOM_EXPECTED, b'{"a":2}')
    assert not intercom_signature_matches("other", INTERCOM_EXPECTED, b'{"a":1}')
    assert not intercom_signature_matches("sek", None, b'{"a":1}')
    assert not intercom_signature_matches(
        "sek", "c19142ad032102d5d9546d40ca0765cc6392b351", b'{"a":1}'
    )


@pytest.mark.parametrize(
    ("signature", "timestamp", "body", "now_s", "problem"),
    [
        # good and fresh
        (ZENDESK_EXPECTED, STAMP, b'{"a":1}', STAMP_S, None),
        # within the 300 s either way
        (ZENDESK_EXPECTED, STAMP, b'{"a":1}', STAMP_S + 300, None),
        (ZENDESK_EXPECTED, STAMP, b'{"a":1}', STAMP_S - 300, None),
        # stale, and from the future beyond the tolerance
        (ZENDESK_EXPECTED, STAMP, b'{"a":1}', STAMP_S + 301, "more than 300s"),
        (ZENDESK_EXPECTED, STAMP, b'{"a":1}', STAMP_S - 301, "more than 300s"),
        # the body or the timestamp changed: the signature no longer matches
        (ZENDESK_EXPECTED, STAMP, b'{"a":2}', STAMP_S, "does not match"),
        (ZENDESK_EXPECTED, "2026-12-06T01:00:01Z", b'{"a":1}', STAMP_S, "does not match"),
        # missing headers
        (None, STAMP, b'{"a":1}', STAMP_S, "no X-Zendesk-Webhook-Signature"),
        (ZENDESK_EXPECTED, None, b'{"a":1}', STAMP_S, "no X-Zendesk-Webhook-Signature"),
        ("", STAMP, b'{"a":1}', STAMP_S, "no X-Zendesk-Webhook-Signature"),
    ],
)
def test_zendesk_signature_problem(
    signature: str | None, timestamp: str | None, body: bytes, now_s: float, problem: str | None
) -> None:
    found = zendesk_signature_problem("sek", signature, timestamp, body, now_s=now_s, max_age_s=300)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_signed_timestamp_that_is_no_time_is_refused() -> None:
    signature = zendesk_signature("sek", "yesterday", b"{}")
    found = zendesk_signature_problem(
        "sek", signature, "yesterday", b"{}", now_s=STAMP_S, max_age_s=300
    )
    assert found is not None and "not an ISO 8601 time" in found


# ---------------------------------------------------------------- Zendesk


def _decoded(events: list[dict[str, Any]]) -> list[Any]:
    """Each mapped event through the engine's decoder: a mapping only makes valid events."""
    return [decode_record(orjson.dumps(event))[0] for event in events]


def _zendesk(payload: dict[str, Any], **mapping: Any) -> list[dict[str, Any]]:
    mapped = map_zendesk(payload, ZendeskMapping(**mapping))
    assert isinstance(mapped, list)
    _decoded(mapped)
    return mapped


def test_zendesk_ticket_created_maps_dimensions_and_time() -> None:
    payload = samples.zendesk_created(
        5158, T0 + 0.5, priority="URGENT", group_id="8447320466430", channel="Web_Form"
    )
    [event] = _zendesk(payload, queue_map={"8447320466430": "billing"})
    assert event == {
        "event_id": f"zendesk:{payload['id']}",
        # nanoseconds cut to microseconds
        "occurred_at": "2026-11-30T00:53:20.500000Z",
        "ticket_id": "5158",
        "type": "ticket.created",
        "channel": "web_form",
        "queue": "billing",
        "priority": "urgent",
        "requester_id": "8447388090494",
    }
    [decoded] = _decoded([event])
    assert decoded.priority == "urgent" and decoded.queue == "billing"


@pytest.mark.parametrize(
    ("queue_field", "queue_map", "detail", "queue"),
    [
        # the group's id, unmapped: the id as text (numbers and strings alike)
        ("group", {}, {"group_id": 360001}, "360001"),
        ("group", {}, {"group_id": "360001"}, "360001"),
        ("group", {"360001": "billing"}, {"group_id": 360001}, "billing"),
        # brand and form, by setting
        ("brand", {"77": "acme"}, {"brand_id": 77}, "acme"),
        ("form", {}, {"form_id": "6876543"}, "6876543"),
        # no value in the field: the schema's default
        ("group", {}, {"group_id": None}, None),
        ("form", {}, {"form_id": ""}, None),
    ],
)
def test_zendesk_queue_field_and_map(
    queue_field: str, queue_map: dict[str, str], detail: dict[str, Any], queue: str | None
) -> None:
    payload = samples.zendesk_created(1, T0, **detail)
    [event] = _zendesk(payload, queue_field=queue_field, queue_map=queue_map)
    assert event.get("queue") == queue
    assert _decoded([event])[0].queue == (queue or "unassigned")


@pytest.mark.parametrize(
    ("channel", "channel_map", "expected"),
    [
        ("email", {}, "email"),
        ("MOBILE_SDK", {}, "mobile_sdk"),
        ("native_messaging", {"native_messaging": "chat"}, "chat"),
    ],
)
def test_zendesk_channel_is_via_channel_lower_cased_then_mapped(
    channel: str, channel_map: dict[str, str], expected: str
) -> None:
    [event] = _zendesk(samples.zendesk_created(1, T0, channel=channel), channel_map=channel_map)
    assert event["channel"] == expected


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ("LOW", "low"),
        ("normal", "normal"),
        ("High", "high"),
        ("URGENT", "urgent"),
        (None, "normal"),
    ],
)
def test_zendesk_priority_any_case_none_is_normal(priority: str | None, expected: str) -> None:
    [event] = _zendesk(samples.zendesk_created(1, T0, priority=priority))
    assert _decoded([event])[0].priority == expected


def test_zendesk_ticket_created_in_another_status_sets_it_at_creation() -> None:
    payload = samples.zendesk_created(1, T0, status="OPEN")
    created, status = _zendesk(payload)
    assert created["type"] == "ticket.created"
    assert status == {
        "event_id": f"zendesk:{payload['id']}:status",
        "occurred_at": created["occurred_at"],
        "ticket_id": "1",
        "type": "ticket.status_changed",
        "status": "open",
    }


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ("OPEN", "open"),
        ("pending", "pending"),
        ("HOLD", "hold"),
        ("SOLVED", "solved"),
        ("Closed", "closed"),
    ],
)
def test_zendesk_status_changed(current: str, expected: str) -> None:
    payload = samples.zendesk_status_changed("35436", T0, current)
    [event] = _zendesk(payload)
    assert event["type"] == "ticket.status_changed" and event["status"] == expected
    assert event["event_id"] == f"zendesk:{payload['id']}"


@pytest.mark.parametrize(
    ("staff", "public", "role"),
    [
        (True, True, "agent"),
        (True, False, "agent"),
        (False, True, "customer"),
        (False, False, "customer"),
    ],
)
def test_zendesk_comment_added_is_a_reply_by_its_author(
    staff: bool, public: bool, role: str
) -> None:
    [event] = _zendesk(
        samples.zendesk_comment_added(7, T0, staff=staff, public=public, author_id=42)
    )
    assert event["type"] == "ticket.replied"
    assert event["author_role"] == role
    assert event["public"] is public
    assert event.get("agent_id") == ("42" if staff else None)


@pytest.mark.parametrize(
    "event_type",
    [
        "ticket.agent_assignment_changed",
        "ticket.tags_changed",
        "user.created",
    ],
)
def test_zendesk_events_that_change_no_kpi_are_ignored(event_type: str) -> None:
    payload = samples.zendesk_changed(event_type, 7, T0, "HIGH", "LOW")
    mapped = map_zendesk(payload, ZendeskMapping())
    assert isinstance(mapped, Ignored) and event_type in mapped.why


@pytest.mark.parametrize(
    ("current", "priority"),
    [("URGENT", "urgent"), ("high", "high"), ("Low", "low"), (None, "normal")],
)
def test_zendesk_priority_changed_is_a_ticket_updated(current: str | None, priority: str) -> None:
    payload = samples.zendesk_priority_changed(35436, T0 + 0.25, current)
    [event] = _zendesk(payload)
    assert event == {
        "event_id": f"zendesk:{payload['id']}",
        "occurred_at": "2026-11-30T00:53:20.250000Z",
        "ticket_id": "35436",
        "type": "ticket.updated",
        "priority": priority,
    }
    [decoded] = _decoded([event])
    assert decoded.priority == priority and decoded.queue is None


@pytest.mark.parametrize(
    ("event_type", "queue_field", "current", "queue"),
    [
        ("ticket.group_assignment_changed", "group", "360001", "billing"),
        ("ticket.group_assignment_changed", "group", "360002", "360002"),
        ("ticket.group_assignment_changed", "group", None, "unassigned"),
        ("ticket.brand_changed", "brand", "77", "acme"),
        ("ticket.form_changed", "form", "6876543", "6876543"),
    ],
)
def test_zendesk_queue_field_changed_is_a_ticket_updated(
    event_type: str, queue_field: str, current: str | None, queue: str
) -> None:
    payload = samples.zendesk_field_changed(event_type, 7, T0, current, "360009")
    mapping = {"queue_field": queue_field, "queue_map": {"360001": "billing", "77": "acme"}}
    [event] = _zendesk(payload, **mapping)
    assert event["type"] == "ticket.updated" and event["queue"] == queue
    assert set(event) == {"event_id", "occurred_at", "ticket_id", "type", "queue"}
    # the same change as an object with the id, and as a number
    as_object = payload | {"event": {"current": {"id": current}, "previous": None}}
    assert _zendesk(as_object, **mapping) == [event]
    if current is not None:
        as_number = payload | {"event": {"current": int(current), "previous": None}}
        assert _zendesk(as_number, **mapping) == [event]


@pytest.mark.parametrize(
    ("event_type", "queue_field"),
    [
        ("ticket.group_assignment_changed", "brand"),
        ("ticket.brand_changed", "group"),
        ("ticket.form_changed", "group"),
    ],
)
def test_zendesk_changes_of_a_field_the_queue_does_not_come_from_are_ignored(
    event_type: str, queue_field: str
) -> None:
    payload = samples.zendesk_field_changed(event_type, 7, T0, "1", "2")
    mapped = map_zendesk(payload, ZendeskMapping(queue_field=queue_field))  # type: ignore[arg-type]
    assert isinstance(mapped, Ignored)
    assert event_type in mapped.why and queue_field in mapped.why


def test_zendesk_changes_it_cannot_map() -> None:
    priority = samples.zendesk_priority_changed(7, T0, "HIGH")
    assert "`event`" in _unmappable(priority | {"event": None})
    assert "`event.current`" in _unmappable(priority | {"event": {"current": 3}})
    group = samples.zendesk_field_changed("ticket.group_assignment_changed", 7, T0, "1", "2")
    assert "`event.current`" in _unmappable(group | {"event": {"current": True}})
    # a priority Zendesk does not have is refused by the event decoder (a 422 at ingest)
    [odd] = map_zendesk(priority | {"event": {"current": "P1"}}, ZendeskMapping())  # type: ignore[misc]
    with pytest.raises(RejectedEvent):
        _decoded([odd])


def _unmappable(payload: Any, reason: str = "unmappable") -> str:
    with pytest.raises(RejectedEvent) as caught:
        map_zendesk(payload, ZendeskMapping())
    assert caught.value.reason == reason
    return caught.value.detail


def test_zendesk_payloads_it_cannot_map() -> None:
    created = samples.zendesk_created(1, T0)
    assert "trigger" in _unmappable({"ticket": {"id": 1}})  # a trigger webhook's own JSON
    _unmappable([created], reason="not_an_object")
    assert "`detail`" in _unmappable(created | {"detail": None})
    assert "`detail.id`" in _unmappable(created | {"detail": {"id": None}})
    assert "`id`" in _unmappable(created | {"id": None})
    assert "`time`" in _unmappable(created | {"time": "yesterday"})
    assert "`time`" in _unmappable(created | {"time": "2026-12-06T01:00:00"})  # no offset
    status = samples.zendesk_status_changed(1, T0, "DELETED")
    assert "'DELETED' is no deskpulse status" in _unmappable(status)
    comment = samples.zendesk_comment_added(1, T0, staff=True)
    del comment["event"]["comment"]["author"]["is_staff"]
    assert "is_staff" in _unmappable(comment)


def test_zendesk_bad_priority_is_left_to_the_decoder() -> None:
    [event] = map_zendesk(samples.zendesk_created(1, T0, priority="CRITICAL"), ZendeskMapping())  # type: ignore[misc]
    with pytest.raises(RejectedEvent) as caught:
        decode_record(orjson.dumps(event))
    assert caught.value.reason == "invalid_value"


def test_zendesk_a_retried_delivery_maps_to_the_same_events() -> None:
    payload = samples.zendesk_comment_added(7, T0, staff=True)
    again = orjson.loads(orjson.dumps(payload))
    assert map_zendesk(payload, ZendeskMapping()) == map_zendesk(again, ZendeskMapping())


# ---------------------------------------------------------------- Intercom


def _conversation(*parts: dict[str, Any], **options: Any) -> dict[str, Any]:
    return samples.intercom_conversation("1911149811", T0, list(parts), **options)


def _intercom(
    topic: str, conversation: dict[str, Any], **mapping: Any
) -> list[dict[str, Any]] | Ignored:
    notification = samples.intercom_notification(topic, conversation, notification_id="notif_1")
    mapped = map_intercom(notification, IntercomMapping(**mapping))
    if isinstance(mapped, list):
        _decoded(mapped)
    return mapped


def test_intercom_user_created_is_a_chat_requested_at_the_conversation_start() -> None:
    conversation = _conversation(team_assignee_id="5017691", priority="priority")
    assert _intercom("conversation.user.created", conversation, queue_map={"5017691": "tier1"}) == [
        {
            "event_id": "intercom:notif_1",
            "occurred_at": "2026-11-30T00:53:20.000000Z",
            "chat_id": "1911149811",
            "type": "chat.requested",
            "channel": "chat",
            "queue": "tier1",
            "priority": "high",
        }
    ]


def test_intercom_admin_replied_is_an_accept_at_the_newest_part() -> None:
    conversation = _conversation(
        samples.intercom_part("1", T0 + 5, author="user"),
        samples.intercom_part("2", T0 + 30, author="admin"),
    )
    assert _intercom("conversation.admin.replied", conversation) == [
        {
            "event_id": "intercom:notif_1",
            "occurred_at": "2026-11-30T00:53:50.000000Z",
            "chat_id": "1911149811",
            "type": "chat.accepted",
            "agent_id": "814860",
        }
    ]


def test_intercom_admin_closed_ends_the_chat() -> None:
    conversation = _conversation(samples.intercom_part("9", T0 + 600, part_type="close"))
    [event] = _intercom("conversation.admin.closed", conversation)  # type: ignore[misc]
    assert event["type"] == "chat.ended" and event["ended_by"] == "agent"
    assert event["occurred_at"] == "2026-11-30T01:03:20.000000Z"


@pytest.mark.parametrize(
    "topic",
    [
        "conversation.user.replied",
        "conversation.admin.assigned",
        "conversation.admin.opened",
        "conversation.admin.snoozed",
        "conversation.admin.noted",
        "contact.created",
        "ping",
    ],
)
def test_intercom_topics_no_chat_kpi_needs_are_ignored(topic: str) -> None:
    conversation = _conversation(samples.intercom_part("1", T0 + 1))
    assert isinstance(_intercom(topic, conversation), Ignored)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (
            "conversation.user.replied",
            {"type": "ticket.replied", "author_role": "customer", "public": True},
        ),
        (
            "conversation.admin.replied",
            {
                "type": "ticket.replied",
                "author_role": "agent",
                "public": True,
                "agent_id": "814860",
            },
        ),
        (
            "conversation.admin.noted",
            {
                "type": "ticket.replied",
                "author_role": "agent",
                "public": False,
                "agent_id": "814860",
            },
        ),
        ("conversation.admin.closed", {"type": "ticket.status_changed", "status": "solved"}),
        ("conversation.admin.opened", {"type": "ticket.status_changed", "status": "open"}),
        ("conversation.admin.snoozed", {"type": "ticket.status_changed", "status": "pending"}),
    ],
)
def test_intercom_as_tickets(topic: str, expected: dict[str, Any]) -> None:
    author = "user" if topic == "conversation.user.replied" else "admin"
    conversation = _conversation(samples.intercom_part("3", T0 + 60, author=author))
    [event] = _intercom(topic, conversation, as_kind="ticket")  # type: ignore[misc]
    assert event == {
        "event_id": "intercom:notif_1",
        "occurred_at": "2026-11-30T00:54:20.000000Z",
        "ticket_id": "1911149811",
        **expected,
    }


def test_intercom_user_created_as_a_ticket_takes_the_source_channel() -> None:
    conversation = _conversation(source_type="email")
    [event] = _intercom("conversation.user.created", conversation, as_kind="ticket")  # type: ignore[misc]
    assert event["type"] == "ticket.created" and event["channel"] == "email"
    assert event.get("queue") is None


@pytest.mark.parametrize(
    ("team", "queue"),
    [("5017691", "tier2"), ("5017692", "5017692"), (5017693, "5017693"), (None, "unassigned")],
)
def test_intercom_admin_assigned_as_a_ticket_moves_it_to_its_team(
    team: str | int | None, queue: str
) -> None:
    """As tickets, an assignment is a ``ticket.updated`` naming the conversation's team now
    as its queue (mapped as at creation), from the assignment part's time on."""
    conversation = _conversation(
        samples.intercom_part("4", T0 + 90, part_type="assignment"), team_assignee_id=team
    )
    mapped = _intercom(
        "conversation.admin.assigned",
        conversation,
        as_kind="ticket",
        queue_map={"5017691": "tier2"},
    )
    assert mapped == [
        {
            "event_id": "intercom:notif_1",
            "occurred_at": "2026-11-30T00:54:50.000000Z",
            "ticket_id": "1911149811",
            "type": "ticket.updated",
            "queue": queue,
        }
    ]


def test_intercom_event_id_without_a_notification_id() -> None:
    conversation = _conversation(samples.intercom_part("77", T0 + 9))
    notification = samples.intercom_notification(
        "conversation.admin.replied", conversation, notification_id=None
    )
    [event] = map_intercom(notification, IntercomMapping())  # type: ignore[misc]
    assert event["event_id"] == "intercom:conversation.admin.replied:1911149811:77"


def test_intercom_payloads_it_cannot_map() -> None:
    def reason(payload: Any) -> str:
        with pytest.raises(RejectedEvent) as caught:
            map_intercom(payload, IntercomMapping())
        return f"{caught.value.reason}: {caught.value.detail}"

    good = samples.intercom_notification("conversation.user.created", _conversation())
    assert reason("text").startswith("not_an_object")
    assert "notification_event" in reason(good | {"type": "event"})
    assert "`data.item`" in reason(good | {"data": {"item": None}})
    item = dict(good["data"]["item"], created_at="yesterday")
    assert "created_at" in reason(good | {"data": {"item": item}})
    item = dict(good["data"]["item"], id=None)
    assert "`data.item.id`" in reason(good | {"data": {"item": item}})


# ---------------------------------------------------------------- the events body, the limit


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # a JSON array: each element byte for byte, numbered by position
        (b'[{"a":1}, {"b" :2}]', [(1, b'{"a":1}'), (2, b'{"b" :2}')]),
        (b"  []", []),
        # an array that is no JSON: one record, the whole body (the decoder rejects it)
        (b'[{"a":1},', [(1, b'[{"a":1},')]),
        # NDJSON: blank lines skipped, numbers are the lines', CRLF allowed
        (b'{"a":1}\n\n{"b":2}\r\n', [(1, b'{"a":1}'), (3, b'{"b":2}')]),
        (b'{"a":1}', [(1, b'{"a":1}')]),
        (b"\n \n", []),
    ],
)
def test_split_events(body: bytes, expected: list[tuple[int, bytes]]) -> None:
    assert split_events(body) == expected


def test_rate_limit_lets_a_second_of_requests_through_then_spaces_them() -> None:
    limit = RateLimit(10.0)
    assert [limit.take(100.0) for _ in range(10)] == [0.0] * 10
    assert limit.take(100.0) == pytest.approx(0.1)
    assert limit.take(100.1) == 0.0  # a token came back
    assert limit.take(100.1) > 0
    assert RateLimit(0.0).take(0.0) == 0.0  # 0: no limit


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"DESKPULSE_INGEST_HOST": "0.0.0.0"},
            "DESKPULSE_INGEST_TOKEN: needed to listen on 0.0.0.0",
        ),
        ({"DESKPULSE_INGEST_HOST": "0.0.0.0", "DESKPULSE_INGEST_TOKEN": "s3cret"}, None),
        ({"DESKPULSE_INGEST_HOST": "localhost"}, None),
        ({"DESKPULSE_INGEST_HOST": "::1"}, None),
        ({"DESKPULSE_INGEST": "true", "DESKPULSE_INGEST_PORT": "6066"}, "DESKPULSE_INGEST_PORT"),
        ({"DESKPULSE_ZENDESK_QUEUE_FIELD": "organization"}, "DESKPULSE_ZENDESK_QUEUE_FIELD"),
        ({"DESKPULSE_INTERCOM_AS": "email"}, "DESKPULSE_INTERCOM_AS"),
        ({"DESKPULSE_WEBHOOK_MAX_AGE": "0s"}, "DESKPULSE_WEBHOOK_MAX_AGE"),
        ({"DESKPULSE_ZENDESK_QUEUE_MAP": '{"1": ""}'}, "DESKPULSE_ZENDESK_QUEUE_MAP"),
        ({"DESKPULSE_ZENDESK_SIGNING_SECRET": " "}, "DESKPULSE_ZENDESK_SIGNING_SECRET"),
    ],
)
def test_ingest_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if problem is None:
        settings = load_settings()
        assert settings.webhook_max_age == 300 and settings.ingest_port == 6067
        return
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(problem)
    assert "\n" not in str(caught.value)


def test_ingest_defaults() -> None:
    """What an unconfigured deployment gets: loopback on 6067, 1 MiB bodies, no limit,
    the queue from Zendesk groups, Intercom conversations as chats, both helpdesks off."""
    settings = load_settings()
    assert (settings.ingest, settings.ingest_host, settings.ingest_port) == (
        False,
        "127.0.0.1",
        6067,
    )
    assert settings.ingest_max_bytes == 1_048_576 and settings.ingest_rate == 0
    assert settings.ingest_token is None and settings.webhook_max_age == 300
    assert settings.zendesk_signing_secret is None and settings.intercom_client_secret is None
    assert settings.zendesk_queue_field == "group" and settings.intercom_as == "chat"


def test_refused_requests_are_said_at_once_then_once_a_minute_with_their_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(ingest.time, "monotonic", lambda: clock[0])
    metrics = IngestMetrics()
    with caplog.at_level("WARNING", logger="deskpulse.ingest"):
        metrics.refused("zendesk", "the signature does not match")
        for second in (1.0, 30.0, 59.0):
            clock[0] = 1000.0 + second
            metrics.refused("zendesk", "the signature does not match")
        metrics.refused("intercom", "no X-Hub-Signature header")  # a source of its own
        clock[0] = 1060.0
        metrics.refused("zendesk", "more than 300s from the server's clock")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("ingest: 1 request(s) to /ingest/zendesk refused")
    assert lines[1].startswith("ingest: 1 request(s) to /ingest/intercom refused")
    # the three held back and this one; the last reason named
    assert lines[2].startswith("ingest: 4 request(s) to /ingest/zendesk refused")
    assert "the last: more than 300s" in lines[2]


def test_the_ingest_metrics_start_at_zero_for_every_source() -> None:
    text = IngestMetrics().exposition().decode()
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert found == {
        **{
            ("deskpulse_ingest_requests_total", (("code", "401"), ("source", source))): 0.0
            for source in ("events", "zendesk", "intercom")
        },
        **{
            ("deskpulse_ingest_records_total", (("outcome", outcome), ("source", source))): 0.0
            for source in ("events", "zendesk", "intercom")
            for outcome in ("accepted", "rejected", "ignored")
        },
    }


def test_every_answer_to_an_ingest_route_is_counted_by_its_code() -> None:
    """aiohttp's own answers (405) too, and the server's before the broker is reached
    (503); nothing else (``/readyz``, ``/metrics``) is."""
    from aiohttp.test_utils import TestClient, TestServer

    settings = load_settings(ingest_token=SecretStr("tok"))
    served = ingest.Ingest(settings)

    async def run() -> str:
        async with TestClient(TestServer(served.application())) as client:
            assert (await client.get("/ingest/zendesk")).status == 405
            assert (await client.post("/ingest/zendesk", data=b"{}")).status == 404  # off
            assert (await client.post("/ingest/events", data=b"{}")).status == 401
            line = orjson.dumps(
                {
                    "event_id": "e1",
                    "type": "chat.requested",
                    "occurred_at": "2026-12-07T10:00:00Z",
                    "chat_id": "c1",
                }
            )
            authorized = {"Authorization": "Bearer tok"}
            answer = await client.post("/ingest/events", data=line, headers=authorized)
            assert answer.status == 503  # the broker was never reached
            assert (await client.get("/readyz")).status == 503
            metrics = await client.get("/metrics")
            assert metrics.status == 200
            return await metrics.text()

    counted = {
        (sample.labels["source"], sample.labels["code"]): sample.value
        for family in text_string_to_metric_families(asyncio.run(run()))
        for sample in family.samples
        if sample.name == "deskpulse_ingest_requests_total" and sample.value
    }
    assert counted == {
        ("zendesk", "405"): 1,
        ("zendesk", "404"): 1,
        ("events", "401"): 1,
        ("events", "503"): 1,
    }


def test_the_ingest_metrics_ask_for_the_web_token_when_told_to() -> None:
    """With ``DESKPULSE_METRICS_REQUIRE_TOKEN`` the ingest port's ``/metrics`` answers 401
    (with the bearer challenge) to a request without the web token, as the worker's does;
    without the setting it is open."""
    from aiohttp.test_utils import TestClient, TestServer

    async def statuses(settings: Any) -> list[tuple[int, str | None]]:
        served = ingest.Ingest(settings)
        async with TestClient(TestServer(served.application())) as client:
            answers = [
                await client.get("/metrics"),
                await client.get("/metrics", headers={"Authorization": "Bearer wrong"}),
                await client.get("/metrics", headers={"Authorization": "Bearer web"}),
            ]
            return [(a.status, a.headers.get("WWW-Authenticate")) for a in answers]

    guarded = load_settings(web_token=SecretStr("web"), metrics_require_token=True)
    challenge = 'Bearer realm="deskpulse"'
    assert asyncio.run(statuses(guarded)) == [(401, challenge), (401, challenge), (200, None)]
    open_ = load_settings(web_token=SecretStr("web"))
    assert asyncio.run(statuses(open_)) == [(200, None), (200, None), (200, None)]
