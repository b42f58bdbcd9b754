"""The engine in a child process, so Faust's consumer and the fold use both cores.

A Faust agent that decodes, folds and commits in its own event loop shares one core
between Faust's per-event bookkeeping and the engine. With ``DESKPULSE_ENGINE_PROCESS``
the worker holds an :class:`EngineProcess`, the :class:`~streams.kpi_engine.KpiEngine`
that hands every call to a child, ``python -m deskpulse.streams.offload``. The child serves
a :class:`~streams.kpi_engine.LocalEngine`, the very engine the worker runs in its own
process otherwise: each request is answered by the engine method of the same name. They
talk over the child's stdin and stdout with length-prefixed frames, from the worker's event
loop: no executor threads in the worker (they would contend with Faust for the interpreter
lock). The frames carry typed messages (msgspec structs, one class per request and reply,
tagged with its name). Each batch travels as columns of raw record bytes; the child
decodes, folds and commits it and answers with the pipeline counters the worker exports.
The agent acknowledges a batch only once the child reports it committed, so the
exactly-once argument is unchanged: nothing is acknowledged before Redis holds it.

The KPI snapshot is built in a second child, the outputs process
(``python -m deskpulse.streams.outputs``, :class:`OutputsProcess`), which serves the same
frames: the worker asks it for a refresh on its timer and gets the rendered exposition back
for ``/metrics``, and the group leader asks it to publish the KPI snapshots and evaluate
the alert rules. So they never run in the worker's event loop, nor in the interpreter that
commits the batches (with thousands of groups a refresh is hundreds of milliseconds of
Python, which the commits once shared in switch-interval slices). The broker probe pings
over the engine process's producer (the worker has none of its own in this mode).

Batches are applied in the order sent, one at a time; batches that queue up meanwhile
(one per agent) travel together in the next request. Breach checks run beside them, as
in-process: each partition's claims under its lock, a chunk of due tickets at a time, so a
batch waits for one chunk, not for a whole check (a check's clocks come from what Redis
holds applied, never from a batch still in flight). The child ignores SIGINT and SIGTERM
(the worker stops it after the batch in flight) and exits when its stdin closes; if it
dies, the batch in flight fails and the worker stops loudly, to be restarted at the offset
fence. A batch refused because the Redis state is lost or foreign is not a failure: it
comes back as a :class:`Refused` reply, raised in the worker as that
:class:`~models.errors.StateError` (the worker stops applying and reports it, see
:mod:`streams.integrity`). Its :class:`Started` reply carries
the state generation it found, which the worker checks is its own.

The child never outlives the worker: on Linux the kernel kills it when the worker dies
(``PR_SET_PDEATHSIG``), elsewhere it notices within a second that its parent changed.
At a stop, a batch stuck retrying Redis or the broker is given up after
:data:`STOP_GRACE_S` (unacknowledged: the next start applies it from the fence), and a
child that does not end :data:`STOP_TIMEOUT_S` after being asked is killed. While dead
letters fail or wait for the broker, the child tells the worker unasked, for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import msgspec

from deskpulse.models.errors import Abandoned, BrokerUnavailable
from deskpulse.models.settings import Settings
from deskpulse.streams.engine import DeadLetterTrouble, Metrics, Record, SourceRecord
from deskpulse.streams.frames import frame as framed
from deskpulse.streams.frames import pipes, read_frame
from deskpulse.streams.runtime import end_with_parent

__all__ = [
    "ENGINE_MODULE",
    "OUTPUTS_MODULE",
    "PING_SLACK_S",
    "STOP_GRACE_S",
    "STOP_TIMEOUT_S",
    "Abandon",
    "BrokerState",
    "CheckBreaches",
    "Counters",
    "DeadLetters",
    "Done",
    "EngineProcess",
    "EngineProcessError",
    "Failed",
    "GivenUp",
    "OutputsProcess",
    "Ping",
    "Pinged",
    "Process",
    "Processed",
    "PublishOutputs",
    "Published",
    "RecordingMetrics",
    "RedisState",
    "Refresh",
    "Refreshed",
    "Refused",
    "Reply",
    "Request",
    "Start",
    "Started",
    "Stop",
    "decode_reply",
    "decode_request",
    "encode",
]

log = logging.getLogger("deskpulse.offload")

#: At a stop, how long batches in flight may still take before they are given up.
STOP_GRACE_S = 5.0
#: How long the worker waits for the child to end once asked, before it kills it.
STOP_TIMEOUT_S = STOP_GRACE_S + 5.0
#: How much longer than the broker ping itself the child may take to answer one.
PING_SLACK_S = 1.0
#: The modules the two children run: the engine process, the outputs process.
ENGINE_MODULE = "deskpulse.streams.offload"
OUTPUTS_MODULE = "deskpulse.streams.outputs"


class EngineProcessError(RuntimeError):
    """The engine process failed a request, or is gone."""


# --- the messages ------------------------------------------------------------------------
# msgpack arrays led by the class name ([tag, field, ...]), decoded into these classes. A
# request that is answered carries an id, and so does its answer; a batch travels as
# columns (one list per record field), the cheapest shape to encode and decode.


class Counters(msgspec.Struct, array_like=True):
    """What the engine reported to its ``Metrics`` while applying one batch."""

    processed: list[tuple[str, str, int]]  # (topic, event type, count)
    rejected: list[tuple[str, str, int]]  # (topic, reason, count)
    skipped: list[tuple[str, str, int]]  # (topic, reason, count)
    rerouted: dict[str, int]
    flushes: list[tuple[float, int]]  # (seconds, events)
    event_times: dict[str, float]
    redis_state: bool | None
    holes: list[tuple[str, str, int]] = []  # (topic, outcome, offsets)

    def apply_to(self, metrics: Metrics) -> None:
        """Report the counts to the worker's metrics."""
        for topic, event_type, count in self.processed:
            metrics.processed(topic, event_type, count)
        for topic, reason, count in self.rejected:
            metrics.rejected(topic, reason, count)
        for topic, reason, count in self.skipped:
            metrics.skipped(topic, reason, count)
        for topic, count in self.rerouted.items():
            metrics.rerouted(topic, count)
        for seconds, events in self.flushes:
            metrics.flushed(seconds, events)
        for topic, t_s in self.event_times.items():
            metrics.event_time(topic, t_s)
        if self.redis_state is not None:
            metrics.redis_up(self.redis_state)
        for topic, outcome, count in self.holes:
            metrics.holes(topic, outcome, count)


