"""SLA alert traffic with answers worked out by hand, for the exactly-once system tests.

:func:`build_traffic` makes two phases of ticket events on a small policy set and the
alerts they must produce, each exactly once. Two policies:

* ``clock`` (queue ``technical``, priority ``urgent``), calendar time: first response 60,
  next response 120, resolution 480 running minutes; warnings at 0.5 and 0.9 of the
  target; ``pending`` and ``hold`` pause the resolution clock;
* ``office`` (queue ``billing``, priority ``high``), the business hours of a UTC office
  (Monday to Friday, 09:00-17:00): the same targets in business time, warnings at 0.5 and
  0.75, ``pending`` pauses.

Queue ``general`` has no SLA: the tickets that carry each partition's event time to the
end of a phase are there.

Most tickets follow one of the :data:`SHAPES` (a story in minutes after the creation and
its alerts), created every six minutes; three office tickets have fixed times. Event
times lie in the coming days (``max_future`` allows it), so the detection clock is the
events' own time, never the wall clock: which alerts are due when does not depend on how
fast the worker runs. Phase A carries the event time to ``e1_ms``; phase B starts with
*late* events (in-time replies and solves dated in phase A, sent after their breach was
claimed and published, which retract it), then carries the event time on to ``e2_ms``.
Everything expected is computed here from the minutes below, never by ``streams/``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import orjson
import redis

from deskpulse.models.settings import Settings
from deskpulse.models.sla import Policy, Schedule
from deskpulse.streams.devtools.simulate import Record
from deskpulse.streams.partitioner import java_partition

from .support import consume_all, wait_until

__all__ = [
    "Alert",
    "Traffic",
    "breach_counts",
    "build_traffic",
    "check_alerts",
    "next_monday_ms",
    "read_alerts",
    "sla_settings",
    "wait_for_alerts",
    "wait_parked",
]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

SCHEDULES: dict[str, Any] = {
    "office": {
        "timezone": "UTC",
        "hours": {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
    }
}
TARGETS_S = {"first_response": 3600, "next_response": 7200, "resolution": 28800}
POLICIES: list[dict[str, Any]] = [
    {
        "name": "clock",
        "match": {"queue": ["technical"]},
        "targets": {metric: {"urgent": seconds} for metric, seconds in TARGETS_S.items()},
        "pause": ["pending", "hold"],
        "warn_at": [0.5, 0.9],
    },
    {
        "name": "office",
        "match": {"queue": ["billing"]},
        "schedule": "office",
        "targets": {metric: {"high": seconds} for metric, seconds in TARGETS_S.items()},
        "pause": ["pending"],
        "warn_at": [0.5, 0.75],
    },
]
#: the short names of the metrics in the shapes below
METRICS = {"fr": "first_response", "nr": "next_response", "rs": "resolution"}


def sla_settings(settings: Settings, **update: Any) -> Settings:
    """``settings`` with the policy set above, event times up to two weeks ahead, quick
    group joins, small batches (many commits for a kill to land between) and breach checks
    every second; no threshold rules (the alerts topic holds SLA alerts only)."""
    return settings.model_copy(
        update={
            "schedules": {name: Schedule.model_validate(v) for name, v in SCHEDULES.items()},
            "sla_policies": tuple(Policy.model_validate(policy) for policy in POLICIES),
            "max_future": 14 * 86400,
            "batch_within": 0.1,
            "batch_size": 50,
            "breach_check_interval": 1,
            "metrics_refresh_interval": 1,
            "alert_rules": (),
            **update,
        }
    )


def next_monday_ms(now_s: float) -> int:
    """Monday 00:00 UTC at least a day after ``now_s``: the traffic's first day."""
    day = datetime.fromtimestamp(now_s, UTC).date() + timedelta(days=1)
    monday = day + timedelta(days=(7 - day.weekday()) % 7)
    return int(datetime(monday.year, monday.month, monday.day, tzinfo=UTC).timestamp()) * 1000


