"""Input events (docs/kpis.md, "Input events") and the decoder from raw Kafka record bytes.

:func:`decode` turns a record value into an :data:`Event` or raises
:class:`~models.errors.RejectedEvent` with one of the stable reasons in
:data:`REJECTION_REASONS`; the reason becomes the ``reason`` label of
``deskpulse_events_rejected_total`` and the ``deskpulse-reason`` header of the dead letter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast, get_args

import msgspec
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

from deskpulse.models.errors import RejectedEvent

__all__ = [
    "AGENT_STATUSES",
    "DIMENSIONS",
    "LAST_RESORT_REASON",
    "REJECTION_REASONS",
    "AgentStatusChanged",
    "ChatAbandoned",
    "ChatAccepted",
    "ChatEnded",
    "ChatRequested",
    "DimensionName",
    "Event",
    "SurveyResponded",
    "TicketCreated",
    "TicketReplied",
    "TicketStatusChanged",
    "TicketUpdated",
    "decode",
    "decoder_error",
    "duplicate_key",
    "future_timestamp",
    "members_distinct",
]

#: A dimension every KPI can be grouped by.
DimensionName = Literal["channel", "queue", "priority"]
#: The dimensions, in the order of a stored group key (``channel␟queue␟priority``), of
#: metric labels and of an output key.
DIMENSIONS: tuple[DimensionName, ...] = get_args(DimensionName)

#: Every reason a record can be rejected for, with what it means.
REJECTION_REASONS: dict[str, str] = {
    "too_large": "the record is larger than DESKPULSE_MAX_RECORD_BYTES",
    "invalid_encoding": "the record is not UTF-8",
    "invalid_json": "the record is not valid JSON, or an object in it has a key twice",
    "not_an_object": "the JSON is not an object",
    "missing_type": "the object has no string `type`",
    "unknown_type": "`type` names no known event type",
    "missing_field": "a required field is absent",
    "naive_timestamp": "`occurred_at` has no UTC offset",
    "invalid_timestamp": (
        "`occurred_at` is not an RFC 3339 timestamp, or not one of years 1 to 9999 in UTC"
    ),
    "future_timestamp": "`occurred_at` is further ahead of the clock than DESKPULSE_MAX_FUTURE",
    "invalid_value": "a field has a wrong type or a value outside its range",
    "missing_conversation": "a survey names neither `ticket_id` nor `chat_id`",
    "wrong_topic": "the event type does not belong on the topic it came from",
    "decoder_error": "decoding failed in a way no other reason names (the detail names the error)",
}
#: The reason of last resort: no known record earns it, any that does shows a decoder bug.
LAST_RESORT_REASON = "decoder_error"

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
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+14:00 is an instant of year 0 in UTC, which datetime cannot hold
        raise ValueError("is not an instant of years 1 to 9999 in UTC") from None


class _Event(BaseModel):
    # validators built at the first validation, not at import: `deskpulse kpis` (a process
    # with a budget) imports this module for its names and never validates an event
    model_config = ConfigDict(
        frozen=True, extra="ignore", str_strip_whitespace=False, defer_build=True
    )

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
    model_config = ConfigDict(defer_build=True)

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


class TicketUpdated(_TicketEvent):
    """New values of some of a ticket's dimensions, in force from ``occurred_at`` on: every
    sample and state of the ticket at a later instant is attributed to them (an SLA instance
    keeps the terms chosen when it started)."""

    type: Literal["ticket.updated"]
    channel: Channel | None = None
    queue: Dimension | None = None
    priority: Priority | None = None

    @model_validator(mode="after")
    def _check(self) -> TicketUpdated:
        if self.channel is None and self.queue is None and self.priority is None:
            raise RejectedEvent(
                "missing_field", "ticket.updated names none of channel, queue, priority"
            )
        return self


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

#: An agent's presence statuses, in the order documents list them.
AgentStatus = Literal["available", "busy", "away", "offline"]
AGENT_STATUSES: tuple[str, ...] = get_args(AgentStatus)


class AgentStatusChanged(_Event):
    """An agent's presence from ``occurred_at`` on (the agents topic, keyed by ``agent_id``)."""

    type: Literal["agent.status_changed"]
    agent_id: Id
    status: AgentStatus

    @property
    def conversation_id(self) -> str:
        # an agent's presence is kept like a conversation, under its own kind "a"
        return "a:" + self.agent_id


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
    | TicketUpdated
    | ChatRequested
    | ChatAccepted
    | ChatAbandoned
    | ChatEnded
    | SurveyResponded
    | AgentStatusChanged,
    Field(discriminator="type"),
]

