"""``deskpulse demo``: the whole service on one machine with nothing set up, full in seconds.

**Its own stack.** By default the demo starts an embedded broker (Tansu) and a
``redis-server`` of its own on free loopback ports, with their files under ``.deskpulse/``
(``DESKPULSE_DEMO_DIR``), both fresh each run: the embedded broker keeps its topics in
memory, so a Redis kept from an earlier run would hold fences of topics that are gone (see
:mod:`streams.integrity`). Fresh broker and fresh Redis are consistent with each other.
The demo uses a broker or a Redis it did not start only when told to (:func:`plan_stack`):
with ``--use-existing``, which needs both to answer at the configured addresses, or when the
settings name an address (``DESKPULSE_KAFKA_BOOTSTRAP``, ``DESKPULSE_REDIS_URL`` in the
environment or ``.env``) and something answers there; an address named but free gets the
demo's own server. A Redis it did not start is named up front, with the prefix it will
write under, before anything is written (:func:`claim_state` moves to a prefix of its own
when state built from other topics is there).

**Full at once.** Before the worker starts, the demo produces the last 24 hours of a
simulated helpdesk (:mod:`streams.devtools.simulate`, with the conversations still open
when it starts) to the input topics and applies them on the fast path
(:func:`streams.replay.replay`), then commits the worker's consumer group at the replay's
fences, so the worker starts where the replay ended instead of reading the day again to
skip it. The same simulation then goes on live, each event sent when its time comes. Its
banner states the rate it really sends: the events of the next minutes of the simulation
(``--rate`` is the average over a simulated day; office hours and the weekend shape it).

**Stopping.** The first Ctrl-C or SIGTERM stops every child (the worker, then the servers,
then any other child left) before the demo prints anything, and every line it prints
survives a closed stdout (``deskpulse demo | tee demo.log`` and a Ctrl-C that ends
``tee`` first).

Unless ``DESKPULSE_SCHEDULES`` or ``DESKPULSE_SLA_POLICIES`` is set, the worker runs with
the policy set of :mod:`streams.devtools.policies` (two office schedules and a 24/7
default), and the simulated agents of the office queues keep office hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiokafka import AIOKafkaProducer

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import RECORD_KINDS, Settings
from deskpulse.models.sla import Schedule
from deskpulse.streams.devtools import policies
from deskpulse.streams.devtools.embedded import (
    ManagedProcess,
    free_port,
    port_open,
    start_broker,
    start_redis,
)
from deskpulse.streams.devtools.simulate import Record, SimConfig, generate
from deskpulse.streams.topics import ensure_topics

__all__ = [
    "HISTORY_S",
    "StackPlan",
    "claim_state",
    "commit_group_at_fences",
    "plan_stack",
    "produce_live",
    "run_demo",
    "worker_environment",
]

#: the simulated history the demo backfills before the worker starts
HISTORY_S = 24 * 3600.0
#: the live stretch after it: the simulation is calibrated on history and live together,
#: so the live rate is the simulated day's (a longer stretch would start its lifecycles
#: later and send less at first); after it the demo keeps serving what it has
_LIVE_S = 24 * 3600.0
#: how long the worker may take to flush and commit after SIGTERM before it is killed
_WORKER_STOP_S = 20.0
#: the history starts with the conversations of the 2 hours before it still open
#: (``SimConfig.backlog_s``): the tickets open, the chats waiting at its start
_BACKLOG_S = 2 * 3600.0
#: the span of the live simulation the banner's rate is counted on
RATE_AHEAD_S = 120.0
#: what the demo's worker runs with unless the settings say otherwise: /metrics refreshed
#: every second rather than 5 (the first refresh comes one interval after the start), a
#: shorter session, with which the embedded broker lets the one worker join sooner, and a
#: breach check every 5 s rather than 15 (the first comes one interval after the start and
#: claims the breaches of the replayed day, a thousand or so, which the board's SLA
#: columns show)
WORKER_DEFAULTS = {
    "DESKPULSE_METRICS_REFRESH_INTERVAL": "1",
    "DESKPULSE_KAFKA_SESSION_TIMEOUT": "4",
    "DESKPULSE_BREACH_CHECK_INTERVAL": "5",
}
#: the web port a demo serves on unless the settings name one or something holds it
_DEFAULT_WEB_PORT = 6066


class _Output:
    """The demo's lines on stdout; a reader gone (a closed pipe) silences them, it never
    stops the demo or its clean-up."""

    def __init__(self) -> None:
        self.broken = False

    def say(self, text: str) -> None:
        if self.broken:
            return
        try:
            print(text, flush=True)
        except (OSError, ValueError):  # BrokenPipeError, EBADF, a closed sys.stdout
            self.broken = True
            # the interpreter flushes stdout at exit; a dead pipe there would be one more
            # error (and exit status 120): point the descriptor at /dev/null instead
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


#: how long a phase interrupted by Ctrl-C or SIGTERM may take to close its clients
_CLEANUP_S = 10.0


def _run_interruptible(main: Coroutine[Any, Any, Any], stopped_by: list[str]) -> Any:
    """``asyncio.run(main)``, where the first Ctrl-C or SIGTERM cancels ``main`` and raises
    KeyboardInterrupt once it has closed its clients (its producer), or after ``_CLEANUP_S``.

    The signal arrives as a callback of the event loop, never as an exception raised in
    the middle of one: a KeyboardInterrupt raised inside a client's background task (the
    producer's sender, say) would kill that task, and the producer's close would wait for
    it forever. The signal is recorded in ``stopped_by``; later ones are ignored, so they
    cannot cut the clean-up short. Outside this call the handlers in force are restored."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(main)
        deadline: list[asyncio.TimerHandle] = []

        def interrupt(signum: int) -> None:
            if stopped_by:
                return
            stopped_by.append(signal.Signals(signum).name)
            task.cancel()
            # a cancellation a client library absorbs must not keep the demo running
            deadline.append(loop.call_later(_CLEANUP_S, loop.stop))

        for signum in signals:
            loop.add_signal_handler(signum, interrupt, signum)
        try:
            result = loop.run_until_complete(task)
        except (asyncio.CancelledError, RuntimeError):
            if not stopped_by:
                raise
        finally:
            for handle in deadline:
                handle.cancel()
            for signum in signals:
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_IGN if stopped_by else previous[signum])
    if stopped_by:
        raise KeyboardInterrupt
    return result


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port or default_port)


