"""The wallboard's configuration, its thresholds against the alert rules, and the pure
parts of the reads behind it (what a series or a ticket list may ask for, which tickets
are breached or at risk)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deskpulse.exporters.board import (
    PROMETHEUS_THRESHOLDS,
    TILES,
    board_config,
    render_board,
    thresholds,
)
from deskpulse.models.errors import InvalidQuery
from deskpulse.models.settings import AlertRule, Settings, parse_duration
from deskpulse.streams.core import AT_RISK_NOW, PLACES, RUNNING_NOW, Conversation, group_document
from deskpulse.streams.query import (
    MAX_POINTS,
    MAX_SLA_TICKETS,
    KpiQuery,
    SeriesQuery,
    SlaTicketsQuery,
    classify_sla_ticket,
    parse_series,
    parse_sla_tickets,
)
from deskpulse.streams.reads import MAX_AGE_S, MAX_KEPT, ReadGate, max_age_s

ALERTS = Path(__file__).parents[2] / "exporters" / "assets" / "prometheus" / "alerts.yml"
NOW_S = 1_796_000_000.0  # 2026-11-30T00:53:20Z


def alerts(name: str) -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    found = [rule for group in groups for rule in group["rules"] if rule.get("alert") == name]
    assert found, f"no alert {name} in alerts.yml"
    return found


def pick(document: Any, path: str) -> Any:
    for part in path.split("."):
        document = document[part]
    return document


# -- the thresholds are the alert rules' ------------------------------------------------------


def test_prometheus_thresholds_agree_with_alerts_yml() -> None:
    """Each threshold the board takes from a Prometheus alert is that alert's number."""
    checked = set()
    for threshold in PROMETHEUS_THRESHOLDS:
        rules = alerts(threshold.alert)
        if threshold.alert == "FirstResponseErrorBudgetBurn":
            # the tile's 24h window is the alert's 1d long window: late first responses
            # above <burn> x <budget>, i.e. within target below 1 - that
            (rule,) = [r for r in rules if r["labels"]["long_window"] == "1d"]
            burn, budget = map(float, re.search(r"> \((\S+) \* (\S+)\)", rule["expr"]).groups())
            assert threshold.op == "<"
            assert threshold.threshold == pytest.approx(1 - burn * budget)
            assert parse_duration(threshold.window) == 86400
        else:
            (rule,) = rules
            expr = " ".join(rule["expr"].split())
            match = re.search(r"[^\s]+ ([<>]) (\d+(?:\.\d+)?)", expr)
            assert match, expr
            assert (threshold.op, threshold.threshold) == (match[1], float(match[2])), expr
            if threshold.min_samples:
                assert f">= {threshold.min_samples}" in expr, expr
            window = re.search(r"increase(\d+[mhd])", expr)
            if window:  # a windowed alert: the tile reads the same window
                assert parse_duration(threshold.window) == parse_duration(window[1])
        checked.add(threshold.alert)
    assert checked == {
        "FirstResponseErrorBudgetBurn",
        "ChatsWaitingHigh",
        "OldestOpenTicketTooOld",
        "SlaAchievedRatioLow",
    }


@pytest.mark.parametrize("name", ["ChatAbandonmentHigh", "CsatLow"])
def test_the_worker_rules_the_board_uses_agree_with_alerts_yml(name: str) -> None:
    """The default threshold rules the board colours by are the Prometheus alerts of the
    same name: the same comparison, threshold and window."""
    (rule,) = alerts(name)
    expr = " ".join(rule["expr"].split())
    match = re.search(r"ratio_rate(\d+[mhd]) ([<>]) (\d+\.\d+)", expr)
    assert match, expr
    (threshold,) = [t for t in thresholds(Settings()) if t.alert == name]
    assert threshold.op == match[2]
    assert threshold.threshold == float(match[3])
    assert parse_duration(threshold.window) == parse_duration(match[1])


