"""Webhook ingestion against the real broker and a running worker: Zendesk and Intercom
webhooks in their own shapes, signed, end as the right KPIs; retried deliveries change
nothing; bad and stale signatures produce nothing; oversize and unmappable bodies; a
broker that goes down and comes back (503, then 200); the settings the start refuses."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_broker
from tests import webhook_samples as vendor
from tests.conftest import HOST, new_settings
from tests.faults_support import tune
from tests.support import (
    HttpResponse,
    WorkerProcess,
    consume_all,
    end_offsets,
    http_get,
    run_cli,
    samples,
    scrape,
    settings_env,
    stamp,
    wait_until,
)

TOKEN = "tok-" + uuid.uuid4().hex
INGEST = ("-m", "deskpulse.streams.cli", "ingest")


def post(
    url: str, body: bytes, headers: Mapping[str, str] | None = None, timeout_s: float = 15.0
) -> HttpResponse:
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, dict(error.headers), error.read())


def ingest_settings(broker: str, redis_url: str, **update: Any) -> Settings:
    values: dict[str, Any] = dict(
        ingest=True,
        ingest_port=free_port(HOST),
        ingest_token=SecretStr(TOKEN),
        ingest_max_bytes=64 * 1024,
        ingest_ack_timeout=2,
        zendesk_signing_secret=SecretStr(vendor.ZENDESK_SECRET),
        zendesk_queue_map={"111": "billing"},
        intercom_client_secret=SecretStr(vendor.INTERCOM_SECRET),
    )
    return tune(
        new_settings(broker, redis_url, prefix="i", topic_partitions=2), **(values | update)
    )


class Client:
    """POSTs to one ingest server, signed as each sender signs."""

    def __init__(self, settings: Settings) -> None:
        self.base = f"http://{settings.ingest_host}:{settings.ingest_port}"

    def zendesk(self, payload: dict[str, Any], *, signed_at_s: float | None = None) -> HttpResponse:
        body = vendor.dumps(payload)
        timestamp = vendor.zendesk_time(
            time.time() if signed_at_s is None else signed_at_s, nanoseconds=False
        )
        return post(f"{self.base}/ingest/zendesk", body, vendor.zendesk_headers(body, timestamp))

    def intercom(self, payload: dict[str, Any]) -> HttpResponse:
        body = vendor.dumps(payload)
        return post(f"{self.base}/ingest/intercom", body, vendor.intercom_headers(body))

    def events(self, body: bytes, token: str | None = TOKEN) -> HttpResponse:
        headers = {"Content-Type": "application/x-ndjson"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return post(f"{self.base}/ingest/events", body, headers)

    def ready(self) -> bool:
        response = http_get(f"{self.base}/readyz")
        return response is not None and response.status == 200


def kpis(worker: WorkerProcess, query: str) -> dict[str, Any]:
    response = worker.get(f"/kpis?{query}")
    assert response is not None and response.status == 200, response
    document: dict[str, Any] = json.loads(response.body)
    return document


def moved(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``name`` above 0 in a ``/metrics`` text, by their sorted labels."""
    return {tuple(sorted(labels.items())): value for labels, value in samples(text, name) if value}


def record_count(settings: Settings) -> int:
    ends = asyncio.run(end_offsets(settings.kafka_bootstrap, list(settings.input_topics)))
    return sum(ends.values())


