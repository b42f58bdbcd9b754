"""Scale-out on the real distributed pieces: workers in one consumer group over 8
partitions, Redis Cluster with replicas (3 masters, 3 replicas, started by the fixtures).

The final KPIs equal the oracle's exactly with two workers; with one of them killed -9
mid-stream; and, with ``DESKPULSE_REDIS_MIN_REPLICAS=1``, with the master of most
partitions killed -9 mid-stream and its replica promoted. A worker whose
``DESKPULSE_REDIS_CLUSTER`` does not say what the server is fails at start, one line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import RedisClusterNodes, free_port, start_redis_cluster
from tests.conftest import HOST, RedisServer, new_settings
from tests.e2e_support import (
    Dataset,
    build_dataset,
    check_counters,
    compare_with_oracle,
    kpis_store,
    progress,
    wait_for_state,
)
from tests.support import StreamProducer, WorkerProcess, run_cli, samples, settings_env, wait_until

pytestmark = pytest.mark.slow

PARTITIONS = 8


@pytest.fixture  # data only, built in well under a second: no shared set-up
def dataset() -> Dataset:
    data = build_dataset(seed=29, rate=0.75, malformed_ratio=0.02)
    print(f"\ndataset: {data.summary()}")
    return data


def cluster_settings(broker: str, nodes: RedisClusterNodes, **update: Any) -> Settings:
    """Small batches (many commits for a fault to land between), 8 partitions, on the
    cluster."""
    return new_settings(
        broker,
        nodes.url,
        redis_cluster=True,
        topic_partitions=PARTITIONS,
        batch_within=0.1,
        batch_size=50,
        **update,
    )


@pytest.fixture
def producers() -> Iterator[list[StreamProducer]]:
    """Producers a test starts; each is waited for when the test ends."""
    started: list[StreamProducer] = []
    yield started
    for paced in started:
        if paced.is_alive():
            paced.join(60)


def processed(worker: WorkerProcess) -> float:
    response = worker.get("/metrics")
    if response is None or response.status != 200:
        return 0.0
    return sum(value for _, value in samples(response.text, "deskpulse_events_processed_total"))


def two_workers(settings: Settings, tmp_path: Path) -> tuple[WorkerProcess, WorkerProcess]:
    first = WorkerProcess(settings, tmp_path / "a", name="first")
    second_settings = settings.model_copy(update={"web_port": free_port(HOST)})
    second = WorkerProcess(second_settings, tmp_path / "b", name="second")
    return first, second


def wait_both_working(first: WorkerProcess, second: WorkerProcess) -> None:
    wait_until(
        lambda: processed(first) > 0 and processed(second) > 0,
        90,
        0.1,
        message=lambda: f"both members working? {first.describe()}\n{second.describe()}",
    )


def wait_progress(settings: Settings, target: int, workers: list[WorkerProcess]) -> int:
    def reached() -> int | None:
        for worker in workers:
            assert worker.running, worker.describe()
        done = progress(settings)
        return done if done >= target else None

    return wait_until(
        reached,
        120,
        0.05,
        message=lambda: (
            f"applied {progress(settings)} < {target}\n" + "\n".join(w.describe() for w in workers)
        ),
    )


def partitions_by_master(settings: Settings, cluster: RedisClusterNodes) -> Counter[int]:
    """How many of the partitions' slots each master (by port) serves now."""
    from redis.crc import key_slot

    masters = cluster.masters()
    owners: Counter[int] = Counter()
    for partition in range(PARTITIONS):
        slot = key_slot(f"{settings.redis_prefix}:{{p{partition}}}:".encode())
        owners.update(port for port, slots in masters.items() if slots[0] <= slot <= slots[1])
    return owners


def check_final(settings: Settings, dataset: Dataset, describe: Any) -> None:
    counts = wait_for_state(settings, dataset, timeout_s=180, describe=describe)
    compare_with_oracle(dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by))
    check_counters(counts, dataset)
    print(f"final state {counts}: the KPIs equal the oracle's")


@pytest.mark.parametrize("how", ["both-stay", "sigkill"])
def test_two_workers_on_a_cluster_give_the_oracle_kpis(
    broker: str,
    redis_cluster: RedisClusterNodes,
    make_topics: Any,
    dataset: Dataset,
    producers: list[StreamProducer],
    tmp_path: Path,
    how: str,
) -> None:
    settings = cluster_settings(broker, redis_cluster)
    make_topics(settings)
    first, second = two_workers(settings, tmp_path)
    with first, second:
        first.wait_ready(90)
        second.wait_ready(90)
        producer = StreamProducer(settings, dataset.records, chunks=40, pause_s=0.35)
        producers.append(producer)
        producer.start()
        wait_both_working(first, second)
        if how == "sigkill":
            wait_progress(settings, int(dataset.distinct * 0.4), [first, second])
            at = progress(settings)
            assert second.kill() == -9
            print(f"kill -9 of one of two workers with {at} of {dataset.distinct} applied")
            assert at < dataset.distinct, "the kill is meant to land mid-stream"
        producer.finish()
        check_final(settings, dataset, first.describe)
        share = (processed(first), processed(second))
        print(f"events processed by each worker: {share}")
        assert first.stop() == 0, first.describe()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """A cluster of this test's own (it kills a node of it)."""
    with start_redis_cluster(HOST, tmp_path / "cluster") as nodes:
        yield nodes


