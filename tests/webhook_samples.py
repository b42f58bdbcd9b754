"""Webhook requests as Zendesk and Intercom send them, for the ingest tests.

Zendesk: an event-subscription webhook (``zen:event-type:ticket.*``) is an envelope with
``account_id``, ``id`` (the event's id, a UUID), ``subject`` (``zen:ticket:<id>``),
``time`` (RFC 3339, up to nanoseconds), ``type``, ``zendesk_event_version``, ``detail``
(the ticket: ids as strings, ``priority`` and ``status`` in capitals, ``via.channel``) and
``event`` (what changed: ``{"current", "previous"}``, or ``{"comment": {...}}``). It is
signed with ``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(secret, timestamp +
body)) and ``X-Zendesk-Webhook-Signature-Timestamp``.

Intercom: a notification ``{"type": "notification_event", "id": "notif_…", "topic",
"app_id", "created_at", "delivery_attempts", "first_sent_at", "data": {"type":
"notification_event_data", "item": <conversation>}}``, signed with ``X-Hub-Signature`` =
``sha1=`` + hex HMAC-SHA1(client secret, body).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

ZENDESK_SECRET = "dGhpcyBpcyBhIHNpZ25pbmcgc2VjcmV0"
INTERCOM_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def zendesk_time(t_s: float, *, nanoseconds: bool = True) -> str:
    """A time as Zendesk writes it: UTC, ``Z``, nine fractional digits."""
    moment = datetime.fromtimestamp(t_s, UTC)
    if not nanoseconds:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}123Z"


def zendesk_detail(
    ticket_id: int | str,
    *,
    status: str = "NEW",
    priority: str | None = "NORMAL",
    group_id: int | str | None = "8447320466430",
    brand_id: int | str | None = "8447346621310",
    form_id: int | str | None = "8646151517822",
    channel: str = "web",
    created_s: float = 0.0,
) -> dict[str, Any]:
    """The ``detail`` object of a Zendesk ticket event."""
    created = zendesk_time(created_s, nanoseconds=False)
    return {
        "actor_id": "8447388090494",
        "assignee_id": None,
        "brand_id": brand_id,
        "created_at": created,
        "custom_status": "8447388090495",
        "description": "My printer is on fire",
        "external_id": None,
        "form_id": form_id,
        "group_id": group_id,
        "id": ticket_id,
        "is_public": True,
        "organization_id": "8447346622462",
        "priority": priority,
        "requester_id": "8447388090494",
        "status": status,
        "subject": "Printer on fire",
        "submitter_id": "8447388090494",
        "tags": ["printer"],
        "type": "INCIDENT",
        "updated_at": created,
        "via": {"channel": channel},
    }


def zendesk_envelope(
    event_type: str,
    detail: dict[str, Any],
    event: dict[str, Any],
    t_s: float,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A Zendesk webhook body for ``zen:event-type:<event_type>``."""
    return {
        "account_id": 12514403,
        "detail": detail,
        "event": event,
        "id": event_id or str(uuid.uuid4()),
        "subject": f"zen:ticket:{detail['id']}",
        "time": zendesk_time(t_s),
        "type": f"zen:event-type:{event_type}",
        "zendesk_event_version": "2022-11-06",
    }


def zendesk_created(ticket_id: int | str, t_s: float, **detail: Any) -> dict[str, Any]:
    return zendesk_envelope(
        "ticket.created", zendesk_detail(ticket_id, created_s=t_s, **detail), {}, t_s
    )


def zendesk_status_changed(
    ticket_id: int | str, t_s: float, current: str, previous: str = "NEW"
) -> dict[str, Any]:
    detail = zendesk_detail(ticket_id, status=current)
    return zendesk_envelope(
        "ticket.status_changed", detail, {"current": current, "previous": previous}, t_s
    )


def zendesk_comment_added(
    ticket_id: int | str,
    t_s: float,
    *,
    staff: bool,
    public: bool = True,
    author_id: int | str = "8447388090777",
) -> dict[str, Any]:
    comment = {
        "id": "9125481239012",
        "body": "Thanks, we are on it" if staff else "Any news?",
        "is_public": public,
        "author": {"id": author_id, "is_staff": staff, "name": "Ada" if staff else "Bob"},
    }
    detail = zendesk_detail(ticket_id, status="OPEN")
    return zendesk_envelope("ticket.comment_added", detail, {"comment": comment}, t_s)