def _redis_address(settings: Settings) -> tuple[str, int]:
    url = urlparse(settings.redis_url.get_secret_value())
    return url.hostname or "127.0.0.1", url.port or 6379


@dataclass(frozen=True)
class StackPlan:
    """Where the demo's broker, Redis and web server are, and which of them it starts."""

    broker: tuple[str, int]
    own_broker: bool
    redis: tuple[str, int]
    own_redis: bool
    web_port: int

    def settings_for(self, settings: Settings) -> Settings:
        """``settings`` pointed at the planned addresses (a Redis of the demo's own has no
        password and database 0)."""
        update: dict[str, Any] = {"web_port": self.web_port}
        if self.own_broker:
            update["kafka_bootstrap"] = f"{self.broker[0]}:{self.broker[1]}"
        if self.own_redis:
            from pydantic import SecretStr

            update["redis_url"] = SecretStr(f"redis://{self.redis[0]}:{self.redis[1]}/0")
        return settings.model_copy(update=update)


def plan_stack(
    settings: Settings,
    *,
    use_existing: bool,
    named: Iterable[str] | None = None,
    is_open: Callable[[str, int], bool] = port_open,
    pick_port: Callable[[str], int] = free_port,
) -> StackPlan:
    """Decide what the demo starts (pure but for ``is_open`` and ``pick_port``).

    ``named``: the settings given explicitly (the environment, ``.env``; by default
    ``settings.model_fields_set``). For the broker and for Redis alike:

    * ``use_existing``: the configured address, which must answer (else
      :class:`SettingsError`);
    * the address named in the settings: what answers there, else the demo's own there;
    * neither: the demo's own on a free loopback port (never the defaults 9092 and 6379,
      where a machine's own broker or Redis may be listening).

    The web port is the named one, else 6066 when nothing listens there, else a free one.
    """
    given = set(settings.model_fields_set if named is None else named)
    loopback = "127.0.0.1"

    def place(field: str, address: tuple[str, int], what: str) -> tuple[tuple[str, int], bool]:
        if use_existing:
            if not is_open(*address):
                raise SettingsError(
                    "DESKPULSE_" + field.upper(),
                    f"--use-existing: no {what} answers at {address[0]}:{address[1]}",
                )
            return address, False
        if field in given:
            return address, not is_open(*address)
        return (loopback, pick_port(loopback)), True

    broker, own_broker = place(
        "kafka_bootstrap",
        _host_port(settings.kafka_bootstrap.split(",")[0].strip(), 9092),
        "broker",
    )
    redis, own_redis = place("redis_url", _redis_address(settings), "Redis")
    if "web_port" in given:
        web_port = settings.web_port
    elif not is_open(settings.web_host, _DEFAULT_WEB_PORT):
        web_port = _DEFAULT_WEB_PORT
    else:
        web_port = pick_port(settings.web_host)
    while own_broker and own_redis and redis == broker:  # two picks that met
        redis = (redis[0], pick_port(redis[0]))
    return StackPlan(broker, own_broker, redis, own_redis, web_port)


