"""Helpers for the end-to-end and fault-injection tests: a realistic dataset, waiting for
the KPI state to take all of it in, and checking it against the oracle.

The dataset comes from :mod:`streams.devtools.simulate` (duplicates, out-of-order delivery with
openers after their replies, malformed records, conversations that never open, unanswered
tickets) with a fixed seed over a fixed stretch of event time, so a failure reproduces.
Every expectation is computed from the raw record values by :mod:`tests.oracle` or by
plain counting here, never by ``streams/``.

Completion is judged from the Redis meta counters summed over the partitions
(``applied`` reaching the number of distinct valid events, ``applied + dup + late`` the
number of valid records), never from the broker's end offsets: Tansu reports the base
offset of the last batch as the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis

from deskpulse.models.errors import RejectedEvent
from deskpulse.models.events import SurveyResponded, TicketReplied, decode
from deskpulse.models.settings import Settings
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.devtools.simulate import DEFAULT_START_S, Record, SimConfig, generate
from deskpulse.streams.query import format_time, query_kpis
from deskpulse.streams.redis_client import connect
from deskpulse.streams.store import Store
from deskpulse.streams.windows import parse_width

from .lifecycle_oracle import Lifecycle, lifecycle_document, merge_documents
from .lifecycle_oracle import evaluate as evaluate_lifecycles
from .oracle import compare, compute
from .presence_oracle import with_agents
from .support import (
    WorkerProcess,
    consume_all,
    run_cli,
    settings_env,
    sync_redis,
    wait_for_claims,
    wait_for_progress,
)

__all__ = [
    "BY_OPTIONS",
    "WINDOWS",
    "CounterDrift",
    "Dataset",
    "StateCounts",
    "build_dataset",
    "check_counters",
    "check_shape",
    "compare_with_oracle",
    "dead_letters",
    "kpis_cli",
    "kpis_http",
    "kpis_store",
    "oracle_doc",
    "progress",
    "query_points",
    "read_counts",
    "redis_snapshot",
    "wait_for_state",
]

#: Event time starts here (2026-11-23T00:00:00Z, in the past, so nothing is "future").
START_S = DEFAULT_START_S
#: How much event time the dataset spans.
DURATION_S = 3 * 3600

#: Window widths checked, as ``deskpulse kpis --window`` takes them, with their seconds.
WINDOWS: dict[str, int] = {"5m": 300, "1h": 3600, "3h": 3 * 3600, "24h": 24 * 3600}
#: Groupings checked.
BY_OPTIONS: tuple[tuple[str, ...], ...] = ((), ("channel",), ("channel", "queue", "priority"))

_DIMENSIONS = ("channel", "queue", "priority")
_OPENERS = frozenset({"ticket.created", "chat.requested"})


@dataclass(frozen=True)
class Dataset:
    """Simulated records and what the state must show once all of them are consumed."""

    config: SimConfig
    records: list[Record]
    #: records ``decode`` accepts (each is applied, a duplicate or late exactly once)
    valid: int
    #: distinct valid event ids (applied); the rest of ``valid`` are duplicates
    distinct: int
    #: records ``decode`` rejects (dead-lettered, never in the meta counters)
    rejected: int
    #: events held for an opener that never comes (``held`` in meta)
    held: int
    conversations: int
    #: events delivered before their conversation's opener, on its topic / from surveys
    early: int = 0
    early_surveys: int = 0
    #: tickets that never get a public agent reply
    unanswered: int = 0
    #: the first ``head`` records are surveys moved ahead of everything: each one must be
    #: held until its conversation's opener (on another topic) comes
    head: int = 0
    types: Mapping[str, int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.valid - self.distinct

    @property
    def values(self) -> list[bytes]:
        return [record.value for record in self.records]

    def summary(self) -> str:
        return (
            f"{len(self.records)} records: {self.valid} valid ({self.distinct} distinct, "
            f"{self.duplicates} duplicates), {self.rejected} malformed, "
            f"{self.conversations} conversations, {self.unanswered} tickets never answered, "
            f"{self.early} events and {self.early_surveys} surveys delivered before their "
            f"opener ({self.head} surveys first of all), {self.held} events held for "
            f"openers that never come; "
            f"types {dict(sorted(self.types.items()))}"
        )


def build_dataset(
    *,
    seed: int = 11,
    rate: float = 2.0,
    start_s: float = START_S,
    duration_s: float = DURATION_S,
    hoist_every: int = 4,
    **overrides: Any,
) -> Dataset:
    """A realistic stretch of support traffic with every kind of fault mixed in.

    Besides the simulator's faults, every ``hoist_every``-th survey that needs its
    conversation is delivered first of all, before any opener.
    """
    faults: dict[str, Any] = {
        "duplicate_ratio": 0.03,
        "out_of_order": 0.1,
        "disorder_s": 60.0,
        "malformed_ratio": 0.01,
        "orphan_ratio": 0.01,
        "unanswered_ratio": 0.08,
        "survey_ratio": 0.4,
        "response_scale": 0.2,  # lifecycles fit in the stretch: plenty of first replies
        "presence": True,  # the agents' shifts on the agents topic
        "moves": 0.1,  # escalations and transfers: samples and backlog by their instant
    }
    config = SimConfig(
        seed=seed,
        start_s=start_s,
        duration_s=duration_s,
        rate=rate,
        **(faults | overrides),
    )
    records, head = _surveys_first(list(generate(config)), every=hoist_every)
    now_s = time.time()
    seen: set[str] = set()
    types: Counter[str] = Counter()
    by_conversation: dict[str, list[Any]] = {}
    valid = rejected = 0
    for record in records:
        try:
            event = decode(record.value, now_s=now_s)
        except RejectedEvent:
            rejected += 1
            continue
        valid += 1
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        types[event.type] += 1
        by_conversation.setdefault(event.conversation_id, []).append(event)
    held = early = early_surveys = unanswered = 0
    for conversation_id, events in by_conversation.items():  # each in delivery order
        if conversation_id.startswith("a:"):
            continue  # an agent's presence needs no opener
        openers = [n for n, event in enumerate(events) if event.type in _OPENERS]
        if openers:
            before = events[: openers[0]]
            early += sum(1 for event in before if not isinstance(event, SurveyResponded))
            early_surveys += sum(1 for event in before if isinstance(event, SurveyResponded))
            if events[openers[0]].type == "ticket.created" and not any(
                isinstance(event, TicketReplied) and event.author_role == "agent" and event.public
                for event in events
            ):
                unanswered += 1
            continue
        # a survey carrying all three dimensions stands alone; everything else waits
        held += sum(
            1
            for event in events
            if not (
                isinstance(event, SurveyResponded)
                and all(getattr(event, name) is not None for name in _DIMENSIONS)
            )
        )
    return Dataset(
        config=config,
        records=records,
        valid=valid,
        distinct=len(seen),
        rejected=rejected,
        held=held,
        conversations=len(by_conversation),
        early=early,
        early_surveys=early_surveys,
        unanswered=unanswered,
        head=head,
        types=dict(types),
    )


def _surveys_first(records: list[Record], *, every: int) -> tuple[list[Record], int]:
    """Move every ``every``-th survey lacking a dimension (of a conversation that opens)
    to the front; the reordered records and how many were moved."""
    events = []
    opened: set[str] = set()
    for record in records:
        try:
            event: Any = decode(record.value)
        except RejectedEvent:
            event = None
        events.append(event)
        if event is not None and event.type in _OPENERS:
            opened.add(event.conversation_id)
    first: list[Record] = []
    rest: list[Record] = []
    seen: set[str] = set()
    candidates = 0
    for record, event in zip(records, events, strict=True):
        if (
            isinstance(event, SurveyResponded)
            and event.event_id not in seen
            and event.conversation_id in opened
            and any(getattr(event, name) is None for name in _DIMENSIONS)
        ):
            candidates += 1
            if candidates % every == 0:
                first.append(record)
                seen.add(event.event_id)
                continue
        if event is not None:
            seen.add(event.event_id)
        rest.append(record)
    return first + rest, len(first)


@dataclass(frozen=True)
class StateCounts:
    """The meta counters summed over partitions."""

    applied: int
    dup: int
    late: int
    held: int
    orphaned: int

    @property
    def seen(self) -> int:
        """Records accounted for: each valid record ends in exactly one of these."""
        return self.applied + self.dup + self.late


def read_counts(settings: Settings) -> StateCounts:
    """Sum ``applied``, ``dup:*``, ``late:*``, ``held``, ``orphaned`` over the partitions."""
    client = sync_redis(settings, socket_timeout=5, socket_connect_timeout=2)
    try:
        totals: Counter[str] = Counter()
        for partition in range(settings.topic_partitions):
            meta = client.hgetall(f"{settings.redis_prefix}:{{p{partition}}}:meta")
            for name, value in meta.items():
                text = name.decode()
                kind = text.split(":", 1)[0]
                if kind in ("applied", "dup", "late", "held", "orphaned"):
                    totals[kind] += int(value)
    finally:
        client.close()
    return StateCounts(
        totals["applied"], totals["dup"], totals["late"], totals["held"], totals["orphaned"]
    )


def progress(settings: Settings) -> int:
    """Distinct events applied so far (0 while Redis is unreachable)."""
    try:
        return read_counts(settings).applied
    except redis.RedisError:
        return 0


class CounterDrift(AssertionError):
    """The meta counters account for a valid record more than once (or not at all)."""


def wait_for_state(
    settings: Settings,
    dataset: Dataset,
    *,
    timeout_s: float = 120,
    describe: Callable[[], str] | None = None,
    settle_s: float = 1.0,
    claims: bool = True,
) -> StateCounts:
    """Wait until the meta counters account for every valid record; check what they hold.

    Done means ``applied + dup + late`` reached the number of valid records and ``applied``
    the number of distinct ones; then waits ``settle_s`` more so a double count would
    show, and checks ``applied``, ``late``, ``held`` and ``orphaned`` exactly (see
    :func:`check_counters` for the rest). Fails once the counters have not moved for
    ``timeout_s`` (a worker still catching up on a loaded host is waited for; the test's
    own timeout bounds the whole wait).
    """

    last: list[StateCounts | None] = [None]

    def read() -> StateCounts | None:
        """The counters, or the last ones read while Redis does not answer (no change)."""
        with contextlib.suppress(redis.RedisError):
            last[0] = read_counts(settings)
        return last[0]

    def reached(counts: StateCounts | None) -> bool:
        return (
            counts is not None
            and counts.seen >= dataset.valid
            and counts.applied >= dataset.distinct
        )

    def message() -> str:
        try:
            counts: Any = read_counts(settings)
        except redis.RedisError as error:
            counts = error
        text = f"state {counts} for {dataset.valid} valid records ({dataset.distinct} distinct)"
        return text + ("\n" + describe() if describe is not None else "")

    wait_for_progress(read, reached, timeout_s, 0.25, message=message)
    time.sleep(settle_s)
    counts = read_counts(settings)
    assert counts.applied == dataset.distinct, message()
    assert counts.late == 0, message()
    assert counts.held == dataset.held, message()
    assert counts.orphaned == 0, message()
    # the breaches of deadlines passed (all of a past data set's) claimed before any read
    # (not for a replay's state: breach detection is the worker's)
    if claims:
        wait_for_claims(settings)
    return counts


def check_counters(counts: StateCounts, dataset: Dataset) -> None:
    """Each valid record is in ``applied + dup + late`` exactly once; raises CounterDrift."""
    if counts.seen != dataset.valid or counts.dup != dataset.duplicates:
        raise CounterDrift(
            f"{counts} for {dataset.valid} valid records of which {dataset.duplicates} are "
            f"duplicates: {counts.dup - dataset.duplicates} records counted again as duplicates"
        )


def query_points(dataset: Dataset) -> list[float]:
    """``--at`` times: one mid-data (off a bucket boundary), one after the data."""
    start = dataset.config.start_s
    # whole seconds: the --at text carries no fraction
    return [
        float(math.floor(start + dataset.config.duration_s / 2) + 17),
        float(math.floor(start + dataset.config.duration_s) + 600),
    ]


def oracle_doc(
    values: Iterable[bytes],
    *,
    at_s: float,
    width: str,
    by: Sequence[str],
    claimed_until_s: float | None = math.inf,
) -> dict[str, Any]:
    """The oracle's ``deskpulse kpis --json`` for one window and grouping (every breach
    counted: the worker claimed them all, see :func:`wait_for_state`), with the lifecycle
    sections of tests/lifecycle_oracle.py (default retention and maximum age)."""
    values = list(values)
    base = compute(
        values, at_s=at_s, width_s=WINDOWS[width], by=by, claimed_until_s=claimed_until_s
    )
    life = lifecycle_document(
        _lifecycle_of(values), at_s=at_s, width_s=WINDOWS[width], by=tuple(by)
    )
    # the agents' presence, in the one group without grouping
    return with_agents(merge_documents(base, life), values, at_s=at_s, width_s=WINDOWS[width])


_LIFECYCLES: dict[int, tuple[list[bytes], Lifecycle]] = {}


def _lifecycle_of(values: list[bytes]) -> Lifecycle:
    """The lifecycle oracle's facts of a data set (kept for the reads that follow)."""
    key = hash(tuple(values))
    found = _LIFECYCLES.get(key)
    if found is None or found[0] != values:
        found = _LIFECYCLES[key] = (values, evaluate_lifecycles(values, None))
    return found[1]


