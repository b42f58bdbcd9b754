"""The store on a real Redis Cluster (3 masters, 3 replicas): the start-up check of
``DESKPULSE_REDIS_CLUSTER`` against the server, every read and write the store makes
giving what it gives on one Redis, and ``WAIT`` for the replicas of a commit."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr
from redis.exceptions import ClusterError, TryAgainError

from deskpulse.models.errors import RejectedEvent, SettingsError
from deskpulse.models.settings import Settings, load_settings
from deskpulse.models.wire import decode_record
from deskpulse.streams.core import CoreConfig, Pending, fold_batch, timelines_needed
from deskpulse.streams.devtools.embedded import (
    RedisClusterNodes,
    free_port,
    start_redis,
    start_redis_cluster,
)
from deskpulse.streams.engine import retry_forever
from deskpulse.streams.partitioner import java_partition
from deskpulse.streams.query import query_kpis
from deskpulse.streams.redis_client import Client, Purpose, check_mode, connect
from deskpulse.streams.store import Store
from tests.conftest import RedisServer
from tests.e2e_support import Dataset, build_dataset, query_points
from tests.support import wait_until

T = TypeVar("T")

PARTITIONS = 8
CONFIG = CoreConfig()


def settings_for(url: str, *, cluster: bool, **update: Any) -> Settings:
    return Settings(
        redis_url=SecretStr(url),
        redis_cluster=cluster,
        redis_prefix=f"c{uuid.uuid4().hex[:10]}",
        **update,
    )


def run(
    settings: Settings, make: Callable[[Client], Awaitable[T]], purpose: Purpose = "command"
) -> T:
    """``make(client)`` on a fresh client of the settings (single node or cluster)."""

    async def main() -> T:
        client = connect(settings, purpose=purpose)
        try:
            return await make(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def mode_error(settings: Settings) -> str | None:
    async def check(client: Client) -> None:
        await check_mode(client)

    try:
        run(settings, check)
    except SettingsError as error:
        return str(error)
    return None


def test_the_cluster_setting_must_say_what_the_server_is(
    redis_cluster: RedisClusterNodes, redis_server: RedisServer
) -> None:
    assert mode_error(settings_for(redis_cluster.url, cluster=True)) is None
    assert mode_error(settings_for(redis_server.url, cluster=False)) is None
    on_single = mode_error(settings_for(redis_server.url, cluster=True))
    on_cluster = mode_error(settings_for(redis_cluster.url, cluster=False))
    for line in (on_single, on_cluster):
        assert line is not None
        assert line.startswith("DESKPULSE_REDIS_CLUSTER: ")
        assert "\n" not in line
    assert "not a cluster node" in str(on_single)
    assert "set DESKPULSE_REDIS_CLUSTER=true" in str(on_cluster)


def test_the_cluster_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match=r"^DESKPULSE_REDIS_CLUSTER: .*unix"):
        load_settings(redis_url=SecretStr("unix:///run/redis.sock"), redis_cluster=True)
    with pytest.raises(SettingsError, match=r"^DESKPULSE_REDIS_CLUSTER: .*database 0"):
        load_settings(redis_url=SecretStr("redis://127.0.0.1:7000/3"), redis_cluster=True)
    with pytest.raises(SettingsError, match=r"^DESKPULSE_REDIS_MIN_REPLICAS: "):
        load_settings(redis_min_replicas=-1)
    assert load_settings(redis_min_replicas=1).redis_min_replicas == 1


def batches(dataset: Dataset, size: int = 150) -> list[tuple[int, list[Pending]]]:
    """The data set's valid records as a worker's batches would come: per partition of
    their key, in order, ``size`` at a time, interleaved over the partitions."""
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    per: dict[int, list[Pending]] = defaultdict(list)
    for record in dataset.records:
        partition = java_partition(record.key, PARTITIONS)
        coordinates = (record.topic_kind, partition)
        offset = offsets[coordinates]
        offsets[coordinates] += 1
        try:
            event, ms = decode_record(record.value)
        except RejectedEvent:
            continue
        per[partition].append(Pending(event, record.topic_kind, offset, ms, event.conversation_id))
    out: list[tuple[int, list[Pending]]] = []
    step = 0
    while any(len(items) > step for items in per.values()):
        for partition in sorted(per):
            chunk = per[partition][step : step + size]
            if chunk:
                out.append((partition, chunk))
        step += size
    return out


async def apply_all(store: Store, work: list[tuple[int, list[Pending]]]) -> None:
    for partition, items in work:
        meta, states = await store.load(partition, [p.event.conversation_id for p in items])
        await store.load_timelines(partition, states, timelines_needed(items, states))
        result = fold_batch(
            items,
            states,
            watermark_ms=meta.watermark_ms,
            applied_offsets=meta.offsets,
            config=store.config,
        )
        assert await store.commit(partition, meta.version, result)


async def everything_read(store: Store, dataset: Dataset) -> dict[str, Any]:
    """What the store's readers see: KPI documents (twice: the second read takes the
    settled sums kept from the first), metas, totals, levels, candidates, alert states."""
    out: dict[str, Any] = {}
    for at_s in query_points(dataset):
        for width_s in (3600, 86400):
            for by in ((), ("channel",), ("channel", "queue", "priority")):
                first = await query_kpis(store, width_s=width_s, at_s=at_s, by=by)
                again = await query_kpis(store, width_s=width_s, at_s=at_s, by=by)
                assert first == again
                out[f"kpis {width_s} {at_s} {by}"] = first
    parts = await store.partitions()
    out["partitions"] = parts
    out["meta"] = {
        p: {k: v for k, v in m.items() if k != "gen"} for p, m in (await store.read_meta()).items()
    }
    out["totals"] = await store.read_totals()
    out["levels"] = await store.read_levels(parts)
    groups = sorted(
        {
            k.split("\x1f")[0] + "\x1f" + k.split("\x1f")[1] + "\x1f" + k.split("\x1f")[2]
            for k in out["levels"]
        }
    )
    candidates = await store.sla_candidates(parts, groups, limit=50, per_group=5)
    out["candidates"] = sorted((p, c, due) for p, c, due, _ in candidates)
    await store.save_alert_states({"r\x1f1h\x1f\x1f\x1f": "firing", "s\x1f1h\x1f\x1f\x1f": "ok"})
    out["alerts"] = await store.alert_states()
    out["has_state"] = await store.has_state()
    return out


async def write_read_clear(
    client: Client, prefix: str, work: list[tuple[int, list[Pending]]], dataset: Dataset
) -> dict[str, Any]:
    """Apply ``work`` under ``prefix``, read everything twice (the writer, then a reader of
    its own as a read process or the CLI is), clear it; what was read."""
    store = Store(client, prefix, CONFIG)
    await store.check_config()
    await apply_all(store, work)
    await store.check_generation()
    read = await everything_read(store, dataset)
    reader = Store(client, prefix, CONFIG)
    await reader.check_readable()
    assert await everything_read(reader, dataset) == read
    assert await store.clear() > PARTITIONS * 5
    assert not await store.has_state()
    return read


def test_the_store_on_a_cluster_reads_what_it_reads_on_one_redis(
    redis_cluster: RedisClusterNodes, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = build_dataset(seed=23, rate=0.5)
    work = batches(dataset)
    assert len({partition for partition, _ in work}) == PARTITIONS
    # the partitions' slots are spread over the masters: the reads span several nodes
    masters = redis_cluster.masters()
    assert len(masters) == 3
    owners = {
        port
        for partition in range(PARTITIONS)
        for port, ranges in masters.items()
        if ranges[0] <= slot_of(f"x:{{p{partition}}}:") <= ranges[1]
    }
    assert len(owners) > 1, masters
    # The cluster client runs a command queued in a transaction on a thread and an event
    # loop of its own (redis-py 8: some 0.35 ms of CPU each, and the caller's loop held
    # meanwhile): a read of hundreds of buckets must not go that way.
    started: list[str] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    seen: dict[bool, dict[str, Any]] = {}
    for url, cluster in ((redis_server.url, False), (redis_cluster.url, True)):
        settings = settings_for(url, cluster=cluster)
        seen[cluster] = run(
            settings,
            partial(write_read_clear, prefix=settings.redis_prefix, work=work, dataset=dataset),
        )
    assert seen[True] == seen[False]
    assert not started, f"{len(started)} threads started, e.g. {started[:3]}"
    full = seen[True][f"kpis 86400 {query_points(dataset)[-1]} ()"]["groups"][0]
    assert full["first_response"]["count"] > 50


def slot_of(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


def test_a_commit_waits_for_its_replicas(redis_cluster: RedisClusterNodes) -> None:
    settings = settings_for(redis_cluster.url, cluster=True, redis_min_replicas=1)
    dataset = build_dataset(seed=5, rate=0.1, duration_s=1800)
    work = batches(dataset)

    async def scenario(client: Client) -> tuple[int, int]:
        store = Store.from_settings(client, settings)
        await store.check_config()
        await apply_all(store, work)
        # more replicas than there are: the WAIT falls short, retried, never acknowledged
        greedy = Store(client, settings.redis_prefix, CONFIG, min_replicas=2, wait_timeout_ms=50)
        partition = work[0][0]
        meta, _ = await greedy.load(partition, [])
        waiting = asyncio.create_task(greedy.replicated(partition, int(meta.version)))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        waiting.cancel()
        # a version the partition never reached is a commit that was lost
        assert not await store.replicated(partition, int(meta.version) + 1)
        return store.replication_short, greedy.replication_short

    # (the store with one replica to wait for may see a WAIT fall short on a loaded host,
    # and retries it: every batch above was acknowledged, which is what it shows)
    _, greedy_short = run(settings, scenario)
    assert greedy_short >= 3


def test_a_partition_whose_slot_is_moving_is_neither_read_nor_written(
    redis_cluster: RedisClusterNodes,
) -> None:
    settings = settings_for(redis_cluster.url, cluster=True)
    dataset = build_dataset(seed=7, rate=0.1, duration_s=1800)
    work = batches(dataset)
    partition, items = work[-1]
    slot = slot_of(f"{settings.redis_prefix}:{{p{partition}}}:")
    masters = redis_cluster.masters()
    source = next(p for p, r in masters.items() if r[0] <= slot <= r[1])
    target = next(p for p in masters if p != source)

    def setslot(port: int, *args: str) -> None:
        redis_cluster.cli(
            "-h", redis_cluster.host, "-p", str(port), "cluster", "setslot", str(slot), *args
        )

    async def scenario(client: Client) -> None:
        store = Store(client, settings.redis_prefix, CONFIG)
        await store.check_config()
        await apply_all(store, work[:-1])
        meta, states = await store.load(partition, [p.event.conversation_id for p in items])
        await store.load_timelines(partition, states, timelines_needed(items, states))
        result = fold_batch(
            items,
            states,
            watermark_ms=meta.watermark_ms,
            applied_offsets=meta.offsets,
            config=CONFIG,
        )
        before = await store.read_meta()
        # the slot half-way through a migration, as ``redis-cli --cluster reshard`` leaves
        # it while it moves the keys
        setslot(target, "importing", redis_cluster.node_id(source))
        setslot(source, "migrating", redis_cluster.node_id(target))
        try:
            with pytest.raises((TryAgainError, ClusterError)):
                await store.commit(partition, meta.version, result)
            with pytest.raises((TryAgainError, ClusterError)):
                await store.load(partition, [])
            assert await store.read_meta() == before  # (plain reads follow ASK)
        finally:
            setslot(source, "stable")
            setslot(target, "stable")
        assert await store.commit(partition, meta.version, result)

    run(settings, scenario)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """A cluster of this test's own (it kills nodes of it)."""
    with start_redis_cluster("127.0.0.1", tmp_path / "cluster") as nodes:
        yield nodes