def test_a_configured_rule_colours_its_tile_over_its_own_window() -> None:
    settings = Settings(
        alert_rules=(
            AlertRule(name="NpsLow", metric="nps_score", window="1h", op="<", threshold=20),
        )
    )
    tiles = {t["kpi"]: t for t in board_config(settings)["tiles"]}
    nps = tiles["nps.score"]
    assert nps["window"] == "1h"
    assert nps["threshold"]["alert"] == "NpsLow"
    assert list(nps["threshold"]["samples"]) == ["nps.responses"]
    # the worker's default rules are replaced, the Prometheus ones stay
    assert tiles["csat.ratio"]["threshold"] is None
    assert tiles["chats.waiting"]["threshold"]["alert"] == "ChatsWaitingHigh"


def test_every_tile_and_threshold_names_a_path_of_the_kpi_document() -> None:
    group = group_document({}, {"tc": 3}, None, 0)
    config = board_config(Settings())
    for tile in config["tiles"]:
        pick(group, tile["kpi"])  # KeyError if the document has no such path
        threshold = tile["threshold"]
        if threshold is not None:
            assert threshold["kpi"] == tile["kpi"]
            for path in threshold["samples"]:
                assert isinstance(pick(group, path), int), path
            if not tile["live"]:
                assert tile["window"] == threshold["window"]
    assert {t["kpi"] for t in config["tiles"]} == {t.kpi for t in TILES}
    assert config["token_required"] is False
    assert board_config(Settings(web_token="s3cret"))["token_required"] is True


def test_the_page_embeds_its_configuration_and_loads_nothing_from_elsewhere() -> None:
    page = render_board(Settings(web_token="s3cret")).decode()
    embedded = re.search(r"const CONFIG = (\{.*?\});\n", page)
    assert embedded, "the configuration is embedded"
    assert json.loads(embedded[1]) == json.loads(json.dumps(board_config(Settings(web_token="x"))))
    assert "s3cret" not in page  # the token is never in the page
    assert "BOARD_CONFIG" not in page
    # self-contained: no script, style, font or image from another origin
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


# -- GET /kpis/series: what it may ask for ------------------------------------------------------


def series(**given: str) -> SeriesQuery:
    return parse_series(
        given.get("window"),
        given.get("step"),
        given.get("count"),
        given.get("at"),
        given.get("by"),
        bucket_seconds=60,
        retention_s=48 * 3600,
        max_future_s=300,
        now_s=NOW_S,
    )


def test_a_series_defaults_to_24_windows_a_window_apart() -> None:
    query = series(window="1h")
    assert (query.width_s, query.step_s, query.count) == (3600, 3600, 24)
    ends = query.ends_s()
    assert ends[-1] == query.end_s == 1_796_000_040  # the clock rounded up to the minute
    assert [b - a for a, b in itertools.pairwise(ends)] == [3600] * 23


@pytest.mark.parametrize(
    ("given", "parameter"),
    [
        ({"count": str(MAX_POINTS + 1)}, "count"),
        ({"count": "0"}, "count"),
        ({"count": "-3"}, "count"),
        ({"count": "2.5"}, "count"),
        ({"step": "7s"}, "step"),
        ({"step": "0m"}, "step"),
        ({"window": "49h"}, "window"),
        ({"at": "yesterday"}, "at"),
        ({"by": "queue,queue"}, "by"),
        # the oldest window would start before the year 1
        ({"at": "0001-01-03T00:00:00Z", "window": "1h", "step": "24h", "count": "5"}, "count"),
    ],
)
def test_a_series_refuses_naming_the_parameter(given: dict[str, str], parameter: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        series(**given)
    assert refused.value.parameter == parameter


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, SlaTicketsQuery((), 20)),
        ({"queue": "billing", "limit": "5"}, SlaTicketsQuery((("queue", "billing"),), 5)),
        # filters come in the dimensions' order, whatever the query string's
        (
            {"priority": "urgent", "channel": "chat"},
            SlaTicketsQuery((("channel", "chat"), ("priority", "urgent")), 20),
        ),
    ],
)
def test_sla_tickets_queries(given: dict[str, str], expected: SlaTicketsQuery) -> None:
    assert parse_sla_tickets(given) == expected


