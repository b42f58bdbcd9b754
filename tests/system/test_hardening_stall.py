"""A partition whose fetched records were never delivered is noticed and read again.

Faust's consumer can drop records it fetched without seeking back: the partition then sits
with lag and nothing to apply. Here a real worker (``tests/stall_worker.py``: the worker
command plus a timer of the test's that seeks one partition past records produced while
it was paused) loses records exactly that way, with nothing more produced after them; the
worker's watchdog must seek the partition back, once, and the KPIs must equal the oracle.

The loss is made from outside the engine, in the worker process because Faust's consumer
lives there (an in-process Faust app in pytest would share the test's event loop and
signal handling); nothing in the installed package knows about it.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from deskpulse.models.settings import Settings
from tests.e2e_support import (
    build_dataset,
    check_counters,
    compare_with_oracle,
    kpis_store,
    wait_for_state,
)
from tests.support import (
    StartWorker,
    group_offsets,
    produce_records,
    sample,
    scrape,
    settings_env,
    wait_until,
)

STALL_TIMEOUT_S = 4.0
STALLS = "deskpulse_partition_stalls_total"
LAUNCHER = Path(__file__).parent.parent / "stall_worker.py"


def ends_of(placed: list[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The end offset of every partition the records went to, as the producer was told."""
    ends: dict[tuple[str, int], int] = {}
    for topic, partition, offset in placed:
        ends[topic, partition] = max(ends.get((topic, partition), 0), offset + 1)
    return ends


def committed_to(settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    """Whether the worker's group has committed each of these partitions to its end."""
    committed = asyncio.run(group_offsets(settings.kafka_bootstrap, settings.app_id, ends))
    return all((committed[tp] or 0) >= end for tp, end in ends.items())


def committed_offset(settings: Settings, topic: str, partition: int) -> int | None:
    found = asyncio.run(
        group_offsets(settings.kafka_bootstrap, settings.app_id, [(topic, partition)])
    )
    return found[(topic, partition)]


def stalls(settings: Settings, topic: str) -> dict[str, float]:
    text = scrape(settings.web_port)
    counts = {}
    for partition in range(settings.topic_partitions):
        value = sample(text, STALLS, {"topic": topic, "partition": str(partition)})
        if value is not None:
            counts[str(partition)] = value
    return counts


def test_records_fetched_and_never_delivered_are_read_again(
    settings: Settings, make_topics: Any, tmp_path: Path, start_worker: StartWorker
) -> None:
    settings = settings.model_copy(
        update={
            "batch_within": 0.1,
            "metrics_refresh_interval": 1,
            "stall_timeout": STALL_TIMEOUT_S,
            "engine_process": True,  # where the stall was seen
        }
    )
    make_topics(settings)
    dataset = build_dataset(seed=5, rate=0.5, duration_s=3600)
    print(f"\ndataset: {dataset.summary()}")
    cut = len(dataset.records) - 200
    control = tmp_path / "control"
    control.mkdir()
    env = settings_env(settings, STALL_TEST_CONTROL=str(control), STALL_TEST_PARTITION="0")
    topic = settings.topic_tickets
    worker = start_worker(
        settings, tmp_path / "worker", env=env, command=[str(LAUNCHER)], timeout_s=90
    )
    ends = ends_of(asyncio.run(produce_records(settings, dataset.records[:cut])))
    wait_until(lambda: committed_to(settings, ends), 90, message=worker.describe)
    assert set(stalls(settings, topic).values()) <= {0.0}, "a stall while everything flowed"

    # Partition 0 of the tickets topic: its next records are fetched by nobody.
    (control / "pause").touch()
    wait_until((control / "paused").exists, 10, 0.05, message=worker.describe)
    placed = asyncio.run(produce_records(settings, dataset.records[cut:]))
    ends = {tp: max(end, ends.get(tp, 0)) for tp, end in ends_of(placed).items()}
    end = ends[(topic, 0)]
    (control / "skip").write_text(str(end))
    wait_until((control / "skipped").exists, 10, 0.05, message=worker.describe)
    skipped_at = time.monotonic()
    committed = committed_offset(settings, topic, 0) or 0
    assert committed < end, f"nothing was left unread on {topic}[0] ({committed}, {end})"

    # Found stuck after the stall timeout, sought back once, read again: exact.
    wait_until(
        lambda: stalls(settings, topic).get("0") == 1.0,
        STALL_TIMEOUT_S + 30,
        message=lambda: f"{stalls(settings, topic)}\n{worker.describe()}",
    )
    found_s = time.monotonic() - skipped_at
    assert found_s >= STALL_TIMEOUT_S - 0.5, f"found stuck after only {found_s:.1f}s"
    counts = wait_for_state(settings, dataset, timeout_s=60, describe=worker.describe)
    check_counters(counts, dataset)
    wait_until(lambda: committed_to(settings, ends), 30, message=worker.describe)
    log = worker.log()
    recoveries = [line for line in log.splitlines() if "was stuck for" in line]
    assert len(recoveries) == 1, worker.describe()
    assert "WARNING" in recoveries[0], recoveries[0]
    assert f"partition 0 of {topic}" in recoveries[0], recoveries[0]
    # the end offset as the watchdog last measured it: at least one record past the fence
    found = re.search(r"committed offset (\d+), end offset (\d+)", recoveries[0])
    assert found is not None, recoveries[0]
    assert int(found[1]) == committed < int(found[2]) <= end, recoveries[0]
    assert f"sought back to offset {committed} " in recoveries[0], recoveries[0]

    print(
        f"{end - committed} records of {topic}[0] skipped past ({committed} to {end}); "
        f"found stuck and sought back {found_s:.1f}s later; {counts}\n{recoveries[0]}"
    )
    compare_with_oracle(dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by))

    # caught up, it stays quiet: no second recovery, no stall on any other partition
    time.sleep(2 * STALL_TIMEOUT_S)
    # every watched partition is exported from 0, so the first stall is an increase
    zeros = {str(p): 0.0 for p in range(settings.topic_partitions)}
    assert stalls(settings, topic) == zeros | {"0": 1.0}
    for other in (*settings.input_topics, settings.topic_repartition):
        if other != topic:
            assert set(stalls(settings, other).values()) <= {0.0}, other
    assert worker.stop() == 0, worker.describe()
