"""The engine in a child process, so Faust's consumer and the fold use both cores.

Measured on this project's 2-core machines, a Faust agent that decodes, folds and commits
in its own event loop reaches about two thirds of a bare agent's throughput: the fold
costs about as much CPU per event as Faust's own bookkeeping, and both want the same
core. With the engine in a child process, the agent hands each batch over (raw bytes,
pickled), keeps consuming into its buffer while the child folds and commits, and
acknowledges the batch only when the child reports it committed — the exactly-once
argument is unchanged: nothing is acknowledged before Redis holds it.

Breach checks run in the child too, so they are serialised with the batches of the
partitions they read, as in-process they are by the partition locks.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from models.settings import Settings
from streams.engine import Record, SourceRecord

__all__ = ["EngineProcess", "RecordingMetrics"]

Row = tuple[str, int, int, bytes | None, bytes | None]

log = logging.getLogger("deskpulse.offload")


@dataclass
class RecordingMetrics:
    """The engine's ``Metrics``, recorded for the parent to apply to its registry."""

    processed_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    rejected_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    flushes: list[tuple[float, int]] = field(default_factory=list)
    event_times: dict[str, float] = field(default_factory=dict)
    redis_state: bool | None = None

    def processed(self, topic: str, event_type: str, count: int) -> None:
        self.processed_counts[(topic, event_type)] += count

    def rejected(self, topic: str, reason: str, count: int) -> None:
        self.rejected_counts[(topic, reason)] += count

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
        for seconds, events in self.flushes:
            metrics.flushed(seconds, events)
        for topic, t_s in self.event_times.items():
            metrics.event_time(topic, t_s)
        if self.redis_state is not None:
            metrics.redis_up(self.redis_state)


# --- the child ---------------------------------------------------------------------------

_CHILD: dict[str, Any] = {}


def _child_init(settings: Settings) -> None:
    import logging
    import signal

    # The parent decides when the child ends (after the in-flight batch): a Ctrl-C or a
    # SIGTERM to the whole process group must not kill it under a batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[engine] %(message)s"
    )

    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from exporters.kafka import KafkaPublisher
    from streams.core import CoreConfig
    from streams.engine import Engine, retry_forever
    from streams.store import Store

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(),
        retry=Retry(NoBackoff(), 0),
        socket_timeout=10,
        socket_connect_timeout=5,
    )
    store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
    publisher = KafkaPublisher(settings)
    loop.run_until_complete(
        retry_forever(publisher.start, what="starting the Kafka producer", retriable=(Exception,))
    )
    metrics = RecordingMetrics()
    engine = Engine(settings, store, publisher, metrics)
    _CHILD.update(loop=loop, engine=engine, store=store, publisher=publisher, settings=settings)
    from streams.runtime import tune_gc

    tune_gc()


def _child_process(rows: list[Row]) -> RecordingMetrics:
    engine = _CHILD["engine"]
    metrics = RecordingMetrics()
    engine.metrics = metrics
    records = [SourceRecord(*row) for row in rows]
    _CHILD["loop"].run_until_complete(engine.process(records))
    return metrics


def _child_check_breaches(clocks: dict[int, int]) -> int:
    from streams.breaches import check_breaches

    engine, store, publisher = _CHILD["engine"], _CHILD["store"], _CHILD["publisher"]
    topic = _CHILD["settings"].topic_alerts

    async def run() -> int:
        published = 0
        for partition, clock_ms in sorted(clocks.items()):
            async with engine.partition_lock(partition):
                published += await check_breaches(
                    store,
                    partition,
                    clock_ms,
                    lambda items: publisher.publish_json(topic, items),
                )
        return published

    result: int = _CHILD["loop"].run_until_complete(run())
    return result


def _child_stop(_: None = None) -> None:
    loop = _CHILD["loop"]
    loop.run_until_complete(_CHILD["publisher"].stop())
    loop.run_until_complete(_CHILD["store"].redis.aclose())


# --- the parent --------------------------------------------------------------------------


class EngineProcess:
    """A one-process pool running the engine; batches are applied in submission order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._waiting: list[tuple[list[Row], asyncio.Future[None]]] = []
        self._dispatcher: asyncio.Future[None] | None = None

    def start(self) -> None:
        # spawn, not fork: the parent runs an event loop and threads a fork would copy
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(self.settings,),
        )

    async def process(self, records: Iterable[Record], metrics: Any) -> None:
        """Apply a batch in the child; returns once it is committed (or dead-lettered).

        Batches handed in while the child is busy (one per agent) travel together in the
        next call: fewer, larger commits, and the per-call cost is paid once.
        """
        rows = [(r.topic, r.partition, r.offset, r.key, r.value) for r in records]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, done))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.ensure_future(self._dispatch(metrics))
        await done

    async def _dispatch(self, metrics: Any) -> None:
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            rows = [row for batch, _ in waiting for row in batch]
            try:
                recorded = await self._run(_child_process, rows)
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

    async def check_breaches(self, clocks: dict[int, int]) -> int:
        """Claim and publish due SLA breaches of these partitions (partition -> clock ms)."""
        count: int = await self._run(_child_check_breaches, clocks)
        return count

    async def _run(self, function: Any, argument: Any) -> Any:
        if self._pool is None:
            raise RuntimeError("EngineProcess.start() was not called")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, function, argument)

    async def stop(self) -> None:
        """Close the child's connections and wait for it to exit."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            await asyncio.get_running_loop().run_in_executor(pool, _child_stop, None)
        except Exception as error:  # a dead child: nothing left to close there
            log.warning("engine process did not stop cleanly: %r", error)
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown(wait=True)