class _Message(msgspec.Struct, tag=True, array_like=True):
    pass


class Start(_Message):
    """Start the engine (:meth:`KpiEngine.start`); answered by :class:`Started`."""

    id: int
    partitions: int


class Process(_Message):
    """Apply a batch, as columns; answered by :class:`Processed`."""

    id: int
    topics: list[str]
    partitions: list[int]
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    headers: list[Any]  # read on the repartition topic only: None for input records

    def records(self) -> list[SourceRecord]:
        columns = (self.topics, self.partitions, self.offsets, self.keys, self.values)
        return [SourceRecord(*row) for row in zip(*columns, self.headers, strict=True)]


class CheckBreaches(_Message):
    """Claim and publish due breaches (partition -> clock ms); answered by :class:`Published`."""

    id: int
    clocks: dict[int, int]


class Refresh(_Message):
    """Rebuild the KPI snapshot; answered by :class:`Refreshed`."""

    id: int


class PublishOutputs(_Message):
    """Publish the KPI snapshots, evaluate the alert rules; answered by :class:`Done`."""

    id: int


class Ping(_Message):
    """Ask the broker over the engine's producer; answered by :class:`Pinged`."""

    id: int
    timeout_s: float


class Abandon(_Message):
    """Give up what is still in flight after ``grace_s``; not answered."""

    grace_s: float


class Stop(_Message):
    """Finish what is queued, close and exit; answered by :class:`Done`."""

    id: int