def kpis_cli(
    settings: Settings, cwd: Path, *, width: str, at_s: float, by: Sequence[str]
) -> dict[str, Any]:
    """``deskpulse kpis --json`` as a subprocess with the settings' environment."""
    args = ["kpis", "--json", "--window", width, "--at", format_time(at_s)]
    if by:
        args += ["--by", ",".join(by)]
    done = run_cli(args, settings_env(settings), cwd=cwd, timeout_s=60)
    assert done.returncode == 0, f"deskpulse {' '.join(args)}: {done.stderr}"
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def kpis_store(settings: Settings, width: str, at_s: float, by: Sequence[str]) -> dict[str, Any]:
    """The document read in-process through :func:`streams.query.query_kpis`."""

    async def read() -> dict[str, Any]:
        client = connect(settings, purpose="command")
        try:
            store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
            width_s = parse_width(width, settings.bucket_seconds)
            return await query_kpis(store, width_s=width_s, at_s=at_s, by=by)
        finally:
            await client.aclose()

    return asyncio.run(read())


def dead_letters(
    settings: Settings,
    dataset: Dataset,
    placed: Sequence[tuple[str, int, int]],
    timeout_s: float = 60,
) -> Counter[tuple[str, int, int]]:
    """How often each malformed record reached the dead-letter topic, by source coordinates.

    Fails if one is missing, or if a record that is not malformed is there. ``placed``
    says where each record of the dataset landed, ``(topic, partition, offset)`` (as
    :func:`~tests.support.produce_records` returns it and :class:`~tests.support.StreamProducer`
    keeps it).
    Redelivery after a crash may dead-letter a record again (at least once).
    """
    assert len(placed) == len(dataset.records)
    malformed = {
        position: record.value
        for record, position in zip(dataset.records, placed, strict=True)
        if record.occurred_at_s is None
    }
    bootstrap, topic = settings.kafka_bootstrap, settings.topic_deadletter
    deadline = time.monotonic() + timeout_s
    letters = asyncio.run(consume_all(bootstrap, topic, dataset.rejected, timeout_s))
    while True:
        seen: Counter[tuple[str, int, int]] = Counter()
        for letter in letters:
            headers = {name: value.decode() for name, value in letter.headers}
            source = (
                headers["deskpulse-source-topic"],
                int(headers["deskpulse-source-partition"]),
                int(headers["deskpulse-source-offset"]),
            )
            assert malformed.get(source) == letter.value, (
                f"dead-lettered {source}: {letter.value!r}"
            )
            seen[source] += 1
        missing = malformed.keys() - seen.keys()
        remaining = deadline - time.monotonic()
        if not missing or remaining <= 0:
            break
        # a redelivery's repeat counts towards the expected total: read on for the rest
        more = len(letters) + len(missing)
        letters = asyncio.run(consume_all(bootstrap, topic, more, min(10.0, remaining)))
    assert not missing, f"{len(missing)} malformed records never dead-lettered: {sorted(missing)}"
    return seen