# -- shapes: a ticket's story and its alerts, by hand ------------------------------------------


@dataclass(frozen=True)
class Step:
    """One event at ``minute`` after the creation: ``agent``/``customer`` (a public reply) or
    a status; ``late`` ones are sent at the start of phase B."""

    minute: int
    what: str
    late: bool = False


@dataclass(frozen=True)
class Due:
    """One expected alert, in minutes after the creation (or after Monday 00:00 for the
    office tickets): ``instant`` is when it falls due (``None``: a retraction, sent when
    its late event is applied); ``deadline`` is ``breached_at``, or for a warning
    ``due_at``, the deadline had the clock kept running from the warning on."""

    type: str
    metric: str
    instance: int
    fraction: float | None
    start: int
    instant: int | None
    deadline: int


def warn(metric: str, n: int, fraction: float, start: int, instant: int, due: int) -> Due:
    return Due("sla.at_risk", metric, n, fraction, start, instant, due)


def breach(metric: str, n: int, start: int, deadline: int) -> Due:
    return Due("sla.breached", metric, n, None, start, deadline, deadline)


def retract(metric: str, n: int, start: int, deadline: int) -> Due:
    return Due("sla.breach_retracted", metric, n, None, start, None, deadline)


@dataclass(frozen=True)
class Shape:
    """A ticket's story on the ``clock`` policy and the alerts it must produce."""

    name: str
    steps: tuple[Step, ...]
    alerts: tuple[Due, ...]

    @property
    def claimed_by(self) -> int:
        """The last instant (minutes) phase A must have claimed for the late events to
        come after the claims they refute (0: no late events)."""
        if not any(step.late for step in self.steps):
            return 0
        return max(due.instant or 0 for due in self.alerts)


def _steps(*items: tuple[int, str] | tuple[int, str, bool]) -> tuple[Step, ...]:
    return tuple(Step(*item) for item in items)


