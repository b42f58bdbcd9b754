"""The engine's msgspec decoder agrees with the pydantic schema on every record.

Same verdict (accepted, or rejected with the same reason) and, when accepted, the same
field values and the same event millisecond — on generated records that are valid, almost
valid, and broken at the byte level.
"""

from __future__ import annotations

import inspect
import math
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import EVENT_TYPES, decode
from deskpulse.models.wire import decode_record

NOW_S = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
MISSING = object()


def verdict(decoder: Any, raw: bytes, now_s: float | None) -> tuple[str, Any]:
    try:
        result = decoder(raw, max_bytes=4096, now_s=now_s, max_future_s=300.0)
    except RejectedEvent as error:
        return ("rejected", error.reason)
    return ("accepted", result)


def assert_same(raw: bytes, now_s: float | None = NOW_S) -> None:
    expected = verdict(decode, raw, now_s)
    got = verdict(decode_record, raw, now_s)
    assert got[0] == expected[0], (raw, expected, got)
    if expected[0] == "rejected":
        assert got[1] == expected[1], raw
        return
    model, (struct, ms) = expected[1], got[1]
    assert struct.type == model.type
    assert struct.conversation_id == model.conversation_id
    for name in struct.__struct_fields__:
        assert getattr(struct, name) == getattr(model, name), (raw, name)
    assert ms == math.floor(model.occurred_at.timestamp() * 1000), raw


def timestamps() -> st.SearchStrategy[Any]:
    moments = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), allow_imaginary=False
    )
    offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)

    def render(moment: datetime, offset_min: int, form: int, digits: int, sep: str) -> str:
        base = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
        fraction = f"{moment.microsecond:06d}{moment.microsecond % 997:03d}"[:digits]
        base += "." + fraction if digits else ""
        if form == 0:
            return base + "Z"
        if form == 1:
            return base  # naive
        sign = "+" if offset_min >= 0 else "-"
        hours, minutes = divmod(abs(offset_min), 60)
        return base + (
            f"{sign}{hours:02d}:{minutes:02d}" if form == 2 else f"{sign}{hours:02d}{minutes:02d}"
        )

    rendered = st.builds(
        render,
        moments,
        offsets,
        st.integers(0, 3),
        st.integers(0, 9),
        st.sampled_from(["T", "t", " ", "_"]),
    )
    # near the clock too, for the future limit
    near = st.integers(-1000, 1000).map(
        lambda s: datetime.fromtimestamp(NOW_S + 300 + s / 1000, UTC).isoformat()
    )
    odd = st.sampled_from(
        [
            "2026-11-23T14:18:31.9999995Z",
            "2026-11-23T14:18:31.0009999Z",
            "2026-11-23T14:18Z",
            "2026-11-23T14:18:31,5Z",
            "2026-11-23",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "yesterday",
            "",
        ]
    )
    return st.one_of(rendered, near, odd, st.integers(), st.floats(), st.none())


def texts(max_size: int = 260) -> st.SearchStrategy[Any]:
    alphabet = st.characters(codec="utf-8") | st.sampled_from(["\n", "\x1f", "\x7f", "İ", "ß", "A"])
    return st.one_of(
        st.text(alphabet, max_size=max_size),
        st.text("aB-", min_size=max_size - 6, max_size=max_size),
        st.integers(),
        st.none(),
        st.booleans(),
    )


def choice(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(values), texts(12))


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": texts(130),
    "occurred_at": timestamps(),
    "ticket_id": texts(),
    "chat_id": texts(),
    "requester_id": texts(),
    "agent_id": texts(),
    "channel": choice(["email", "Chat", "PHONE", "web\n", "İx"]),
    "queue": choice(["billing", "tier 1", "q\x00"]),
    "priority": choice(["low", "normal", "high", "urgent", "URGENT", None]),
    "author_role": choice(["agent", "customer", "system", "Agent"]),
    "public": st.one_of(st.booleans(), st.sampled_from([0, 1, "true", None])),
    "status": choice(["new", "open", "pending", "hold", "solved", "closed", "busy", "away"]),
    "ended_by": choice(["agent", "customer", "system", None]),
    "kind": choice(["csat", "nps", "ces", "CSAT"]),
    "score": st.one_of(
        st.integers(-2, 12), st.sampled_from([4.0, True, "5", 10**30, None]), st.floats()
    ),
    "unknown": st.one_of(st.integers(), texts(8), st.lists(st.integers(), max_size=2)),
}


