"""Webhook ingestion: HTTP POSTs in, input events onto the input topics, exactly once.

Served by ``deskpulse ingest`` and, with ``DESKPULSE_INGEST=true``, by the worker (on a
port of its own, ``DESKPULSE_INGEST_PORT``):

``POST /ingest/events``
    input events as a JSON array or NDJSON (one per line), bearer token
    ``DESKPULSE_INGEST_TOKEN`` when set. Each is checked by the engine's own decoder
    (:func:`models.wire.decode_record`); valid ones go to their input topic keyed by their
    conversation, invalid ones to the dead-letter topic with their reason. The answer lists
    each line's fate: 200 when all were taken, 422 when some were dead-lettered.
``POST /ingest/zendesk``, ``POST /ingest/intercom``
    the helpdesks' own webhooks, signed, mapped by :mod:`streams.webhooks`.

A request is answered 2xx (or 422) only once the broker acknowledged every record it
produced, events and dead letters alike (``acks=all``); while the broker does not answer
within ``DESKPULSE_INGEST_ACK_TIMEOUT`` the answer is 503 with ``Retry-After``, so the
sender delivers again. Records of an unanswered request may still reach the topic, and
the retry sends them again: their ``event_id`` is derived from the sender's own id, so the
engine applies each once (it drops a repeated ``event_id`` of a conversation). That, not
the producer, makes ingestion exactly once: aiokafka's idempotent producer is refused by
some Kafka-compatible brokers (the embedded one among them), as for every producer of
deskpulse (:mod:`exporters.kafka`).

Other answers: 401 for a missing or bad token or signature, or a stale Zendesk signature
timestamp (nothing produced; said in the log, at most once a minute a source); 413 over
``DESKPULSE_INGEST_MAX_BYTES``; 429 with ``Retry-After`` over ``DESKPULSE_INGEST_RATE``
requests per second of one source; 404 for a helpdesk whose secret is not set.

``GET /metrics`` on the same port counts the answers by source and status code, the
records they carried by outcome, and their durations (``exporters.catalog.INGEST``; the
web token when ``DESKPULSE_METRICS_REQUIRE_TOKEN``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from pydantic import SecretStr

from deskpulse.exporters.catalog import INGEST_CATALOG, INGEST_OUTCOMES, client_args
from deskpulse.exporters.kafka import KafkaPublisher
from deskpulse.models.errors import DeadLetterUnavailable, RejectedEvent
from deskpulse.models.settings import Settings
from deskpulse.models.wire import WireEvent, decode_record
from deskpulse.streams.app import bearer_token_matches
from deskpulse.streams.engine import SourceRecord
from deskpulse.streams.topics import ensure_topics
from deskpulse.streams.webhooks import (
    Ignored,
    IntercomMapping,
    ZendeskMapping,
    intercom_signature_matches,
    map_intercom,
    map_zendesk,
    zendesk_signature_problem,
)

__all__ = ["SOURCES", "Ingest", "IngestMetrics", "IngestServer", "RateLimit", "split_events"]

log = logging.getLogger("deskpulse.ingest")

#: The sources a rate limit applies to, one each: their routes are ``/ingest/<source>``.
SOURCES = ("events", "zendesk", "intercom")
#: What a 503 asks the sender to wait before it delivers again (seconds).
RETRY_AFTER_S = 5
_TOPIC_KIND = {"ticket": "tickets", "chat": "chats", "survey": "surveys", "agent": "agents"}
_JSON = "application/json"
_LIST_OF_RAW = msgspec.json.Decoder(list[msgspec.Raw])


class RateLimit:
    """A token bucket: ``rate`` requests per second, bursts of up to ``burst``.

    :meth:`take` is given the time (monotonic seconds) and returns 0 when the request may
    pass, else how many seconds until one may.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = self.burst
        self._at_s: float | None = None

    def take(self, now_s: float) -> float:
        if self.rate <= 0:
            return 0.0
        if self._at_s is not None:
            self._tokens = min(self.burst, self._tokens + (now_s - self._at_s) * self.rate)
        self._at_s = now_s
        if self._tokens >= 1.0 - 1e-9:  # a token refilled to the float just below 1
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def split_events(body: bytes) -> list[tuple[int, bytes]]:
    """The records of a ``POST /ingest/events`` body, with their line numbers (from 1).

    A body whose first character is ``[`` is a JSON array: each element is a record, byte
    for byte as written (numbered by position). One that is not a well-formed array is a
    single record (which the decoder then rejects). Anything else is NDJSON: each line
    that is not blank is a record.
    """
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            items = _LIST_OF_RAW.decode(stripped)
        except msgspec.DecodeError:
            return [(1, body)]
        return [(number, bytes(item)) for number, item in enumerate(items, 1)]
    return [
        (number, line.rstrip(b"\r"))
        for number, line in enumerate(body.split(b"\n"), 1)
        if line.strip()
    ]


