"""Web hardening of a worker process waiting for the broker: the health endpoints answer
meanwhile, its log (as Faust sets it up, with the repeat throttle) stays readable, and a
SIGTERM then stops it cleanly. The rest of the web hardening is in
tests/integration/test_hardening_web.py."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import orjson

from deskpulse.streams.devtools.embedded import free_port, start_broker
from tests.conftest import HOST
from tests.integration.test_hardening_web import settings_on, ticket
from tests.support import StartWorker, WorkerProcess, produce, sample, wait_until


def log_lines_between(worker: WorkerProcess, start: int, end: int | None = None) -> list[str]:
    """Log lines (a record's continuation lines included) from index ``start`` to ``end``."""
    return worker.log().splitlines()[start:end]


def test_health_answers_while_the_broker_is_awaited_and_the_log_stays_readable(
    redis_url: str, workdir: Path, start_worker: StartWorker
) -> None:
    port = free_port(HOST)  # nothing listens here until the broker starts below
    settings = settings_on(f"{HOST}:{port}", redis_url)
    worker = start_worker(settings, workdir, ready=False)
    # the web server is up before the broker is reached: nothing refuses the scrape
    wait_until(lambda: worker.get("/healthz"), 30, message=worker.describe)
    waiting_since = time.monotonic()
    ready = worker.get("/readyz")
    assert ready is not None and ready.status == 503, ready
    problems = orjson.loads(ready.body)["problems"]
    assert f"waiting for the Kafka broker at {HOST}:{port}" in problems
    metrics = worker.get("/metrics")
    assert metrics is not None and metrics.status == 200, metrics
    assert sample(metrics.text, "deskpulse_broker_up") == 0
    assert sample(metrics.text, "deskpulse_redis_up") == 1
    health = worker.get("/healthz")
    assert health is not None and health.status == 200

    # ~20 s of an unreachable broker: aiokafka tries every 100 ms; the log shows each
    # of our backed-off attempts and aiokafka's error once, not 200 times
    time.sleep(max(0.0, 20 - (time.monotonic() - waiting_since)))
    lines = worker.log().splitlines()
    attempts = [line for line in lines if "reaching the Kafka broker at" in line]
    unable = [line for line in lines if "Unable connect to" in line]
    assert len(attempts) >= 3, worker.describe()
    assert 1 <= len(unable) <= 2, unable
    assert len(lines) < 60, worker.describe()
    waited = len(lines)

    # the broker comes: the worker starts consuming and serves KPIs
    with start_broker(HOST, port, workdir / "tansu"):
        worker.wait_ready(120)
        ticket_id = "T-" + uuid.uuid4().hex[:8]
        asyncio.run(
            produce(settings, settings.topic_tickets, [ticket(ticket_id, time.time() - 60)])
        )

        def tickets_created() -> int:
            response = worker.get("/kpis?window=1h")
            if response is None or response.status != 200:
                return 0
            return int(orjson.loads(response.body)["groups"][0]["tickets_created"])

        wait_until(lambda: tickets_created() == 1, 60, message=worker.describe)
        metrics = worker.get("/metrics")
        assert metrics is not None and sample(metrics.text, "deskpulse_broker_up") == 1
        assert any("works again" in line for line in log_lines_between(worker, waited))
        running = len(worker.log().splitlines())

    # the broker goes away under the running worker: its consumer, producer and
    # coordinator retry every 100 ms; past one interval (30 s) the repeats are counted
    time.sleep(35)
    lost = log_lines_between(worker, running)
    errors = [line for line in lost if "[ERROR]" in line or " ERROR " in line]
    assert any("Unable connect to" in line for line in errors), worker.describe()
    assert any(re.search(r"\(repeated \d+ times in the last \d+ s\)", x) for x in errors), (
        worker.describe()
    )
    assert len(lost) < 150, f"{len(lost)} lines in 35 s: {worker.describe()}"
    assert worker.running, worker.describe()


def test_sigterm_while_waiting_for_the_broker_stops_the_worker_cleanly(
    redis_url: str, workdir: Path, start_worker: StartWorker
) -> None:
    settings = settings_on(f"{HOST}:{free_port(HOST)}", redis_url)
    worker = start_worker(settings, workdir, ready=False)
    wait_until(lambda: worker.get("/healthz"), 30, message=worker.describe)
    started = time.monotonic()
    assert worker.stop(timeout_s=20) == 0, worker.describe()
    assert time.monotonic() - started < 10, worker.describe()
