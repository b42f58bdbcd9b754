"""No record stops the decoders, and a key written twice is refused by both alike.

Arbitrary bytes, arbitrary JSON and event-shaped objects with mutated fields (times at the
ends of what datetime holds, huge numbers, NaN/Infinity literals, lone surrogates, deep
nesting, keys written twice under any spelling) go to both decoders: each either accepts
the record or rejects it with a reason, never raises anything else, and the two reach the
same verdict (``assert_same`` of ``test_wire``). Documents are generated as trees whose
objects are lists of pairs, so whether a key repeats is known before the text is written.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deskpulse.models import events, wire
from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import (
    EVENT_TYPES,
    LAST_RESORT_REASON,
    decode,
    duplicate_key,
    members_distinct,
)
from deskpulse.models.wire import decode_record
from deskpulse.streams.devtools.simulate import SimConfig, generate
from tests.unit.test_wire import NOW_S, assert_same, verdict

MAX_BYTES = 4096  # as assert_same decodes

# -- documents as trees ---------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """Number or constant text written as is (``NaN``, ``1e400``, 5,000 digits)."""

    text: str


class Pairs(tuple[tuple[str, Any], ...]):
    """A JSON object as its members in order: a key may repeat."""


def has_duplicate(node: Any) -> bool:
    if isinstance(node, Pairs):
        keys = [key for key, _ in node]
        return len(set(keys)) < len(keys) or any(has_duplicate(value) for _, value in node)
    if isinstance(node, list):
        return any(has_duplicate(value) for value in node)
    return False


_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e-400",
    "-0",
    "0.0e0",
    "1E+2",
    "9" * 40,
    "-" + "1" * 5000,
    "123456789.1234567",
]
_KEYS = ["type", "event_id", "occurred_at", "ticket_id", "chat_id", "priority", "a", "", "ty"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(_LITERALS).map(Literal),
    st.text(max_size=12),
    st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", "\x00", '"', "\\", "é", "İ"]),
)
keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=4))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.lists(st.tuples(keys, children), max_size=5).map(Pairs)
    ),
    max_leaves=14,
)
_SPACE = ["", "", "", " ", "\n", "\t ", "\r\n  "]


@st.composite
def rendered(draw: st.DrawFn, node: Any) -> str:
    """``node`` as JSON text, spelled in a drawn way (escapes, spacing)."""

    def space() -> str:
        return draw(st.sampled_from(_SPACE))

    def string(text: str, *, key: bool = False) -> str:
        surrogate = any("\ud800" <= char <= "\udfff" for char in text)
        written = json.dumps(text, ensure_ascii=surrogate or draw(st.booleans()))
        if key and text and draw(st.integers(0, 3)) == 0:  # every character escaped
            units = text.encode("utf-16-be", "surrogatepass")
            codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
            written = '"' + "".join(f"\\u{code:04x}" for code in codes) + '"'
        return written

    def write(value: Any) -> str:
        if isinstance(value, Pairs):
            members = [
                space() + string(k, key=True) + space() + ":" + space() + write(v) for k, v in value
            ]
            return "{" + ",".join(members) + space() + "}"
        if isinstance(value, list):
            return "[" + ",".join(space() + write(v) for v in value) + space() + "]"
        if isinstance(value, Literal):
            return value.text
        if isinstance(value, str):
            return string(value)
        return json.dumps(value)

    return space() + write(node) + space()


def encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def strict_json(raw: bytes) -> bool:
    """JSON as RFC 8259 has it (orjson: no NaN, no lone surrogates, UTF-8)."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def check(raw: bytes, duplicated: bool | None, now_s: float | None = NOW_S) -> None:
    """Both decoders agree; a record with a key twice, JSON otherwise, is invalid_json."""
    assert_same(raw, now_s)  # raises if either decoder raises anything but RejectedEvent
    outcome = verdict(decode, raw, now_s)
    # the last resort is for errors nobody knows of: a generated record that earns it is one
    assert outcome != ("rejected", LAST_RESORT_REASON), raw
    if duplicated is None:
        return
    if duplicated and len(raw) <= MAX_BYTES and strict_json(raw):
        assert outcome == ("rejected", "invalid_json"), raw
    if not duplicated and outcome[0] == "rejected":
        with pytest.raises(RejectedEvent) as caught:
            decode(raw, max_bytes=MAX_BYTES, now_s=now_s)
        assert "written twice" not in caught.value.detail, raw


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=300))
@example(b'{"type":"chat.ended","type":"chat.ended"}')
@example(b"\xed\xa0\x80")
@example(b'{"\xff":1,"\xff":2}')
def test_arbitrary_bytes_are_accepted_or_rejected_never_raised(raw: bytes) -> None:
    check(raw, None)


