"""The Faust application: one agent per input topic (and one for the records forwarded
to their conversation's partition, see :mod:`streams.engine`), plus web pages and timers.

Agents are thin: take a batch (``stream.noack_take``), hand it to the engine (a
:class:`~streams.kpi_engine.KpiEngine`, in this process or a child), and acknowledge its
events to Faust once the engine has committed the batch to Redis; the next batch is taken
meanwhile. KPI state is Redis, not Faust tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

import faust
import mode
import orjson
from faust.app.base import BootStrategy
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from faust.web.drivers import aiohttp as faust_web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import ConnectionError as RedisConnectionError

from deskpulse.exporters.board import render_board
from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.exporters.prometheus import KpiCollector, PipelineMetrics, build_registry, render
from deskpulse.models.errors import Abandoned, SettingsError, StateError, StateLost
from deskpulse.models.settings import Settings
from deskpulse.streams import compat
from deskpulse.streams.breaches import DetectionClocks
from deskpulse.streams.broker_probe import PROBE_INTERVAL_S, BrokerProbe
from deskpulse.streams.engine import DeadLetterTrouble, Record, retry_forever
from deskpulse.streams.integrity import StateGuard
from deskpulse.streams.kpi_engine import KpiEngine, LocalEngine
from deskpulse.streams.offload import STOP_GRACE_S, EngineProcess, OutputsProcess
from deskpulse.streams.reads import KpiReads, max_age_s
from deskpulse.streams.redis_client import check_mode, connect
from deskpulse.streams.store import FIX_RESTART, PartitionMeta, Store
from deskpulse.streams.topics import ensure_topics
from deskpulse.streams.watchdog import ATTEMPTS_BEFORE_ERROR, Progress, StallWatch

__all__ = ["Service", "bearer_token_matches", "create_app", "faust_app_options", "open_engine"]

log = logging.getLogger("deskpulse.app")

#: A stop not over this long after it began ends the process anyway: a broker or Redis that
#: does not answer can hold Faust's own shutdown steps (its consumer's last commit, say).
#: Nothing unapplied was acknowledged, so the next start resumes at the fence.
STOP_DEADLINE_S = 25.0


def open_engine(
    settings: Settings, store: Store, metrics: PipelineMetrics, collector: KpiCollector
) -> KpiEngine:
    """The worker's engine: in a child process (``DESKPULSE_ENGINE_PROCESS``, see
    :mod:`streams.offload`) or in this one, on the worker's store, metrics and collector."""
    if settings.uses_engine_process:
        return EngineProcess(settings, metrics, outputs=OutputsProcess(settings, metrics))
    return LocalEngine(settings, store, metrics, collector)


