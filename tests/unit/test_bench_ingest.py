"""The benchmark's ingest section, the parts that decide its verdict: the webhooks its load
generator sends (benchmark/webhooks.py) are signed Zendesk requests the server maps to
valid events, and the results-table line (benchmark/report.py) passes only within budget."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from benchmark.report import budget_rows, render
from benchmark.webhooks import zendesk_body
from deskpulse.models.wire import decode_record
from deskpulse.streams.webhooks import ZendeskMapping, map_zendesk

T0 = 1_796_000_000.0


def test_the_load_generators_webhooks_map_to_valid_events() -> None:
    types = []
    for request in range(8):
        mapped = map_zendesk(orjson.loads(zendesk_body(3, request, T0)), ZendeskMapping())
        assert isinstance(mapped, list)
        types += [decode_record(orjson.dumps(event))[0].type for event in mapped]
    # every 4th creates a ticket (which starts open: a status change too), the rest comment
    assert types.count("ticket.created") == 2
    assert types.count("ticket.status_changed") == 2
    assert types.count("ticket.replied") == 6
    # each delivery is an event of its own
    ids = {orjson.loads(zendesk_body(3, 1, T0))["id"] for _ in range(3)}
    assert len(ids) == 3


def _ingest(per_core: float, p99: float | None) -> dict[str, Any]:
    return {
        "connections": 50,
        "seconds": 15.0,
        "server_cpu_s": 5.0,
        "produced": 12_000,
        "statuses": {"200": 10_000},
        "requests": 10_000,
        "ok": 10_000,
        "wall_s": 15.0,
        "per_second": 666.7,
        "per_core": per_core,
        "server_cores": 0.33,
        "load_cores": 0.3,
        "latency": {"p50": 0.01, "p99": p99, "max": 0.2},
    }


@pytest.mark.parametrize(
    ("per_core", "p99", "verdict"),
    [
        (2000.0, 0.049, "**pass**"),
        (1999.0, 0.010, "**FAIL**"),
        (5000.0, 0.050, "**FAIL**"),  # p99 must be under 50 ms
        (5000.0, None, "**FAIL**"),  # nothing answered 200
    ],
)
def test_the_ingest_budget_row(per_core: float, p99: float | None, verdict: str) -> None:
    [row] = budget_rows({"ingest": _ingest(per_core, p99)})
    assert row[-1] == verdict


def test_the_ingest_section_renders() -> None:
    results = {"sections": {"ingest": _ingest(2500.0, 0.03)}, "cpu": [], "config": {}}
    text = render(results, command="python -m benchmark.run ingest", analysis="")
    assert "## 9. Webhook ingestion" in text
    assert "2,500/s" in text
    [row] = budget_rows({"ingest": {"error": "RuntimeError: boom"}})
    assert row[-1] == "**FAIL**" and "boom" in row[1]