def kpis_http(
    worker: WorkerProcess, *, width: str, at_s: float, by: Sequence[str]
) -> dict[str, Any]:
    """``GET /kpis`` on a running worker."""
    query = {"window": width, "at": format_time(at_s)}
    if by:
        query["by"] = ",".join(by)
    response = worker.get("/kpis?" + urlencode(query), timeout_s=10)
    assert response is not None, worker.describe()
    assert response.status == 200, response
    assert response.headers["content-type"].startswith("application/json"), response.headers
    document: dict[str, Any] = json.loads(response.body)
    return document


def compare_with_oracle(
    dataset: Dataset,
    read: Callable[[str, float, Sequence[str]], dict[str, Any]],
    *,
    windows: Iterable[str] = WINDOWS,
    by_options: Iterable[Sequence[str]] = BY_OPTIONS,
    claimed_until_s: float | None = math.inf,
) -> dict[tuple[str, float, tuple[str, ...]], dict[str, Any]]:
    """Read every window x grouping x ``--at`` with ``read`` and compare it with the oracle.

    Fails with every difference listed; returns the documents read.
    """
    values = dataset.values
    problems: list[str] = []
    documents: dict[tuple[str, float, tuple[str, ...]], dict[str, Any]] = {}
    for width in windows:
        for at_s in query_points(dataset):
            for by in by_options:
                actual = read(width, at_s, by)
                documents[(width, at_s, tuple(by))] = actual
                where = f"--window {width} --at {format_time(at_s)} --by {','.join(by)}"
                problems += [f"{where}: {line}" for line in check_shape(actual, by, width)]
                expected = oracle_doc(
                    values, at_s=at_s, width=width, by=by, claimed_until_s=claimed_until_s
                )
                problems += [f"{where}: {line}" for line in compare(actual, expected)]
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:60])
    return documents