# First response 60 min (warnings at 30, 54), next response 120 (at 60, 108 after its
# start), resolution 480 running minutes (at 240, 432); a reply or solve exactly at an
# instant comes first, which none of these stories needs.
SILENT = Shape(
    "silent",  # never answered, never solved
    (),
    (
        warn("fr", 1, 0.5, 0, 30, 60),
        warn("fr", 1, 0.9, 0, 54, 60),
        breach("fr", 1, 0, 60),
        warn("rs", 1, 0.5, 0, 240, 480),
        warn("rs", 1, 0.9, 0, 432, 480),
        breach("rs", 1, 0, 480),
    ),
)
QUICK = Shape(
    "quick",  # everything in time, before any warning: nothing at all
    _steps((20, "agent"), (25, "customer"), (40, "agent"), (90, "solved")),
    (),
)
CHAIN = Shape(
    # late first reply; next response 1 answered after its first warning, 2 never; the
    # resolution clock paused 300-360 (without the pause it would breach at 480 < 500)
    "chain",
    _steps(
        (70, "agent"),
        (80, "customer"),
        (150, "agent"),
        (160, "customer"),
        (300, "pending"),
        (360, "open"),
        (500, "solved"),
    ),
    (
        warn("fr", 1, 0.5, 0, 30, 60),
        warn("fr", 1, 0.9, 0, 54, 60),
        breach("fr", 1, 0, 60),
        warn("nr", 1, 0.5, 80, 140, 200),
        warn("nr", 2, 0.5, 160, 220, 280),
        warn("nr", 2, 0.9, 160, 268, 280),
        breach("nr", 2, 160, 280),
        # due_at as it stood at 240: the pause at 300 came later
        warn("rs", 1, 0.5, 0, 240, 480),
        # 300 running minutes by 300, 132 more from 360; 48 left then
        warn("rs", 1, 0.9, 0, 492, 540),
    ),
)
THIRD = Shape(
    # next responses 1 and 2 answered in time, 3 never (a customer nudge while it runs
    # starts none); solved after its deadline, which leaves the breach standing
    "third",
    _steps(
        (10, "agent"),
        (20, "customer"),
        (30, "agent"),
        (40, "customer"),
        (45, "agent"),
        (50, "customer"),
        (60, "customer"),
        (200, "solved"),
    ),
    (
        warn("nr", 3, 0.5, 50, 110, 170),
        warn("nr", 3, 0.9, 50, 158, 170),
        breach("nr", 3, 50, 170),
    ),
)
ANSWERED_LATE = Shape(
    # the agent had answered at 50: the reply arrives after the breach went out; the 0.9
    # warning (54) went out too, before anyone knew
    "fr-retracted",
    _steps((150, "solved"), (50, "agent", True)),
    (
        warn("fr", 1, 0.5, 0, 30, 60),
        warn("fr", 1, 0.9, 0, 54, 60),
        breach("fr", 1, 0, 60),
        retract("fr", 1, 0, 60),
    ),
)
SECOND_ANSWERED_LATE = Shape(
    # next response 2 (35-155) was answered at 150, which arrives late
    "nr-retracted",
    _steps(
        (5, "agent"),
        (15, "customer"),
        (25, "agent"),
        (35, "customer"),
        (200, "solved"),
        (150, "agent", True),
    ),
    (
        warn("nr", 2, 0.5, 35, 95, 155),
        warn("nr", 2, 0.9, 35, 143, 155),
        breach("nr", 2, 35, 155),
        retract("nr", 2, 35, 155),
    ),
)
SOLVED_LATE = Shape(
    # solved at 40, which arrives after both breaches went out: the first response is
    # cancelled, the resolution achieved; both retracted
    "solve-retracted",
    _steps((40, "solved", True)),
    (
        warn("fr", 1, 0.5, 0, 30, 60),
        warn("fr", 1, 0.9, 0, 54, 60),
        breach("fr", 1, 0, 60),
        warn("rs", 1, 0.5, 0, 240, 480),
        warn("rs", 1, 0.9, 0, 432, 480),
        breach("rs", 1, 0, 480),
        retract("fr", 1, 0, 60),
        retract("rs", 1, 0, 480),
    ),
)
TOO_LATE = Shape(
    # a late reply after the deadline: the breach stands, nothing is retracted
    "late-reply",
    _steps((100, "solved"), (65, "agent", True)),
    (
        warn("fr", 1, 0.5, 0, 30, 60),
        warn("fr", 1, 0.9, 0, 54, 60),
        breach("fr", 1, 0, 60),
    ),
)
SHAPES: tuple[Shape, ...] = (
    SILENT,
    QUICK,
    CHAIN,
    THIRD,
    ANSWERED_LATE,
    SECOND_ANSWERED_LATE,
    TOO_LATE,
    SOLVED_LATE,
)

#: The office tickets, minutes after Monday 00:00 UTC; the office opens 09:00-17:00.
#: office-1: created Monday 16:40 (20 business minutes that day). First response due
#: Tuesday 09:40 (warnings 09:10, 09:25), answered 10:00. Next response 1 from 10:30,
#: answered 11:45 (warning 11:30, due 12:30). Pending 12:00-13:00; next response 2 from
#: 12:10 (the response clocks never pause), warnings 13:10 and 13:40, breached 14:10.
#: Resolution: 200 business minutes by 12:00, 240 at 13:40, 360 at 15:40; had the clock
#: kept running from either, due Wednesday 09:40; solved Tuesday 16:00, in time.
#: office-2: created Monday 08:00 (before the opening): warnings 09:30 and 09:45,
#: answered 09:50, in time. office-3: created Monday 10:00, breached 11:00 (warnings
#: 10:30, 10:45); the agent's reply of 10:55 arrives late and retracts it.
_MON, _TUE, _WED = 0, 24 * 60, 48 * 60


