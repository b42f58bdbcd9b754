"""A real worker with thousands of queues, scraped: every guarded family stays within its
series budget, ``deskpulse_series_dropped_total`` only grows, and the KPI topic's snapshots
stay within their message budget, publishing every group shown at the full interval and
only what changed in between. The guard's own tests, on Redis state written in
process, are tests/integration/test_hardening_outputs.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from deskpulse.models.settings import Settings
from tests.conftest import create_topics
from tests.integration.test_hardening_outputs import (
    GUARDED,
    labelled,
    many_queues,
    series_per_family,
)
from tests.support import StartWorker, consume_all, produce, scrape, wait_until


def test_a_worker_with_thousands_of_queues_keeps_metrics_and_snapshots_bounded(
    settings: Settings, workdir: Path, start_worker: StartWorker
) -> None:
    limit, messages = 400, 300
    settings = settings.model_copy(
        update={
            "windows": (900, 3600, 86400),
            "max_series_per_metric": limit,
            "max_snapshot_messages": messages,
            "metrics_refresh_interval": 1,
            "snapshot_interval": 2,
            # every third snapshot publishes every group shown; the others what changed
            "snapshot_full_interval": 6,
        }
    )
    create_topics(settings)
    now_s = time.time()
    events = list(many_queues(3000, now_s))
    by_topic: dict[str, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
    for kind, key, value in events:
        by_topic[settings.topic_for(kind)].append((key, value))
    worker = start_worker(settings, workdir, timeout_s=90)
    for topic, pairs in by_topic.items():
        asyncio.run(produce(settings, topic, pairs))

    def applied() -> float:
        text = scrape(settings.web_port)
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "deskpulse_events_processed_total"
        )

    wait_until(lambda: applied() >= len(events), 180, 1.0, message=worker.describe)
    time.sleep(2 * settings.metrics_refresh_interval + 1)
    first = scrape(settings.web_port)
    time.sleep(3 * settings.metrics_refresh_interval)
    second = scrape(settings.web_port)
    time.sleep(3 * settings.snapshot_interval)
    assert worker.running, worker.describe()
    worker.stop(timeout_s=15)
    for text in (first, second):
        exposed = series_per_family(text)
        for name in GUARDED:
            assert exposed.get(name, 0) <= limit, (name, exposed.get(name))
        assert labelled(text, "deskpulse_series_folded")["deskpulse_first_response_seconds"] > 0
    before = labelled(first, "deskpulse_series_dropped_total")
    after = labelled(second, "deskpulse_series_dropped_total")
    assert all(after[name] >= before[name] for name in GUARDED)
    assert after["deskpulse_tickets_created"] > before["deskpulse_tickets_created"]
    size = len(first.encode())
    assert size < 2_000_000, f"{size} bytes for {len(events)} events over 3,000 queues"

    # snapshots in publishing order: each begins with the first window's total
    records = asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic_kpis, 1, 30))
    records.sort(key=lambda r: r.offset)
    snapshots: list[list[str]] = []
    for record in records:
        key = record.key.decode()
        if key == "15m|*|*|*":
            snapshots.append([])
        if snapshots:
            snapshots[-1].append(key)
    complete = [s for s in snapshots[:-1] if s]  # the last one may still be arriving
    assert complete, f"{len(records)} KPI messages, no whole snapshot"
    for keys in complete:
        assert len(keys) <= messages, len(keys)
        assert len(set(keys)) == len(keys)
    # the last ones were taken once everything was applied: a full one had to fold, and
    # one in between publishes only what changed (the totals, at least)
    last = complete[-4:]
    full = [keys for keys in last if len(keys) == messages]
    assert full, [len(keys) for keys in last]
    assert "24h|other|other|other" in full[-1]
    assert any(len(keys) < messages for keys in last), [len(keys) for keys in last]
