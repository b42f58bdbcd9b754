"""``deskpulse demo``: the whole service on one machine with nothing set up.

Uses the configured broker and Redis when they answer; otherwise starts its own on exactly
the configured addresses (data under ``.deskpulse/``), creates the topics, runs the worker
and a simulated support organisation producing live traffic. Ctrl-C stops everything it
started and leaves no process or port behind.

The embedded broker keeps its topics in memory, so each demo that starts one starts with
empty topics, while the Redis state of an earlier run (its fence above all) would make the
worker refuse them (see :mod:`streams.integrity`). So a demo that starts its own broker
clears the state under the prefix when it started Redis itself, and writes under a prefix
of its own when it uses a Redis it did not start; either way it says so in one line.

Unless ``DESKPULSE_SCHEDULES`` or ``DESKPULSE_SLA_POLICIES`` is set, the worker runs with
the policy set of :mod:`streams.devtools.policies` (two office schedules and a 24/7
default), and the simulated agents of the office queues keep office hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiokafka import AIOKafkaProducer

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.settings import RECORD_KINDS, Settings
from deskpulse.models.sla import Schedule
from deskpulse.streams.devtools import policies
from deskpulse.streams.devtools.embedded import ManagedProcess, port_open, start_broker, start_redis
from deskpulse.streams.topics import ensure_topics

__all__ = ["claim_state", "produce_live", "run_demo", "worker_environment"]

#: how long the worker may take to flush and commit after SIGTERM before it is killed
_WORKER_STOP_S = 20
#: the demo starts with the conversations of the last 6 hours still open (``SimConfig.
#: backlog_s``), so that the backlog, the solves and the waiting chats show from the first
#: minute instead of after hours; longer would show older tickets, for a longer burst at
#: the start (about 0.2 records per second of it per event/s of rate: 90,000 at 20/s)
_BACKLOG_S = 2 * 3600.0


def _run_interruptible(main: Coroutine[Any, Any, Any]) -> None:
    """``asyncio.run(main)``, except that after a KeyboardInterrupt ``main`` is cancelled
    and finishes its own clean-up (closing its producer) while the client's background
    tasks still run; ``asyncio.run`` would cancel those at the same moment and leave the
    producer's close pending. The KeyboardInterrupt is raised again afterwards, and the
    runner then cancels what is left and closes the loop, as ``asyncio.run`` does."""
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(main)
        try:
            loop.run_until_complete(task)
        except KeyboardInterrupt:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
            raise


def _prefix_env(settings: Settings) -> str:
    """What the shell needs before ``deskpulse kpis`` to read the demo's prefix."""
    if os.environ.get("DESKPULSE_REDIS_PREFIX", "deskpulse") == settings.redis_prefix:
        return ""
    return f"DESKPULSE_REDIS_PREFIX={settings.redis_prefix} "


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "127.0.0.1"), int(port or default_port)


async def claim_state(settings: Settings, *, own_redis: bool, now_s: float) -> Settings:
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
            print(
                "deskpulse demo: the embedded broker starts with empty topics, so the state "
                f"an earlier demo left under prefix {prefix!r} is cleared ({deleted} keys)",
                flush=True,
            )
            return settings
        fresh = f"{prefix}-demo-{int(now_s)}"
        print(
            f"deskpulse demo: Redis holds state under prefix {prefix!r} that the embedded "
            f"broker's empty topics did not build; this demo writes under prefix {fresh!r} "
            f"instead (DESKPULSE_REDIS_PREFIX={fresh} deskpulse kpis reads it)",
            flush=True,
        )
        return settings.model_copy(update={"redis_prefix": fresh})
    finally:
        await redis.aclose()


