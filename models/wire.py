"""The engine's decoder: the same events as :mod:`models.events`, at a third of the cost.

:mod:`models.events` is the event schema (docs/kpis.md) in pydantic and stays the authority on what
is valid and why not. Decoding every record with it costs ~12 µs, more than folding the
event into the KPIs, so the hot path decodes into the msgspec structs below (~4 µs with
its checks), which carry the same fields and constraints. The two must never disagree:

* anything the structs refuse, and anything they could read differently (a timestamp with
  more than six fractional digits, which msgspec rounds and pydantic truncates; invalid
  UTF-8 in a field msgspec skips; nesting deeper than pydantic allows; a key that may be
  written twice, which both would read as the last one; a time near the ends of what
  datetime holds), goes to the pydantic decoder, which either names the rejection reason
  or accepts it, in which case its result is copied into a struct;
* the structs refuse at least everything pydantic refuses (same lengths, patterns, strict
  types, literals, score ranges); ``tests/unit/test_wire.py`` checks that both decoders reach
  the same verdict and the same values on generated valid and broken records.

So a record's fate never depends on which path decoded it, and no exception but
:class:`~models.errors.RejectedEvent` leaves :func:`decode_record`.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal, cast

import msgspec

from deskpulse.models import events as schema
from deskpulse.models.errors import RejectedEvent

__all__ = [
    "AgentStatusChanged",
    "ChatAbandoned",
    "ChatAccepted",
    "ChatEnded",
    "ChatRequested",
    "SurveyResponded",
    "TicketCreated",
    "TicketReplied",
    "TicketStatusChanged",
    "TicketUpdated",
    "WireEvent",
    "decode_record",
    "event_ms",
]

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# The schema's dimension pattern (no control characters) is no msgspec constraint here:
# msgspec checks patterns with Python's re, which costs more than the rest of the decode.
# Dimensions are checked by _fast_keys instead, with str.isprintable, which is false for
# every control character and for some other characters the schema allows (a no-break
# space, say): those records take the schema's path, which decides either way. (Not in
# __post_init__: that also runs when a struct is built from the schema's event.)
Dimension = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Priority = Literal["low", "normal", "high", "urgent"]
Role = Literal["agent", "customer", "system"]

# The default objects of the optional fields. A field holding its default object may not
# have been written; any other value was (msgspec fills an absent field with the default
# object itself, and __post_init__ never replaces one). _fast_keys counts on this.
_OTHER = "other"
_CHAT = "chat"
_UNASSIGNED = "unassigned"
#: not the interned "normal" msgspec hands back for a written priority, so the two differ
_NORMAL = cast(Priority, "".join(("nor", "mal")))


class _Base(msgspec.Struct, tag_field="type", gc=False):
    """Fields every event has; ``type`` is the struct's tag."""

    type: ClassVar[str]
    #: keys every record of this type has: the tag and the required fields
    _REQUIRED_KEYS: ClassVar[int]
    event_id: EventId
    occurred_at: Timestamp

    def _fast_keys(self) -> int:
        """How many distinct keys of the record certainly set a field (at least the
        required ones, and an optional one when its value is not the default object); 0
        when the schema must decide about the record (a dimension isprintable refuses)."""
        return self._REQUIRED_KEYS

    @property
    def conversation_id(self) -> str:
        raise NotImplementedError

    @property
    def occurred_at_s(self) -> float:
        return self.occurred_at.timestamp()


class _TicketEvent(_Base, gc=False):
    ticket_id: Id

    @property
    def conversation_id(self) -> str:
        return "t:" + self.ticket_id


class _ChatEvent(_Base, gc=False):
    chat_id: Id

    @property
    def conversation_id(self) -> str:
        return "c:" + self.chat_id


def _lower(channel: str) -> str:
    lowered = channel.lower()
    if len(lowered) != len(channel):
        # a few characters lower-case to two; let the schema decide about the length
        raise ValueError("channel changes length when lower-cased")
    return lowered


class TicketCreated(_TicketEvent, tag="ticket.created", gc=False):
    type: ClassVar[str] = "ticket.created"
    channel: Dimension = _OTHER
    queue: Dimension = _UNASSIGNED
    priority: Priority = _NORMAL
    requester_id: Id | None = None

    def __post_init__(self) -> None:
        if self.channel is not _OTHER:  # keep the default object: see _fast_keys
            self.channel = _lower(self.channel)

    def _fast_keys(self) -> int:
        if not (self.channel.isprintable() and self.queue.isprintable()):
            return 0
        return (
            4
            + (self.channel is not _OTHER)
            + (self.queue is not _UNASSIGNED)
            + (self.priority is not _NORMAL)
            + (self.requester_id is not None)
        )