def test_signed_webhooks_end_as_kpis_and_retries_change_nothing(
    broker: str, redis_url: str, start_worker: Any, tmp_path: Path
) -> None:
    settings = ingest_settings(broker, redis_url)
    worker = start_worker(settings)
    client = Client(settings)
    wait_until(client.ready, 60, message=worker.describe)
    t0 = time.time() - 1800

    # Zendesk: a billing ticket (group 111), moved to group 333 and escalated to urgent
    # before an agent answers it 10 minutes in, after a private note at 2 minutes (which is
    # no response): its first response counts in 333 and urgent; an email ticket solved
    # unanswered, escalated after its solve (which moves none of its samples).
    zendesk = [
        vendor.zendesk_created(35436, t0, priority="HIGH", group_id=111, channel="Web"),
        vendor.zendesk_comment_added(35436, t0 + 120, staff=True, public=False),
        vendor.zendesk_comment_added(35436, t0 + 300, staff=False),
        vendor.zendesk_field_changed(
            "ticket.group_assignment_changed", 35436, t0 + 450, "333", "111"
        ),
        vendor.zendesk_priority_changed(35436, t0 + 500, "URGENT", "HIGH"),
        vendor.zendesk_comment_added(35436, t0 + 600, staff=True, author_id=814860),
        vendor.zendesk_created("35437", t0 + 60, priority=None, group_id=222, channel="email"),
        vendor.zendesk_status_changed("35437", t0 + 900, "SOLVED"),
        vendor.zendesk_priority_changed(35437, t0 + 901, "URGENT", None),
    ]
    # Intercom: a chat answered after 15 s, one closed unanswered after 60 s (abandoned)
    answered = vendor.intercom_conversation("1911149811", int(t0), team_assignee_id="5017691")
    closed = vendor.intercom_conversation("1911149812", int(t0) + 10)
    intercom = [
        vendor.intercom_notification("conversation.user.created", answered),
        vendor.intercom_notification(
            "conversation.admin.replied",
            vendor.intercom_conversation(
                "1911149811", int(t0), [vendor.intercom_part("1", int(t0) + 15)]
            ),
        ),
        vendor.intercom_notification("conversation.user.created", closed),
        vendor.intercom_notification(
            "conversation.admin.closed",
            vendor.intercom_conversation(
                "1911149812",
                int(t0) + 10,
                [vendor.intercom_part("2", int(t0) + 70, part_type="close")],
            ),
        ),
    ]
    before = record_count(settings)
    for payload in zendesk:
        response = client.zendesk(payload)
        assert response.status == 200, response.text
    for payload in intercom:
        response = client.intercom(payload)
        assert response.status == 200, response.text
    survey = {
        "event_id": "csat-35436",
        "type": "survey.responded",
        "occurred_at": stamp(t0 + 1000),
        "kind": "csat",
        "score": 5,
        "ticket_id": "35436",
    }
    response = client.events(json.dumps(survey).encode() + b"\n")
    assert response.status == 200, response.text
    assert json.loads(response.body)["results"] == [
        {"line": 1, "status": "accepted", "event_id": "csat-35436", "topic": settings.topic_surveys}
    ]
    # 9 Zendesk events (the second creation adds no status: it is new) + 4 Intercom + 1
    produced = 14
    assert record_count(settings) == before + produced

    def settled() -> dict[str, Any] | None:
        document = kpis(worker, "window=1h")
        group = document["groups"][0]
        done = (
            group["tickets_created"] == 2
            and group["chats"]["requested"] == 2
            and group["chats"]["abandoned"] == 1
            and group["csat"]["responses"] == 1
            and group["first_response"]["count"] == 1
        )
        return document if done else None

    document = wait_until(settled, 60, 0.5, message=worker.describe)
    total = document["groups"][0]
    assert total["first_response"]["mean_seconds"] == pytest.approx(600.0)
    assert total["chats"]["answered"] == 1
    assert total["chats"]["wait_p50_seconds"] == pytest.approx(15.0, rel=0.01)
    assert total["csat"]["satisfied"] == 1
    by_queue = {
        group["key"]["queue"]: group for group in kpis(worker, "window=1h&by=queue")["groups"]
    }
    assert set(by_queue) == {"billing", "333", "222", "5017691", "unassigned"}
    assert by_queue["billing"]["tickets_created"] == 1
    assert by_queue["billing"]["first_response"]["count"] == 0
    assert by_queue["333"]["tickets_created"] == 0
    assert by_queue["333"]["first_response"]["count"] == 1
    assert by_queue["222"]["tickets_created"] == 1
    assert by_queue["5017691"]["chats"]["answered"] == 1
    groups = kpis(worker, "window=1h&by=priority")["groups"]
    by_priority = {group["key"]["priority"]: group["tickets_created"] for group in groups}
    assert by_priority == {"high": 1, "normal": 1, "urgent": 0}, by_priority
    responses = {group["key"]["priority"]: group["first_response"]["count"] for group in groups}
    assert responses == {"high": 0, "normal": 0, "urgent": 1}, responses

    # Every delivery again, as a sender does after a lost answer: re-signed, same ids.
    for payload in zendesk:
        assert client.zendesk(payload).status == 200
    for payload in intercom:
        assert client.intercom(payload).status == 200
    assert client.events(json.dumps(survey).encode()).status == 200
    assert record_count(settings) == before + 2 * produced
    # the ingest port counted the events produced, twice each (9 + 4 + 1): none refused
    accepted = {
        labels["source"]: value
        for labels, value in samples(
            scrape(settings.ingest_port, settings.ingest_host), "deskpulse_ingest_records_total"
        )
        if labels["outcome"] == "accepted"
    }
    assert accepted == {"zendesk": 18, "intercom": 8, "events": 2}, accepted

    def duplicates() -> float:
        found = samples(scrape(settings.web_port), "deskpulse_events_duplicate_total")
        return sum(value for _, value in found)

    wait_until(lambda: duplicates() >= produced, 60, message=worker.describe)
    assert duplicates() == produced
    # the same window read again (at its end: the backlog's oldest age is as of the end, so
    # a read of "now" a minute on would differ by that minute)
    again = kpis(worker, f"window=1h&at={document['window']['end']}")["groups"][0]
    assert again == total