@st.composite
def records(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {}
    kind = draw(st.one_of(st.sampled_from(EVENT_TYPES), st.sampled_from(["ticket.nope", 7, None])))
    if draw(st.integers(0, 19)):
        body["type"] = kind
    for name, strategy in FIELDS.items():
        if draw(st.integers(0, 3)):  # present three times in four
            body[name] = draw(strategy)
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer too large for orjson: write it by hand
        return (
            "{" + ",".join(f'"{k}":{v}' for k, v in body.items() if isinstance(v, int)) + "}"
        ).encode()


@st.composite
def valid_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(EVENT_TYPES))
    moment = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)))
    offset = timezone(timedelta(minutes=draw(st.integers(-600, 600))))
    body: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=20)),
        "type": kind,
        "occurred_at": moment.replace(tzinfo=offset).isoformat(),
        "ticket_id": "T1",
        "chat_id": "C1",
        "author_role": "agent",
        "agent_id": "A1",
        "status": "busy" if kind == "agent.status_changed" else "open",
        "kind": "nps",
        "score": draw(st.integers(0, 10)),
        "channel": draw(st.sampled_from(["Email", "chat", "VOICE"])),
    }
    return orjson.dumps(body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(valid_records()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        action = draw(st.integers(0, 2))
        byte = draw(st.sampled_from(b'{}[]",:0123456789.eE+-ntfZ \\\x00\xff\x80'))
        if action == 0:
            raw[at] = byte
        elif action == 1:
            raw.insert(at, byte)
        else:
            del raw[at]
    return bytes(raw)


SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(records())
def test_generated_records_get_the_same_verdict_and_values(raw: bytes) -> None:
    assert_same(raw)


@SETTINGS
@given(valid_records())
def test_valid_records_decode_to_the_same_event(raw: bytes) -> None:
    assert decode_record(raw)  # the generator makes only valid ones
    assert_same(raw)


@SETTINGS
@given(mutated())
def test_byte_level_damage_gets_the_same_verdict(raw: bytes) -> None:
    assert_same(raw)


@given(st.floats(-2000, 2000))
@example(300.0)
@example(300.0005)
def test_the_future_limit_is_the_same_to_the_microsecond(ahead_s: float) -> None:
    at = datetime.fromtimestamp(NOW_S + ahead_s, UTC).isoformat()
    assert_same(
        orjson.dumps({"event_id": "e", "type": "chat.abandoned", "occurred_at": at, "chat_id": "c"})
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59.9999995Z","ticket_id":"t"}',
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59.123Z","ticket_id":"t","channel":"web\\n"}',
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","channel":"\xc4\xb0x"}',
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","channel":"EMAIL"}',
        b'{"event_id":"e","type":"survey.responded","occurred_at":"2026-11-23T11:59:59Z","kind":"csat","score":4.0,"ticket_id":"t"}',
        b'{"event_id":"e","type":"survey.responded","occurred_at":"2026-11-23T11:59:59Z","kind":"csat","score":9,"ticket_id":"t"}',
        b'{"event_id":"e","type":"survey.responded","occurred_at":"2026-11-23T11:59:59Z","kind":"csat","score":4}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","chat_id":"d"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":1,"chat_id":"d"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","x":NaN}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59","chat_id":"c"}',
        b'{"event_id":"e","type":"ticket.replied","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","author_role":"agent","public":1}',
        b'\xef\xbb\xbf{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"\xff"}',
        # control characters reach a dimension only escaped or as a raw DEL: the fast
        # path checks dimensions after decoding exactly then
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","queue":"q\\u0000"}',
        b'{"event_id":"e","type":"chat.requested","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","queue":"a\x7fb"}',
        b'{"event_id":"e","type":"survey.responded","occurred_at":"2026-11-23T11:59:59Z","kind":"ces","score":3,"chat_id":"c","channel":"\\t"}',
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","note":"line\\nbreak\x7f","queue":"ok"}',
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t\\u0001","queue":"q\\/1"}',
        b"[]",
        b"",
        # a key twice, however spelled and wherever: invalid_json on both paths
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","type":"chat.ended"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","ch\\u0061t_id":"c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z",'
        b'"chat_id":"c" ,\n "chat_id"\t: "c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","x":[1,{"a":{},"a":[]}]}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","x":{"a":1},"y":{"a":1}}',
        b'{"event_id":"e","type":"ticket.replied","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","author_role":"agent","public":true,"public":true}',
        b'{"event_id":"e","type":"ticket.replied","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","author_role":"agent","agent_id":null,"agent_id":"a"}',
        b'{"event_id":"e","type":"chat.requested","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","priority":"normal","priority":"normal"}',
        b'{"event_id":"e","type":"chat.requested","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","queue":"a,b,c","channel":"x"}',
        b'{"event_id":"e","type":"chat.requested","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c\\":","queue":"q"}',
        # dimensions the schema allows but str.isprintable refuses (no-break space, a
        # zero-width space, an unassigned code point): the schema's event, copied into a
        # struct, must not be refused by the struct
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","channel":"a\xc2\xa0b"}',
        b'{"event_id":"e","type":"ticket.created","occurred_at":"2026-11-23T11:59:59Z","ticket_id":"t","queue":"q\xe2\x80\x8b"}',
        b'{"event_id":"e","type":"chat.requested","occurred_at":"2026-11-23T11:59:59Z","chat_id":"c","channel":"email\xf1\x8d\xa4\x9d"}',
        b'{"event_id":"e","type":"survey.responded","occurred_at":"2026-11-23T11:59:59Z","kind":"ces","score":3,"chat_id":"c","queue":"\\u00a0"}',
        # times of year 0 or 10000 in UTC, and the first and last that are not
        b'{"event_id":"e","type":"chat.ended","occurred_at":"0001-01-01T00:00:00+14:00","chat_id":"c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"0001-01-01T14:00:00+14:00","chat_id":"c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"9999-12-31T23:59:59-12:00","chat_id":"c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"9999-12-31T23:59:59.999999Z","chat_id":"c"}',
        b'{"event_id":"e","type":"chat.ended","occurred_at":"9999-12-31T23:59:59.9999999Z","chat_id":"c"}',
    ],
)
def test_edge_cases(raw: bytes) -> None:
    assert_same(raw)
    assert_same(raw, now_s=None)


def test_the_decoder_tables_records_get_the_same_verdict() -> None:
    from tests.unit.test_events import NOW_S as TABLE_NOW_S
    from tests.unit.test_events import REJECTED

    for _, raw, _ in REJECTED:
        assert_same(raw, now_s=TABLE_NOW_S)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "depth", [10, 63, 64, 100, 127, 128, 129, 199, 200, 201, 250, 500, 1000, 5000, 100_000]
)
def test_deep_nesting_in_an_unknown_field_gets_the_same_verdict(depth: int) -> None:
    # pydantic refuses past ~200 levels, msgspec past more (RecursionError): the schema decides
    nested = b"[" * depth + b"]" * depth
    assert_same(
        b'{"event_id":"e","type":"chat.ended","occurred_at":"2026-11-23T11:59:59Z",'
        b'"chat_id":"c","x":' + nested + b"}",
        now_s=None,
    )