def _hm(day: int, hh: int, mm: int = 0) -> int:
    return day + hh * 60 + mm


OFFICE: dict[str, tuple[int, tuple[Step, ...], tuple[Due, ...]]] = {
    "office-1": (
        _hm(_MON, 16, 40),
        _steps(
            (_hm(_TUE, 10), "agent"),
            (_hm(_TUE, 10, 30), "customer"),
            (_hm(_TUE, 11, 45), "agent"),
            (_hm(_TUE, 12), "pending"),
            (_hm(_TUE, 12, 10), "customer"),
            (_hm(_TUE, 13), "open"),
            (_hm(_TUE, 16), "solved"),
        ),
        (
            warn("fr", 1, 0.5, _hm(_MON, 16, 40), _hm(_TUE, 9, 10), _hm(_TUE, 9, 40)),
            warn("fr", 1, 0.75, _hm(_MON, 16, 40), _hm(_TUE, 9, 25), _hm(_TUE, 9, 40)),
            breach("fr", 1, _hm(_MON, 16, 40), _hm(_TUE, 9, 40)),
            warn("nr", 1, 0.5, _hm(_TUE, 10, 30), _hm(_TUE, 11, 30), _hm(_TUE, 12, 30)),
            warn("nr", 2, 0.5, _hm(_TUE, 12, 10), _hm(_TUE, 13, 10), _hm(_TUE, 14, 10)),
            warn("nr", 2, 0.75, _hm(_TUE, 12, 10), _hm(_TUE, 13, 40), _hm(_TUE, 14, 10)),
            breach("nr", 2, _hm(_TUE, 12, 10), _hm(_TUE, 14, 10)),
            warn("rs", 1, 0.5, _hm(_MON, 16, 40), _hm(_TUE, 13, 40), _hm(_WED, 9, 40)),
            warn("rs", 1, 0.75, _hm(_MON, 16, 40), _hm(_TUE, 15, 40), _hm(_WED, 9, 40)),
        ),
    ),
    "office-2": (
        _hm(_MON, 8),
        _steps((_hm(_MON, 9, 50), "agent"), (_hm(_MON, 10, 30), "solved")),
        (
            warn("fr", 1, 0.5, _hm(_MON, 8), _hm(_MON, 9, 30), _hm(_MON, 10)),
            warn("fr", 1, 0.75, _hm(_MON, 8), _hm(_MON, 9, 45), _hm(_MON, 10)),
        ),
    ),
    "office-3": (
        _hm(_MON, 10),
        _steps((_hm(_MON, 12), "solved"), (_hm(_MON, 10, 55), "agent", True)),
        (
            warn("fr", 1, 0.5, _hm(_MON, 10), _hm(_MON, 10, 30), _hm(_MON, 11)),
            warn("fr", 1, 0.75, _hm(_MON, 10), _hm(_MON, 10, 45), _hm(_MON, 11)),
            breach("fr", 1, _hm(_MON, 10), _hm(_MON, 11)),
            retract("fr", 1, _hm(_MON, 10), _hm(_MON, 11)),
        ),
    ),
}

# -- the traffic -------------------------------------------------------------------------------

#: An alert's identity: (type, ticket, metric, instance, fraction or None).
AlertKey = tuple[str, str, str, int, float | None]


@dataclass(frozen=True)
class Alert:
    """An expected alert: its identity, its payload (all but ``event_id``) and the event
    time at which it falls due (``None``: a retraction)."""

    key: AlertKey
    payload: dict[str, Any]
    due_ms: int | None


