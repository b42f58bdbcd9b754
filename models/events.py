"""Input events (CONTRACT §1) and the decoder from raw Kafka record bytes.

:func:`decode` turns a record value into an :data:`Event` or raises
:class:`~models.errors.RejectedEvent` with one of the stable reasons in
:data:`REJECTION_REASONS`; the reason becomes the ``reason`` label of
``deskpulse_events_rejected_total`` and the ``deskpulse-source-reason`` header.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from models.errors import RejectedEvent

__all__ = [
    "REJECTION_REASONS",
    "ChatAbandoned",
    "ChatAccepted",
    "ChatEnded",
    "ChatRequested",
    "Event",
    "SurveyResponded",
    "TicketCreated",
    "TicketReplied",
    "TicketStatusChanged",
    "decode",
    "future_timestamp",
]

#: Every reason a record can be rejected for, with what it means.
REJECTION_REASONS: dict[str, str] = {
    "too_large": "the record is larger than DESKPULSE_MAX_RECORD_BYTES",
    "invalid_encoding": "the record is not UTF-8",
    "invalid_json": "the record is not valid JSON",
    "not_an_object": "the JSON is not an object",
    "missing_type": "the object has no string `type`",
    "unknown_type": "`type` names no known event type",
    "missing_field": "a required field is absent",
    "naive_timestamp": "`occurred_at` has no UTC offset",
    "invalid_timestamp": "`occurred_at` is not an RFC 3339 timestamp",
    "future_timestamp": "`occurred_at` is further ahead of the clock than DESKPULSE_MAX_FUTURE",
    "invalid_value": "a field has a wrong type or a value outside its range",
    "missing_conversation": "a survey names neither `ticket_id` nor `chat_id`",
    "wrong_topic": "the event type does not belong on the topic it came from",
}

Priority = Literal["low", "normal", "high", "urgent"]
Role = Literal["agent", "customer", "system"]
Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# Dimension values become Redis field names and label values: no control characters.
Dimension = Annotated[
    str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Channel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, to_lower=True, pattern=r"^[^\x00-\x1f\x7f]+$"),
]


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as a datetime (CLI ``--at`` and tests)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RejectedEvent("invalid_timestamp", f"{value!r} is not RFC 3339") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise RejectedEvent("naive_timestamp", f"{value!r} has no UTC offset")
    return parsed


def _to_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    # strict: an RFC 3339 string in JSON, never a number of seconds; kept in UTC
    occurred_at: Annotated[AwareDatetime, AfterValidator(_to_utc)] = Field(strict=True)

    @property
    def conversation_id(self) -> str:
        """``t:<ticket_id>`` or ``c:<chat_id>``: the conversation this event belongs to."""
        raise NotImplementedError

    @property
    def occurred_at_s(self) -> float:
        """Event time in Unix seconds."""
        return self.occurred_at.timestamp()


class _Dimensions(BaseModel):
    channel: Channel = "other"
    queue: Dimension = "unassigned"
    priority: Priority = "normal"


class _TicketEvent(_Event):
    ticket_id: Id

    @property
    def conversation_id(self) -> str:
        return "t:" + self.ticket_id


class _ChatEvent(_Event):
    chat_id: Id

    @property
    def conversation_id(self) -> str:
        return "c:" + self.chat_id


class TicketCreated(_TicketEvent, _Dimensions):
    type: Literal["ticket.created"]
    requester_id: Id | None = None


class TicketReplied(_TicketEvent):
    type: Literal["ticket.replied"]
    author_role: Role
    public: StrictBool = True
    agent_id: Id | None = None


class TicketStatusChanged(_TicketEvent):
    type: Literal["ticket.status_changed"]
    status: Literal["new", "open", "pending", "hold", "solved", "closed"]


class ChatRequested(_ChatEvent, _Dimensions):
    type: Literal["chat.requested"]
    channel: Channel = "chat"


class ChatAccepted(_ChatEvent):
    type: Literal["chat.accepted"]
    agent_id: Id | None = None


class ChatAbandoned(_ChatEvent):
    type: Literal["chat.abandoned"]


class ChatEnded(_ChatEvent):
    type: Literal["chat.ended"]
    ended_by: Role | None = None


_SCORE_RANGE = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}


class SurveyResponded(_Event):
    type: Literal["survey.responded"]
    kind: Literal["csat", "nps", "ces"]
    score: StrictInt
    ticket_id: Id | None = None
    chat_id: Id | None = None
    agent_id: Id | None = None
    channel: Channel | None = None
    queue: Dimension | None = None
    priority: Priority | None = None

    @model_validator(mode="after")
    def _check(self) -> SurveyResponded:
        low, high = _SCORE_RANGE[self.kind]
        if not low <= self.score <= high:
            raise ValueError(f"{self.kind} score must be {low}..{high}, got {self.score}")
        if self.ticket_id is None and self.chat_id is None:
            raise RejectedEvent("missing_conversation", "survey names no ticket_id or chat_id")
        return self

    @property
    def conversation_id(self) -> str:
        # a survey rating both names the ticket first: ticket ids are the stable key upstream
        return "t:" + self.ticket_id if self.ticket_id is not None else "c:" + str(self.chat_id)

    @property
    def dimensions(self) -> tuple[str | None, str | None, str | None]:
        return (self.channel, self.queue, self.priority)


Event = Annotated[
    TicketCreated
    | TicketReplied
    | TicketStatusChanged
    | ChatRequested
    | ChatAccepted
    | ChatAbandoned
    | ChatEnded
    | SurveyResponded,
    Field(discriminator="type"),
]

_MODELS: dict[str, type[_Event]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (
        TicketCreated,
        TicketReplied,
        TicketStatusChanged,
        ChatRequested,
        ChatAccepted,
        ChatAbandoned,
        ChatEnded,
        SurveyResponded,
    )
}
EVENT_TYPES: tuple[str, ...] = tuple(_MODELS)


_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
# the core validator itself: the adapter's Python wrapper costs as much as the validation
_VALIDATE_JSON = _ADAPTER.validator.validate_json

_TIME_ERRORS = {
    "timezone_aware": "naive_timestamp",
    "datetime_parsing": "invalid_timestamp",
    "datetime_from_date_parsing": "invalid_timestamp",
    "datetime_type": "invalid_timestamp",
    "datetime_object_invalid": "invalid_timestamp",
}


def _classify(raw: bytes, error: ValidationError) -> RejectedEvent:
    """Why a record failed the fast path, as a stable reason (the slow path of decode)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as json_error:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return RejectedEvent("invalid_encoding", "the record is not UTF-8")
        return RejectedEvent("invalid_json", str(json_error))
    if not isinstance(data, dict):
        return RejectedEvent("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        return RejectedEvent("missing_type", "the event has no string `type`")
    if kind not in _MODELS:
        return RejectedEvent("unknown_type", f"{kind[:64]!r} is not a known event type")
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"][1:] if not isinstance(part, int)]
    where = ".".join(loc) or "event"
    if first["type"] == "missing":
        return RejectedEvent("missing_field", f"{where} is required")
    if where == "occurred_at":
        reason = _TIME_ERRORS.get(first["type"], "invalid_timestamp")
        return RejectedEvent(reason, f"occurred_at {data.get('occurred_at')!r}: {first['msg']}")
    inner = (first.get("ctx") or {}).get("error")
    if isinstance(inner, RejectedEvent):
        return inner
    message = str(first["msg"]).removeprefix("Value error, ")
    return RejectedEvent("invalid_value", f"{where}: {message}")


def _strict_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def decode(
    raw: bytes | None,
    *,
    max_bytes: int = 1_048_576,
    now_s: float | None = None,
    max_future_s: float = 300.0,
) -> Event:
    """Decode one record value; raise :class:`RejectedEvent` naming why it cannot be used.

    ``now_s`` is the wall clock in Unix seconds (an argument, so tests fix it); events
    dated more than ``max_future_s`` after it are rejected as ``future_timestamp``.
    Valid records take one pass of pydantic's JSON validator; only a rejected one is
    parsed again to name its reason.
    """
    if raw is None:
        raise RejectedEvent("invalid_json", "the record has no value (tombstone)")
    if len(raw) > max_bytes:
        raise RejectedEvent("too_large", f"{len(raw)} bytes is over the {max_bytes} byte limit")
    try:
        event: Event = _VALIDATE_JSON(raw)
    except ValidationError as error:
        raise _classify(raw, error) from None
    if (b"NaN" in raw or b"Infinity" in raw) and not _strict_json(raw):
        # pydantic's parser takes NaN/Infinity literals, which JSON does not have
        raise RejectedEvent("invalid_json", "NaN and Infinity are not JSON")
    if now_s is not None and event.occurred_at.timestamp() > now_s + max_future_s:
        raise future_timestamp(event.occurred_at, now_s)
    return event


def future_timestamp(occurred_at: datetime, now_s: float) -> RejectedEvent:
    """The rejection of an event dated too far ahead of the clock (``now_s``)."""
    ahead = occurred_at - datetime.fromtimestamp(now_s, UTC)
    return RejectedEvent(
        "future_timestamp", f"occurred_at is {ahead // timedelta(seconds=1)}s ahead of the clock"
    )


def encode(event: BaseModel) -> bytes:
    """The JSON of an event as a producer would send it (for the simulator and tests)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