class Service:
    """What the worker shares between agents, pages and timers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect(settings, purpose="ingest")
        self.store = Store.from_settings(self.redis, settings)
        self.registry, self.metrics, self.collector = build_registry(settings, self.store)
        #: the engine, here or in a child process: chosen once, never asked which
        self.engine = open_engine(settings, self.store, self.metrics, self.collector)
        self.engine.on_deadletter = self.deadletter_state
        self.engine.on_broker = lambda up: self.metrics.broker_up.set(1 if up else 0)
        #: whether the broker answers the running worker (asked on a timer, for /readyz),
        #: over the engine's producer
        self.broker = BrokerProbe(self.engine.ping, self.broker_state)
        self.ready = False
        #: the input topics' partition count, once the topics are made
        self.partitions: int | None = None
        # stops applying when the state is lost or was built from other topics, and says so
        self.guard = StateGuard(
            settings, self.store, self.metrics.state_ok, started=lambda: self.ready
        )
        # what the start is held up by, for /readyz (set while the broker is awaited)
        self.waiting_for: str | None = None
        #: what is wrong while dead letters fail or wait for the broker (their batch waits)
        self.deadletter_trouble: DeadLetterTrouble | None = None

    def deadletter_state(self, trouble: DeadLetterTrouble | None) -> None:
        """Follow the engine's dead letters:
        ``/readyz`` reports the trouble and ``deskpulse_deadletter_up`` is 0 meanwhile."""
        if trouble is not None and self.deadletter_trouble is None:
            log.warning("dead letters are held up: %s", trouble.detail)
        elif trouble is None and self.deadletter_trouble is not None:
            log.info("no dead letters are held up any more")
        self.deadletter_trouble = trouble
        self.metrics.deadletter_up.set(1 if trouble is None else 0)

    def broker_state(self, up: bool) -> None:
        """Follow the broker probe: ``deskpulse_broker_up``, and no lag while it is silent
        (unknown then: a frozen number would look healthy)."""
        self.metrics.broker_up.set(1 if up else 0)
        if not up:
            self.metrics.lag.clear()

    def abandon(self, grace_s: float) -> None:
        """The worker stops: batches still in flight after ``grace_s`` are given up."""
        self.engine.abandon(grace_s)
        self.guard.release()  # batches held for a lost state will never be applied

    async def process(self, records: Iterable[Record]) -> None:
        """Apply a batch.

        Waits while the assignment's state is being checked; once the state is found lost
        or foreign, never returns (the batch stays unacknowledged) until the worker stops.
        """
        await self.guard.admit()
        try:
            await self.engine.process(records)
        except StateError as error:
            self.guard.report(error)
            await self.guard.halt()

    async def refresh_metrics(self) -> None:
        """Rebuild the KPI snapshot that ``/metrics`` serves."""
        started = time.perf_counter()
        exposition, refreshed_at = await self.engine.refresh()
        self.metrics.refresh_duration.set(time.perf_counter() - started)
        self.collector.exposition = exposition
        self.collector.refreshed_at = refreshed_at

    async def publish_outputs(self) -> None:
        """KPI snapshots of the last refresh to the KPI topic; alert rules evaluated."""
        await self.engine.publish_outputs()

    async def check_breaches(self, clocks: dict[int, int]) -> int:
        """Claim and publish due SLA breaches (partition -> detection clock, ms)."""
        return await self.engine.check_breaches(clocks)

    async def start(self) -> None:
        """Wait for Redis and the broker (with backoff), check the state, make the topics,
        start the engine."""
        await retry_forever(
            self.redis.ping, what="connecting to Redis", on_state=self.metrics.redis_up
        )
        await self.store.check_config()
        counts = await retry_forever(
            lambda: ensure_topics(self.settings),
            what=f"creating topics on {self.settings.kafka_bootstrap}",
            retriable=(Exception,),
            on_state=lambda up: self.metrics.broker_up.set(1 if up else 0),
        )
        self.partitions = counts[self.settings.topic_tickets]
        await self.store.check_partition_count(self.partitions)
        await self.engine.start(self.partitions)
        if self.engine.generation != self.store.generation:  # the state restarted meanwhile
            self.guard.report(
                StateLost(
                    "generation_changed",
                    f"the state under prefix {self.settings.redis_prefix!r} was started "
                    "anew while the worker started",
                    FIX_RESTART,
                )
            )
        self.broker.answered()  # the engine's producer just reached it
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.broker.close()  # the producer it asks through closes below
        await self.guard.stop()
        try:
            await self.engine.stop()
        finally:
            await self.redis.aclose()


async def probe_redis(settings: Settings) -> None:
    """Raise :class:`SettingsError` if Redis refuses our credentials or TLS setup, or is
    a cluster node when ``DESKPULSE_REDIS_CLUSTER`` says not (or the reverse).

    An unreachable Redis passes: that is retried with backoff, not fatal.
    """
    from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

    redis = connect(settings, purpose="probe")
    try:
        await check_mode(redis)
        await redis.ping()
    except (AuthenticationError, AuthorizationError) as error:
        raise SettingsError(
            "DESKPULSE_REDIS_URL", f"Redis refused the credentials: {error}"
        ) from None
    except ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise SettingsError(
                "DESKPULSE_REDIS_URL", f"Redis wants credentials: {error}"
            ) from None
        raise
    except ssl.SSLError as error:
        raise SettingsError(
            "DESKPULSE_REDIS_URL", f"TLS handshake with Redis failed: {error}"
        ) from None
    except (OSError, RedisConnectionError) as error:
        if isinstance(error.__cause__, ssl.SSLError) or "SSL" in str(error):
            raise SettingsError("DESKPULSE_REDIS_URL", f"TLS with Redis failed: {error}") from None
        log.warning("Redis is not reachable yet (%s); the worker will keep retrying", error)
    finally:
        await redis.aclose()


async def wait_for_broker(
    settings: Settings, on_state: Callable[[bool], None] | None = None
) -> None:
    """Return once the broker answers a metadata request; retry with backoff until then."""
    from deskpulse.streams.kafka_admin import wait_for_kafka

    options = kafka_client_options(settings)
    bootstrap = options.pop("bootstrap_servers")
    await retry_forever(
        partial(wait_for_kafka, bootstrap, 5.0, **options),
        what=f"reaching the Kafka broker at {bootstrap}",
        retriable=(Exception,),
        on_state=on_state,
    )


class _BrokerGate(mode.Service):
    """Holds back Faust's producer and consumer until the broker answers.

    Faust's producer gives up at once on a broker that does not answer, and a worker that
    exits on it only crash-loops. Started after the web server (see :class:`_Boot`), so
    ``/healthz``, ``/readyz`` (503, saying what it waits for) and ``/metrics``
    (``deskpulse_broker_up 0``) answer during the wait.
    """

    def __init__(self, service: Service, **kwargs: Any) -> None:
        self.service = service
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        service = self.service
        service.waiting_for = f"waiting for the Kafka broker at {service.settings.kafka_bootstrap}"
        service.metrics.broker_up.set(0)  # up means answered, not "not failed yet"
        try:
            # returns early when the worker is told to stop meanwhile
            await self.wait_for_stopped(
                wait_for_broker(
                    service.settings,
                    on_state=lambda up: service.metrics.broker_up.set(1 if up else 0),
                )
            )
        finally:
            service.waiting_for = None


# The private Faust methods overridden below are listed in compat.FAUST_HOOKS (tested there).
class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes a fixed fetch_max_wait_ms=1500: a broker that holds fetches that
        # long when nothing is new adds up to 1.5 s to every KPI's freshness.
        compat.set_fetch_max_wait_ms(consumer, getattr(self.app, "fetch_max_wait_ms", 1500))
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_empty(self) -> None:
        # Batches held because the state is lost or foreign are never acknowledged:
        # waiting for them would keep a stopping worker up forever.
        service = getattr(self.app, "deskpulse", None)
        if service is not None and service.guard.error is not None:
            return
        await super().wait_empty()

    def verify_event_path(self, now: float, tp: Any) -> None:
        # A worker holding its batches for a lost state said so once; Faust's stall
        # errors (every few seconds per partition once nothing was committed for five
        # minutes) would bury that line.
        service = getattr(self.app, "deskpulse", None)
        if service is not None and service.guard.error is not None:
            return
        super().verify_event_path(now, tp)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class _Web(faust_web.Web):
    """Faust's aiohttp server with none of Faust's own pages, only the app's.

    Faust would serve ``/``, ``/router/…`` and ``/table/…`` (and, with its settings or
    ``APP_WEB_*`` variables, ``/graph``, ``/stats``, ``/performance``), all without the
    web token: cluster topology and table contents that deskpulse does not use.
    """

    default_blueprints: ClassVar[list[tuple[str, Any]]] = []
    production_blueprints: ClassVar[list[tuple[str, Any]]] = []
    debug_blueprints: ClassVar[list[tuple[str, Any]]] = []
    optional_blueprints: ClassVar[list[tuple[str, Any]]] = []


class _Boot(BootStrategy):
    """Faust's start order, except that the web server starts right after the sensors,
    then the app's ``start_gates``, then the producer, consumer, agents and the rest."""

    def server(self) -> Iterable[mode.ServiceT]:
        first = [*self.sensors(), *self.web_server()]
        rest = [s for s in super().server() if all(s is not f for f in first)]
        gates: Iterable[mode.ServiceT] = getattr(self.app, "start_gates", ())
        return [*first, *gates, *rest]