def _shown(path: Path) -> str:
    """``path`` as the user named it: relative to the working directory when under it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _command_env(settings: Settings, plan: StackPlan) -> str:
    """What the shell needs before ``deskpulse kpis`` to read the demo's state."""
    parts = []
    if plan.own_redis:
        parts.append(f"DESKPULSE_REDIS_URL=redis://{plan.redis[0]}:{plan.redis[1]}/0")
    if os.environ.get("DESKPULSE_REDIS_PREFIX", "deskpulse") != settings.redis_prefix:
        parts.append(f"DESKPULSE_REDIS_PREFIX={settings.redis_prefix}")
    return "".join(part + " " for part in parts)


async def claim_state(
    settings: Settings,
    *,
    own_redis: bool,
    now_s: float,
    say: Callable[[str], None] = print,
) -> Settings:
    """The settings to run on, when the demo's embedded broker starts with empty topics.

    State left under the prefix was built from other topics: cleared when the demo also
    started Redis (its own), else left alone and the demo writes under a fresh prefix.
    """
    from deskpulse.streams.core import CoreConfig
    from deskpulse.streams.redis_client import connect
    from deskpulse.streams.store import Store

    prefix = settings.redis_prefix
    redis = connect(settings, purpose="command")
    try:
        store = Store(redis, prefix, CoreConfig.from_settings(settings))
        if not await store.has_state():
            return settings
        if own_redis:
            deleted = await store.clear()
            say(
                "deskpulse demo: the embedded broker starts with empty topics, so the state "
                f"an earlier demo left under prefix {prefix!r} is cleared ({deleted} keys)"
            )
            return settings
        fresh = f"{prefix}-demo-{int(now_s)}"
        say(
            f"deskpulse demo: Redis holds state under prefix {prefix!r} that the embedded "
            f"broker's empty topics did not build; this demo writes under prefix {fresh!r} "
            f"instead (DESKPULSE_REDIS_PREFIX={fresh} deskpulse kpis reads it)"
        )
        return settings.model_copy(update={"redis_prefix": fresh})
    finally:
        await redis.aclose()


