"""Acceptance of the lifecycle KPIs and the live state: four days of ticket lifecycles and
chats (pending and hold periods, solves, reopens, closes, status events before the creation
and after the close, tickets left open until they are dropped, chats answered, abandoned and
gone stale), delivered shuffled with duplicates to a real worker, then ``GET /kpis`` and
``deskpulse kpis --json`` compared on every lifecycle field (full resolution, reopens,
one-touch, the backlog by status with its oldest ticket, the waiting chats with the longest
wait, handle time) with the independent brute-force oracle of tests/lifecycle_oracle.py,
at the instants where the rules have their edges, for several widths and groupings.

The retention is a day and the open ticket maximum age two, so tickets are dropped inside
the data and the reads of the past reach back across the retention's whole span.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from deskpulse.models.events import decode
from deskpulse.models.settings import Settings
from deskpulse.models.sla import Policy, Schedule
from deskpulse.streams.devtools.simulate import Record, SimConfig
from tests.e2e_support import Dataset, kpis_cli, kpis_http, read_counts, wait_for_state
from tests.lifecycle_oracle import compare, evaluate, lifecycle_document
from tests.lifecycle_support import (
    POLICIES,
    SCHEDULES,
    Instant,
    LifecycleData,
    build_lifecycle_records,
    interesting_instants,
)
from tests.sla_oracle import SlaRules, rfc3339_ms
from tests.support import StartWorker, produce_records, wait_until

pytestmark = pytest.mark.slow

DAY = 86_400
RETENTION_S = DAY
MAX_AGE_S = 2 * DAY
#: read within hours of their end, so even the widest window is still whole (the retention
#: counts back from the newest event time, and deletes the buckets before)
WIDTHS = {"15m": 900, "1h": 3600, "6h": 6 * 3600}
BY_OPTIONS: tuple[tuple[str, ...], ...] = ((), ("queue",), ("channel", "queue", "priority"))
_CHATS = ("waiting", "longest_wait_seconds", "handle_mean_seconds", "handle_p50_seconds")
_CHATS += ("handle_p90_seconds",)
#: records produced at once, at most, and the event time they may span
CHUNK = 100
CHUNK_SPAN_S = 3 * 3600


def chunks(records: list[Record]) -> list[list[Record]]:
    """The records in delivery order, cut where a piece would hold more than
    :data:`CHUNK` of them or span more than :data:`CHUNK_SPAN_S` of event time."""
    out: list[list[Record]] = []
    low = high = 0.0
    for record in records:
        at_s = record.occurred_at_s or 0.0
        if out and len(out[-1]) < CHUNK and max(high, at_s) - min(low, at_s) <= CHUNK_SPAN_S:
            out[-1].append(record)
            low, high = min(low, at_s), max(high, at_s)
        else:
            out.append([record])
            low = high = at_s
    return out


def lifecycle_part(document: dict[str, Any]) -> dict[str, Any]:
    """The lifecycle sections of a KPI document, in the oracle's shape: groups with neither
    a lifecycle sample nor anything open or waiting are left out (they are listed for their
    other samples)."""

    def listed(group: dict[str, Any]) -> bool:
        chats = group["chats"]
        return bool(
            group["resolution"]["count"]
            or group["backlog"]["total"]
            or chats["waiting"]
            or chats["handle_mean_seconds"] is not None
        )

    groups = [
        {
            "key": group["key"],
            "resolution": group["resolution"],
            "backlog": group["backlog"],
            "chats": {name: group["chats"][name] for name in _CHATS},
        }
        for group in document["groups"]
        if listed(group) or not document["by"]
    ]
    return {"window": document["window"], "by": document["by"], "groups": groups}


def dataset_of(data: LifecycleData) -> Dataset:
    """What the state must show once every record is in (all valid, every opener sent)."""
    events = {event.event_id: event for event in (decode(r.value) for r in data.records)}
    return Dataset(
        config=SimConfig(),
        records=data.records,
        valid=len(data.records),
        distinct=len(events),
        rejected=0,
        held=0,
        conversations=len({record.key for record in data.records}),
        types=Counter(event.type for event in events.values()),
    )


def test_lifecycle_kpis_equal_the_oracle(
    settings: Settings, make_topics: Any, tmp_path: Path, start_worker: StartWorker
) -> None:
    # a fifth of the tickets moved to another queue or priority during their story
    data = build_lifecycle_records(
        retention_s=RETENTION_S, open_ticket_max_age_s=MAX_AGE_S, moves=0.2
    )
    settings = settings.model_copy(
        update={
            "schedules": {name: Schedule.model_validate(v) for name, v in SCHEDULES.items()},
            "sla_policies": tuple(Policy.model_validate(policy) for policy in POLICIES),
            "retention": RETENTION_S,
            "open_ticket_max_age": MAX_AGE_S,
            "windows": (300, 900, 3600, 6 * 3600),
            "batch_within": 0.1,
            "breach_check_interval": 3600,
        }
    )
    make_topics(settings)
    dataset = dataset_of(data)
    worker = start_worker(settings, tmp_path / "worker", name="worker", timeout_s=90)
    # delivered as a live stream is, a few hours of event time at a time: all at once, the
    # worker would read one topic's four days before another's first, and take the other's
    # records for late (the retention, a day, counts back from the newest event time)
    # (nor may one batch span more than the retention: its newest event would make the
    # others late, and the data's last records are hours apart)
    rules = SlaRules.from_settings(settings)
    whole = evaluate(data.values, rules, retention_s=RETENTION_S, open_ticket_max_age_s=MAX_AGE_S)
    # Instants after the newest event are left out: the worker moves in event time, and with
    # no event after them it has not reached the instants at which tickets are dropped.
    newest_event_s = max(record.occurred_at_s or 0.0 for record in data.records)
    instants = sorted(
        (i for i in interesting_instants(data, whole) if i.at_s <= newest_event_s),
        key=lambda instant: instant.at_s,
    )
    print(f"\n{data.summary()}\ninstants: {instants}")
    assert len(instants) >= 6
    dropped = [t.dropped_ms for t in whole.tickets.values() if t.dropped_ms is not None]
    assert any(instants[0].at_s * 1000 < ms < newest_event_s * 1000 for ms in dropped), (
        "no ticket reaches its maximum age between the instants read"
    )

    problems: list[str] = []
    seen: Counter[str] = Counter()
    reads = 0

    def check(instant: Instant, delivered: list[bytes]) -> None:
        """Every width and grouping at the instant against the oracle of the records
        delivered so far (a later record can still change the past: a reopen takes back
        a resolution sample)."""
        nonlocal reads
        oracle = evaluate(
            delivered, rules, retention_s=RETENTION_S, open_ticket_max_age_s=MAX_AGE_S
        )
        at_s, why = instant.at_s, instant.why
        for width, width_s in WIDTHS.items():
            for index, by in enumerate(BY_OPTIONS):
                where = f"--window {width} --at {rfc3339_ms(int(at_s * 1000))} --by {','.join(by)}"
                actual = kpis_http(worker, width=width, at_s=at_s, by=by)
                reads += 1
                if index == reads % len(BY_OPTIONS):
                    read = kpis_cli(settings, tmp_path, width=width, at_s=at_s, by=by)
                    if read != actual:
                        problems.append(
                            f"{where}: the command line says {read}, GET /kpis {actual}"
                        )
                expected = lifecycle_document(oracle, at_s=at_s, width_s=width_s, by=by)
                problems.extend(
                    f"{where} ({why}): {line}" for line in compare(lifecycle_part(actual), expected)
                )
                if not by:
                    group = expected["groups"][0]
                    seen["resolved"] += group["resolution"]["count"]
                    seen["reopened"] += group["resolution"]["reopened"]
                    seen["one touch"] += group["resolution"]["one_touch"]
                    seen["open"] += group["backlog"]["total"]
                    seen["waiting"] += group["chats"]["waiting"]
                    seen["handled"] += group["chats"]["handle_mean_seconds"] is not None

    # Delivered as a live stream is, a few hours of event time at a time: all at once, the
    # worker would read one topic's four days before another's first, and take the other's
    # records for late (the retention, a day, counts back from the newest event time); nor
    # may one batch span more than the retention (its newest event would make the others
    # late, and the data's last records are hours apart). Each instant is read once the
    # stream is an hour past it, while it is still within the retention.
    sent = 0
    delivered: list[bytes] = []
    newest_s = 0.0
    waiting = list(instants)
    for chunk in chunks(dataset.records):
        asyncio.run(produce_records(settings, chunk))
        sent += len(chunk)
        delivered += [record.value for record in chunk]
        newest_s = max(newest_s, *(record.occurred_at_s or 0.0 for record in chunk))
        wait_until(
            lambda sent=sent: read_counts(settings).seen >= sent,  # type: ignore[misc]
            60,
            0.1,
            message=worker.describe,
        )
        while waiting and waiting[0].at_s + 3600 <= newest_s:
            check(waiting.pop(0), delivered)
    wait_for_state(settings, dataset, timeout_s=120, describe=worker.describe, claims=False)
    for instant in waiting:
        check(instant, delivered)
    print(f"covered: {dict(seen)}")
    assert not problems, "\n".join(problems[:40])
    for needed in ("resolved", "reopened", "one touch", "open", "waiting", "handled"):
        assert seen[needed] > 0, needed