_MODELS: dict[str, type[_Event]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (
        TicketCreated,
        TicketReplied,
        TicketStatusChanged,
        TicketUpdated,
        ChatRequested,
        ChatAccepted,
        ChatAbandoned,
        ChatEnded,
        SurveyResponded,
        AgentStatusChanged,
    )
}
EVENT_TYPES: tuple[str, ...] = tuple(_MODELS)


_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event, config=ConfigDict(defer_build=True))


def _first_validate_json(raw: bytes) -> Event:
    """The first decode builds the validator and puts it in its own place."""
    global _VALIDATE_JSON
    # the core validator itself: the adapter's Python wrapper costs as much as the validation
    _VALIDATE_JSON = _ADAPTER.validator.validate_json
    return cast(Event, _VALIDATE_JSON(raw))


_VALIDATE_JSON: Callable[[bytes], Event] = _first_validate_json

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
    if not (isinstance(data, dict) and members_distinct(raw, distinct_members=len(data))):
        key = duplicate_key(raw)
        if key is not None:
            return _duplicated(key)
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
        message = str(first["msg"]).removeprefix("Value error, ")
        return RejectedEvent(reason, f"occurred_at {data.get('occurred_at')!r}: {message}")
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


# -- keys written twice ---------------------------------------------------------------------
#
# JSON parsers keep the last of two equal keys, so {"type": "ticket.created", ...,
# "type": "chat.requested"} would be a chat event to every parser here and a ticket to a
# consumer that keeps the first: such a record is refused as invalid_json. Finding the
# keys costs a parse of its own, so valid records are first cleared by counting:
#
# * an object of n members has n - 1 commas between them, so a record with c commas has at
#   most c + 1 top-level members, whatever its spacing and escapes (a comma in a string
#   only raises the bound);
# * the decoder knows k distinct keys it read into fields (all scalars), so the top-level
#   object has at least k members. If c + 1 <= k, it has exactly those k distinct keys
#   and, every value being a scalar, no object below it: no key is written twice.
#
# Records with unknown fields (or fields the count cannot see) get the second test,
# members_distinct, and only those it cannot clear get the parse, duplicate_key.

_JSON_SPACE = b" \t\n\r"
#: the top-level keys, each value left unparsed
_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


def members_distinct(
    raw: bytes, *, distinct_members: int | None = None, commas: int | None = None
) -> bool:
    """Whether no object in the JSON ``raw`` has a key twice, if that can be shown cheaply.

    ``distinct_members`` is how many distinct keys the top-level object has and ``commas``
    ``raw.count(b",")``, if known. ``False`` means "not shown" (:func:`duplicate_key`
    decides), never "has duplicates".
    """
    if distinct_members is None:
        try:
            distinct_members = len(_MEMBERS(raw))
        except (msgspec.MsgspecError, RecursionError):
            return False
    if commas is None:
        commas = raw.count(b",")
    # c commas: the top level has at most c + 1 members, and at least distinct_members; if
    # those meet, every comma separates top-level members and no object below has two
    if commas < distinct_members:
        return True
    # every key in every object ends with '"', JSON space and ':'; without the space each
    # is a '":' of its own (a string holding '":' only raises the count). If there are no
    # more of them than distinct top-level keys, those are all the keys there are.
    return raw.translate(None, _JSON_SPACE).count(b'":') <= distinct_members


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)


#: The deepest nesting of arrays and objects :func:`duplicate_key` parses. Python's parser
#: counts each level against the interpreter's recursion limit together with the frames
#: of its caller, so a record nested near that limit was refused for one reason when
#: decoded from a shallow stack and for another from a deeper one (measured: 3 of 10,000
#: drawn poison records, nested 980 - 1,682 deep, changed reason 100 frames down). Deeper
#: records are judged the same from any stack: no key is shown written twice, and the
#: schema's parser (whose own limit is a fixed depth) names what is wrong with them.
DUPLICATE_KEY_DEPTH = 256

