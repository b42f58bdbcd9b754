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


def _ingest(per_core: float, p99: float | None, paced_per_second: float = 2000.0) -> dict[str, Any]:
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
        # flat out: its p99 is the queue the load generator keeps full, not the budget's
        "latency": {"p50": 0.01, "p99": 0.3, "max": 0.5},
        "paced": {
            "rate": 2000.0,
            "statuses": {"200": int(paced_per_second * 15)},
            "ok": int(paced_per_second * 15),
            "per_second": paced_per_second,
            "server_cores": 0.4,
            "latency": {"p50": 0.005, "p99": p99, "max": 0.1},
        },
    }


@pytest.mark.parametrize(
    ("per_core", "p99", "paced", "verdict"),
    [
        (2000.0, 0.049, 2000.0, "**pass**"),
        (1999.0, 0.010, 2000.0, "**FAIL**"),
        (5000.0, 0.050, 2000.0, "**FAIL**"),  # p99 at the paced rate must be under 50 ms
        (5000.0, None, 2000.0, "**FAIL**"),  # nothing answered 200
        (5000.0, 0.010, 1500.0, "**FAIL**"),  # the paced run did not keep up the rate
    ],
)
def test_the_ingest_budget_row(
    per_core: float, p99: float | None, paced: float, verdict: str
) -> None:
    [row] = budget_rows({"ingest": _ingest(per_core, p99, paced)})
    assert row[-1] == verdict


def test_the_ingest_section_renders() -> None:
    results = {"sections": {"ingest": _ingest(2500.0, 0.03)}, "cpu": [], "config": {}}
    text = render(results, command="python -m benchmark.run ingest", analysis="")
    assert "## 9. Webhook ingestion" in text
    assert "2,500/s" in text
    assert "paced at 2,000/s" in text
    [row] = budget_rows({"ingest": {"error": "RuntimeError: boom"}})
    assert row[-1] == "**FAIL**" and "boom" in row[1]
