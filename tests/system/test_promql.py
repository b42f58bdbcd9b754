"""PromQL over a real Prometheus server scraping a live worker every second.

The windowed event-time gauges, queried and aggregated in PromQL, give back what
``deskpulse kpis --json`` reads from the store; the cumulative counters work with
``rate()`` and ``increase()``. Prometheus is the Debian binary, started on a free port
with its own TSDB directory and stopped at the end; its log is printed on failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from deskpulse.models.settings import RECORD_KINDS, Settings
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port
from deskpulse.streams.devtools.simulate import SimConfig, generate
from tests.conftest import HOST, create_topics
from tests.support import (
    ServedProcess,
    WorkerProcess,
    http_get,
    produce,
    run_cli,
    samples,
    scrape,
    settings_env,
    stamp,
    wait_until,
)

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: deskpulse
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


class PrometheusServer(ServedProcess):
    """A ``prometheus`` process scraping one target, and its HTTP query API."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (Debian package prometheus)")
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(target=target))
        port = free_port(HOST)
        process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                "--log.level=info",
            ],
            workdir / "prometheus.log",
            cwd=workdir,
        )
        super().__init__("prometheus", process, f"http://{HOST}:{port}")

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query at now: each series' labels and value."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        response = http_get(url, timeout_s=10)
        assert response is not None, self.describe()
        body = json.loads(response.body)
        assert response.status == 200, (expr, body)
        assert body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def by(self, expr: str, *names: str) -> dict[tuple[str, ...], float]:
        """``expr``'s series keyed by the values of ``names``."""
        return {tuple(m.get(n, "") for n in names): v for m, v in self.query(expr)}


def fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "batch_within": 0.1,
            "metrics_refresh_interval": 1,
            "snapshot_interval": 2,
            "breach_check_interval": 1,
        }
    )


