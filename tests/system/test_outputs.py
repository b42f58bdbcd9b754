"""What a worker process publishes that needs the process: ``sla.breached`` comes exactly
once per breaching ticket across ``kill -9`` and restarts, and never for a ticket answered
in time, also when a worker starts on a backlog; the KPI snapshots of a worker whose engine
is a child process equal ``deskpulse kpis --json``. The rest of the outputs, on a worker run
in the test process, is in tests/integration/test_outputs.py (whose helpers these use).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.simulate import SimConfig, generate
from tests.conftest import RedisServer, create_topics, new_settings
from tests.integration.test_outputs import (
    Record,
    check_snapshots_match_kpis,
    event,
    fast,
    handled,
    parse_time,
    read_topic,
    send,
)
from tests.support import (
    BREACH_FIELDS,
    StartWorker,
    WorkerProcess,
    samples,
    scrape,
    wait_for_progress,
    wait_until,
)

# -- KPI snapshots ----------------------------------------------------------------------------


def test_kpi_snapshots_match_kpis_for_every_window_and_group_with_an_engine_process(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    check_snapshots_match_kpis(
        settings.model_copy(update={"engine_process": True}),
        tmp_path,
        lambda tuned: start_worker(tuned, tmp_path / "worker", timeout_s=90),
    )


# -- SLA breaches -----------------------------------------------------------------------------


class Desk:
    """Builds ticket traffic and remembers which tickets must breach."""

    def __init__(self, target_s: int) -> None:
        self.target_s = target_s
        self.created: dict[str, float] = {}
        self.dims: dict[str, tuple[str, str, str]] = {}
        self.breaching: set[str] = set()

    def ticket(
        self,
        ticket_id: str,
        created_s: float,
        *,
        breaches: bool,
        channel: str = "email",
        queue: str = "billing",
        priority: str = "urgent",
    ) -> Record:
        self.created[ticket_id] = created_s
        self.dims[ticket_id] = (channel, queue, priority)
        if breaches:
            self.breaching.add(ticket_id)
        return event(
            "ticket.created",
            created_s,
            ticket_id=ticket_id,
            channel=channel,
            queue=queue,
            priority=priority,
        )


def reply(ticket_id: str, t_s: float, role: str = "agent", **fields: Any) -> Record:
    return event("ticket.replied", t_s, ticket_id=ticket_id, author_role=role, **fields)


def status(ticket_id: str, t_s: float, value: str) -> Record:
    return event("ticket.status_changed", t_s, ticket_id=ticket_id, status=value)


def breaches_of(
    settings: Settings, expected: int, settle_s: float = 2
) -> list[tuple[str, dict[str, Any]]]:
    found = read_topic(settings, settings.topic_alerts, expected, timeout_s=60, settle_s=settle_s)
    other = [p for _, p in found if p.get("type") != "sla.breached"]
    assert not other, other
    return found


def check_breaches(settings: Settings, desk: Desk, worker: WorkerProcess) -> None:
    """Exactly one ``sla.breached`` per breaching ticket, right fields, none for the others."""
    # wait for all of them, then a few more checks: nothing is published twice
    found = breaches_of(settings, len(desk.breaching))
    time.sleep(3 * settings.breach_check_interval)
    found = breaches_of(settings, len(desk.breaching))
    per_ticket = Counter(p["ticket_id"] for _, p in found)
    repeated = {t: n for t, n in per_ticket.items() if n > 1}
    assert not repeated, f"published more than once: {repeated}\n{worker.describe()}"
    assert set(per_ticket) == desk.breaching, (
        f"missing: {sorted(desk.breaching - set(per_ticket))}, "
        f"not breaching: {sorted(set(per_ticket) - desk.breaching)}\n{worker.describe()}"
    )
    for key, payload in found:
        ticket_id = payload["ticket_id"]
        assert key == ticket_id
        assert set(payload) == BREACH_FIELDS, sorted(payload)
        assert payload["schema_version"] == 1
        assert payload["metric"] == "first_response"
        assert (payload["channel"], payload["queue"], payload["priority"]) == desk.dims[ticket_id]
        assert payload["target_seconds"] == desk.target_s
        created = parse_time(payload["created_at"])
        assert created == datetime.fromtimestamp(desk.created[ticket_id], UTC), payload
        # the deadline, not the moment it was noticed
        breached = parse_time(payload["breached_at"])
        assert breached - created == timedelta(seconds=desk.target_s), payload
        assert payload["event_id"]
    assert len({p["event_id"] for _, p in found}) == len(found)


def sla_counter(settings: Settings) -> float:
    return sum(v for _, v in samples(scrape(settings.web_port), "deskpulse_sla_breaches_total"))


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_sla_breaches_once_per_ticket_across_kill_and_restarts(
    settings: Settings, tmp_path: Path, engine_process: bool, start_worker: StartWorker
) -> None:
    settings = fast(settings, alert_rules=(), engine_process=engine_process)
    create_topics(settings)
    target = settings.first_response_targets["urgent"]
    desk = Desk(target)
    now = math.floor(time.time())  # whole seconds: the millisecond edges below stay exact
    base = now - 9000  # two and a half hours ago: the urgent deadlines are past

    round_a = [
        # never answered: a customer nudge and a status change are no agent reply
        desk.ticket("A-never-1", base, breaches=True),
        reply("A-never-1", base + 600, "customer"),
        status("A-never-1", base + 700, "open"),
        desk.ticket("A-never-2", base + 60, breaches=True, channel="web", queue="general"),
        # answered after the deadline
        desk.ticket("A-late-1", base + 120, breaches=True),
        reply("A-late-1", base + 120 + 5400),
        desk.ticket("A-late-2", base + 180, breaches=True),
        reply("A-late-2", base + 180 + 600, public=False),  # a private note does not count
        reply("A-late-2", base + 180 + 4200),
        desk.ticket("A-late-edge", base + 240, breaches=True),
        reply("A-late-edge", base + 240 + target + 0.001),  # one millisecond late
        # only customers and the system answered
        desk.ticket("A-customer", base + 300, breaches=True, queue="technical"),
        reply("A-customer", base + 300 + 60, "customer"),
        desk.ticket("A-system", base + 360, breaches=True),
        reply("A-system", base + 360 + 5, "system"),
        # answered in time
        desk.ticket("A-intime-1", base + 420, breaches=False),
        reply("A-intime-1", base + 420 + 1200),
        desk.ticket("A-intime-edge", base + 480, breaches=False),
        reply("A-intime-edge", base + 480 + target),  # exactly at the deadline: in time
        # an in-time reply delivered before its ticket (held until the ticket arrives)
        reply("A-ooo", base + 540 + 900),
        desk.ticket("A-ooo", base + 540, breaches=False),
        # deadlines still ahead: high (4 h) and low (24 h) priority, unanswered
        desk.ticket("A-high", now - 7200, breaches=False, priority="high"),
        desk.ticket("A-low", now - 10800, breaches=False, priority="low", channel="phone"),
    ]
    workdir = tmp_path / "worker"
    worker = start_worker(settings, workdir, name="worker-1", timeout_s=90)
    send(settings, round_a)
    check_breaches(settings, desk, worker)
    wait_until(lambda: sla_counter(settings) == len(desk.breaching), 30, message=worker.describe)
    assert worker.kill() < 0  # a crash: no shutdown, no final commit

    # Round B on a restarted worker: more events for old tickets, and new breaching tickets.
    round_b = [
        reply("A-never-1", now - 1800),  # a late answer at last
        reply("A-late-1", now - 1700, "customer"),
        status("A-intime-1", now - 1600, "solved"),
        reply("A-customer", now - 1500),
        reply("A-high", now - 1400, "customer"),
        desk.ticket("B-never-1", now - 8000, breaches=True, channel="api", queue="sales"),
        desk.ticket("B-late-1", now - 7900, breaches=True),
        reply("B-late-1", now - 7900 + 4000),
        desk.ticket("B-intime-1", now - 7800, breaches=False),
        reply("B-intime-1", now - 7800 + 60),
    ]
    worker = start_worker(settings, workdir, name="worker-2", timeout_s=90)
    send(settings, round_b)
    check_breaches(settings, desk, worker)
    assert worker.stop() == 0, worker.describe()  # a clean stop this time

    # Round C on a third worker: still once per ticket, the new one breaches once.
    round_c = [
        reply("B-never-1", now - 900),
        status("B-late-1", now - 800, "solved"),
        reply("A-never-2", now - 700),
        desk.ticket("C-never-1", now - 4000, breaches=True, priority="urgent", queue="general"),
        desk.ticket("C-intime-1", now - 3900, breaches=False),
        reply("C-intime-1", now - 3900 + 3000),
    ]
    worker = start_worker(settings, workdir, name="worker-3", timeout_s=90)
    send(settings, round_c)
    check_breaches(settings, desk, worker)
    # the cumulative counter counts each breach once, whichever worker published it
    wait_until(lambda: sla_counter(settings) == len(desk.breaching), 30, message=worker.describe)
    by_group = {
        (found["channel"], found["queue"], found["priority"]): value
        for found, value in samples(scrape(settings.web_port), "deskpulse_sla_breaches_total")
        if value
    }
    expected = Counter(desk.dims[t] for t in desk.breaching)
    assert by_group == {k: float(v) for k, v in expected.items()}
    assert worker.stop() == 0, worker.describe()
    assert len(desk.breaching) == 10


def breaching_tickets(
    values: list[bytes], at_s: float, targets: dict[str, int]
) -> dict[str, tuple[float, tuple[str, str, str]]]:
    """Tickets of ``values`` that have breached by ``at_s``: id -> (deadline, dimensions).

    Straight from docs/kpis.md and the README's Output topics: the opener with the
    smallest ``(occurred_at, event_id)`` gives time and dimensions; a ticket breaches when
    its deadline has passed and no public agent reply came at or before it.
    """
    from deskpulse.models.errors import RejectedEvent
    from deskpulse.models.events import TicketCreated, TicketReplied, decode

    seen: set[str] = set()
    opened: dict[str, tuple[datetime, str, tuple[str, str, str]]] = {}
    first_reply: dict[str, datetime] = {}
    for raw in values:
        try:
            item = decode(raw)
        except RejectedEvent:
            continue
        if item.event_id in seen:
            continue
        seen.add(item.event_id)
        if isinstance(item, TicketCreated):
            current = opened.get(item.ticket_id)
            if current is None or (item.occurred_at, item.event_id) < current[:2]:
                dims = (item.channel, item.queue, item.priority)
                opened[item.ticket_id] = (item.occurred_at, item.event_id, dims)
        elif isinstance(item, TicketReplied) and item.author_role == "agent" and item.public:
            earlier = first_reply.get(item.ticket_id)
            if earlier is None or item.occurred_at < earlier:
                first_reply[item.ticket_id] = item.occurred_at
    out = {}
    for ticket_id, (created, _, dims) in opened.items():
        deadline = created + timedelta(seconds=targets[dims[2]])
        answered = first_reply.get(ticket_id)
        if deadline.timestamp() <= at_s and (answered is None or answered > deadline):
            out[ticket_id] = (deadline.timestamp(), dims)
    return out


@dataclass(frozen=True)
class Backfill:
    """Breaches published after a worker started on a three-hour backlog."""

    settings: Settings
    found: list[tuple[str, dict[str, Any]]]
    must: dict[str, tuple[float, tuple[str, str, str]]]  # breached before the worker started
    allowed: dict[str, tuple[float, tuple[str, str, str]]]  # breached by the last read
    log: str


@pytest.fixture(scope="module")
def backfill(
    broker: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Backfill:
    """Three hours of traffic waiting in the topics when the worker starts.

    The tickets topic holds most of the backlog, so the worker reads chats and surveys to
    their end long before the replies of the tickets; a ticket's in-time reply sits far
    behind the ticket in its partition.
    """
    settings = fast(new_settings(broker, redis_server.url), alert_rules=())
    create_topics(settings)
    now = time.time()
    simulated = list(
        generate(
            SimConfig(
                seed=17,
                start_s=now - 3 * 3600 - 600,
                duration_s=3 * 3600,
                rate=3.0,
                channels={"email": 0.5, "web": 0.3, "chat": 0.2},
                priorities={"urgent": 0.6, "high": 0.4},
                duplicate_ratio=0.02,
                out_of_order=0.05,
                unanswered_ratio=0.1,
            )
        )
    )
    send(settings, [(r.topic_kind, r.key, r.value) for r in simulated])
    values = [r.value for r in simulated]
    targets = dict(settings.first_response_targets)
    must = breaching_tickets(values, time.time(), targets)
    assert len(must) >= 20, "the traffic has breaches to find"
    with WorkerProcess(settings, tmp_path_factory.mktemp("backfill")) as worker:
        worker.wait_ready(90)
        wait_for_progress(
            lambda: handled(settings), lambda n: n >= len(simulated), 90, message=worker.describe
        )
        found = breaches_of(settings, len(must), settle_s=3 * settings.breach_check_interval)
        # deadlines that passed while the test ran may or may not have been checked yet
        allowed = breaching_tickets(values, time.time(), targets)
        assert worker.stop() == 0, worker.describe()
        return Backfill(settings, found, must, allowed, worker.log_tail(30))


@pytest.mark.timeout(900)  # the backfill's fixture: as long as the worker progresses
def test_sla_breaches_of_a_backfill_are_all_published_once(backfill: Backfill) -> None:
    per_ticket = Counter(p["ticket_id"] for _, p in backfill.found)
    repeated = {t: n for t, n in per_ticket.items() if n > 1}
    assert not repeated, f"published more than once: {repeated}"
    missing = sorted(set(backfill.must) - set(per_ticket))
    assert not missing, f"breaches not published: {missing}\n{backfill.log}"
    for key, payload in backfill.found:
        assert key == payload["ticket_id"]
        assert set(payload) == BREACH_FIELDS, sorted(payload)
        if payload["ticket_id"] in backfill.allowed:
            deadline, dims = backfill.allowed[payload["ticket_id"]]
            assert (payload["channel"], payload["queue"], payload["priority"]) == dims
            assert parse_time(payload["breached_at"]).timestamp() == pytest.approx(deadline)


@pytest.mark.timeout(900)  # the backfill's fixture: as long as the worker progresses
def test_no_sla_breach_for_a_ticket_answered_in_time_during_a_backfill(
    backfill: Backfill,
) -> None:
    published = {p["ticket_id"] for _, p in backfill.found}
    false = sorted(published - set(backfill.allowed))
    assert not false, f"{len(false)} breaches of tickets answered in time: {false[:20]}"
