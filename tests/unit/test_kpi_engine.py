"""The engine interface: both implementations are one protocol, and the pipe's messages
survive the trip.

The worker never asks which engine it holds (streams/app.py), so the in-process engine and
the engine-process proxy must offer the same methods with the same signatures; the proxy's
messages must come out of encode/decode as they went in, each to its own class. The
engine's behaviour in both modes is tested against a real broker and Redis elsewhere
(tests/test_worker.py, tests/test_crash.py, tests/test_hardening_*.py, parametrised by
engine mode).
"""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from deskpulse.exporters.prometheus import KpiCollector
from deskpulse.models.settings import Settings
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.engine import DeadLetterTrouble, SourceRecord
from deskpulse.streams.kpi_engine import KpiEngine, LocalEngine
from deskpulse.streams.offload import (
    Abandon,
    BrokerState,
    CheckBreaches,
    Counters,
    DeadLetters,
    Done,
    EngineProcess,
    Failed,
    GivenUp,
    Ping,
    Pinged,
    Process,
    Processed,
    Published,
    PublishOutputs,
    RecordingMetrics,
    RedisState,
    Refresh,
    Refreshed,
    Refused,
    Start,
    Started,
    Stop,
    decode_reply,
    decode_request,
    encode,
)
from deskpulse.streams.store import Store

# the protocol's methods and attributes, as the protocol itself lists them
METHODS = sorted(
    name
    for name, member in vars(KpiEngine).items()
    if not name.startswith("_") and inspect.isfunction(member)
)
ATTRIBUTES = sorted(KpiEngine.__annotations__)


def local_engine(settings: Settings) -> LocalEngine:
    # nothing connects before start(): no broker or Redis is needed to build one
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    return LocalEngine(settings, store, RecordingMetrics(), KpiCollector(store, settings))


def implementations() -> list[Any]:
    settings = Settings()
    return [local_engine(settings), EngineProcess(settings, RecordingMetrics())]


def test_the_protocol_lists_what_the_worker_asks() -> None:
    assert METHODS == [
        "abandon",
        "check_breaches",
        "kill",
        "ping",
        "process",
        "publish_outputs",
        "refresh",
        "start",
        "stop",
    ]
    assert ATTRIBUTES == ["generation", "on_broker", "on_deadletter", "on_gone"]


@pytest.mark.parametrize("engine", implementations(), ids=lambda e: type(e).__name__)
def test_both_engines_implement_the_protocol_with_its_signatures(engine: Any) -> None:
    assert isinstance(engine, KpiEngine)
    for name in METHODS:
        wanted = getattr(KpiEngine, name)
        given = getattr(type(engine), name)
        assert inspect.signature(given) == inspect.signature(wanted), name
        assert inspect.iscoroutinefunction(given) == inspect.iscoroutinefunction(wanted), name
    for name in ATTRIBUTES:
        assert hasattr(engine, name), name
    assert engine.generation is None  # known once started


def test_an_object_missing_a_method_is_no_engine() -> None:
    engine = local_engine(Settings())
    assert isinstance(engine, KpiEngine)

    class Partial:
        generation = on_broker = on_deadletter = on_gone = None

        async def process(self, records: Any) -> None: ...

    assert not isinstance(Partial(), KpiEngine)


COUNTERS = Counters(
    processed=[("t.tickets", "ticket.created", 3)],
    rejected=[("t.chats", "invalid_json", 1)],
    skipped=[("t.tickets", "already_applied", 2)],
    rerouted={"t.tickets": 1},
    flushes=[(0.25, 4)],
    event_times={"t.tickets": 1_700_000_000.5},
    redis_state=True,
)

REQUESTS = [
    Start(1, 8),
    Process(
        2,
        ["t.tickets", "deskpulse.repartition"],
        [0, 3],
        [17, 4],
        [b"T-1", None],
        [b'{"type": "ticket.created"}', b"\x00\xff"],
        [None, [["deskpulse-source-topic", b"t.tickets"]]],
    ),
    CheckBreaches(3, {0: 1_700_000_000_000, 3: 1_700_000_001_000}),
    Refresh(4),
    PublishOutputs(5),
    Ping(6, 4.0),
    Abandon(5.0),
    Stop(7),
]

