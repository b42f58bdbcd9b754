"""SLA alerts exactly once across faults: ``sla.at_risk`` once per ticket, metric, instance
and fraction, ``sla.breached`` once per ticket, metric and instance, ``sla.breach_retracted``
once, whatever happens to the workers and Redis in the middle of the stream.

Each test sends the two phases of :func:`tests.sla_support.build_traffic` (about 1,300
ticket events, 1,450 alerts of every kind, on a 24/7 policy and on office hours) while it
kills the worker, makes group members leave and join, kills Redis, or rebuilds the state
under a new prefix with ``deskpulse replay``, then reads the alerts topic back and
compares it with the alerts worked out by hand, field for field, and the
``deskpulse_sla_breaches_total`` counter with the breaches published. Some kills wait for
the moment alerts sit in an outbox (claimed or parked, not yet acknowledged by the
broker): the re-send path. An alert delivered again there must carry the same
``event_id`` and the same bytes; the tests print how many were.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pydantic import SecretStr

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.embedded import ManagedProcess, free_port, start_redis
from deskpulse.streams.devtools.simulate import Record
from tests.conftest import HOST, create_topics
from tests.e2e_support import progress
from tests.sla_support import (
    Traffic,
    breach_counts,
    build_traffic,
    check_alerts,
    next_monday_ms,
    read_alerts,
    sla_settings,
    wait_for_alerts,
    wait_parked,
)
from tests.support import (
    StartWorker,
    StreamProducer,
    WorkerProcess,
    produce_records,
    run_cli,
    samples,
    scrape,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.slow


def traffic_for(settings: Settings) -> Traffic:
    traffic = build_traffic(next_monday_ms(time.time()), settings.topic_partitions)
    print(f"\ntraffic: {traffic.summary()}")
    return traffic


def paced(
    settings: Settings,
    records: Sequence[Record],
    before_chunk: Callable[[int, int], object] | None = None,
) -> StreamProducer:
    """The records in 20 chunks over about 8 s, started: the faults land mid-stream."""
    producer = StreamProducer(settings, records, chunks=20, pause_s=0.4, before_chunk=before_chunk)
    producer.start()
    return producer


def wait_applied(settings: Settings, target: int, workers: Sequence[WorkerProcess]) -> int:
    """Wait until ``target`` events are applied (every worker still running); how many."""

    def reached() -> int | None:
        for worker in workers:
            assert worker.running, worker.describe()
        done = progress(settings)
        return done if done >= target else None

    return wait_until(
        reached,
        90,
        0.02,
        message=lambda: (
            f"applied {progress(settings)} < {target}\n" + "\n".join(w.describe() for w in workers)
        ),
    )


def breach_counter(settings: Settings) -> Counter[tuple[str, str, str, str]]:
    """``deskpulse_sla_breaches_total`` per (channel, queue, priority, metric), non-zero."""
    found: Counter[tuple[str, str, str, str]] = Counter()
    for labels, value in samples(scrape(settings.web_port), "deskpulse_sla_breaches_total"):
        if value:
            key = (labels["channel"], labels["queue"], labels["priority"], labels["metric"])
            found[key] = int(value)
    return found


def check_published(settings: Settings, traffic: Traffic, describe: Callable[[], str]) -> str:
    """Once everything is claimed and published: the alerts topic against the expected
    alerts (three more checks first, so a repeat would show), then the breach counter of
    the worker at ``settings.web_port``. A summary line."""
    time.sleep(3 * settings.breach_check_interval + 1)
    found = read_alerts(settings, len(traffic.expected), settle_s=2)
    repeats = check_alerts(found, traffic.expected)
    want = breach_counts(traffic.expected)
    wait_until(
        lambda: breach_counter(settings) == want,
        30,
        message=lambda: (
            f"counter {sorted(breach_counter(settings).items())}\n"
            f"expected {sorted(want.items())}\n{describe()}"
        ),
    )
    kinds = Counter(payload["type"] for payload in found)
    return (
        f"{len(found)} alerts read ({dict(sorted(kinds.items()))}), {repeats} delivered again "
        f"with the same event_id; {sum(want.values())} breaches counted"
    )


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_sla_alerts_once_across_kill_9_again_and_again(
    settings: Settings, tmp_path: Path, start_worker: StartWorker, engine_process: bool
) -> None:
    settings = sla_settings(settings, engine_process=engine_process)
    create_topics(settings)
    traffic = traffic_for(settings)
    rng = random.Random(7)
    worker = start_worker(settings, tmp_path / "w", name="worker-0", timeout_s=90)
    kills: list[tuple[int, int]] = []  # (events applied, alerts parked) at each kill

    def kill(*, at: int, parked: bool = False) -> WorkerProcess:
        """kill -9 once ``at`` events are applied (and, with ``parked``, at the first
        moment alerts sit in the outbox after that), then start the next worker."""
        wait_applied(settings, at, [worker])
        if parked:
            waiting = wait_parked(settings, 10)
        else:
            time.sleep(rng.uniform(0, 0.3))  # anywhere in a batch, a check or a publish
            waiting = 0
        assert worker.kill() == -9
        kills.append((progress(settings), waiting))
        return start_worker(settings, tmp_path / "w", name=f"worker-{len(kills)}", timeout_s=90)

    size_a, size_b = len(traffic.phase_a), len(traffic.phase_b)
    producer = paced(settings, traffic.phase_a)
    worker = kill(at=int(size_a * 0.3))
    # between a claim's commit and the broker's acknowledgement (milliseconds: not
    # always caught)
    worker = kill(at=int(size_a * 0.6), parked=True)
    producer.finish()
    wait_for_alerts(settings, size_a, traffic.e1_ms, 90, worker.describe)

    # the last six chunks (the last 30 %) wait for the last kill, which comes at 60 %: a
    # worker started after the kill before could otherwise apply all the rest at once, and
    # the kill land after the stream
    last_killed = threading.Event()
    producer = paced(  # late replies first: the retractions
        settings, traffic.phase_b, lambda chunk, _: chunk < 14 or last_killed.wait(120)
    )
    # the retractions are parked by the batches that refute the breaches, until the next
    # check publishes them: caught there
    try:
        worker = kill(at=size_a + 10, parked=True)
        assert kills[-1][1], "no alert was parked when the worker was killed"
        worker = kill(at=size_a + int(size_b * 0.6))
    finally:
        last_killed.set()
    producer.finish()
    wait_for_alerts(settings, size_a + size_b, traffic.e2_ms, 90, worker.describe)
    assert all(at < size_a + size_b for at, _ in kills), "each kill is meant to land mid-stream"
    print(f"kill -9 of the worker at (events applied, alerts parked): {kills}")
    print(check_published(settings, traffic, worker.describe))
    assert worker.stop() == 0, worker.describe()


def test_sla_alerts_once_while_group_members_leave_and_join(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    first = sla_settings(settings)
    create_topics(first)
    traffic = traffic_for(first)
    second = first.model_copy(update={"web_port": free_port(HOST)})  # the same group
    third = first.model_copy(update={"web_port": free_port(HOST)})
    stays = start_worker(first, tmp_path / "a", name="stays", timeout_s=90)
    leaves = start_worker(second, tmp_path / "b", name="leaves", timeout_s=90)
    size_a, size_b = len(traffic.phase_a), len(traffic.phase_b)

    # phase A: two members share the partitions, then one leaves cleanly mid-stream
    producer = paced(first, traffic.phase_a)
    at_leave = wait_applied(first, int(size_a * 0.4), [stays, leaves])
    assert leaves.stop(timeout_s=30) == 0, leaves.describe()
    producer.finish()
    wait_for_alerts(first, size_a, traffic.e1_ms, 90, stays.describe)

    # phase B: a member joins (a rebalance under load), then crashes (another one) while
    # retractions wait in an outbox
    joins = start_worker(third, tmp_path / "c", name="joins", timeout_s=90)
    producer = paced(first, traffic.phase_b)
    at_crash = wait_applied(first, size_a + 10, [stays, joins])
    parked = wait_parked(first, 10)
    assert joins.kill() == -9
    producer.finish()
    wait_for_alerts(first, size_a + size_b, traffic.e2_ms, 90, stays.describe)
    print(
        f"a member left at {at_leave} events applied, one joined and was killed at "
        f"{at_crash} with {parked} alerts parked"
    )
    print(check_published(first, traffic, stays.describe))
    assert stays.stop() == 0, stays.describe()


def test_sla_alerts_once_across_redis_kill_9_and_restart_from_its_aof(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    port = free_port(HOST)
    redis_dir = tmp_path / "redis"
    settings = sla_settings(settings, redis_url=SecretStr(f"redis://{HOST}:{port}/0"))
    create_topics(settings)
    traffic = traffic_for(settings)
    redis = start_redis(HOST, port, redis_dir, appendonly=True, appendfsync="always")
    try:
        worker = start_worker(settings, tmp_path / "w", timeout_s=90)
        size_a, size_b = len(traffic.phase_a), len(traffic.phase_b)
        kills: list[tuple[int, int]] = []  # (events applied, alerts parked) at each kill

        def kill_redis(target: int, *, parked: bool = False) -> ManagedProcess:
            """kill -9 of Redis once ``target`` events are applied (with ``parked``, at
            the first moment alerts sit in an outbox), and its restart from the AOF."""
            applied = wait_applied(settings, target, [worker])
            kills.append((applied, wait_parked(settings, 10) if parked else 0))
            assert redis.kill() == -9
            failures = worker.log().count("Redis failed (attempt")
            wait_until(
                lambda: worker.log().count("Redis failed (attempt") > failures,
                30,
                message=worker.describe,
            )
            time.sleep(1.0)  # batches and checks keep failing while Redis is away
            assert worker.running, worker.describe()
            return start_redis(HOST, port, redis_dir, appendonly=True, appendfsync="always")

        producer = paced(settings, traffic.phase_a)
        redis = kill_redis(int(size_a * 0.5))
        producer.finish()
        wait_for_alerts(settings, size_a, traffic.e1_ms, 90, worker.describe)

        producer = paced(settings, traffic.phase_b)
        redis = kill_redis(size_a + 10, parked=True)
        producer.finish()
        wait_for_alerts(settings, size_a + size_b, traffic.e2_ms, 90, worker.describe)
        print(f"kill -9 of Redis at (events applied, alerts parked): {kills}")
        print(check_published(settings, traffic, worker.describe))
        assert worker.stop() == 0, worker.describe()
    finally:
        redis.stop()


def test_a_replay_into_a_new_prefix_publishes_no_alert_again(
    settings: Settings, tmp_path: Path, start_worker: StartWorker
) -> None:
    """The state is rebuilt under a new prefix (what one does to recompute history under
    new settings, or after Redis lost the state): the alerts the old state published are
    not published again by the worker on the new one, and the breaches they hold are
    still retracted once when a late reply refutes them."""
    settings = sla_settings(settings)
    create_topics(settings)
    traffic = traffic_for(settings)
    size_a, size_b = len(traffic.phase_a), len(traffic.phase_b)
    old = start_worker(settings, tmp_path / "old", name="old", timeout_s=90)
    asyncio.run(produce_records(settings, traffic.phase_a))
    wait_for_alerts(settings, size_a, traffic.e1_ms, 90, old.describe)
    assert old.stop() == 0, old.describe()
    published = read_alerts(settings, 0, settle_s=2)

    moved = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "r"})
    done = run_cli(["replay"], settings_env(moved), cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"replay: {len(published)} SLA alerts found" in done.stderr, done.stderr
    new = start_worker(moved, tmp_path / "new", name="new", timeout_s=90)
    wait_for_alerts(moved, size_a, traffic.e1_ms, 90, new.describe)
    time.sleep(3 * settings.breach_check_interval + 1)
    again = read_alerts(settings, len(published), settle_s=2)
    assert again == published, (
        f"{len(again) - len(published)} alerts published again after the replay, e.g. "
        f"{again[len(published) : len(published) + 3]}"
    )

    asyncio.run(produce_records(settings, traffic.phase_b))  # late replies first
    wait_for_alerts(moved, size_a + size_b, traffic.e2_ms, 90, new.describe)
    summary = check_published(moved, traffic, new.describe)
    print(f"{len(published)} alerts before the replay; {summary}")
    assert new.stop() == 0, new.describe()
