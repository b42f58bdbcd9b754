"""Acceptance of SLA policies on business calendars: five days of simulated support traffic
(two office schedules and a night desk, DST changes in New York, holidays, pauses, reopens,
closes, hand-made edge cases) delivered shuffled with duplicates to a real worker, then
``deskpulse kpis --json`` compared on every field with the independent brute-force oracle
of tests/sla_oracle.py for several instants, widths and groupings, and the alerts topic
compared with the oracle's exact set of ``sla.breached``, each once.

Breach detection runs on event time, so a worker reading shuffled records would claim
breaches that records still on their way refute (and retract them later): the data set is
taken in by a worker whose breach check never comes, then a second worker on the same
state claims every deadline passed by the wall clock (all of them: the data set lies weeks
in the past).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from deskpulse.models.events import decode
from deskpulse.models.settings import Settings
from deskpulse.models.sla import Policy, Schedule
from deskpulse.streams.devtools import policies as demo_policies
from deskpulse.streams.devtools.simulate import Record, SimConfig, generate
from tests.e2e_support import Dataset, check_shape, kpis_cli, kpis_http, wait_for_state
from tests.lifecycle_oracle import evaluate as evaluate_lifecycles
from tests.lifecycle_oracle import lifecycle_document, merge_documents
from tests.oracle import compare
from tests.presence_oracle import with_agents
from tests.sla_oracle import (
    AtRisk,
    Breach,
    OracleCalendar,
    SlaRules,
    TicketSla,
    evaluate_tickets,
    expected_breaches,
    expected_warnings,
    kpi_document,
    rfc3339_ms,
)
from tests.support import BREACH_FIELDS, StartWorker, consume_all, produce_records, wait_for_claims

pytestmark = pytest.mark.slow

H = 3600
#: Thursday 2026-10-29 00:00Z: five days over New York's fall back (Sunday 2026-11-01)
START_S = 1_793_232_000
DAYS = 5
END_S = START_S + DAYS * 86_400

_DEMO_SCHEDULES = json.loads(demo_policies.SCHEDULES)
SCHEDULES: dict[str, Any] = {
    "emea": _DEMO_SCHEDULES["emea"],
    "americas": _DEMO_SCHEDULES["americas"],
    # a desk in New York open around the clock but for 03:00-06:00 (so every midnight is
    # crossed by one stretch), closed on Halloween, with the repeated hour of the fall back
    "night-desk": {
        "timezone": "America/New_York",
        "hours": {
            day: ["00:00-03:00", "06:00-24:00"]
            for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        },
        "holidays": ["2026-10-31"],
    },
}
_DEMO_POLICIES = {policy["name"]: policy for policy in json.loads(demo_policies.SLA_POLICIES)}
POLICIES: list[dict[str, Any]] = [
    _DEMO_POLICIES["billing-priority"],
    _DEMO_POLICIES["emea"],
    _DEMO_POLICIES["americas"],
    {
        # the phone and social lines of the general queue: no first-response target for
        # low (v1's rule decides within_target), the resolution clock waits while new
        "name": "night-desk",
        "match": {"queue": ["general"], "channel": ["phone", "social"]},
        "schedule": "night-desk",
        "targets": {
            "first_response": {"urgent": 1800, "high": H, "normal": 2 * H},
            "next_response": {"high": 1800, "normal": H, "low": 2 * H},
            "resolution": {"urgent": 4 * H, "high": 8 * H, "normal": 16 * H, "low": 24 * H},
        },
        "pause": ["new", "pending"],
    },
    {
        # the rest of general in calendar time; holds stop the resolution clock
        "name": "general",
        "match": {"queue": ["general"]},
        "targets": {
            "first_response": {"urgent": H, "high": 4 * H, "normal": 8 * H, "low": 24 * H},
            "next_response": {"urgent": H, "high": 2 * H},
            "resolution": {"normal": 48 * H, "low": 96 * H},
        },
        "pause": ["hold"],
    },
    # no catch-all: the vip queue and tickets without a queue have no SLA
]

#: ``--at`` instants (whole seconds): Friday afternoon, just after New York's clocks went
#: back (on a bucket boundary), Monday afternoon, the end of the data, and days after it
AT_S = (
    START_S + 86_400 + 15 * H + 451,
    START_S + 3 * 86_400 + 7 * H,
    START_S + 4 * 86_400 + 15 * H - 1,
    END_S,
    END_S + 5 * 86_400,
)
WIDTHS = {"5m": 300, "1h": H, "24h": 86_400, "10d": 10 * 86_400}
BY_OPTIONS: tuple[tuple[str, ...], ...] = ((), ("channel",), ("queue", "priority"))


def stamp(t_ms: int) -> str:
    return rfc3339_ms(t_ms)


class EdgeTickets:
    """Hand-made tickets on the rules' corners, as records (times in ms)."""

    def __init__(self, calendars: dict[str, OracleCalendar]) -> None:
        self.calendars = calendars
        self.records: list[Record] = []
        self._ids = iter(range(1_000_000))

    def add(
        self, event_type: str, ticket: str, t_ms: int, event_id: str | None = None, **fields: Any
    ) -> None:
        body = {
            "event_id": event_id or f"edge-e{next(self._ids)}",
            "type": event_type,
            "occurred_at": stamp(t_ms),
            "ticket_id": ticket,
            **fields,
        }
        self.records.append(Record("tickets", ticket.encode(), orjson.dumps(body), t_ms / 1000))

    def created(
        self,
        ticket: str,
        t_ms: int,
        queue: str,
        priority: str,
        channel: str = "email",
        **extra: Any,
    ) -> None:
        self.add(
            "ticket.created", ticket, t_ms, channel=channel, queue=queue, priority=priority, **extra
        )

    def reply(self, ticket: str, t_ms: int, role: str = "agent", **extra: Any) -> None:
        self.add("ticket.replied", ticket, t_ms, author_role=role, **extra)

    def status(self, ticket: str, t_ms: int, value: str, **extra: Any) -> None:
        self.add("ticket.status_changed", ticket, t_ms, status=value, **extra)

    def deadline(self, schedule: str | None, start_ms: int, target_s: int) -> int:
        if schedule is None:
            return start_ms + target_s * 1000
        return self.calendars[schedule].deadline_ms(start_ms, target_s * 1000)