def worker_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the demo starts its worker with: ``environ`` on the demo's broker,
    Redis, prefix and web port, plus the policy set of :mod:`streams.devtools.policies`
    when the settings name neither schedules nor policies (their own, from the
    environment or a ``.env``, stand)."""
    env = dict(environ) | {
        "DESKPULSE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "DESKPULSE_REDIS_URL": settings.redis_url.get_secret_value(),
        "DESKPULSE_REDIS_PREFIX": settings.redis_prefix,
        "DESKPULSE_WEB_PORT": str(settings.web_port),
    }
    if settings.sla_policies is None and not settings.schedules:
        env |= policies.settings_env()
    for name, value in WORKER_DEFAULTS.items():
        if settings.model_fields_set.isdisjoint({name.removeprefix("DESKPULSE_").lower()}):
            env[name] = value
    return env


#: the share of the demo's tickets escalated or transferred to another queue while open
DEMO_MOVES = 0.08


def simulation(
    now_s: float, *, rate: float, seed: int, agent_hours: Mapping[str, Schedule]
) -> SimConfig:
    """The demo's simulated helpdesk: the last :data:`HISTORY_S` before ``now_s`` and the
    live day after, with ids of this run (a Redis or topics kept from another run never
    see one of them twice)."""
    return SimConfig(
        seed=seed,
        start_s=now_s - HISTORY_S,
        duration_s=HISTORY_S + _LIVE_S,
        rate=rate,
        agent_hours=dict(agent_hours),
        backlog_s=_BACKLOG_S,
        id_prefix=f"s{seed}-{int(now_s)}-",
        moves=DEMO_MOVES,
    )


class _Peekable:
    """An iterator of records that can look ahead without taking what it looked at."""

    def __init__(self, records: Iterable[Record]) -> None:
        self._records = iter(records)
        self._ahead: deque[Record] = deque()

    def peek(self) -> Record | None:
        if not self._ahead:
            self._ahead.extend(itertools.islice(self._records, 1))
        return self._ahead[0] if self._ahead else None

    def look_ahead(self, until_s: float) -> list[Record]:
        """The records due before ``until_s`` (and the first one after), kept for
        iterating."""
        last = self.peek()
        while last is not None and _due_s(last, until_s) < until_s:
            last = next(self._records, None)
            if last is not None:
                self._ahead.append(last)
        return list(self._ahead)

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        if self._ahead:
            return self._ahead.popleft()
        return next(self._records)


def _due_s(record: Record, default_s: float) -> float:
    return record.occurred_at_s if record.occurred_at_s is not None else default_s


def take_until(records: _Peekable, until_s: float) -> Iterator[Record]:
    """The records due before ``until_s``, leaving the first later one in ``records``."""
    while (record := records.peek()) is not None and _due_s(record, until_s) < until_s:
        yield next(records)


async def produce_backlog(settings: Settings, records: Iterable[Record]) -> int:
    """Send ``records`` as fast as the broker takes them; how many were sent.

    Each record goes to the partition the producer's default partitioner gives its key
    (as :func:`send_in_time` sends them); they are packed into batches here, which costs
    a sixth of sending them one by one (2.3 s against 13.9 s for 425,000 records)."""
    from aiokafka.partitioner import DefaultPartitioner

    topics: dict[str, str] = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}
    producer = AIOKafkaProducer(
        **kafka_client_options(settings),
        enable_idempotence=False,  # the embedded broker refuses aiokafka's InitProducerId
        max_batch_size=1024 * 1024,
        acks=1,
    )
    await producer.start()
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {
        kind: sorted(await producer.partitions_for(topic)) for kind, topic in topics.items()
    }
    batches: dict[tuple[str, int], Any] = {}
    sent: list[asyncio.Future[Any]] = []
    count = 0
    try:
        for record in records:
            numbers = partitions[record.topic_kind]
            partition = partitioner(record.key, numbers, numbers)
            slot = (record.topic_kind, partition)
            batch = batches.get(slot)
            if batch is None:
                batch = batches[slot] = producer.create_batch()
            if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                # full: send it, and start the next with this record
                sent.append(await producer.send_batch(batch, topics[slot[0]], partition=partition))
                batch = batches[slot] = producer.create_batch()
                batch.append(key=record.key, value=record.value, timestamp=None)
            count += 1
            if len(sent) >= 64:
                await asyncio.gather(*sent)
                sent.clear()
        for (kind, partition), batch in batches.items():
            sent.append(await producer.send_batch(batch, topics[kind], partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return count


async def commit_group_at_fences(settings: Settings) -> int:
    """Commit the worker's consumer group at the offsets right after the state's fences
    (what a worker that had applied those records would have committed); how many
    partitions. The worker then starts where the replay ended instead of reading every
    record again to skip it, and its check of the state against the group passes."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from deskpulse.streams.core import CoreConfig
    from deskpulse.streams.redis_client import connect
    from deskpulse.streams.store import Store

    redis = connect(settings, purpose="command")
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings), group_id=settings.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        store = Store(redis, settings.redis_prefix, CoreConfig.from_settings(settings))
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for topic in settings.input_topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                meta, _ = await store.load(partition, [])
                applied = meta.offsets.get(topic)
                if applied is not None:
                    offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(applied + 1, "")
        if offsets:
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        return len(offsets)
    finally:
        await consumer.stop()
        await redis.aclose()


async def backfill(settings: Settings, records: Iterable[Record]) -> tuple[int, float, int, float]:
    """Produce ``records`` and replay them into Redis; (produced, seconds, replayed,
    seconds)."""
    from deskpulse.streams.replay import replay

    started = time.perf_counter()
    produced = await produce_backlog(settings, records)
    produced_s = time.perf_counter() - started
    started = time.perf_counter()
    stats = await replay(settings)
    await commit_group_at_fences(settings)
    return produced, produced_s, stats.records, time.perf_counter() - started


def live_rate(records: _Peekable, from_s: float, span_s: float = RATE_AHEAD_S) -> float:
    """Events per second the simulation sends in ``[from_s, from_s + span_s)``, counted on
    its records (looked at, not taken)."""
    ahead = records.look_ahead(from_s + span_s)
    count = sum(1 for record in ahead if from_s <= _due_s(record, from_s) < from_s + span_s)
    return count / span_s