def zendesk_changed(
    event_type: str, ticket_id: int | str, t_s: float, current: Any, previous: Any
) -> dict[str, Any]:
    """A change event of the ``{"current", "previous"}`` kind (priority, group, agent)."""
    detail = zendesk_detail(ticket_id, status="OPEN")
    return zendesk_envelope(event_type, detail, {"current": current, "previous": previous}, t_s)


def zendesk_priority_changed(
    ticket_id: int | str, t_s: float, current: str | None, previous: str | None = "NORMAL"
) -> dict[str, Any]:
    """``ticket.priority_changed``: ``event`` holds the priorities, in capitals (``None``
    for no priority), and ``detail`` the ticket as it is after the change."""
    detail = zendesk_detail(ticket_id, status="OPEN", priority=current)
    return zendesk_envelope(
        "ticket.priority_changed", detail, {"current": current, "previous": previous}, t_s
    )


def zendesk_field_changed(
    event_type: str,
    ticket_id: int | str,
    t_s: float,
    current: str | None,
    previous: str | None,
) -> dict[str, Any]:
    """``ticket.group_assignment_changed``, ``ticket.brand_changed`` or
    ``ticket.form_changed``: ``event`` holds the ids (as strings, ``None`` for none), and
    ``detail`` the ticket as it is after the change."""
    field = {
        "ticket.group_assignment_changed": "group_id",
        "ticket.brand_changed": "brand_id",
        "ticket.form_changed": "form_id",
    }[event_type]
    detail = zendesk_detail(ticket_id, status="OPEN", **{field: current})
    return zendesk_envelope(event_type, detail, {"current": current, "previous": previous}, t_s)


def zendesk_headers(body: bytes, timestamp: str, secret: str = ZENDESK_SECRET) -> dict[str, str]:
    """The signature headers Zendesk sends with ``body``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }


def intercom_part(
    part_id: str, t_s: int, *, part_type: str = "comment", author: str = "admin"
) -> dict[str, Any]:
    return {
        "type": "conversation_part",
        "id": part_id,
        "part_type": part_type,
        "body": "<p>Hello</p>",
        "created_at": t_s,
        "updated_at": t_s,
        "notified_at": t_s,
        "assigned_to": None,
        "author": {
            "type": author,
            "id": "814860" if author == "admin" else "5d9c7e1f8e7e1a0001234567",
            "name": "Ada" if author == "admin" else "Bob",
            "email": "ada@example.com" if author == "admin" else "bob@example.com",
        },
        "attachments": [],
        "external_id": None,
    }


def intercom_conversation(
    conversation_id: str,
    created_s: int,
    parts: list[dict[str, Any]] | None = None,
    *,
    team_assignee_id: str | int | None = None,
    priority: str = "not_priority",
    source_type: str = "conversation",
    state: str = "open",
) -> dict[str, Any]:
    parts = parts or []
    return {
        "type": "conversation",
        "id": conversation_id,
        "created_at": created_s,
        "updated_at": max([created_s, *(p["created_at"] for p in parts)]),
        "waiting_since": created_s,
        "snoozed_until": None,
        "source": {
            "type": source_type,
            "id": "403918330",
            "delivered_as": "customer_initiated",
            "subject": "",
            "body": "<p>My printer is on fire</p>",
            "author": {"type": "user", "id": "5d9c7e1f8e7e1a0001234567", "name": "Bob"},
            "attachments": [],
            "url": None,
        },
        "contacts": {
            "type": "contact.list",
            "contacts": [{"type": "contact", "id": "5d9c7e1f8e7e1a0001234567"}],
        },
        "open": state == "open",
        "state": state,
        "read": True,
        "priority": priority,
        "admin_assignee_id": None,
        "team_assignee_id": team_assignee_id,
        "tags": {"type": "tag.list", "tags": []},
        "conversation_parts": {
            "type": "conversation_part.list",
            "conversation_parts": parts,
            "total_count": len(parts),
        },
    }


def intercom_notification(
    topic: str, conversation: dict[str, Any], *, notification_id: str | None = "auto"
) -> dict[str, Any]:
    created = conversation["updated_at"]
    return {
        "type": "notification_event",
        "app_id": "x1y2z3ab",
        "data": {"type": "notification_event_data", "item": conversation},
        "links": {},
        "id": f"notif_{uuid.uuid4()}" if notification_id == "auto" else notification_id,
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "delivered_at": 0,
        "first_sent_at": created,
        "created_at": created,
        "self": None,
    }


def intercom_headers(body: bytes, secret: str = INTERCOM_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature": f"sha1={digest}"}


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()