@pytest.mark.parametrize(
    ("given", "parameter"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": str(MAX_SLA_TICKETS + 1)}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"queue": ""}, "queue"),
    ],
)
def test_sla_tickets_refuses(given: dict[str, str], parameter: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        parse_sla_tickets(given)
    assert refused.value.parameter == parameter


# -- which tickets are breached or at risk ------------------------------------------------------

OPEN = 1000  # the live digit of a ticket open now (streams.core.LIVE_DIGITS)


def ticket(counted: int, claims: set[str] | None = None, kind: str = "t") -> Conversation:
    return Conversation(
        kind=kind,
        opened=(1_000, "e1"),
        dims=("email", "billing", "high"),
        claims=claims or set(),
        counted=counted,
    )


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        # running, nothing claimed: neither
        (ticket(OPEN + RUNNING_NOW * PLACES["first_response"]), None),
        # a warning claimed on the first response, still running: at risk
        (
            ticket(OPEN + AT_RISK_NOW * PLACES["first_response"], {"fr:1@0.75"}),
            ("at_risk", ["first_response"]),
        ),
        # two metrics at risk, in the order of PLACES
        (
            ticket(OPEN + AT_RISK_NOW * (PLACES["resolution"] + PLACES["first_response"])),
            ("at_risk", ["first_response", "resolution"]),
        ),
        # a breach claimed: breached (whatever else is at risk)
        (
            ticket(OPEN + AT_RISK_NOW * PLACES["resolution"], {"fr:1", "fr:1@0.75"}),
            ("breached", ["first_response"]),
        ),
        (ticket(OPEN, {"nr:2", "rs:1"}), ("breached", ["next_response", "resolution"])),
        # a retracted breach is no breach
        (ticket(OPEN, {"fr:1", "fr:1@r"}), None),
        # a ticket no longer open is neither, breached or not
        (ticket(AT_RISK_NOW * PLACES["first_response"], {"rs:1"}), None),
        # a chat never is
        (ticket(OPEN + AT_RISK_NOW, kind="c"), None),
    ],
)
def test_classify_sla_ticket(state: Conversation, expected: tuple[str, list[str]] | None) -> None:
    assert classify_sla_ticket(state) == expected


# -- boards share one computation per refresh (Cache-Control: max-age) ------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("max-age=5", 5.0),
        ("no-cache, max-age=12", 12.0),
        ("MAX-AGE = 7", 7.0),
        ("max-age=3600", MAX_AGE_S),  # capped
        ("max-age=-1", 0.0),
        ("max-age=soon", 0.0),
        ("no-store", 0.0),
    ],
)
def test_max_age_of_a_request(header: str | None, seconds: float) -> None:
    assert max_age_s(header) == seconds


def test_reads_accepting_an_older_answer_share_it() -> None:
    """A board accepts an answer a refresh old: ten boards refreshing within it cost one
    computation; a read that says nothing still gets one at most DESKPULSE_READ_CACHE old."""

    async def run() -> list[str]:
        now = [0.0]
        computed: list[str] = []

        async def compute(query: Any) -> bytes:
            computed.append(f"{query.width_s}@{now[0]:g}")
            return b"{}"

        gate = ReadGate(compute, concurrency=2, queue=8, cache_s=1.0, clock=lambda: now[0])
        query = KpiQuery(3600, 1_796_000_040)
        await gate.read(query, max_age_s=5)  # computed at 0
        for t in (0.5, 2.0, 4.9):  # boards within their 5 s: the same answer
            now[0] = t
            await gate.read(query, max_age_s=5)
        now[0] = 2.5
        await gate.read(query)  # a plain read: 2.5 s is older than its 1 s: computed
        now[0] = 6.0
        await gate.read(query, max_age_s=5)  # 3.5 s after that one, kept 5 s: shared
        now[0] = 8.0
        await gate.read(query, max_age_s=5)  # 5.5 s: computed again
        # a client cannot keep more than MAX_KEPT answers alive past the cache
        for n in range(MAX_KEPT + 10):
            await gate.read(KpiQuery(60 * (n + 2), 1_796_000_040), max_age_s=60)
        assert len(gate._cache) <= MAX_KEPT + 1
        return computed

    computed = asyncio.run(run())
    assert computed[:3] == ["3600@0", "3600@2.5", "3600@8"]