@SETTINGS
@given(st.data())
def test_arbitrary_json_is_accepted_or_rejected_alike(data: st.DataObject) -> None:
    node = data.draw(documents)
    raw = encoded(data.draw(rendered(node)))
    check(raw, has_duplicate(node))


# -- event-shaped records -------------------------------------------------------------------

_VALID: dict[str, dict[str, Any]] = {
    "ticket.created": {
        "ticket_id": "T1",
        "channel": "Email",
        "queue": "billing",
        "priority": "high",
        "requester_id": "u1",
    },
    "ticket.replied": {
        "ticket_id": "T1",
        "author_role": "agent",
        "public": False,
        "agent_id": "a1",
    },
    "ticket.status_changed": {"ticket_id": "T1", "status": "solved"},
    "ticket.updated": {
        "ticket_id": "T1",
        "channel": "Phone",
        "queue": "billing",
        "priority": "low",
    },
    "chat.requested": {"chat_id": "C1", "channel": "chat", "queue": "sales", "priority": "normal"},
    "chat.accepted": {"chat_id": "C1", "agent_id": "a1"},
    "chat.abandoned": {"chat_id": "C1"},
    "chat.ended": {"chat_id": "C1", "ended_by": "customer"},
    "survey.responded": {"kind": "nps", "score": 9, "ticket_id": "T1", "queue": "sales"},
    "agent.status_changed": {"agent_id": "a1", "status": "busy"},
}


@st.composite
def edge_times(draw: st.DrawFn) -> str:
    """RFC 3339 times near the ends of what datetime holds, in any offset and precision."""
    moment = draw(
        st.one_of(
            st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 2, 23, 59)),
            st.datetimes(
                min_value=datetime(9999, 12, 30),
                max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
            ),
            st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)),
        )
    )
    offset_min = draw(
        st.sampled_from([0, 1, -1, 14 * 60, -12 * 60, 23 * 60 + 59, -(23 * 60 + 59)])
        | st.integers(-1439, 1439)
    )
    digits = draw(st.integers(0, 9))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + (f"{moment.microsecond:06d}" + "999")[:digits]
    if offset_min == 0 and draw(st.booleans()):
        return text + draw(st.sampled_from(["Z", "z"]))
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return text + f"{sign}{hours:02d}" + draw(st.sampled_from([":", ""])) + f"{minutes:02d}"


#: values that take a record off the fast path or break it
_ODD = st.one_of(
    edge_times(),
    st.sampled_from(["critical", "URGENT", "", "a\nb", "\ud800", 4.0, True, None, -1, 10**30]),
    st.sampled_from(_LITERALS).map(Literal),
    documents,
)


