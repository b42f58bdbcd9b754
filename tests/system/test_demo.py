"""``deskpulse demo`` end to end: it brings its own stack, shows KPIs, and Ctrl-C leaves
no process and no port behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deskpulse.streams.devtools.embedded import free_port, port_open
from tests.conftest import HOST
from tests.support import samples, scrape, wait_until


def process_table() -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, process group, session, state) of every process, from ``/proc``."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                text = stat.read().decode("utf-8", "replace")
        except OSError:
            continue  # gone meanwhile
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]), fields[0])
    return table


def descendants(root: int) -> set[int]:
    table = process_table()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, *_) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive_in_groups(groups: set[int]) -> set[int]:
    """Live (not zombie) processes whose process group or session is one of ``groups``."""
    return {
        pid
        for pid, (_, pgid, sid, state) in process_table().items()
        if (pgid in groups or sid in groups) and state != "Z"
    }


def distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port(HOST))
    return sorted(ports)


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[int]]]:
    broker_port, redis_port, web_port = distinct_free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKPULSE_")}
    env |= {
        "DESKPULSE_KAFKA_BOOTSTRAP": f"{HOST}:{broker_port}",
        "DESKPULSE_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        "DESKPULSE_WEB_PORT": str(web_port),
        "DESKPULSE_DEMO_DIR": str(tmp_path / "demo"),
        "DESKPULSE_REDIS_PREFIX": f"demo{uuid.uuid4().hex[:8]}",
        # quick group join and refresh: the machine is shared
        "DESKPULSE_KAFKA_SESSION_TIMEOUT": "4",
        "DESKPULSE_BATCH_WITHIN": "0.1",
        "DESKPULSE_METRICS_REFRESH_INTERVAL": "1",
    }
    yield env, [broker_port, redis_port, web_port]


def test_demo_shows_kpis_and_ctrl_c_stops_everything(
    tmp_path: Path, demo_env: tuple[dict[str, str], list[int]]
) -> None:
    env, ports = demo_env
    broker_port, redis_port, web_port = ports
    assert not any(port_open(HOST, port) for port in ports)
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        # a session of its own, like a shell job: the demo leads its process group
        demo = subprocess.Popen(
            [sys.executable, "-m", "deskpulse.streams.cli", "demo", "--rate", "50"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children: set[int] = set()

    def describe() -> str:
        state = "running" if demo.poll() is None else f"exited {demo.returncode}"
        text = log_path.read_text("utf-8", "replace")
        return f"demo {state}; log:\n{text[-4000:]}"

    def kpis_exported() -> bool:
        assert demo.poll() is None, describe()
        children.update(descendants(demo.pid))
        if not port_open(HOST, web_port):
            return False
        text = scrape(web_port)
        processed = sum(v for _, v in samples(text, "deskpulse_events_processed_total"))
        windowed = [
            v
            for labels, v in samples(text, "deskpulse_tickets_created")
            + samples(text, "deskpulse_chats_requested")
            if labels.get("window") == "5m"
        ]
        return processed > 0 and sum(windowed) > 0

    try:
        wait_until(kpis_exported, 60, 0.5, message=describe)
        children.update(descendants(demo.pid))
        # the embedded broker, redis-server and the worker, at least
        assert len(children) >= 3, (children, describe())
        assert port_open(HOST, broker_port)
        assert port_open(HOST, redis_port)

        os.kill(demo.pid, signal.SIGINT)  # the process only, not its group
        try:
            # the demo bounds its own shutdown: 20 s for the worker, 10 s per server
            status = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit within 60 s of SIGINT: {describe()}")
        assert status == 0, describe()
        output = log_path.read_text("utf-8", "replace")
        assert "deskpulse demo: stopped" in output
        # its producer closed before the loop did (no task left pending at exit)
        assert "Task was destroyed but it is pending" not in output, describe()
        for port in ports:
            assert not port_open(HOST, port), f"port {port} still listening: {describe()}"
        groups = {demo.pid, *children}
        wait_until(
            lambda: not alive_in_groups(groups),
            5,
            message=lambda: f"still alive: {sorted(alive_in_groups(groups))}",
        )
    finally:
        # whatever the outcome, nothing this test started outlives it
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in alive_in_groups({demo.pid, *children}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