REPLIES = [
    Done(1),
    Started(2, "0123abcd"),
    Started(2, None),
    Processed(3, COUNTERS),
    Refreshed(4, b"# HELP x\nx 1\n", 1_700_000_000.25),
    Refreshed(4, b"", None),
    Published(5, 2),
    Pinged(6, None),
    Pinged(6, "no answer from 127.0.0.1:9092 (none within 4 s)"),
    Refused(7, "StateLost", "generation_changed", "the state was started anew", "restart"),
    GivenUp(8, "gave up a batch of 3 records at the stop"),
    Failed(9, "RuntimeError('boom')"),
    DeadLetters(DeadLetterTrouble(1_700_000_000.0, "dead letters of partition 0 (2) ...")),
    DeadLetters(None),
    BrokerState(False),
    RedisState(False),
    RedisState(True),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_requests_round_trip(request_: Any) -> None:
    decoded = decode_request(encode(request_))
    assert type(decoded) is type(request_)
    assert decoded == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_replies_round_trip(reply: Any) -> None:
    decoded = decode_reply(encode(reply))
    assert type(decoded) is type(reply)
    assert decoded == reply


def test_a_message_for_the_other_side_is_refused() -> None:
    # the two directions are two unions: a reply never decodes as a request, nor back
    with pytest.raises(msgspec.ValidationError):
        decode_request(encode(Done(1)))
    with pytest.raises(msgspec.ValidationError):
        decode_reply(encode(Refresh(1)))


def test_a_batch_travels_as_the_records_it_was_made_of() -> None:
    process = decode_request(encode(REQUESTS[1]))
    assert isinstance(process, Process)
    assert process.records() == [
        SourceRecord("t.tickets", 0, 17, b"T-1", b'{"type": "ticket.created"}', None),
        SourceRecord(
            "deskpulse.repartition",
            3,
            4,
            None,
            b"\x00\xff",
            [["deskpulse-source-topic", b"t.tickets"]],
        ),
    ]


def test_counters_taken_from_the_child_report_the_same_to_the_worker() -> None:
    recorded = RecordingMetrics()
    recorded.processed("t.tickets", "ticket.created", 2)
    recorded.processed("t.tickets", "ticket.created", 1)
    recorded.rejected("t.chats", "invalid_json", 1)
    recorded.skipped("t.tickets", "already_applied", 2)
    recorded.rerouted("t.tickets", 1)
    recorded.flushed(0.25, 4)
    recorded.event_time("t.tickets", 1_700_000_000.5)
    recorded.event_time("t.tickets", 1_600_000_000.0)  # older: the newest stays
    recorded.redis_up(True)
    taken = recorded.take()
    assert taken == COUNTERS
    assert recorded.take() == Counters([], [], [], {}, [], {}, None)  # taken once
    worker = RecordingMetrics()
    decode_reply(encode(Processed(1, taken))).counters.apply_to(worker)  # type: ignore[union-attr]
    assert worker.take() == COUNTERS


def test_the_child_tells_each_change_of_redis_at_once_and_the_worker_follows() -> None:
    """A batch retrying through a Redis outage answers only when Redis is back: the child
    sends each change of state as it happens, unasked, and the worker's gauge follows."""
    recorded = RecordingMetrics()
    told: list[bool] = []
    recorded.on_redis = told.append
    for up in (True, False, False, False, True, True, False):
        recorded.redis_up(up)
    assert told == [True, False, True, False]  # changes only, in order
    assert recorded.take().redis_state is False  # and the batch's counters still say it

    worker = RecordingMetrics()
    engine = EngineProcess(Settings(), worker)
    engine._take(decode_reply(encode(RedisState(False))))
    assert worker.redis_state is False
    engine._take(decode_reply(encode(RedisState(True))))
    assert worker.redis_state is True


def test_batches_end_even_when_the_workers_metrics_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch the child committed must end in the worker whatever its metrics do: one
    left pending would hold its agent, and every partition of its topic, without a word."""
    import asyncio
    import logging

    from deskpulse.streams.offload import Counters, EngineProcess, Processed

    class Broken:
        def processed(self, *args: Any) -> None:
            raise ValueError("a metric that cannot take this")

    engine = EngineProcess(Settings(), Broken())  # type: ignore[arg-type]

    async def ask(request: Any, kind: Any) -> Processed:
        await asyncio.sleep(0)
        counters = Counters([("t", "ticket.created", 2)], [], [], {}, [], {}, None)
        return Processed(request.id, counters)

    engine._ask = ask  # type: ignore[method-assign]
    record = SourceRecord("t", 0, 5, b"k", b"{}", None)

    async def run() -> None:
        await asyncio.wait_for(
            asyncio.gather(engine.process([record]), engine.process([record])), 5
        )

    with caplog.at_level(logging.ERROR, logger="deskpulse.offload"):
        asyncio.run(run())
    assert any("could not be applied" in r.getMessage() for r in caplog.records)