# -- the exact JSON shape of the KPI document (docs/kpis.md) ----------------------------

_COUNTS = {
    "first_response": ("count", "within_target"),
    "next_response": ("count",),
    "chats": ("requested", "answered", "abandoned", "short_abandoned"),
    "csat": ("responses", "satisfied"),
    "nps": ("responses", "promoters", "detractors"),
    "ces": ("responses",),
}
_VALUES = {
    "first_response": (
        "mean_seconds",
        "p50_seconds",
        "p90_seconds",
        "p95_seconds",
        "within_target_ratio",
    ),
    "next_response": ("mean_seconds", "p50_seconds", "p90_seconds", "p95_seconds"),
    "chats": ("abandonment_ratio", "service_level_ratio", "wait_p50_seconds", "wait_p90_seconds"),
    "csat": ("ratio", "average"),
    "nps": ("score",),
    "ces": ("average",),
}
#: sections holding a nested "business" object of durations (null without samples)
_BUSINESS = ("first_response", "next_response")
_DURATIONS = {"mean_seconds", "p50_seconds", "p90_seconds", "p95_seconds"}
_SLA_METRICS = ("first_response", "next_response", "resolution")
_GROUP_KEYS = {"key", "tickets_created", "sla", "resolution", "backlog", *_COUNTS}
_LIFECYCLE_CHATS = (
    "waiting",
    "longest_wait_seconds",
    "handle_mean_seconds",
    "handle_p50_seconds",
    "handle_p90_seconds",
)