@dataclass
class Traffic:
    """The two phases of records and what they must produce."""

    t0_ms: int
    e1_ms: int
    e2_ms: int
    phase_a: list[Record]
    phase_b: list[Record]
    expected: dict[AlertKey, Alert]
    shapes: Counter[str] = field(default_factory=Counter)

    @property
    def late(self) -> int:
        """Records of phase B dated in phase A."""
        return sum(1 for r in self.phase_b if (r.occurred_at_s or 0) * 1000 < self.e1_ms)

    def summary(self) -> str:
        kinds = Counter(alert.key[0] for alert in self.expected.values())
        return (
            f"{len(self.phase_a)} + {len(self.phase_b)} records ({self.late} late), "
            f"tickets per shape {dict(sorted(self.shapes.items()))}, expected alerts "
            f"{dict(sorted(kinds.items()))}"
        )


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _record(ticket: str, number: int, ms: int, type_: str, **fields: Any) -> Record:
    body = {
        "event_id": f"{ticket}/{number}",
        "type": type_,
        "occurred_at": _stamp(ms),
        "ticket_id": ticket,
        **fields,
    }
    return Record("tickets", ticket.encode(), orjson.dumps(body), ms / 1000)


def _event(ticket: str, number: int, ms: int, what: str) -> Record:
    if what in ("agent", "customer"):
        return _record(ticket, number, ms, "ticket.replied", author_role=what, public=True)
    return _record(ticket, number, ms, "ticket.status_changed", status=what)


def _driver(name: str, partition: int, partitions: int, ms: int) -> Record:
    """A ticket without SLA on ``partition``, created at ``ms``: it carries that
    partition's event time (and so every partition's detection clock) to ``ms``."""
    suffix = 0
    while java_partition(f"{name}-{partition}-{suffix}".encode(), partitions) != partition:
        suffix += 1
    ticket = f"{name}-{partition}-{suffix}"
    return _record(ticket, 0, ms, "ticket.created", channel="api", queue="general", priority="low")


def _expected(
    ticket: str,
    policy: str,
    dims: tuple[str, str, str],
    created_ms: int,
    origin_ms: int,
    due: Due,
) -> Alert:
    channel, queue, priority = dims
    metric = METRICS[due.metric]
    target_s = TARGETS_S[metric]
    body: dict[str, Any] = {
        "schema_version": 1,
        "type": due.type,
        "ticket_id": ticket,
        "metric": metric,
        "instance": due.instance,
        "policy": policy,
        "priority": priority,
        "channel": channel,
        "queue": queue,
        "target_seconds": target_s,
        "started_at": _stamp(origin_ms + due.start * MINUTE_MS),
        "created_at": _stamp(created_ms),
    }
    deadline = _stamp(origin_ms + due.deadline * MINUTE_MS)
    if due.type == "sla.at_risk":
        assert due.fraction is not None
        body |= {
            "fraction": due.fraction,
            "remaining_seconds": float(target_s - target_s * Fraction(str(due.fraction))),
            "due_at": deadline,
        }
    else:
        body["breached_at"] = deadline
    instant = None if due.instant is None else origin_ms + due.instant * MINUTE_MS
    key = (due.type, ticket, metric, due.instance, due.fraction)
    return Alert(key, body, instant)


