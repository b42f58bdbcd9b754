"""A broker that stops answering a running worker is reported, and its return too.

``/readyz`` answers 503 naming the broker and ``deskpulse_broker_up`` is 0 within two
probe intervals of the broker going silent; both recover when it answers again, and the
lag gauge shows no frozen numbers meanwhile. Each test runs its own broker (a Tansu
process it can freeze or kill without touching the session's), a real redis-server and a
real ``deskpulse worker``: once with the engine in a child process, once in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from deskpulse.exporters.catalog import CATALOG
from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.models.errors import BrokerUnavailable
from deskpulse.models.settings import Settings
from deskpulse.streams.broker_probe import PROBE_INTERVAL_S, PROBE_TIMEOUT_S, BrokerProbe
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_broker
from tests.conftest import HOST, create_topics
from tests.integration.test_worker import event, fast, processed_total
from tests.support import StartWorker, WorkerProcess, produce, samples, scrape, wait_until

#: The promise: a silent broker shows within two probe intervals (a probe that has just
#: answered, then the next one waiting out its timeout), here with slack for a loaded
#: machine (two cores shared with the broker, Redis and other tests).
DETECTION_BOUND_S = PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 10.0


# -- the probe's account of the broker (its clock and ping given) ----------------------------


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_the_probe_reports_silence_from_the_last_answer_and_clears_at_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outcomes: list[BaseException | None] = []
    states: list[bool] = []
    asked: list[float] = []

    async def ping(timeout_s: float) -> None:
        asked.append(timeout_s)
        if (outcome := outcomes.pop(0)) is not None:
            raise outcome

    probe = BrokerProbe(ping, states.append, timeout_s=2.5, clock=clock)
    silent = BrokerUnavailable("no answer from 10.0.0.1:9092 (cannot connect)")

    def step(after_s: float, outcome: BaseException | None) -> bool:
        clock.now_s += after_s
        outcomes.append(outcome)
        return asyncio.run(probe.probe())

    with caplog.at_level(logging.INFO, logger="deskpulse.broker"):
        assert step(5, None) is True
        assert probe.problem() is None and probe.up
        assert step(5, silent) is False  # silent for 5 s: since the last answer
        assert probe.problem() == "broker: no answer from 10.0.0.1:9092 (cannot connect) for 5 s"
        assert step(5, TimeoutError()) is False  # not a BrokerUnavailable: told as it is
        clock.now_s += 2
        assert probe.problem() == "broker: TimeoutError() for 12 s"
        assert not probe.up
        assert step(5, None) is True
        assert probe.problem() is None and probe.up
    assert states == [True, False, False, True]
    assert asked == [2.5] * 4
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned  # once per outage, not per probe
    assert "10.0.0.1:9092" in warned[0].getMessage()
    assert any("answers again, after 17 s" in r.getMessage() for r in caplog.records)


def test_a_probe_cut_short_by_the_stop_reports_nothing() -> None:
    states: list[bool] = []

    async def ping(timeout_s: float) -> None:
        probe.close()  # the worker stops while the ask is out; its client closes
        raise RuntimeError("KafkaPublisher.start() was not awaited")

    probe = BrokerProbe(ping, states.append)
    assert asyncio.run(probe.probe()) is False
    assert probe.up and probe.problem() is None and states == []


def test_the_silence_counts_from_the_start_when_nothing_was_probed_yet() -> None:
    clock = Clock()

    async def ping(timeout_s: float) -> None:
        raise BrokerUnavailable("no answer from h:1 (none within 5 s)")

    probe = BrokerProbe(ping, lambda up: None, clock=clock)
    clock.now_s += 30  # the start waited for the broker this long
    probe.answered()  # ... and reached it
    clock.now_s += 7
    assert asyncio.run(probe.probe()) is False
    assert probe.problem() == "broker: no answer from h:1 (none within 5 s) for 7 s"


def test_the_catalog_states_the_probes_timing() -> None:
    text = CATALOG["deskpulse_broker_up"].help
    assert f"every {PROBE_INTERVAL_S:g} s, {PROBE_TIMEOUT_S:g} s to answer" in text
    assert PROBE_TIMEOUT_S < PROBE_INTERVAL_S  # else Faust's timer overlaps itself


# -- the ping, against a broker of the test's own ---------------------------------------------


def connections_to(port: int) -> int:
    """Established TCP connections to ``port`` on this host (the kernel's tables)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                remote, state = fields[2], fields[3]
                count += state == "01" and int(remote.rsplit(":", 1)[1], 16) == port
    return count


def test_ping_uses_the_producers_connection_and_names_a_silent_broker(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port(HOST)
    address = f"{HOST}:{port}"
    broker = own_broker(tmp_path, "broker", port)
    settings = settings.model_copy(update={"kafka_bootstrap": address})

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        publisher = KafkaPublisher(settings)
        await publisher.start()
        try:
            await publisher.ping(5)
            kept = connections_to(port)
            for _ in range(20):
                await publisher.ping(5)
            assert connections_to(port) == kept, "a ping opened a connection of its own"

            broker.pause()
            began = loop.time()
            with pytest.raises(BrokerUnavailable) as frozen:
                await publisher.ping(1.0)
            frozen_s = loop.time() - began
            assert str(frozen.value) == f"no answer from {address} (none within 1 s)"
            broker.resume()
            await publisher.ping(5)  # the same connection answers again
            assert connections_to(port) == kept

            broker.kill()
            began = loop.time()
            with pytest.raises(BrokerUnavailable) as killed:
                await publisher.ping(5)
            killed_s = loop.time() - began
            assert str(killed.value).startswith(f"no answer from {address} ("), killed.value
            return {"frozen_s": frozen_s, "killed_s": killed_s, "killed": str(killed.value)}
        finally:
            await publisher.stop(timeout_s=1)

    try:
        seen = asyncio.run(scenario())
    finally:
        broker.stop()
    assert 0.9 <= seen["frozen_s"] < 3, seen  # waited out its timeout, not the client's 40 s
    assert seen["killed_s"] < 3, seen  # a refused connection is told at once
    print(f"ping: {seen}")


# -- a running worker ------------------------------------------------------------------------


def readiness(worker: WorkerProcess) -> tuple[int | None, list[str]]:
    """``/readyz``'s status and its problems (none when it answered 200 or nothing)."""
    response = worker.get("/readyz", timeout_s=5)
    if response is None:
        return None, []
    document: dict[str, Any] = json.loads(response.text)
    return response.status, list(document.get("problems", []))


def broker_problems(worker: WorkerProcess) -> list[str]:
    return [p for p in readiness(worker)[1] if p.startswith("broker:")]


def broker_up(worker: WorkerProcess) -> float | None:
    values = [
        value for _, value in samples(scrape(worker.settings.web_port), "deskpulse_broker_up")
    ]
    return values[0] if values else None


def lag_series(worker: WorkerProcess) -> dict[tuple[str, str], float]:
    text = scrape(worker.settings.web_port)
    return {
        (labels["topic"], labels["partition"]): value
        for labels, value in samples(text, "deskpulse_consumer_lag_messages")
    }


def own_broker(tmp_path: Path, name: str, port: int) -> ManagedProcess:
    return start_broker(HOST, port, tmp_path / name)


def worker_settings(settings: Settings, port: int, **update: Any) -> Settings:
    # the lag is measured with the breach check: every second, so it shows before the outage
    return fast(settings, kafka_bootstrap=f"{HOST}:{port}", breach_check_interval=1, **update)


def send_ticket(settings: Settings, ticket_id: str) -> None:
    created = event("ticket.created", time.time() - 30, ticket_id=ticket_id)
    asyncio.run(produce(settings, settings.topic_tickets, [(ticket_id.encode(), created)]))


def wait_silence_reported(worker: WorkerProcess, address: str, since: float) -> float:
    """Wait until ``/readyz`` names the silent broker and the gauge is 0; seconds taken."""

    def reported() -> bool:
        assert worker.running, worker.describe()
        problems = broker_problems(worker)
        return any(address in p for p in problems) and broker_up(worker) == 0.0

    wait_until(
        reported,
        DETECTION_BOUND_S,
        0.25,
        message=lambda: (
            f"readyz {readiness(worker)}, broker_up {broker_up(worker)}: " + worker.describe()
        ),
    )
    return time.monotonic() - since


def test_a_frozen_broker_makes_the_worker_unready_until_it_answers_again(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    port = free_port(HOST)
    address = f"{HOST}:{port}"
    broker = own_broker(tmp_path, "broker", port)  # frozen below: not the session's
    try:
        settings = worker_settings(settings, port)  # the engine in a child process (auto)
        create_topics(settings)
        worker = start_worker(settings, tmp_path / "worker", timeout_s=90)
        send_ticket(settings, "F1")
        wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)
        wait_until(lambda: lag_series(worker), 30, message=worker.describe)
        assert broker_up(worker) == 1.0

        broker.pause()  # SIGSTOP: its sockets stay open, nothing answers
        frozen = time.monotonic()
        detected_s = wait_silence_reported(worker, address, frozen)
        status, problems = readiness(worker)
        assert status == 503, problems
        (problem,) = [p for p in problems if p.startswith("broker:")]
        assert f"no answer from {address}" in problem, problem
        # no frozen lag that looks healthy: unknown while the broker is silent
        wait_until(lambda: not lag_series(worker), 15, message=lambda: str(lag_series(worker)))
        # and it stays so, probe after probe (a late answer to a given-up ask changes nothing)
        until = time.monotonic() + PROBE_INTERVAL_S * 1.5
        while time.monotonic() < until:
            assert broker_problems(worker) and broker_up(worker) == 0.0, worker.describe()
            time.sleep(0.5)
        assert worker.get("/healthz") is not None
        assert getattr(worker.get("/healthz"), "status", None) == 200

        broker.resume()
        resumed = time.monotonic()
        wait_until(lambda: broker_up(worker) == 1.0, DETECTION_BOUND_S, message=worker.describe)
        wait_until(lambda: readiness(worker)[0] == 200, 60, message=worker.describe)
        recovered_s = time.monotonic() - resumed
        assert not broker_problems(worker)
        send_ticket(settings, "F2")  # applied after the outage
        wait_until(lambda: processed_total(settings.web_port) >= 2, 60, message=worker.describe)
        wait_until(lambda: lag_series(worker), 30, message=worker.describe)
        print(
            f"broker frozen: reported {detected_s:.1f}s after SIGSTOP ({problem!r}); "
            f"ready again {recovered_s:.1f}s after SIGCONT"
        )
        assert worker.stop() == 0, worker.describe()
    finally:
        broker.stop()


def test_a_killed_broker_is_reported_and_its_return_seen(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    port = free_port(HOST)
    address = f"{HOST}:{port}"
    broker = own_broker(tmp_path, "broker1", port)
    try:
        settings = worker_settings(settings, port, engine_process=False)
        create_topics(settings)
        worker = start_worker(settings, tmp_path / "worker", timeout_s=90)
        send_ticket(settings, "K1")
        wait_until(lambda: processed_total(settings.web_port) >= 1, 30, message=worker.describe)

        broker.kill()  # connections reset, new ones refused
        killed = time.monotonic()
        detected_s = wait_silence_reported(worker, address, killed)
        assert readiness(worker)[0] == 503

        # The embedded broker keeps its log in memory: the one started again here has
        # no topics, so the worker's state check may refuse it ("built from other
        # topics", tests/system/test_hardening_state.py). What is checked here is that the
        # broker's own report clears.
        broker = own_broker(tmp_path, "broker2", port)
        restarted = time.monotonic()
        wait_until(lambda: broker_up(worker) == 1.0, DETECTION_BOUND_S, message=worker.describe)
        wait_until(lambda: not broker_problems(worker), 15, message=worker.describe)
        print(
            f"broker killed: reported {detected_s:.1f}s after SIGKILL; broker_up 1 "
            f"{time.monotonic() - restarted:.1f}s after it listened again; "
            f"readyz then {readiness(worker)}"
        )
        assert worker.running, worker.describe()
        worker.stop(timeout_s=15)
    finally:
        broker.stop()
