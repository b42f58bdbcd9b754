"""Losing Redis state, and a fence that does not match the topics, are noticed, not papered
over: a Redis restarted without persistence or flushed under a running worker, topics that
are not the ones the state was built from, and records the fence skips.

Each case runs against real processes: redis-servers of the test's own (so they can be
restarted without persistence or flushed), the session's broker or one of the test's own
(so it can come back with empty topics), and ``deskpulse worker`` subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.asyncio import Redis

from deskpulse.models.errors import StateLost
from deskpulse.models.settings import Settings
from deskpulse.streams.core import CoreConfig
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_broker, start_redis
from deskpulse.streams.integrity import PartitionOffsets, Verdict, judge
from deskpulse.streams.store import Store
from tests.conftest import HOST, create_topics
from tests.e2e_support import (
    Dataset,
    build_dataset,
    compare_with_oracle,
    kpis_store,
    read_counts,
    wait_for_state,
)
from tests.faults_support import tune
from tests.integration.test_store import CONFIG, apply, created, new_prefix, pendings, run
from tests.support import (
    StartWorker,
    StreamProducer,
    WorkerProcess,
    group_offsets,
    produce_records,
    run_cli,
    sample,
    samples,
    scrape,
    settings_env,
    wait_until,
)

#: the one line a worker logs when it stops applying
STOPPED = "stopped applying, nothing more is acknowledged"


# -- the verdict on one partition's offsets (pure) -------------------------------------------


@pytest.mark.parametrize(
    ("fence", "committed", "low", "end", "verdict"),
    [
        # fence   committed  low  end   verdict
        (None, None, 0, 0, Verdict.OK),  # nothing yet anywhere
        (None, None, 0, 50, Verdict.OK),  # a new state on an old topic: read from the start
        (None, 0, 0, 50, Verdict.OK),  # the group committed "start at 0"
        (None, 1, 0, 50, Verdict.LOST),  # the group acknowledged offset 0: state is gone
        (9, 10, 0, 50, Verdict.OK),  # the usual: committed = fence + 1
        (9, 5, 0, 50, Verdict.OK),  # committed behind the fence: a redelivery to skip
        (9, 11, 0, 50, Verdict.LOST),  # offset 10 acknowledged but not in the state
        (49, 50, 0, 50, Verdict.OK),  # caught up: the last record is applied
        (50, 51, 0, 50, Verdict.PAST_END),  # at the reported end: read there to be sure
        (80, 50, 0, 50, Verdict.PAST_END),  # past the end (a recreated topic)
        (80, None, 0, 50, Verdict.PAST_END),  # no group offsets (a fresh broker)
        (9, 10, 10, 50, Verdict.OK),  # retention deleted what was applied
        (9, 10, 20, 50, Verdict.EXPIRED),  # retention deleted 10..19 before they applied
        (None, 90, 0, 50, Verdict.LOST),  # lost state and stale group offsets: lost first
    ],
)
def test_the_verdict_on_a_partitions_offsets(
    fence: int | None, committed: int | None, low: int, end: int, verdict: Verdict
) -> None:
    assert judge(PartitionOffsets("t", 0, fence, committed, low, end)) is verdict


# -- the store -------------------------------------------------------------------------------


def test_a_commit_into_a_partition_whose_state_vanished_is_refused_and_writes_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> list[StateLost]:
        store = Store(client, prefix, CONFIG)
        await store.check_config()
        await apply(store, 0, pendings([created("A", 1_795_392_010)]))
        errors = []
        for key in await client.keys(f"{prefix}:*"):  # what a restart without persistence does
            await client.delete(key)
        # a batch loaded before the loss, committed after it: the script refuses
        batch = pendings([created("B", 1_795_392_020)], first_offset=1)
        with pytest.raises(StateLost) as caught:
            await apply(store, 0, batch)
        errors.append(caught.value)
        assert await client.keys(f"{prefix}:*") == [], "a refused commit wrote something"
        # the periodic check sees the config gone even without a batch
        with pytest.raises(StateLost) as caught:
            await store.check_generation()
        errors.append(caught.value)
        # another process of the same store (a second worker) knows the partition had
        # state only from P:partitions, gone too; its check at assignment catches that
        # (test_redis_restarted...); a partition it knew refuses at load already
        with pytest.raises(StateLost) as caught:
            await store.load(0, [])
        errors.append(caught.value)
        return errors

    refused, vanished, loaded = run(scenario, redis_url)
    assert refused.reason == "partition_lost", refused
    assert vanished.reason == "config_missing", vanished
    assert loaded.reason == "partition_lost", loaded
    for error in (refused, vanished, loaded):
        assert "\n" not in str(error)
        assert "deskpulse replay" in str(error) and "deskpulse state reset --yes" in str(error)
        assert error.replayable


def test_a_state_started_anew_or_rolled_back_is_noticed(redis_url: str) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> list[StateLost]:
        store = Store(client, prefix, CONFIG)
        await store.check_config()
        await apply(store, 0, pendings([created("A", 1_795_392_010)]))
        errors = []
        # an older snapshot: the version goes back while the generation stays
        meta = f"{prefix}:{{p0}}:meta"
        saved = await client.hgetall(meta)
        await apply(store, 0, pendings([created("B", 1_795_392_020)], first_offset=1))
        await client.delete(meta)
        await client.hset(meta, mapping=saved)
        with pytest.raises(StateLost) as caught:
            await store.load(0, [])
        errors.append(caught.value)
        # the state was reset (a new generation) under this store
        other = Store(client, prefix, CONFIG)
        await other.clear()
        await other.check_config()
        with pytest.raises(StateLost) as caught:
            await store.check_generation()
        errors.append(caught.value)
        await apply(other, 0, pendings([created("C", 1_795_392_030)]))
        with pytest.raises(StateLost) as caught:
            await apply(store, 0, pendings([created("D", 1_795_392_040)], first_offset=1))
        errors.append(caught.value)
        return errors

    rolled_back, anew, foreign = run(scenario, redis_url)
    assert rolled_back.reason == "rolled_back", rolled_back
    assert anew.reason == "generation_changed", anew
    assert foreign.reason == "generation_changed", foreign
    assert "restart the worker" in str(anew)


def test_a_read_answered_after_a_commit_it_was_issued_before_is_no_false_alarm(
    redis_url: str,
) -> None:
    # Reads outside the partition's lock (the breach clock's, health checks) run beside
    # commits on other connections: one issued before a commit can be answered after it,
    # with the older version or, before the first commit, with no generation. That is not
    # a rollback nor a loss (a benchmark's worker once halted on it).
    prefix = new_prefix()

    async def scenario(client: Redis) -> tuple[int, int]:
        store = Store(client, prefix, CONFIG)
        await store.check_config()
        answered, release = asyncio.Event(), asyncio.Event()
        load = store._load  # the script that reads a partition's meta and states

        async def slow_load(*args: Any, **kwargs: Any) -> Any:
            reply = await load(*args, **kwargs)  # Redis has answered ...
            answered.set()
            await release.wait()  # ... but the reply is handled only later
            return reply

        versions = []
        for first_offset in (0, 1):  # before the partition's first commit, then after one
            store._load = slow_load  # type: ignore[assignment]
            read = asyncio.ensure_future(store.load(0, []))
            await answered.wait()
            store._load = load
            name = f"R{first_offset}"
            await apply(store, 0, pendings([created(name, 1_795_392_010)], first_offset))
            release.set()
            meta, _ = await read  # raised StateLost before: "went back" / "is gone"
            versions.append(int(meta.version))
            answered.clear()
            release.clear()
        # and a rollback read after the commit is still caught
        meta_key = f"{prefix}:{{p0}}:meta"
        await client.hset(meta_key, "version", "1")
        with pytest.raises(StateLost, match="went back"):
            await store.load(0, [])
        return versions[0], versions[1]

    before_first, before_second = run(scenario, redis_url)
    assert (before_first, before_second) == (0, 1)


def test_state_written_before_generations_is_adopted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    prefix = new_prefix()

    async def scenario(client: Redis) -> str | None:
        store = Store(client, prefix, CONFIG)
        await store.check_config()
        await apply(store, 0, pendings([created("A", 1_795_392_010)]))
        # what a deskpulse without generations left: no generation anywhere
        await client.hdel(f"{prefix}:config", "generation")
        await client.hdel(f"{prefix}:{{p0}}:meta", "gen")
        reopened = Store(client, prefix, CONFIG)
        await reopened.check_config()
        await apply(reopened, 0, pendings([created("B", 1_795_392_020)], first_offset=1))
        return reopened.generation

    generation = run(scenario, redis_url)
    assert generation
    meta = redis_client.hgetall(f"{prefix}:{{p0}}:meta")
    assert meta[b"gen"].decode() == generation
    assert meta[b"applied"] == b"2"


def test_kpis_refuses_a_missing_or_partly_lost_state_in_one_line(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = settings_env(settings)
    args = ["kpis", "--window", "1h", "--json"]
    done = run_cli(args, env, cwd=tmp_path)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("deskpulse kpis: there is no deskpulse state"), done.stderr
    assert done.stdout == ""

    async def fill(client: Redis) -> None:
        store = Store(client, settings.redis_prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        await apply(store, 0, pendings([created("A", time.time() - 60)]))
        await apply(store, 1, pendings([created("B", time.time() - 60)]))

    run(fill, settings.redis_url.get_secret_value())
    assert run_cli(args, env, cwd=tmp_path).returncode == 0
    redis_client.delete(f"{settings.redis_prefix}:{{p1}}:meta")  # e.g. evicted
    done = run_cli(args, env, cwd=tmp_path)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert "partition 1" in done.stderr and "deskpulse replay" in done.stderr, done.stderr


# -- the worker ------------------------------------------------------------------------------


def fences(settings: Settings) -> dict[tuple[str, int], int]:
    """``off:<topic>`` of every partition's meta: (topic, partition) -> last applied offset."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        found = {}
        for partition in range(settings.topic_partitions):
            meta = client.hgetall(f"{settings.redis_prefix}:{{p{partition}}}:meta")
            for name, value in meta.items():
                if name.startswith(b"off:"):
                    found[(name[4:].decode(), partition)] = int(value)
        return found
    finally:
        client.close()