def run_demo(
    settings: Settings,
    *,
    rate: float = 1.0,
    seed: int = 7,
    use_existing: bool = False,
    named: Iterable[str] | None = None,
) -> int:
    """Run the demo until Ctrl-C or SIGTERM; returns the exit status."""
    out = _Output()
    workdir = Path(os.environ.get("DESKPULSE_DEMO_DIR", ".deskpulse")).resolve()
    started: list[ManagedProcess] = []
    worker: ManagedProcess | None = None
    stopped_by: list[str] = []

    def on_stop(signum: int, frame: object) -> None:
        # The first Ctrl-C or SIGTERM ends whatever is running, however deep in the event
        # loop: asyncio's own SIGINT handling only cancels the main task, and a
        # cancellation absorbed inside a client library would leave the demo producing
        # forever. Later signals are ignored: they must not cut the clean-up short, and
        # nothing is printed before the children are stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped_by.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    status = 1
    try:
        plan = plan_stack(settings, use_existing=use_existing, named=named)
        settings = plan.settings_for(settings)
        base = f"http://{_url_host(settings.web_host)}:{settings.web_port}"
        out.say(f"deskpulse demo: board {base}/board")
        workdir.mkdir(parents=True, exist_ok=True)
        broker_at = f"{plan.broker[0]}:{plan.broker[1]}"
        redis_at = f"{plan.redis[0]}:{plan.redis[1]}"
        if plan.own_broker:
            shutil.rmtree(workdir / "broker", ignore_errors=True)
            started.append(start_broker(*plan.broker, workdir / "broker"))
        if plan.own_redis:
            # fresh, like the embedded broker's in-memory topics: the two agree
            shutil.rmtree(workdir / "redis", ignore_errors=True)
            started.append(start_redis(*plan.redis, workdir / "redis"))
        owned = [
            what
            for what, own in (
                (f"an embedded broker on {broker_at}", plan.own_broker),
                (f"redis-server on {redis_at}", plan.own_redis),
            )
            if own
        ]
        if owned:
            out.say(
                f"deskpulse demo: started {' and '.join(owned)}, fresh, with their files "
                f"under {_shown(workdir)}"
            )
        if not plan.own_broker:
            out.say(f"deskpulse demo: using the broker at {broker_at}, which it did not start")
        if plan.own_broker and not plan.own_redis:
            settings = asyncio.run(
                claim_state(settings, own_redis=False, now_s=time.time(), say=out.say)
            )
        if not plan.own_redis:
            out.say(
                f"deskpulse demo: using Redis at {redis_at}, which it did not start: the "
                f"demo's KPI state goes there, under prefix {settings.redis_prefix!r}"
            )
        asyncio.run(ensure_topics(settings))
        worker_env = worker_environment(settings, os.environ)
        hours: Mapping[str, Schedule] = {}
        if worker_env.get("DESKPULSE_SLA_POLICIES") == policies.SLA_POLICIES:
            hours = policies.agent_hours()
            # the history is replayed under the policies the worker runs with
            settings = Settings.model_validate(settings.model_dump() | policies.settings_values())
            out.say(
                "deskpulse demo: SLA policies (DESKPULSE_SLA_POLICIES is unset): billing and "
                "sales on office hours in Europe/Berlin, technical in America/New_York, "
                "the rest 24/7; the simulated agents of those queues keep those hours"
            )
        now_s = time.time()
        records = _Peekable(generate(simulation(now_s, rate=rate, seed=seed, agent_hours=hours)))
        produced, produced_s, replayed, replayed_s = _run_interruptible(
            backfill(settings, take_until(records, now_s)), stopped_by
        )
        out.say(
            f"deskpulse demo: the last {HISTORY_S / 3600:g} h of simulated history: "
            f"{produced:,} records produced in {produced_s:.1f} s, {replayed:,} replayed "
            f"into Redis in {replayed_s:.1f} s"
        )
        with contextlib.suppress(FileNotFoundError):
            (workdir / "worker.log").unlink()  # this run's log only
        worker = ManagedProcess(
            "worker",
            [sys.executable, "-m", "deskpulse.streams.cli", "worker"],
            workdir / "worker.log",
            env=worker_env,
        )
        live_from_s = time.time()
        per_s = live_rate(records, live_from_s)
        out.say(
            f"deskpulse demo: worker started (its log: {_shown(worker.log_path)}); live simulated "
            f"traffic at {per_s:.3g} events/s, as the simulation sends them in the next "
            f"{RATE_AHEAD_S / 60:g} minutes (--rate {rate:g} is its average over a day: "
            "office hours and weekends shape it)\n"
            f"  board:    {base}/board\n"
            f"  metrics:  {base}/metrics\n"
            f"  KPIs:     {base}/kpis?window=1h&by=channel\n"
            f"  table:    {_command_env(settings, plan)}deskpulse kpis --window 1h --by channel\n"
            "Ctrl-C stops everything."
        )
        status = _run_interruptible(
            send_in_time(settings, records, worker=worker, say=out.say), stopped_by
        )
        if status == 0:
            out.say("deskpulse demo: the simulated day is over; Ctrl-C stops everything")
            while worker.running:
                time.sleep(1.0)
            status = 1
    except KeyboardInterrupt:
        status = 0
    finally:
        # children first, and not a line before: a reader that is gone must not leave them
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_started = time.monotonic()
        notes = []
        if worker is not None and worker.stop(timeout_s=_WORKER_STOP_S) == -signal.SIGKILL:
            notes.append(f"the worker did not stop within {_WORKER_STOP_S:g} s: killed")
        for process in reversed(started):
            process.stop()
        strays = _stop_strays()
        if strays:
            notes.append(f"{strays} other child processes stopped")
        names = ["the worker"] * (worker is not None) + [p.name for p in reversed(started)]
        for note in notes:
            out.say(f"deskpulse demo: {note}")
        if names:
            out.say(
                f"deskpulse demo: stopped {', '.join(names)}"
                f" ({'on ' + stopped_by[0] + ', ' if stopped_by else ''}"
                f"{time.monotonic() - stop_started:.1f} s)"
            )
    return status