class _Tables(TableManager):
    """Faust's table manager without the second its start sleeps first.

    Faust sleeps so that tables defined late still register before the consumer subscribes.
    deskpulse defines no Faust table (its state is in Redis), and the sleep held every start
    of a worker (a restart after a crash, a member joining) by a second before it joined
    its group.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await compat.open_tables(self)
            await self.recovery.start()


class DeskpulseApp(faust.App):
    """A Faust app whose Kafka consumer takes ``DESKPULSE_KAFKA_FETCH_MAX_WAIT``.

    Its web server serves only the app's pages and starts before the Kafka clients;
    services in ``start_gates`` start after it and before them.
    """

    BootStrategy = _Boot

    def __init__(self, *args: Any, fetch_max_wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = max(1, round(fetch_max_wait_s * 1000))
        self.start_gates: list[mode.ServiceT] = []
        self._stop_deadline: threading.Timer | None = None

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def _new_web(self) -> Any:
        return _Web(self)

    async def on_started(self) -> None:
        # mode calls this even when a stop cut the start short (a SIGTERM while the broker
        # gate waited): the app's tasks and timers must not start into a stopping worker
        if self.should_stop:
            return
        await super().on_started()

    async def on_stop(self) -> None:
        # Faust first waits for every batch taken to be acknowledged: one stuck retrying
        # Redis or the broker is given up after a grace instead, so the stop ends
        service: Service | None = getattr(self, "deskpulse", None)
        if service is not None:
            service.abandon(STOP_GRACE_S)
            # a thread: it fires even if what holds the stop holds the event loop too
            self._stop_deadline = threading.Timer(STOP_DEADLINE_S, _stop_overdue, (service,))
            self._stop_deadline.daemon = True
            self._stop_deadline.start()
        await super().on_stop()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        if self._stop_deadline is not None:  # stopped in time
            self._stop_deadline.cancel()


def faust_app_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :class:`DeskpulseApp` for these settings.

    The worker and the benchmark's bare agent (its throughput ceiling) both build their app
    from these, so the ceiling is measured with the worker's consumer as it is.
    """
    return {
        "id": settings.app_id,
        "broker": [f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        "broker_credentials": _faust_credentials(settings),
        "store": "memory://",
        "TableManager": _Tables,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "web_enabled": True,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "stream_wait_empty": True,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": float(settings.kafka_session_timeout),
        "broker_heartbeat_interval": max(1.0, settings.kafka_session_timeout / 4),
        "table_cleanup_interval": 3600,
        "web_in_thread": False,
        "fetch_max_wait_s": settings.kafka_fetch_max_wait,
    }


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for these settings."""
    app = DeskpulseApp(**faust_app_options(settings))
    service = Service(settings)
    app.deskpulse = service  # type: ignore[attr-defined]
    service.guard.stopping = lambda: bool(app.should_stop)
    app.start_gates = [_BrokerGate(service)]
    # an engine process that dies takes the worker with it: the supervisor restarts both,
    # and they resume at the fence (nothing is acknowledged that it did not commit)
    service.engine.on_gone = lambda error: asyncio.ensure_future(app.crash(error))

    topics = {
        name: app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
            internal=False,
        )
        # the repartition topic too: partition N of it comes with partition N of the inputs
        # (Faust's assignor co-partitions topics of one partition count subscribed alike)
        for name in (*settings.input_topics, settings.topic_repartition)
    }

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _start_service() -> None:  # started before agents consume
        await service.start()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _check_assignment(
        app: faust.App, assigned: Any, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        # before any batch of the new assignment is applied: its fences against the
        # consumer group's committed offsets and the topics' logs (streams/integrity.py)
        service.guard.assigned(tp.partition for tp in assigned if tp.topic in settings.input_topics)

    def make_agent(name: str) -> None:
        async def apply(stream: Any, events: list[Any]) -> None:
            try:
                # Faust's messages carry topic, partition, offset, key and value
                await service.process([e.message for e in events])
            except asyncio.CancelledError:
                raise
            except Abandoned as error:
                # given up at the stop, unacknowledged: the next start reads it again
                log.warning(
                    "a batch of %d records of %s was left unapplied at the stop (%s)",
                    len(events),
                    name,
                    error,
                )
                _let_go(app, events)
                return
            except Exception as error:
                # A batch that cannot be applied must not be skipped (its numbers would
                # be lost) nor block silently: stop the worker loudly; the supervisor
                # restarts it and it resumes at the fence.
                log.critical("cannot apply a batch of %s: %r", name, error, exc_info=True)
                await app.crash(error)
                raise
            # acknowledged only once Redis holds the batch: Kafka's committed offset never
            # passes an event whose KPIs are not stored
            for event in events:
                await stream.ack(event)

        async def agent(stream: Any) -> None:
            # Up to DESKPULSE_BATCHES_IN_FLIGHT batches are applied while the next is
            # taken, so Faust keeps consuming during a commit. Per partition they commit
            # in the order taken: the engine's partition locks are first come, first served.
            in_flight: deque[asyncio.Future[None]] = deque()
            try:
                async for events in stream.noack_take(settings.batch_size, settings.batch_within):
                    while not service.ready:
                        await asyncio.sleep(0.05)
                    in_flight.append(asyncio.ensure_future(apply(stream, events)))
                    while in_flight and (
                        len(in_flight) > settings.batches_in_flight or in_flight[0].done()
                    ):
                        await in_flight.popleft()
            finally:
                # a stopping worker lets the batches it handed on finish (or fail) first
                if in_flight:
                    await asyncio.gather(*in_flight, return_exceptions=True)

        agent.__name__ = "agent_" + name.replace(".", "_").replace("-", "_")
        agent.__qualname__ = agent.__name__
        app.agent(topics[name], name=f"deskpulse.{name}", concurrency=1)(agent)

    for name in topics:  # the input topics, and records forwarded to their partitions
        make_agent(name)

    @app.timer(interval=float(settings.metrics_refresh_interval))  # type: ignore[untyped-decorator]
    async def _refresh_metrics() -> None:
        if not service.ready:
            return
        await service.guard.check()  # a vanished state shows even while nothing flows
        if service.guard.error is not None:
            return  # the snapshot stays as it was: no zeros from a lost state
        try:
            await service.refresh_metrics()
            service.metrics.redis_up(True)
        except Exception as error:
            service.metrics.redis_up(False)
            log.warning("refreshing the KPI snapshot failed: %s", error)

    @app.timer(interval=PROBE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def _probe_broker() -> None:
        # Faust's and aiokafka's clients retry a silent broker without telling anyone:
        # deskpulse_broker_up and /readyz follow this probe (streams/broker_probe.py)
        if service.ready:  # until then the start's own waits report the broker
            await service.broker.probe()

    detection = DetectionClocks(settings.topic_tickets, settings.topic_repartition)

    @app.timer(interval=float(settings.breach_check_interval))  # type: ignore[untyped-decorator]
    async def _check_breaches() -> None:
        if not service.ready or service.guard.error is not None:
            return
        if not service.broker.up:
            # the clocks need the topics' end offsets and the alerts go to the broker: the
            # first check after it answers again catches up (claims are exactly once)
            return
        lags = await _update_lag(app, service)
        partitions = {partition for (_, partition) in lags}
        now_ms = int(time.time() * 1000)
        started = time.perf_counter()
        try:
            # Replies that can refute a breach come on the tickets topic, of the ticket's
            # partition or (forwarded) of any other: each partition's clock is held back by
            # how far every partition was read (streams/breaches.py DetectionClocks).
            metas, caught_up = await _read_progress(app, service)
            clocks = detection.update(now_ms, metas, caught_up, partitions)
            published = await service.check_breaches(clocks)
            if partitions or not _assigned(app, settings.input_topics):  # no end offsets
                service.metrics.breach_checked(time.perf_counter() - started)
            if published:
                log.info("%d SLA breaches published", published)
        except StateError as error:  # found by the breach check first: the same report
            service.guard.report(error)
        except Exception as error:  # retried next interval; claims make it exactly once
            log.warning("breach check failed: %s", error)

    watch: StallWatch[TP] = StallWatch(settings.stall_timeout)

    # a few looks per stall timeout, never more than one a second (each asks the end offsets)
    @app.timer(interval=min(5.0, max(1.0, settings.stall_timeout / 3)))  # type: ignore[untyped-decorator]
    async def _watch_partitions() -> None:
        if not service.ready or service.guard.error is not None:
            return
        if not service.broker.up:  # no end offsets to be had; the lag series stay withdrawn
            watch.observe({}, time.monotonic(), flow_active=False, broker_up=False)
            return
        await _recover_stalls(app, service, watch)

    @app.timer(  # type: ignore[untyped-decorator]
        interval=float(settings.snapshot_interval), on_leader=True
    )
    async def _publish_outputs() -> None:
        if not service.ready or service.guard.error is not None:
            return
        try:
            await service.publish_outputs()
            service.metrics.outputs_published()
        except Exception as error:
            log.warning("publishing KPI snapshots or alerts failed: %s", error)

    def refused(web: Any, request: Any) -> Any:
        """A 401 response when the web token is set and the request lacks it, else None."""
        token = settings.web_token
        if token is None:
            return None
        if bearer_token_matches(request.headers.get("Authorization"), token.get_secret_value()):
            return None
        return web.json(
            {"error": "unauthorized"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="deskpulse"'},
        )

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        if settings.metrics_require_token and (refusal := refused(web, request)) is not None:
            return refusal
        body = render(service.metrics, service.collector)
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        problems = []
        if service.waiting_for is not None:
            problems.append(service.waiting_for)
        if not service.ready:
            problems.append("starting")
        if service.guard.error is not None:
            problems.append(f"state: {service.guard.error}")
        if (trouble := service.deadletter_trouble) is not None:
            waited_s = max(0.0, time.time() - trouble.since_s)
            problems.append(f"dead letters (held {waited_s:.0f}s): {trouble.detail}")
        elif service.ready and service.guard.checking:
            problems.append("checking the state against the consumer group and the topics")
        if (silence := service.broker.problem()) is not None:
            problems.append(silence)
        try:
            await asyncio.wait_for(service.redis.ping(), timeout=2)
        except Exception as error:  # any failure means not ready, with the reason
            problems.append(f"redis: {error}")
        if not _assigned(app, settings.input_topics):
            problems.append("no input partitions assigned (yet)")
        if problems:
            return web.json({"status": "not ready", "problems": problems}, status=503)
        return web.json({"status": "ready"})

    # KPI reads are bounded, shared and computed in a read process of their own (with its
    # own Redis connections), never in this event loop: see streams/reads.py
    reads = KpiReads(settings, service.metrics.registry)

    @app.page("/kpis")
    async def kpis(web: Any, request: Any) -> Any:
        if (refusal := refused(web, request)) is not None:
            return refusal
        if service.guard.error is not None:  # what Redis holds now is not the KPIs
            body = orjson.dumps({"error": f"state: {service.guard.error}"})
            return web.bytes(body, content_type="application/json", status=503)
        status, body, headers = await reads.answer(
            request.query.items(), max_age_s=max_age_s(request.headers.get("Cache-Control"))
        )
        return web.bytes(body, content_type="application/json", status=status, headers=headers)

    async def read(web: Any, request: Any, path: str) -> Any:
        if (refusal := refused(web, request)) is not None:
            return refusal
        if service.guard.error is not None:
            body = orjson.dumps({"error": f"state: {service.guard.error}"})
            return web.bytes(body, content_type="application/json", status=503)
        status, body, headers = await reads.answer(
            request.query.items(), path, max_age_s=max_age_s(request.headers.get("Cache-Control"))
        )
        return web.bytes(body, content_type="application/json", status=status, headers=headers)

    @app.page("/kpis/series")
    async def kpi_series(web: Any, request: Any) -> Any:
        return await read(web, request, "/kpis/series")

    @app.page("/kpis/sla-tickets")
    async def sla_tickets(web: Any, request: Any) -> Any:
        return await read(web, request, "/kpis/sla-tickets")

    # the wallboard: served without the token (it holds no data), every read it makes
    # carries it (docs/board.md)
    board = render_board(settings)

    def board_page(web: Any) -> Any:
        return web.bytes(
            board,
            content_type="text/html",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @app.page("/")
    async def root(web: Any, request: Any) -> Any:
        return board_page(web)

    @app.page("/board")
    async def board_view(web: Any, request: Any) -> Any:
        return board_page(web)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _stop_reads(
        app: faust.App, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:  # pragma: no cover - signal
        await reads.stop()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _stop(
        app: faust.App, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:  # pragma: no cover - signal
        await service.stop()

    if settings.ingest:
        _serve_ingest(app, settings)
    return app


def _serve_ingest(app: faust.App, settings: Settings) -> None:
    """``DESKPULSE_INGEST=true``: the ingest routes (streams/ingest.py) on a port of their
    own, in the worker's event loop, with a producer of their own."""
    from deskpulse.streams.ingest import IngestServer

    server = IngestServer(settings)

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _start_ingest() -> None:
        await server.start()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _stop_ingest(
        app: faust.App, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:  # pragma: no cover - signal
        await server.stop()


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` as a bearer credential.

    The scheme is matched case-insensitively (RFC 7235: ``bearer``, ``BEARER``), with one
    or more spaces before the credential. The credential is compared in constant time, as
    SHA-256 digests (equal lengths), so neither its content nor its length shows in the
    response time.
    """
    scheme, _, credential = (authorization or "").strip().partition(" ")
    given = hashlib.sha256(credential.lstrip(" ").encode()).digest()
    expected = hashlib.sha256(token.encode()).digest()
    matches = hmac.compare_digest(given, expected)
    return scheme.lower() == "bearer" and matches


def _stop_overdue(service: Service) -> None:
    """End the process whose stop took over :data:`STOP_DEADLINE_S` (a timer thread)."""
    log.critical(
        "the worker did not stop within %gs (Redis or the broker does not answer); it exits "
        "now: nothing unapplied was acknowledged, the next start resumes at the fence",
        STOP_DEADLINE_S,
    )
    service.engine.kill()  # an engine process ends with the worker, not after it
    logging.shutdown()
    os._exit(1)


def _let_go(app: faust.App, events: Iterable[Any]) -> None:
    """Stop Faust waiting for these events' acknowledgement, without giving it.

    At a stop Faust waits until every message taken is acknowledged (or garbage); a batch
    given up at the stop never will be. Its offsets are not committed (only acknowledged
    ones are), so the next start reads it again. The set is Faust's (no public accessor).
    """
    unacked = compat.unacked_messages(app.consumer)
    for event in events:
        unacked.discard(event.message)


def _assigned(app: faust.App, topics: Iterable[str]) -> bool:
    """Whether the worker's consumer has partitions of ``topics`` assigned (a member may
    hold none: more workers than partitions, or only Faust's leader topic)."""
    wanted = set(topics)
    try:
        return any(tp.topic in wanted for tp in app.consumer.assignment())
    except Exception:  # the consumer has not started yet
        return False


async def _update_lag(app: faust.App, service: Service) -> dict[tuple[str, int], int]:
    """Consumer lag per assigned input partition, from Faust's own consumer positions.

    Exported as measured: when the end offsets cannot be had, the lag series go until the
    next measurement (``deskpulse_broker_up``, from the broker probe, says why).
    """
    lags: dict[tuple[str, int], int] = {}
    try:
        consumer: Any = app.consumer
        assignment = consumer.assignment()
        if not assignment:
            return lags
        read = (*service.settings.input_topics, service.settings.topic_repartition)
        tps = [tp for tp in assignment if tp.topic in read]
        highwaters = await consumer.highwaters(*tps)
        for tp in tps:
            # the next offset to read once everything processed is committed
            committed = compat.committed_offset(consumer, tp)
            # the end: what ListOffsets says, or the high watermark of the last fetch
            # response if that is further (a broker may answer ListOffsets short of its
            # last batch, the embedded one does; a lag of 0 there would hide a partition
            # stuck on its last records from the watchdog)
            ends = [e for e in (highwaters.get(tp), consumer.highwater(tp)) if e is not None]
            if not ends:
                continue
            end = max(ends)
            lag = max(0, end - (committed or 0))
            lags[(tp.topic, tp.partition)] = lag
            service.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            service.metrics.watched(tp.topic, tp.partition)
    except Exception as error:  # lag is best-effort health, never fatal
        service.metrics.lag.clear()  # no frozen number that looks healthy
        log.debug("lag update failed: %s", error)
    return lags


async def _recover_stalls(app: faust.App, service: Service, watch: StallWatch[TP]) -> None:
    """Seek every stuck input partition back to its committed offset (streams/watchdog.py).

    Records Faust's consumer fetched and dropped are read again; those at or below the
    Redis fence are skipped as after a restart. The seek goes through ``seek_wait``, which
    runs in the consumer's own thread (``seek`` would touch it from this event loop).
    """
    consumer: Any = app.consumer
    # a held batch (the state being checked, dead letters held up) is in flight, not stuck
    held = service.guard.checking or service.deadletter_trouble is not None
    try:
        lags = await _update_lag(app, service)
        busy = {message.tp for message in list(compat.unacked_messages(consumer))}
        progress: dict[TP, Progress] = {}
        for (topic, partition), lag in lags.items():
            tp = TP(topic, partition)
            committed = compat.committed_offset(consumer, tp)
            progress[tp] = Progress(
                committed=committed,
                read=compat.read_offset(consumer, tp),
                # the lag is measured from the committed offset: the end is committed + lag
                end=(committed or 0) + lag,
                busy=held or tp in busy,
            )
    except Exception as error:  # best-effort like the lag: measured again next time
        log.debug("measuring the partitions' progress failed: %s", error)
        return
    stalls = watch.observe(
        progress,
        time.monotonic(),
        flow_active=bool(consumer.flow_active),
        broker_up=service.broker.up,
    )
    for tp, stall in stalls.items():
        level = logging.WARNING if stall.attempt <= ATTEMPTS_BEFORE_ERROR else logging.ERROR
        try:
            offset = stall.committed
            if offset is None:  # nothing committed yet: it was read from its first record
                offset = (await consumer.earliest_offsets(tp)).get(tp, 0)
            await consumer.seek_wait({tp: offset})
        except Exception as error:
            log.error(
                "partition %d of %s has had %d records to read and no progress for %.0fs "
                "(recovery %d); seeking it back to offset %s failed: %s",
                tp.partition,
                tp.topic,
                stall.end - (stall.committed or 0),
                stall.stuck_s,
                stall.attempt,
                stall.committed,
                error,
            )
            continue
        service.metrics.stalled(tp.topic, tp.partition)
        log.log(
            level,
            "partition %d of %s was stuck for %.0fs (committed offset %d, end offset %d, "
            "nothing in flight): sought back to offset %d to read it again (recovery %d%s)",
            tp.partition,
            tp.topic,
            stall.stuck_s,
            stall.committed or 0,
            stall.end,
            offset,
            stall.attempt,
            "" if level == logging.WARNING else "; it stays stuck, restart the worker",
        )


async def _read_progress(
    app: faust.App, service: Service
) -> tuple[dict[int, PartitionMeta], dict[int, bool]]:
    """Every input partition's meta, then whether it had nothing left to read on any of its
    topics (fences against the topics' end offsets, asked of the broker after the metas
    were read; partitions of other workers too)."""
    settings = service.settings
    metas = {p: (await service.store.load(p, []))[0] for p in range(service.partitions or 0)}
    topics = (*settings.input_topics, settings.topic_repartition)
    consumer: Any = app.consumer
    ends = await consumer.highwaters(*(TP(t, p) for p in metas for t in topics))
    caught_up = {
        p: all(
            (end := ends.get(TP(t, p))) is not None and meta.offsets.get(t, -1) + 1 >= end
            for t in topics
        )
        for p, meta in metas.items()
    }
    return metas, caught_up


def _faust_credentials(settings: Settings) -> Any:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    options = kafka_client_options(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=options.get("ssl_context"),
    )
