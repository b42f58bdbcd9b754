"""The compose stack's alert-sink, run as compose runs it: Alertmanager's webhook payload
posted to it is logged as one JSON line per alert and answered 200."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from deskpulse.streams.devtools.embedded import free_port, wait_for_port
from tests.conftest import HOST

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"

# what Alertmanager's webhook_configs post (version 4), two alerts in one group
PAYLOAD = {
    "version": "4",
    "receiver": "page",
    "status": "firing",
    "groupKey": '{}:{alertname="ChatAbandonmentHigh"}',
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "ChatAbandonmentHigh", "severity": "page", "queue": q},
            "annotations": {"summary": f"chat abandonment above 10% in {q}"},
            "startsAt": "2026-12-06T02:00:00Z",
        }
        for q in ("billing", "sales")
    ],
}


def test_the_sink_logs_each_alert_posted() -> None:
    sink = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["alert-sink"]
    command = sink["command"]
    assert command[:2] == ["python", "-c"]
    port = free_port(HOST)
    # the image's python is the same major version; the script is the compose file's own
    process = subprocess.Popen(
        [sys.executable, "-c", command[2]],
        env=os.environ | {"PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(HOST, port, 20)
        request = urllib.request.Request(
            f"http://{HOST}:{port}/page",
            data=json.dumps(PAYLOAD).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines == [
        {
            "receiver": "page",
            "status": "firing",
            "alertname": "ChatAbandonmentHigh",
            "severity": "page",
            "summary": f"chat abandonment above 10% in {q}",
        }
        for q in ("billing", "sales")
    ], err.decode()