def worker_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the demo starts its worker with: ``environ`` on the demo's Redis
    prefix, plus the policy set of :mod:`streams.devtools.policies` when the settings name
    neither schedules nor policies (their own, from the environment or a ``.env``, stand)."""
    env = dict(environ) | {"DESKPULSE_REDIS_PREFIX": settings.redis_prefix}
    if settings.sla_policies is None and not settings.schedules:
        env |= policies.settings_env()
    return env


def run_demo(settings: Settings, *, rate: float = 20.0, seed: int = 7) -> int:
    """Run the demo until Ctrl-C; returns the exit status."""
    workdir = Path(os.environ.get("DESKPULSE_DEMO_DIR", ".deskpulse")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[ManagedProcess] = []
    worker: subprocess.Popen[bytes] | None = None
    interrupted = False

    def on_stop(signum: int, frame: object) -> None:
        # The first Ctrl-C or SIGTERM ends whatever is running, however deep in the event
        # loop: asyncio's own SIGINT handling only cancels the main task, and a
        # cancellation absorbed inside a client library would leave the demo producing
        # forever. Later signals must not cut the clean-up short.
        signal.signal(signal.SIGINT, on_again)
        signal.signal(signal.SIGTERM, on_again)
        raise KeyboardInterrupt

    def on_again(signum: int, frame: object) -> None:
        print("deskpulse demo: already stopping", flush=True)

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    try:
        host, port = _host_port(settings.kafka_bootstrap.split(",")[0], 9092)
        own_broker = not port_open(host, port)
        if own_broker:
            print(f"deskpulse demo: starting an embedded broker on {host}:{port}")
            started.append(start_broker(host, port, workdir / "broker"))
        else:
            print(f"deskpulse demo: using the broker at {host}:{port}")
        redis_url = urlparse(settings.redis_url.get_secret_value())
        redis_host, redis_port = redis_url.hostname or "127.0.0.1", redis_url.port or 6379
        own_redis = not port_open(redis_host, redis_port)
        if own_redis:
            print(f"deskpulse demo: starting redis-server on {redis_host}:{redis_port}")
            started.append(start_redis(redis_host, redis_port, workdir / "redis", appendonly=True))
        else:
            print(
                f"deskpulse demo: using Redis at {redis_host}:{redis_port}, which this demo "
                f"did not start: the KPI state goes there, under prefix "
                f"{settings.redis_prefix!r}",
                flush=True,
            )
        if own_broker:
            settings = asyncio.run(claim_state(settings, own_redis=own_redis, now_s=time.time()))
        asyncio.run(ensure_topics(settings))
        worker_env = worker_environment(settings, os.environ)
        if worker_env.get("DESKPULSE_SLA_POLICIES") == policies.SLA_POLICIES:
            print(
                "deskpulse demo: SLA policies (DESKPULSE_SLA_POLICIES is unset): billing and "
                "sales on office hours in Europe/Berlin, technical in America/New_York, "
                "the rest 24/7; the simulated agents of those queues keep those hours",
                flush=True,
            )
        worker = subprocess.Popen(
            [sys.executable, "-m", "deskpulse.streams.cli", "worker"],
            env=worker_env,
            start_new_session=True,
        )
        base = f"http://{settings.web_host}:{settings.web_port}"
        print(
            "deskpulse demo: worker started; simulated traffic at "
            f"{rate:g} events/s, after the backlog of the last {_BACKLOG_S / 3600:g} hours "
            "(the tickets still open, the chats still waiting).\n"
            f"  metrics:  {base}/metrics\n"
            f"  KPIs:     {base}/kpis?window=15m&by=channel\n"
            f"  table:    {_prefix_env(settings)}deskpulse kpis --window 15m --by channel\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        _run_interruptible(
            produce_live(
                settings,
                rate=rate,
                seed=seed,
                worker=worker,
                agent_hours=policies.agent_hours(),
                backlog_s=_BACKLOG_S,
            )
        )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        print("deskpulse demo: stopping", flush=True)
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=_WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                print(
                    f"deskpulse demo: the worker did not stop within {_WORKER_STOP_S} s; "
                    "killing it",
                    flush=True,
                )
                worker.kill()
                worker.wait()
        for process in reversed(started):
            print(f"deskpulse demo: stopping {process.name}", flush=True)
            process.stop()
        print("deskpulse demo: stopped", flush=True)
    return 0 if interrupted else 1


async def produce_live(
    settings: Settings,
    *,
    rate: float,
    seed: int,
    worker: subprocess.Popen[bytes] | None = None,
    duration_s: float | None = None,
    agent_hours: Mapping[str, Schedule] | None = None,
    backlog_s: float = 0.0,
) -> int:
    """Produce simulated events in real time: each one when its event time comes.

    ``agent_hours`` (``SimConfig.agent_hours``): queues whose agents keep office hours.
    ``backlog_s`` (``SimConfig.backlog_s``): the conversations started that long before
    now and still open are produced first, at once, their earlier events included."""
    from deskpulse.streams.devtools.simulate import SimConfig, generate

    topics: dict[str, str] = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), enable_idempotence=False, linger_ms=20
    )
    await producer.start()
    sent = 0
    try:
        start_s = time.time()
        horizon = duration_s if duration_s is not None else 7 * 86400
        config = SimConfig(
            seed=seed,
            start_s=start_s,
            duration_s=horizon,
            rate=rate,
            agent_hours=dict(agent_hours or {}),
            backlog_s=backlog_s,
        )
        records = generate(config)
        for record in records:
            due = record.occurred_at_s if record.occurred_at_s is not None else time.time()
            if duration_s is not None and due > start_s + duration_s:
                break
            delay = due - time.time()
            if delay > 0:
                await producer.flush()
                await asyncio.sleep(delay)
            if worker is not None and worker.poll() is not None:
                print(f"deskpulse demo: the worker exited ({worker.returncode})", flush=True)
                return 1
            await producer.send(topics[record.topic_kind], value=record.value, key=record.key)
            sent += 1
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
    return 0
