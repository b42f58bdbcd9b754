"""The engine in a child process, so Faust's consumer and the fold use both cores.

A Faust agent that decodes, folds and commits in its own event loop shares one core
between Faust's per-event bookkeeping and the engine. With ``DESKPULSE_ENGINE_PROCESS``
the worker starts ``python -m deskpulse.streams.offload`` and talks to it over its stdin and stdout
with length-prefixed frames, from the worker's event loop: no executor threads in the
worker (they would contend with Faust for the interpreter lock). Each batch travels as
columns of raw record bytes; the child decodes, folds and commits it with the same
:class:`~streams.engine.Engine` and answers with the pipeline counters the worker exports.
The agent acknowledges a batch only once the child reports it committed, so the
exactly-once argument is unchanged: nothing is acknowledged before Redis holds it.

The KPI snapshot is built there too: the worker asks for a refresh on its timer and gets
the rendered exposition back for ``/metrics``, and the group leader asks the child to
publish the KPI snapshots and evaluate the alert rules. Those run beside the batches (the
build and render in a thread of the child), never in the worker's event loop.

Batches and breach checks are applied in the order sent, one at a time; batches that
queue up meanwhile (one per agent) travel together in the next request. Breach checks are
so serialised with the batches of the partitions they read, as in-process they are by the
partition locks. The child ignores SIGINT and SIGTERM (the worker stops it after the
batch in flight) and exits when its stdin closes; if it dies, the batch in flight fails
and the worker stops loudly, to be restarted at the offset fence. A batch refused because
the Redis state is lost or foreign is not a failure: it comes back as a ``state`` reply,
raised in the worker as that :class:`~models.errors.StateError` (the worker stops applying
and reports it, see :mod:`streams.integrity`). Its ``ready`` reply carries the state
generation it found, which the worker checks is its own.

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
import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO

import msgspec

from deskpulse.models.errors import Abandoned
from deskpulse.models.settings import Settings
from deskpulse.streams.engine import DeadLetterTrouble, Record, SourceRecord
from deskpulse.streams.frames import frame as framed
from deskpulse.streams.frames import pipes, read_frame

__all__ = [
    "STOP_GRACE_S",
    "STOP_TIMEOUT_S",
    "EngineProcess",
    "EngineProcessError",
    "RecordingMetrics",
]

log = logging.getLogger("deskpulse.offload")

#: At a stop, how long batches in flight may still take before they are given up.
STOP_GRACE_S = 5.0
#: How long the worker waits for the child to end once asked, before it kills it.
STOP_TIMEOUT_S = STOP_GRACE_S + 5.0
# prctl(2) option: the signal the kernel sends this process when its parent dies
_PR_SET_PDEATHSIG = 1

_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder().decode


class EngineProcessError(RuntimeError):
    """The engine process failed a request, or is gone."""


@dataclass
class RecordingMetrics:
    """The engine's ``Metrics``, recorded for the parent to apply to its registry."""

    processed_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    rejected_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    skipped_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    rerouted_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    flushes: list[tuple[float, int]] = field(default_factory=list)
    event_times: dict[str, float] = field(default_factory=dict)
    redis_state: bool | None = None

    def processed(self, topic: str, event_type: str, count: int) -> None:
        self.processed_counts[(topic, event_type)] += count

    def rejected(self, topic: str, reason: str, count: int) -> None:
        self.rejected_counts[(topic, reason)] += count

    def skipped(self, topic: str, reason: str, count: int) -> None:
        self.skipped_counts[(topic, reason)] += count

    def rerouted(self, topic: str, count: int) -> None:
        self.rerouted_counts[topic] += count

    def flushed(self, seconds: float, events: int) -> None:
        self.flushes.append((seconds, events))

    def event_time(self, topic: str, t_s: float) -> None:
        self.event_times[topic] = max(t_s, self.event_times.get(topic, t_s))

    def redis_up(self, up: bool) -> None:
        self.redis_state = up

    def replay_into(self, metrics: Any) -> None:
        """Apply what was recorded to the parent's metrics."""
        for (topic, event_type), count in self.processed_counts.items():
            metrics.processed(topic, event_type, count)
        for (topic, reason), count in self.rejected_counts.items():
            metrics.rejected(topic, reason, count)
        for (topic, reason), count in self.skipped_counts.items():
            metrics.skipped(topic, reason, count)
        for topic, count in self.rerouted_counts.items():
            metrics.rerouted(topic, count)
        for seconds, events in self.flushes:
            metrics.flushed(seconds, events)
        for topic, t_s in self.event_times.items():
            metrics.event_time(topic, t_s)
        if self.redis_state is not None:
            metrics.redis_up(self.redis_state)

    def to_wire(self) -> list[Any]:
        return [
            [[t, e, n] for (t, e), n in self.processed_counts.items()],
            [[t, r, n] for (t, r), n in self.rejected_counts.items()],
            [list(f) for f in self.flushes],
            self.event_times,
            self.redis_state,
            [[t, r, n] for (t, r), n in self.skipped_counts.items()],
            dict(self.rerouted_counts),
        ]

    @classmethod
    def from_wire(cls, data: list[Any]) -> RecordingMetrics:
        processed, rejected, flushes, event_times, redis_state, skipped, rerouted = data
        out = cls()
        for topic, event_type, count in processed:
            out.processed_counts[(topic, event_type)] += count
        for topic, reason, count in rejected:
            out.rejected_counts[(topic, reason)] += count
        out.flushes = [(float(s), int(n)) for s, n in flushes]
        out.event_times = dict(event_times)
        out.redis_state = redis_state
        for topic, reason, count in skipped:
            out.skipped_counts[(topic, reason)] += count
        for topic, count in rerouted.items():
            out.rerouted_counts[topic] += count
        return out


