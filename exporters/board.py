"""The wallboard: one self-contained page (``GET /`` and ``GET /board``) that reads
``GET /kpis``, ``GET /kpis/series`` and ``GET /kpis/sla-tickets`` in the browser.

The page is package data (``assets/board/index.html``: HTML, CSS and a small script, no
CDN, no build step). The server embeds the board's configuration in it: the tiles (the
JSON path each shows, its window, its format) and the thresholds that colour them, taken
from the same values the alert rules use: the worker's own threshold rules
(``DESKPULSE_ALERT_RULES``) and :data:`PROMETHEUS_THRESHOLDS`, the thresholds of the
alerts in ``assets/prometheus/alerts.yml`` that the board shows (a test checks that they
agree with that file). The configuration holds no KPI data, so the page is served without
the web token; every read it makes carries the token (see docs/board.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from deskpulse.exporters.publish import RULE_METRICS
from deskpulse.models.settings import Settings, format_duration, parse_duration

__all__ = [
    "PROMETHEUS_THRESHOLDS",
    "REFRESH_S",
    "SERIES",
    "TILES",
    "Threshold",
    "Tile",
    "board_config",
    "render_board",
    "thresholds",
    "window_max_age_s",
]


@dataclass(frozen=True, slots=True)
class Tile:
    """One big number: the JSON path of a group document it shows, the window it is read
    over, how it is written (``count``, ``duration``, ``ratio``, ``score``, ``average``).
    ``live`` tiles show a level at the window's end (the same in every window)."""

    kpi: str
    window: str
    label: str
    format: str
    live: bool = False


#: The board's tiles, in their order on the screen.
TILES: tuple[Tile, ...] = (
    Tile("tickets_created", "24h", "Created today", "count"),
    Tile("first_response.p50_seconds", "24h", "1st response p50", "duration"),
    Tile("first_response.within_target_ratio", "24h", "1st resp. in target", "ratio"),
    Tile("chats.waiting", "15m", "Chats waiting", "count", live=True),
    Tile("chats.longest_wait_seconds", "15m", "Longest wait", "duration", live=True),
    Tile("chats.abandonment_ratio", "15m", "Abandonment", "ratio"),
    Tile("chats.service_level_ratio", "15m", "Service level", "ratio"),
    Tile("csat.ratio", "1h", "CSAT", "ratio"),
    Tile("nps.score", "24h", "NPS", "score"),
    Tile("ces.average", "24h", "CES", "average"),
    Tile("sla.first_response.achieved_ratio", "1h", "SLA 1st response", "ratio"),
    Tile("sla.next_response.achieved_ratio", "1h", "SLA next response", "ratio"),
    Tile("sla.resolution.achieved_ratio", "1h", "SLA resolution", "ratio"),
    Tile("backlog.total", "24h", "Open tickets", "count", live=True),
    Tile("backlog.oldest_age_seconds", "24h", "Oldest open", "duration", live=True),
)

#: The sparklines: one point per hour over the last 24 h (``GET /kpis/series``).
SERIES = {"window": "1h", "step": "1h", "count": 24}
#: The page reads its windows and the ticket list every REFRESH_S, the series every
#: SERIES_REFRESH_S; the series' newest point (the hour so far) may be SERIES_MAX_AGE_S
#: old, the ticket list SLA_TICKETS_MAX_AGE_S.
REFRESH_S = 5
SERIES_REFRESH_S = 60
SERIES_MAX_AGE_S = 300
SLA_TICKETS_MAX_AGE_S = 15


@dataclass(frozen=True, slots=True)
class Threshold:
    """A tile turns red when ``value op threshold`` with at least ``min_samples`` samples
    (the sum of the ``samples`` paths), amber when it does with fewer: an alert rule's
    condition on the tile's window."""

    kpi: str
    window: str
    op: str
    threshold: float
    alert: str
    samples: tuple[str, ...] = ()
    min_samples: int = 0


