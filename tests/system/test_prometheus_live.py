"""A live worker's ``/metrics`` (README.md, "Prometheus metrics"), read after realistic
simulated traffic and held against :data:`exporters.catalog.CATALOG` and
``promtool check metrics``. The collector's own tests, against Redis state written in
process, are tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deskpulse import __version__
from deskpulse.exporters.catalog import CATALOG, first_response_buckets
from deskpulse.models.settings import RECORD_KINDS, Settings
from deskpulse.streams.devtools.embedded import free_port
from deskpulse.streams.devtools.simulate import Record, SimConfig, generate
from tests.conftest import HOST, RedisServer, create_topics, new_settings
from tests.integration.test_prometheus import DIMS, event
from tests.support import WorkerProcess, produce, samples, scrape, wait_until

# Catalogued families the worker may leave out of /metrics (none at the moment).
KNOWN_GAPS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Live:
    settings: Settings
    worker: WorkerProcess
    text: str
    #: when ``text`` was scraped (the module's tests read it later: minutes later on a busy host)
    scraped_at: float


def _processed(port: int) -> float:
    text = scrape(port)
    return sum(
        v
        for name in ("deskpulse_events_processed_total", "deskpulse_events_rejected_total")
        for _, v in samples(text, name)
    )


@pytest.fixture(scope="module")
def live(
    broker: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """One worker fed an hour of realistic traffic (with every fault), for the tests below."""
    settings = new_settings(
        broker,
        redis_server.url,
        batch_within=0.1,
        metrics_refresh_interval=1,
        snapshot_interval=2,
        breach_check_interval=1,
        # the per-agent families too, so the catalog is checked whole both ways
        agent_metrics=True,
    )
    create_topics(settings)
    now = time.time()
    records = list(
        generate(
            SimConfig(
                seed=11,
                start_s=now - 3300,
                duration_s=3000,
                rate=0.6,
                # lifecycles of minutes, not hours: solves, reopens, next responses and
                # handled chats all fall within the 50 minutes
                lifecycle_scale=0.05,
                duplicate_ratio=0.02,
                out_of_order=0.05,
                malformed_ratio=0.01,
                orphan_ratio=0.01,
                presence=True,  # the agents' status and occupancy families
            )
        )
    )
    # two events older than the retention behind the newest: counted as late, not applied
    for n in range(2):
        kind, key, value = event("ticket.created", now - 3 * 86_400, ticket_id=f"late-{n}")
        records.append(Record(kind, key, value, now - 3 * 86_400))
    topics = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}
    with WorkerProcess(settings, tmp_path_factory.mktemp("live")) as worker:
        worker.wait_ready(90)

        async def send() -> None:
            for kind, topic in topics.items():
                await produce(
                    settings, topic, [(r.key, r.value) for r in records if r.topic_kind == kind]
                )

        asyncio.run(send())
        wait_until(
            lambda: _processed(settings.web_port) >= len(records), 60, message=worker.describe
        )
        # a refresh after the last batch, and a breach check for the SLA counter
        time.sleep(settings.metrics_refresh_interval + settings.breach_check_interval + 1)
        text = scrape(settings.web_port)
        yield Live(settings, worker, text, time.time())


def _types(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            found[name] = kind
    return found


def _helps(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            _, _, name, help_ = line.split(" ", 3)
            found[name] = help_.replace("\\\\", "\\").replace("\\n", "\n")
    return found


def test_every_exported_family_is_catalogued_and_the_other_way_round(live: Live) -> None:
    exported = _types(live.text)
    assert not set(exported) - set(CATALOG), "exported but not in the catalog"
    missing = set(CATALOG) - set(exported)
    assert missing <= KNOWN_GAPS, f"catalogued but not exported: {sorted(missing)}"
    for name, kind in exported.items():
        assert kind == CATALOG[name].kind, name
    # the traffic was realistic enough to give every family samples
    with_samples = {
        family.name for family in text_string_to_metric_families(live.text) if family.samples
    }
    bare = {name.removesuffix("_total") for name in exported} - with_samples
    assert bare <= {"deskpulse_alert_firing", "deskpulse_series_dropped"}, bare


def test_build_info_is_exported(live: Live) -> None:
    assert samples(live.text, "deskpulse_build_info") == [({"version": __version__}, 1.0)]


def test_exported_labels_match_the_catalog(live: Live) -> None:
    for family in text_string_to_metric_families(live.text):
        for found in family.samples:
            name = found.name if found.name in CATALOG else family.name
            if name not in CATALOG:
                name = family.name + "_total"
            spec = CATALOG[name]
            extra = {"le"} if spec.kind == "histogram" and found.name.endswith("_bucket") else set()
            expected = set(spec.labels) | extra
            if spec.kind == "summary" and found.name != spec.name:
                expected -= {"quantile"}  # the window's _count and _sum
            elif spec.quantiles:
                assert found.labels["quantile"] in spec.quantiles, found
            assert set(found.labels) == expected, found
            if "window" in found.labels:
                assert found.labels["window"] in live.settings.window_names, found
            for dim in DIMS:
                if dim in found.labels:
                    assert len(found.labels[dim]) <= live.settings.label_max_length, found
    # labels never carry ticket, chat, customer or agent ids (README, Prometheus metrics)
    assert "ticket_id" not in live.text
    assert "chat_id" not in live.text
    assert "agent_id" not in live.text


def _bounds(text: str, name: str) -> set[str]:
    return {found["le"] for found, _ in samples(text, name + "_bucket")}


@pytest.mark.parametrize(
    "name",
    [
        "deskpulse_first_response_duration_seconds",
        "deskpulse_flush_duration_seconds",
        "deskpulse_batch_events",
    ],
)
def test_histogram_bounds_match_the_catalog(live: Live, name: str) -> None:
    spec = CATALOG[name]
    expected = set(spec.buckets)
    if name == "deskpulse_first_response_duration_seconds":
        expected = set(first_response_buckets(live.settings.first_response_targets.values()))
    assert _bounds(live.text, name) == {*(str(float(b)) for b in expected), "+Inf"}


def test_help_texts_come_from_the_catalog(live: Live) -> None:
    differing = {
        name: help_
        for name, help_ in _helps(live.text).items()
        if name in CATALOG and help_ != CATALOG[name].help
    }
    assert not differing, sorted(differing)


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return subprocess.run(
        [binary, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The windowed quantile gauges carry the `quantile` label the README names; promtool's lint
# reserves that label for summaries.
QUANTILE_LINT = 'non-summary metrics should not have "quantile" label'


def test_promtool_finds_nothing_but_the_quantile_label_lint(live: Live) -> None:
    done = promtool(live.text)
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and QUANTILE_LINT not in line
    ]
    assert not problems, problems
    assert done.returncode in (0, 3), done  # 3: lint problems only


def test_promtool_check_metrics_is_clean(live: Live) -> None:
    done = promtool(live.text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout
    assert not done.stderr.strip(), done.stderr


def test_live_metrics_show_the_traffic(live: Live) -> None:
    text = live.text
    created = sum(v for _, v in samples(text, "deskpulse_tickets_created_total"))
    windowed = sum(
        v for found, v in samples(text, "deskpulse_tickets_created") if found["window"] == "24h"
    )
    assert created > 100
    assert windowed == created  # all of it happened within the last day
    rejected = sum(v for _, v in samples(text, "deskpulse_events_rejected_total"))
    duplicates = sum(v for _, v in samples(text, "deskpulse_events_duplicate_total"))
    assert rejected > 0
    assert duplicates > 0
    assert samples(text, "deskpulse_redis_up") == [({}, 1.0)]
    refreshed = samples(text, "deskpulse_kpi_refresh_timestamp_seconds")
    assert refreshed
    assert live.scraped_at - refreshed[0][1] < 60
    # how long the worker waited for that refresh: measured, and well under its interval
    ((_, took),) = samples(text, "deskpulse_kpi_refresh_duration_seconds")
    assert 0 < took < 30, took
    assert Path(live.worker.log_path).exists()


def test_breach_checks_and_snapshots_say_when_they_last_completed(live: Live) -> None:
    """Every breach check and every pass of the outputs that completes moves its timestamp
    (1 s and 2 s intervals here); the check says how long it took. Alert rules page when
    either grows old."""
    names = (
        "deskpulse_breach_check_timestamp_seconds",
        "deskpulse_snapshot_publish_timestamp_seconds",
    )
    first = {name: samples(live.text, name)[0][1] for name in names}
    for name, stamp in first.items():
        assert live.scraped_at - stamp < 30, name

    def moved() -> tuple[dict[str, float], float] | None:
        text = scrape(live.settings.web_port)
        last = {name: samples(text, name)[0][1] for name in names}
        ((_, took),) = samples(text, "deskpulse_breach_check_duration_seconds")
        return (last, took) if all(last[name] > first[name] for name in names) else None

    last, took = wait_until(moved, 30, message=live.worker.describe)
    for name, stamp in last.items():
        assert time.time() - stamp < 30, name
    assert 0 < took < 10, took
    # the alerts' thresholds scale with the intervals the worker runs at
    intervals = {
        name: samples(live.text, f"deskpulse_{name}_seconds")
        for name in ("kpi_refresh_interval", "breach_check_interval", "snapshot_interval")
    }
    assert intervals == {
        "kpi_refresh_interval": [({}, live.settings.metrics_refresh_interval)],
        "breach_check_interval": [({}, live.settings.breach_check_interval)],
        "snapshot_interval": [({}, live.settings.snapshot_interval)],
    }


def test_a_worker_without_partitions_still_completes_its_breach_checks(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    """One input partition, two workers: the one the group leaves without an input
    partition has nothing to check, and says each empty check completed, so the
    stalled-checks alert does not page for it. (Faust's leader topic, which the group's
    leader holds, counts as no input partition by the same rule; here the leader holds
    the input partition too.)"""
    settings = settings.model_copy(update={"topic_partitions": 1, "breach_check_interval": 1})
    create_topics(settings)
    first = start_worker(settings, tmp_path / "w1", name="w1", timeout_s=90)
    second = start_worker(
        settings.model_copy(update={"web_port": free_port(HOST)}),
        tmp_path / "w2",
        name="w2",
        ready=False,
    )

    def partitions(worker: WorkerProcess) -> float | None:
        """The input partitions the worker holds, by its /readyz, None while it cannot say."""
        response = worker.get("/readyz", timeout_s=5)
        if response is None:
            return None
        return 0.0 if b"no input partitions assigned" in response.body else 1.0

    def check(worker: WorkerProcess) -> tuple[float, float]:
        """(when its last breach check completed, how long it took: 0 before the first)."""
        text = scrape(worker.settings.web_port)
        ((_, at),) = samples(text, "deskpulse_breach_check_timestamp_seconds")
        ((_, took),) = samples(text, "deskpulse_breach_check_duration_seconds")
        return at, took

    # the group settles with one member on the partition and one without
    wait_until(
        lambda: {partitions(first), partitions(second)} == {0.0, 1.0},
        90,
        message=lambda: first.describe() + second.describe(),
    )
    idle = first if partitions(first) == 0.0 else second
    since, _ = check(idle)
    wait_until(lambda: check(idle)[0] > since and check(idle)[1] > 0, 30, message=idle.describe)