class Done(_Message):
    id: int


class Started(_Message):
    id: int
    generation: str | None  # the state generation the child found


class Processed(_Message):
    id: int
    counters: Counters


class Refreshed(_Message):
    id: int
    exposition: bytes
    refreshed_at: float | None


class Published(_Message):
    id: int
    count: int


class Pinged(_Message):
    id: int
    failure: str | None  # what kept the broker's answer away (None: it answered)


class Refused(_Message):
    """The state is lost or foreign (a :class:`~models.errors.StateError`): not a crash."""

    id: int
    error: str  # the class name
    reason: str
    detail: str
    fix: str


class GivenUp(_Message):
    """Given up at the stop (:class:`~models.errors.Abandoned`): not a crash either."""

    id: int
    detail: str


class Failed(_Message):
    id: int
    error: str


class DeadLetters(_Message):
    """Unasked: dead letters fail or wait for the broker (``None``: no longer)."""

    trouble: DeadLetterTrouble | None


class BrokerState(_Message):
    """Unasked: whether the broker answers, while the engine's producer starts."""

    up: bool


class RedisState(_Message):
    """Unasked: Redis failed or works again, told at once rather than with the batch's
    counters: a batch retrying through an outage answers only when Redis is back."""

    up: bool


#: what the worker sends the child
Request = Start | Process | CheckBreaches | Refresh | PublishOutputs | Ping | Abandon | Stop
#: what the child sends the worker
Reply = (
    Done
    | Started
    | Processed
    | Refreshed
    | Published
    | Pinged
    | Refused
    | GivenUp
    | Failed
    | DeadLetters
    | BrokerState
    | RedisState
)
_Asked = Start | Process | CheckBreaches | Refresh | PublishOutputs | Ping
_Answer = TypeVar("_Answer", Done, Started, Processed, Refreshed, Published, Pinged)

encode = msgspec.msgpack.Encoder().encode
decode_request = msgspec.msgpack.Decoder(Request).decode
decode_reply = msgspec.msgpack.Decoder(Reply).decode


@dataclass
class RecordingMetrics:
    """The engine's ``Metrics`` in the child, taken as :class:`Counters` after each batch."""

    processed_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    rejected_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    skipped_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    rerouted_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    hole_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    flushes: list[tuple[float, int]] = field(default_factory=list)
    event_times: dict[str, float] = field(default_factory=dict)
    redis_state: bool | None = None
    #: told each change of ``redis_state`` as it happens (the child sends it on)
    on_redis: Callable[[bool], None] | None = None
    _told: bool | None = None

    def processed(self, topic: str, event_type: str, count: int) -> None:
        self.processed_counts[(topic, event_type)] += count

    def rejected(self, topic: str, reason: str, count: int) -> None:
        self.rejected_counts[(topic, reason)] += count

    def skipped(self, topic: str, reason: str, count: int) -> None:
        self.skipped_counts[(topic, reason)] += count

    def rerouted(self, topic: str, count: int) -> None:
        self.rerouted_counts[topic] += count

    def holes(self, topic: str, outcome: str, count: int) -> None:
        self.hole_counts[(topic, outcome)] += count

    def flushed(self, seconds: float, events: int) -> None:
        self.flushes.append((seconds, events))

    def event_time(self, topic: str, t_s: float) -> None:
        self.event_times[topic] = max(t_s, self.event_times.get(topic, t_s))

    def redis_up(self, up: bool) -> None:
        self.redis_state = up
        if self.on_redis is not None and up != self._told:
            self._told = up
            self.on_redis(up)

    def take(self) -> Counters:
        """What was recorded since the last take, and start afresh."""
        counters = Counters(
            processed=[(t, e, n) for (t, e), n in self.processed_counts.items()],
            rejected=[(t, r, n) for (t, r), n in self.rejected_counts.items()],
            skipped=[(t, r, n) for (t, r), n in self.skipped_counts.items()],
            rerouted=dict(self.rerouted_counts),
            flushes=self.flushes,
            event_times=self.event_times,
            redis_state=self.redis_state,
            holes=[(t, o, n) for (t, o), n in self.hole_counts.items()],
        )
        self.processed_counts = defaultdict(int)
        self.hole_counts = defaultdict(int)
        self.rejected_counts = defaultdict(int)
        self.skipped_counts = defaultdict(int)
        self.rerouted_counts = defaultdict(int)
        self.flushes, self.event_times, self.redis_state = [], {}, None
        return counters


