"""Helpdesk webhooks as input events: signature checks and the Zendesk and Intercom mappings.

Pure: nothing here does I/O or reads the clock (``now_s`` is an argument). The HTTP side
(:mod:`streams.ingest`) verifies a request with :func:`zendesk_signature_problem` or
:func:`intercom_signature_matches`, maps its parsed body with :func:`map_zendesk` or
:func:`map_intercom`, and checks each event produced with the engine's own decoder.

A mapping returns the events as dicts (the input-event schema), an :class:`Ignored` for a
webhook it understands but that changes no KPI (an assignment, say), or raises
:class:`~models.errors.RejectedEvent` with one of :data:`WEBHOOK_REJECTION_REASONS` for a
body it cannot map; that body is dead-lettered. Every ``event_id`` derives from the sender's
own id for the webhook, so a delivery the sender retries maps to the same events, which the
engine drops as repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from deskpulse.models.errors import RejectedEvent

__all__ = [
    "INTERCOM_TOPICS",
    "WEBHOOK_REJECTION_REASONS",
    "ZENDESK_TYPES",
    "Ignored",
    "IntercomMapping",
    "ZendeskMapping",
    "intercom_signature",
    "intercom_signature_matches",
    "map_intercom",
    "map_zendesk",
    "zendesk_signature",
    "zendesk_signature_problem",
]

#: Why a webhook body is dead-lettered (the ``deskpulse-reason`` header), with what it means.
WEBHOOK_REJECTION_REASONS: dict[str, str] = {
    "invalid_json": "the body is not valid JSON",
    "not_an_object": "the JSON is not an object",
    "unmappable": (
        "a field the mapping needs is absent, of a wrong type, or holds a value it cannot "
        "map (the detail names it)"
    ),
}

_ZENDESK_PREFIX = "zen:event-type:"
#: Zendesk event types mapped to events; any other ``zen:event-type:*`` is ignored.
ZENDESK_TYPES = (
    "ticket.created",
    "ticket.status_changed",
    "ticket.comment_added",
    "ticket.priority_changed",
    "ticket.group_assignment_changed",
    "ticket.brand_changed",
    "ticket.form_changed",
)
#: Zendesk's changes of a ticket field that feeds a dimension: the field (the queue's
#: only when ``DESKPULSE_ZENDESK_QUEUE_FIELD`` names it)
_ZENDESK_CHANGES = {
    "ticket.priority_changed": "priority",
    "ticket.group_assignment_changed": "group",
    "ticket.brand_changed": "brand",
    "ticket.form_changed": "form",
}
#: Intercom topics mapped to events in at least one of the two modes.
INTERCOM_TOPICS = (
    "conversation.user.created",
    "conversation.user.replied",
    "conversation.admin.replied",
    "conversation.admin.noted",
    "conversation.admin.assigned",
    "conversation.admin.closed",
    "conversation.admin.opened",
    "conversation.admin.snoozed",
)
_STATUSES = frozenset({"new", "open", "pending", "hold", "solved", "closed"})


@dataclass(frozen=True, slots=True)
class Ignored:
    """A webhook understood and deliberately not mapped: ``why`` says which and why."""

    why: str


# --------------------------------------------------------------------------- signatures


def zendesk_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's signature of a webhook request: base64 of the HMAC-SHA256, keyed by the
    webhook's signing secret, of the signature timestamp header followed by the body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def zendesk_signature_problem(
    secret: str,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    now_s: float,
    max_age_s: float,
) -> str | None:
    """What is wrong with a Zendesk request's signature; ``None`` if it is good and fresh.

    The signature is compared in constant time. A timestamp more than ``max_age_s`` away
    from ``now_s`` (either way) is refused even with a good signature: a recorded request
    cannot be played again later.
    """
    if not signature or not timestamp:
        return "no X-Zendesk-Webhook-Signature or X-Zendesk-Webhook-Signature-Timestamp header"
    expected = zendesk_signature(secret, timestamp, body).encode()
    if not hmac.compare_digest(expected, signature.strip().encode()):
        return "the signature does not match the body and timestamp"
    try:
        signed_s = _zendesk_time(timestamp).timestamp()
    except ValueError:
        return f"the signature timestamp {timestamp[:64]!r} is not an ISO 8601 time"
    if abs(now_s - signed_s) > max_age_s:
        return (
            f"the signature timestamp {timestamp[:64]} is more than {max_age_s:g}s from "
            "this server's clock (stale, or a clock out of step)"
        )
    return None


def intercom_signature(secret: str, body: bytes) -> str:
    """Intercom's ``X-Hub-Signature``: ``sha1=`` and the hex HMAC-SHA1 of the body, keyed
    by the app's client secret."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def intercom_signature_matches(secret: str, signature: str | None, body: bytes) -> bool:
    """Whether ``signature`` is Intercom's for ``body`` (compared in constant time)."""
    if not signature:
        return False
    expected = intercom_signature(secret, body).encode()
    return hmac.compare_digest(expected, signature.strip().lower().encode())