def _samples_of(section: str, group: Mapping[str, Any], name: str) -> int:
    """How many samples stand behind a value of ``section`` (0: it must be null)."""
    part = group[section]
    if section in ("first_response", "next_response"):
        return int(part["count"])
    if section == "chats":
        if name in ("abandonment_ratio", "service_level_ratio"):
            return int(part["answered"]) + int(part["abandoned"])
        return int(part["answered"])
    return int(part["responses"])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_shape(document: Mapping[str, Any], by: Sequence[str], width: str) -> list[str]:
    """Every way ``document`` departs from the shape of docs/kpis.md, one line each."""
    out: list[str] = []
    if set(document) != {"window", "by", "groups"}:
        out.append(f"top-level keys {sorted(document)}")
        return out
    window = document["window"]
    if set(window) != {"start", "end", "seconds"}:
        out.append(f"window keys {sorted(window)}")
    elif not _is_int(window["seconds"]) or window["seconds"] != WINDOWS[width]:
        out.append(f"window.seconds {window['seconds']!r}")
    else:
        for name in ("start", "end"):
            stamp = window[name]
            if not (isinstance(stamp, str) and len(stamp) == 20 and stamp.endswith("Z")):
                out.append(f"window.{name} {stamp!r} is not RFC 3339 UTC")
    if document["by"] != list(by):
        out.append(f"by {document['by']!r}")
    if not isinstance(document["groups"], list) or (not by and len(document["groups"]) != 1):
        out.append(f"groups {document['groups']!r}")
        return out
    for index, group in enumerate(document["groups"]):
        where = f"groups[{index}]"
        if set(group) != (_GROUP_KEYS if by else _GROUP_KEYS | {"agents"}):
            out.append(f"{where} keys {sorted(group)}")
            continue
        if not by:
            out.extend(_check_agents(where, group["agents"]))
        key = group["key"]
        if not isinstance(key, dict) or set(key) != set(by):
            out.append(f"{where}.key {key!r}")
        elif not all(isinstance(value, str) for value in key.values()):
            out.append(f"{where}.key values {key!r}")
        if not _is_int(group["tickets_created"]) or group["tickets_created"] < 0:
            out.append(f"{where}.tickets_created {group['tickets_created']!r}")
        out.extend(_check_sla(where, group))
        out.extend(_check_lifecycle(where, group))
        for section, counts in _COUNTS.items():
            part = group[section]
            if section == "chats" and isinstance(part, dict):
                part = {k: v for k, v in part.items() if k not in _LIFECYCLE_CHATS}
            if section in _BUSINESS and isinstance(part, dict):
                part = dict(part)
                business = part.pop("business", None)
                if not isinstance(business, dict) or set(business) != _DURATIONS:
                    out.append(f"{where}.{section}.business {business!r}")
                elif any(
                    (value is not None) != bool(part.get("count"))
                    or (value is not None and not _is_number(value))
                    for value in business.values()
                ):
                    out.append(f"{where}.{section}.business {business!r} against its count")
            if not isinstance(part, dict) or set(part) != {*counts, *_VALUES[section]}:
                out.append(f"{where}.{section} keys {sorted(part)}")
                continue
            bad = [name for name in counts if not _is_int(part[name]) or part[name] < 0]
            if bad:
                out.append(f"{where}.{section} counts not non-negative ints: {bad} in {part}")
                continue
            for name in _VALUES[section]:
                value = part[name]
                if _samples_of(section, group, name) == 0:
                    if value is not None:
                        out.append(f"{where}.{section}.{name} {value!r} without samples")
                elif isinstance(value, bool) or not isinstance(value, int | float):
                    out.append(f"{where}.{section}.{name} {value!r} is not a number")
                elif not math.isfinite(value):
                    out.append(f"{where}.{section}.{name} {value!r} is not finite")
    return out