@dataclass(frozen=True, slots=True)
class _Record:
    """An event ready to produce: its topic, key (the conversation id) and bytes."""

    topic: str
    key: bytes
    value: bytes
    event_id: str


#: Seconds between two log lines about refused (401) requests of one source.
REFUSED_LOG_INTERVAL_S = 60.0


class IngestMetrics:
    """The ingest server's own registry: answers, records and durations by source."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # as the worker's: no KPI value
        self.registry = CollectorRegistry()

        def spec(name: str) -> tuple[str, str, list[str]]:
            return client_args(INGEST_CATALOG[name])

        self._requests = PromCounter(
            *spec("deskpulse_ingest_requests_total"), registry=self.registry
        )
        self._records = PromCounter(*spec("deskpulse_ingest_records_total"), registry=self.registry)
        duration = INGEST_CATALOG["deskpulse_ingest_request_duration_seconds"]
        self._duration = Histogram(
            *spec(duration.name), registry=self.registry, buckets=duration.buckets
        )
        for source in SOURCES:  # 0 from the start: the first refusal or record is an increase
            self._requests.labels(source, "401")
            for outcome in INGEST_OUTCOMES:
                self._records.labels(source, outcome)
        #: per source: refusals since the last line about them, and when that line was
        self._refused: dict[str, int] = {}
        self._refused_logged: dict[str, float] = {}

    def answered(self, source: str, code: int, seconds: float) -> None:
        self._requests.labels(source, str(code)).inc()
        self._duration.labels(source).observe(seconds)

    def records(self, source: str, outcome: str, count: int) -> None:
        if count:
            self._records.labels(source, outcome).inc(count)

    def refused(self, source: str, why: str) -> None:
        """A request refused as unauthorized: said at once, then at most once a minute."""
        count = self._refused.get(source, 0) + 1
        now = time.monotonic()
        last = self._refused_logged.get(source)
        if last is not None and now - last < REFUSED_LOG_INTERVAL_S:
            self._refused[source] = count
            return
        self._refused[source] = 0
        self._refused_logged[source] = now
        log.warning(
            "ingest: %d request(s) to /ingest/%s refused as unauthorized since the last such "
            "line (the last: %s): check the token or signing secret its sender uses",
            count,
            source,
            why,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Unavailable(Exception):
    """The broker did not acknowledge in time (or at all): the request is answered 503."""


class Ingest:
    """The routes and the producer behind them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # no linger: records of concurrent requests share a batch anyway while the producer
        # waits for the broker's answer to the last one (one request in flight per broker),
        # and a request alone is not held back (measured: p99 4 ms at linger 0, 19 ms at 5)
        self.publisher = KafkaPublisher(settings, linger_ms=0)
        self.metrics = IngestMetrics()
        self.ready = False
        self._connecting: asyncio.Task[None] | None = None
        self._limits = {source: RateLimit(settings.ingest_rate) for source in SOURCES}
        self.zendesk = ZendeskMapping(
            queue_field=settings.zendesk_queue_field,
            queue_map=settings.zendesk_queue_map,
            channel_map=settings.zendesk_channel_map,
        )
        self.intercom = IntercomMapping(
            as_kind=settings.intercom_as, queue_map=settings.intercom_queue_map
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to the broker in the background: requests are answered (503) meanwhile."""
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        delay_s, attempt = 0.2, 0
        bootstrap = self.settings.kafka_bootstrap
        while True:
            try:
                await ensure_topics(self.settings)
                await self.publisher.start()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # unreachable, refusing, topics unequal: said, retried
                attempt += 1
                log.warning(
                    "ingest: reaching the Kafka broker at %s failed (attempt %d, retrying in "
                    "%.1fs): %s",
                    bootstrap,
                    attempt,
                    delay_s,
                    error,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(5.0, delay_s * 2)
                continue
            self.ready = True
            log.info("ingest: producing to the input topics on %s", bootstrap)
            return

    async def stop(self) -> None:
        self.ready = False
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self.publisher.stop()

    def application(self) -> web.Application:
        """The aiohttp application of the ingest routes (and ``/healthz``, ``/readyz``)."""
        app = web.Application(
            client_max_size=self.settings.ingest_max_bytes, middlewares=[self._measured]
        )
        app.router.add_post("/ingest/events", self.events)
        app.router.add_post("/ingest/zendesk", self.zendesk_webhook)
        app.router.add_post("/ingest/intercom", self.intercom_webhook)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    @web.middleware
    async def _measured(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Count each answer to ``/ingest/<source>`` with its status code and duration."""
        source = request.path.removeprefix("/ingest/")
        if source not in SOURCES:
            response: web.StreamResponse = await handler(request)
            return response
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as error:  # aiohttp's own answers (405, 413 while reading)
            self.metrics.answered(source, error.status, time.perf_counter() - started)
            raise
        except Exception:  # answered 500 by aiohttp (a cancelled request gets no answer)
            self.metrics.answered(source, 500, time.perf_counter() - started)
            raise
        self.metrics.answered(source, response.status, time.perf_counter() - started)
        return response

    # ------------------------------------------------------------------ routes

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready:
            return _json({"status": "ready"})
        problem = f"waiting for the Kafka broker at {self.settings.kafka_bootstrap}"
        return _json({"status": "not ready", "problems": [problem]}, status=503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        if self.settings.metrics_require_token:
            refusal = _without_token(request, self.settings.web_token, "unauthorized")
            if refusal is not None:
                return refusal
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def events(self, request: web.Request) -> web.Response:
        refusal = _without_token(
            request,
            self.settings.ingest_token,
            "unauthorized: send DESKPULSE_INGEST_TOKEN as a bearer token",
        )
        if refusal is not None:
            self.metrics.refused("events", "no or a wrong bearer token")
            return refusal
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if (limited := self._limited("events")) is not None:
            return limited
        lines = split_events(body)
        if not lines:
            return _json({"error": "no events: send a JSON array or NDJSON"}, status=400)
        now_s = time.time()
        accepted: list[_Record] = []
        rejected: list[tuple[SourceRecord, RejectedEvent]] = []
        results: list[dict[str, Any]] = []
        for number, raw in lines:
            try:
                record = self._record(raw, now_s)
            except RejectedEvent as error:
                letter = SourceRecord(request.path, -1, number, None, raw)
                rejected.append((letter, error))
                results.append(
                    {
                        "line": number,
                        "status": "rejected",
                        "reason": error.reason,
                        "detail": error.detail,
                    }
                )
                continue
            accepted.append(record)
            results.append(
                {
                    "line": number,
                    "status": "accepted",
                    "event_id": record.event_id,
                    "topic": record.topic,
                }
            )
        if not self.ready:
            return _unavailable("the Kafka broker has not been reached yet")
        try:
            await self._acknowledged(accepted, rejected)
        except _Unavailable as error:
            return _unavailable(str(error))
        self.metrics.records("events", "accepted", len(accepted))
        self.metrics.records("events", "rejected", len(rejected))
        document = {"accepted": len(accepted), "rejected": len(rejected), "results": results}
        return _json(document, status=422 if rejected else 200)

    async def zendesk_webhook(self, request: web.Request) -> web.Response:
        secret = self.settings.zendesk_signing_secret
        if secret is None:
            return _json(
                {"error": "Zendesk webhooks are off: set DESKPULSE_ZENDESK_SIGNING_SECRET"},
                status=404,
            )
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        problem = zendesk_signature_problem(
            secret.get_secret_value(),
            request.headers.get("X-Zendesk-Webhook-Signature"),
            request.headers.get("X-Zendesk-Webhook-Signature-Timestamp"),
            body,
            now_s=time.time(),
            max_age_s=self.settings.webhook_max_age,
        )
        if problem is not None:
            self.metrics.refused("zendesk", problem)
            return _json({"error": f"unauthorized: {problem}"}, status=401)
        if (limited := self._limited("zendesk")) is not None:
            return limited
        return await self._webhook(request.path, body, lambda p: map_zendesk(p, self.zendesk))

    async def intercom_webhook(self, request: web.Request) -> web.Response:
        secret = self.settings.intercom_client_secret
        if secret is None:
            return _json(
                {"error": "Intercom webhooks are off: set DESKPULSE_INTERCOM_CLIENT_SECRET"},
                status=404,
            )
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        signature = request.headers.get("X-Hub-Signature")
        if not intercom_signature_matches(secret.get_secret_value(), signature, body):
            reason = (
                "no X-Hub-Signature header" if not signature else "the signature does not match"
            )
            self.metrics.refused("intercom", reason)
            return _json({"error": f"unauthorized: {reason}"}, status=401)
        if (limited := self._limited("intercom")) is not None:
            return limited
        return await self._webhook(request.path, body, lambda p: map_intercom(p, self.intercom))

    # ------------------------------------------------------------------ the steps

    async def _body(self, request: web.Request) -> bytes | web.Response:
        limit = self.settings.ingest_max_bytes
        too_large = _json(
            {"error": f"the body is larger than DESKPULSE_INGEST_MAX_BYTES ({limit} bytes)"},
            status=413,
        )
        if request.content_length is not None and request.content_length > limit:
            return too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large

    def _limited(self, source: str) -> web.Response | None:
        wait_s = self._limits[source].take(time.monotonic())
        if wait_s <= 0:
            return None
        return _json(
            {"error": f"more than DESKPULSE_INGEST_RATE requests per second from {source}"},
            status=429,
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )

    def _record(self, raw: bytes, now_s: float) -> _Record:
        """The record of one event, checked by the engine's decoder (or ``RejectedEvent``)."""
        settings = self.settings
        event, _ = decode_record(
            raw,
            max_bytes=settings.max_record_bytes,
            now_s=now_s,
            max_future_s=settings.max_future,
        )
        return _Record(
            settings.topic_for(_TOPIC_KIND[event.type.partition(".")[0]]),
            _key(event),
            raw,
            event.event_id,
        )

    async def _webhook(
        self, path: str, body: bytes, mapper: Callable[[Any], list[dict[str, Any]] | Ignored]
    ) -> web.Response:
        """Map a verified webhook body, produce its events; dead-letter it if it cannot be."""
        source = path.removeprefix("/ingest/")
        try:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                raise RejectedEvent("invalid_json", str(error)) from None
            mapped = mapper(payload)
            if isinstance(mapped, Ignored):
                self.metrics.records(source, "ignored", 1)
                return _json({"status": "ignored", "detail": mapped.why})
            now_s = time.time()
            records = [self._record(orjson.dumps(event), now_s) for event in mapped]
        except RejectedEvent as error:
            if not self.ready:
                return _unavailable("the Kafka broker has not been reached yet")
            try:
                await self._acknowledged([], [(SourceRecord(path, -1, -1, None, body), error)])
            except _Unavailable as unavailable:
                return _unavailable(str(unavailable))
            self.metrics.records(source, "rejected", 1)
            return _json(
                {
                    "status": "rejected",
                    "reason": error.reason,
                    "detail": error.detail,
                    "deadlettered": True,
                },
                status=422,
            )
        if not self.ready:
            return _unavailable("the Kafka broker has not been reached yet")
        try:
            await self._acknowledged(records, [])
        except _Unavailable as error:
            return _unavailable(str(error))
        self.metrics.records(source, "accepted", len(records))
        events = [{"event_id": r.event_id, "topic": r.topic} for r in records]
        return _json({"status": "accepted", "events": events})

    async def _acknowledged(
        self, records: list[_Record], rejected: list[tuple[SourceRecord, RejectedEvent]]
    ) -> None:
        """Produce ``records`` and dead-letter ``rejected``; return once the broker
        acknowledged all of them, or raise :class:`_Unavailable` after the timeout."""
        timeout_s = self.settings.ingest_ack_timeout
        try:
            async with asyncio.timeout(timeout_s):
                producer = self.publisher.producer
                futures = [
                    await producer.send(record.topic, value=record.value, key=record.key)
                    for record in records
                ]
                if rejected:
                    await self.publisher.send(rejected)
                if futures:
                    await asyncio.gather(*futures)
        except TimeoutError:
            raise _Unavailable(
                f"the Kafka broker did not acknowledge within {timeout_s}s"
            ) from None
        except (KafkaError, OSError, DeadLetterUnavailable) as error:
            raise _Unavailable(f"the Kafka broker did not take the records: {error}") from None


def _key(event: WireEvent) -> bytes:
    # the bare ticket_id or chat_id, as upstream producers key: conversation_id less "t:"/"c:"
    return event.conversation_id[2:].encode()


def _json(
    document: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(document), status=status, content_type=_JSON, headers=headers
    )


def _without_token(
    request: web.Request, token: SecretStr | None, error: str
) -> web.Response | None:
    """A 401 saying ``error`` when ``token`` is set and the request does not carry it as a
    bearer credential, else None."""
    if token is None or bearer_token_matches(
        request.headers.get("Authorization"), token.get_secret_value()
    ):
        return None
    return _json(
        {"error": error}, status=401, headers={"WWW-Authenticate": 'Bearer realm="deskpulse"'}
    )


def _unavailable(why: str) -> web.Response:
    return _json(
        {"error": f"try again later: {why}"},
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class IngestServer:
    """The ingest routes on ``DESKPULSE_INGEST_HOST``:``DESKPULSE_INGEST_PORT``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ingest = Ingest(settings)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen (at once), and reach the broker in the background."""
        runner = web.AppRunner(self.ingest.application(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.ingest_host, self.settings.ingest_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        await self.ingest.start()
        log.info(
            "ingest: listening on http://%s:%d/ingest/",
            self.settings.ingest_host,
            self.settings.ingest_port,
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # requests in flight finish first
        await self.ingest.stop()
