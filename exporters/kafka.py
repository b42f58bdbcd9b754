"""Everything deskpulse writes to Kafka: dead letters, KPI snapshots, alerts.

One aiokafka producer per process, idempotence off (some Kafka-compatible brokers, the
embedded one among them, refuse the ``InitProducerId`` version aiokafka sends; exactly-once
lives in the Redis offset fence instead), ``acks=all``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.structs import RecordMetadata

from deskpulse.models.errors import BrokerUnavailable, DeadLetterUnavailable, RejectedEvent
from deskpulse.models.settings import Settings
from deskpulse.streams.compat import ask_metadata, broker_addresses, estimate_record_bytes

__all__ = [
    "DEADLETTER_HEADERS",
    "REPARTITION_HEADERS",
    "SIZE_ERRORS",
    "TRUNCATED_KEY_BYTES",
    "TRUNCATION_HEADERS",
    "KafkaPublisher",
    "kafka_client_options",
]

#: Header names on every dead-lettered record.
DEADLETTER_HEADERS = (
    "deskpulse-source-topic",
    "deskpulse-source-partition",
    "deskpulse-source-offset",
    "deskpulse-reason",
    "deskpulse-reason-detail",
)

#: Header names added to a dead letter that is not the record byte for byte: its value was
#: cut to fit the dead-letter topic (``deskpulse-original-bytes`` is the value's size), and
#: a key over ``TRUNCATED_KEY_BYTES`` was cut to that (``deskpulse-original-key-bytes``).
TRUNCATION_HEADERS = (
    "deskpulse-truncated",
    "deskpulse-original-bytes",
    "deskpulse-original-key-bytes",
)
#: A dead letter that has to be cut keeps at most this much of its key.
TRUNCATED_KEY_BYTES = 1024
#: Broker refusals of a record for its size: sending it again as it is can never work.
SIZE_ERRORS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
# what a record's value length adds to the estimate beyond its bytes (varints), at most
_LENGTH_SLACK_BYTES = 16

log = logging.getLogger("deskpulse.kafka")

#: Header names on every record forwarded to the repartition topic: where it was read.
REPARTITION_HEADERS = (
    "deskpulse-source-topic",
    "deskpulse-source-partition",
    "deskpulse-source-offset",
)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client (security included)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


#: The most a batch of one partition holds (aiokafka's default, 16 KiB, is some twenty KPI
#: snapshot messages). A KPI snapshot pass sends thousands of messages at once (4,500 every
#: 10 s at 6,000 groups): in 16 KiB batches, the producer's sends waited for batches to
#: drain and the broker took hundreds of small ones; in 256 KiB batches a pass took
#: 0.8 - 1.0 s of the outputs process's CPU and 1.0 - 1.2 s of wall where it took 1.0 -
#: 1.6 s and 1.2 - 2.1 s (the groups section). A batch goes out after ``linger_ms`` all the
#: same: a lone alert waits no longer.
BATCH_BYTES = 262_144


class KafkaPublisher:
    """The process's producer and the three kinds of output records."""

    def __init__(self, settings: Settings, *, linger_ms: int = 5) -> None:
        self.settings = settings
        #: how long a record waits for others to share its batch (ms)
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        #: the largest request the producer sends (a record over the input limit included)
        self.max_request_bytes = max(1_048_576, settings.max_record_bytes + 65_536)
        # what a dead letter may take: lowered by the broker's size refusals
        self._deadletter_limit_bytes = self.max_request_bytes

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaPublisher.start() was not awaited")
        return self._producer

    async def start(self) -> None:
        """Connect (aiokafka clients must be made on the running loop)."""
        producer = AIOKafkaProducer(
            **kafka_client_options(self.settings),
            acks="all",
            enable_idempotence=False,
            linger_ms=self.linger_ms,
            max_request_size=self.max_request_bytes,
            max_batch_size=min(BATCH_BYTES, self.max_request_bytes),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what the producer holds and close it, giving the broker ``timeout_s``.

        A broker that does not answer must not hold a stop: what is still unsent then is
        dropped with the producer. None of it was acknowledged, so nothing that depends
        on it was committed: dead letters and forwards are sent again by the next start,
        breach alerts from their outbox, KPI snapshots at the next interval.
        """
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), timeout_s)
        except TimeoutError:
            log.warning(
                "the broker took nothing for %gs; the Kafka producer closes with what it held "
                "unsent (sent again after the restart where it matters)",
                timeout_s,
            )

    async def ping(self, timeout_s: float) -> None:
        """Return once a broker answers a metadata request for no topics, asked of every
        broker the producer knows at once, over the producer's own connections.

        Cheap (the answer lists the brokers only) and it opens no connection the producer
        does not keep anyway: asked every few seconds, it also keeps them from going idle.
        Raises :class:`BrokerUnavailable` naming each broker asked and what it did when none
        answered within ``timeout_s``.
        """
        producer = self.producer
        brokers = broker_addresses(producer)
        if not brokers:  # no node to address (metadata lost): the setting is all we know
            raise BrokerUnavailable(
                f"no answer from {self.settings.kafka_bootstrap} (no broker in the metadata)"
            )
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        asks = {asyncio.ensure_future(ask_metadata(producer, node)): node for node in brokers}
        pending = set(asks)
        failures: dict[int, str] = {}
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline_s - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break
                for ask in done:
                    error = ask.exception()
                    if error is None:
                        return  # one broker answering is a reachable cluster
                    failures[asks[ask]] = _ping_failure(error)
        finally:
            # a request still out is given up: a frozen broker's answer, should it come,
            # finds no one waiting (the connection stays, the producer's own requests too)
            for ask in pending:
                ask.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        described = ", ".join(
            f"{address} ({failures.get(node, f'none within {timeout_s:g} s')})"
            for node, address in sorted(brokers.items())
        )
        raise BrokerUnavailable(f"no answer from {described}")

    async def send(self, records: Sequence[tuple[Any, RejectedEvent]]) -> None:
        """Dead-letter rejected records with their source and reason; wait for the broker.

        Each goes byte for byte unless the dead-letter topic cannot take it as it is: then
        its value is cut to fit (to nothing if need be) and ``deskpulse-truncated`` and
        ``deskpulse-original-bytes`` say so. What fits is the producer's request limit,
        lowered for the rest of the process by each size refusal from the broker (a
        topic's ``max.message.bytes``). A refusal no retry can mend is never sent again as
        it was: after a size refusal the record goes smaller, after any other without value.

        Raises :class:`DeadLetterUnavailable` naming the records the broker has not
        acknowledged (unreachable, or refusing even the value-less form): a retry sends
        those only, never one that is on the topic already.
        """
        limit = self._deadletter_limit_bytes
        letters = [self._letter(record, error, limit) for record, error in records]
        todo = list(range(len(letters)))
        held: dict[int, BaseException] = {}
        while todo:
            outcomes = await self._send_letters([letters[i] for i in todo])
            again: list[int] = []
            refusals: Counter[str] = Counter()
            for i, outcome in zip(todo, outcomes, strict=True):
                if outcome is None:
                    continue  # acknowledged
                reduced = self._reduce(letters[i], outcome)
                if reduced is None:
                    held[i] = outcome
                    continue
                letters[i] = reduced
                again.append(i)
                refusals[f"{type(outcome).__name__}: {outcome}"] += 1
            for refusal, count in refusals.items():
                log.warning(
                    "%s refused %d dead letters (%s); sending them cut to fit",
                    self.settings.topic_deadletter,
                    count,
                    refusal,
                )
            todo = again
        if held:
            first = held[min(held)]
            raise DeadLetterUnavailable(
                f"{self.settings.topic_deadletter} did not take {len(held)} of {len(letters)} "
                f"dead letters: {type(first).__name__}: {first}",
                [records[i] for i in sorted(held)],
            )

    @staticmethod
    def _letter(record: Any, error: RejectedEvent, limit_bytes: int) -> _Letter:
        headers = [
            ("deskpulse-source-topic", record.topic.encode()),
            ("deskpulse-source-partition", str(record.partition).encode()),
            ("deskpulse-source-offset", str(record.offset).encode()),
            ("deskpulse-reason", error.reason.encode()),
            ("deskpulse-reason-detail", error.detail[:1000].encode("utf-8", "replace")),
        ]
        return _fit(record.key, record.value, headers, limit_bytes)

    async def _send_letters(self, letters: Sequence[_Letter]) -> list[BaseException | None]:
        """Send each; per letter, ``None`` once acknowledged or the error that kept it out."""
        topic = self.settings.topic_deadletter
        futures: list[Any] = []
        unsendable: BaseException | None = None
        for letter in letters:
            if unsendable is not None:  # each would wait as long again for the same answer
                futures.append(_failed(unsendable))
                continue
            try:
                futures.append(
                    await self.producer.send(
                        topic, value=letter.value, key=letter.key, headers=letter.headers
                    )
                )
            except (KafkaError, OSError) as error:  # refused before it left, no metadata
                futures.append(_failed(error))
                if _is_retriable(error):
                    unsendable = error
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    def _reduce(self, letter: _Letter, error: BaseException) -> _Letter | None:
        """What to send instead after ``error``; ``None`` holds the record for a retry."""
        if not isinstance(error, KafkaError | OSError | asyncio.TimeoutError):
            raise error  # not the broker's answer: a bug, not to be retried
        if _is_retriable(error) or letter.minimal:
            return None  # the broker may take it later: the caller backs off
        key, value, headers = letter.source_key, letter.source_value, letter.source_headers
        if isinstance(error, SIZE_ERRORS):
            # the broker's limit is below ours: half of what it refused fits more likely
            refused = estimate_record_bytes(letter.key, letter.value, letter.headers)
            if refused // 2 < self._deadletter_limit_bytes:
                self._deadletter_limit_bytes = refused // 2
                log.warning(
                    "%s refused a %d-byte dead letter; dead letters are cut to %d bytes from now",
                    self.settings.topic_deadletter,
                    refused,
                    self._deadletter_limit_bytes,
                )
            return _fit(key, value, headers, min(self._deadletter_limit_bytes, refused // 2))
        # any other refusal of this record (e.g. an invalid record): its value may be why
        return _fit(key, value, headers, 0)

    async def forward(self, records: Sequence[tuple[Any, bytes, int]]) -> list[int | BaseException]:
        """Forward ``(record, key, partition)`` to that partition of the repartition topic.

        The value goes byte for byte, keyed ``key`` (the conversation id), with headers
        naming where it was read. Each record's outcome comes back in order: the offset
        the broker gave it, or the error that kept it out, so a retry sends only those.
        """
        topic = self.settings.topic_repartition
        futures: list[Any] = []
        for record, key, partition in records:
            headers = [
                ("deskpulse-source-topic", record.topic.encode()),
                ("deskpulse-source-partition", str(record.partition).encode()),
                ("deskpulse-source-offset", str(record.offset).encode()),
            ]
            try:
                futures.append(
                    await self.producer.send(
                        topic, value=record.value, key=key, partition=partition, headers=headers
                    )
                )
            except Exception as error:  # e.g. no metadata in time: this one is retried
                futures.append(_failed(error))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return [o.offset if isinstance(o, RecordMetadata) else o for o in outcomes]

    async def publish_json(self, topic: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Publish JSON payloads (``schema_version`` added) and wait for the broker."""
        futures = []
        for key, payload in items:
            body = orjson.dumps({"schema_version": 1, **payload})
            futures.append(await self.producer.send(topic, value=body, key=key.encode()))
        await asyncio.gather(*futures)


async def _failed(error: BaseException) -> Any:
    raise error


@dataclass(frozen=True, slots=True)
class _Letter:
    """A dead letter as sent (``key``, ``value``, ``headers``) and the record it stands for."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    source_key: bytes | None
    source_value: bytes | None
    source_headers: tuple[tuple[str, bytes], ...]

    @property
    def minimal(self) -> bool:
        """Nothing left to cut: no value, a key no longer than a cut one."""
        return not self.value and (self.key is None or len(self.key) <= TRUNCATED_KEY_BYTES)


def _fit(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]], limit_bytes: int
) -> _Letter:
    """The dead letter of a record: itself if it fits ``limit_bytes``, else cut to fit."""
    if value is None and key is None:
        # a tombstone without key: the client sends no record with neither (the reason
        # header says it was a tombstone)
        value = b""
    sent = list(headers)
    if estimate_record_bytes(key, value, sent) <= limit_bytes:
        return _Letter(key, value, sent, key, value, tuple(headers))
    cut_key, cut_value = key, value
    sent.append(("deskpulse-truncated", b"true"))
    if value is not None:
        sent.append(("deskpulse-original-bytes", str(len(value)).encode()))
    if key is not None and len(key) > TRUNCATED_KEY_BYTES:
        sent.append(("deskpulse-original-key-bytes", str(len(key)).encode()))
        cut_key = key[:TRUNCATED_KEY_BYTES]
    if value is not None:
        room = limit_bytes - estimate_record_bytes(cut_key, b"", sent) - _LENGTH_SLACK_BYTES
        cut_value = value[: max(0, room)]
    return _Letter(cut_key, cut_value, sent, key, value, tuple(headers))


def _ping_failure(error: BaseException) -> str:
    """What a broker did with a ping, in a few words."""
    if isinstance(error, NodeNotReadyError):  # aiokafka's words for a failed connect
        return "cannot connect"
    name, text = type(error).__name__, str(error)
    # aiokafka's errors name their class already ("KafkaConnectionError: …")
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _is_retriable(error: BaseException) -> bool:
    """Whether sending the same record again later may work (the broker unreachable, slow)."""
    if isinstance(error, KafkaError):
        # not acknowledged in time, or the producer closing under us: not the record's fault
        return error.retriable or isinstance(error, KafkaTimeoutError | ProducerClosed)
    return isinstance(error, OSError | asyncio.TimeoutError)
