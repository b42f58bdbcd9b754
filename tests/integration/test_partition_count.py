"""A state is bound to the partition count it was built on: a replay or worker that finds
the input topics with another count refuses to start, in one line."""

from __future__ import annotations

import asyncio

import pytest

from deskpulse.models.errors import SettingsError
from deskpulse.models.settings import Settings
from deskpulse.streams.replay import replay
from tests.conftest import new_settings


def test_a_state_refuses_input_topics_of_another_partition_count(
    broker: str, redis_url: str
) -> None:
    built = new_settings(broker, redis_url, topic_partitions=4)
    asyncio.run(replay(built))  # empty topics: the state records their 4 partitions
    # the same state (prefix) on topics of 8 partitions, as after adding partitions
    other = new_settings(broker, redis_url, topic_partitions=8)
    moved: Settings = other.model_copy(update={"redis_prefix": built.redis_prefix})
    with pytest.raises(SettingsError) as caught:
        asyncio.run(replay(moved))
    line = str(caught.value)
    assert line.startswith("DESKPULSE_REDIS_PREFIX: the input topics have 8 partitions")
    assert "built on 4" in line and "\n" not in line