def build_traffic(
    t0_ms: int, partitions: int, *, tickets: int = 300, every_min: int = 6
) -> Traffic:
    """The traffic from Monday ``t0_ms`` on: ``tickets`` on the ``clock`` policy, one every
    ``every_min`` minutes from 00:03, their shapes in turn (a shape with late events whose
    claims would not all fall in phase A gives way to :data:`SILENT`), the office tickets,
    and each partition's clock carriers at the end of each phase."""
    e1_ms = t0_ms + 20 * HOUR_MS + 17_000  # Monday 20:00:17
    e2_ms = t0_ms + 40 * HOUR_MS + 17_000  # Tuesday 16:00:17
    in_order: list[tuple[int, int, Record]] = []  # (ms, sequence, record)
    late: list[tuple[int, int, Record]] = []
    expected: dict[AlertKey, Alert] = {}
    shapes: Counter[str] = Counter()

    def add(
        ticket: str,
        policy: str,
        dims: tuple[str, str, str],
        created_ms: int,
        origin_ms: int,
        steps: Iterable[Step],
        dues: Iterable[Due],
    ) -> None:
        channel, queue, priority = dims
        opener = _record(
            ticket, 0, created_ms, "ticket.created", channel=channel, queue=queue, priority=priority
        )
        in_order.append((created_ms, len(in_order), opener))
        for number, step in enumerate(steps, 1):
            ms = origin_ms + step.minute * MINUTE_MS
            record = _event(ticket, number, ms, step.what)
            if step.late:
                assert ms < e1_ms, (ticket, step)
                late.append((ms, len(late), record))
            else:
                in_order.append((ms, len(in_order), record))
        for due in dues:
            alert = _expected(ticket, policy, dims, created_ms, origin_ms, due)
            # what falls due after the last clock carrier is never claimed
            if alert.due_ms is None or alert.due_ms <= e2_ms:
                assert alert.key not in expected, alert.key
                expected[alert.key] = alert

    for number in range(tickets):
        created_ms = t0_ms + (3 + every_min * number) * MINUTE_MS
        shape = SHAPES[number % len(SHAPES)]
        if shape.claimed_by and created_ms + (shape.claimed_by + 15) * MINUTE_MS > e1_ms:
            shape = SILENT
        shapes[shape.name] += 1
        channel = ("email", "web", "phone")[number % 3]
        add(
            f"{shape.name}-{number:03d}",
            "clock",
            (channel, "technical", "urgent"),
            created_ms,
            created_ms,
            shape.steps,
            shape.alerts,
        )
    for ticket, (created_min, steps, dues) in OFFICE.items():
        shapes["office"] += 1
        add(
            ticket,
            "office",
            ("email", "billing", "high"),
            t0_ms + created_min * MINUTE_MS,
            t0_ms,
            steps,
            dues,
        )
    for alert in expected.values():  # every retraction refutes a claim of phase A
        if alert.key[0] == "sla.breach_retracted":
            breached = expected[("sla.breached", *alert.key[1:])]
            assert breached.due_ms is not None and breached.due_ms < e1_ms, alert.key
    in_order.sort(key=lambda item: item[:2])
    late.sort(key=lambda item: item[:2])
    phase_a = [record for ms, _, record in in_order if ms < e1_ms]
    phase_b = [record for _, _, record in late]
    phase_b += [record for ms, _, record in in_order if ms >= e1_ms]
    phase_a += [_driver("carrier-a", p, partitions, e1_ms) for p in range(partitions)]
    phase_b += [_driver("carrier-b", p, partitions, e2_ms) for p in range(partitions)]
    return Traffic(t0_ms, e1_ms, e2_ms, phase_a, phase_b, expected, shapes)


# -- reading back and checking -----------------------------------------------------------------


def wait_for_alerts(
    settings: Settings,
    applied: int,
    until_ms: int,
    timeout_s: float,
    describe: Callable[[], str],
) -> None:
    """Wait until ``applied`` events are applied, no partition has a ticket due at or
    before ``until_ms`` (event time) and no partition's outbox holds an alert: everything
    due by then is claimed and published."""
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=2
    )
    bases = [f"{settings.redis_prefix}:{{p{p}}}:" for p in range(settings.topic_partitions)]

    def done() -> bool:
        try:
            count = sum(int(client.hget(base + "meta", "applied") or 0) for base in bases)
            return count >= applied and all(
                client.zcount(base + "due", "-inf", until_ms) == 0
                and client.hlen(base + "breach_out") == 0
                for base in bases
            )
        except redis.RedisError:
            return False

    def state() -> str:
        try:
            counts = [
                (
                    int(client.hget(base + "meta", "applied") or 0),
                    client.zcount(base + "due", "-inf", until_ms),
                    client.hlen(base + "breach_out"),
                )
                for base in bases
            ]
            due = [
                (member.decode(), int(score), client.hget(base + "conv", member))
                for base in bases
                for member, score in client.zrangebyscore(
                    base + "due", "-inf", until_ms, start=0, num=3, withscores=True
                )
            ]
        except redis.RedisError as error:
            return f"Redis: {error}\n{describe()}"
        return (
            f"(applied, due, parked) per partition {counts}, want {applied}; due by "
            f"{until_ms}: {due}\n{describe()}"
        )

    try:
        wait_until(done, timeout_s, 0.2, message=state)
    finally:
        client.close()


