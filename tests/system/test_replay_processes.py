"""``deskpulse replay --processes N`` against the real broker and Redis: the processes
share the partitions, one killed with SIGKILL stops the replay naming it and leaves no
process behind, and the replay run again ends in the state a single process leaves."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from deskpulse.models.settings import Settings
from deskpulse.streams.devtools.simulate import SimConfig, generate
from deskpulse.streams.tools import produce_records
from tests.e2e_support import field_differences, redis_snapshot
from tests.inproc import children
from tests.support import run_cli, settings_env, wait_until


def applied(settings: Settings, client: redis.Redis) -> int:
    """Records the partitions' metas count as applied so far."""
    total = 0
    for partition in range(settings.topic_partitions):
        raw = client.hget(f"{settings.redis_prefix}:{{p{partition}}}:meta", "applied")
        total += int(raw or 0)
    return total


def state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """A prefix's keys without it, meta without its version, generation and zero counters;
    ``bidx``, ``bver`` (stamped with the generation), ``lmoved``, ``hmoved`` and ``lgm``
    (logs of the commits, with ``lgm``'s run in meta) and the configuration left out."""
    out = {}
    for key, (kind, content) in redis_snapshot(client, f"{prefix}:*").items():
        name = key[len(prefix) + 1 :]
        if name == "config" or name.endswith((":bidx", ":bver", ":lmoved", ":hmoved", ":lgm")):
            continue
        if name.endswith(":meta"):  # a counter back at 0 equals one never touched
            content = {
                k: v
                for k, v in content.items()
                if k not in (b"version", b"gen") and k[:4] != b"lgm:" and v != b"0"
            }
        out[name] = (kind, content)
    return out