def _check_agents(where: str, agents: Any) -> list[str]:
    """The ``agents`` object: counts by status, and occupancy (``null`` or within 0..1)."""
    statuses = ("available", "busy", "away", "offline")
    if not isinstance(agents, dict) or set(agents) != {*statuses, "occupancy_ratio"}:
        return [f"{where}.agents {agents!r}"]
    out = [f"{where}.agents.{s} {agents[s]!r}" for s in statuses if not _is_int(agents[s])]
    ratio = agents["occupancy_ratio"]
    if ratio is not None and not (_is_number(ratio) and 0 <= ratio <= 1):
        out.append(f"{where}.agents.occupancy_ratio {ratio!r}")
    return out


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_lifecycle(where: str, group: Mapping[str, Any]) -> list[str]:
    """The ``resolution`` and ``backlog`` sections and the lifecycle fields of ``chats``:
    their keys, and each value null exactly when nothing stands behind it."""
    out: list[str] = []
    resolution, backlog, chats = group["resolution"], group["backlog"], group["chats"]
    keys = {"count", *_DURATIONS, "business", "reopened", "reopen_ratio", "one_touch"}
    if not isinstance(resolution, dict) or set(resolution) != keys | {"one_touch_ratio"}:
        return [f"{where}.resolution {resolution!r}"]
    count = resolution["count"]
    values = [resolution[name] for name in (*_DURATIONS, "reopen_ratio", "one_touch_ratio")]
    values += list(resolution["business"].values())
    if not _is_int(count) or any((value is None) != (count == 0) for value in values):
        out.append(f"{where}.resolution {resolution!r} against its count")
    statuses = ("new", "open", "pending", "hold")
    if not isinstance(backlog, dict) or set(backlog) != {*statuses, "total", "oldest_age_seconds"}:
        return [*out, f"{where}.backlog {backlog!r}"]
    if sum(backlog[status] for status in statuses) != backlog["total"] or (
        backlog["oldest_age_seconds"] is None
    ) != (backlog["total"] == 0):
        out.append(f"{where}.backlog {backlog!r}")
    if any(name not in chats for name in _LIFECYCLE_CHATS) or (
        chats["longest_wait_seconds"] is None
    ) != (chats["waiting"] == 0):
        out.append(f"{where}.chats {chats!r}")
    return out