# --- the child ---------------------------------------------------------------------------


class _Child:
    """The child's side: a :class:`~streams.kpi_engine.LocalEngine` and the requests it
    answers, each by the engine method of the same name; in the outputs process
    (``outputs``), an :class:`~streams.kpi_engine.OwnOutputs`, which is asked for the
    refreshes and publications alone."""

    def __init__(
        self, settings: Settings, writer: asyncio.StreamWriter, *, outputs: bool = False
    ) -> None:
        from deskpulse.exporters.prometheus import KpiCollector
        from deskpulse.streams.kpi_engine import LocalEngine, OwnOutputs
        from deskpulse.streams.redis_client import connect
        from deskpulse.streams.store import Store

        self.writer = writer
        self.redis = connect(settings, purpose="ingest")
        store = Store.from_settings(self.redis, settings)
        self.metrics = RecordingMetrics()
        self.engine: LocalEngine | OwnOutputs
        if outputs:
            self.engine = OwnOutputs(settings, store)
        else:
            engine = LocalEngine(settings, store, self.metrics, KpiCollector(store, settings))
            # unasked, while a batch is held: the worker's /readyz and gauges follow them
            engine.on_deadletter = lambda trouble: self.send(DeadLetters(trouble))
            engine.on_broker = lambda up: self.send(BrokerState(up))
            self.metrics.on_redis = lambda up: self.send(RedisState(up))
            self.engine = engine
        # batches in the order they came; the rest beside them (breach checks take the
        # partitions' locks as the batches do)
        self.ordered: asyncio.Queue[_Asked | None] = asyncio.Queue()

    def send(self, reply: Reply) -> None:
        self.writer.write(framed(encode(reply)))

    async def run(self, reader: asyncio.StreamReader) -> None:
        ordered = asyncio.ensure_future(self.work_in_order())
        beside: set[asyncio.Future[None]] = set()
        stop: Stop | None = None  # None: the worker is gone
        try:
            while (frame := await read_frame(reader)) is not None:
                request = decode_request(frame)
                if isinstance(request, Stop):
                    stop = request
                    break
                if isinstance(request, Abandon):  # the worker stops
                    self.engine.abandon(request.grace_s)
                elif isinstance(request, Start | Process):
                    self.ordered.put_nowait(request)
                else:
                    task = asyncio.ensure_future(self.answer(request))
                    beside.add(task)
                    task.add_done_callback(beside.discard)
            # what is queued may finish; a batch stuck retrying must not hold the exit
            self.engine.abandon(STOP_GRACE_S)
            self.ordered.put_nowait(None)
            await ordered
            if beside:
                await asyncio.gather(*beside, return_exceptions=True)
        finally:
            await self.engine.stop()
            await self.redis.aclose()
        if stop is not None:
            self.send(Done(stop.id))
            with contextlib.suppress(OSError):  # the worker may be gone already
                await self.writer.drain()

    async def work_in_order(self) -> None:
        while (request := await self.ordered.get()) is not None:
            await self.answer(request)

    async def answer(self, request: _Asked) -> None:
        from deskpulse.models.errors import StateError

        reply: Reply
        try:
            reply = await self.handle(request)
        except StateError as error:  # the worker stops applying and reports it, once
            name = type(error).__name__
            reply = Refused(request.id, name, error.reason, error.detail, error.fix)
        except Abandoned as error:  # the stop gave it up: not a failure of the engine
            reply = GivenUp(request.id, str(error))
        except Exception as error:  # reported to the worker, which stops loudly
            log.exception("engine request %s failed", type(request).__name__)
            reply = Failed(request.id, repr(error))
        self.send(reply)
        with contextlib.suppress(OSError):
            await self.writer.drain()

    async def handle(self, request: _Asked) -> Reply:
        """The engine's method for ``request``, its result as the reply."""
        from deskpulse.streams.kpi_engine import LocalEngine

        engine = self.engine
        if isinstance(request, Refresh):
            exposition, refreshed_at = await engine.refresh()
            return Refreshed(request.id, exposition, refreshed_at)
        if isinstance(request, PublishOutputs):
            await engine.publish_outputs()
            return Done(request.id)
        if isinstance(request, Start):
            from deskpulse.streams.runtime import tune_gc

            await engine.start(request.partitions)
            tune_gc()
            return Started(request.id, engine.generation)
        if not isinstance(engine, LocalEngine):
            raise EngineProcessError(f"the outputs process is not asked {type(request).__name__}")
        if isinstance(request, Process):
            try:
                await engine.process(request.records())
            except BaseException:
                self.metrics.take()  # a batch that failed reports nothing
                raise
            return Processed(request.id, self.metrics.take())
        if isinstance(request, CheckBreaches):
            return Published(request.id, await engine.check_breaches(request.clocks))
        try:
            await engine.ping(request.timeout_s)
        except BrokerUnavailable as error:  # an answer, not a failure of the engine
            return Pinged(request.id, str(error))
        return Pinged(request.id, None)