def test_bad_requests_produce_nothing_or_are_dead_lettered(
    broker: str, redis_url: str, start_worker: Any
) -> None:
    settings = ingest_settings(broker, redis_url)
    worker = start_worker(settings)
    client = Client(settings)
    wait_until(client.ready, 60, message=worker.describe)
    t0 = time.time() - 600
    created = vendor.zendesk_created(1, t0)
    before = record_count(settings)

    # bad signatures, a stale one, a missing one: 401, nothing produced
    body = vendor.dumps(created)
    stamp_now = vendor.zendesk_time(time.time(), nanoseconds=False)
    forged = vendor.zendesk_headers(body, stamp_now, secret="not-the-secret")
    assert post(f"{client.base}/ingest/zendesk", body, forged).status == 401
    stale = client.zendesk(created, signed_at_s=time.time() - 301)
    assert stale.status == 401 and b"more than 300s" in stale.body
    assert post(f"{client.base}/ingest/zendesk", body).status == 401
    intercom = vendor.dumps(
        vendor.intercom_notification(
            "conversation.user.created", vendor.intercom_conversation("9", int(t0))
        )
    )
    wrong = vendor.intercom_headers(intercom, secret="not-the-secret")
    assert post(f"{client.base}/ingest/intercom", intercom, wrong).status == 401
    assert client.events(b'{"type":"ticket.created"}', token="wrong").status == 401
    assert client.events(b'{"type":"ticket.created"}', token=None).status == 401
    # over DESKPULSE_INGEST_MAX_BYTES: 413
    big = vendor.zendesk_created(1, t0)
    big["detail"]["description"] = "x" * (64 * 1024)
    assert client.zendesk(big).status == 413
    assert record_count(settings) == before

    # bodies that cannot be mapped, and an events body with a bad line: dead-lettered
    trigger = {"ticket": {"id": "1", "status": "open"}}  # a trigger webhook's own JSON
    refused = client.zendesk(trigger)
    assert refused.status == 422, refused.text
    assert json.loads(refused.body)["reason"] == "unmappable"
    deleted = vendor.zendesk_status_changed(1, t0, "DELETED")
    assert client.zendesk(deleted).status == 422
    not_json = b"{not json"
    not_json_response = post(
        f"{client.base}/ingest/intercom", not_json, vendor.intercom_headers(not_json)
    )
    assert not_json_response.status == 422
    good_line = json.dumps(
        {"event_id": "e-ok", "type": "chat.requested", "occurred_at": stamp(t0), "chat_id": "c1"}
    ).encode()
    mixed = client.events(b"[" + good_line + b', {"type": "ticket.created"}]')
    assert mixed.status == 422, mixed.text
    results = json.loads(mixed.body)["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["reason"] == "missing_field"
    assert record_count(settings) == before + 1  # the good line only

    letters = asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic_deadletter, 4, 30))
    found = {
        (
            dict(r.headers)["deskpulse-source-topic"].decode(),
            dict(r.headers)["deskpulse-reason"].decode(),
            r.value,
        )
        for r in letters
    }
    assert found == {
        ("/ingest/zendesk", "unmappable", vendor.dumps(trigger)),
        ("/ingest/zendesk", "unmappable", vendor.dumps(deleted)),
        ("/ingest/intercom", "invalid_json", not_json),
        ("/ingest/events", "missing_field", b'{"type": "ticket.created"}'),
    }

    # the ingest port's /metrics counted each answer and what it carried
    counted = scrape(settings.ingest_port, settings.ingest_host)
    assert moved(counted, "deskpulse_ingest_requests_total") == {
        (("code", "401"), ("source", "zendesk")): 3,
        (("code", "413"), ("source", "zendesk")): 1,
        (("code", "422"), ("source", "zendesk")): 2,
        (("code", "401"), ("source", "intercom")): 1,
        (("code", "422"), ("source", "intercom")): 1,
        (("code", "401"), ("source", "events")): 2,
        (("code", "422"), ("source", "events")): 1,
    }
    assert moved(counted, "deskpulse_ingest_records_total") == {
        (("outcome", "rejected"), ("source", "zendesk")): 2,
        (("outcome", "rejected"), ("source", "intercom")): 1,
        (("outcome", "accepted"), ("source", "events")): 1,
        (("outcome", "rejected"), ("source", "events")): 1,
    }
    durations = {
        labels["source"]: value
        for labels, value in samples(counted, "deskpulse_ingest_request_duration_seconds_count")
    }
    assert durations == {"zendesk": 6, "intercom": 2, "events": 3}
    # and the refusals are said in the log: once for each source within the minute
    refused = [line for line in worker.log().splitlines() if "refused as unauthorized" in line]
    assert sorted(line.split("/ingest/")[1].split()[0] for line in refused) == [
        "events",
        "intercom",
        "zendesk",
    ], refused
    assert worker.running, worker.describe()