@st.composite
def events_mutated(draw: st.DrawFn) -> tuple[Any, bool]:
    """An event as pairs, broken in up to four ways; and whether a key repeats in it."""
    kind = draw(st.sampled_from(EVENT_TYPES))
    members: list[tuple[str, Any]] = [
        ("event_id", "e1"),
        ("type", kind),
        ("occurred_at", draw(edge_times())),
        *_VALID[kind].items(),
    ]
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["value", "time", "twice", "twice", "unknown", "drop"]))
        at = draw(st.integers(0, len(members) - 1))
        name, value = members[at]
        if how == "value":
            members[at] = (name, draw(_ODD))
        elif how == "time":
            members[at] = (name, draw(edge_times()))
        elif how == "twice":  # the same key again, with the same or another value
            again = value if draw(st.booleans()) else draw(_ODD | st.sampled_from(EVENT_TYPES))
            members.insert(draw(st.integers(0, len(members))), (name, again))
        elif how == "unknown":
            members.append((draw(keys.filter(lambda k: k not in dict(members))), draw(documents)))
        elif len(members) > 1:
            del members[at]
    node = Pairs(draw(st.permutations(members)) if draw(st.booleans()) else members)
    return node, has_duplicate(node)


@SETTINGS
@given(st.data())
def test_mutated_events_are_accepted_or_rejected_alike(data: st.DataObject) -> None:
    node, duplicated = data.draw(events_mutated())
    raw = encoded(data.draw(rendered(node)))
    check(raw, duplicated, now_s=data.draw(st.sampled_from([NOW_S, None])))


@pytest.mark.parametrize(
    ("occurred_at", "fits"),
    [
        ("0001-01-01T00:00:00+14:00", False),
        ("9999-12-31T23:59:59-12:00", False),
        ("0001-01-01T00:00:00.1234567+14:00", False),
        ("9999-12-31T23:59:59.9999999-00:01", False),
        ("0001-01-01T13:59:59.999999+14:00", False),
        ("0001-01-01T14:00:00+14:00", True),
        ("9999-12-31T23:59:59.999999Z", True),
        ("9999-12-31T23:59:59.9999995Z", True),  # truncated to the microsecond
        ("0001-01-01T00:00:00Z", True),
    ],
)
@pytest.mark.parametrize("priority", ["high", "critical"])
def test_times_at_the_ends_of_datetime(occurred_at: str, fits: bool, priority: str) -> None:
    raw = orjson.dumps(
        {
            "event_id": "e",
            "type": "ticket.created",
            "occurred_at": occurred_at,
            "ticket_id": "t",
            "priority": priority,
        }
    )
    for now_s in (NOW_S, None):
        assert_same(raw, now_s)
    expected: tuple[str, str | None]
    if priority == "critical":  # pydantic names the first field it refuses
        expected = ("rejected", "invalid_value")
    else:
        expected = ("accepted", None) if fits else ("rejected", "invalid_timestamp")
    got = verdict(decode, raw, None)
    assert (got[0], None if got[0] == "accepted" else got[1]) == expected


# -- the cheap tests are sound --------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_members_distinct_never_clears_a_record_with_a_key_twice(data: st.DataObject) -> None:
    node = data.draw(documents | events_mutated().map(lambda pair: pair[0]))
    raw = encoded(data.draw(rendered(node)))
    duplicated = has_duplicate(node)
    if members_distinct(raw):
        assert not duplicated, raw
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and members_distinct(raw, distinct_members=len(parsed)):
        assert not duplicated, raw
    # the parse finds every repeated key Python's parser reads: here, all of them
    assert (duplicate_key(raw) is not None) == duplicated, raw


_OPTIONAL_VALUES = st.one_of(
    st.sampled_from(["other", "chat", "unassigned", "normal", "low", "OTHER", "Chat"]),
    st.sampled_from([None, True, False, "agent", "customer", "a1"]),
)