def last_offsets(placed: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for topic, partition, offset in placed:
        out[topic, partition] = max(out.get((topic, partition), -1), offset)
    return out


def wait_applied_and_acknowledged(
    settings: Settings, placed: Sequence[tuple[str, int, int]], worker: WorkerProcess
) -> None:
    """Until Redis fences every record sent and the group committed past them."""
    wanted = last_offsets(placed)

    def fenced() -> bool:
        assert worker.running, worker.describe()
        have = fences(settings)
        return all(have.get(key, -1) >= offset for key, offset in wanted.items())

    wait_until(fenced, 90, message=lambda: f"fences {fences(settings)} < {wanted}")

    def acknowledged() -> bool:
        committed = asyncio.run(group_offsets(settings.kafka_bootstrap, settings.app_id, wanted))
        return all((committed[key] or 0) > offset for key, offset in wanted.items())

    wait_until(acknowledged, 60, 0.5, message="the group's committed offsets")


def readyz(worker: WorkerProcess) -> tuple[int, Any] | None:
    response = worker.get("/readyz", timeout_s=5)
    if response is None:
        return None
    return response.status, json.loads(response.body)


def state_problem(worker: WorkerProcess) -> str | None:
    """The ``state: ...`` problem ``/readyz`` reports (with a 503), if any."""
    found = readyz(worker)
    if found is None or found[0] != 503:
        return None
    return next((p for p in found[1]["problems"] if p.startswith("state: ")), None)


def metric(worker: WorkerProcess, name: str) -> float | None:
    return sample(scrape(worker.settings.web_port), name)


def prefix_keys(settings: Settings) -> list[str]:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"{settings.redis_prefix}:*"))
    finally:
        client.close()


