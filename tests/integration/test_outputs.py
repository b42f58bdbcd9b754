"""What the worker publishes (README.md, "Output topics"), read back from the output topics.

KPI snapshots on the compacted KPI topic equal ``deskpulse kpis --json`` for their window
and group; a threshold rule publishes its transitions only. The worker is the real one,
run in this process (``inproc_worker``), on the session's broker and Redis; ``sla.breached``
across ``kill -9`` and restarts, and the snapshots of a worker with an engine process, are
in tests/system/test_outputs.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from deskpulse.models.events import DIMENSIONS
from deskpulse.models.settings import AlertRule, Settings
from deskpulse.streams.devtools.simulate import SimConfig, generate
from tests.conftest import create_topics
from tests.inproc import InprocWorker
from tests.support import (
    WorkerProcess,
    consume_all,
    produce,
    run_cli,
    samples,
    scrape,
    settings_env,
    stamp,
    wait_until,
)

DIMS = DIMENSIONS
GROUP_FIELDS = {
    "key",
    "resolution",
    "backlog",
    "tickets_created",
    "first_response",
    "next_response",
    "sla",
    "chats",
    "csat",
    "nps",
    "ces",
}
SNAPSHOT_FIELDS = GROUP_FIELDS | {"schema_version", "window", "start", "end"}
#: an agent's group (``<window>|agent|<agent_id>``)
AGENT_SNAPSHOT_FIELDS = {"schema_version", "window", "start", "end", "key", "first_response"} | {
    "next_response",
    "chats",
    "csat",
    "tickets_solved",
    "presence",
}
TRANSITION_FIELDS = {
    "schema_version",
    "type",
    "rule",
    "window",
    "group",
    "value",
    "threshold",
    "at",
}

Record = tuple[str, bytes, bytes]  # (topic kind, key, value)


def fast(settings: Settings, **update: Any) -> Settings:
    """Short batches and timer intervals, for tests."""
    return settings.model_copy(
        update={
            "batch_within": 0.1,
            "metrics_refresh_interval": 1,
            "snapshot_interval": 2,
            "breach_check_interval": 1,
            **update,
        }
    )


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def event(type_: str, t_s: float, **fields: Any) -> Record:
    kind = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}[type_.split(".")[0]]
    key = fields.get("ticket_id") or fields["chat_id"]
    body = {"event_id": uuid.uuid4().hex, "type": type_, "occurred_at": stamp(t_s), **fields}
    return kind, str(key).encode(), orjson.dumps(body)


def send(settings: Settings, records: list[Record]) -> None:
    """Produce in order, per topic (a conversation's events keep their order)."""
    topics = {
        "tickets": settings.topic_tickets,
        "chats": settings.topic_chats,
        "surveys": settings.topic_surveys,
        "agents": settings.topic_agents,
    }

    async def run() -> None:
        for kind, topic in topics.items():
            mine = [(key, value) for k, key, value in records if k == kind]
            if mine:
                await produce(settings, topic, mine)

    asyncio.run(run())


def handled(settings: Settings) -> float:
    """Input records this worker has processed or rejected, from its /metrics.

    Tests poll this while a worker works: it reads only the two counters' lines (the whole
    exposition, thousands of KPI lines, costs the test process a tenth of a second to parse).
    """
    names = ("deskpulse_events_processed_total", "deskpulse_events_rejected_total")
    kept = names + tuple(f"# TYPE {name.removesuffix('_total')} " for name in names)
    lines = [line for line in scrape(settings.web_port).splitlines() if line.startswith(kept)]
    text = "\n".join(lines) + "\n"
    return sum(value for name in names for _, value in samples(text, name))


def read_topic(
    settings: Settings, topic: str, expected: int, timeout_s: float = 60, settle_s: float = 2
) -> list[tuple[str, dict[str, Any]]]:
    """Every record of an output topic as ``(key, JSON payload)``, in offset order."""
    records = asyncio.run(
        consume_all(settings.kafka_bootstrap, topic, expected, timeout_s, settle_s=settle_s)
    )
    records.sort(key=lambda r: (r.partition, r.offset))
    return [(r.key.decode(), orjson.loads(r.value)) for r in records]


def kpis(settings: Settings, cwd: Path, *args: str) -> dict[str, Any]:
    done = run_cli(["kpis", "--json", *args], settings_env(settings), cwd=cwd)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


# -- KPI snapshots ----------------------------------------------------------------------------


def test_kpi_snapshots_match_kpis_for_every_window_and_group(
    settings: Settings, tmp_path: Path, inproc_worker: Callable[..., InprocWorker]
) -> None:
    check_snapshots_match_kpis(settings, tmp_path, lambda tuned: inproc_worker(tuned, timeout_s=90))


def check_snapshots_match_kpis(
    settings: Settings, tmp_path: Path, start: Callable[[Settings], InprocWorker | WorkerProcess]
) -> None:
    """Traffic of the last ten minutes through a worker ``start`` starts on ``settings``
    (tuned here): its latest KPI snapshot of every window and group equals that group of
    ``deskpulse kpis`` at the snapshot's end, and every group has one."""
    settings = fast(settings, windows=(900, 3600, 86400))
    create_topics(settings)
    now = time.time()
    # Event times 10 to 1 minutes ago: every group stays in every window for minutes.
    records = [
        (r.topic_kind, r.key, r.value)
        for r in generate(
            SimConfig(
                seed=5,
                start_s=now - 600,
                duration_s=540,
                rate=2.0,
                survey_ratio=0.6,
                response_scale=0.02,
                presence=True,
            )
        )
    ]
    assert any(kind == "agents" for kind, _, _ in records)
    worker = start(settings)
    send(settings, records)
    wait_until(lambda: handled(settings) >= len(records), 60, message=worker.describe)
    # a refresh after the last batch, then a few snapshots of the final state
    time.sleep(settings.metrics_refresh_interval + 3 * settings.snapshot_interval + 1)
    assert worker.stop() == 0, worker.describe()

    messages = read_topic(settings, settings.topic_kpis, expected=1, timeout_s=60, settle_s=5)
    assert messages, "no KPI snapshot was published"
    latest: dict[str, dict[str, Any]] = {}
    for key, payload in messages:
        window, *dims = key.split("|")
        if dims[0] == "agent":  # an agent's group
            assert len(dims) == 2 and payload["key"] == {"agent": dims[1]}, key
            assert set(payload) == AGENT_SNAPSHOT_FIELDS, (key, sorted(payload))
            latest[key] = payload
            continue
        # the total alone has the agents' presence (kept over all groups)
        extra = {"agents"} if dims == ["*", "*", "*"] else set()
        assert set(payload) == SNAPSHOT_FIELDS | extra, (key, sorted(payload))
        assert payload["schema_version"] == 1
        assert window in settings.window_names, key
        assert payload["window"] == window, key
        assert len(dims) == 3, key
        if dims == ["*", "*", "*"]:
            assert payload["key"] == {}, key
        else:
            assert "*" not in dims, key
            assert payload["key"] == dict(zip(DIMS, dims, strict=True)), key
        latest[key] = payload

    documents: dict[tuple[str, str, str], dict[str, Any]] = {}

    def document(window: str, end: str, grouped: str) -> dict[str, Any]:
        if (window, end, grouped) not in documents:
            by = ["--by", grouped] if grouped else []
            documents[(window, end, grouped)] = kpis(
                settings, tmp_path, "--window", window, "--at", end, *by
            )
        return documents[(window, end, grouped)]

    def grouping(key: dict[str, str]) -> str:
        return "agent" if "agent" in key else ",".join(DIMS) if key else ""

    # The latest value of every key is the group of `kpis` for its window, at its end.
    for key, payload in latest.items():
        window = payload["window"]
        doc = document(window, payload["end"], grouping(payload["key"]))
        assert (payload["start"], payload["end"]) == (doc["window"]["start"], doc["window"]["end"])
        groups = {json.dumps(g["key"], sort_keys=True): g for g in doc["groups"]}
        expected = groups.get(json.dumps(payload["key"], sort_keys=True))
        assert expected is not None, f"{key}: no such group in kpis --at {payload['end']}"
        got = {name: payload[name] for name in set(expected)}
        assert got == expected, key

    # Every window has its total, and every group `kpis` knows has its key.
    for window in settings.window_names:
        total = latest.get(f"{window}|*|*|*")
        assert total is not None, f"no total for {window}"
        assert total["tickets_created"] > 0, total
        assert sum(total["agents"][s] for s in ("available", "busy", "away")) > 0, total
        doc = document(window, total["end"], ",".join(DIMS))
        assert len(doc["groups"]) >= 5, doc["groups"]
        for group in doc["groups"]:
            key = "|".join([window, *(group["key"][d] for d in DIMS)])
            assert key in latest, f"no snapshot for {key}"
        # and every agent `kpis --by agent` knows
        agents = document(window, total["end"], "agent")["groups"]
        assert len(agents) >= 10, agents
        assert sum(g["first_response"]["count"] for g in agents) > 0, agents
        for group in agents:
            assert f"{window}|agent|{group['key']['agent']}" in latest, group["key"]
        width = {"15m": 900, "1h": 3600, "24h": 86400}[window]
        start, end = parse_time(total["start"]), parse_time(total["end"])
        assert end - start == timedelta(seconds=width)
        assert end.timestamp() % settings.bucket_seconds == 0


# -- threshold rules --------------------------------------------------------------------------

RULE = AlertRule(
    name="AbandonHigh",
    metric="chat_abandonment_ratio",
    window="15m",
    op=">",
    threshold=0.1,
    min_samples=5,
)
RULE_KEY = "AbandonHigh|15m|*|*|*"
FIRING_LABELS = {
    "rule": "AbandonHigh",
    "window": "15m",
    "channel": "*",
    "queue": "*",
    "priority": "*",
}


def firing_gauge(settings: Settings) -> float | None:
    for found, value in samples(scrape(settings.web_port), "deskpulse_alert_firing"):
        if found == FIRING_LABELS:
            return value
    return None


def chats(prefix: str, count: int, start_s: float, *, abandoned: bool) -> Iterator[Record]:
    for n in range(count):
        chat_id = f"{prefix}-{n}"
        at = start_s + n
        yield event("chat.requested", at, chat_id=chat_id, queue="general")
        if abandoned:
            yield event("chat.abandoned", at + 60, chat_id=chat_id)
        else:
            yield event("chat.accepted", at + 8, chat_id=chat_id)


def transitions(settings: Settings, expected: int) -> list[tuple[str, dict[str, Any]]]:
    return read_topic(settings, settings.topic_alerts, expected, timeout_s=60, settle_s=2)


def check_transition(key: str, payload: dict[str, Any], type_: str) -> None:
    assert key == RULE_KEY
    assert set(payload) - {"metric"} == TRANSITION_FIELDS, sorted(payload)
    assert payload["schema_version"] == 1
    assert payload["type"] == type_
    assert payload["rule"] == RULE.name
    assert payload["window"] == "15m"
    assert payload["group"] == {}
    assert payload["threshold"] == RULE.threshold
    assert parse_time(payload["at"]).tzinfo is not None


def test_threshold_rule_publishes_transitions_only(
    settings: Settings, tmp_path: Path, inproc_worker: Callable[..., InprocWorker]
) -> None:
    settings = fast(settings, alert_rules=(RULE,))
    create_topics(settings)
    now = time.time()
    worker = inproc_worker(settings, timeout_s=90)
    # half of six chats abandoned: 0.5 over 6 samples
    first = [
        *chats("answered", 3, now - 400, abandoned=False),
        *chats("abandoned", 3, now - 390, abandoned=True),
    ]
    send(settings, first)
    found = transitions(settings, 1)
    time.sleep(4 * settings.snapshot_interval)  # more evaluations: no repeats
    found = transitions(settings, 1)
    assert [p["type"] for _, p in found] == ["alert.firing"], found
    check_transition(*found[0], "alert.firing")
    assert found[0][1]["value"] > RULE.threshold
    wait_until(lambda: firing_gauge(settings) == 1.0, 20, message=worker.describe)

    # forty answered chats: 3 / 46 is under the threshold
    second = list(chats("busy", 40, now - 300, abandoned=False))
    send(settings, second)
    wait_until(lambda: handled(settings) >= len(first) + len(second), 60, message=worker.describe)
    found = transitions(settings, 2)
    time.sleep(4 * settings.snapshot_interval)
    found = transitions(settings, 2)
    assert [p["type"] for _, p in found] == ["alert.firing", "alert.resolved"], found
    check_transition(*found[1], "alert.resolved")
    resolved_value = found[1][1]["value"]
    assert resolved_value is not None
    assert resolved_value <= RULE.threshold
    wait_until(lambda: firing_gauge(settings) != 1.0, 20, message=worker.describe)
    document = kpis(settings, tmp_path, "--window", "15m")
    chats_now = document["groups"][0]["chats"]
    assert (chats_now["answered"], chats_now["abandoned"]) == (43, 3)
    assert worker.stop() == 0, worker.describe()
