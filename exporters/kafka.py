"""Everything deskpulse writes to Kafka: dead letters, KPI snapshots, alerts.

One aiokafka producer per process, idempotence off (some Kafka-compatible brokers refuse
``InitProducerId``; exactly-once lives in the Redis offset fence instead), ``acks=all``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from models.errors import RejectedEvent
from models.settings import Settings

__all__ = ["DEADLETTER_HEADERS", "KafkaPublisher", "kafka_client_options"]

#: Header names on every dead-lettered record.
DEADLETTER_HEADERS = (
    "deskpulse-source-topic",
    "deskpulse-source-partition",
    "deskpulse-source-offset",
    "deskpulse-reason",
    "deskpulse-reason-detail",
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


class KafkaPublisher:
    """The process's producer and the three kinds of output records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

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
            linger_ms=5,
            max_request_size=max(1_048_576, self.settings.max_record_bytes + 65_536),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, records: Sequence[tuple[Any, RejectedEvent]]) -> None:
        """Dead-letter rejected records byte for byte, with their source and reason."""
        futures = []
        for record, error in records:
            headers = [
                ("deskpulse-source-topic", record.topic.encode()),
                ("deskpulse-source-partition", str(record.partition).encode()),
                ("deskpulse-source-offset", str(record.offset).encode()),
                ("deskpulse-reason", error.reason.encode()),
                ("deskpulse-reason-detail", error.detail[:1000].encode("utf-8", "replace")),
            ]
            futures.append(
                await self.producer.send(
                    self.settings.topic_deadletter,
                    value=record.value,
                    key=record.key,
                    headers=headers,
                )
            )
        await asyncio.gather(*futures)

    async def publish_json(self, topic: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Publish JSON payloads (``schema_version`` added) and wait for the broker."""
        futures = []
        for key, payload in items:
            body = orjson.dumps({"schema_version": 1, **payload})
            futures.append(await self.producer.send(topic, value=body, key=key.encode()))
        await asyncio.gather(*futures)