@SETTINGS
@given(st.sampled_from(list(wire._STRUCTS.values())), st.data())
def test_keys_read_into_fields_are_never_overcounted(struct: Any, data: st.DataObject) -> None:
    # the fast decoder clears a record when it has fewer commas than _fast_keys(): that
    # must never count a key the record does not have, whatever the values
    fields = msgspec.structs.fields(struct)
    body: dict[str, Any] = {"type": struct.type}
    for field in fields:
        if field.required:
            body[field.name] = {
                "occurred_at": "2026-11-23T10:00:00Z",
                "author_role": "agent",
                "status": "open",
                "kind": "nps",
                "score": 5,
            }.get(field.name, "x1")
        elif data.draw(st.booleans()):
            body[field.name] = data.draw(_OPTIONAL_VALUES)
    if (
        struct is wire.SurveyResponded
        and body.get("ticket_id") is None
        and body.get("chat_id") is None
    ):
        body["ticket_id"] = "T1"
    try:
        event = wire._DECODE(orjson.dumps(body))
    except msgspec.ValidationError:
        return  # a value the field does not take: the schema decides such records
    assert type(event) is struct
    assert 0 < struct._REQUIRED_KEYS <= event._fast_keys() <= len(body), body
    if set(body) == {"type"} | {f.name for f in fields if f.required}:
        assert event._fast_keys() == struct._REQUIRED_KEYS


def test_typical_records_are_cleared_by_counting() -> None:
    # the cheap test must clear typical traffic, or every record pays for a second parse:
    # all but those with unknown fields or a key the count cannot tell from its default
    cleared = unclear = 0
    for record in itertools.islice(generate(SimConfig(seed=3)), 3000):
        if record.occurred_at_s is None:
            continue
        body = orjson.loads(record.value)
        event = wire._DECODE(record.value)
        if record.value.count(b",") < event._fast_keys():
            cleared += 1
        elif (
            set(body) <= {f for s in wire._STRUCTS.values() for f in s.__struct_fields__} | {"type"}
            and body.get("public") is not True
        ):
            unclear += 1
    assert cleared > 2000
    assert unclear == 0


def test_an_error_no_reason_names_is_a_rejection_on_the_fast_path_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no known record gets here: the duplicate test itself is made to fail
    def broken(raw: bytes, **_: Any) -> bool:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(events, "members_distinct", broken)
    raw = (
        b'{"event_id":"e","type":"chat.accepted","occurred_at":"2026-11-23T10:00:00Z",'
        b'"chat_id":"c","agent_id":"a","x":1}'
    )
    with pytest.raises(RejectedEvent) as caught:
        decode_record(raw)
    assert caught.value.reason == "decoder_error"
    assert caught.value.detail == "RuntimeError: broken on purpose"


def test_a_time_near_the_ends_of_datetime_is_left_to_the_schema() -> None:
    # the fast path's margin: a day inside years 1 and 9999, wider than any offset
    low = datetime.fromisoformat("0001-01-01T00:00:00+00:00")
    high = datetime.fromisoformat("9999-12-31T23:59:59.999999+00:00")
    assert timedelta(hours=24) <= timedelta(seconds=wire._SAFE_MIN_S - low.timestamp())
    assert timedelta(hours=24) <= timedelta(seconds=high.timestamp() - wire._SAFE_MAX_S)


# -- the fault suite's poison ---------------------------------------------------------------


def test_the_poison_storm_draws_keys_twice_and_times_out_of_range() -> None:
    from tests.faults_support import OUT_OF_RANGE_TIMES, draw_poison

    out_of_range = [time.encode() for time in OUT_OF_RANGE_TIMES]
    twice = year0 = time_alone = 0
    for poison in draw_poison(3000, max_record_bytes=MAX_BYTES):
        value = poison.record.value
        if len(value) <= MAX_BYTES and strict_json(value) and duplicate_key(value) is not None:
            twice += 1
            assert poison.reason == "invalid_json", value
        written = [time for time in out_of_range if time in value]
        if written:
            year0 += 1
            fixed = value.replace(written[0], b"2026-11-23T01:00:00Z")
            if verdict(decode, fixed, None)[0] == "accepted":  # the time is all that is wrong
                time_alone += 1
                assert poison.reason in ("invalid_timestamp", "wrong_topic"), value
    assert twice >= 100
    assert year0 >= 50
    assert time_alone >= 10