def test_broker_down_then_up(tmp_path: Path, redis_url: str) -> None:
    """``deskpulse ingest`` on a broker of this test's own: 503 with Retry-After while it
    is frozen, 200 once it is back; the retried request's event is on the topic."""
    port = free_port(HOST)
    with start_broker(HOST, port, tmp_path / "broker") as broker:
        settings = ingest_settings(f"{HOST}:{port}", redis_url, ingest=False)
        client = Client(settings)
        server = ManagedProcess(
            "ingest",
            [sys.executable, *INGEST],
            tmp_path / "ingest.log",
            cwd=tmp_path,
            env=settings_env(settings),
        )
        with server:
            wait_until(client.ready, 60, message=lambda: server.log_tail())
            t0 = time.time() - 60
            first = vendor.zendesk_created(100, t0)
            assert client.zendesk(first).status == 200

            broker.pause()
            try:
                second = vendor.zendesk_created(101, t0 + 1)
                started = time.monotonic()
                down = client.zendesk(second)
                assert down.status == 503, down.text
                assert {k.lower(): v for k, v in down.headers.items()}["retry-after"] == "5"
                assert time.monotonic() - started < 10  # bounded: DESKPULSE_INGEST_ACK_TIMEOUT
            finally:
                broker.resume()

            def delivered() -> bool:
                return client.zendesk(second).status == 200

            wait_until(delivered, 60, 1.0, message=lambda: server.log_tail())
        records = asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic_tickets, 2, 30))
        ids = [json.loads(r.value)["event_id"] for r in records]
        # the first once; the second at least once (the frozen broker may have kept the
        # unacknowledged attempt): the engine applies a repeated event_id once
        assert ids.count(f"zendesk:{first['id']}") == 1
        assert 1 <= ids.count(f"zendesk:{second['id']}") <= 2
        assert {json.loads(r.value)["ticket_id"]: r.key for r in records} == {
            "100": b"100",
            "101": b"101",
        }