# --- the child ---------------------------------------------------------------------------


class _Child:
    """The child's side: the engine, a KPI collector, and the requests they answer."""

    def __init__(self, settings: Settings, writer: asyncio.StreamWriter) -> None:
        from deskpulse.exporters.kafka import KafkaPublisher
        from deskpulse.exporters.prometheus import KpiCollector
        from deskpulse.streams.core import CoreConfig
        from deskpulse.streams.engine import Engine
        from deskpulse.streams.redis_client import connect
        from deskpulse.streams.store import Store

        self.settings = settings
        self.writer = writer
        self.redis = connect(settings, purpose="ingest")
        self.store = Store(self.redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        self.publisher = KafkaPublisher(settings)
        self.engine = Engine(settings, self.store, self.publisher, RecordingMetrics())
        self.engine.on_deadletter = self.report_deadletter
        self.collector = KpiCollector(self.store, settings)
        # batches and breach checks in the order they came; the rest beside them
        self.ordered: asyncio.Queue[list[Any] | None] = asyncio.Queue()

    def reply(self, request_id: int, status: str, body: Any) -> None:
        self.writer.write(framed(_ENCODE([request_id, status, body])))

    def report_deadletter(self, trouble: DeadLetterTrouble | None) -> None:
        # unasked, while a batch is held: the worker's /readyz and gauge follow it
        self.reply(0, "deadletter", None if trouble is None else list(trouble))

    async def run(self, reader: asyncio.StreamReader) -> None:
        from deskpulse.streams.engine import retry_forever
        from deskpulse.streams.runtime import tune_gc

        await retry_forever(
            self.publisher.start, what="starting the Kafka producer", retriable=(Exception,)
        )
        # the state's generation: the worker checks it is the one it started on
        await retry_forever(self.store.check_config, what="reading the state's configuration")
        tune_gc()
        self.reply(0, "ready", self.store.generation)
        ordered = asyncio.ensure_future(self.work_in_order())
        beside: set[asyncio.Future[None]] = set()
        try:
            while (frame := await read_frame(reader)) is not None:
                request = _DECODE(frame)
                if request[1] == "stop":
                    break
                if request[1] in ("batch", "breaches"):
                    self.ordered.put_nowait(request)
                else:
                    task = asyncio.ensure_future(self.answer(request))
                    beside.add(task)
                    task.add_done_callback(beside.discard)
            else:
                request = None  # the worker is gone: finish what is queued, then exit
            # what is queued may finish; a batch stuck retrying must not hold the exit
            self.engine.abandon(STOP_GRACE_S)
            self.ordered.put_nowait(None)
            await ordered
            if beside:
                await asyncio.gather(*beside, return_exceptions=True)
        finally:
            await self.publisher.stop()
            await self.redis.aclose()
        if request is not None:
            self.reply(request[0], "ok", None)
            with contextlib.suppress(OSError):  # the worker may be gone already
                await self.writer.drain()

    async def work_in_order(self) -> None:
        while (request := await self.ordered.get()) is not None:
            await self.answer(request)

    async def answer(self, request: list[Any]) -> None:
        request_id, kind = request[0], request[1]
        from deskpulse.models.errors import StateError

        try:
            body = await self.handle(kind, request[2:])
        except StateError as error:  # the worker stops applying and reports it, once
            state = [type(error).__name__, error.reason, error.detail, error.fix]
            self.reply(request_id, "state", state)
        except Abandoned as error:  # the stop gave it up: not a failure of the engine
            self.reply(request_id, "abandoned", str(error))
        except Exception as error:  # reported to the worker, which stops loudly
            log.exception("engine request %s failed", kind)
            self.reply(request_id, "error", repr(error))
        else:
            self.reply(request_id, "ok", body)
        with contextlib.suppress(OSError):
            await self.writer.drain()

    async def handle(self, kind: str, args: list[Any]) -> Any:
        from deskpulse.exporters.publish import evaluate_rules, publish_snapshots
        from deskpulse.streams.breaches import check_partitions

        if kind == "batch":
            metrics = RecordingMetrics()
            self.engine.metrics = metrics
            await self.engine.process([SourceRecord(*row) for row in zip(*args, strict=True)])
            return metrics.to_wire()
        if kind == "breaches":
            return await check_partitions(
                self.store,
                args[0],  # [partition, clock ms] pairs
                partial(self.publisher.publish_json, self.settings.topic_alerts),
                self.engine.partition_lock,
            )
        if kind == "abandon":  # the worker stops: give up what is still in flight then
            self.engine.abandon(args[0])
            return None
        if kind == "route":  # the input topics' partition count, once they are known
            self.engine.route(args[0], self.publisher)
            return None
        if kind == "refresh":
            await self.collector.refresh()
            return [self.collector.exposition, self.collector.refreshed_at]
        if kind == "outputs":
            if self.collector.windows:
                await publish_snapshots(self.collector.windows, self.publisher, self.settings)
            await evaluate_rules(self.store, self.publisher, self.settings)
            return None
        raise ValueError(f"unknown request {kind!r}")


async def _serve(replies: BinaryIO, parent_pid: int) -> None:
    watch = asyncio.ensure_future(_watch_parent(parent_pid))
    try:
        reader, writer = await pipes(sys.stdin.buffer, replies)
        frame = await read_frame(reader)
        if frame is None:
            return
        settings: Settings = pickle.loads(frame)  # from our own parent, over our own pipe
        await _Child(settings, writer).run(reader)
    finally:
        watch.cancel()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the worker dies (Linux); exit now if it
    is gone already. Nothing the child does is of use without the worker: only the worker
    acknowledges a batch, and what it did not is applied again from the fence."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as error:  # the parent watch below still holds
            log.warning("cannot have the kernel end this process with the worker: %s", error)
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os._exit(1)


async def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Exit once the worker is gone (where the kernel does not see to it)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval_s)
    log.critical("the worker (pid %d) is gone; the engine process exits", parent_pid)
    logging.shutdown()
    os._exit(1)  # nothing to finish: the worker acknowledges nothing any more


