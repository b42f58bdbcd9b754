"""Kafka admin requests the service needs: wait for a broker, create topics, check them.

They speak plain Kafka admin protocol and work against any broker (the embedded one of the
dev tools included). ``admin_options`` go to :class:`aiokafka.admin.AIOKafkaAdminClient`
(the security settings of :func:`~deskpulse.exporters.kafka.kafka_client_options`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from deskpulse.models.errors import BrokerUnavailable, SettingsError

__all__ = ["check_copartitioned", "ensure_topics", "wait_for_kafka"]


@contextlib.asynccontextmanager
async def _admin(
    bootstrap: str, timeout_s: float, admin_options: Mapping[str, Any]
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, retrying the connection until ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    request_timeout_ms = int(min(max(timeout_s, 1.0), 10.0) * 1000)
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms, **admin_options
        )
        try:
            await admin.start()
            break
        except (KafkaError, OSError) as error:  # OSError covers TimeoutError
            await admin.close()
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s: {error!r}"
                ) from error
            await asyncio.sleep(0.1)
        except BaseException:
            await admin.close()
            raise
    try:
        yield admin
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    # Metadata for *all* topics: asking for named ones sets allow_auto_topic_creation, and a
    # broker that auto-creates (Tansu always does) would create the very topics we look for.
    topics = await admin.describe_topics()
    return {topic["topic"]: len(topic["partitions"]) for topic in topics if not topic["error_code"]}


async def wait_for_kafka(
    bootstrap: str, timeout_s: float = 30.0, **admin_options: Any
) -> list[str]:
    """Wait until the broker at ``bootstrap`` answers a metadata request; its topic names.

    ``admin_options`` go to :class:`aiokafka.admin.AIOKafkaAdminClient` (security settings).
    Raises :class:`~models.errors.BrokerUnavailable` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with _admin(bootstrap, max(0.0, deadline - time.monotonic()), admin_options) as a:
                return list(await a.list_topics())
        except KafkaError as error:  # connected, but metadata failed: still starting
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(f"no metadata from {bootstrap}: {error!r}") from error
            await asyncio.sleep(0.1)


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    compacted: Collection[str] = frozenset(),
    timeout_s: float = 30.0,
    *,
    replication_factor: int = 1,
    **admin_options: Any,
) -> dict[str, int]:
    """Create the missing ones of ``topics`` (name -> partitions); their partition counts.

    Idempotent: topics that exist are left as they are (their actual counts are returned;
    check them with :func:`check_copartitioned`), and losing a creation race is fine.
    Topics in ``compacted`` get ``cleanup.policy=compact``. Waits until every topic has a
    leader for each partition. Raises the broker's :class:`aiokafka.errors.KafkaError` when
    it refuses a topic, :class:`~models.errors.BrokerUnavailable` when it cannot be reached.
    """
    unknown = set(compacted) - set(topics)
    if unknown:
        raise ValueError(f"compacted topics not in topics: {sorted(unknown)}")
    bad = {name: count for name, count in topics.items() if count < 1}
    if bad:
        raise ValueError(f"topics need at least one partition: {bad}")
    deadline = time.monotonic() + timeout_s
    async with _admin(bootstrap, timeout_s, admin_options) as admin:
        existing = await _partition_counts(admin)
        missing = [
            NewTopic(
                name,
                count,
                replication_factor,
                topic_configs={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name, count in topics.items()
            if name not in existing
        ]
        if missing:
            timeout_ms = int(max(1.0, deadline - time.monotonic()) * 1000)
            response = await admin.create_topics(missing, timeout_ms=timeout_ms)
            for result in response.topic_errors:
                name, code = result[0], result[1]
                if code and code != TopicAlreadyExistsError.errno:
                    message = result[2] if len(result) > 2 else None
                    raise for_code(code)(f"creating topic {name!r} on {bootstrap}: {message}")
        while True:
            described = await admin.describe_topics()
            ready = {
                topic["topic"]: len(topic["partitions"])
                for topic in described
                if topic["topic"] in topics
                and not topic["error_code"]
                and topic["partitions"]
                and all(p["leader"] >= 0 for p in topic["partitions"])
            }
            if len(ready) == len(topics):
                return {name: ready[name] for name in topics}
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"topics without leaders on {bootstrap} after {timeout_s:g}s: "
                    f"{sorted(set(topics) - set(ready))}"
                )
            await asyncio.sleep(0.1)


async def check_copartitioned(
    bootstrap: str, topics: Iterable[str], *, timeout_s: float = 30.0, **admin_options: Any
) -> dict[str, int]:
    """The partition count of each of ``topics``, which must exist and all be equal.

    Events joined by key must meet in the same partition number of every input topic.
    Raises :class:`~models.errors.SettingsError` naming every topic and its count otherwise.
    Never creates a topic.
    """
    names = list(dict.fromkeys(topics))
    async with _admin(bootstrap, timeout_s, admin_options) as admin:
        counts = await _partition_counts(admin)
    found = {name: counts.get(name) for name in names}
    if None in found.values() or len(set(found.values())) > 1:
        listing = ", ".join(
            f"{name}={'missing' if count is None else count}" for name, count in found.items()
        )
        raise SettingsError(
            "DESKPULSE_TOPIC_PARTITIONS",
            f"input topics must exist with the same number of partitions "
            f"(co-partitioned); found {listing}",
        )
    return {name: count for name, count in found.items() if count is not None}