@pytest.fixture
def worker(settings: Settings, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    tuned = fast(settings)
    create_topics(tuned)
    return start_worker(tuned, timeout_s=90)


@pytest.fixture
def prometheus(worker: WorkerProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    settings = worker.settings
    server = PrometheusServer(tmp_path / "prometheus", f"{settings.web_host}:{settings.web_port}")
    try:
        server.wait_ready()
        wait_until(
            lambda: server.by('up{job="deskpulse"}') == {(): 1.0},
            30,
            message=server.describe,
        )
        yield server
    finally:
        server.stop()
        # shown by pytest when the test failed
        print(f"--- {server.process.log_path} ---\n{server.process.log_tail(200)}")


def kpis(settings: Settings, cwd: Path, *args: str) -> dict[str, Any]:
    done = run_cli(["kpis", "--json", *args], settings_env(settings), cwd=cwd)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def handled(port: int) -> float:
    text = scrape(port)
    return sum(
        value
        for name in ("deskpulse_events_processed_total", "deskpulse_events_rejected_total")
        for _, value in samples(text, name)
    )


def send(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> None:
    topics = {kind: settings.topic_for(kind) for kind in RECORD_KINDS}

    async def run() -> None:
        for kind, topic in topics.items():
            mine = [(key, value) for k, key, value in records if k == kind]
            if mine:
                await produce(settings, topic, mine)

    asyncio.run(run())


def differences(
    found: dict[tuple[str, ...], float], expected: dict[tuple[str, ...], float]
) -> list[str]:
    out = []
    for key in found.keys() | expected.keys():
        if key not in found:
            out.append(f"{key}: missing in Prometheus (expected {expected[key]!r})")
        elif key not in expected:
            out.append(f"{key}: unexpected in Prometheus ({found[key]!r})")
        elif not math.isclose(found[key], expected[key], rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{key}: Prometheus {found[key]!r}, kpis {expected[key]!r}")
    return sorted(out)


def test_promql_gives_back_what_kpis_reports(
    worker: WorkerProcess, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    settings = worker.settings
    now = time.time()
    # Event times 50 to 5 minutes ago: inside the 1h window of both readers for minutes.
    simulated = list(
        generate(
            SimConfig(
                seed=23,
                start_s=now - 3000,
                duration_s=2700,
                rate=0.5,
                survey_ratio=0.6,
                response_scale=0.1,
            )
        )
    )
    send(settings, [(r.topic_kind, r.key, r.value) for r in simulated])
    wait_until(lambda: handled(settings.web_port) >= len(simulated), 60, message=worker.describe)

    def total_in_prometheus() -> float:
        return sum(v for _, v in prometheus.query("deskpulse_tickets_created_total"))

    def total_in_worker() -> float:
        return sum(
            v for _, v in samples(scrape(settings.web_port), "deskpulse_tickets_created_total")
        )

    # tickets in the traffic (no faults: each ticket.created opens one ticket)
    ticket_events = [orjson.loads(r.value) for r in simulated if r.topic_kind == "tickets"]
    first_total = len({e["ticket_id"] for e in ticket_events if e["type"] == "ticket.created"})
    wait_until(lambda: total_in_worker() == first_total, 30, message=worker.describe)
    wait_until(lambda: total_in_prometheus() == first_total, 30, message=prometheus.describe)

    # A second round while Prometheus watches: the counters move, rate() sees it.
    extra = [
        (
            "tickets",
            f"extra-{n}".encode(),
            orjson.dumps(
                {
                    "event_id": uuid.uuid4().hex,
                    "type": "ticket.created",
                    "occurred_at": stamp(now - 600 + n),
                    "ticket_id": f"extra-{n}",
                    "channel": "email",
                    "queue": "billing",
                    "priority": "high",
                }
            ),
        )
        for n in range(7)
    ]
    send(settings, extra)
    wait_until(
        lambda: total_in_prometheus() == first_total + len(extra),
        30,
        message=prometheus.describe,
    )
    rates = prometheus.query("rate(deskpulse_tickets_created_total[1m])")
    assert rates, "rate() over the counter gives series"
    assert {"channel", "queue", "priority", "job", "instance"} <= set(rates[0][0])
    increase = prometheus.by(
        'sum(increase(deskpulse_tickets_created_total{channel="email",queue="billing",'
        'priority="high"}[1m]))'
    )
    assert increase[()] > 0, increase
    buckets = "deskpulse_first_response_duration_seconds_bucket"
    assert prometheus.query(f"histogram_quantile(0.9, sum by (le) (rate({buckets}[1m])))"), (
        "histogram_quantile() works over the first-response histogram"
    )

    # The windowed gauges against `deskpulse kpis` over the same store.
    window = '{window="1h"}'

    def compare() -> list[str]:
        out: list[str] = []
        by_channel = kpis(settings, tmp_path, "--window", "1h", "--by", "channel")
        by_group = kpis(settings, tmp_path, "--window", "1h", "--by", "channel,queue,priority")
        total = kpis(settings, tmp_path, "--window", "1h")["groups"][0]
        channels = {g["key"]["channel"]: g for g in by_channel["groups"]}
        for metric, pick in (
            ("deskpulse_tickets_created", lambda g: g["tickets_created"]),
            ("deskpulse_chats_requested", lambda g: g["chats"]["requested"]),
            ("deskpulse_csat_responses", lambda g: g["csat"]["responses"]),
            ("deskpulse_first_responses", lambda g: g["first_response"]["count"]),
        ):
            found = prometheus.by(f"sum by (channel) ({metric}{window})", "channel")
            expected = {(c,): float(pick(g)) for c, g in channels.items()}
            out += [f"{metric} by channel: {d}" for d in differences(found, expected)]
            found = prometheus.by(f"sum({metric}{window})")
            out += [f"{metric} total: {d}" for d in differences(found, {(): float(pick(total))})]
        # a ratio per channel, rebuilt in PromQL from the per-group ratios and their counts
        found = prometheus.by(
            f"sum by (channel) (deskpulse_csat_ratio{window} * deskpulse_csat_responses{window})"
            f" / sum by (channel) (deskpulse_csat_responses{window})",
            "channel",
        )
        found = {k: v for k, v in found.items() if not math.isnan(v)}
        expected = {
            (c,): g["csat"]["ratio"] for c, g in channels.items() if g["csat"]["ratio"] is not None
        }
        out += [f"csat ratio by channel: {d}" for d in differences(found, expected)]
        # the ratio as exported, group by group; groups without responses have none
        names = ("channel", "queue", "priority")
        for metric, pick in (
            ("deskpulse_csat_ratio", lambda g: g["csat"]["ratio"]),
            ("deskpulse_chat_abandonment_ratio", lambda g: g["chats"]["abandonment_ratio"]),
            (
                "deskpulse_first_response_within_target_ratio",
                lambda g: g["first_response"]["within_target_ratio"],
            ),
        ):
            found = prometheus.by(f"{metric}{window}", *names)
            expected = {
                tuple(g["key"][n] for n in names): pick(g)
                for g in by_group["groups"]
                if pick(g) is not None
            }
            out += [f"{metric}: {d}" for d in differences(found, expected)]
        return out

    problems: list[str] = []

    def agree() -> bool:
        problems[:] = compare()
        return not problems

    wait_until(agree, 60, 1.0, message=lambda: "\n".join(problems[:40]))
    # and the comparison was not vacuous
    by_channel = kpis(settings, tmp_path, "--window", "1h", "--by", "channel")["groups"]
    assert len([g for g in by_channel if g["tickets_created"]]) >= 4, by_channel
    assert len([g for g in by_channel if g["csat"]["ratio"] is not None]) >= 3, by_channel
    assert len(prometheus.query(f"deskpulse_csat_ratio{window}")) >= 5
    assert worker.running, worker.describe()