# --------------------------------------------------------------------------- shared helpers

_FRACTION = re.compile(r"(\.\d{6})\d+")


def _zendesk_time(text: str) -> datetime:
    """An ISO 8601 time with an offset (``Z`` or ``+hh:mm``, up to nanoseconds) in UTC."""
    value = datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("no UTC offset")
    return value.astimezone(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _unmappable(detail: str) -> RejectedEvent:
    return RejectedEvent("unmappable", detail)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _unmappable(f"{where} is not an object")
    return value


def _id(value: Any, where: str) -> str:
    """An id given as a number or a string, as text."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise _unmappable(f"{where} is not an id (a number or a non-empty string)")
    return str(value)


def _optional_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        return None
    return str(value)


def _root(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RejectedEvent("not_an_object", f"the body is JSON {type(payload).__name__}")
    return payload


# --------------------------------------------------------------------------- Zendesk


@dataclass(frozen=True)
class ZendeskMapping:
    """How Zendesk tickets' fields become dimensions (``DESKPULSE_ZENDESK_*``)."""

    #: which ticket field names the queue: its ``group_id``, ``brand_id`` or ``form_id``
    queue_field: Literal["group", "brand", "form"] = "group"
    #: id (as text) -> queue name; an id not in it is the queue's name itself
    queue_map: Mapping[str, str] = field(default_factory=dict)
    #: ``via.channel`` (lower-cased) -> channel name; one not in it is the channel itself
    channel_map: Mapping[str, str] = field(default_factory=dict)


def map_zendesk(payload: Any, mapping: ZendeskMapping) -> list[dict[str, Any]] | Ignored:
    """The input events of one Zendesk webhook request (an event-subscription webhook).

    ``ticket.created`` -> ``ticket.created`` (and ``ticket.status_changed`` at the same time
    when the ticket starts in another status than new); ``ticket.status_changed`` ->
    ``ticket.status_changed``; ``ticket.comment_added`` -> ``ticket.replied``;
    ``ticket.priority_changed``, and the change of the field the queue comes from
    (``group_assignment_changed``, ``brand_changed`` or ``form_changed``) ->
    ``ticket.updated``. Other Zendesk event types (and the changes of the two fields the
    queue does not come from) are :class:`Ignored`.
    """
    root = _root(payload)
    kind = root.get("type")
    if not isinstance(kind, str) or not kind.startswith(_ZENDESK_PREFIX):
        raise _unmappable(
            "`type` is not a Zendesk event type (zen:event-type:…): only webhooks that "
            "subscribe to Zendesk events are taken, not trigger or automation webhooks"
        )
    name = kind.removeprefix(_ZENDESK_PREFIX)
    if name not in ZENDESK_TYPES:
        return Ignored(f"Zendesk {name} changes no deskpulse KPI")
    changed = _ZENDESK_CHANGES.get(name)
    if changed not in (None, "priority", mapping.queue_field):
        return Ignored(
            f"Zendesk {name} changes no deskpulse dimension: the queue comes from the "
            f"ticket's {mapping.queue_field} (DESKPULSE_ZENDESK_QUEUE_FIELD)"
        )
    envelope_id = _id(root.get("id"), "`id`")
    when = root.get("time")
    if not isinstance(when, str):
        raise _unmappable("`time` is not a string")
    try:
        occurred_at = _stamp(_zendesk_time(when))
    except ValueError:
        raise _unmappable(f"`time` {when[:64]!r} is not an ISO 8601 time with an offset") from None
    detail = _object(root.get("detail"), "`detail`")
    event = root.get("event")
    ticket_id = _id(detail.get("id"), "`detail.id`")
    base = {
        "event_id": f"zendesk:{envelope_id}",
        "occurred_at": occurred_at,
        "ticket_id": ticket_id,
    }
    if name == "ticket.created":
        created: dict[str, Any] = {
            **base,
            "type": "ticket.created",
            **_zendesk_dimensions(detail, mapping),
        }
        requester = _optional_id(detail.get("requester_id"))
        if requester is not None:
            created["requester_id"] = requester
        events = [created]
        status = detail.get("status")
        if isinstance(status, str) and status.lower() not in ("", "new"):
            events.append(
                {
                    **base,
                    "event_id": f"zendesk:{envelope_id}:status",
                    "type": "ticket.status_changed",
                    "status": _zendesk_status(status, "`detail.status`"),
                }
            )
        return events
    if changed is not None:
        return [{**base, "type": "ticket.updated", **_zendesk_change(event, changed, mapping)}]
    if name == "ticket.status_changed":
        current = _object(event, "`event`").get("current")
        if not isinstance(current, str):
            raise _unmappable("`event.current` (the new status) is not a string")
        return [
            {
                **base,
                "type": "ticket.status_changed",
                "status": _zendesk_status(current, "`event.current`"),
            }
        ]
    comment = _object(_object(event, "`event`").get("comment"), "`event.comment`")
    author = _object(comment.get("author"), "`event.comment.author`")
    staff = author.get("is_staff")
    if not isinstance(staff, bool):
        raise _unmappable("`event.comment.author.is_staff` is not true or false")
    public = comment.get("is_public", True)
    if not isinstance(public, bool):
        raise _unmappable("`event.comment.is_public` is not true or false")
    replied: dict[str, Any] = {
        **base,
        "type": "ticket.replied",
        "author_role": "agent" if staff else "customer",
        "public": public,
    }
    agent = _optional_id(author.get("id")) if staff else None
    if agent is not None:
        replied["agent_id"] = agent
    return [replied]


def _zendesk_change(event: Any, changed: str, mapping: ZendeskMapping) -> dict[str, str]:
    """The dimension a Zendesk change event sets: its ``event.current`` (an id, or an
    object with one), mapped as the same field of a new ticket is; a priority or queue
    cleared is the default (``normal``, ``unassigned``)."""
    current = _object(event, "`event`").get("current")
    if isinstance(current, dict):
        current = current.get("id")
    if changed == "priority":
        if current in (None, ""):
            return {"priority": "normal"}
        if not isinstance(current, str):
            raise _unmappable("`event.current` (the new priority) is not a string")
        # anything but low, normal, high and urgent is refused by the event decoder
        return {"priority": current.lower()}
    if current in (None, ""):
        return {"queue": "unassigned"}
    queue_id = _id(current, "`event.current`")
    return {"queue": mapping.queue_map.get(queue_id, queue_id)}


def _zendesk_status(value: str, where: str) -> str:
    status = value.lower()
    if status not in _STATUSES:
        raise _unmappable(
            f"{where} {value[:64]!r} is no deskpulse status (new, open, pending, hold, "
            "solved, closed)"
        )
    return status


def _zendesk_dimensions(detail: dict[str, Any], mapping: ZendeskMapping) -> dict[str, str]:
    dimensions: dict[str, str] = {}
    via = detail.get("via")
    channel = via.get("channel") if isinstance(via, dict) else None
    if isinstance(channel, str) and channel:
        lowered = channel.lower()
        dimensions["channel"] = mapping.channel_map.get(lowered, lowered)
    queue_id = _optional_id(detail.get(f"{mapping.queue_field}_id"))
    if queue_id is not None:
        dimensions["queue"] = mapping.queue_map.get(queue_id, queue_id)
    priority = detail.get("priority")
    if isinstance(priority, str) and priority:
        # anything but low, normal, high and urgent is refused by the event decoder
        dimensions["priority"] = priority.lower()
    elif priority not in (None, ""):
        raise _unmappable("`detail.priority` is not a string")
    return dimensions


# --------------------------------------------------------------------------- Intercom


@dataclass(frozen=True)
class IntercomMapping:
    """How Intercom conversations become events (``DESKPULSE_INTERCOM_*``)."""

    #: conversations as chats (``chat.*``) or as tickets (``ticket.*``)
    as_kind: Literal["chat", "ticket"] = "chat"
    #: team id (as text) -> queue name; a team not in it is the queue's name itself
    queue_map: Mapping[str, str] = field(default_factory=dict)


def map_intercom(payload: Any, mapping: IntercomMapping) -> list[dict[str, Any]] | Ignored:
    """The input events of one Intercom webhook notification (``notification_event``)."""
    root = _root(payload)
    if root.get("type") != "notification_event":
        raise _unmappable("`type` is not notification_event")
    topic = root.get("topic")
    if not isinstance(topic, str):
        raise _unmappable("`topic` is not a string")
    if topic not in INTERCOM_TOPICS:
        return Ignored(f"Intercom {topic} changes no deskpulse KPI")
    data = _object(root.get("data"), "`data`")
    item = _object(data.get("item"), "`data.item`")
    conversation_id = _id(item.get("id"), "`data.item.id`")
    part = _newest_part(item)
    if topic == "conversation.user.created":
        seconds = item.get("created_at")
        where = "`data.item.created_at`"
    elif part is not None:
        seconds = part.get("created_at")
        where = "the newest conversation part's `created_at`"
    else:
        seconds = item.get("updated_at")
        where = "`data.item.updated_at` (the conversation has no parts)"
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise _unmappable(f"{where} is not a number of Unix seconds")
    try:
        occurred_at = _stamp(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):
        raise _unmappable(f"{where} {seconds!r} is out of range") from None
    notification = _optional_id(root.get("id"))
    if notification is not None:
        event_id = f"intercom:{notification}"
    else:
        part_id = _optional_id(part.get("id")) if part is not None else None
        event_id = f"intercom:{topic}:{conversation_id}:{part_id or '-'}"
    author = part.get("author") if part is not None else None
    agent = (
        _optional_id(author.get("id"))
        if isinstance(author, dict) and author.get("type") in ("admin", "bot")
        else None
    )
    if mapping.as_kind == "chat":
        return _intercom_chat(topic, item, mapping, event_id, occurred_at, conversation_id, agent)
    return _intercom_ticket(topic, item, mapping, event_id, occurred_at, conversation_id, agent)


def _newest_part(item: dict[str, Any]) -> dict[str, Any] | None:
    parts_list = item.get("conversation_parts")
    parts = parts_list.get("conversation_parts") if isinstance(parts_list, dict) else None
    if not isinstance(parts, list):
        return None
    newest: dict[str, Any] | None = None
    for part in parts:
        if not isinstance(part, dict):
            continue
        at = part.get("created_at")
        if not isinstance(at, int | float) or isinstance(at, bool):
            continue
        if newest is None or at >= newest["created_at"]:  # the later of equals: listed last
            newest = part
    return newest


def _intercom_dimensions(
    item: dict[str, Any], mapping: IntercomMapping, channel: str
) -> dict[str, str]:
    dimensions = {"channel": channel}
    team = _optional_id(item.get("team_assignee_id"))
    if team is not None:
        dimensions["queue"] = mapping.queue_map.get(team, team)
    if item.get("priority") == "priority":
        dimensions["priority"] = "high"
    return dimensions


def _intercom_chat(
    topic: str,
    item: dict[str, Any],
    mapping: IntercomMapping,
    event_id: str,
    occurred_at: str,
    chat_id: str,
    agent: str | None,
) -> list[dict[str, Any]] | Ignored:
    base = {"event_id": event_id, "occurred_at": occurred_at, "chat_id": chat_id}
    if topic == "conversation.user.created":
        return [{**base, "type": "chat.requested", **_intercom_dimensions(item, mapping, "chat")}]
    if topic == "conversation.admin.replied":
        accepted: dict[str, Any] = {**base, "type": "chat.accepted"}
        if agent is not None:
            accepted["agent_id"] = agent
        return [accepted]
    if topic == "conversation.admin.closed":
        return [{**base, "type": "chat.ended", "ended_by": "agent"}]
    return Ignored(f"Intercom {topic} changes no chat KPI")


_INTERCOM_STATUS = {
    "conversation.admin.closed": "solved",
    "conversation.admin.opened": "open",
    "conversation.admin.snoozed": "pending",
}


def _intercom_ticket(
    topic: str,
    item: dict[str, Any],
    mapping: IntercomMapping,
    event_id: str,
    occurred_at: str,
    ticket_id: str,
    agent: str | None,
) -> list[dict[str, Any]] | Ignored:
    base = {"event_id": event_id, "occurred_at": occurred_at, "ticket_id": ticket_id}
    if topic == "conversation.user.created":
        source = item.get("source")
        kind = source.get("type") if isinstance(source, dict) else None
        channel = "chat" if kind in (None, "", "conversation") else str(kind).lower()
        return [{**base, "type": "ticket.created", **_intercom_dimensions(item, mapping, channel)}]
    if topic == "conversation.user.replied":
        return [{**base, "type": "ticket.replied", "author_role": "customer", "public": True}]
    if topic in ("conversation.admin.replied", "conversation.admin.noted"):
        replied: dict[str, Any] = {
            **base,
            "type": "ticket.replied",
            "author_role": "agent",
            "public": topic == "conversation.admin.replied",
        }
        if agent is not None:
            replied["agent_id"] = agent
        return [replied]
    if topic == "conversation.admin.assigned":
        # the team it is assigned to now is its queue from then on (no team: unassigned); an
        # assignment to an admin that leaves the team as it was moves nothing
        team = _optional_id(item.get("team_assignee_id"))
        queue = "unassigned" if team is None else mapping.queue_map.get(team, team)
        return [{**base, "type": "ticket.updated", "queue": queue}]
    status = _INTERCOM_STATUS.get(topic)
    if status is not None:
        return [{**base, "type": "ticket.status_changed", "status": status}]
    return Ignored(f"Intercom {topic} changes no ticket KPI")
