"""The worker's engine: one interface, run in the worker's process or in child processes.

:class:`KpiEngine` is everything the worker's :class:`~streams.app.Service` asks of the
engine: apply a batch, rebuild the KPI snapshot, publish outputs, claim SLA breaches, ping
the broker over its producer, and start, stop or give up at a stop. Two implementations:

* :class:`LocalEngine`, here: the :class:`~streams.engine.Engine`, its Kafka producer and
  the :class:`LocalOutputs` (the KPI snapshot and what is published from it), in the
  calling process;
* :class:`~streams.offload.EngineProcess`: a proxy that hands every call to child
  processes: the batches and breach checks to ``python -m deskpulse.streams.offload``,
  which serves a :class:`LocalEngine`, the refreshes and publications to
  ``python -m deskpulse.streams.outputs``, which serves a :class:`LocalOutputs`.

The worker picks one at its start (``DESKPULSE_ENGINE_PROCESS``) and never asks which it
has. ``tests/test_kpi_engine.py`` checks that both have every method with its signature.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.exporters.prometheus import KpiCollector
from deskpulse.exporters.publish import (
    SnapshotState,
    publish_snapshots,
    read_agent_inputs,
    record_transitions,
    rule_transitions,
)
from deskpulse.models.settings import Settings
from deskpulse.streams.breaches import check_partitions
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.engine import DeadLetterTrouble, Engine, Metrics, Record, retry_forever
from deskpulse.streams.holes import LogReader
from deskpulse.streams.redis_client import connect
from deskpulse.streams.runtime import release_memory
from deskpulse.streams.store import Store

__all__ = ["KpiEngine", "LocalEngine", "LocalOutputs", "OwnOutputs", "RefreshLoop"]

_T = TypeVar("_T")


@runtime_checkable
class KpiEngine(Protocol):
    """What the worker asks of its engine, wherever it runs.

    The ``on_*`` callbacks are set by the worker before :meth:`start`; an engine calls
    them from the worker's event loop.
    """

    #: the state generation the engine found at its start (the worker checks it is its own)
    generation: str | None
    #: told what is wrong while dead letters fail or wait for the broker (``None``: fine)
    on_deadletter: Callable[[DeadLetterTrouble | None], object] | None
    #: told whether the broker answers while the engine's producer starts
    on_broker: Callable[[bool], object] | None
    #: told when the engine ends without being asked to (the worker must stop then)
    on_gone: Callable[[Exception], object] | None

    async def start(self, partitions: int) -> None:
        """Start the producer (retried until the broker answers) and route each input
        record to the partition its conversation maps to (``partitions``: the input
        topics' partition count)."""
        ...

    async def stop(self) -> None:
        """Finish what is in flight and close the engine's connections."""
        ...

    async def process(self, records: Iterable[Record]) -> None:
        """Apply a batch; returns once Redis holds it (or its records are dead-lettered)."""
        ...

    async def refresh(self) -> tuple[bytes, float | None]:
        """Rebuild the KPI snapshot; its exposition and the time it was taken (Unix s)."""
        ...

    async def publish_outputs(self) -> None:
        """KPI snapshots of the last refresh to the KPI topic; alert rules evaluated."""
        ...

    async def check_breaches(self, clocks: Mapping[int, int]) -> int:
        """Claim and publish due SLA breaches (partition -> detection clock, ms); how many."""
        ...

    async def ping(self, timeout_s: float) -> None:
        """Return once the broker answers the engine's producer; raise otherwise."""
        ...

    def abandon(self, grace_s: float) -> None:
        """The worker stops: batches still in flight after ``grace_s`` are given up."""
        ...

    def kill(self) -> None:
        """End now, from any thread: the worker exits without a clean stop."""
        ...


class RefreshLoop:
    """A thread with an event loop and a Redis connection of its own, where the engine
    rebuilds the KPI snapshot.

    Batches commit on the caller's event loop. A refresh reads every window of every
    partition and sums it — hundreds of milliseconds of Python with thousands of groups —
    and on that loop a batch would wait behind it. Here the caller's loop only waits for
    the answer; the commit and the refresh share the interpreter in its switch-interval
    slices (5 ms) instead of one waiting for the other to end. The KPI topic's publisher
    reads the agents here too, and the alert rules their windows, one work at a time.
    Started on first use.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        #: work in flight on the refresh loop (a close lets it finish)
        self._running: set[concurrent.futures.Future[Any]] = set()
        #: one work at a time (a refresh and the publisher's read share the store's
        #: kept sums); made on the refresh loop
        self._one: asyncio.Lock | None = None

    async def run(self, work: Callable[[Store], Awaitable[_T]]) -> _T:
        """``work(store)`` on the refresh loop, with its store; its result."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="deskpulse-refresh", daemon=True
            )
            self._thread.start()
        done = asyncio.run_coroutine_threadsafe(self._call(work), self._loop)
        self._running.add(done)
        done.add_done_callback(self._running.discard)
        return await asyncio.wrap_future(done)

    async def _call(self, work: Callable[[Store], Awaitable[_T]]) -> _T:
        if self._store is None:
            settings = self.settings
            redis = connect(settings, purpose="reads")
            self._store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        if self._one is None:
            self._one = asyncio.Lock()
        async with self._one:
            try:
                return await work(self._store)
            finally:
                release_memory()  # what the refresh built and freed, back to the system

    async def close(self) -> None:
        """Close the connection and end the thread (a refresh in flight finishes first)."""
        loop, thread, store = self._loop, self._thread, self._store
        if loop is None or thread is None:
            return
        if self._running:
            running = [asyncio.wrap_future(f) for f in self._running]
            await asyncio.gather(*running, return_exceptions=True)
        if store is not None:
            closing = asyncio.run_coroutine_threadsafe(store.close(), loop)
            await asyncio.wrap_future(closing)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()
        self._loop = self._thread = self._store = None