def test_the_fault_suites_poison_gets_the_same_verdict() -> None:
    # 3,000 records of the poison-pill storm (tests/system/test_faults.py): bytes, JSON, deep
    # nesting, NaN, broken UTF-8, wrong types, huge values
    from tests.faults_support import draw_poison

    for poison in draw_poison(3000, max_record_bytes=4096):
        assert_same(poison.record.value, now_s=None)


def test_too_large_and_tombstones_are_rejected_alike() -> None:
    assert_same(b'{"x":"' + b"a" * 5000 + b'"}')
    assert verdict(decode_record, None, None) == ("rejected", "invalid_json")  # type: ignore[arg-type]


def _reason(decoder: Any, raw: bytes) -> str | None:
    try:
        decoder(raw, max_bytes=1_048_576, now_s=None)
    except RejectedEvent as error:
        return error.reason
    return None


def _frames_down(frames: int, call: Any) -> Any:
    """``call()`` from ``frames`` more frames down the stack."""
    return call() if frames == 0 else _frames_down(frames - 1, call)


@pytest.mark.parametrize("margin", [30, 100, 250, None])
@pytest.mark.parametrize("decoder", [decode, decode_record], ids=["schema", "wire"])
def test_a_deeply_nested_record_gets_the_same_reason_from_any_stack(
    decoder: Any, margin: int | None
) -> None:
    """A record with a key written twice and a value nested ``nesting`` deep is refused
    for one reason whatever the stack it is decoded from (Python's JSON parser counts
    its levels against the recursion limit together with its caller's frames: such a
    record was refused as ``invalid_json`` from a shallow stack and ``invalid_value`` 100
    frames down, so a worker's count by reason depended on where it decoded). Nested
    ``margin`` levels less than the parser could take from here (so from some frames
    further down it could not), or 1,700 deep."""
    here = len(inspect.stack(0))
    nesting = 1_700 if margin is None else sys.getrecursionlimit() - here - margin
    raw = (
        b'{"event_id":"pp-1","type":"chat.ended","occurred_at":"2026-11-23T01:00:00Z",'
        b'"ended_by":"customer","occurred_at":true,"d":' + b"[" * nesting + b"]" * nesting + b"}"
    )
    reasons = {_frames_down(frames, lambda: _reason(decoder, raw)) for frames in (0, 150, 400)}
    assert len(reasons) == 1, reasons
    assert None not in reasons