def edge_tickets(calendars: dict[str, OracleCalendar]) -> list[Record]:
    """Tickets that put events exactly on deadlines, before creations, after closes, at one
    instant, and on the DST night (deadlines from the oracle's calendar)."""
    edge = EdgeTickets(calendars)
    friday = (START_S + 86_400 + 14 * H + 30 * 60) * 1000  # Fri 2026-10-30 15:30 CET
    # billing-priority, high: first response 2 business hours on the Berlin office, which
    # closes at 16:00 on Fridays: 30 min on Friday, 90 min on Monday
    due = edge.deadline("emea", friday, 2 * H)
    for name, reply_ms in (("edge-fr-on-time", due), ("edge-fr-late", due + 1)):
        edge.created(name, friday, "billing", "high")
        edge.reply(name, friday + 60_000, "customer")
        edge.reply(name, reply_ms)
    # next response 4 business hours, then a solve exactly at its deadline: cancelled; one a
    # millisecond later: breached, never fulfilled
    for name, shift in (("edge-nr-solved-on-time", 0), ("edge-nr-solved-late", 1)):
        edge.created(name, friday - 3 * H * 1000, "billing", "high")
        edge.reply(name, friday - 2 * H * 1000)
        edge.reply(name, friday - H * 1000, "customer")
        edge.status(name, edge.deadline("emea", friday - H * 1000, 4 * H) + shift, "solved")
    # statuses dated before the creation act at it; the technical queue pauses on pending
    monday = (START_S + 4 * 86_400 + 14 * H) * 1000  # Mon 2026-11-02 09:00 EST
    edge.status("edge-pending-first", monday - 300_000, "pending")
    edge.created("edge-pending-first", monday, "technical", "urgent")
    edge.reply("edge-pending-first", monday - 120_000)  # a reply before the creation: 0 s
    edge.status("edge-pending-first", monday + 2 * H * 1000, "open")
    edge.status("edge-pending-first", monday + 2 * H * 1000 + 1, "open")  # no change
    # after the close nothing moves: a late solve, a reopen, a customer's reply
    edge.created("edge-closed", monday, "general", "urgent", channel="web")
    edge.reply("edge-closed", monday + 600_000)
    edge.reply("edge-closed", monday + 900_000, "customer")
    edge.status("edge-closed", monday + 1_200_000, "closed")
    edge.status("edge-closed", monday + 1_300_000, "solved")
    edge.status("edge-closed", monday + 1_400_000, "open")
    edge.reply("edge-closed", monday + 1_500_000, "customer")
    edge.reply("edge-closed", monday + 1_600_000)
    # a second, later ticket.created in another queue changes nothing
    edge.created("edge-twice", monday + 60_000, "general", "urgent", channel="web")
    edge.created("edge-twice", monday, "sales", "normal")
    edge.reply("edge-twice", monday + 30 * 60_000, "customer", public=False)
    edge.reply("edge-twice", monday + 40 * 60_000, "system")
    # a customer reply and a solve at one instant, both orders of their event ids
    for name, solve_first in (("edge-tie-solve-first", True), ("edge-tie-reply-first", False)):
        edge.created(name, monday, "general", "urgent", channel="web")
        edge.reply(name, monday + 600_000)
        tie = monday + 1_800_000
        edge.status(name, tie, "solved", event_id=f"{name}-{'a' if solve_first else 'b'}")
        edge.reply(name, tie, "customer", event_id=f"{name}-{'b' if solve_first else 'a'}")
        edge.status(name, tie + 600_000, "open")
        edge.reply(name, tie + 1_200_000, "customer")
    # on the night desk over New York's fall back (Sunday 2026-11-01 01:00-02:00 twice):
    # created on Halloween (closed) at 23:00 EDT, answered at the first 01:30
    halloween = (START_S + 3 * 86_400 + 3 * H) * 1000  # Sun 03:00Z = Sat 23:00 EDT
    edge.created("edge-dst-first", halloween, "general", "high", channel="phone")
    edge.reply("edge-dst-first", halloween + int(2.5 * H * 1000))
    edge.reply("edge-dst-first", halloween + 3 * H * 1000, "customer")
    edge.reply("edge-dst-first", edge.deadline("night-desk", halloween + 3 * H * 1000, 1800))
    edge.status("edge-dst-first", halloween + 4 * H * 1000, "solved")
    # the resolution clock of the night desk waits while the ticket is new
    edge.created("edge-night-new", halloween, "general", "urgent", channel="social")
    edge.status("edge-night-new", halloween + 5 * H * 1000, "open")
    edge.reply("edge-night-new", halloween + 5 * H * 1000 + 1)
    # moved: created in general (urgent, calendar time), transferred to vip (no SLA) and
    # escalated before its first reply; its first response keeps general's terms, its next
    # responses (started in vip) have none; answered late, breached in vip's group
    edge.created("edge-moved", monday, "general", "normal", channel="web")
    edge.add("ticket.updated", "edge-moved", monday + 600_000, priority="urgent")
    edge.add("ticket.updated", "edge-moved", monday + 1_200_000, queue="vip")
    edge.reply("edge-moved", monday + 10 * H * 1000)
    edge.reply("edge-moved", monday + 11 * H * 1000, "customer")
    edge.reply("edge-moved", monday + 14 * H * 1000)
    # and one escalated in general between a customer's reply and the next: the running
    # next response keeps no target (normal has none), the one after has urgent's
    edge.created("edge-escalated", monday, "general", "normal", channel="web")
    edge.reply("edge-escalated", monday + 600_000)
    edge.reply("edge-escalated", monday + 1_200_000, "customer")
    edge.add("ticket.updated", "edge-escalated", monday + 1_500_000, priority="urgent")
    edge.reply("edge-escalated", monday + 1_800_000)
    edge.reply("edge-escalated", monday + 2_400_000, "customer")
    return edge.records