def wait_stopped_applying(worker: WorkerProcess, timeout_s: float = 60) -> str:
    """Until ``/readyz`` names the state problem; that problem."""
    problem = wait_until(lambda: state_problem(worker), timeout_s, message=worker.describe)
    assert problem is not None
    return problem


def check_reported_once(worker: WorkerProcess, problem: str, *, says: Sequence[str]) -> None:
    """The report: /readyz 503 with the reason, the metric at 0, exactly one log line."""
    for text in says:
        assert text in problem, problem
    assert metric(worker, "deskpulse_state_ok") == 0.0
    time.sleep(2.0)  # more batches and checks come meanwhile: still one line
    log = worker.log()
    assert log.count(STOPPED) == 1, worker.describe()
    line = next(line for line in log.splitlines() if STOPPED in line)
    assert "CRITICAL" in line and "runbook-deskpulsestatelost" in line, line
    # said, not raised: no traceback of it, in the worker or the engine process
    assert "deskpulse.models.errors.State" not in log and "TopicsReplaced" not in log, (
        worker.describe()
    )


def stop_halted(worker: WorkerProcess) -> None:
    """SIGTERM stops a worker that holds batches for a lost state, promptly and quietly."""
    started = time.monotonic()
    assert worker.stop(timeout_s=30) == 0, worker.describe()
    assert time.monotonic() - started < 20, worker.describe()
    assert "Crashed" not in worker.log(), worker.describe()


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, without persistence: ``(url, restart, flush)``."""
    port = free_port(HOST)
    directory = tmp_path / "redis"
    holder: dict[str, ManagedProcess] = {"process": start_redis(HOST, port, directory)}

    def restart() -> None:
        holder["process"].stop()
        holder["process"] = start_redis(HOST, port, directory)

    def flush() -> None:
        client = redis.Redis(host=HOST, port=port)
        try:
            client.flushdb()
        finally:
            client.close()

    yield f"redis://{HOST}:{port}/0", restart, flush
    holder["process"].stop()


@pytest.fixture  # data only, built in well under a second: no shared set-up
def dataset() -> Dataset:
    data = build_dataset(seed=37, rate=0.15, malformed_ratio=0.02)
    print(f"\ndataset: {data.summary()}")
    return data


@pytest.mark.slow
def test_redis_restarted_without_persistence_under_a_running_worker(
    settings: Settings, own_redis: Any, dataset: Dataset, tmp_path: Path, start_worker: StartWorker
) -> None:
    url, restart, _ = own_redis
    # snapshots every 2 s: that none is published while the state is lost is seen sooner
    settings = tune(settings, redis_url=SecretStr(url), engine_process=True, snapshot_interval=2)
    create_topics(settings)
    half = len(dataset.records) // 2
    worker = start_worker(settings, tmp_path / "w1", name="worker1", timeout_s=90)
    placed = asyncio.run(produce_records(settings, dataset.records[:half]))
    wait_applied_and_acknowledged(settings, placed, worker)
    applied_before = read_counts(settings).applied
    assert applied_before > 0

    restart()  # the fence, the config and the partition set are gone
    restarted = time.monotonic()
    asyncio.run(produce_records(settings, dataset.records[half:]))
    problem = wait_stopped_applying(worker)
    noticed_s = time.monotonic() - restarted
    check_reported_once(
        worker, problem, says=["Redis", "deskpulse replay", "deskpulse state reset --yes"]
    )
    stamps = (
        "deskpulse_breach_check_timestamp_seconds",
        "deskpulse_snapshot_publish_timestamp_seconds",
    )
    checked = [metric(worker, name) for name in stamps]
    since = time.monotonic()
    # nothing was committed into the empty Redis, nothing at all written
    assert prefix_keys(settings) == [], prefix_keys(settings)
    response = worker.get("/kpis?window=1h", timeout_s=10)
    assert response is not None and response.status == 503, response
    read = run_cli(["kpis", "--window", "1h"], settings_env(settings), cwd=tmp_path)
    assert read.returncode == 1 and "no deskpulse state" in read.stderr, read
    # and no SLA breach check or pass of the outputs completes meanwhile: their timestamps
    # age, for an alert to see
    longest = max(settings.breach_check_interval, settings.snapshot_interval)
    time.sleep(max(0.0, 2 * longest + 0.5 - (time.monotonic() - since)))
    assert [metric(worker, name) for name in stamps] == checked
    stop_halted(worker)

    # a restarted worker refuses: the group committed offsets the state does not have
    worker = start_worker(settings, tmp_path / "w2", name="worker2", ready=False)
    problem = wait_stopped_applying(worker, 90)
    check_reported_once(worker, problem, says=["committed offset", "deskpulse replay"])
    keys = prefix_keys(settings)
    assert not [k for k in keys if k.endswith(":meta")], keys
    check = run_cli(["state", "check"], settings_env(settings), cwd=tmp_path)
    assert check.returncode == 1, check
    assert check.stderr.splitlines() == [check.stderr.strip()], check.stderr
    assert "committed offset" in check.stderr, check.stderr
    stop_halted(worker)

    # the fix the line names: replay from the retained topics, then the worker starts
    started = time.monotonic()
    done = run_cli(["replay"], settings_env(settings), cwd=tmp_path, timeout_s=240)
    replay_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    check = run_cli(["state", "check"], settings_env(settings), cwd=tmp_path)
    assert check.returncode == 0, check
    worker = start_worker(settings, tmp_path / "w3", name="worker3", timeout_s=90)
    wait_for_state(settings, dataset, timeout_s=60, describe=worker.describe)
    compare_with_oracle(dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by))
    assert metric(worker, "deskpulse_state_ok") == 1.0
    assert worker.stop() == 0, worker.describe()
    print(
        f"\nSTATE redis_restarted: {applied_before} of {dataset.distinct} applied, then "
        f"{len(dataset.records) - half} records sent; noticed in {noticed_s:.1f}s; "
        f"restarted worker refused; replay {replay_s:.1f}s; KPIs equal the oracle"
    )


@pytest.mark.slow
def test_redis_flushed_under_an_idle_worker_with_the_engine_in_process(
    settings: Settings, own_redis: Any, tmp_path: Path, start_worker: StartWorker
) -> None:
    url, _, flush = own_redis
    settings = tune(settings, redis_url=SecretStr(url), engine_process=False)
    create_topics(settings)
    now = time.time()
    tickets = [(f"T{i}".encode(), created(f"T{i}", now - 600 + i)) for i in range(40)]
    worker = start_worker(settings, tmp_path / "w", timeout_s=90)
    placed = asyncio.run(produce(settings, settings.topic_tickets, tickets))
    wait_applied_and_acknowledged(settings, placed, worker)
    assert metric(worker, "deskpulse_state_ok") == 1.0

    flush()  # nothing flows: the periodic check notices
    flushed = time.monotonic()
    problem = wait_stopped_applying(worker, 30)
    print(f"\nSTATE flushdb_idle: noticed in {time.monotonic() - flushed:.1f}s")
    check_reported_once(worker, problem, says=["is gone from Redis", "deskpulse replay"])
    more = [(f"U{i}".encode(), created(f"U{i}", now - 300 + i)) for i in range(20)]
    asyncio.run(produce(settings, settings.topic_tickets, more))
    time.sleep(3)  # time for the new records to be (wrongly) applied: none may be
    assert prefix_keys(settings) == [], prefix_keys(settings)
    assert worker.log().count(STOPPED) == 1, worker.describe()
    stop_halted(worker)

    # the operator accepts starting empty: each partition starts where the group is, so
    # the 40 tickets acknowledged before the flush are gone and the 20 after are applied
    env = settings_env(settings)
    done = run_cli(["state", "reset", "--yes"], env, cwd=tmp_path)
    assert done.returncode == 0, done
    assert "4 partitions after the consumer group" in done.stdout, done.stdout
    assert run_cli(["state", "check"], env, cwd=tmp_path).returncode == 0
    worker = start_worker(settings, tmp_path / "w2", name="worker2", timeout_s=90)
    wait_until(lambda: read_counts(settings).applied == len(more), 60, message=worker.describe)
    time.sleep(2)  # and no more than those
    assert read_counts(settings).applied == len(more)
    assert metric(worker, "deskpulse_state_ok") == 1.0
    assert worker.stop() == 0, worker.describe()


async def produce(
    settings: Settings, topic: str, records: Sequence[tuple[bytes, bytes]]
) -> list[tuple[str, int, int]]:
    """Send ``(key, value)`` records to ``topic``; where each landed, as
    :func:`~tests.support.produce_records` tells it."""
    from tests.support import produce as send

    return [(m.topic, m.partition, m.offset) for m in await send(settings, topic, list(records))]


@pytest.mark.slow
def test_topics_that_are_not_the_ones_the_state_was_built_from(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    """A broker that comes back with empty topics (the embedded one keeps them in memory,
    a recreated topic or a broker that lost its log look the same) under the old state."""
    port = free_port(HOST)
    settings = tune(settings, kafka_bootstrap=f"{HOST}:{port}")
    broker = start_broker(HOST, port, tmp_path / "broker1")
    now = time.time()
    try:
        create_topics(settings)
        first = [(f"T{i}".encode(), created(f"T{i}", now - 600 + i)) for i in range(60)]
        worker = start_worker(settings, tmp_path / "w1", name="worker1", timeout_s=90)
        placed = asyncio.run(produce(settings, settings.topic_tickets, first))
        wait_applied_and_acknowledged(settings, placed, worker)
        assert worker.stop() == 0, worker.describe()
    finally:
        broker.stop()
    counts = read_counts(settings)
    assert counts.applied == len(first)

    broker = start_broker(HOST, port, tmp_path / "broker2")  # the same names, empty
    try:
        create_topics(settings)
        second = [(f"V{i}".encode(), created(f"V{i}", now - 300 + i)) for i in range(8)]
        asyncio.run(produce(settings, settings.topic_tickets, second))
        worker = start_worker(settings, tmp_path / "w2", name="worker2", ready=False)
        problem = wait_stopped_applying(worker, 90)
        print(f"\nSTATE topics_replaced: {problem}")
        check_reported_once(
            worker, problem, says=["built from other topics", "deskpulse state reset --yes"]
        )
        assert read_counts(settings) == counts, "nothing applied on the old fence"
        stop_halted(worker)

        # a replay would skip the new topics' records below the old fence: refused
        env = settings_env(settings)
        replayed = run_cli(["replay"], env, cwd=tmp_path, timeout_s=120)
        assert replayed.returncode == 1, replayed
        last = replayed.stderr.strip().splitlines()[-1]
        assert last.startswith("deskpulse: the state under prefix"), replayed.stderr
        assert "built from other topics" in last, last
        assert read_counts(settings) == counts

        # the operator accepts starting empty: the new topics are applied from the start
        asked = run_cli(["state", "reset"], env, cwd=tmp_path)
        assert asked.returncode == 2 and "--yes" in asked.stderr, asked
        assert read_counts(settings) == counts, "without --yes nothing is deleted"
        done = run_cli(["state", "reset", "--yes", "--note", "test"], env, cwd=tmp_path)
        assert done.returncode == 0, done
        assert "deleted" in done.stdout, done.stdout
        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        try:
            config = client.hgetall(f"{settings.redis_prefix}:config")
        finally:
            client.close()
        assert config[b"reset_note"] == b"test" and b"reset_at" in config, config
        worker = start_worker(settings, tmp_path / "w3", name="worker3", timeout_s=90)
        wait_until(
            lambda: read_counts(settings).applied == len(second), 60, message=worker.describe
        )
        assert metric(worker, "deskpulse_state_ok") == 1.0
        assert worker.stop() == 0, worker.describe()
    finally:
        broker.stop()


@pytest.mark.slow
def test_the_records_the_fence_skips_after_a_kill_are_counted(
    settings: Settings, dataset: Dataset, tmp_path: Path, start_worker: StartWorker
) -> None:
    settings = tune(settings, batch_size=50)
    create_topics(settings)
    producer = StreamProducer(settings, dataset.records, chunks=40, pause_s=0.3)
    worker = start_worker(settings, tmp_path / "w", name="worker0", timeout_s=90)
    expected = 0
    try:
        producer.start()
        for attempt in range(1, 4):

            def reached(target: int = dataset.distinct * attempt // 5) -> bool:
                return read_counts(settings).applied >= target

            wait_until(reached, 90, 0.05, message=worker.describe)
            assert worker.kill() == -9
            # the killed member leaves the group when its session expires: a worker joining
            # before that is assigned again when it does, and reads again what it applied
            # since its last offset commit (skipped and counted once more, rightly)
            time.sleep(settings.kafka_session_timeout + 1)
            # what the next worker gets again: from the group's committed offsets up to
            # the fence (everything there was applied before the kill). Read once the
            # session is over, not at the kill: the engine process ends with the worker,
            # but a commit it had sent is still run by Redis (a CI run read the fences
            # before one landed and expected 75 records where 169 were skipped)
            fenced = fences(settings)
            committed = asyncio.run(
                group_offsets(settings.kafka_bootstrap, settings.app_id, fenced)
            )
            expected = sum(
                max(0, fence + 1 - (committed[key] or 0)) for key, fence in fenced.items()
            )
            worker = start_worker(settings, tmp_path / "w", name=f"worker{attempt}", timeout_s=90)
            if expected:
                break
        assert expected > 0, "no kill landed between a Redis commit and the offset commit"
        producer.finish()
        wait_for_state(settings, dataset, timeout_s=90, describe=worker.describe)
        time.sleep(2 * settings.metrics_refresh_interval)
        text = scrape(settings.web_port)
        skipped = samples(text, "deskpulse_events_skipped_total")
        assert {labels["reason"] for labels, _ in skipped} == {"already_applied"}, skipped
        joins = [
            line for line in worker.log_path.read_text().splitlines() if "Joined group" in line
        ]
        assert sum(value for _, value in skipped) == expected, (skipped, expected, joins)
        print(f"\nSTATE skipped_after_kill: {expected} records redelivered and counted")
        assert worker.stop() == 0, worker.describe()
    finally:
        producer.join(60)


def test_the_demo_on_a_fresh_broker_takes_the_prefix_for_itself(redis_url: str) -> None:
    """What ``deskpulse demo`` does with state an earlier demo left, when it starts an
    embedded broker (empty topics): clears it in a Redis it started, else moves away."""
    from deskpulse.streams.devtools.demo import claim_state

    prefix = f"demo{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, redis_prefix=prefix)

    async def fill(client: Redis) -> None:
        store = Store(client, prefix, CoreConfig.from_settings(settings))
        await store.check_config()
        await apply(store, 0, pendings([created("A", time.time() - 60)]))

    run(fill, redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"{prefix}:*")
        moved = asyncio.run(claim_state(settings, own_redis=False, now_s=1_800_000_000))
        assert moved.redis_prefix == f"{prefix}-demo-1800000000"
        assert client.keys(f"{prefix}:*"), "a Redis the demo did not start keeps its state"
        kept = asyncio.run(claim_state(settings, own_redis=True, now_s=1_800_000_000))
        assert kept.redis_prefix == prefix
        assert client.keys(f"{prefix}:*") == []
        again = asyncio.run(claim_state(settings, own_redis=False, now_s=1_800_000_000))
        assert again.redis_prefix == prefix, "nothing there: nothing to move away from"
    finally:
        client.close()


@pytest.mark.slow
def test_a_second_demo_processes_its_events(tmp_path: Path) -> None:
    """``make demo`` twice on the same addresses and directory: the embedded broker starts
    with empty topics each time, and so does the demo's own Redis (its files are made
    anew), so the second run has no earlier state to clear and skips nothing."""
    import os
    import signal
    import subprocess
    import sys

    from deskpulse.streams.devtools.embedded import port_open
    from tests.system.test_demo import alive_in_groups, descendants, distinct_free_ports

    broker_port, redis_port, web_port = distinct_free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKPULSE_")}
    env |= {
        "DESKPULSE_KAFKA_BOOTSTRAP": f"{HOST}:{broker_port}",
        "DESKPULSE_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        "DESKPULSE_WEB_PORT": str(web_port),
        "DESKPULSE_DEMO_DIR": str(tmp_path / "demo"),
        "DESKPULSE_REDIS_PREFIX": f"demo{uuid.uuid4().hex[:8]}",
        "DESKPULSE_KAFKA_SESSION_TIMEOUT": "4",
        "DESKPULSE_BATCH_WITHIN": "0.1",
        "DESKPULSE_METRICS_REFRESH_INTERVAL": "1",
    }

    def run_once(name: str, *, enough: float) -> tuple[str, str]:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            demo = subprocess.Popen(
                [sys.executable, "-m", "deskpulse.streams.cli", "demo", "--rate", "1"],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        children: set[int] = set()

        def describe() -> str:
            return log_path.read_text("utf-8", "replace")[-4000:]

        def processed() -> float:
            assert demo.poll() is None, describe()
            children.update(descendants(demo.pid))
            if not port_open(HOST, web_port):
                return 0.0
            text = scrape(web_port)
            return sum(v for _, v in samples(text, "deskpulse_events_processed_total"))

        try:
            wait_until(lambda: processed() >= enough, 90, 0.5, message=describe)
            text = scrape(web_port)
            os.kill(demo.pid, signal.SIGINT)
            assert demo.wait(timeout=60) == 0, describe()
            wait_until(lambda: not alive_in_groups({demo.pid, *children}), 10)
            return log_path.read_text("utf-8", "replace"), text
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
            for pid in alive_in_groups({demo.pid, *children}):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    first, _ = run_once("first", enough=20)
    assert "is cleared" not in first
    second, text = run_once("second", enough=20)
    assert "is cleared" not in second, second
    assert "redis-server on 127.0.0.1:" in second and ", fresh," in second, second
    skipped = sum(v for _, v in samples(text, "deskpulse_events_skipped_total"))
    assert skipped == 0, "the second run's worker skipped records: state of the first run"
