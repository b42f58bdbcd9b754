"""The topics deskpulse reads and writes, created on start when missing."""

from __future__ import annotations

from deskpulse.exporters.kafka import kafka_client_options
from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import Settings
from deskpulse.streams.kafka_admin import check_copartitioned
from deskpulse.streams.kafka_admin import ensure_topics as _ensure

__all__ = ["ensure_topics"]


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing input and output topics; refuse input topics of unequal partitions.

    The agents topic, new beside input topics that may exist already, is made with the
    tickets topic's partition count.

    The repartition topic is made with the input topics' partition count (theirs, which
    may differ from ``DESKPULSE_TOPIC_PARTITIONS`` if they existed before), and refused if
    it exists with another: partition N of it must meet partition N of the inputs.
    """
    options = kafka_client_options(settings)
    bootstrap = options.pop("bootstrap_servers")
    partitions = settings.topic_partitions
    counts = await _ensure(
        bootstrap,
        {
            settings.topic_tickets: partitions,
            settings.topic_chats: partitions,
            settings.topic_surveys: partitions,
            settings.topic_deadletter: partitions,
            settings.topic_kpis: 1,
            settings.topic_alerts: 1,
        },
        compacted={settings.topic_kpis},
        **options,
    )
    # the agents topic came later: where the other inputs exist, it gets their count
    counts |= await _ensure(
        bootstrap, {settings.topic_agents: counts[settings.topic_tickets]}, **options
    )
    inputs = await check_copartitioned(bootstrap, settings.input_topics, **options)
    partitions = inputs[settings.topic_tickets]
    repartition = settings.topic_repartition
    counts |= await _ensure(bootstrap, {repartition: partitions}, **options)
    if counts[repartition] != partitions:
        raise SettingsError(
            "DESKPULSE_TOPIC_REPARTITION",
            f"{repartition} has {counts[repartition]} partitions, the input topics "
            f"{partitions}; it must have as many (delete it, or name another topic)",
        )
    return counts