def build_records(seed: int = 23) -> tuple[SimConfig, list[Record]]:
    """The simulated stretch plus the edge tickets, shuffled, with ~5 % sent twice."""
    rules = SlaRules.from_json(SCHEDULES, POLICIES)
    config = SimConfig(
        seed=seed,
        start_s=START_S,
        duration_s=DAYS * 86_400,
        rate=0.03,
        channels={
            "email": 0.32,
            "web": 0.22,
            "phone": 0.14,
            "social": 0.08,
            "api": 0.08,
            "chat": 0.16,
        },
        queues={"billing": 0.25, "technical": 0.25, "sales": 0.12, "general": 0.28, "vip": 0.1},
        unanswered_ratio=0.06,
        survey_ratio=0.2,
        agent_hours={
            queue: SCHEDULES[name] for queue, name in demo_policies.AGENT_SCHEDULES.items()
        },
        moves=0.15,  # escalations and transfers: instances keep the terms of their start
    )
    records = list(generate(config)) + edge_tickets(dict(rules.calendars))
    rng = random.Random(seed)
    rng.shuffle(records)
    for record in rng.sample(records, len(records) // 20):
        records.insert(rng.randrange(len(records) + 1), record)
    return config, records


def dataset_of(config: SimConfig, records: list[Record]) -> Dataset:
    """What the state must show once every record is in (all valid, every opener sent)."""
    events = {event.event_id: event for event in (decode(record.value) for record in records)}
    return Dataset(
        config=config,
        records=records,
        valid=len(records),
        distinct=len(events),
        rejected=0,
        held=0,
        conversations=len({record.key for record in records}),
        types=Counter(event.type for event in events.values()),
    )


def _instant_ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, text
    return round(moment.timestamp() * 1000)


def alerts(
    settings: Settings, expected: int, timeout_s: float = 60
) -> list[tuple[str, dict[str, Any]]]:
    """Every record of the alerts topic as ``(key, payload)``, read until there are at least
    ``expected`` (or ``timeout_s`` passed), then 2 s more."""
    records = asyncio.run(
        consume_all(
            settings.kafka_bootstrap, settings.topic_alerts, expected, timeout_s, settle_s=2
        )
    )
    return [(r.key.decode(), orjson.loads(r.value)) for r in records]


AT_RISK_FIELDS = (BREACH_FIELDS - {"breached_at"}) | {"fraction", "remaining_seconds", "due_at"}


def _differences(got: dict[str, Any], wanted: dict[str, Any]) -> str:
    return ", ".join(f"{k} {got[k]!r} != {wanted[k]!r}" for k in got if got[k] != wanted[k])


def check_alerts(
    found: list[tuple[str, dict[str, Any]]],
    breaches: dict[tuple[str, str, int], Breach],
    warnings: dict[tuple[str, str, int, float], AtRisk],
) -> None:
    """Exactly the oracle's breaches and warnings, each once, with their fields, and no
    retraction."""
    kinds = Counter(payload.get("type") for _, payload in found)
    assert kinds == {"sla.breached": len(breaches), "sla.at_risk": len(warnings)}, kinds
    problems = []
    published: Counter[tuple[Any, ...]] = Counter()
    for key, payload in found:
        if payload["type"] == "sla.breached":
            name: tuple[Any, ...] = (payload["ticket_id"], payload["metric"], payload["instance"])
            want: Breach | AtRisk | None = breaches.get(name)
            fields = BREACH_FIELDS
        else:
            name = (
                payload["ticket_id"],
                payload["metric"],
                payload["instance"],
                payload["fraction"],
            )
            want = warnings.get(name)
            fields = AT_RISK_FIELDS
        published[name] += 1
        if want is None:
            problems.append(f"not due: {payload}")
            continue
        got = {
            "key": key,
            "fields": set(payload),
            "schema_version": payload["schema_version"],
            "policy": payload["policy"],
            "priority": payload["priority"],
            "channel": payload["channel"],
            "queue": payload["queue"],
            "target_seconds": payload["target_seconds"],
            "started_at": _instant_ms(payload["started_at"]),
            "created_at": _instant_ms(payload["created_at"]),
        }
        wanted = {
            "key": want.ticket_id,
            "fields": fields,
            "schema_version": 1,
            "policy": want.policy,
            "priority": want.priority,
            "channel": want.channel,
            "queue": want.queue,
            "target_seconds": want.target_seconds,
            "started_at": want.started_ms,
            "created_at": want.created_ms,
        }
        if isinstance(want, Breach):
            got["breached_at"] = _instant_ms(payload["breached_at"])
            wanted["breached_at"] = want.breached_ms
        else:
            got["due_at"] = _instant_ms(payload["due_at"])
            got["remaining_seconds"] = payload["remaining_seconds"]
            wanted["due_at"] = want.due_ms
            wanted["remaining_seconds"] = want.remaining_seconds
        if got != wanted:
            problems.append(f"{name}: {_differences(got, wanted)}")
    repeated = {name: n for name, n in published.items() if n > 1}
    missing = (breaches.keys() | warnings.keys()) - published.keys()
    assert not problems and not repeated and not missing, (
        f"{len(problems)} wrong: {problems[:10]}\n{len(repeated)} published more than once: "
        f"{list(repeated)[:10]}\n{len(missing)} missing: {sorted(missing)[:10]}"
    )
    event_ids = [payload["event_id"] for _, payload in found]
    assert all(event_ids) and len(set(event_ids)) == len(event_ids)


def coverage(
    tickets: dict[str, TicketSla], expected: dict[tuple[str, str, int], Breach]
) -> Counter[str]:
    """What the data set exercises, to make sure the comparison is not vacuous."""
    seen: Counter[str] = Counter()
    for ticket in tickets.values():
        seen[f"policy {ticket.policy}"] += 1
        seen["first responses"] += ticket.first_reply_ms is not None
        seen["first responses off hours"] += bool(
            ticket.first_business_ms is not None
            and ticket.first_calendar_ms is not None
            and ticket.first_business_ms < ticket.first_calendar_ms
        )
        seen["next responses"] += len(ticket.responses)
        seen["reopened"] += any(
            previous == "solved" and status in ("new", "open", "pending", "hold")
            for (_, previous), (_, status) in zip(
                ticket.statuses, ticket.statuses[1:], strict=False
            )
        )
        for instance in ticket.instances:
            seen[f"{instance.metric} {instance.outcome}"] += 1
    for _, metric, _ in expected:
        seen[f"alerts {metric}"] += 1
    return seen


@pytest.fixture
def records() -> tuple[SimConfig, list[Record]]:
    return build_records()


def test_kpis_and_breaches_equal_the_sla_oracle(
    settings: Settings,
    make_topics: Any,
    records: tuple[SimConfig, list[Record]],
    tmp_path: Path,
    start_worker: StartWorker,
) -> None:
    config, values = records
    dataset = dataset_of(config, values)
    settings = settings.model_copy(
        update={
            "schedules": {
                name: Schedule.model_validate(value) for name, value in SCHEDULES.items()
            },
            "sla_policies": tuple(Policy.model_validate(policy) for policy in POLICIES),
            # the shuffled days are never late, and a window may span all of them
            "retention": 14 * 86_400,
            "batch_within": 0.1,
            # no check while the shuffled records come in (see the module's docstring)
            "breach_check_interval": 3600,
        }
    )
    make_topics(settings)
    started = time.monotonic()
    loader = start_worker(settings, tmp_path / "loader", name="loader", timeout_s=90)
    asyncio.run(produce_records(settings, dataset.records))
    wait_for_state(settings, dataset, timeout_s=120, describe=loader.describe, claims=False)
    assert loader.stop() == 0, loader.describe()
    loaded = time.monotonic()

    checker_settings = settings.model_copy(update={"breach_check_interval": 1})
    checker = start_worker(checker_settings, tmp_path / "checker", name="checker", timeout_s=90)
    claimed_until_s = time.time()
    assert wait_for_claims(checker_settings, timeout_s=60), checker.describe()
    claimed = time.monotonic()

    rules = SlaRules.from_settings(settings)
    raw = dataset.values
    tickets = evaluate_tickets(raw, rules)
    expected = expected_breaches(tickets, claimed_until_s)
    deadlines = [i.deadline_ms for t in tickets.values() for i in t.instances if i.deadline_ms]
    # every deadline is long past: the claims do not depend on when the test runs
    assert max(deadlines) < (claimed_until_s - 86_400) * 1000
    seen = coverage(tickets, expected)
    print(f"\n{dataset.summary()}\ncoverage: {dict(sorted(seen.items()))}")
    for needed in (
        "first_response achieved",
        "first_response breached",
        "first_response cancelled",
        "next_response achieved",
        "next_response breached",
        "next_response cancelled",
        "resolution achieved",
        "resolution breached",
        "resolution running",
        "reopened",
        "first responses off hours",
        "alerts first_response",
        "alerts next_response",
        "alerts resolution",
        "policy None",
        "policy night-desk",
    ):
        assert seen[needed] > 0, needed

    # openers, chats and surveys for the oracle's chat and survey sections
    v1_values = [
        value
        for value in raw
        if b'"ticket.replied"' not in value and b'"ticket.status_changed"' not in value
    ]
    # the lifecycle sections (resolution, backlog, waiting chats) from their own oracle
    lifecycles = evaluate_lifecycles(raw, rules, retention_s=settings.retention)
    problems: list[str] = []
    totals: Counter[str] = Counter()
    cli_reads = 0
    for number, (width, at_s) in enumerate(itertools.product(WIDTHS, AT_S)):
        width_s = WIDTHS[width]
        for index, by in enumerate(BY_OPTIONS):
            where = f"--window {width} --at {rfc3339_ms(int(at_s * 1000))} --by {','.join(by)}"
            # every document from the worker's GET /kpis; one grouping in turn per window
            # and instant through the command line too, which must give the very same one
            actual = kpis_http(checker, width=width, at_s=at_s, by=by)
            if index == number % len(BY_OPTIONS):
                cli_reads += 1
                read = kpis_cli(settings, tmp_path, width=width, at_s=at_s, by=by)
                if read != actual:
                    problems.append(f"{where}: the command line says {read}, GET /kpis {actual}")
            oracle = merge_documents(
                kpi_document(
                    tickets,
                    v1_values,
                    at_s=at_s,
                    width_s=width_s,
                    by=by,
                    claimed_until_s=claimed_until_s,
                ),
                lifecycle_document(lifecycles, at_s=at_s, width_s=width_s, by=by),
            )
            # no agent events in this data set: every agent count 0, occupancy null
            oracle = with_agents(oracle, v1_values, at_s=at_s, width_s=width_s)
            if width_s in (300, 3600, 86_400):
                problems += [f"{where}: {line}" for line in check_shape(actual, by, width)]
            problems += [f"{where}: {line}" for line in compare(actual, oracle)]
            if not by:
                group = oracle["groups"][0]
                totals["windows"] += 1
                totals["first responses"] += group["first_response"]["count"]
                totals["next responses"] += group["next_response"]["count"]
                for metric, part in group["sla"].items():
                    totals[f"{metric} achieved"] += part["achieved"]
                    totals[f"{metric} breached"] += part["breached"]
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:60])
    assert cli_reads == len(WIDTHS) * len(AT_S)
    print(
        f"compared {totals['windows'] * len(BY_OPTIONS)} documents ({cli_reads} also read with "
        f"the command line); in the totals: {dict(totals)}"
    )
    assert all(
        totals[f"{m} {o}"] > 0
        for m in ("first_response", "next_response", "resolution")
        for o in ("achieved", "breached")
    ), totals
    compared = time.monotonic()

    warnings = expected_warnings(tickets, claimed_until_s)
    assert {metric for _, metric, _, _ in warnings} == {
        "first_response",
        "next_response",
        "resolution",
    }
    found = alerts(checker_settings, len(expected) + len(warnings))
    check_alerts(found, expected, warnings)
    # a few more checks publish nothing again
    time.sleep(3 * checker_settings.breach_check_interval)
    found = alerts(checker_settings, len(expected) + len(warnings), timeout_s=10)
    check_alerts(found, expected, warnings)
    assert checker.stop() == 0, checker.describe()
    print(
        f"{len(expected)} breaches, {len(warnings)} warnings; loaded in "
        f"{loaded - started:.1f}s, claimed in {claimed - loaded:.1f}s, documents compared "
        f"in {compared - claimed:.1f}s, alerts in {time.monotonic() - compared:.1f}s"
    )