class LocalOutputs:
    """The KPI snapshot and what is published from it, in the calling process.

    ``collector`` is rebuilt on the :class:`RefreshLoop` (off the loop that commits, when
    the caller commits too); its exposition is what ``/metrics`` serves. The KPI snapshots
    go to the KPI topic and the alert rules' transitions to the alerts topic over
    ``publisher`` (the caller's, started by the caller), the rules' states into ``store``.
    """

    def __init__(
        self, settings: Settings, store: Store, publisher: KafkaPublisher, collector: KpiCollector
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.collector = collector
        #: what was put on the KPI topic (its snapshots are incremental)
        self.snapshots = SnapshotState()
        #: where the KPI snapshot is rebuilt, off the loop that commits
        self.refresher = RefreshLoop(settings)

    async def refresh(self) -> tuple[bytes, float | None]:
        """Rebuild the KPI snapshot; its exposition and the time it was taken (Unix s)."""
        await self.refresher.run(lambda store: self.collector.refresh(store=store))
        return self.collector.exposition, self.collector.refreshed_at

    async def publish_outputs(self) -> None:
        """KPI snapshots of the last refresh to the KPI topic; alert rules evaluated."""
        windows = self.collector.windows
        if windows:
            # the agents read where the refresh reads, off the loop that commits
            agents = await self.refresher.run(lambda store: read_agent_inputs(store, windows))
            await publish_snapshots(
                windows, self.publisher, self.settings, self.snapshots, agents=agents
            )
            del agents
            release_memory()
        # the rules' windows are read and summed where the refresh reads, off the loop
        # that commits; their transitions go to the broker from here, the producer's loop
        settings = self.settings
        transitions = await self.refresher.run(lambda store: rule_transitions(store, settings))
        await record_transitions(self.store, self.publisher, settings, transitions)

    async def close(self) -> None:
        """End the refresh loop (a refresh in flight finishes first)."""
        await self.refresher.close()


class OwnOutputs:
    """:class:`LocalOutputs` with a Kafka producer of their own, on ``store``: what the
    outputs process (``python -m deskpulse.streams.outputs``) serves, the subset of a
    :class:`KpiEngine` that the engine process hands it (start, stop, refresh,
    publish_outputs)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.publisher = KafkaPublisher(settings)
        self.outputs = LocalOutputs(settings, store, self.publisher, KpiCollector(store, settings))
        self.generation: str | None = None

    async def start(self, partitions: int) -> None:
        """Start the producer and read the state's configuration (each retried)."""
        await retry_forever(
            self.publisher.start, what="starting the Kafka producer", retriable=(Exception,)
        )
        if self.store.generation is None:
            await retry_forever(self.store.check_config, what="reading the state's configuration")
        self.generation = self.store.generation

    async def stop(self) -> None:
        await self.outputs.close()
        await self.publisher.stop()

    async def refresh(self) -> tuple[bytes, float | None]:
        return await self.outputs.refresh()

    async def publish_outputs(self) -> None:
        await self.outputs.publish_outputs()

    def abandon(self, grace_s: float) -> None:
        """Nothing in flight is the worker's to give up: no batch comes here."""


class LocalEngine:
    """The :class:`KpiEngine` in the calling process (the worker's, or the engine child's).

    ``store`` and ``collector`` are the caller's: the worker's ``/metrics`` renders that
    collector. The producer is the engine's own (dead letters, forwards, outputs, alerts),
    and so is the log reader that reads back records a batch lacks. The refreshes and
    publications are its :class:`LocalOutputs`'.
    """

    def __init__(
        self, settings: Settings, store: Store, metrics: Metrics, collector: KpiCollector
    ) -> None:
        self.settings = settings
        self.store = store
        self.collector = collector
        self.publisher = KafkaPublisher(settings)
        # reads back records the consumer skipped (streams/holes.py); its own connection
        self.reader = LogReader(settings)
        self.engine = Engine(settings, store, self.publisher, metrics, reader=self.reader)
        self.engine.on_deadletter = self._deadletter
        #: the KPI snapshot, rebuilt off the loop that commits, and what is published of it
        self.outputs = LocalOutputs(settings, store, self.publisher, collector)
        self.generation: str | None = None
        self.on_deadletter: Callable[[DeadLetterTrouble | None], object] | None = None
        self.on_broker: Callable[[bool], object] | None = None
        #: never called: an engine in the worker's own process does not end on its own
        self.on_gone: Callable[[Exception], object] | None = None

    def _deadletter(self, trouble: DeadLetterTrouble | None) -> None:
        if self.on_deadletter is not None:
            self.on_deadletter(trouble)

    def _broker(self, up: bool) -> None:
        if self.on_broker is not None:
            self.on_broker(up)

    async def start(self, partitions: int) -> None:
        await retry_forever(
            self.publisher.start,
            what="starting the Kafka producer",
            retriable=(Exception,),
            on_state=self._broker,
        )
        if self.store.generation is None:  # a store of its own (the engine process's)
            await retry_forever(self.store.check_config, what="reading the state's configuration")
        self.generation = self.store.generation
        # records a producer put on another partition than their conversation's are
        # forwarded to it through the repartition topic
        self.engine.route(partitions, self.publisher)

    @property
    def refresher(self) -> RefreshLoop:
        """Where the KPI snapshot is rebuilt."""
        return self.outputs.refresher

    async def stop(self) -> None:
        await self.publisher.stop()
        await self.reader.stop()
        await self.outputs.close()

    async def process(self, records: Iterable[Record]) -> None:
        await self.engine.process(records)

    async def refresh(self) -> tuple[bytes, float | None]:
        return await self.outputs.refresh()

    async def publish_outputs(self) -> None:
        await self.outputs.publish_outputs()

    async def check_breaches(self, clocks: Mapping[int, int]) -> int:
        return await check_partitions(
            self.store,
            clocks.items(),
            partial(self.publisher.publish_json, self.settings.topic_alerts),
            self.engine.partition_lock,
        )

    async def ping(self, timeout_s: float) -> None:
        await self.publisher.ping(timeout_s)

    def abandon(self, grace_s: float) -> None:
        self.engine.abandon(grace_s)

    def kill(self) -> None:
        """Nothing to end: the engine goes with the process."""