def wait_parked(settings: Settings, timeout_s: float) -> int:
    """Poll (every few ms) until some partition's outbox holds alerts: claimed or parked
    by a batch, not yet acknowledged by the broker. How many it held (0: none seen)."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    keys = [
        f"{settings.redis_prefix}:{{p{p}}}:breach_out" for p in range(settings.topic_partitions)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hlen(key)
            parked = sum(pipe.execute())
            if parked:
                return int(parked)
            time.sleep(0.002)
        return 0
    finally:
        client.close()


def read_alerts(settings: Settings, expected: int, settle_s: float) -> list[dict[str, Any]]:
    """Every record of the alerts topic, in offset order (key checked: the ticket id)."""
    records = asyncio.run(
        consume_all(
            settings.kafka_bootstrap, settings.topic_alerts, expected, 60, settle_s=settle_s
        )
    )
    records.sort(key=lambda r: (r.partition, r.offset))
    found = []
    for record in records:
        payload: dict[str, Any] = orjson.loads(record.value)
        assert record.key is not None and record.key.decode() == payload["ticket_id"], payload
        found.append(payload)
    return found


def _key_of(payload: dict[str, Any]) -> AlertKey:
    return (
        payload["type"],
        payload["ticket_id"],
        payload["metric"],
        payload["instance"],
        payload.get("fraction"),
    )


def check_alerts(found: Sequence[dict[str, Any]], expected: dict[AlertKey, Alert]) -> int:
    """Each expected alert exactly once, with its fields; nothing else. A record delivered
    again in the one window the design allows (a crash after the broker acknowledged an
    alert, before the outbox forgot it) carries the same ``event_id`` and is byte for byte
    the same; how many such repeats there were."""
    by_id: dict[str, dict[str, Any]] = {}
    repeats = 0
    for payload in found:
        seen = by_id.get(payload["event_id"])
        if seen is not None:
            assert seen == payload, ("one event_id, two payloads", seen, payload)
            repeats += 1
            continue
        by_id[payload["event_id"]] = payload
    ids_per_key: dict[AlertKey, list[str]] = {}
    for event_id, payload in by_id.items():
        ids_per_key.setdefault(_key_of(payload), []).append(event_id)
    twice = {key: ids for key, ids in ids_per_key.items() if len(ids) > 1}
    unexpected = sorted(set(ids_per_key) - set(expected), key=str)
    missing = sorted(set(expected) - set(ids_per_key), key=str)
    assert not twice, f"published more than once (under different ids): {twice}"
    assert not unexpected, f"{len(unexpected)} unexpected alerts, e.g. {unexpected[:10]}"
    assert not missing, f"{len(missing)} alerts missing, e.g. {missing[:10]}"
    wrong = []
    for event_id, payload in by_id.items():
        want = expected[_key_of(payload)].payload
        if {k: v for k, v in payload.items() if k != "event_id"} != want or not event_id:
            wrong.append((payload, want))
    assert not wrong, f"{len(wrong)} alerts with wrong fields, e.g. {wrong[:3]}"
    return repeats


def breach_counts(expected: dict[AlertKey, Alert]) -> Counter[tuple[str, str, str, str]]:
    """Expected ``deskpulse_sla_breaches_total`` per (channel, queue, priority, metric): the
    breaches published, retracted ones included."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for alert in expected.values():
        if alert.key[0] == "sla.breached":
            body = alert.payload
            counts[(body["channel"], body["queue"], body["priority"], body["metric"])] += 1
    return counts