def test_a_master_killed_mid_stream_loses_nothing_with_min_replicas(
    broker: str,
    own_cluster: RedisClusterNodes,
    make_topics: Any,
    dataset: Dataset,
    producers: list[StreamProducer],
    tmp_path: Path,
) -> None:
    settings = cluster_settings(broker, own_cluster, redis_min_replicas=1)
    make_topics(settings)
    # the master of the most partitions (of the node the URL names, if that one ties:
    # the clients must find the others after it is gone)
    owners = partitions_by_master(settings, own_cluster)
    victim = max(owners, key=lambda port: (owners[port], port == own_cluster.ports[0]))
    first, second = two_workers(settings, tmp_path)
    with first, second:
        first.wait_ready(90)
        second.wait_ready(90)
        producer = StreamProducer(settings, dataset.records, chunks=40, pause_s=0.35)
        producers.append(producer)
        producer.start()
        wait_both_working(first, second)
        wait_progress(settings, int(dataset.distinct * 0.3), [first, second])
        at = progress(settings)
        assert own_cluster.process(victim).kill() == -9
        print(
            f"kill -9 of the master on {victim} ({owners[victim]} of {PARTITIONS} partitions) "
            f"with {at} of {dataset.distinct} applied"
        )
        assert at < dataset.distinct, "the kill is meant to land mid-stream"
        promoted = own_cluster.wait_failover(victim, 60)
        print(f"the replica on {promoted} promoted")
        # with no replica left for its slots, no commit there is acknowledged: the
        # workers wait (nothing they acknowledged is lost if the new master dies too)
        # until the old master comes back, as a replica of the new one
        stalled = progress(settings)
        time.sleep(3)
        own_cluster.restart(victim)
        own_cluster.wait_ok(60)
        print(f"the old master back as a replica ({stalled} applied before it was)")
        producer.finish()
        check_final(settings, dataset, lambda: first.describe() + "\n" + second.describe())
        waits = sum(log.count("replicas yet") for log in (first.log(), second.log()))
        print(f"WAITs that fell short and were retried: {waits}")
        assert first.stop() == 0, first.describe()
        assert second.stop() == 0, second.describe()


def test_the_cluster_setting_against_the_wrong_server_fails_at_start_in_one_line(
    broker: str, redis_cluster: RedisClusterNodes, redis_server: RedisServer, tmp_path: Path
) -> None:
    for url, flag in ((redis_server.url, True), (redis_cluster.url, False)):
        settings = new_settings(broker, url, redis_cluster=flag)
        done = run_cli(["worker"], settings_env(settings), cwd=tmp_path, timeout_s=60)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("deskpulse: bad setting DESKPULSE_REDIS_CLUSTER: "), lines


def test_slots_resharded_mid_stream_give_the_oracle_kpis(
    broker: str,
    own_cluster: RedisClusterNodes,
    make_topics: Any,
    dataset: Dataset,
    producers: list[StreamProducer],
    tmp_path: Path,
) -> None:
    settings = cluster_settings(broker, own_cluster)
    make_topics(settings)
    masters = own_cluster.masters()
    owners = partitions_by_master(settings, own_cluster)
    source = max(masters, key=lambda port: owners[port])
    target = next(port for port in masters if port != source)
    moving = owners[source]
    first, second = two_workers(settings, tmp_path)
    with first, second:
        first.wait_ready(90)
        second.wait_ready(90)
        producer = StreamProducer(settings, dataset.records, chunks=40, pause_s=0.35)
        producers.append(producer)
        producer.start()
        wait_both_working(first, second)
        wait_progress(settings, int(dataset.distinct * 0.2), [first, second])
        at = progress(settings)
        # every slot of the master with the most partitions, keys and all (MOVED and ASK
        # for the clients; TRYAGAIN from the scripts of a partition while its slot moves)
        count = masters[source][1] - masters[source][0] + 1
        started = time.monotonic()
        own_cluster.reshard(source, target, count)
        print(
            f"{count} slots ({moving} of {PARTITIONS} partitions) moved from {source} to "
            f"{target} in {time.monotonic() - started:.1f}s, from {at} of "
            f"{dataset.distinct} applied to {progress(settings)}"
        )
        assert at < dataset.distinct, "the reshard is meant to start mid-stream"
        assert source not in own_cluster.masters()
        producer.finish()
        check_final(settings, dataset, lambda: first.describe() + "\n" + second.describe())
        retried = sum(log.count("TRYAGAIN") for log in (first.log(), second.log()))
        print(f"commits and loads retried while their slot moved: {retried}")
        assert first.stop() == 0, first.describe()
        assert second.stop() == 0, second.describe()
