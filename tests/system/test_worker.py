"""The worker with its engine in a child process (``DESKPULSE_ENGINE_PROCESS``): a real
``deskpulse worker`` subprocess, whose engine child a test kills. The worker's behaviour that
needs no process of its own is tested in tests/integration/test_worker.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

from deskpulse.models.settings import Settings
from tests.conftest import create_topics
from tests.integration.test_worker import caught_up, event, fast, kpis, processed_total
from tests.support import StartWorker, produce, samples, scrape, wait_until


def engine_child(worker_pid: int, module: bytes = b"deskpulse.streams.offload") -> int | None:
    """The pid of the worker's engine process (``python -m deskpulse.streams.offload``), or
    of the child running ``module``, if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        parent = re.search(r"^PPid:\s+(\d+)", status, re.M)
        if parent and int(parent.group(1)) == worker_pid and module in cmdline.split(b"\0"):
            return int(entry.name)
    return None


def outputs_child(worker_pid: int) -> int | None:
    """The pid of the worker's outputs process (``python -m deskpulse.streams.outputs``)."""
    return engine_child(worker_pid, b"deskpulse.streams.outputs")


def refreshed_at(port: int) -> float:
    """When the worker's KPI snapshot was last rebuilt (0 before the first)."""
    found = samples(scrape(port), "deskpulse_kpi_refresh_timestamp_seconds")
    return found[0][1] if found else 0.0


def test_a_dead_engine_process_stops_the_worker_loudly(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    """The engine child killed under a running worker: the worker exits non-zero, naming
    it, instead of acknowledging what nobody applies; the next worker applies it all."""
    settings = fast(settings, engine_process=True)
    create_topics(settings)
    at = time.time() - 120
    first = [(b"E1", event("ticket.created", at, ticket_id="E1", channel="email"))]
    later = [
        (b"E2", event("ticket.created", at + 1, ticket_id="E2", channel="email")),
        (b"E1", event("ticket.replied", at + 30, ticket_id="E1", author_role="agent")),
    ]
    worker = start_worker(settings, tmp_path / "first", timeout_s=60)
    asyncio.run(produce(settings, settings.topic_tickets, first))
    wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)
    child = wait_until(lambda: engine_child(worker.process.pid), 10, message=worker.describe)
    os.kill(child, signal.SIGKILL)
    asyncio.run(produce(settings, settings.topic_tickets, later))
    wait_until(lambda: not worker.running, 60, message=worker.describe)
    assert worker.returncode != 0, worker.describe()
    assert "engine process exited" in worker.log(), worker.describe()
    worker.stop(timeout_s=15)
    worker = start_worker(settings, tmp_path / "second", timeout_s=60)
    wait_until(lambda: caught_up(settings), 30, 0.5, message=worker.describe)
    assert worker.stop() == 0, worker.describe()
    document = kpis(settings, tmp_path, "--window", "1h")
    group = document["groups"][0]
    assert group["tickets_created"] == 2
    assert group["first_response"]["count"] == 1


def test_a_dead_outputs_process_is_started_again_and_the_worker_goes_on(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    """The outputs process (refreshes, KPI snapshots, alert rules) killed under a running
    worker: nothing the batches need was there, so the worker goes on applying, says so, and
    the next refresh starts a new one, whose snapshot counts every event."""
    settings = fast(settings, engine_process=True)
    create_topics(settings)
    at = time.time() - 120
    first = [(b"O1", event("ticket.created", at, ticket_id="O1", channel="email"))]
    later = [(b"O2", event("ticket.created", at + 1, ticket_id="O2", channel="email"))]
    worker = start_worker(settings, tmp_path / "worker", timeout_s=60)
    asyncio.run(produce(settings, settings.topic_tickets, first))
    wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)
    engine = wait_until(lambda: engine_child(worker.process.pid), 10, message=worker.describe)
    child = wait_until(lambda: outputs_child(worker.process.pid), 10, message=worker.describe)
    assert child != engine
    os.kill(child, signal.SIGKILL)
    killed_at = time.time()
    asyncio.run(produce(settings, settings.topic_tickets, later))
    wait_until(lambda: processed_total(settings.web_port) >= 2, 30, message=worker.describe)
    again = wait_until(
        lambda: (pid := outputs_child(worker.process.pid)) not in (None, child) and pid,
        30,
        message=worker.describe,
    )
    wait_until(lambda: refreshed_at(settings.web_port) > killed_at + 1, 30, message=worker.describe)
    assert worker.running, worker.describe()
    assert engine_child(worker.process.pid) == engine  # the engine process went on
    created = samples(scrape(settings.web_port), "deskpulse_tickets_created_total")
    assert sum(value for _, value in created) == 2, created
    assert "outputs process exited" in worker.log(), worker.describe()
    assert worker.stop() == 0, worker.describe()
    assert outputs_child(worker.process.pid) is None and again
