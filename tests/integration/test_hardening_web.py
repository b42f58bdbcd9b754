"""Web hardening: the bearer scheme is case-insensitive, ``/metrics`` can want the token,
Faust's own pages are not served (on the real worker, run in this process); a client
library's repeated errors are summarised instead of flooding the log. The health endpoints
while a worker process waits for the broker, and its log then, are in
tests/system/test_hardening_web.py."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import Settings, load_settings
from deskpulse.streams.app import bearer_token_matches, create_app
from deskpulse.streams.logs import (
    MAX_TRACKED,
    RepeatThrottle,
    install_repeat_throttle,
    repeat_throttle,
)
from tests.conftest import create_topics, new_settings
from tests.faults_support import http_request, tune
from tests.inproc import InprocWorker
from tests.support import sample

TOKEN = "tok-" + uuid.uuid4().hex
# Faust's own pages (and what its settings or APP_WEB_* variables would switch on); "/" is
# the app's wallboard instead of Faust's page
FAUST_PAGES = (
    "/router/",
    "/router/topics",
    "/table/",
    "/table/x/",
    "/graph/",
    "/stats/",
    "/assignment/",
    "/performance/",
)
# the variables that would enable every Faust page the worker's settings leave off
FAUST_PAGES_ON = {
    name: "true"
    for name in (
        "APP_WEB_STATS_ENABLED",
        "APP_WEB_GRAPH_ENABLED",
        "APP_WEB_ROUTER_ENABLED",
        "APP_WEB_TABLES_ENABLED",
        "APP_WEB_METRICS_ENABLED",
    )
}


def settings_on(bootstrap: str, redis_url: str, **update: Any) -> Settings:
    return tune(new_settings(bootstrap, redis_url, prefix="w", topic_partitions=2), **update)


def ticket(ticket_id: str, at_s: float) -> tuple[bytes, bytes]:
    payload = {
        "event_id": "evt-" + uuid.uuid4().hex,
        "type": "ticket.created",
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_s)),
        "ticket_id": ticket_id,
        "channel": "email",
    }
    return ticket_id.encode(), orjson.dumps(payload)


# -- the bearer token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # RFC 7235: the scheme is case-insensitive
        (f"BEARER {TOKEN}", True),
        (f"BeArEr   {TOKEN}", True),  # 1*SP before the credential
        (f"  Bearer {TOKEN}  ", True),  # surrounding whitespace is not part of the value
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (TOKEN, False),  # no scheme
        (f"Basic {TOKEN}", False),
        (f"Bearers {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN.upper()}", False),  # the credential is case-sensitive
        (f"Bearer {TOKEN} {TOKEN}", False),
    ],
    # the same ids in every process (pytest-xdist compares them): the token is random
    ids=lambda value: (
        value.replace(TOKEN, "TOKEN")
        .replace(TOKEN[:-1], "TOKEN[:-1]")
        .replace(TOKEN.upper(), "UPPER")
        if isinstance(value, str)
        else None
    ),
)
def test_bearer_token_matches(header: str | None, matches: bool) -> None:
    assert bearer_token_matches(header, TOKEN) is matches


def test_a_non_ascii_token_is_compared_not_refused() -> None:
    assert bearer_token_matches("Bearer pässwörd", "pässwörd")
    assert not bearer_token_matches("Bearer passwort", "pässwörd")


def test_metrics_require_token_needs_a_token() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(metrics_require_token="true")
    assert str(raised.value).startswith("DESKPULSE_METRICS_REQUIRE_TOKEN: ")
    assert "DESKPULSE_WEB_TOKEN" in str(raised.value)
    assert load_settings(metrics_require_token="true", web_token="t").metrics_require_token


def test_an_empty_token_is_refused_not_taken_for_bearer_nothing() -> None:
    for empty in ("", "  "):
        with pytest.raises(SettingsError) as raised:
            load_settings(web_token=empty)
        assert str(raised.value).startswith("DESKPULSE_WEB_TOKEN: ")


def test_the_app_routes_only_its_own_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAUST_PAGES_ON.items():
        monkeypatch.setenv(name, value)
    app = create_app(Settings(web_token=SecretStr(TOKEN)))
    app.web.init_server()
    paths = {route.resource.canonical for route in app.web.web_app.router.routes()}  # type: ignore[attr-defined]
    assert paths == {
        "/metrics",
        "/healthz",
        "/readyz",
        "/kpis",
        "/kpis/series",
        "/kpis/sla-tickets",
        "/",
        "/board",
    }


@pytest.fixture
def guarded(
    broker: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    inproc_worker: Callable[..., InprocWorker],
) -> InprocWorker:
    """A ready worker with the web token required on ``/kpis`` and ``/metrics``, and every
    Faust page switched on through Faust's own variables (read when the app is built)."""
    settings = settings_on(
        broker, redis_url, web_token=SecretStr(TOKEN), metrics_require_token=True
    )
    create_topics(settings)
    for name, value in FAUST_PAGES_ON.items():
        monkeypatch.setenv(name, value)
    return inproc_worker(settings, timeout_s=90)