def main() -> None:
    """``python -m deskpulse.streams.offload [PARENT_PID]``: the child side; the settings
    come as the first frame."""
    # The parent decides when the child ends (after the in-flight batch): a Ctrl-C or a
    # SIGTERM to the whole process group must not kill it under a batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[engine] %(message)s"
    )
    parent_pid = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    _die_with_parent(parent_pid)
    from deskpulse.streams.logs import install_repeat_throttle

    install_repeat_throttle()  # its Kafka producer floods like the worker's
    # frames go to the original stdout; anything else printed lands on stderr
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    asyncio.run(_serve(replies, parent_pid))


# --- the parent --------------------------------------------------------------------------


def _state_error(name: str, reason: str, detail: str, fix: str) -> Exception:
    """The child's :class:`~models.errors.StateError`, raised again in the worker."""
    from deskpulse.models.errors import StateError, StateLost, TopicsReplaced

    kind = {"StateLost": StateLost, "TopicsReplaced": TopicsReplaced}.get(name, StateError)
    return kind(reason, detail, fix)


class EngineProcess:
    """The engine child; batches are applied in submission order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._popen: subprocess.Popen[bytes] | None = None  # kept once reaped too (kill)
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._gone: EngineProcessError | None = None
        self._waiting: list[tuple[tuple[list[Any], ...], asyncio.Future[None]]] = []
        self._dispatcher: asyncio.Future[None] | None = None
        self._stopping = False
        self._given_up = False
        #: called when the child ends without being asked to (the worker must stop)
        self.on_gone: Callable[[EngineProcessError], object] | None = None
        #: the state generation the child found at its start
        self.generation: str | None = None
        #: told what is wrong while the child's dead letters fail or wait (None: fine)
        self.on_deadletter: Callable[[DeadLetterTrouble | None], object] | None = None

    async def start(self) -> None:
        """Start the child and wait until it has connected to the broker."""
        self._proc = self._popen = subprocess.Popen(
            [sys.executable, "-m", "deskpulse.streams.offload", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        reader, self._writer = await pipes(self._proc.stdout, self._proc.stdin)
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[0] = ready
        self._replies = asyncio.ensure_future(self._read_replies(reader))
        self._writer.write(framed(pickle.dumps(self.settings)))
        await self._writer.drain()
        self.generation = await ready
        log.info("engine process %d started", self._proc.pid)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        while (frame := await read_frame(reader)) is not None:
            request_id, status, body = _DECODE(frame)
            if status == "deadletter":  # unasked: the child's dead letters fail or wait
                if self.on_deadletter is not None:
                    self.on_deadletter(None if body is None else DeadLetterTrouble(*body))
                continue
            future = self._pending.pop(request_id, None)
            if future is None or future.done():
                continue
            if status in ("ok", "ready"):
                future.set_result(body)
            elif status == "state":  # the state is lost or foreign: not a crash
                future.set_exception(_state_error(*body))
            elif status == "abandoned":  # given up at the stop: not a crash either
                future.set_exception(Abandoned(body))
            else:
                future.set_exception(EngineProcessError(f"engine process: {body}"))
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = await asyncio.to_thread(proc.wait, 5)
        self._gone = EngineProcessError(f"engine process exited (status {code})")
        # at a stop, what it had not answered is given up, not a failure to crash on
        failed = Abandoned(f"{self._gone} at the stop") if self._stopping else self._gone
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failed)
        self._pending.clear()
        if not self._stopping:
            log.critical("%s", self._gone)
            if self.on_gone is not None:
                self.on_gone(self._gone)

    async def process(self, records: Iterable[Record], metrics: Any) -> None:
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
            self._dispatcher = asyncio.ensure_future(self._dispatch(metrics))
        await done

    async def _dispatch(self, metrics: Any) -> None:
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
                recorded = RecordingMetrics.from_wire(await self._call("batch", *merged))
            except BaseException as error:
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            recorded.replay_into(metrics)
            for _, done in waiting:
                if not done.done():
                    done.set_result(None)

    async def route(self, partitions: int) -> None:
        """Have the child's engine check each record's partition (see ``Engine.route``)."""
        await self._call("route", partitions)

    async def check_breaches(self, clocks: dict[int, int]) -> int:
        """Claim and publish due SLA breaches of these partitions (partition -> clock ms)."""
        count: int = await self._call("breaches", sorted(clocks.items()))
        return count

    async def refresh(self) -> tuple[bytes, float]:
        """Have the child rebuild the KPI snapshot; its exposition and refresh time."""
        exposition, refreshed_at = await self._call("refresh")
        return exposition, refreshed_at

    async def publish_outputs(self) -> None:
        """Have the child publish the KPI snapshots and evaluate the alert rules."""
        await self._call("outputs")

    def abandon(self, grace_s: float) -> None:
        """The worker stops: have the child give up what is in flight after ``grace_s``.

        Should the child not answer by then (a few seconds later), the batches waiting for
        it are given up here (:class:`Abandoned`); it is killed at :meth:`stop` if need be.
        """
        if self._writer is None or self._gone is not None or self._writer.is_closing():
            return
        # no reply is awaited (id -1 matches no request): the batches' own replies tell
        self._writer.write(framed(_ENCODE([-1, "abandon", grace_s])))
        asyncio.get_running_loop().call_later(grace_s + 3.0, self._give_up_waiting)

    def kill(self) -> None:
        """SIGKILL the child now (from any thread): the worker ends without a clean stop."""
        if self._popen is not None and self._popen.returncode is None:
            with contextlib.suppress(OSError):
                self._popen.kill()

    def _give_up_waiting(self) -> None:
        self._given_up = True  # batches handed in from now on are given up at once
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Abandoned("the engine process did not answer at the stop"))

    async def _call(self, kind: str, *args: Any) -> Any:
        if self._writer is None:
            raise EngineProcessError("EngineProcess.start() was not called")
        if self._gone is not None:
            raise self._gone
        request_id, self._next_id = self._next_id, self._next_id + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(framed(_ENCODE([request_id, kind, *args])))
            await self._writer.drain()
        except (ConnectionError, BrokenPipeError) as error:
            self._pending.pop(request_id, None)
            raise self._gone or EngineProcessError("engine process is gone") from error
        return await future

    async def stop(self) -> None:
        """Let the child finish what it has, close its connections and wait for its exit."""
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(self._call("stop"), timeout=STOP_TIMEOUT_S)
        except Exception as error:  # a dead or stuck child: nothing left to close there
            log.warning("engine process did not stop cleanly: %r", error)
        finally:
            self._proc = None
            if self._writer is not None:
                self._writer.close()
            try:
                await asyncio.to_thread(proc.wait, 3)
            except subprocess.TimeoutExpired:
                log.warning("engine process %d did not exit; killing it", proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if self._replies is not None:
                self._replies.cancel()


if __name__ == "__main__":
    main()
