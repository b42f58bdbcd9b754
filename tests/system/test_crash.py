"""Faults in the middle of a stream: the worker killed, a consumer-group member leaving,
Redis killed. Whatever happens, the final KPIs equal the oracle's exactly: nothing lost,
nothing counted twice, every valid record accounted for once in the meta counters."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import free_port, start_redis
from tests.conftest import HOST
from tests.e2e_support import (
    Dataset,
    build_dataset,
    check_counters,
    compare_with_oracle,
    dead_letters,
    kpis_store,
    progress,
    read_counts,
    wait_for_state,
)
from tests.support import StreamProducer, WorkerProcess, samples, scrape, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture  # data only, built in well under a second: no shared set-up
def dataset() -> Dataset:
    data = build_dataset(seed=23, rate=0.75, malformed_ratio=0.03)
    print(f"\ndataset: {data.summary()}")
    return data


@pytest.fixture
def crash_settings(settings: Settings, make_topics: Any) -> Settings:
    """Small batches: many commits for a fault to land between."""
    tuned = settings.model_copy(update={"batch_within": 0.1, "batch_size": 50})
    make_topics(tuned)
    return tuned


@pytest.fixture
def producer(crash_settings: Settings, dataset: Dataset) -> Iterator[StreamProducer]:
    """The dataset in 40 chunks over about 15 s, started by the test."""
    paced = StreamProducer(crash_settings, dataset.records, chunks=40, pause_s=0.35)
    yield paced
    if paced.is_alive():
        paced.join(60)


def wait_progress(
    settings: Settings, target: int, dataset: Dataset, workers: list[WorkerProcess]
) -> int:
    """Wait until ``target`` distinct events are applied; how many are."""

    def reached() -> int | None:
        for worker in workers:
            assert worker.running, worker.describe()
        done = progress(settings)
        return done if done >= target else None

    def message() -> str:
        return f"applied {progress(settings)} < {target} of {dataset.distinct}\n" + "\n".join(
            w.describe() for w in workers
        )

    return wait_until(reached, 90, 0.02, message=message)


def check_final(
    settings: Settings, dataset: Dataset, producer: StreamProducer, describe: Any
) -> None:
    """Final state against the oracle: KPIs, dead letters, then the meta counters."""
    counts = wait_for_state(settings, dataset, timeout_s=90, describe=describe)
    compare_with_oracle(dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by))
    letters = dead_letters(settings, dataset, producer.positions)
    print(
        f"recovered: {counts}; KPIs equal the oracle; {len(letters)} malformed records "
        f"dead-lettered ({sum(letters.values()) - len(letters)} again after a redelivery)"
    )
    check_counters(counts, dataset)


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_worker_killed_mid_stream_again_and_again(
    crash_settings: Settings,
    dataset: Dataset,
    producer: StreamProducer,
    tmp_path: Path,
    engine_process: bool,
) -> None:
    # with the engine process, kill -9 of the group takes the child mid-commit too
    settings = crash_settings.model_copy(update={"engine_process": engine_process})
    rng = random.Random(1)
    worker = WorkerProcess(settings, tmp_path / "w", name="worker0")
    kills: list[dict[str, Any]] = []
    try:
        worker.wait_ready(90)
        producer.start()
        for number in range(1, 4):
            # somewhere ahead of what was applied, never at the end
            before = progress(settings)
            target = min(before + rng.randint(200, 900), dataset.distinct - 1500)
            wait_progress(settings, target, dataset, [worker])
            time.sleep(rng.uniform(0, 0.3))  # anywhere in a batch: fold, commit, ack
            at = progress(settings)
            assert worker.kill() == -9
            kills.append({"kill": number, "applied": at, "produced": producer.sent})
            assert at < dataset.distinct, "the kill is meant to land mid-stream"
            worker = WorkerProcess(settings, tmp_path / "w", name=f"worker{number}")
            worker.wait_ready(90)
        print(f"kill -9 of the worker at: {kills}")
        producer.finish()
        check_final(settings, dataset, producer, worker.describe)
        assert worker.stop() == 0, worker.describe()
    finally:
        worker.stop(timeout_s=15)


def processed(worker: WorkerProcess) -> float:
    response = worker.get("/metrics")
    if response is None or response.status != 200:
        return 0.0
    return sum(value for _, value in samples(response.text, "deskpulse_events_processed_total"))


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_group_member_leaves_mid_stream(
    crash_settings: Settings,
    dataset: Dataset,
    producer: StreamProducer,
    tmp_path: Path,
    how: str,
) -> None:
    first = crash_settings
    second = first.model_copy(update={"web_port": free_port(HOST)})  # the same group
    stays = WorkerProcess(first, tmp_path / "a", name="stays")
    leaves = WorkerProcess(second, tmp_path / "b", name="leaves")
    try:
        stays.wait_ready(90)
        leaves.wait_ready(90)
        producer.start()
        # both members own partitions and work on them before one goes
        wait_until(
            lambda: processed(stays) > 0 and processed(leaves) > 0,
            60,
            0.1,
            message=lambda: f"both members working? {stays.describe()}\n{leaves.describe()}",
        )
        wait_progress(first, int(dataset.distinct * 0.4), dataset, [stays, leaves])
        share = (processed(stays), processed(leaves))
        at = progress(first)
        if how == "sigterm":
            assert leaves.stop(timeout_s=30) == 0, leaves.describe()
        else:
            assert leaves.kill() == -9
        print(
            f"{how} to one of two members with {at} of {dataset.distinct} events applied "
            f"(processed so far by each: {share})"
        )
        assert at < dataset.distinct
        producer.finish()
        check_final(first, dataset, producer, stays.describe)
        scrape(first.web_port)  # the survivor still answers
        assert stays.stop() == 0, stays.describe()
    finally:
        leaves.stop(timeout_s=15)
        stays.stop(timeout_s=15)


def test_redis_killed_mid_stream_and_restarted_from_its_aof(
    crash_settings: Settings,
    dataset: Dataset,
    producer: StreamProducer,
    tmp_path: Path,
) -> None:
    port = free_port(HOST)
    redis_dir = tmp_path / "redis"
    settings = crash_settings.model_copy(
        update={"redis_url": SecretStr(f"redis://{HOST}:{port}/0")}
    )
    redis = start_redis(HOST, port, redis_dir, appendonly=True, appendfsync="always")
    worker = WorkerProcess(settings, tmp_path / "w")
    try:
        worker.wait_ready(90)
        producer.start()
        wait_progress(settings, int(dataset.distinct * 0.4), dataset, [worker])
        before = read_counts(settings).applied
        assert redis.kill() == -9
        killed = time.monotonic()
        wait_until(lambda: "Redis failed (attempt" in worker.log(), 30, message=worker.describe)
        time.sleep(1.0)  # batches keep arriving while Redis is away
        assert worker.running, worker.describe()
        redis = start_redis(HOST, port, redis_dir, appendonly=True, appendfsync="always")
        after = read_counts(settings).applied
        # everything acknowledged before the kill was fsynced: nothing went back
        assert after >= before, (before, after)
        retries = worker.log().count("Redis failed (attempt")
        print(
            f"kill -9 of Redis with {before} of {dataset.distinct} events applied; "
            f"{after} there after the restart from the AOF "
            f"({time.monotonic() - killed:.1f}s later); {retries} retried Redis calls"
        )
        assert before < dataset.distinct, "the kill is meant to land mid-stream"
        producer.finish()
        check_final(settings, dataset, producer, worker.describe)
        assert worker.stop() == 0, worker.describe()
    finally:
        worker.stop(timeout_s=15)
        redis.stop()
