"""The demo's backfill (streams/devtools/demo.py): a day of simulated records produced in
batches, each on its conversation's partition, replayed, and the worker's consumer group
committed right after the replay's fences, so a worker starts where the replay ended and
its check of the state against the group passes."""

from __future__ import annotations

import asyncio

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools import demo
from deskpulse.streams.devtools.simulate import generate
from deskpulse.streams.integrity import check_state
from deskpulse.streams.partitioner import ConversationPartitions
from deskpulse.streams.topics import ensure_topics
from tests.support import consume_all, group_offsets

NOW_S = 1_795_392_000.0 + 2 * 86400 + 15 * 3600  # a Tuesday, 15:00 UTC


def test_backfill_replays_the_history_and_commits_the_group_at_the_fences(
    settings: Settings,
) -> None:
    counts = asyncio.run(ensure_topics(settings))
    config = demo.simulation(NOW_S, rate=0.2, seed=5, agent_hours={})
    history = list(demo.take_until(demo._Peekable(generate(config)), NOW_S))
    assert history and all((r.occurred_at_s or 0) < NOW_S for r in history)

    produced, _, replayed, _ = asyncio.run(demo.backfill(settings, history))
    assert produced == replayed == len(history)

    # every record on its conversation's partition, in the order generated
    # (the id is hashed without its kind prefix: any two characters do)
    belongs = ConversationPartitions(counts[settings.topic_tickets])
    last: dict[tuple[str, int], int] = {}
    for kind in ("tickets", "chats", "surveys"):
        topic = settings.topic_for(kind)
        sent = [r for r in history if r.topic_kind == kind]
        got = asyncio.run(consume_all(settings.kafka_bootstrap, topic, len(sent), 60))
        assert len(got) == len(sent), topic
        for partition in range(counts[topic]):
            mine = [r for r in got if r.partition == partition]
            assert all(belongs("t:" + r.key.decode()) == partition for r in mine)
            expected = [r.value for r in sent if belongs("t:" + r.key.decode()) == partition]
            assert [r.value for r in sorted(mine, key=lambda r: r.offset)] == expected
            if mine:
                last[(topic, partition)] = max(r.offset for r in mine)

    # the group right after the fences (the last record of each partition): nothing to
    # read again, and the worker's check of the state against the group passes
    committed = asyncio.run(group_offsets(settings.kafka_bootstrap, settings.app_id, last))
    assert committed == {tp: offset + 1 for tp, offset in last.items()}
    store, warnings = asyncio.run(check_state(settings))
    assert warnings == []
    assert store.generation