def test_a_cluster_that_is_down_is_retried_with_backoff_and_nothing_acknowledged(
    own_cluster: RedisClusterNodes, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(own_cluster.url, cluster=True)
    dataset = build_dataset(seed=3, rate=0.1, duration_s=1800)
    work = batches(dataset)
    partition, items = work[-1]
    slot = slot_of(f"{settings.redis_prefix}:{{p{partition}}}:")
    masters = own_cluster.masters()
    # a master that does not serve the partition, and its replica: with both gone the
    # cluster is down (not every slot is served), the partition's own master included
    down = next(p for p, r in masters.items() if not r[0] <= slot <= r[1])
    replica = next(
        p
        for p in own_cluster.ports
        if p not in masters
        and own_cluster.cli("-h", own_cluster.host, "-p", str(p), "role").split()[2:3]
        == [str(down)]
    )

    async def scenario(client: Client) -> None:
        store = Store(client, settings.redis_prefix, CONFIG)
        await store.check_config()
        await apply_all(store, work[:-1])
        meta, states = await store.load(partition, [p.event.conversation_id for p in items])
        await store.load_timelines(partition, states, timelines_needed(items, states))
        result = fold_batch(
            items,
            states,
            watermark_ms=meta.watermark_ms,
            applied_offsets=meta.offsets,
            config=CONFIG,
        )
        own_cluster.process(replica).kill()
        own_cluster.process(down).kill()
        live = next(p for p in masters if p != down)
        await asyncio.to_thread(
            wait_until,
            lambda: own_cluster.node_info(live).get("cluster_state") == "fail",
            30,
            0.1,
        )
        committing = asyncio.create_task(
            retry_forever(
                partial(store.commit, partition, meta.version, result),
                what=f"committing partition {partition} to Redis",
                max_delay_s=1.0,
            )
        )
        await asyncio.sleep(4)
        assert not committing.done(), "a commit acknowledged while the cluster is down"
        own_cluster.restart(down)
        own_cluster.restart(replica)
        await asyncio.to_thread(own_cluster.wait_ok, 60)
        # applied once: by the attempt that returned, or by one whose reply was lost on a
        # connection the restart reset (then ``False``, and the engine folds the batch
        # again against the state that holds it, where the fence skips it)
        await asyncio.wait_for(committing, 60)
        after, _ = await store.load(partition, [])
        assert int(after.version) == int(meta.version) + 1
        assert after.offsets == result.offsets | {
            t: o for t, o in meta.offsets.items() if t not in result.offsets
        }

    with caplog.at_level(logging.WARNING, logger="deskpulse.engine"):
        run(settings, scenario, purpose="ingest")  # the worker's: no retries of its own
    retries = [r.getMessage() for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert len(retries) >= 3, retries
    assert any("CLUSTERDOWN" in m or "cluster is down" in m.lower() for m in retries), retries


def test_a_commit_waits_for_the_replica_of_one_redis(tmp_path: Path) -> None:
    host = "127.0.0.1"
    master_port, replica_port = free_port(host), free_port(host)
    with (
        start_redis(host, master_port, tmp_path / "master") as master,
        start_redis(
            host,
            replica_port,
            tmp_path / "replica",
            extra_args=["--replicaof", host, str(master_port)],
        ) as replica,
    ):
        settings = settings_for(
            f"redis://{host}:{master_port}/0", cluster=False, redis_min_replicas=1
        )
        work = batches(build_dataset(seed=9, rate=0.1, duration_s=1800))
        assert master.running

        async def scenario(client: Client) -> None:
            store = Store.from_settings(client, settings)
            await store.check_config()
            await asyncio.to_thread(
                wait_until,
                lambda: "'online'" in redis_info(master_port).get("slave0", ""),
                30,
                0.1,
            )
            await apply_all(store, work[:3])
            assert store.replication_short == 0
            replica.pause()  # a replica that does not answer: the next commit waits
            try:
                committing = asyncio.create_task(apply_all(store, work[3:4]))
                await asyncio.sleep(2)
                assert not committing.done()
                assert store.replication_short >= 1
            finally:
                replica.resume()
            await asyncio.wait_for(committing, 30)

        run(settings, scenario, purpose="ingest")


def redis_info(port: int) -> dict[str, str]:
    import redis

    client = redis.Redis(port=port)
    try:
        return {k: str(v) for k, v in client.info("replication").items()}
    finally:
        client.close()