def _check_sla(where: str, group: Mapping[str, Any]) -> list[str]:
    """The ``sla`` section: achieved and breached counts and their ratio, per metric."""
    sla = group.get("sla")
    if not isinstance(sla, dict) or set(sla) != set(_SLA_METRICS):
        return [f"{where}.sla {sla!r}"]
    out = []
    for metric in _SLA_METRICS:
        part = sla[metric]
        if not isinstance(part, dict) or set(part) != {"achieved", "breached", "achieved_ratio"}:
            out.append(f"{where}.sla.{metric} {part!r}")
            continue
        achieved, breached, ratio = part["achieved"], part["breached"], part["achieved_ratio"]
        if not (_is_int(achieved) and _is_int(breached) and achieved >= 0 and breached >= 0):
            out.append(f"{where}.sla.{metric} counts {part!r}")
        elif (ratio is None) != (achieved + breached == 0) or (
            ratio is not None and not _is_number(ratio)
        ):
            out.append(f"{where}.sla.{metric}.achieved_ratio {ratio!r}")
    return out


# -- raw Redis state -----------------------------------------------------------------------


def redis_snapshot(client: redis.Redis, pattern: str) -> dict[str, Any]:
    """Every key matching ``pattern`` with its whole content, type-aware, names decoded.

    Read a scan page at a time in two pipelines (the types, then the contents): a state
    of tens of thousands of keys in a few dozen round trips, not two per key."""
    out: dict[str, Any] = {}
    cursor = None
    while cursor != 0:
        cursor, keys = client.scan(cursor or 0, match=pattern, count=1000)
        if not keys:
            continue
        with client.pipeline(transaction=False) as pipe:
            for raw_key in keys:
                pipe.type(raw_key)
            kinds = [kind.decode() for kind in pipe.execute()]
        read: list[tuple[str, str]] = []
        with client.pipeline(transaction=False) as pipe:
            for raw_key, kind in zip(keys, kinds, strict=True):
                if kind == "hash":
                    pipe.hgetall(raw_key)
                elif kind == "zset":
                    pipe.zrange(raw_key, 0, -1, withscores=True)
                elif kind == "set":
                    pipe.smembers(raw_key)
                elif kind == "string":
                    pipe.get(raw_key)
                elif kind == "none":
                    continue  # deleted meanwhile
                else:
                    pipe.dump(raw_key)
                read.append((raw_key.decode(), kind))
            contents = pipe.execute()
        for (key, kind), content in zip(read, contents, strict=True):
            # a key deleted between the two pipelines reads as empty: left out, as above
            if content is None or (kind != "string" and not content):
                continue
            out[key] = (kind, content)
    return out


def field_differences(
    left: Mapping[str, Any], right: Mapping[str, Any], names: Iterable[str]
) -> dict[str, Any]:
    """Of two :func:`redis_snapshot`-shaped states, per key of ``names`` in both whose
    content differs: of a hash, each field that differs, field -> (left's value, right's
    value; ``None`` where one has none); of another type, the two contents."""
    out: dict[str, Any] = {}
    for name in names:
        if name not in left or name not in right or left[name] == right[name]:
            continue
        mine, theirs = left[name][1], right[name][1]
        if not (isinstance(mine, Mapping) and isinstance(theirs, Mapping)):
            out[name] = (mine, theirs)
            continue
        out[name] = {
            key: (mine.get(key), theirs.get(key))
            for key in mine.keys() | theirs.keys()
            if mine.get(key) != theirs.get(key)
        }
    return out