def test_metrics_and_kpis_want_the_token_in_any_case_health_stays_open(
    guarded: InprocWorker,
) -> None:
    url = guarded.base_url
    for path in ("/metrics", "/kpis?window=1h"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = http_request(url + path, headers)
            assert refused is not None and refused.status == 401, (path, headers, refused)
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in refused.text
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = http_request(url + path, {"Authorization": f"{scheme} {TOKEN}"})
            assert response is not None and response.status == 200, (path, scheme, response)
    metrics = http_request(url + "/metrics", {"Authorization": f"bearer {TOKEN}"})
    assert metrics is not None
    assert sample(metrics.text, "deskpulse_broker_up") == 1
    for path in ("/healthz", "/readyz"):  # liveness and readiness probes carry no token
        response = http_request(url + path)
        assert response is not None and response.status == 200, (path, response)


def test_faust_pages_are_not_served_with_or_without_the_token(guarded: InprocWorker) -> None:
    for path in FAUST_PAGES:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            response = http_request(guarded.base_url + path, headers)
            assert response is not None and response.status == 404, (path, headers, response)
    # "/" is the wallboard, served without the token (it holds no data), not Faust's page
    board = http_request(guarded.base_url + "/", {})
    assert board is not None and board.status == 200, board
    assert board.headers["content-type"].startswith("text/html")
    assert "deskpulse board" in board.text and TOKEN not in board.text


# -- repeated log lines ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class Captured(logging.Handler):
    """Records that passed this handler's filters, as their final text."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@pytest.fixture
def throttled() -> Iterator[tuple[RepeatThrottle, Clock, list[Captured]]]:
    """Two handlers on a logger tree of its own, sharing one throttle on a fake clock."""
    clock = Clock()
    throttle = RepeatThrottle(loggers=("t-aiokafka",), interval_s=30.0, clock=clock)
    handlers = [Captured(), Captured()]
    roots = [logging.getLogger("t-aiokafka"), logging.getLogger("t-deskpulse")]
    for handler in handlers:
        handler.addFilter(throttle)
    for root in roots:
        root.setLevel(logging.DEBUG)
        root.propagate = False
        for handler in handlers:
            root.addHandler(handler)
    try:
        yield throttle, clock, handlers
    finally:
        for root in roots:
            for handler in handlers:
                root.removeHandler(handler)


def test_the_first_of_a_message_passes_repeats_are_counted_and_reported(
    throttled: tuple[RepeatThrottle, Clock, list[Captured]],
) -> None:
    _, clock, handlers = throttled
    conn = logging.getLogger("t-aiokafka.conn")
    conn.error("Unable connect to %s: %s", "127.0.0.1:9", "refused")
    for i in range(57):  # every 100 ms for 5.7 s; the arguments may differ
        clock.now_s += 0.1
        conn.error("Unable connect to %s: %s", "127.0.0.1:9", f"refused {i}")
    first = "t-aiokafka.conn ERROR Unable connect to 127.0.0.1:9: refused"
    for handler in handlers:  # each handler made the same choice, counted once
        assert handler.lines == [first]
    clock.now_s += 30.0
    conn.error("Unable connect to %s: %s", "127.0.0.1:9", "refused again")
    summary = (
        "t-aiokafka.conn ERROR Unable connect to 127.0.0.1:9: refused again"
        " (repeated 57 times in the last 36 s)"
    )
    assert handlers[0].lines == [first, summary]
    assert handlers[1].lines == handlers[0].lines


def test_flush_reports_a_flood_that_stopped_then_forgets_it(
    throttled: tuple[RepeatThrottle, Clock, list[Captured]],
) -> None:
    throttle, clock, (handler, _) = throttled
    log = logging.getLogger("t-aiokafka")
    log.error("Failed fetch %s", "a")
    clock.now_s += 1
    log.error("Failed fetch %s", "b")
    log.error("Failed fetch %s", "c")
    throttle.flush()  # the interval has not run out: nothing to say yet
    assert handler.lines == ["t-aiokafka ERROR Failed fetch a"]
    clock.now_s += 29.5
    throttle.flush()
    assert handler.lines[1:] == [
        "t-aiokafka ERROR Failed fetch c (repeated 2 times in the last 30 s)"
    ]
    clock.now_s += 31
    throttle.flush()  # a quiet interval: forgotten, nothing logged
    log.error("Failed fetch %s", "d")  # so the next one is a first one again
    assert handler.lines[2:] == ["t-aiokafka ERROR Failed fetch d"]


def test_other_loggers_debug_and_different_messages_are_never_held_back(
    throttled: tuple[RepeatThrottle, Clock, list[Captured]],
) -> None:
    _, clock, (handler, _) = throttled
    ours = logging.getLogger("t-deskpulse.engine")
    theirs = logging.getLogger("t-aiokafka.consumer")
    for _ in range(3):
        clock.now_s += 0.1
        ours.warning("reaching the broker failed (attempt %d)", 1)
        theirs.debug("Sending request %s", "x")
        theirs.info("Discovered coordinator %s", 1)  # news each time (a rebalance)
    theirs.warning("Heartbeat failed")
    theirs.warning("Heartbeat failed")
    theirs.error("Heartbeat failed")  # another level: another message
    logging.getLogger("t-aiokafka.other").warning("Heartbeat failed")  # another logger
    assert (
        handler.lines.count("t-deskpulse.engine WARNING reaching the broker failed (attempt 1)")
        == 3
    )
    assert handler.lines.count("t-aiokafka.consumer DEBUG Sending request x") == 3
    assert handler.lines.count("t-aiokafka.consumer INFO Discovered coordinator 1") == 3
    assert handler.lines[-3:] == [
        "t-aiokafka.consumer WARNING Heartbeat failed",
        "t-aiokafka.consumer ERROR Heartbeat failed",
        "t-aiokafka.other WARNING Heartbeat failed",
    ]
    assert handler.lines.count("t-aiokafka.consumer WARNING Heartbeat failed") == 1


def test_a_summary_keeps_percent_signs_and_survives_formatters_that_rewrite_args(
    throttled: tuple[RepeatThrottle, Clock, list[Captured]],
) -> None:
    _, clock, (handler, _) = throttled
    # Faust's formatter turns args=None into (None,): the summary must not depend on None
    handler.setFormatter(logging.Formatter("%(message)s"))
    original = handler.emit

    def emit(record: logging.LogRecord) -> None:
        record.args = record.args if isinstance(record.args, tuple) else (record.args,)
        original(record)

    handler.emit = emit  # type: ignore[method-assign]
    log = logging.getLogger("t-aiokafka")
    log.error("100%% of %s failed", "fetches")
    clock.now_s += 1
    log.error("100%% of %s failed", "fetches")
    clock.now_s += 30
    log.error("100%% of %s failed", "fetches")
    assert handler.lines == [
        "t-aiokafka ERROR 100% of fetches failed",
        "t-aiokafka ERROR 100% of fetches failed (repeated once in the last 31 s)",
    ]


def test_messages_built_with_f_strings_do_not_grow_the_counts_without_bound(
    throttled: tuple[RepeatThrottle, Clock, list[Captured]],
) -> None:
    throttle, clock, (handler, _) = throttled
    log = logging.getLogger("t-aiokafka")
    for i in range(3 * MAX_TRACKED):  # a burst: none of them is older than the interval
        clock.now_s += 0.001
        log.error(f"request {i} failed")  # every one distinct: each is a first one
        assert throttle.tracked <= MAX_TRACKED
    assert len(handler.lines) == 3 * MAX_TRACKED
    clock.now_s += 30.0
    log.error("request %d failed", 0)  # over the limit, quiet ones are forgotten
    assert throttle.tracked == 1


def test_install_adds_one_shared_throttle_to_each_handler_once() -> None:
    logger = logging.getLogger("t-install-" + uuid.uuid4().hex)
    handlers = [logging.NullHandler(), logging.NullHandler()]
    for handler in handlers:
        logger.addHandler(handler)
    first = install_repeat_throttle(logger)
    again = install_repeat_throttle(logger)  # e.g. after Faust set up logging anew
    assert first is again is repeat_throttle()
    for handler in handlers:
        assert handler.filters == [first]