#: The thresholds of the Prometheus alerts the board shows, as the tiles read them
#: (``assets/prometheus/alerts.yml``; a unit test checks they agree).
PROMETHEUS_THRESHOLDS: tuple[Threshold, ...] = (
    # FirstResponseErrorBudgetBurn over 1d: late first responses above 3 x the 0.05 budget
    Threshold(
        "first_response.within_target_ratio",
        "24h",
        "<",
        1 - 3 * 0.05,
        "FirstResponseErrorBudgetBurn",
    ),
    Threshold("chats.waiting", "15m", ">", 10, "ChatsWaitingHigh"),
    Threshold("backlog.oldest_age_seconds", "24h", ">", 604800, "OldestOpenTicketTooOld"),
    *(
        Threshold(
            f"sla.{metric}.achieved_ratio",
            "1h",
            "<",
            0.90,
            "SlaAchievedRatioLow",
            (f"sla.{metric}.achieved", f"sla.{metric}.breached"),
            20,
        )
        for metric in ("first_response", "next_response", "resolution")
    ),
)


def thresholds(settings: Settings) -> list[Threshold]:
    """Every threshold of the board: the worker's threshold rules on a tile's KPI (over the
    rule's window and on the total, as the tile reads it), then :data:`PROMETHEUS_THRESHOLDS`
    for the tiles no worker rule covers."""
    out: list[Threshold] = []
    for rule in settings.alert_rules:
        section, field, samples = RULE_METRICS[rule.metric]
        out.append(
            Threshold(
                f"{section}.{field}",
                format_duration(parse_duration(rule.window)),
                rule.op,
                rule.threshold,
                rule.name,
                tuple(f"{section}.{name}" for name in samples),
                rule.min_samples,
            )
        )
    covered = {t.kpi for t in out}
    out.extend(t for t in PROMETHEUS_THRESHOLDS if t.kpi not in covered)
    return out


def board_config(settings: Settings) -> dict[str, Any]:
    """What the page is given: its tiles (a tile with a threshold is read over the
    threshold's window), thresholds, sparkline series, refresh period, and whether reads
    need the web token."""
    by_kpi = {t.kpi: t for t in thresholds(settings)}
    tiles = []
    for tile in TILES:
        threshold = by_kpi.get(tile.kpi)
        fields = asdict(tile)
        if threshold is not None and not tile.live:
            fields["window"] = threshold.window
        fields["threshold"] = None if threshold is None else asdict(threshold)
        tiles.append(fields)
    windows = sorted({tile["window"] for tile in tiles}, key=parse_duration)
    return {
        "tiles": tiles,
        "series": SERIES,
        "refresh_seconds": REFRESH_S,
        "series_refresh_seconds": SERIES_REFRESH_S,
        # how old an answer each read accepts (Cache-Control: max-age): boards refreshing
        # within it share one computation in the worker
        "max_age_seconds": {
            "kpis": {window: window_max_age_s(parse_duration(window)) for window in windows},
            "sla_tickets": SLA_TICKETS_MAX_AGE_S,
            "series": SERIES_MAX_AGE_S,
        },
        "token_required": settings.web_token is not None,
    }


def window_max_age_s(window_s: int) -> int:
    """How old a window's document may be on the board: a 90th of the window, at least a
    refresh and at most 30 s (15m: 10 s, 1h and 24h: 30 s): a window's figures move too
    little in that time to show."""
    return min(30, max(REFRESH_S, window_s // 90))


_PLACEHOLDER = "{}/*BOARD_CONFIG*/"


def render_board(settings: Settings) -> bytes:
    """The page, with :func:`board_config` embedded (safe inside a ``<script>``)."""
    page = (resources.files("deskpulse.exporters") / "assets" / "board" / "index.html").read_text(
        encoding="utf-8"
    )
    config = json.dumps(board_config(settings), separators=(",", ":")).replace("</", "<\\/")
    if _PLACEHOLDER not in page:
        raise RuntimeError("assets/board/index.html lost its configuration placeholder")
    return page.replace(_PLACEHOLDER, config).encode()