#: a JSON string (its escapes included) or a bracket: what the nesting scan looks at
_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def nested_deeper_than(raw: bytes, depth: int) -> bool:
    """Whether the JSON ``raw`` nests arrays and objects more than ``depth`` deep
    (brackets inside strings not counted; for text that is not JSON, a guess that errs
    towards ``True``)."""
    if raw.count(b"[") + raw.count(b"{") <= depth:
        return False
    level = 0
    for match in _STRING_OR_BRACKET.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            level += 1
            if level > depth:
                return True
        elif token in (b"]", b"}"):
            level -= 1
    return False


def duplicate_key(raw: bytes) -> str | None:
    """The first key written twice in one object of the JSON ``raw``; ``None`` if none is.

    Keys compare as decoded (``"ty\\u0070e"`` is ``type``), in every object at every
    depth. ``None`` also when ``raw`` is not JSON this parser reads (not UTF-8, say), or
    nests more than :data:`DUPLICATE_KEY_DEPTH` deep: the decoder's other checks name what
    is wrong with it, the same whatever the caller's stack.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if nested_deeper_than(raw, DUPLICATE_KEY_DEPTH):
        return None
    try:
        # values are not needed: bool keeps numbers from being converted (and big ones from
        # int's digit limit); strict=False reads control characters in strings too
        json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=bool,
            parse_float=bool,
            parse_constant=bool,
            strict=False,
        )
    except _Duplicate as found:
        return found.key
    except (ValueError, RecursionError):
        return None
    return None


def _not_json(raw: bytes, fields_written: int) -> RejectedEvent | None:
    """``invalid_json`` for a record pydantic's parser read that is not JSON to deskpulse.

    ``fields_written`` is how many distinct fields the record set (0 if unknown).
    """
    if (b"NaN" in raw or b"Infinity" in raw) and not _strict_json(raw):
        # pydantic's parser takes NaN/Infinity literals, which JSON does not have
        return RejectedEvent("invalid_json", "NaN and Infinity are not JSON")
    commas = raw.count(b",")
    if commas >= fields_written and not members_distinct(raw, commas=commas):
        key = duplicate_key(raw)
        if key is not None:
            return _duplicated(key)
    return None


def _duplicated(key: str) -> RejectedEvent:
    return RejectedEvent("invalid_json", f"the key {key[:64]!r} is written twice in one object")


def decoder_error(error: BaseException) -> RejectedEvent:
    """The rejection of a record the decoder failed on unexpectedly, naming the error."""
    return RejectedEvent(LAST_RESORT_REASON, f"{type(error).__name__}: {error}"[:300])


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
    parsed again to name its reason. Nothing but :class:`RejectedEvent` leaves it: an
    error no reason names becomes ``decoder_error``, so one record never stops a worker.
    """
    try:
        if raw is None:
            raise RejectedEvent("invalid_json", "the record has no value (tombstone)")
        if len(raw) > max_bytes:
            raise RejectedEvent("too_large", f"{len(raw)} bytes is over the {max_bytes} byte limit")
        try:
            event: Event = _VALIDATE_JSON(raw)
        except ValidationError as error:
            raise _classify(raw, error) from None
        except RejectedEvent as rejected:  # a model's own check: JSON comes first all the same
            raise _not_json(raw, 0) or rejected from None
        not_json = _not_json(raw, len(event.model_fields_set))
        if not_json is not None:
            raise not_json
        if now_s is not None and event.occurred_at.timestamp() > now_s + max_future_s:
            raise future_timestamp(event.occurred_at, now_s)
        return event
    except RejectedEvent:
        raise
    except Exception as error:
        raise decoder_error(error) from error


def future_timestamp(occurred_at: datetime, now_s: float) -> RejectedEvent:
    """The rejection of an event dated too far ahead of the clock (``now_s``)."""
    ahead = occurred_at - datetime.fromtimestamp(now_s, UTC)
    return RejectedEvent(
        "future_timestamp", f"occurred_at is {ahead // timedelta(seconds=1)}s ahead of the clock"
    )


def encode(event: BaseModel) -> bytes:
    """The JSON of an event as a producer would send it (for the simulator and tests)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