def _stop_strays(timeout_s: float = 5.0) -> int:
    """Stop the children of this process still alive (one whose start a signal cut short,
    say): SIGTERM, SIGKILL after ``timeout_s``; how many there were."""
    me = os.getpid()
    strays = set()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    text = stat.read().decode("utf-8", "replace")
            except OSError:
                continue  # not a process, or gone meanwhile
            # "pid (comm) S ppid ...": the state follows the last ")" (comm may hold one)
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[1]) == me and fields[0] != "Z":
                strays.add(int(entry))
    for pid in strays:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    left = set(strays)
    while left:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            left.discard(pid)
        if left and time.monotonic() >= deadline:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    return len(strays)


async def send_in_time(
    settings: Settings,
    records: Iterable[Record],
    *,
    worker: ManagedProcess | None = None,
    duration_s: float | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Produce ``records`` in real time: each one when its event time comes (those due
    already at once). Stops after ``duration_s``, or with status 1 when ``worker`` exits."""
    topics: dict[str, str] = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), enable_idempotence=False, linger_ms=20
    )
    await producer.start()
    try:
        start_s = time.time()
        for record in records:
            due = _due_s(record, time.time())
            if duration_s is not None and due > start_s + duration_s:
                break
            delay = due - time.time()
            if delay > 0:
                await producer.flush()
                await asyncio.sleep(delay)
            if worker is not None and not worker.running:
                say(
                    f"deskpulse demo: the worker exited ({worker.returncode}); the last "
                    f"lines of {worker.log_path}:\n{worker.log_tail(20)}"
                )
                return 1
            await producer.send(topics[record.topic_kind], value=record.value, key=record.key)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
    return 0


async def produce_live(
    settings: Settings,
    *,
    rate: float,
    seed: int,
    duration_s: float | None = None,
    agent_hours: Mapping[str, Schedule] | None = None,
    backlog_s: float = 0.0,
) -> int:
    """Produce simulated events in real time: each one when its event time comes.

    ``agent_hours`` (``SimConfig.agent_hours``): queues whose agents keep office hours.
    ``backlog_s`` (``SimConfig.backlog_s``): the conversations started that long before
    now and still open are produced first, at once, their earlier events included."""
    config = SimConfig(
        seed=seed,
        start_s=time.time(),
        duration_s=duration_s if duration_s is not None else 7 * 86400,
        rate=rate,
        agent_hours=dict(agent_hours or {}),
        backlog_s=backlog_s,
        moves=DEMO_MOVES,
    )
    return await send_in_time(settings, generate(config), duration_s=duration_s)