def test_a_replay_process_killed_stops_the_replay_and_a_new_one_ends_as_one_process_does(
    settings: Settings, make_topics: Any, tmp_path: Path
) -> None:
    make_topics(settings)
    records = list(
        generate(SimConfig(seed=11, start_s=time.time() - 7200, duration_s=3600, rate=40.0))
    )
    rows = [(settings.topic_for(r.topic_kind), r.key, r.value) for r in records]
    asyncio.run(produce_records(settings, rows, label="produce"))

    two = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "-two"})
    one = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "-one"})
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    replay = subprocess.Popen(
        [sys.executable, "-m", "deskpulse.streams.cli", "replay", "--processes", "2"],
        env=settings_env(two),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # both processes at work, something committed, far from all of it
        processes = wait_until(
            lambda: len(kids := children(replay.pid)) == 2 and applied(two, client) and kids,
            60,
            0.01,
            message="two replay processes and a first commit",
        )
        assert applied(two, client) < len(records) // 2
        victim = min(processes)
        os.kill(victim, signal.SIGKILL)
        _, stderr = replay.communicate(timeout=60)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    assert replay.returncode == 1, stderr
    assert "the replay process of partitions" in stderr and "status -9" in stderr, stderr
    assert "run the replay again" in stderr, stderr
    for pid in processes:  # the other one was stopped too: none is left
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    stopped_at = applied(two, client)
    assert 0 < stopped_at < len(records)

    again = run_cli(["replay", "--processes", "2"], settings_env(two), cwd=tmp_path, timeout_s=240)
    assert again.returncode == 0, again.stderr
    single = run_cli(["replay"], settings_env(one), cwd=tmp_path, timeout_s=240)
    assert single.returncode == 0, single.stderr
    try:
        after_kill, whole = state(client, two.redis_prefix), state(client, one.redis_prefix)
    finally:
        client.close()
    either = sorted(set(after_kill) ^ set(whole))
    assert not either, (
        f"only after the kill: {sorted(set(after_kill) - set(whole))[:5]}; "
        f"only in the single replay: {sorted(set(whole) - set(after_kill))[:5]}; "
        f"{[(n, after_kill.get(n), whole.get(n)) for n in either[:2]]}"
    )
    differing = [name for name in whole if whole[name] != after_kill[name]]
    assert not differing, [(n, whole[n], after_kill[n]) for n in differing[:2]]
    assert sum(1 for name in whole if ":b:" in name) > 50
    print(f"killed at {stopped_at} of {len(records)} applied; {len(whole)} keys equal")


def duplicates_summed(snapshot: dict[str, Any]) -> dict[str, Any]:
    """:func:`state` with each meta's ``dup:<topic>`` counts summed as ``dup``: which copy of
    a duplicated event comes first (one on its partition, one read elsewhere), and so the
    topic its repeat is counted on, depends on how the batches interleave; the count does
    not."""
    out = dict(snapshot)
    for name, (kind, content) in snapshot.items():
        if name.endswith(":meta"):
            dup = sum(int(v) for k, v in content.items() if k.startswith(b"dup:"))
            content = {k: v for k, v in content.items() if not k.startswith(b"dup:")}
            out[name] = (kind, content | {b"dup": str(dup).encode()})
    return out


# A replay killed right after it applied records read on the wrong partition to their own
# partitions, before the commit that moves the fence of the partition they were read on.
_CRASH_AFTER_MISROUTED = """
import asyncio, os, signal, sys
from deskpulse.models.settings import load_settings
from deskpulse.streams.engine import Engine
from deskpulse.streams.replay import replay

applied_elsewhere = Engine._apply_where_they_belong
calls = 0

async def then_killed(self, source, misrouted):
    global calls
    await applied_elsewhere(self, source, misrouted)
    calls += 1
    if calls == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

Engine._apply_where_they_belong = then_killed
asyncio.run(replay(load_settings(), max_records=500))
"""


def test_a_replay_killed_between_its_direct_forwards_and_their_fence_counts_each_duplicate_once(
    settings: Settings, make_topics: Any, tmp_path: Path
) -> None:
    """Records put on the wrong partition are applied straight to their own; killed before
    the partition they were read on is fenced past them, the replay run again applies them
    once more, and the repeat is no duplicate of the input: the metas (``dup:*``, ``late:*``,
    ``applied``), the states and the KPIs end as one uninterrupted replay leaves them."""
    make_topics(settings)
    sim = SimConfig(
        seed=5, start_s=time.time() - 7200, duration_s=3600, rate=20.0, duplicate_ratio=0.05
    )
    records = list(generate(sim))
    # one record in three with no key: the producer puts it on any partition
    rows = [
        (settings.topic_for(r.topic_kind), None if n % 3 == 0 else r.key, r.value)
        for n, r in enumerate(records)
    ]
    asyncio.run(produce_records(settings, rows, label="produce"))

    killed = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "-killed"})
    whole = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "-whole"})
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        crashed = subprocess.run(
            [sys.executable, "-c", _CRASH_AFTER_MISROUTED, "3"],
            env=settings_env(killed),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        stopped_at = applied(killed, client)
        assert 0 < stopped_at < len(records) // 2
        again = run_cli(["replay"], settings_env(killed), cwd=tmp_path, timeout_s=240)
        assert again.returncode == 0, again.stderr
        single = run_cli(["replay"], settings_env(whole), cwd=tmp_path, timeout_s=240)
        assert single.returncode == 0, single.stderr
        after_kill, uninterrupted = (
            duplicates_summed(state(client, killed.redis_prefix)),
            duplicates_summed(state(client, whole.redis_prefix)),
        )
    finally:
        client.close()
    metas = sorted(name for name in uninterrupted if name.endswith(":meta"))
    dups = sum(int(uninterrupted[name][1].get(b"dup", 0)) for name in metas)
    assert dups > 0  # the input has duplicates (and the replay found them)
    meta_differences = field_differences(after_kill, uninterrupted, metas)
    assert not meta_differences, meta_differences  # (after the kill, uninterrupted)
    assert sorted(after_kill) == sorted(uninterrupted), set(after_kill) ^ set(uninterrupted)
    differing = [name for name in uninterrupted if uninterrupted[name] != after_kill[name]]
    assert not differing, [(n, uninterrupted[n], after_kill[n]) for n in differing[:2]]
    assert sum(1 for name in uninterrupted if ":b:" in name) > 50
    print(f"killed at {stopped_at} of {len(records)} applied; {dups} duplicates either way")


def test_processes_must_be_a_whole_number_of_at_least_one(
    settings: Settings, tmp_path: Path
) -> None:
    for bad in ("0", "two"):
        done = run_cli(["replay", "--processes", bad], settings_env(settings), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "--processes" in done.stderr, done.stderr