async def _serve(replies: BinaryIO, parent_pid: int, *, outputs: bool = False) -> None:
    watch = asyncio.ensure_future(_watch_parent(parent_pid))
    try:
        reader, writer = await pipes(sys.stdin.buffer, replies)
        frame = await read_frame(reader)
        if frame is None:
            return
        settings: Settings = pickle.loads(frame)  # from our own parent, over our own pipe
        await _Child(settings, writer, outputs=outputs).run(reader)
    finally:
        watch.cancel()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the worker dies (Linux); exit now if it
    is gone already. Nothing the child does is of use without the worker: only the worker
    acknowledges a batch, and what it did not is applied again from the fence."""
    try:
        end_with_parent(signal.SIGKILL)
    except (OSError, AttributeError) as error:  # the parent watch below still holds
        log.warning("cannot have the kernel end this process with the worker: %s", error)
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os._exit(1)


async def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Exit once the worker is gone (where the kernel does not see to it)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval_s)
    log.critical("the worker (pid %d) is gone; this process exits", parent_pid)
    logging.shutdown()
    os._exit(1)  # nothing to finish: the worker acknowledges nothing any more


def main(*, outputs: bool = False) -> None:
    """``python -m deskpulse.streams.offload [PARENT_PID]``: the child side; the settings
    come as the first frame. ``outputs``: the outputs process
    (``python -m deskpulse.streams.outputs [PARENT_PID]``)."""
    # The parent decides when the child ends (after the in-flight batch): a Ctrl-C or a
    # SIGTERM to the whole process group must not kill it under a batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    role = "outputs" if outputs else "engine"
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[{role}] %(message)s"
    )
    parent_pid = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    _die_with_parent(parent_pid)
    from deskpulse.streams.runtime import one_malloc_arena, short_switch_interval

    one_malloc_arena()  # before the refresh loop's and the Kafka client's threads start
    if not outputs:
        short_switch_interval()  # a commit's round trips wait less beside any other thread
    from deskpulse.streams.logs import install_repeat_throttle

    install_repeat_throttle()  # its Kafka producer floods like the worker's
    # frames go to the original stdout; anything else printed lands on stderr
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    asyncio.run(_serve(replies, parent_pid, outputs=outputs))


# --- the parent --------------------------------------------------------------------------


def _state_error(name: str, reason: str, detail: str, fix: str) -> Exception:
    """The child's :class:`~models.errors.StateError`, raised again in the worker."""
    from deskpulse.models.errors import StateError, StateLost, TopicsReplaced

    kind = {"StateLost": StateLost, "TopicsReplaced": TopicsReplaced}.get(name, StateError)
    return kind(reason, detail, fix)