class TicketReplied(_TicketEvent, tag="ticket.replied", gc=False):
    type: ClassVar[str] = "ticket.replied"
    author_role: Role
    public: bool = True
    agent_id: Id | None = None

    def _fast_keys(self) -> int:
        # a written `true` is the default object too: such records take the second test
        return 5 + (self.public is not True) + (self.agent_id is not None)


class TicketStatusChanged(_TicketEvent, tag="ticket.status_changed", gc=False):
    type: ClassVar[str] = "ticket.status_changed"
    status: Literal["new", "open", "pending", "hold", "solved", "closed"]


class TicketUpdated(_TicketEvent, tag="ticket.updated", gc=False):
    type: ClassVar[str] = "ticket.updated"
    channel: Dimension | None = None
    queue: Dimension | None = None
    priority: Priority | None = None

    def __post_init__(self) -> None:
        if self.channel is None and self.queue is None and self.priority is None:
            raise ValueError("the schema names the reason")
        if self.channel is not None:
            self.channel = _lower(self.channel)

    def _fast_keys(self) -> int:
        if not (
            (self.channel is None or self.channel.isprintable())
            and (self.queue is None or self.queue.isprintable())
        ):
            return 0
        return (
            4 + (self.channel is not None) + (self.queue is not None) + (self.priority is not None)
        )


class ChatRequested(_ChatEvent, tag="chat.requested", gc=False):
    type: ClassVar[str] = "chat.requested"
    channel: Dimension = _CHAT
    queue: Dimension = _UNASSIGNED
    priority: Priority = _NORMAL

    def __post_init__(self) -> None:
        if self.channel is not _CHAT:  # keep the default object: see _fast_keys
            self.channel = _lower(self.channel)

    def _fast_keys(self) -> int:
        if not (self.channel.isprintable() and self.queue.isprintable()):
            return 0
        return (
            4
            + (self.channel is not _CHAT)
            + (self.queue is not _UNASSIGNED)
            + (self.priority is not _NORMAL)
        )


class ChatAccepted(_ChatEvent, tag="chat.accepted", gc=False):
    type: ClassVar[str] = "chat.accepted"
    agent_id: Id | None = None

    def _fast_keys(self) -> int:
        return 4 + (self.agent_id is not None)


class ChatAbandoned(_ChatEvent, tag="chat.abandoned", gc=False):
    type: ClassVar[str] = "chat.abandoned"


class ChatEnded(_ChatEvent, tag="chat.ended", gc=False):
    type: ClassVar[str] = "chat.ended"
    ended_by: Role | None = None

    def _fast_keys(self) -> int:
        return 4 + (self.ended_by is not None)


_SCORE_RANGE = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}


class SurveyResponded(_Base, tag="survey.responded", gc=False):
    type: ClassVar[str] = "survey.responded"
    kind: Literal["csat", "nps", "ces"]
    score: int
    ticket_id: Id | None = None
    chat_id: Id | None = None
    agent_id: Id | None = None
    channel: Dimension | None = None
    queue: Dimension | None = None
    priority: Priority | None = None

    def __post_init__(self) -> None:
        low, high = _SCORE_RANGE[self.kind]
        if not low <= self.score <= high or (self.ticket_id is None and self.chat_id is None):
            raise ValueError("the schema names the reason")
        if self.channel is not None:
            self.channel = _lower(self.channel)

    def _fast_keys(self) -> int:
        if not (
            (self.channel is None or self.channel.isprintable())
            and (self.queue is None or self.queue.isprintable())
        ):
            return 0
        return (
            5
            + (self.ticket_id is not None)
            + (self.chat_id is not None)
            + (self.agent_id is not None)
            + (self.channel is not None)
            + (self.queue is not None)
            + (self.priority is not None)
        )

    @property
    def conversation_id(self) -> str:
        # a survey rating both names the ticket first, as models.events does
        return "t:" + self.ticket_id if self.ticket_id is not None else "c:" + str(self.chat_id)


class AgentStatusChanged(_Base, tag="agent.status_changed", gc=False):
    type: ClassVar[str] = "agent.status_changed"
    agent_id: Id
    status: Literal["available", "busy", "away", "offline"]

    @property
    def conversation_id(self) -> str:
        return "a:" + self.agent_id


WireEvent = (
    TicketCreated
    | TicketReplied
    | TicketStatusChanged
    | TicketUpdated
    | ChatRequested
    | ChatAccepted
    | ChatAbandoned
    | ChatEnded
    | SurveyResponded
    | AgentStatusChanged
)