def test_the_start_refuses_an_open_address_without_a_token(tmp_path: Path) -> None:
    env = settings_env(Settings(), DESKPULSE_INGEST_HOST="0.0.0.0")
    done = run_cli(["ingest"], env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "deskpulse: bad setting DESKPULSE_INGEST_TOKEN: needed to listen on 0.0.0.0, which is "
        "not a loopback address (POST /ingest/events would take events from anyone who "
        "reaches it)"
    ]


def test_a_source_over_its_rate_gets_429(tmp_path: Path, broker: str, redis_url: str) -> None:
    """``DESKPULSE_INGEST_RATE`` per source: one source over it is refused with
    ``Retry-After``, producing nothing; another source still gets through."""
    settings = ingest_settings(broker, redis_url, ingest=False, ingest_rate=2.0)
    client = Client(settings)
    server = ManagedProcess(
        "ingest",
        [sys.executable, *INGEST],
        tmp_path / "ingest.log",
        cwd=tmp_path,
        env=settings_env(settings),
    )
    with server:
        wait_until(client.ready, 60, message=lambda: server.log_tail())
        t0 = time.time() - 60
        before = record_count(settings)
        answers = [client.zendesk(vendor.zendesk_created(200 + n, t0)) for n in range(6)]
        statuses = [answer.status for answer in answers]
        assert statuses[:2] == [200, 200], statuses  # a burst of a second's worth
        assert 429 in statuses, statuses
        refused = answers[statuses.index(429)]
        assert {k.lower(): v for k, v in refused.headers.items()}["retry-after"] == "1"
        line = json.dumps(
            {"event_id": "r1", "type": "chat.requested", "occurred_at": stamp(t0), "chat_id": "c"}
        ).encode()
        assert client.events(line).status == 200  # its own budget
        assert record_count(settings) == before + statuses.count(200) + 1


def test_no_broker_at_the_start_is_503_until_it_answers(tmp_path: Path, redis_url: str) -> None:
    """``deskpulse ingest`` listens before the broker is reached: ``/readyz`` and every POST
    are 503 with ``Retry-After`` meanwhile (nothing 2xx), then 200 once a broker is there."""
    port = free_port(HOST)
    settings = ingest_settings(f"{HOST}:{port}", redis_url, ingest=False)
    client = Client(settings)
    server = ManagedProcess(
        "ingest",
        [sys.executable, *INGEST],
        tmp_path / "ingest.log",
        cwd=tmp_path,
        env=settings_env(settings),
    )
    with server:
        wait_until(
            lambda: http_get(f"{client.base}/healthz") is not None, 30, message=server.log_tail
        )
        ready = http_get(f"{client.base}/readyz")
        assert ready is not None and ready.status == 503
        payload = vendor.zendesk_created(300, time.time() - 60)
        down = client.zendesk(payload)
        assert down.status == 503, down.text
        assert {k.lower(): v for k, v in down.headers.items()}["retry-after"] == "5"
        with start_broker(HOST, port, tmp_path / "broker"):
            wait_until(client.ready, 60, message=server.log_tail)
            assert client.zendesk(payload).status == 200
            records = asyncio.run(
                consume_all(settings.kafka_bootstrap, settings.topic_tickets, 1, 30)
            )
            assert [json.loads(r.value)["event_id"] for r in records] == [
                f"zendesk:{payload['id']}"
            ]
