"""The shipped Alertmanager configuration, run: what its inhibition rules mute, and what not.

``amtool check-config`` (tests/unit/test_assets.py) says the file parses; it cannot say
that a rule mutes the alerts it is written for and leaves the others to page. Here the
Debian ``prometheus-alertmanager`` binary runs the file as shipped, on a free port
without clustering, is sent alerts as Prometheus sends them (``POST /api/v2/alerts``),
and says which it holds back (``status.inhibitedBy``). The receivers' addresses do not
resolve here: a notification fails and is retried, which changes no alert's status.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deskpulse.streams.devtools.embedded import ManagedProcess, free_port
from tests.conftest import HOST
from tests.support import ServedProcess, http_get, wait_until

CONFIG = Path(__file__).parents[2] / "exporters/assets/alertmanager/alertmanager.yml"
KEY = ("alertname", "job", "severity")
Key = tuple[str, ...]


class Alertmanager(ServedProcess):
    """An Alertmanager process on the shipped configuration, and its v2 API."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            pytest.skip("alertmanager is not installed (Debian package prometheus-alertmanager)")
        workdir.mkdir(parents=True, exist_ok=True)
        address = f"{HOST}:{free_port(HOST)}"
        process = ManagedProcess(
            "alertmanager",
            [
                binary,
                f"--config.file={CONFIG}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address={address}",
                "--cluster.listen-address=",  # no gossip port: one instance, nothing shared
                "--log.level=info",
            ],
            workdir / "alertmanager.log",
            cwd=workdir,
        )
        super().__init__("alertmanager", process, f"http://{address}")

    def fire(self, *alerts: Mapping[str, str]) -> None:
        """Each label set as a firing alert, as Prometheus posts them."""
        now = datetime.now(UTC)
        body = [
            {
                "labels": dict(labels),
                "startsAt": now.isoformat(),
                "endsAt": (now + timedelta(minutes=10)).isoformat(),
            }
            for labels in alerts
        ]
        request = urllib.request.Request(
            self.url + "/api/v2/alerts",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, self.describe()

    def muted(self) -> dict[Key, bool]:
        """(alertname, job, severity) of every alert it holds -> whether an inhibition
        mutes it."""
        response = http_get(self.url + "/api/v2/alerts", timeout_s=10)
        assert response is not None and response.status == 200, self.describe()
        return {
            tuple(alert["labels"].get(name, "") for name in KEY): bool(
                alert["status"]["inhibitedBy"]
            )
            for alert in json.loads(response.body)
        }


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    server = Alertmanager(tmp_path / "alertmanager")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def settled(alertmanager: Alertmanager, expected: int) -> dict[Key, bool]:
    """The muted map once every alert sent is held and two reads a moment apart agree
    (the inhibitor takes in a source alert on its own goroutine)."""
    last: dict[Key, bool] = {}

    def agreed() -> dict[Key, bool] | None:
        nonlocal last
        now = alertmanager.muted()
        same = now == last and len(now) == expected
        last = now
        return now if same else None

    return wait_until(agreed, 30, 0.5, message=alertmanager.describe)


def test_the_shipped_inhibitions_mute_what_a_cause_explains_and_nothing_else(
    alertmanager: Alertmanager,
) -> None:
    page, ticket = {"severity": "page"}, {"severity": "ticket"}
    worker, other, ingest = {"job": "deskpulse"}, {"job": "other"}, {"job": "deskpulse-ingest"}
    alertmanager.fire(
        # the cause: the broker does not answer the worker of job "deskpulse"
        {"alertname": "DeskpulseBrokerDown", **worker, **page},
        # what it explains, on the same job
        {"alertname": "DeskpulseKpisStale", **worker, **page},
        {"alertname": "DeskpulseBreachChecksStalled", **worker, **page},
        {"alertname": "DeskpulsePipelineLagging", **worker, **ticket},
        # and the ingest server's 503s, scraped as another job
        {"alertname": "DeskpulseIngestUnavailable", **ingest, **page},
        # not explained by it: another job's staleness, refused webhooks (a secret), an
        # ingest server that cannot be scraped
        {"alertname": "DeskpulseKpisStale", **other, **page},
        {"alertname": "DeskpulseWebhooksRefused", **ingest, **page},
        {"alertname": "DeskpulseIngestDown", **ingest, **page},
        # a fast error-budget burn mutes the slow one of its job only
        {"alertname": "FirstResponseErrorBudgetBurn", **worker, **page},
        {"alertname": "FirstResponseErrorBudgetBurn", **worker, **ticket},
        {"alertname": "FirstResponseErrorBudgetBurn", **other, **ticket},
    )
    assert settled(alertmanager, 11) == {
        ("DeskpulseBrokerDown", "deskpulse", "page"): False,
        ("DeskpulseKpisStale", "deskpulse", "page"): True,
        ("DeskpulseBreachChecksStalled", "deskpulse", "page"): True,
        ("DeskpulsePipelineLagging", "deskpulse", "ticket"): True,
        ("DeskpulseIngestUnavailable", "deskpulse-ingest", "page"): True,
        ("DeskpulseKpisStale", "other", "page"): False,
        ("DeskpulseWebhooksRefused", "deskpulse-ingest", "page"): False,
        ("DeskpulseIngestDown", "deskpulse-ingest", "page"): False,
        ("FirstResponseErrorBudgetBurn", "deskpulse", "page"): False,
        ("FirstResponseErrorBudgetBurn", "deskpulse", "ticket"): True,
        ("FirstResponseErrorBudgetBurn", "other", "ticket"): False,
    }


def test_an_ingest_outage_pages_on_its_own_while_the_broker_answers(
    alertmanager: Alertmanager,
) -> None:
    """Without a broker alert, the ingest server's 503s are the page."""
    alertmanager.fire(
        {"alertname": "DeskpulseIngestUnavailable", "job": "deskpulse-ingest", "severity": "page"}
    )
    assert settled(alertmanager, 1) == {
        ("DeskpulseIngestUnavailable", "deskpulse-ingest", "page"): False
    }