_STRUCTS: dict[type, type[_Base]] = {
    schema.TicketCreated: TicketCreated,
    schema.TicketReplied: TicketReplied,
    schema.TicketStatusChanged: TicketStatusChanged,
    schema.TicketUpdated: TicketUpdated,
    schema.ChatRequested: ChatRequested,
    schema.ChatAccepted: ChatAccepted,
    schema.ChatAbandoned: ChatAbandoned,
    schema.ChatEnded: ChatEnded,
    schema.SurveyResponded: SurveyResponded,
    schema.AgentStatusChanged: AgentStatusChanged,
}

for _struct in _STRUCTS.values():
    _struct._REQUIRED_KEYS = 1 + sum(f.required for f in msgspec.structs.fields(_struct))

_DECODE = msgspec.json.Decoder(WireEvent).decode
# msgspec rounds fractional seconds past microseconds, pydantic truncates: such records
# take the schema's path, so the millisecond an event lands in never depends on the path.
_LONG_FRACTION = re.compile(rb"\.[0-9]{7}")


def event_ms(event: WireEvent) -> int:
    """Event time in whole Unix milliseconds (floor), as the KPI core counts it."""
    return math.floor(event.occurred_at.timestamp() * 1000)


def _from_schema(event: schema.Event) -> WireEvent:
    struct = _STRUCTS[type(event)]
    # msgspec does not validate in __init__: the schema has validated every field
    return struct(**{name: getattr(event, name) for name in struct.__struct_fields__})  # type: ignore[return-value]


#: pydantic refuses nesting past ~200 levels, msgspec reads deeper: a record with more
#: brackets than this (an upper bound of its depth) goes to the schema, which decides
_MAX_BRACKETS = 128
#: a record msgspec accepts is valid JSON, so every bracket it opens it closes: one of at
#: most this many bytes cannot hold more than _MAX_BRACKETS, and is not counted
_SHALLOW_BYTES = 2 * _MAX_BRACKETS


def _is_utf8(raw: bytes) -> bool:
    # msgspec skips unknown fields without looking at their bytes; pydantic refuses a
    # record with invalid UTF-8 anywhere, so this must be checked for the whole record
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: instants at least a day inside what datetime holds (years 1 to 9999) in UTC: with any
#: UTC offset (under a day) they convert. Times outside take the schema's path.
_SAFE_MIN_S = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_SAFE_MAX_S = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def _by_schema(
    raw: bytes | None, max_bytes: int, now_s: float | None, max_future_s: float
) -> tuple[WireEvent, int]:
    event = _from_schema(
        schema.decode(raw, max_bytes=max_bytes, now_s=now_s, max_future_s=max_future_s)
    )
    return event, event_ms(event)


def decode_record(
    raw: bytes | None,
    *,
    max_bytes: int = 1_048_576,
    now_s: float | None = None,
    max_future_s: float = 300.0,
) -> tuple[WireEvent, int]:
    """Decode one record value into ``(event, event time ms)``, or raise ``RejectedEvent``.

    Same contract as :func:`models.events.decode` (the same records accepted, the same
    reasons for the rest); only the type of the event differs.
    """
    try:
        if (
            raw is None
            or len(raw) > max_bytes
            or _LONG_FRACTION.search(raw) is not None
            or (not raw.isascii() and not _is_utf8(raw))
            or (len(raw) > _SHALLOW_BYTES and raw.count(b"[") + raw.count(b"{") > _MAX_BRACKETS)
        ):
            return _by_schema(raw, max_bytes, now_s, max_future_s)
        try:
            event = _DECODE(raw)
        except Exception:  # refused, too deep (RecursionError) or in doubt: the schema decides
            return _by_schema(raw, max_bytes, now_s, max_future_s)
        # A key written twice: see "keys written twice" in models.events. Fewer commas
        # than keys read into fields clears a record; unknown fields take the second test.
        keys = event._fast_keys()
        commas = raw.count(b",")
        if commas >= keys and (
            keys == 0 or not schema.members_distinct(raw, commas=commas)
        ):  # 0: a dimension str.isprintable refuses
            return _by_schema(raw, max_bytes, now_s, max_future_s)
        t_s = event.occurred_at.timestamp()
        if not _SAFE_MIN_S <= t_s <= _SAFE_MAX_S:
            return _by_schema(raw, max_bytes, now_s, max_future_s)
        if now_s is not None and t_s > now_s + max_future_s:
            raise schema.future_timestamp(event.occurred_at, now_s)
        return event, math.floor(t_s * 1000)
    except RejectedEvent:
        raise
    except Exception as error:  # no reason names it: still one rejected record, not a crash
        raise schema.decoder_error(error) from error