class EngineProcess:
    """The :class:`~streams.kpi_engine.KpiEngine` in a child process, by proxy; batches are
    applied in submission order. ``metrics`` get the counts of each batch the child applied.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        outputs: OutputsProcess | None = None,
        module: str = ENGINE_MODULE,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        #: where the refreshes and publications go: the outputs process (``None``: this
        #: child, as the outputs process is asked itself)
        self.outputs = outputs
        self.module = module
        #: what the logs call the child
        self.name = "outputs process" if module == OUTPUTS_MODULE else "engine process"
        self._proc: subprocess.Popen[bytes] | None = None
        self._popen: subprocess.Popen[bytes] | None = None  # kept once reaped too (kill)
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._gone: EngineProcessError | None = None
        self._waiting: list[tuple[tuple[list[Any], ...], asyncio.Future[None]]] = []
        self._dispatcher: asyncio.Future[None] | None = None
        self._stopping = False
        self._given_up = False
        self.generation: str | None = None
        self.on_deadletter: Callable[[DeadLetterTrouble | None], object] | None = None
        self.on_broker: Callable[[bool], object] | None = None
        self.on_gone: Callable[[Exception], object] | None = None

    async def start(self, partitions: int) -> None:
        """Start the child and wait until its engine has started (its producer reached
        the broker)."""
        self._proc = self._popen = subprocess.Popen(
            [sys.executable, "-m", self.module, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        reader, self._writer = await pipes(self._proc.stdout, self._proc.stdin)
        self._replies = asyncio.ensure_future(self._read_replies(reader))
        self._writer.write(framed(pickle.dumps(self.settings)))
        started = await self._ask(Start(next(self._ids), partitions), Started)
        self.generation = started.generation
        log.info("%s %d started", self.name, self._proc.pid)
        if self.outputs is not None:
            await self.outputs.start(partitions)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while (frame := await read_frame(reader)) is not None:
                self._take(decode_reply(frame))
        except Exception as error:  # a reply that cannot be read: no later one can be trusted
            log.critical("cannot read the engine process's reply: %r", error)
            self.kill()  # what it did not answer is given up below, never acknowledged
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = await asyncio.to_thread(proc.wait, 5)
        self._gone = EngineProcessError(f"{self.name} exited (status {code})")
        # at a stop, what it had not answered is given up, not a failure to crash on
        failed = Abandoned(f"{self._gone} at the stop") if self._stopping else self._gone
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failed)
        self._pending.clear()
        if not self._stopping:
            if self.module == ENGINE_MODULE:  # the outputs process's is logged as a warning
                log.critical("%s", self._gone)
            if self.on_gone is not None:
                self.on_gone(self._gone)

    def _take(self, reply: Reply) -> None:
        """Hand a reply to whoever waits for it (unasked ones to the callbacks)."""
        if isinstance(reply, DeadLetters):  # unasked: the child's dead letters fail or wait
            if self.on_deadletter is not None:
                self.on_deadletter(reply.trouble)
            return
        if isinstance(reply, BrokerState):  # unasked: its producer reaches the broker
            if self.on_broker is not None:
                self.on_broker(reply.up)
            return
        if isinstance(reply, RedisState):  # unasked: a batch's Redis call failed or works
            self.metrics.redis_up(reply.up)
            return
        future = self._pending.pop(reply.id, None)
        if future is None or future.done():
            return
        if isinstance(reply, Refused):  # the state is lost or foreign: not a crash
            future.set_exception(_state_error(reply.error, reply.reason, reply.detail, reply.fix))
        elif isinstance(reply, GivenUp):  # given up at the stop: not a crash either
            future.set_exception(Abandoned(reply.detail))
        elif isinstance(reply, Failed):
            future.set_exception(EngineProcessError(f"engine process: {reply.error}"))
        else:
            future.set_result(reply)

    async def process(self, records: Iterable[Record]) -> None:
        """Apply a batch in the child; returns once it is committed (or dead-lettered).

        Batches handed in while the child is busy (one per agent) travel together in the
        next request: fewer, larger commits, and the per-request cost is paid once.
        """
        if self._given_up:
            raise Abandoned("the engine process did not answer at the stop")
        rows = records if isinstance(records, list) else list(records)
        repartition = self.settings.topic_repartition
        columns: tuple[list[Any], ...] = (
            [r.topic for r in rows],
            [r.partition for r in rows],
            [r.offset for r in rows],
            [r.key for r in rows],
            [r.value for r in rows],
            # headers say where a forwarded record was read; input records' are not read
            [r.headers if r.topic == repartition else None for r in rows],
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((columns, done))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.ensure_future(self._dispatch())
        await done

    async def _dispatch(self) -> None:
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            if self._given_up:
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(
                            Abandoned("the engine process gave no answer at the stop")
                        )
                continue
            merged: list[list[Any]] = [[], [], [], [], [], []]
            for columns, _ in waiting:
                for target, column in zip(merged, columns, strict=True):
                    target.extend(column)
            try:
                processed = await self._ask(Process(next(self._ids), *merged), Processed)
            except BaseException as error:
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            try:
                processed.counters.apply_to(self.metrics)
            except Exception:  # the batches are committed: they end, whatever the metrics
                log.exception("the engine process's counters could not be applied")
            finally:
                # every waiting batch ends here: one left pending would hold its agent, and
                # with it every partition of its topic, without a word
                for _, done in waiting:
                    if not done.done():
                        done.set_result(None)

    async def check_breaches(self, clocks: Mapping[int, int]) -> int:
        """Claim and publish due SLA breaches of these partitions (partition -> clock ms)."""
        published = await self._ask(CheckBreaches(next(self._ids), dict(clocks)), Published)
        return published.count

    async def refresh(self) -> tuple[bytes, float | None]:
        """Have the outputs process rebuild the KPI snapshot; its exposition and refresh
        time."""
        if self.outputs is not None:
            return await self.outputs.refresh()
        refreshed = await self._ask(Refresh(next(self._ids)), Refreshed)
        return refreshed.exposition, refreshed.refreshed_at

    async def publish_outputs(self) -> None:
        """Have the outputs process publish the KPI snapshots and evaluate the alert rules."""
        if self.outputs is not None:
            await self.outputs.publish_outputs()
            return
        await self._ask(PublishOutputs(next(self._ids)), Done)

    async def ping(self, timeout_s: float) -> None:
        """Ask the broker over the child's producer (the one that sends the outputs)."""
        try:
            pinged = await asyncio.wait_for(
                self._ask(Ping(next(self._ids), timeout_s), Pinged), timeout_s + PING_SLACK_S
            )
        except TimeoutError:
            raise BrokerUnavailable(
                f"the engine process did not answer a broker ping within {timeout_s:g} s"
            ) from None
        if pinged.failure is not None:
            raise BrokerUnavailable(pinged.failure)

    def abandon(self, grace_s: float) -> None:
        """The worker stops: have the child give up what is in flight after ``grace_s``.

        Should the child not answer by then (a few seconds later), the batches waiting for
        it are given up here (:class:`Abandoned`); it is killed at :meth:`stop` if need be.
        """
        if self._writer is None or self._gone is not None or self._writer.is_closing():
            return
        # not answered: the batches' own replies tell
        self._writer.write(framed(encode(Abandon(grace_s))))
        asyncio.get_running_loop().call_later(grace_s + 3.0, self._give_up_waiting)

    def kill(self) -> None:
        """SIGKILL the child now (from any thread): the worker ends without a clean stop."""
        if self._popen is not None and self._popen.returncode is None:
            with contextlib.suppress(OSError):
                self._popen.kill()
        if self.outputs is not None:
            self.outputs.kill()

    @property
    def gone(self) -> bool:
        """Whether the child ended without being asked."""
        return self._gone is not None

    def _give_up_waiting(self) -> None:
        self._given_up = True  # batches handed in from now on are given up at once
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Abandoned("the engine process did not answer at the stop"))

    async def _ask(self, request: _Asked | Stop, answer: type[_Answer]) -> _Answer:
        """Send ``request``; its answer, or the error the child met raised here."""
        if self._writer is None:
            raise EngineProcessError("EngineProcess.start() was not called")
        if self._gone is not None:
            raise self._gone
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            self._writer.write(framed(encode(request)))
            await self._writer.drain()
        except (ConnectionError, BrokenPipeError) as error:
            self._pending.pop(request.id, None)
            raise self._gone or EngineProcessError("engine process is gone") from error
        reply = await future
        if not isinstance(reply, answer):
            raise EngineProcessError(
                f"engine process answered {type(reply).__name__} to {type(request).__name__}"
            )
        return reply

    async def stop(self) -> None:
        """Let the child finish what it has, close its connections and wait for its exit
        (the engine process first: a last batch's counts may still be refreshed)."""
        try:
            await self._stop()
        finally:
            if self.outputs is not None:
                await self.outputs.stop()

    async def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        try:
            if self._gone is None:  # one that ended is only reaped
                await asyncio.wait_for(
                    self._ask(Stop(next(self._ids)), Done), timeout=STOP_TIMEOUT_S
                )
        except Exception as error:  # a dead or stuck child: nothing left to close there
            log.warning("%s did not stop cleanly: %r", self.name, error)
        finally:
            self._proc = None
            if self._writer is not None:
                self._writer.close()
            try:
                await asyncio.to_thread(proc.wait, 3)
            except subprocess.TimeoutExpired:
                log.warning("%s %d did not exit; killing it", self.name, proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if self._replies is not None:
                self._replies.cancel()


class OutputsProcess:
    """The outputs process (:mod:`streams.outputs`), from the worker's side: the KPI
    snapshot's refreshes and publications, in a child of their own.

    Nothing the batches need is there, so its end does not stop the worker: the call in
    flight fails (the timer that asked logs it), and the next call starts a new one.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._child: EngineProcess | None = None
        self._partitions: int | None = None
        self._starting = asyncio.Lock()
        self._stopping = False

    async def start(self, partitions: int) -> None:
        """Start the child (its producer reaching the broker and the state's
        configuration read first)."""
        self._partitions = partitions
        await self._started()

    async def _started(self) -> EngineProcess:
        async with self._starting:
            if self._stopping:
                raise Abandoned("the worker is stopping")
            child = self._child
            if child is None or child.gone:
                if self._partitions is None:
                    raise EngineProcessError("OutputsProcess.start() was not called")
                if child is not None:
                    log.warning("a new outputs process starts")
                    await child.stop()  # reaped
                child = EngineProcess(self.settings, self.metrics, module=OUTPUTS_MODULE)
                child.on_gone = lambda error: log.warning(
                    "%s; the worker goes on applying batches, a new one starts with the "
                    "next refresh",
                    error,
                )
                self._child = child
                await child.start(self._partitions)
            return child

    async def refresh(self) -> tuple[bytes, float | None]:
        """Rebuild the KPI snapshot there; its exposition and refresh time."""
        return await (await self._started()).refresh()

    async def publish_outputs(self) -> None:
        """Publish the KPI snapshots and evaluate the alert rules there."""
        await (await self._started()).publish_outputs()

    def kill(self) -> None:
        """SIGKILL the child now (from any thread)."""
        if self._child is not None:
            self._child.kill()

    async def stop(self) -> None:
        """Let the child finish what it has and wait for its exit."""
        self._stopping = True
        async with self._starting:
            child, self._child = self._child, None
        if child is not None:
            await child.stop()


if __name__ == "__main__":
    main()
